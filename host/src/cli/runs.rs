//! `braid runs list|show|watch|cancel|resume|redrive`: read back recorded runs, follow
//! them live, stop them, and drive unfinished or failed ones to their end in this process.

use super::registry::open_registry;
use super::run::print_run;
use super::{DatabaseArgs, HostArgs, OutputFormat, RegistryArgs, Status};
use crate::cluster::Runner;
use crate::engine::Engine;
use crate::store::{RunFilter, RunStatus, Store};
use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Subcommand};
use serde_json::json;
use std::sync::Arc;
use uuid::Uuid;

#[derive(Debug, Args)]
pub struct RunsCommand {
    #[command(subcommand)]
    action: RunsAction,
}

#[derive(Debug, Subcommand)]
enum RunsAction {
    /// List recorded runs, newest first.
    List {
        /// Only runs of this workflow.
        #[arg(long)]
        workflow: Option<String>,
        /// Only runs with this status (pending, running, succeeded, failed, cancelled).
        #[arg(long)]
        status: Option<RunStatus>,
        /// At most this many runs.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        database: DatabaseArgs,
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Cancel a run, wherever it runs (a server, or `braid run` in another terminal):
    /// running instances are interrupted and the run ends `cancelled`.
    Cancel {
        /// The run's id.
        id: Uuid,
        /// How long to wait for the run to stop.
        #[arg(long, value_name = "MS", default_value_t = 5000)]
        wait_ms: u64,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Finish an unfinished run here (its host died, or `braid run` was killed), once no
    /// host holds its lease: what succeeded is reused, the rest runs.
    Resume {
        /// The run's id.
        id: Uuid,
        #[command(flatten)]
        drive: DriveArgs,
    },
    /// Run a failed or cancelled run again, here, on exactly its pinned workflow and agents:
    /// every step, branch, map item and loop iteration that succeeded is reused; what
    /// failed or never ran runs again with the next attempt numbers.
    Redrive {
        /// The run's id.
        id: Uuid,
        #[command(flatten)]
        drive: DriveArgs,
    },
    /// Follow a run live, wherever it runs: each step execution as it starts and ends, then
    /// the run's end (exit 0 when it succeeded, 1 otherwise). The same events as
    /// `GET /v1/runs/{id}/events`.
    Watch {
        /// The run's id.
        id: Uuid,
        #[command(flatten)]
        database: DatabaseArgs,
        /// `json`: one event per line, as the API's event stream sends them.
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Show one run with its step executions.
    Show {
        /// The run's id.
        id: Uuid,
        #[command(flatten)]
        database: DatabaseArgs,
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
}

/// What `resume` and `redrive` need to execute a run here.
#[derive(Debug, Args)]
struct DriveArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(flatten)]
    host: HostArgs,
    #[arg(long, value_enum, default_value_t)]
    output: OutputFormat,
}

/// Whether `drive` redrives the run first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drive {
    Resume,
    Redrive,
}

impl DriveArgs {
    /// Claims run `id` and executes it here to its end, printing it as `braid run` does.
    async fn drive(&self, id: Uuid, how: Drive) -> anyhow::Result<Status> {
        let sandbox = self.host.sandbox_config(crate::sandbox::SandboxConfig::default())?;
        let (store, registry) = open_registry(&self.database, &self.registry, sandbox).await?;
        let run = store.get_run(id).await?.ok_or_else(|| anyhow!("no run with id {id}"))?;
        if how == Drive::Redrive && store.redrive(id).await?.is_none() {
            bail!("run {id} is {}: only failed or cancelled runs can be redriven", run.status);
        }
        if how == Drive::Resume && run.status.is_terminal() {
            bail!(
                "run {id} already finished ({}); `braid runs redrive` runs a failed or cancelled run again",
                run.status
            );
        }
        let engine = Engine::new(registry.sandbox().clone(), store.recorder().clone());
        let runner = Runner::new(engine, Arc::new(registry), self.host.config(crate::store::HostRole::Run, Some(1))?);
        runner.start_host().await?;
        let run = match runner.drive(id).await? {
            Some(run) => run,
            None if how == Drive::Redrive => {
                // A running host claimed it first: follow it there.
                eprintln!("run {id} was taken by another host; waiting for it to end");
                runner.wait(id, None).await?
            }
            None => {
                let run = store.get_run(id).await?.ok_or_else(|| anyhow!("no run with id {id}"))?;
                bail!(
                    "run {id} is held by host {} until its lease expires; try again after that (the lease is \
                     --lease-ms long, 15 s by default)",
                    run.owner_host_id.as_deref().unwrap_or("?")
                );
            }
        };
        runner.shutdown(std::time::Duration::ZERO).await;
        print_run(&store, &run, self.output).await?;
        store.close().await?;
        Ok(if run.status == RunStatus::Succeeded { Status::Succeeded } else { Status::Failed })
    }
}

impl RunsCommand {
    pub fn execute(self) -> anyhow::Result<Status> {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        runtime.block_on(async {
            match self.action {
                RunsAction::List { workflow, status, limit, database, output } => {
                    let store = Store::open(&database.database_url).await?;
                    let runs = store.list_runs(&RunFilter { workflow, status, limit: Some(limit) }).await?;
                    match output {
                        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&json!({ "runs": runs }))?),
                        OutputFormat::Text => {
                            for run in &runs {
                                println!(
                                    "{}  {}@{}  {}  {}",
                                    run.id,
                                    run.workflow_name,
                                    run.workflow_version,
                                    run.status,
                                    run.created_at.to_rfc3339()
                                );
                            }
                        }
                    }
                    store.close().await?;
                }
                RunsAction::Cancel { id, wait_ms, database } => {
                    let store = Store::open(&database.database_url).await?;
                    let run = store.get_run(id).await?.ok_or_else(|| anyhow!("no run with id {id}"))?;
                    if run.status.is_terminal() {
                        bail!("run {id} already finished ({})", run.status);
                    }
                    store.request_cancel(id).await?;
                    let host = crate::cluster::default_host_id();
                    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(wait_ms);
                    let status = loop {
                        // Whenever no host is executing it (none ever took it, or its host
                        // died and the lease expired), this process closes it — claiming it
                        // first, so that a host claiming it at the same moment cannot race.
                        let lease = std::time::Duration::from_secs(30);
                        if let Some(claimed) = store.claim_run(id, &host, lease).await? {
                            store.drop_units_of_run(id, claimed.epoch).await?;
                            let previous = store.run_steps(id).await?;
                            crate::engine::close_cancelled(store.recorder(), claimed, &previous).await?;
                        }
                        let status = store.get_run(id).await?.map(|run| run.status);
                        if status.is_some_and(RunStatus::is_terminal) || std::time::Instant::now() > deadline {
                            break status;
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    };
                    store.close().await?;
                    match status {
                        Some(status) if status.is_terminal() => println!("run {id} {status}"),
                        _ => {
                            println!("cancel requested: run {id} stops as soon as a host runs it");
                            return Ok(Status::Failed);
                        }
                    }
                }
                RunsAction::Resume { id, drive } => return drive.drive(id, Drive::Resume).await,
                RunsAction::Redrive { id, drive } => return drive.drive(id, Drive::Redrive).await,
                RunsAction::Watch { id, database, output } => {
                    let store = Store::open(&database.database_url).await?;
                    let status = watch(&store, id, output).await?;
                    store.close().await?;
                    return Ok(if status == RunStatus::Succeeded { Status::Succeeded } else { Status::Failed });
                }
                RunsAction::Show { id, database, output } => {
                    let store = Store::open(&database.database_url).await?;
                    let run = store.get_run(id).await?.ok_or_else(|| anyhow!("no run with id {id}"))?;
                    print_run(&store, &run, output).await.context("reading the run's steps")?;
                    store.close().await?;
                }
            }
            Ok(Status::Succeeded)
        })
    }
}

