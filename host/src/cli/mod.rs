//! The `braid` command line: parsing (clap) and rendering. Each subcommand lives in its own
//! file as a `*Command` struct with an `execute` method; logic lives in the library modules.
//!
//! Exit codes: 0 success, 1 the agent or run failed, 2 bad usage or bad input.

mod call;
mod hosts;
mod migrate;
mod progress;
mod project;
mod registry;
pub mod render;
mod run;
mod runs;
mod serve;

use clap::{Parser, Subcommand, ValueEnum};
use std::process::ExitCode;

/// Braid: a WebAssembly step host for workflows of sandboxed agents.
#[derive(Debug, Parser)]
#[command(name = "braid", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Call one agent once, in a fresh sandbox, without a database.
    Call(call::CallCommand),
    /// Run a workflow (a file, or a deployed NAME[@VERSION]) once and record it.
    Run(run::RunCommand),
    /// Serve the HTTP API: deploys, runs, metrics — and execute runs as a host.
    Serve(serve::ServeCommand),
    /// Execute runs and other hosts' units as a host, without the HTTP API (Postgres).
    Worker(serve::WorkerCommand),
    /// List the live hosts on the database.
    Hosts(hosts::HostsCommand),
    /// Deploy and list agents.
    Agent(registry::AgentCommand),
    /// Deploy and list workflows.
    Workflow(registry::WorkflowCommand),
    /// Read recorded runs.
    Runs(runs::RunsCommand),
    /// Apply (or revert) the database migrations.
    Migrate(migrate::MigrateCommand),
    /// Create a project: `braid new agent NAME --lang rust|python|js`.
    New(project::NewCommand),
    /// Build the agent project in DIR into one .wasm component.
    Build(project::BuildCommand),
}

/// Where records go: `--database-url` or `BRAID_DATABASE_URL`; without either, the
/// embedded SQLite file `braid.db` in the current directory.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// postgres://... or sqlite://... (default: sqlite://braid.db in the current directory).
    #[arg(long, env = "BRAID_DATABASE_URL", default_value = crate::store::DEFAULT_DATABASE_URL)]
    pub database_url: String,
}

/// Where precompiled agents are cached.
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    /// Folder for precompiled agent components, keyed by digest and engine, shared by every
    /// command: a component is compiled once per machine (default: `$XDG_CACHE_HOME/braid`
    /// or `~/.cache/braid`).
    #[arg(long, env = "BRAID_CACHE_DIR", value_name = "DIR", default_value_os_t = crate::registry::default_cache_dir())]
    pub cache_dir: std::path::PathBuf,
}

/// How this process takes part in ownership, as a host executing runs.
#[derive(Debug, Clone, clap::Args)]
pub struct HostArgs {
    /// This host's id, recorded as the owner of the runs it executes (default: hostname,
    /// process id and a random suffix).
    #[arg(long, env = "BRAID_HOST_ID", value_name = "ID")]
    pub host_id: Option<String>,
    /// How long a run's lease lasts without renewal; renewed every third of it. A host that
    /// dies holds its runs this long before another host resumes them.
    #[arg(long, value_name = "MS", default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(300..=3_600_000))]
    pub lease_ms: u64,
    /// Most items a map may take; a longer list fails the map (a map's own `max_items` may
    /// be lower).
    #[arg(long, value_name = "N", default_value_t = crate::limits::DEFAULT_MAX_MAP_ITEMS,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub max_map_items: u64,
    /// Most MiB of agent step inputs and outputs one run may record; the step that would
    /// go beyond fails.
    #[arg(long, value_name = "MIB", default_value_t = crate::limits::DEFAULT_MAX_RUN_BYTES >> 20,
          value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub max_run_mb: u64,
    /// The most any workflow may grant agents over HTTP: a `scheme://host[:port]` pattern
    /// (repeatable; default: any public host). A grant beyond it fails the deploy or run.
    #[arg(long = "allow-outbound", value_name = "PATTERN")]
    pub allow_outbound: Vec<String>,
    /// Let agents reach private, loopback and link-local addresses (refused by default,
    /// after DNS too, even when a workflow grants the host).
    #[arg(long)]
    pub allow_private_network: bool,
    /// Most outbound HTTP requests one agent execution may make.
    #[arg(long, value_name = "N", default_value_t = crate::outbound::DEFAULT_MAX_REQUESTS,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub max_http_requests: u32,
    /// Most bytes of one outbound response body (and of one request body); beyond it the
    /// body stream fails for the agent.
    #[arg(long, value_name = "BYTES", default_value_t = crate::outbound::DEFAULT_MAX_BODY_BYTES,
          value_parser = clap::value_parser!(u64).range(1..=(1 << 32)))]
    pub max_http_response_bytes: u64,
    /// A TOML or JSON file of secret name → value, for steps' `secrets` (the environment's
    /// `BRAID_SECRET_<NAME>` variables win on a clash).
    #[arg(long, env = "BRAID_SECRETS_FILE", value_name = "FILE")]
    pub secrets_file: Option<std::path::PathBuf>,
    /// Count fuel in every agent step and record `fuel_consumed` for each. Without it only
    /// steps with a `fuel` budget are metered (metering makes guest code ~1.2× slower).
    #[arg(long)]
    pub meter_fuel: bool,
}

