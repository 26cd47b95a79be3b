//! `braid agent push|list` and `braid workflow push|list`: the deployed registry, straight
//! against the database (no server needed; a running server sees the same rows).

use super::{DatabaseArgs, OutputFormat, RegistryArgs, Status};
use crate::registry::{Deployed, Registry};
use crate::sandbox::{Sandbox, SandboxConfig};
use crate::store::Store;
use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Args)]
pub struct AgentCommand {
    #[command(subcommand)]
    action: AgentAction,
}

#[derive(Debug, Subcommand)]
enum AgentAction {
    /// Deploy a component as NAME@VERSION (type-checked and precompiled now).
    Push {
        /// The agent component (.wasm).
        file: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long)]
        version: String,
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// List deployed agents and their versions.
    List(ListArgs),
}

/// Where to list from, and how to print.
#[derive(Debug, Args)]
struct ListArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    #[arg(long, value_enum, default_value_t)]
    output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct WorkflowCommand {
    #[command(subcommand)]
    action: WorkflowAction,
}

#[derive(Debug, Subcommand)]
enum WorkflowAction {
    /// Deploy a definition (its own name and version unless given).
    Push {
        /// The workflow definition (JSON).
        file: PathBuf,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        version: Option<String>,
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// List deployed workflows and their versions.
    List(ListArgs),
}

/// Opens the store and a registry over it, for one command.
pub(super) async fn open_registry(
    database: &DatabaseArgs,
    registry: &RegistryArgs,
    sandbox: SandboxConfig,
) -> anyhow::Result<(Store, Registry)> {
    let store = Store::open(&database.database_url).await?;
    let sandbox = Arc::new(Sandbox::new(SandboxConfig { max_instances: 16, ..sandbox })?);
    let registry = Registry::new(store.clone(), sandbox, &registry.cache_dir);
    Ok((store, registry))
}

fn deployed_word(deployed: Deployed) -> &'static str {
    match deployed {
        Deployed::Created => "deployed",
        Deployed::AlreadyThere => "already deployed (same content)",
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

impl AgentCommand {
    pub fn execute(self) -> anyhow::Result<Status> {
        runtime()?.block_on(async {
            match self.action {
                AgentAction::Push { file, name, version, database, registry } => {
                    let wasm = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
                    let (store, registry) = open_registry(&database, &registry, SandboxConfig::default()).await?;
                    let (agent, deployed) = registry.deploy_agent(&name, &version, wasm).await?;
                    println!("{} {}@{} ({})", deployed_word(deployed), agent.name, agent.version, agent.digest);
                    store.close().await?;
                }
                AgentAction::List(ListArgs { database, output }) => {
                    let store = Store::open(&database.database_url).await?;
                    let agents = store.list_agents(None).await?;
                    match output {
                        OutputFormat::Json => {
                            println!("{}", serde_json::to_string_pretty(&json!({ "agents": agents }))?)
                        }
                        OutputFormat::Text => {
                            for agent in &agents {
                                println!(
                                    "{}@{}  {}  {} bytes  {}",
                                    agent.name,
                                    agent.version,
                                    agent.digest,
                                    agent.size_bytes,
                                    agent.created_at.to_rfc3339()
                                );
                            }
                        }
                    }
                    store.close().await?;
                }
            }
            Ok(Status::Succeeded)
        })
    }
}

impl WorkflowCommand {
    pub fn execute(self) -> anyhow::Result<Status> {
        runtime()?.block_on(async {
            match self.action {
                WorkflowAction::Push { file, name, version, database, registry } => {
                    let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
                    let definition: serde_json::Value =
                        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", file.display()))?;
                    let field = |key: &str| definition.get(key).map(|v| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()));
                    let name = name.or_else(|| field("name")).context("the workflow has no name: give --name")?;
                    let version = version.or_else(|| field("version")).context("the workflow has no version: give --version")?;
                    let (store, registry) = open_registry(&database, &registry, SandboxConfig::default()).await?;
                    let (workflow, deployed) = registry.deploy_workflow(&name, &version, definition).await?;
                    println!("{} {}@{} ({})", deployed_word(deployed), workflow.name, workflow.version, workflow.digest);
                    store.close().await?;
                }
                WorkflowAction::List(ListArgs { database, output }) => {
                    let store = Store::open(&database.database_url).await?;
                    let workflows = store.list_workflows(None).await?;
                    match output {
                        OutputFormat::Json => {
                            let summaries: Vec<_> = workflows
                                .iter()
                                .map(|w| json!({ "name": w.name, "version": w.version, "digest": w.digest, "created_at": w.created_at }))
                                .collect();
                            println!("{}", serde_json::to_string_pretty(&json!({ "workflows": summaries }))?);
                        }
                        OutputFormat::Text => {
                            for workflow in &workflows {
                                println!("{}@{}  {}  {}", workflow.name, workflow.version, workflow.digest, workflow.created_at.to_rfc3339());
                            }
                        }
                    }
                    store.close().await?;
                }
            }
            Ok(Status::Succeeded)
        })
    }
}
