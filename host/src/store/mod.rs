//! Records: runs, step executions and their logs, in Postgres or an embedded SQLite file,
//! through sqlx. Migrations (reversible, in `migrations/postgres` and `migrations/sqlite`)
//! are applied when a store is opened.
//!
//! Writes go through a [`Recorder`]: a writer task takes everything queued since its last
//! commit and writes it in one transaction, many rows per statement (group commit), so
//! recording a wide fan-out does not cost a round trip per row. Postgres has two writers,
//! each with its own connection, so that the server writes a fan-out's rows on two cores:
//! runs' rows and their top-level step rows always go to the first (in order, and many
//! small runs share its commits), the rows inside blocks to either, by row id (a row's
//! writes stay in order). Every write
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
mod stored_json;
mod units;

pub use document::{paged_document, run_columns, run_document, step_documents};
pub use records::{
    AgentRecord, HostRecord, HostRole, HttpCallRecord, Inserted, LogRecord, RunFilter, RunRecord, RunStatus,
    StepDetails, StepFilter, StepRecord, StepStatus, WorkflowRecord,
};
pub use units::{ClaimedUnit, OfferedUnit, UnitFence};

use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The embedded default: a SQLite file in the current directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://braid.db";

/// Most queued writes taken into one transaction.
const MAX_WRITES_PER_COMMIT: usize = 10_000;

/// Most writes queued for a writer task: past it, writers wait for room (back-pressure
/// on the engine) instead of memory growing.
const MAX_QUEUED_WRITES: usize = 50_000;

/// Writer tasks (and connections) of a Postgres store. SQLite has one: it serializes
/// writers anyway.
const POSTGRES_WRITERS: usize = 2;

/// How long the writer keeps retrying a batch while the database is unreachable. Past it
/// the writers waiting on the batch get the error; by then their host has stopped its runs
/// (its leases lapsed), and another host resumes them.
const RETRY_UNAVAILABLE_FOR: Duration = Duration::from_secs(60);

/// The Postgres channel hosts LISTEN on (payloads: see [`Wake`]).
pub const WAKE_CHANNEL: &str = "braid_wake";

/// What a wake-up tells the hosts listening on [`WAKE_CHANNEL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// A run became claimable (accepted without a host, or redriven): payload `run`.
    Run,
    /// Someone asked to cancel this run: payload `cancel:<id>`.
    Cancel(Uuid),
    /// Units were offered: payload `units`.
    Units,
    /// A unit is done: payload `unit-done:<id>`.
    UnitDone(Uuid),
    /// Someone asked to cancel a unit: payload `unit-cancel:<id>`.
    UnitCancel(Uuid),
    /// A host started or stopped: payload `hosts`.
    Hosts,
}

impl Wake {
    fn payload(self) -> String {
        match self {
            Wake::Run => "run".to_owned(),
            Wake::Cancel(id) => format!("cancel:{id}"),
            Wake::Units => "units".to_owned(),
            Wake::UnitDone(id) => format!("unit-done:{id}"),
            Wake::UnitCancel(id) => format!("unit-cancel:{id}"),
            Wake::Hosts => "hosts".to_owned(),
        }
    }

    /// The wake-up a payload stands for; `None` for one this version does not know.
    fn parse(payload: &str) -> Option<Wake> {
        let (kind, id) = payload.split_once(':').unwrap_or((payload, ""));
        match kind {
            "run" => Some(Wake::Run),
            "units" => Some(Wake::Units),
            "hosts" => Some(Wake::Hosts),
            "cancel" => id.parse().ok().map(Wake::Cancel),
            "unit-done" => id.parse().ok().map(Wake::UnitDone),
            "unit-cancel" => id.parse().ok().map(Wake::UnitCancel),
            _ => None,
        }
    }
}