impl HostArgs {
    /// The sandbox's settings, `base` with this host's outbound HTTP policy and metering.
    pub fn sandbox_config(&self, base: crate::sandbox::SandboxConfig) -> anyhow::Result<crate::sandbox::SandboxConfig> {
        let ceiling = if self.allow_outbound.is_empty() {
            crate::outbound::HostPatterns::any()
        } else {
            crate::outbound::HostPatterns::parse(&self.allow_outbound).map_err(|errors| {
                let lines: Vec<String> = errors.iter().map(|e| format!("  --allow-outbound {e}")).collect();
                anyhow::anyhow!("invalid --allow-outbound:\n{}", lines.join("\n"))
            })?
        };
        let outbound = crate::outbound::OutboundConfig {
            ceiling,
            allow_private_network: self.allow_private_network,
            max_requests: self.max_http_requests,
            max_body_bytes: self.max_http_response_bytes,
            ..base.outbound.clone()
        };
        Ok(crate::sandbox::SandboxConfig { outbound, meter_fuel: self.meter_fuel || base.meter_fuel, ..base })
    }

    /// The settings of a host of `role`, executing at most `max_active_runs` runs at once.
    pub fn config(
        &self,
        role: crate::store::HostRole,
        max_active_runs: Option<usize>,
    ) -> anyhow::Result<crate::cluster::HostConfig> {
        let host_id = self.host_id.clone().unwrap_or_else(crate::cluster::default_host_id);
        let mut config = crate::cluster::HostConfig::new(host_id);
        config.role = role;
        config.lease = std::time::Duration::from_millis(self.lease_ms);
        config.run_limits =
            crate::engine::RunLimits { max_map_items: self.max_map_items, max_run_bytes: self.max_run_mb << 20 };
        config.secrets = std::sync::Arc::new(crate::secrets::Secrets::load(self.secrets_file.as_deref())?);
        config.telemetry = crate::telemetry::Telemetry::from_env()?.map(std::sync::Arc::new);
        if let Some(max) = max_active_runs {
            config.max_active_runs = max;
        }
        Ok(config)
    }
}

/// Errors a guest can cause at will (a failed stream read, a refused request) must not
/// make the host capture and symbolicate a Rust backtrace each time: that is slow and
/// takes ~100 MiB with debug info. `RUST_LIB_BACKTRACE=0` turns capture off for library
/// errors unless the operator sets it; panics still honour `RUST_BACKTRACE`.
fn without_library_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: the first thing `main` does, before any other thread exists.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum OutputFormat {
    /// For people.
    #[default]
    Text,
    /// One JSON document, for scripts.
    Json,
}

/// What a command that ran to completion reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Succeeded,
    Failed,
}

impl From<Status> for ExitCode {
    fn from(status: Status) -> Self {
        match status {
            Status::Succeeded => ExitCode::SUCCESS,
            Status::Failed => ExitCode::from(1),
        }
    }
}

/// Parses the command line, runs the command and maps the result to an exit code: errors
/// that stop a command before it runs (bad usage, bad input) exit with 2.
pub fn main() -> ExitCode {
    without_library_backtraces();
    allow_transparent_huge_pages(false);
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_) | Command::Worker(_)) {
        end_quietly_on_a_closed_pipe();
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("BRAID_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Call(command) => command.execute(),
        Command::Run(command) => command.execute(),
        Command::Serve(command) => command.execute(),
        Command::Worker(command) => command.execute(),
        Command::Hosts(command) => command.execute(),
        Command::Agent(command) => command.execute(),
        Command::Workflow(command) => command.execute(),
        Command::Runs(command) => command.execute(),
        Command::Migrate(command) => command.execute(),
        Command::New(command) => command.execute(),
        Command::Build(command) => command.execute(),
    };
    match result {
        Ok(status) => status.into(),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// Turns transparent huge pages off (or back on) for this process, on Linux. mimalloc asks
/// for them, and each fresh 2 MiB page is zeroed whole on its first touch: as it hands
/// memory back and takes it again, that zeroing was 15-18% of a fan-out's profile, and a
/// fan-out of ~1 KB outputs ran 1.5× faster without (README, "Benchmarks"). Linear memories
/// never used them (wasmtime does not ask). Public for the benchmarks, which measure both.
pub fn allow_transparent_huge_pages(allowed: bool) {
    #[cfg(target_os = "linux")]
    // SAFETY: a process-wide flag the kernel checks when it faults pages in; no memory of
    // ours is touched. It cannot fail with these arguments on kernels that know it (3.15+),
    // and older ones only refuse it, which changes nothing.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, libc::c_ulong::from(!allowed), 0, 0, 0);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = allowed;
}

/// `braid runs list | head` closes the pipe early: end as other Unix tools do, at once and
/// without a message, rather than panic in `println!` (Rust ignores SIGPIPE by default).
/// Not for `braid serve`, which must outlive whoever started it.
fn end_quietly_on_a_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: restoring a signal's default disposition at start-up, before any thread.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
