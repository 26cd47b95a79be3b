//! `braid runs list|show`: read back recorded runs.

use super::render::run_text;
use super::{DatabaseArgs, OutputFormat, Status};
use crate::store::{RunFilter, RunStatus, Store};
use anyhow::{Context as _, anyhow};
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