/// Why the store failed. Messages are kept as text so that one failed commit can be
/// reported to every writer waiting on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL {0:?}: expected postgres://... or sqlite://...")]
    UnsupportedUrl(String),
    #[error("could not open the database: {0}")]
    Connect(#[source] SourceError),
    #[error("database migration failed: {0}")]
    Migrate(#[source] SourceError),
    #[error("database query failed: {0}")]
    Query(#[source] SourceError),
    #[error("the database is unreachable: {0}")]
    Unavailable(#[source] SourceError),
    /// A task of the host's own failed (a panic, say): a bug, not the database.
    #[error("{0}")]
    Internal(String),
    #[error("run {0}: this host no longer holds the run's lease (another host took it over)")]
    LeaseLost(Uuid),
    #[error("the database holds a value Braid cannot read: {0}")]
    Corrupt(String),
    #[error("the store's writer has stopped")]
    WriterStopped,
    #[error(
        "another braid host is using the SQLite database {0}: SQLite is for one host on one machine; \
         several hosts sharing work need Postgres (--database-url postgres://...)"
    )]
    SingleHost(String),
}

impl StoreError {
    fn query(err: sqlx::Error) -> Self {
        let transient = match &err {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Protocol(_) => true,
            // Connection exceptions (08…), too many connections (53…), an administrator
            // ending the session (57P…, e.g. pg_terminate_backend) or closing the database
            // to connections (55000 when connecting).
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                code.starts_with("08") || code.starts_with("53") || code.starts_with("57P") || code == "55000"
            }),
            _ => false,
        };
        let err = SourceError::new(err);
        if transient { StoreError::Unavailable(err) } else { StoreError::Query(err) }
    }
}

/// The executions inside one block row of a run, by status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockProgress {
    /// The block's row; `None` for the run's top level.
    pub block: Option<Uuid>,
    pub step_id: String,
    pub step_type: String,
    pub counts: std::collections::BTreeMap<StepStatus, i64>,
}

/// An error from the database driver, kept whole as the source of a [`StoreError`] and
/// shared by every writer waiting on the commit that failed.
#[derive(Debug, Clone)]
pub struct SourceError(std::sync::Arc<dyn std::error::Error + Send + Sync>);

impl SourceError {
    fn new(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        SourceError(std::sync::Arc::new(err))
    }
}

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SourceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Two errors are the same when they say the same (tests compare store results).
impl PartialEq for SourceError {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for SourceError {}

/// Calls the backend function of the store's database.
macro_rules! dispatch {
    ($store:expr, $function:ident($($arg:expr),*)) => {
        match &$store.pool {
            Pool::Postgres(pool) => postgres::$function(pool, $($arg),*).await,
            Pool::Sqlite(pool) => sqlite::$function(pool, $($arg),*).await,
        }
    };
}
use dispatch;

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
    /// The SQLite file, when the store is one (`None` in memory).
    sqlite_file: Option<std::path::PathBuf>,
}

