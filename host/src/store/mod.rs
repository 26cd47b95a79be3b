//! Records: runs, step executions and their logs, in Postgres or an embedded SQLite file,
//! through sqlx. Migrations (reversible, in `migrations/postgres` and `migrations/sqlite`)
//! are applied when a store is opened.
//!
//! Writes go through a [`Recorder`]: one writer task per store takes everything queued
//! since its last commit and writes it in one transaction, many rows per statement (group
//! commit), so recording a wide fan-out does not cost a round trip per row. Every write
//! hands back a [`Pending`] that resolves once the row is committed; callers wait on it
//! where durability matters (before anything reads a step's output) and drop it elsewhere.
//!
//! The store knows nothing of workflows or the sandbox: it stores the plain rows of
//! [`records`].

mod backend;
mod document;
mod postgres;
pub mod records;
mod sqlite;

pub use document::run_document;
pub use records::{
    AgentRecord, Inserted, LogRecord, RunFilter, RunRecord, RunStatus, StepRecord, StepStatus, WorkflowRecord,
};

use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// The embedded default: a SQLite file in the current directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://braid.db";

/// Most queued writes taken into one transaction.
const MAX_WRITES_PER_COMMIT: usize = 10_000;

/// Why the store failed. Messages are kept as text so that one failed commit can be
/// reported to every writer waiting on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL {0:?}: expected postgres://... or sqlite://...")]
    UnsupportedUrl(String),
    #[error("could not open the database: {0}")]
    Connect(String),
    #[error("database migration failed: {0}")]
    Migrate(String),
    #[error("database query failed: {0}")]
    Query(String),
    #[error("the database holds a value Braid cannot read: {0}")]
    Corrupt(String),
    #[error("the store's writer has stopped")]
    WriterStopped,
}

impl StoreError {
    fn query(err: sqlx::Error) -> Self {
        StoreError::Query(err.to_string())
    }
}

/// Calls the backend function of the store's database.
macro_rules! dispatch {
    ($store:expr, $function:ident($($arg:expr),*)) => {
        match &$store.pool {
            Pool::Postgres(pool) => postgres::$function(pool, $($arg),*).await,
            Pool::Sqlite(pool) => sqlite::$function(pool, $($arg),*).await,
        }
    };
}

