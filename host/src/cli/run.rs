//! `braid run`: run a workflow once — a definition file with agents from a folder, or a
//! deployed `NAME[@VERSION]` from the registry — recording it (embedded SQLite by default).

use super::registry::open_registry;
use super::render::run_text;
use super::{DatabaseArgs, HostArgs, OutputFormat, RegistryArgs, Status};
use crate::cluster::Runner;
use crate::engine::{Engine, RunPlan};
use crate::registry::{AgentDirectory, Registry};
use crate::sandbox::{Sandbox, SandboxConfig};
use crate::store::{RunStatus, Store};
use crate::workflow;
use anyhow::Context as _;
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Args)]
pub struct RunCommand {
    /// A workflow definition file (JSON), or the NAME[@VERSION] of a deployed workflow
    /// (when no such file exists).
    #[arg(value_name = "WORKFLOW.json|NAME[@VERSION]")]
    workflow: PathBuf,
    /// The run's input, as JSON text.
    #[arg(long, default_value = "{}")]
    input: String,
    /// Where the workflow's agents are: `DIR/<name>.wasm` (hyphens and underscores alike).
    #[arg(long, value_name = "DIR", default_value = ".")]
    agents: PathBuf,
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(flatten)]
    host: HostArgs,
    /// How to print the result.
    #[arg(long, value_enum, default_value_t)]
    output: OutputFormat,
}

impl RunCommand {
    pub fn execute(self) -> anyhow::Result<Status> {
        let input = crate::limits::parse_json(&self.input, "--input")?;
        crate::limits::check_run_input(&input, "--input")?;
        if !self.workflow.is_file() && is_workflow_name(&self.workflow) {
            return self.run_deployed(input);
        }
        let text = std::fs::read_to_string(&self.workflow)
            .with_context(|| format!("cannot read {}", self.workflow.display()))?;
        let agents =
            AgentDirectory::new(&self.agents).with_cache(crate::registry::ArtifactCache::new(&self.registry.cache_dir));
        let sandbox_config = self.host.sandbox_config(SandboxConfig::default())?;
        let definition = workflow::check_on_host(
            &text,
            &|reference| agents.path_of(reference).is_some(),
            &sandbox_config.outbound.ceiling,
        )?;
        definition.check_input(&input)?;
        let sandbox = Arc::new(Sandbox::new(sandbox_config)?);
        let resolved = agents.resolve(&definition, &sandbox)?;
        let components = agents.components(&definition)?;
        let document: serde_json::Value = serde_json::from_str(&text)?;
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        runtime.block_on(async {
            let store = Store::open(&self.database.database_url).await?;
            let registry = Arc::new(Registry::new(store.clone(), sandbox, &self.registry.cache_dir));
            // Stored by digest, so that any host can resume the run if this process dies.
            let digest = registry.keep_for_resume(&document, &components).await?;
            let plan =
                Arc::new(RunPlan { workflow: Arc::new(definition), agents: resolved, workflow_digest: Some(digest) });
            self.run_plan(&store, registry, plan, input).await
        })
    }