/// Prints run `id`'s events until it ends; returns how it ended.
async fn watch(store: &Store, id: Uuid, output: OutputFormat) -> anyhow::Result<RunStatus> {
    use crate::events::{RunEvent, RunWatch};
    use std::io::Write as _;
    let mut watch = RunWatch::new(store.clone(), id).await?.ok_or_else(|| anyhow!("no run with id {id}"))?;
    let mut stdout = std::io::stdout().lock();
    loop {
        for event in watch.next().await? {
            match output {
                OutputFormat::Json => writeln!(stdout, "{}", serde_json::to_string(&event)?)?,
                OutputFormat::Text => match &event {
                    RunEvent::Run { run } => writeln!(
                        stdout,
                        "run {}  {}@{}  {}",
                        run.id, run.workflow_name, run.workflow_version, run.status
                    )?,
                    RunEvent::Step { step } => {
                        let key = step.step_key.as_deref().unwrap_or(&step.step_id);
                        let took = match (step.started_at, step.finished_at) {
                            (Some(started), Some(finished)) => {
                                format!(
                                    "  {:.1} ms",
                                    (finished - started).num_microseconds().unwrap_or(0) as f64 / 1000.0
                                )
                            }
                            _ => String::new(),
                        };
                        let host = step.host_id.as_deref().map(|host| format!("  on {host}")).unwrap_or_default();
                        let error = step.error.as_deref().filter(|_| step.status.as_str() != "succeeded");
                        let error = error.map(|error| format!("  error: {error}")).unwrap_or_default();
                        writeln!(stdout, "  {key}  {}{took}{host}{error}", step.status)?;
                    }
                    RunEvent::End { run } => {
                        let error = run.error.as_deref().map(|error| format!("  error: {error}")).unwrap_or_default();
                        writeln!(stdout, "run {} {}{error}", run.id, run.status)?;
                    }
                },
            }
            if let RunEvent::End { run } = &event {
                stdout.flush()?;
                return Ok(run.status);
            }
        }
        stdout.flush()?;
    }
}