#[derive(Clone)]
enum Pool {
    Postgres(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

/// An open store: reads directly, writes through its [`Recorder`].
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    recorder: Recorder,
}

impl Store {
    /// Opens the database at `url` and applies pending migrations.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let store = Store::open_unmigrated(url).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Opens the database at `url` without touching its schema (for `braid migrate`).
    pub async fn open_unmigrated(url: &str) -> Result<Store, StoreError> {
        let pool = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            // One writer commits for everybody; the rest serve reads (run documents, plans)
            // for concurrent API requests.
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(10))
                .connect(url)
                .await
                .map_err(|e| StoreError::Connect(e.to_string()))?;
            Pool::Postgres(pool)
        } else if url.starts_with("sqlite:") {
            // WAL with synchronous=NORMAL: a commit survives the process dying; only a
            // power loss can take the last commits with it.
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|e| StoreError::Connect(e.to_string()))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(10));
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(options)
                .await
                .map_err(|e| StoreError::Connect(e.to_string()))?;
            Pool::Sqlite(pool)
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_owned()));
        };
        let recorder = Recorder::start(pool.clone());
        Ok(Store { pool, recorder })
    }

    /// Applies every pending migration.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let result = match &self.pool {
            Pool::Postgres(pool) => postgres::MIGRATOR.run(pool).await,
            Pool::Sqlite(pool) => sqlite::MIGRATOR.run(pool).await,
        };
        result.map_err(|e| StoreError::Migrate(e.to_string()))
    }

    /// Reverts every applied migration (drops Braid's tables and their data).
    pub async fn revert(&self) -> Result<(), StoreError> {
        let result = match &self.pool {
            Pool::Postgres(pool) => postgres::MIGRATOR.undo(pool, 0).await,
            Pool::Sqlite(pool) => sqlite::MIGRATOR.undo(pool, 0).await,
        };
        result.map_err(|e| StoreError::Migrate(e.to_string()))
    }

    /// The handle that writes records.
    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    /// Recorded runs, newest first.
    pub async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>, StoreError> {
        dispatch!(self, list_runs(filter))
    }

    /// One run, if it exists.
    pub async fn get_run(&self, id: Uuid) -> Result<Option<RunRecord>, StoreError> {
        dispatch!(self, get_run(id))
    }

    /// A run's step executions, in the order they started.
    pub async fn run_steps(&self, run_id: Uuid) -> Result<Vec<StepRecord>, StoreError> {
        dispatch!(self, run_steps(run_id))
    }

    /// The logs of a run's step executions.
    pub async fn run_logs(&self, run_id: Uuid) -> Result<Vec<LogRecord>, StoreError> {
        dispatch!(self, run_logs(run_id))
    }

    /// Runs accepted or started but not finished, oldest first.
    pub async fn unfinished_runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        dispatch!(self, unfinished_runs())
    }

    /// Asks for a run to be cancelled by whichever host runs it; false when the run does
    /// not exist or already finished.
    pub async fn request_cancel(&self, id: Uuid) -> Result<bool, StoreError> {
        dispatch!(self, request_cancel(id))
    }

    /// Which of `ids` someone asked to cancel.
    pub async fn cancel_requested(&self, ids: &[Uuid]) -> Result<Vec<Uuid>, StoreError> {
        dispatch!(self, cancel_requested(ids))
    }

    /// Stores a new agent version with its component bytes.
    pub async fn insert_agent(&self, agent: &AgentRecord, wasm: &[u8]) -> Result<Inserted, StoreError> {
        dispatch!(self, insert_agent(agent, wasm))
    }

    /// One version of an agent (`None`: the latest deployed).
    pub async fn find_agent(&self, name: &str, version: Option<&str>) -> Result<Option<AgentRecord>, StoreError> {
        dispatch!(self, find_agent(name, version))
    }

    /// Deployed agent versions, of one agent or of all.
    pub async fn list_agents(&self, name: Option<&str>) -> Result<Vec<AgentRecord>, StoreError> {
        dispatch!(self, list_agents(name))
    }

    /// The component bytes with this digest.
    pub async fn agent_wasm(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        dispatch!(self, agent_wasm(digest))
    }

    /// Stores a new workflow version.
    pub async fn insert_workflow(&self, workflow: &WorkflowRecord) -> Result<Inserted, StoreError> {
        dispatch!(self, insert_workflow(workflow))
    }

    /// One version of a workflow (`None`: the latest deployed).
    pub async fn find_workflow(&self, name: &str, version: Option<&str>) -> Result<Option<WorkflowRecord>, StoreError> {
        dispatch!(self, find_workflow(name, version))
    }

    /// Deployed workflow versions, of one workflow or of all.
    pub async fn list_workflows(&self, name: Option<&str>) -> Result<Vec<WorkflowRecord>, StoreError> {
        dispatch!(self, list_workflows(name))
    }

    /// Closes the connections once queued writes are committed.
    pub async fn close(&self) -> Result<(), StoreError> {
        let flushed = self.recorder.flush().await;
        match &self.pool {
            Pool::Postgres(pool) => pool.close().await,
            Pool::Sqlite(pool) => pool.close().await,
        }
        flushed
    }
}

/// Rows to write in one transaction. A row written twice in a batch (started, then
/// finished) is written once, in its last state.
#[derive(Default)]
pub(crate) struct Batch {
    runs: Vec<RunRecord>,
    steps: Vec<StepRecord>,
    logs: Vec<LogRecord>,
    run_index: HashMap<Uuid, usize>,
    step_index: HashMap<Uuid, usize>,
}