    /// `braid run NAME[@VERSION]`: the deployed workflow, its agents pinned now.
    fn run_deployed(&self, input: serde_json::Value) -> anyhow::Result<Status> {
        let reference = self.workflow.to_string_lossy().into_owned();
        let (name, version) = match reference.split_once('@') {
            Some((name, version)) => (name.to_owned(), Some(version.to_owned())),
            None => (reference.clone(), None),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        runtime.block_on(async {
            let sandbox = self.host.sandbox_config(SandboxConfig::default())?;
            let (store, registry) = open_registry(&self.database, &self.registry, sandbox).await?;
            let plan = registry.plan(&name, version.as_deref()).await?;
            plan.workflow.check_input(&input)?;
            self.run_plan(&store, Arc::new(registry), plan, input).await
        })
    }

    /// Runs `plan` as a host of its own: it owns the run under a lease it renews, notices
    /// `braid runs cancel` from another terminal, and claims nothing else. Killed, it
    /// leaves the run to any host on the same database once the lease expires.
    async fn run_plan(
        &self,
        store: &Store,
        registry: Arc<Registry>,
        plan: Arc<RunPlan>,
        input: serde_json::Value,
    ) -> anyhow::Result<Status> {
        let engine = Engine::new(registry.sandbox().clone(), store.recorder().clone());
        let runner = Runner::new(engine, registry, self.host.config(crate::store::HostRole::Run, Some(1))?);
        runner.start_host().await?;
        let started = runner.start(plan, input.into(), crate::cluster::StartOptions::default()).await?;
        let (on_interrupt, id) = (runner.clone(), started.run_id);
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("interrupted: cancelling the run");
                on_interrupt.cancel(id);
            }
        });
        // From here on the run exists and steps may have run: whatever goes wrong, the exit
        // code is 1 (a run that did not succeed), never 2 (refused before anything ran).
        // Live progress on a terminal, for people; JSON output stays one document.
        let follow = match self.output {
            OutputFormat::Text => super::progress::Follow::start(store, id),
            OutputFormat::Json => None,
        };
        let finished = async {
            let run = runner.wait(started.run_id, started.task).await;
            if let Some(follow) = follow {
                follow.finish().await;
            }
            let run = run?;
            runner.shutdown(std::time::Duration::ZERO).await;
            print_run(store, &run, self.output).await?;
            store.close().await?;
            anyhow::Ok(run.status)
        };
        match finished.await {
            Ok(RunStatus::Succeeded) => Ok(Status::Succeeded),
            Ok(_) => Ok(Status::Failed),
            Err(err) => {
                eprintln!("error: run {id} started, but {err:#} (see `braid runs show {id}`)");
                Ok(Status::Failed)
            }
        }
    }
}

/// Prints a finished run as `braid run` does: its text tree, or its JSON document.
pub(super) async fn print_run(
    store: &Store,
    run: &crate::store::RunRecord,
    output: OutputFormat,
) -> anyhow::Result<()> {
    match output {
        OutputFormat::Json => print_document(store, run).await?,
        OutputFormat::Text => {
            // A tree is for people: the first page of it, and how much more there is.
            let first = crate::store::StepFilter { limit: PRINT_PAGE, ..Default::default() };
            let page = store.steps_page(run.id, &first).await?;
            let details = store.details_of(&page).await?;
            print!("{}", run_text(run, &page, &details.http_calls));
            if page.len() == PRINT_PAGE as usize {
                let total: i64 = store.step_counts(run.id).await?.values().sum();
                println!("(the first {PRINT_PAGE} of {total} step executions; --output json prints them all)");
            }
        }
    }
    Ok(())
}

/// Step executions read and printed at a time.
const PRINT_PAGE: u32 = 1000;

/// Prints the run's whole document (as `run_document` builds it), reading and writing its
/// step executions a page at a time, so that memory stays bounded however wide the run.
async fn print_document(store: &Store, run: &crate::store::RunRecord) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let head = serde_json::to_string_pretty(&crate::store::run_columns(run))?;
    let head = head.strip_suffix("\n}").unwrap_or(&head);
    write!(out, "{head},\n  \"steps\": [")?;
    let mut filter = crate::store::StepFilter { limit: PRINT_PAGE, ..Default::default() };
    let mut first = true;
    loop {
        let page = store.steps_page(run.id, &filter).await?;
        let details = store.details_of(&page).await?;
        for step in crate::store::step_documents(&page, &details) {
            let text = serde_json::to_string_pretty(&step)?;
            writeln!(out, "{}", if first { "" } else { "," })?;
            first = false;
            let mut lines = text.lines().peekable();
            while let Some(line) = lines.next() {
                write!(out, "    {line}")?;
                if lines.peek().is_some() {
                    writeln!(out)?;
                }
            }
        }
        match page.last() {
            Some(last) if page.len() == PRINT_PAGE as usize => filter.after = Some(last.id),
            _ => break,
        }
    }
    writeln!(out, "{}]\n}}", if first { "" } else { "\n  " })?;
    out.flush()?;
    Ok(())
}

/// Whether `path` reads as `NAME[@VERSION]` rather than a file path.
fn is_workflow_name(path: &std::path::Path) -> bool {
    let text = path.to_string_lossy();
    !text.contains('/') && !text.ends_with(".json") && !text.is_empty()
}