impl Store {
    /// Opens the database at `url` and applies pending migrations.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let store = Store::open_unmigrated(url).await?;
        store.migrate().await?;
        // Not before: the warm-up writes (and rolls back) rows of the tables migrations change.
        store.recorder.warm_up();
        Ok(store)
    }

    /// Opens the database at `url` without touching its schema (for `braid migrate`).
    pub async fn open_unmigrated(url: &str) -> Result<Store, StoreError> {
        let mut sqlite_file = None;
        let pool = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            // One writer commits for everybody; the rest serve reads (run documents, plans)
            // for concurrent API requests.
            // Postgres chooses between custom and generic plans itself: forcing generic plans
            // (tried for the fenced step upsert) cost 5-10% on the workflow bench and a fifth
            // of the in-process run rate, measured side by side.
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(10))
                .connect(url)
                .await
                .map_err(|e| StoreError::Connect(SourceError::new(e)))?;
            Pool::Postgres(pool)
        } else if url.starts_with("sqlite:") {
            // WAL with synchronous=NORMAL: a commit survives the process dying; only a
            // power loss can take the last commits with it.
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|e| StoreError::Connect(SourceError::new(e)))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(10));
            let file = options.get_filename();
            if !file.as_os_str().is_empty() && file != std::path::Path::new(":memory:") {
                sqlite_file = Some(file.to_path_buf());
            }
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(options)
                .await
                .map_err(|e| StoreError::Connect(SourceError::new(e)))?;
            Pool::Sqlite(pool)
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_owned()));
        };
        let recorder = Recorder::start(pool.clone());
        Ok(Store { pool, recorder, sqlite_file })
    }

    /// On a SQLite file, makes this process its only host: an exclusive lock on the file,
    /// held while the returned guard lives and released by the kernel if the process dies.
    /// [`StoreError::SingleHost`] when another process holds it. `None` on Postgres.
    pub fn lock_single_host(&self) -> Result<Option<std::fs::File>, StoreError> {
        let Some(path) = &self.sqlite_file else { return Ok(None) };
        let file = std::fs::File::open(path).map_err(|e| StoreError::Connect(SourceError::new(e)))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::SingleHost(path.display().to_string())),
            Err(std::fs::TryLockError::Error(err)) => Err(StoreError::Connect(SourceError::new(err))),
        }
    }

    /// Applies every pending migration.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let result = match &self.pool {
            Pool::Postgres(pool) => postgres::MIGRATOR.run(pool).await,
            Pool::Sqlite(pool) => sqlite::MIGRATOR.run(pool).await,
        };
        result.map_err(|e| StoreError::Migrate(SourceError::new(e)))
    }

    /// Reverts every applied migration (drops Braid's tables and their data).
    pub async fn revert(&self) -> Result<(), StoreError> {
        let result = match &self.pool {
            Pool::Postgres(pool) => postgres::MIGRATOR.undo(pool, 0).await,
            Pool::Sqlite(pool) => sqlite::MIGRATOR.undo(pool, 0).await,
        };
        result.map_err(|e| StoreError::Migrate(SourceError::new(e)))
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

    /// One run without its input and output (`None` there), which can be large: for what is
    /// read often (a watcher's poll, the UI).
    pub async fn get_run_state(&self, id: Uuid) -> Result<Option<RunRecord>, StoreError> {
        dispatch!(self, get_run_state(id))
    }

    /// A run's step executions without inputs and outputs, in the order they started.
    pub async fn run_step_states(&self, run_id: Uuid) -> Result<Vec<StepRecord>, StoreError> {
        dispatch!(self, run_step_states(run_id))
    }

    /// One page of a run's step executions (creation order), as `filter` says.
    pub async fn steps_page(&self, run_id: Uuid, filter: &StepFilter) -> Result<Vec<StepRecord>, StoreError> {
        dispatch!(self, steps_page(run_id, filter))
    }

    /// How many step executions a run has, by status.
    pub async fn step_counts(&self, run_id: Uuid) -> Result<std::collections::BTreeMap<String, i64>, StoreError> {
        let counts: Result<Vec<(String, i64)>, StoreError> = dispatch!(self, step_counts(run_id));
        Ok(counts?.into_iter().collect())
    }

    /// Where a run stands, block by block: each block row (every execution that is not an
    /// agent step) with the count of the executions inside it by status, in creation order,
    /// after the counts of the run's top level (`block: None`).
    pub async fn progress(&self, run_id: Uuid) -> Result<Vec<BlockProgress>, StoreError> {
        let (counts, blocks) = tokio::try_join!(async { dispatch!(self, counts_by_parent(run_id)) }, async {
            dispatch!(self, block_rows(run_id))
        })?;
        let mut progress: Vec<BlockProgress> = std::iter::once(BlockProgress::default())
            .chain(blocks.into_iter().map(|(id, step_id, step_type)| BlockProgress {
                block: Some(id),
                step_id,
                step_type,
                counts: std::collections::BTreeMap::new(),
            }))
            .collect();
        let index: HashMap<Option<Uuid>, usize> =
            progress.iter().enumerate().map(|(at, block)| (block.block, at)).collect();
        for (parent, status, count) in counts {
            let status = status.parse::<StepStatus>().map_err(StoreError::Corrupt)?;
            if let Some(&at) = index.get(&parent) {
                progress[at].counts.insert(status, count);
            }
        }
        Ok(progress)
    }

    /// The logs and HTTP requests of these step executions (a page of them, say).
    pub async fn details_of(&self, steps: &[StepRecord]) -> Result<StepDetails, StoreError> {
        let ids: Vec<Uuid> = steps.iter().map(|step| step.id).collect();
        dispatch!(self, details_of(&ids))
    }

    /// Claims up to `limit` runs that no host is executing (pending, or under an expired
    /// lease) for `host`, oldest first; each claim bumps the run's epoch.
    pub async fn claim_runs(&self, host: &str, lease: Duration, limit: usize) -> Result<Vec<RunRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        dispatch!(self, claim_runs(host, millis(lease), limit))
    }

    /// Claims run `id` for `host`, if no host is executing it.
    pub async fn claim_run(&self, id: Uuid, host: &str, lease: Duration) -> Result<Option<RunRecord>, StoreError> {
        dispatch!(self, claim_run(id, host, millis(lease)))
    }

    /// Extends the leases `host` holds on `ids`; returns the runs it still holds, with
    /// their epochs.
    pub async fn renew_leases(
        &self,
        host: &str,
        ids: &[Uuid],
        lease: Duration,
    ) -> Result<Vec<(Uuid, i64)>, StoreError> {
        dispatch!(self, renew_leases(host, ids, millis(lease)))
    }

    /// Sends a failed or cancelled run back to `pending` to run again; `None` when the run
    /// is not failed or cancelled.
    pub async fn redrive(&self, id: Uuid) -> Result<Option<RunRecord>, StoreError> {
        let run = dispatch!(self, redrive(id))?;
        if run.is_some() {
            self.wake(Wake::Run).await;
        }
        Ok(run)
    }

    /// Accepts `run` once per `key` (per workflow): returns the id of the run the key names
    /// and whether it was created now.
    pub async fn insert_run_once(&self, run: &RunRecord, key: &str) -> Result<(Uuid, bool), StoreError> {
        dispatch!(self, insert_run_once(run, key))
    }

    /// Stores a workflow definition by its digest (once).
    pub async fn insert_definition(&self, digest: &str, definition: &serde_json::Value) -> Result<(), StoreError> {
        dispatch!(self, insert_definition(digest, definition))
    }

    /// The definition with this digest.
    pub async fn definition(&self, digest: &str) -> Result<Option<serde_json::Value>, StoreError> {
        dispatch!(self, definition(digest))
    }

    /// Stores component bytes by digest, unless they are stored already.
    pub async fn insert_component(&self, digest: &str, wasm: &[u8]) -> Result<(), StoreError> {
        dispatch!(self, insert_component(digest, wasm))
    }

    /// Records the W3C `traceparent` run `run_id` was started with.
    pub async fn insert_trace_parent(&self, run_id: Uuid, traceparent: &str) -> Result<(), StoreError> {
        dispatch!(self, insert_trace_parent(run_id, traceparent))
    }

    /// The `traceparent` run `run_id` was started with, if any.
    pub async fn trace_parent(&self, run_id: Uuid) -> Result<Option<String>, StoreError> {
        dispatch!(self, trace_parent(run_id))
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, ping())
    }

    /// Wakes the hosts listening on this database (Postgres `NOTIFY`; on SQLite hosts
    /// poll). Best effort: a lost wake-up only delays pick-up until the next poll.
    pub async fn wake(&self, wake: Wake) {
        if let Pool::Postgres(pool) = &self.pool
            && let Err(err) = postgres::notify(pool, &wake.payload()).await
        {
            tracing::warn!("could not notify other hosts: {err}");
        }
    }

    /// A listener for wake-ups from other processes (Postgres); `None` on SQLite, where
    /// hosts poll.
    pub async fn listen(&self) -> Result<Option<WakeListener>, StoreError> {
        match &self.pool {
            Pool::Postgres(pool) => {
                let mut listener = PgListener::connect_with(pool).await.map_err(StoreError::query)?;
                listener.listen(WAKE_CHANNEL).await.map_err(StoreError::query)?;
                Ok(Some(WakeListener(listener)))
            }
            Pool::Sqlite(_) => Ok(None),
        }
    }

    /// Asks for a run to be cancelled by whichever host runs it (woken at once on
    /// Postgres); false when the run does not exist or already finished.
    pub async fn request_cancel(&self, id: Uuid) -> Result<bool, StoreError> {
        let requested = dispatch!(self, request_cancel(id))?;
        if requested {
            self.wake(Wake::Cancel(id)).await;
        }
        Ok(requested)
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
        let flushed = self.recorder.flush_and_release().await;
        match &self.pool {
            Pool::Postgres(pool) => pool.close().await,
            Pool::Sqlite(pool) => pool.close().await,
        }
        flushed
    }
}

