//! `braid runs list|show`: read back recorded runs.

use super::render::run_text;
use super::{DatabaseArgs, OutputFormat, Status};
use crate::store::{RunFilter, RunStatus, Store};
use anyhow::{Context as _, anyhow, bail};
use clap::{Args, Subcommand};
use serde_json::json;
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

impl RunsCommand {
    pub fn execute(self) -> anyhow::Result<Status> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
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
                    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(wait_ms);
                    let status = loop {
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
                RunsAction::Show { id, database, output } => {
                    let store = Store::open(&database.database_url).await?;
                    let run = store.get_run(id).await?.ok_or_else(|| anyhow!("no run with id {id}"))?;
                    let steps = store.run_steps(id).await.context("reading the run's steps")?;
                    match output {
                        OutputFormat::Json => {
                            let logs = store.run_logs(id).await?;
                            println!(
                                "{}",
                                serde_json::to_string_pretty(&crate::store::run_document(&run, &steps, &logs))?
                            );
                        }
                        OutputFormat::Text => print!("{}", run_text(&run, &steps)),
                    }
                    store.close().await?;
                }
            }
            Ok(Status::Succeeded)
        })
    }
}