impl Batch {
    fn add(&mut self, write: Write) {
        match write {
            Write::Run(run) => upsert(&mut self.runs, &mut self.run_index, run.id, *run),
            Write::Step(step, logs) => {
                upsert(&mut self.steps, &mut self.step_index, step.id, *step);
                self.logs.extend(logs);
            }
            Write::Flush => {}
        }
    }

    fn is_empty(&self) -> bool {
        self.runs.is_empty() && self.steps.is_empty() && self.logs.is_empty()
    }
}

fn upsert<T>(rows: &mut Vec<T>, index: &mut HashMap<Uuid, usize>, id: Uuid, row: T) {
    match index.get(&id) {
        Some(&at) => rows[at] = row,
        None => {
            index.insert(id, rows.len());
            rows.push(row);
        }
    }
}

enum Write {
    Run(Box<RunRecord>),
    Step(Box<StepRecord>, Vec<LogRecord>),
    Flush,
}

type Ack = oneshot::Sender<Result<(), StoreError>>;

/// Queues rows for the store's writer task. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    queue: mpsc::UnboundedSender<(Write, Ack)>,
}

/// A queued write; [`Pending::committed`] waits until it is durable. Dropping it does not
/// cancel the write.
#[must_use = "await `committed()` where durability matters; dropping it is fine elsewhere"]
pub struct Pending(oneshot::Receiver<Result<(), StoreError>>);

impl Pending {
    /// A write that needs no waiting (nothing was queued).
    pub fn ready() -> Pending {
        let (ack, pending) = oneshot::channel();
        let _ = ack.send(Ok(()));
        Pending(pending)
    }

    /// Waits until the write is committed, or reports why it could not be.
    pub async fn committed(self) -> Result<(), StoreError> {
        self.0.await.unwrap_or(Err(StoreError::WriterStopped))
    }
}

impl Recorder {
    fn start(pool: Pool) -> Recorder {
        let (queue, receiver) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(pool, receiver));
        Recorder { queue }
    }

    fn send(&self, write: Write) -> Pending {
        let (ack, pending) = oneshot::channel();
        if let Err(mpsc::error::SendError((_, ack))) = self.queue.send((write, ack)) {
            let _ = ack.send(Err(StoreError::WriterStopped));
        }
        Pending(pending)
    }

    /// Inserts or updates a `workflow_runs` row.
    pub fn run(&self, run: RunRecord) -> Pending {
        self.send(Write::Run(Box::new(run)))
    }

    /// Inserts or updates a `step_executions` row, with log lines to add.
    pub fn step(&self, step: StepRecord, logs: Vec<LogRecord>) -> Pending {
        self.send(Write::Step(Box::new(step), logs))
    }

    /// Waits until everything queued so far is committed.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.send(Write::Flush).committed().await
    }
}

/// The writer task: takes everything queued, commits it in one transaction, answers every
/// waiting writer, and starts over. While one commit is in flight the next batch gathers.
async fn write_loop(pool: Pool, mut queue: mpsc::UnboundedReceiver<(Write, Ack)>) {
    let mut acks = Vec::new();
    while let Some((first, ack)) = queue.recv().await {
        let mut batch = Batch::default();
        batch.add(first);
        acks.push(ack);
        while acks.len() < MAX_WRITES_PER_COMMIT {
            match queue.try_recv() {
                Ok((write, ack)) => {
                    batch.add(write);
                    acks.push(ack);
                }
                Err(_) => break,
            }
        }
        let result = if batch.is_empty() {
            Ok(())
        } else {
            match &pool {
                Pool::Postgres(pool) => postgres::write_batch(pool, &batch).await,
                Pool::Sqlite(pool) => sqlite::write_batch(pool, &batch).await,
            }
        };
        if let Err(err) = &result {
            tracing::error!("recording failed: {err}");
        }
        for ack in acks.drain(..) {
            let _ = ack.send(result.clone());
        }
    }
}