/// Wake-ups from other processes, as their payloads.
pub struct WakeListener(PgListener);

impl WakeListener {
    /// The next wake-up (`None`: a payload this version does not know). An error means the
    /// connection dropped; sqlx reconnects on the next call (wake-ups sent meanwhile are
    /// lost, which polling covers).
    pub async fn recv(&mut self) -> Result<Option<Wake>, StoreError> {
        self.0.recv().await.map(|n| Wake::parse(n.payload())).map_err(StoreError::query)
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// The claim a host's writes for one run carry: the epoch it claimed the run at, and the
/// token cancelled when the database refuses a write because the epoch moved on.
#[derive(Debug, Clone)]
pub struct Fence {
    pub epoch: i64,
    lost: CancellationToken,
}

impl Fence {
    pub fn new(epoch: i64) -> Self {
        Fence { epoch, lost: CancellationToken::new() }
    }

    /// A fence whose loss cancels `lost`.
    pub fn with_token(epoch: i64, lost: CancellationToken) -> Self {
        Fence { epoch, lost }
    }

    /// Cancelled once the host has lost the run (a write was refused, or the heartbeat
    /// found the run taken over).
    pub fn lost(&self) -> &CancellationToken {
        &self.lost
    }
}

/// What a committed batch did not write: the runs whose writes carried a stale epoch.
#[derive(Debug, Default)]
pub(crate) struct Written {
    refused: std::collections::HashSet<Uuid>,
}

/// Rows to write in one transaction. A row written twice in a batch (started, then
/// finished) is written once, in its last state.
#[derive(Default)]
pub(crate) struct Batch {
    /// Each run with the lease to give its owner, in milliseconds (a host accepting a run
    /// it executes itself).
    runs: Vec<(RunRecord, Option<i64>)>,
    /// Each step row with the epoch of the host writing it: rows that may exist already
    /// (upserted).
    steps: Vec<(StepRecord, i64)>,
    /// Step rows written for the first time: plain inserts, which cost the database less
    /// than upserts (no speculative insertion).
    new_steps: Vec<(StepRecord, i64)>,
    details: StepDetails,
    run_index: HashMap<Uuid, usize>,
    step_index: HashMap<Uuid, RowAt>,
    /// A flush in it asked the writer to give its connection back afterwards.
    release_connection: bool,
    /// A warm-up was asked for.
    warm_up: bool,
}

/// Which row of a batch a write went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum RowAt {
    Run(usize),
    Step(usize),
    NewStep(usize),
}

/// How step rows are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepWrite {
    /// A plain insert: the rows are new.
    Insert,
    /// An insert that updates the row with the same id if there is one.
    Upsert,
}

