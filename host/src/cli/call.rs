//! `braid call`: load one agent component and run it once, printing its execution.

use super::{OutputFormat, Status};
use crate::sandbox::{Execution, ExecutionRequest, Limits, Sandbox, SandboxConfig, StepContext};
use anyhow::Context as _;
use clap::Args;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct CallCommand {
    /// The agent: a WebAssembly component implementing the braid:agent world.
    #[arg(value_name = "AGENT.wasm")]
    agent: PathBuf,
    /// The input, as JSON text.
    #[arg(long, default_value = "{}")]
    input: String,
    /// Wall-clock limit for the call, in milliseconds (at most a week).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=604_800_000))]
    timeout_ms: Option<u64>,
    /// Memory limit, in MiB (at most 1024, the host's maximum).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=crate::limits::MAX_STEP_MEMORY_MB))]
    memory_mb: Option<u64>,
    /// Fuel budget (a deterministic CPU limit): the call runs fuel-metered code and reports
    /// what it burned.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=i64::MAX as u64))]
    fuel: Option<u64>,
    /// Count and report the fuel the call burns without limiting it (metered code runs
    /// ~1.2× slower; without a budget or this flag, `fuel_consumed` is null).
    #[arg(long)]
    meter_fuel: bool,
    /// A configuration value the agent can read (repeatable).
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    config: Vec<(String, String)>,
    /// How to print the result.
    #[arg(long, value_enum, default_value_t)]
    output: OutputFormat,
    #[command(flatten)]
    registry: super::RegistryArgs,
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

impl CallCommand {
    pub fn execute(self) -> anyhow::Result<Status> {
        let input = crate::limits::parse_json(&self.input, "--input")?;
        let defaults = Limits::default();
        let limits = Limits {
            timeout: self.timeout_ms.map(Duration::from_millis).unwrap_or(defaults.timeout),
            memory_bytes: self.memory_mb.map(|mb| mb.saturating_mul(1 << 20)).unwrap_or(defaults.memory_bytes),
            fuel: self.fuel,
        };
        let wasm = std::fs::read(&self.agent).with_context(|| format!("cannot read {}", self.agent.display()))?;
        // The pool's slots are sized for the host maximum, which --memory-mb cannot exceed.
        let sandbox =
            Sandbox::new(SandboxConfig { max_instances: 1, meter_fuel: self.meter_fuel, ..SandboxConfig::default() })?;
        // Compiled once per machine: a second call of the same bytes loads the artifact.
        let cache = crate::registry::ArtifactCache::new(&self.registry.cache_dir);
        let digest = crate::registry::digest(&wasm);
        let (agent, _) = cache
            .load(&sandbox, &digest, &wasm, sandbox.metering(limits.fuel))
            .with_context(|| format!("{} is not a usable agent", self.agent.display()))?;

        let request = ExecutionRequest {
            limits: Some(limits),
            config: Arc::new(self.config.into_iter().collect::<BTreeMap<_, _>>()),
            ..ExecutionRequest::new(
                StepContext { run_id: "call".into(), step_id: "call".into(), attempt: 1, ..StepContext::default() },
                input.to_string(),
            )
        };
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        let execution = runtime.block_on(sandbox.execute(&agent, request))?;

        match self.output {
            OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&call_json(&execution))?),
            OutputFormat::Text => print_text(&execution),
        }
        Ok(if execution.outcome.is_success() { Status::Succeeded } else { Status::Failed })
    }
}

/// The `--output json` document of `braid call`.
fn call_json(execution: &Execution) -> serde_json::Value {
    json!({
        "status": if execution.outcome.is_success() { "succeeded" } else { "failed" },
        "outcome": execution.outcome,
        "output": execution.output,
        "error": execution.error,
        "retryable": execution.retryable,
        "logs": execution.logs,
        "duration_us": u64::try_from(execution.duration().as_micros()).unwrap_or(u64::MAX),
        "instantiate_us": u64::try_from(execution.instantiate.as_micros()).unwrap_or(u64::MAX),
        "execute_us": u64::try_from(execution.execute.as_micros()).unwrap_or(u64::MAX),
        "fuel_consumed": execution.fuel_consumed,
        "memory_peak_bytes": execution.memory_peak_bytes,
    })
}

fn print_text(execution: &Execution) {
    let status =
        if execution.outcome.is_success() { "succeeded".to_owned() } else { format!("failed ({})", execution.outcome) };
    println!(
        "{status} in {:.2} ms (instantiate {:.2} ms, execute {:.2} ms), fuel {}, memory peak {}",
        ms(execution.duration()),
        ms(execution.instantiate),
        ms(execution.execute),
        execution.fuel_consumed.map_or("-".to_owned(), |fuel| fuel.to_string()),
        crate::sandbox::human_bytes(execution.memory_peak_bytes),
    );
    if let Some(output) = &execution.output {
        // Pretty-printed from the value: the agent's text is compact, fine for machines only.
        println!("{}", serde_json::to_string_pretty(output.value()).unwrap_or_default());
    }
    if let Some(error) = &execution.error {
        println!("error: {error}");
    }
    if !execution.logs.is_empty() {
        println!("logs:");
        for line in &execution.logs {
            println!("  [{} {:?}] {}", line.level.as_str(), line.source, line.message);
        }
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
