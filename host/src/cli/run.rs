//! `braid run`: run a workflow file once, recording it (embedded SQLite by default).

use super::render::{run_json, run_text};
use super::{DatabaseArgs, OutputFormat, Status};
use crate::engine::{Engine, RunPlan};
use crate::registry::AgentDirectory;
use crate::sandbox::{Sandbox, SandboxConfig};
use crate::store::{RunStatus, Store};
use crate::workflow;
use anyhow::Context as _;
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Debug, Args)]
pub struct RunCommand {
    /// The workflow definition (JSON).
    #[arg(value_name = "WORKFLOW.json")]
    workflow: PathBuf,
    /// The run's input, as JSON text.
    #[arg(long, default_value = "{}")]
    input: String,
    /// Where the workflow's agents are: `DIR/<name>.wasm` (hyphens and underscores alike).
    #[arg(long, value_name = "DIR", default_value = ".")]
    agents: PathBuf,
    #[command(flatten)]
    database: DatabaseArgs,
    /// How to print the result.
    #[arg(long, value_enum, default_value_t)]
    output: OutputFormat,
}

impl RunCommand {
    pub fn execute(self) -> anyhow::Result<Status> {
        let text = std::fs::read_to_string(&self.workflow)
            .with_context(|| format!("cannot read {}", self.workflow.display()))?;
        let definition = workflow::parse(&text)?;
        let agents = AgentDirectory::new(&self.agents);
        workflow::validate(&definition, &|reference| agents.path_of(reference).is_some())?;
        let input: serde_json::Value = serde_json::from_str(&self.input).context("--input is not valid JSON")?;

        let sandbox = Arc::new(Sandbox::new(SandboxConfig::default())?);
        let resolved = agents.resolve(&definition, &sandbox)?;
        let plan = Arc::new(RunPlan { workflow: Arc::new(definition), agents: resolved, workflow_digest: None });

        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        runtime.block_on(async {
            let store = Store::open(&self.database.database_url).await?;
            let engine = Engine::new(sandbox, store.recorder().clone());
            let cancel = CancellationToken::new();
            let on_interrupt = cancel.clone();
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    eprintln!("interrupted: cancelling the run");
                    on_interrupt.cancel();
                }
            });
            let run = engine.run(plan, Uuid::now_v7(), input, cancel).await?;
            let steps = store.run_steps(run.id).await?;
            match self.output {
                OutputFormat::Json => {
                    let logs = store.run_logs(run.id).await?;
                    println!("{}", serde_json::to_string_pretty(&run_json(&run, &steps, &logs))?);
                }
                OutputFormat::Text => print!("{}", run_text(&run, &steps)),
            }
            store.close().await?;
            Ok(if run.status == RunStatus::Succeeded { Status::Succeeded } else { Status::Failed })
        })
    }
}