impl Batch {
    fn add(&mut self, write: Write) -> Option<RowAt> {
        match write {
            Write::Run(run, lease) => {
                let id = run.id;
                // A later write of the same run keeps the lease an earlier one gave.
                let lease = lease.or_else(|| self.run_index.get(&id).and_then(|&at| self.runs[at].1));
                Some(RowAt::Run(upsert(&mut self.runs, &mut self.run_index, id, (*run, lease))))
            }
            Write::Step(step, details, epoch, mode) => {
                self.details.logs.extend(details.logs);
                self.details.http_calls.extend(details.http_calls);
                // A row written again in the same batch stays where its first write put it.
                let at = match self.step_index.get(&step.id) {
                    Some(&RowAt::Step(at)) => {
                        self.steps[at] = (*step, epoch);
                        RowAt::Step(at)
                    }
                    Some(&RowAt::NewStep(at)) => {
                        self.new_steps[at] = (*step, epoch);
                        RowAt::NewStep(at)
                    }
                    _ => {
                        let (rows, at): (_, fn(usize) -> RowAt) = match mode {
                            StepWrite::Insert => (&mut self.new_steps, RowAt::NewStep),
                            StepWrite::Upsert => (&mut self.steps, RowAt::Step),
                        };
                        let id = step.id;
                        rows.push((*step, epoch));
                        let at = at(rows.len() - 1);
                        self.step_index.insert(id, at);
                        at
                    }
                };
                Some(at)
            }
            Write::Flush { release_connection } => {
                self.release_connection |= release_connection;
                None
            }
            Write::WarmUp => {
                self.warm_up = true;
                None
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.runs.is_empty() && self.steps.is_empty() && self.new_steps.is_empty() && self.details.is_empty()
    }

    /// Every row, runs first (a step row needs its run's row).
    fn rows(&self) -> impl Iterator<Item = RowAt> {
        (0..self.runs.len())
            .map(RowAt::Run)
            .chain((0..self.new_steps.len()).map(RowAt::NewStep))
            .chain((0..self.steps.len()).map(RowAt::Step))
    }

    /// Every step row with its epoch.
    fn all_steps(&self) -> impl Iterator<Item = &(StepRecord, i64)> {
        self.new_steps.iter().chain(&self.steps)
    }

    /// One row alone, with its logs: a failed commit is retried row by row, so that a row
    /// the database refuses fails only the writer who sent it.
    fn single(&self, row: RowAt) -> Batch {
        let mut alone = Batch::default();
        match row {
            RowAt::Run(at) => alone.runs.push(self.runs[at].clone()),
            RowAt::Step(at) | RowAt::NewStep(at) => {
                let step = if matches!(row, RowAt::Step(_)) { &self.steps[at] } else { &self.new_steps[at] };
                let id = step.0.id;
                alone.details.logs =
                    self.details.logs.iter().filter(|log| log.step_execution_id == id).cloned().collect();
                alone.details.http_calls =
                    self.details.http_calls.iter().filter(|call| call.step_execution_id == id).cloned().collect();
                if matches!(row, RowAt::Step(_)) {
                    alone.steps.push(step.clone());
                } else {
                    alone.new_steps.push(step.clone());
                }
            }
        }
        alone
    }
}

fn upsert<T>(rows: &mut Vec<T>, index: &mut HashMap<Uuid, usize>, id: Uuid, row: T) -> usize {
    match index.get(&id) {
        Some(&at) => {
            rows[at] = row;
            at
        }
        None => {
            index.insert(id, rows.len());
            rows.push(row);
            rows.len() - 1
        }
    }
}

enum Write {
    Run(Box<RunRecord>, Option<i64>),
    Step(Box<StepRecord>, StepDetails, i64, StepWrite),
    /// Answered once everything queued before it is committed; `release_connection`
    /// gives the writer's connection back to the pool (before the pool closes).
    Flush {
        release_connection: bool,
    },
    /// Takes the writer's connection and prepares its statements (see
    /// [`WriterConnection::warm`]) before anything queued after it is written.
    WarmUp,
}

/// Who waits for a write: its acknowledgement, and the run and fence it was written under.
struct Waiter {
    ack: oneshot::Sender<Result<(), StoreError>>,
    run: Option<(Uuid, Option<CancellationToken>)>,
}

impl Waiter {
    /// Answers with how the commit that held the write went.
    fn answer(self, result: &Result<Written, StoreError>) {
        let answer = match result {
            Ok(written) => match self.run.as_ref().filter(|(run, _)| written.refused.contains(run)) {
                Some((run, lost)) => {
                    if let Some(lost) = lost {
                        lost.cancel();
                    }
                    Err(StoreError::LeaseLost(*run))
                }
                None => Ok(()),
            },
            Err(err) => Err(err.clone()),
        };
        let _ = self.ack.send(answer);
    }
}

/// Queues rows for the store's writer tasks. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    queues: std::sync::Arc<[mpsc::Sender<(Write, Waiter)>]>,
}

/// A queued write; [`Pending::committed`] waits until it is durable. Dropping it does not
/// cancel the write.
#[must_use = "await `committed()` where durability matters; dropping it is fine elsewhere"]
pub struct Pending(PendingState);

enum PendingState {
    /// Queued: the writer answers on the channel.
    Queued(oneshot::Receiver<Result<(), StoreError>>),
    /// Waiting for room in the queue first (the writer is behind).
    Blocked(Box<dyn std::future::Future<Output = Result<(), StoreError>> + Send + Unpin>),
}

impl Pending {
    /// A write that needs no waiting (nothing was queued).
    pub fn ready() -> Pending {
        let (ack, pending) = oneshot::channel();
        let _ = ack.send(Ok(()));
        Pending(PendingState::Queued(pending))
    }

