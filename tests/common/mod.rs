//! Helpers shared by the end-to-end tests: databases (a temporary SQLite file, a fresh
//! Postgres database per test), the shared sandbox, and running a workflow through the
//! library or the real binary.
#![allow(dead_code)]

pub mod server;

use braid::engine::{Engine, RunPlan};
use braid::registry::AgentDirectory;
use braid::sandbox::{Sandbox, SandboxConfig};
use braid::store::{RunRecord, StepRecord, Store};
use braid::workflow;
use braid_test_artifacts::agents_dir;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The Postgres server tests create their databases on.
pub fn postgres_admin_url() -> String {
    std::env::var("BRAID_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database of its own for one test.
pub struct TestDb {
    pub url: String,
    pub kind: &'static str,
    cleanup: Option<(String, String)>,
    _dir: Option<tempdir::TempDir>,
}

mod tempdir {
    /// A temporary folder removed on drop.
    pub struct TempDir(pub std::path::PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl TestDb {
    pub fn sqlite() -> TestDb {
        let dir = std::env::temp_dir().join(format!("braid-test-{}", Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        TestDb {
            url: format!("sqlite://{}", dir.join("braid.db").display()),
            kind: "sqlite",
            cleanup: None,
            _dir: Some(tempdir::TempDir(dir)),
        }
    }

    pub async fn postgres() -> TestDb {
        let admin = postgres_admin_url();
        let name = format!("braid_test_{}", Uuid::now_v7().simple());
        let mut connection =
            <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await.expect("connect to Postgres");
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut connection).await.unwrap();
        let base = admin.rsplit_once('/').map(|(base, _)| base).unwrap();
        TestDb { url: format!("{base}/{name}"), kind: "postgres", cleanup: Some((admin, name)), _dir: None }
    }

    /// Both kinds, for tests that must hold on each.
    pub async fn both() -> [TestDb; 2] {
        [TestDb::sqlite(), TestDb::postgres().await]
    }

    pub async fn drop_database(self) {
        if let Some((admin, name)) = &self.cleanup
            && let Ok(mut connection) = <sqlx::PgConnection as sqlx::Connection>::connect(admin).await
        {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut connection).await;
        }
    }
}

/// One sandbox for the whole test binary, as in a real host.
pub fn sandbox() -> Arc<Sandbox> {
    static SANDBOX: OnceLock<Arc<Sandbox>> = OnceLock::new();
    SANDBOX
        .get_or_init(|| {
            Arc::new(Sandbox::new(SandboxConfig { max_instances: 64, ..SandboxConfig::default() }).unwrap())
        })
        .clone()
}

/// Parses, validates and resolves `definition` against the built agents.
pub fn plan(definition: &Value) -> Arc<RunPlan> {
    let workflow = workflow::parse(&definition.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let agents = AgentDirectory::new(agents_dir());
    workflow::validate(&workflow, &|r| agents.path_of(r).is_some()).unwrap_or_else(|e| panic!("{e}"));
    let resolved = agents.resolve(&workflow, &sandbox()).unwrap();
    Arc::new(RunPlan { workflow: Arc::new(workflow), agents: resolved, workflow_digest: None })
}

/// Runs `definition` on `input`, recording into `store`; returns the run and its steps.
pub async fn run(store: &Store, definition: &Value, input: Value) -> (RunRecord, Vec<StepRecord>) {
    run_with(store, plan(definition), input, CancellationToken::new()).await
}

pub async fn run_with(
    store: &Store,
    plan: Arc<RunPlan>,
    input: Value,
    cancel: CancellationToken,
) -> (RunRecord, Vec<StepRecord>) {
    let engine = Engine::new(sandbox(), store.recorder().clone());
    let run = engine.run(plan, Uuid::now_v7(), input.into(), cancel).await.expect("recording works");
    let steps = store.run_steps(run.id).await.unwrap();
    (run, steps)
}

/// The rows of step `id`.
pub fn rows<'a>(steps: &'a [StepRecord], id: &str) -> Vec<&'a StepRecord> {
    steps.iter().filter(|s| s.step_id == id).collect()
}

/// The one row of step `id`.
pub fn row<'a>(steps: &'a [StepRecord], id: &str) -> &'a StepRecord {
    let found = rows(steps, id);
    assert_eq!(found.len(), 1, "expected one row for {id}: {found:#?}");
    found[0]
}

/// The most rows running at the same moment, from their recorded start and finish times.
pub fn peak_overlap(rows: &[&StepRecord]) -> usize {
    let mut events: Vec<(chrono::DateTime<chrono::Utc>, i32)> = Vec::new();
    for row in rows {
        events.push((row.started_at.unwrap(), 1));
        events.push((row.finished_at.unwrap(), -1));
    }
    // Ends before starts at the same instant: touching intervals do not overlap.
    events.sort_by_key(|&(at, delta)| (at, delta));
    let (mut live, mut peak) = (0i32, 0i32);
    for (_, delta) in events {
        live += delta;
        peak = peak.max(live);
    }
    peak as usize
}

/// The `braid` binary.
pub fn braid() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_braid"))
}

pub fn examples_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/workflows"))
}

/// A running run's row, for tests that write records directly.
pub fn run_record(workflow: &str) -> RunRecord {
    RunRecord {
        id: Uuid::now_v7(),
        workflow_name: workflow.into(),
        workflow_version: "1".into(),
        status: braid::store::RunStatus::Running,
        input: Some(serde_json::json!({}).into()),
        output: None,
        error: None,
        created_at: chrono::Utc::now(),
        started_at: Some(chrono::Utc::now()),
        finished_at: None,
        workflow_digest: None,
        pinned_agents: None,
        owner_host_id: None,
        epoch: 1,
        redrive_count: 0,
    }
}

/// A succeeded agent step row of `run`.
pub fn step_record(run: &RunRecord, step_id: &str) -> StepRecord {
    let mut row = StepRecord::new(run.id, step_id, "agent", braid::store::StepStatus::Succeeded);
    row.agent_name = Some("echo".into());
    row.outcome = Some("succeeded".into());
    row.input = Some(serde_json::json!({}).into());
    row.output = Some(serde_json::json!({}).into());
    row.started_at = Some(chrono::Utc::now());
    row.finished_at = Some(chrono::Utc::now());
    row.host_id = Some("test".into());
    row
}