    /// Waits until the write is committed, or reports why it could not be.
    pub async fn committed(self) -> Result<(), StoreError> {
        match self.0 {
            PendingState::Queued(receiver) => receiver.await.unwrap_or(Err(StoreError::WriterStopped)),
            PendingState::Blocked(future) => future.await,
        }
    }
}

impl Recorder {
    fn start(pool: Pool) -> Recorder {
        let writers = match pool {
            Pool::Postgres(_) => POSTGRES_WRITERS,
            Pool::Sqlite(_) => 1,
        };
        let queues = (0..writers)
            .map(|_| {
                let (queue, receiver) = mpsc::channel(MAX_QUEUED_WRITES);
                tokio::spawn(write_loop(pool.clone(), receiver));
                queue
            })
            .collect();
        Recorder { queues }
    }

    /// The writer a write goes to: runs' rows and their top-level step rows to the first,
    /// so that they land in the order they were written (a run's last row after its last
    /// step's) and many small runs share its commits; a row inside a block to any, by its
    /// id (its own writes stay in order).
    fn writer_for(&self, write: &Write) -> usize {
        match write {
            Write::Step(step, ..) if step.parent_step_id.is_some() => {
                // The low bits of a UUIDv7 are random.
                usize::try_from(step.id.as_u128() % self.queues.len() as u128).unwrap_or(0)
            }
            _ => 0,
        }
    }

    fn send(&self, write: Write, run: Option<(Uuid, Option<CancellationToken>)>) -> Pending {
        let writer = self.writer_for(&write);
        self.send_to(writer, write, run)
    }

    fn send_to(&self, writer: usize, write: Write, run: Option<(Uuid, Option<CancellationToken>)>) -> Pending {
        let (ack, pending) = oneshot::channel();
        let queue = &self.queues[writer];
        match queue.try_send((write, Waiter { ack, run })) {
            Ok(()) => Pending(PendingState::Queued(pending)),
            Err(mpsc::error::TrySendError::Closed((_, waiter))) => {
                let _ = waiter.ack.send(Err(StoreError::WriterStopped));
                Pending(PendingState::Queued(pending))
            }
            // The queue is full: the write is sent once there is room, and whoever waits on
            // it waits for that too. Writers that never wait are rare (a step's "running"
            // row); those that do — every finished step — slow down to the writer's pace.
            Err(mpsc::error::TrySendError::Full(item)) => {
                let queue = queue.clone();
                let (sent_ack, sent) = oneshot::channel::<Result<(), StoreError>>();
                tokio::spawn(async move {
                    let result = match queue.send(item).await {
                        Ok(()) => pending.await.unwrap_or(Err(StoreError::WriterStopped)),
                        Err(_) => Err(StoreError::WriterStopped),
                    };
                    let _ = sent_ack.send(result);
                });
                Pending(PendingState::Blocked(Box::new(Box::pin(async move {
                    sent.await.unwrap_or(Err(StoreError::WriterStopped))
                }))))
            }
        }
    }

    /// Inserts or updates a `workflow_runs` row. The write lands only while the run's epoch
    /// is still `run.epoch`; `fence` (the writer's claim) learns when it is refused.
    /// `lease` gives the owner a lease (a host accepting a run it executes itself).
    pub fn run(&self, run: RunRecord, lease: Option<Duration>, fence: Option<&Fence>) -> Pending {
        let owner = (run.id, fence.map(|f| f.lost.clone()));
        self.send(Write::Run(Box::new(run), lease.map(millis)), Some(owner))
    }

    /// Inserts or updates a `step_executions` row, with log lines to add, under `fence`.
    pub fn step(&self, step: StepRecord, logs: Vec<LogRecord>, fence: &Fence) -> Pending {
        self.step_with(step, StepDetails::logs(logs), fence)
    }

    /// [`Recorder::step`], with log lines and HTTP requests to add.
    pub fn step_with(&self, step: StepRecord, details: StepDetails, fence: &Fence) -> Pending {
        let owner = (step.run_id, Some(fence.lost.clone()));
        self.send(Write::Step(Box::new(step), details, fence.epoch, StepWrite::Upsert), Some(owner))
    }

    /// [`Recorder::step_with`] for a row that was never written: inserted without looking
    /// for an existing one (cheaper for the database). Writing it again later is fine.
    pub fn new_step(&self, step: StepRecord, details: StepDetails, fence: &Fence) -> Pending {
        let owner = (step.run_id, Some(fence.lost.clone()));
        self.send(Write::Step(Box::new(step), details, fence.epoch, StepWrite::Insert), Some(owner))
    }

    /// Has every writer take its connection and prepare its statements now, so that the
    /// first commit of a run does not (not waited for: [`Recorder::flush`] waits for it).
    fn warm_up(&self) {
        for writer in 0..self.queues.len() {
            let _ = self.send_to(writer, Write::WarmUp, None);
        }
    }

    /// Waits until everything queued so far is committed.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.flush_all(false).await
    }

    /// [`Recorder::flush`], then the writers give their connections back to the pool,
    /// which can then close (a writer takes one again if more is written).
    async fn flush_and_release(&self) -> Result<(), StoreError> {
        self.flush_all(true).await
    }

    async fn flush_all(&self, release_connection: bool) -> Result<(), StoreError> {
        let flushes: Vec<Pending> = (0..self.queues.len())
            .map(|writer| self.send_to(writer, Write::Flush { release_connection }, None))
            .collect();
        for flush in flushes {
            flush.committed().await?;
        }
        Ok(())
    }
}

/// A writer task: takes everything queued, commits it in one transaction, answers every
/// waiting writer, and starts over. While one commit is in flight the next batch gathers.
/// A batch is retried while the database is unreachable; writes refused for a stale epoch
/// fail for their writers alone, and tell their fence. A batch the database rejects for
/// another reason is written again row by row, so that one bad row fails only its writer.
async fn write_loop(pool: Pool, mut queue: mpsc::Receiver<(Write, Waiter)>) {
    let mut waiters: Vec<(Waiter, Option<RowAt>)> = Vec::new();
    let mut connection = WriterConnection::default();
    while let Some((first, waiter)) = queue.recv().await {
        let mut batch = Batch::default();
        waiters.push((waiter, batch.add(first)));
        while waiters.len() < MAX_WRITES_PER_COMMIT {
            match queue.try_recv() {
                Ok((write, waiter)) => waiters.push((waiter, batch.add(write))),
                Err(_) => break,
            }
        }
        if batch.warm_up {
            connection.warm(&pool).await;
        }
        let result = if batch.is_empty() {
            Ok(Written::default())
        } else {
            write_with_retries(&pool, &mut connection, &batch).await
        };
        match result {
            Err(err) if !matches!(err, StoreError::Unavailable(_)) && batch.rows().nth(1).is_some() => {
                tracing::warn!("a batch of writes was refused ({err}); writing its rows one by one");
                let mut by_row = HashMap::new();
                for row in batch.rows() {
                    let result = write_with_retries(&pool, &mut connection, &batch.single(row)).await;
                    if let Err(err) = &result {
                        tracing::error!("recording failed: {err}");
                    }
                    by_row.insert(row, result);
                }
                for (waiter, row) in waiters.drain(..) {
                    waiter.answer(row.and_then(|row| by_row.get(&row)).unwrap_or(&Ok(Written::default())));
                }
            }
            result => {
                if let Err(err) = &result {
                    tracing::error!("recording failed: {err}");
                }
                for (waiter, _) in waiters.drain(..) {
                    waiter.answer(&result);
                }
            }
        }
        if batch.release_connection {
            connection = WriterConnection::default();
        }
    }
}

/// The writer's own connection, held from one commit to the next: a commit never waits
/// for the pool, nor for the liveness ping the pool sends before lending a connection (a
/// round trip per commit, on a chain's critical path), and its prepared statements stay
/// warm. Given back, and taken anew from the pool, when the database could not be reached.
#[derive(Default)]
struct WriterConnection {
    postgres: Option<sqlx::pool::PoolConnection<sqlx::Postgres>>,
    sqlite: Option<sqlx::pool::PoolConnection<sqlx::Sqlite>>,
}

impl WriterConnection {
    /// Takes the connection (unless it holds one) and prepares the writes on it, so that
    /// the first commit of a run does not pay for that. A failure here is only logged: the
    /// first write takes a connection again and reports what goes wrong.
    async fn warm(&mut self, pool: &Pool) {
        let warmed = match pool {
            Pool::Postgres(pool) => {
                async {
                    let connection = match self.postgres.as_mut() {
                        Some(connection) => connection,
                        None => self.postgres.insert(pool.acquire().await.map_err(StoreError::query)?),
                    };
                    postgres::prepare_writes(connection).await
                }
                .await
            }
            Pool::Sqlite(_) => Ok(()),
        };
        if let Err(err) = warmed {
            tracing::debug!("could not prepare the writer's statements ahead of time: {err}");
        }
    }

    /// Writes `batch`; `again` when a write of it may have committed already (its first
    /// try failed without an answer): new rows are then upserted, never inserted twice.
    async fn write(&mut self, pool: &Pool, batch: &Batch, again: bool) -> Result<Written, StoreError> {
        macro_rules! write_on {
            ($held:expr, $pool:expr, $backend:ident) => {{
                let connection = match $held.as_mut() {
                    Some(connection) => connection,
                    None => $held.insert($pool.acquire().await.map_err(StoreError::query)?),
                };
                let result = $backend::write_batch(connection, batch, again).await;
                if matches!(result, Err(StoreError::Unavailable(_))) {
                    $held.take();
                }
                result
            }};
        }
        match pool {
            Pool::Postgres(pool) => write_on!(self.postgres, pool, postgres),
            Pool::Sqlite(pool) => write_on!(self.sqlite, pool, sqlite),
        }
    }
}

/// Writes `batch`, retrying with backoff while the database is unreachable.
async fn write_with_retries(
    pool: &Pool,
    connection: &mut WriterConnection,
    batch: &Batch,
) -> Result<Written, StoreError> {
    let started = std::time::Instant::now();
    let mut delay = Duration::from_millis(50);
    let mut again = false;
    loop {
        let result = connection.write(pool, batch, again).await;
        again = true;
        match result {
            Err(StoreError::Unavailable(err)) if started.elapsed() < RETRY_UNAVAILABLE_FOR => {
                tracing::warn!("the database is unreachable ({err}); retrying the write in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            other => return other,
        }
    }
}
