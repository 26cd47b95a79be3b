//! The SQL, written once for both databases. `sql_backend!` expands to the same functions
//! for Postgres and for SQLite; what differs is passed in: the sqlx database type, how an
//! id is bound and read (a native `uuid` in Postgres, hyphenated text in SQLite), and the
//! migrations folder. Statements are built with `QueryBuilder`, which writes each
//! database's own placeholders.

/// Rows per multi-row statement: 22 columns × 1,000 rows stays below both databases'
/// bind-parameter limits (65,535 for Postgres, 32,766 for SQLite).
pub(super) const ROWS_PER_STATEMENT: usize = 1000;

/// Step rows as a multi-row `VALUES` upsert (one bind parameter per value). The SQLite
/// backend uses it; Postgres binds whole columns as arrays instead (see `postgres.rs`).
macro_rules! insert_steps_as_values {
    ($db:ty) => {
        async fn insert_steps(
            connection: &mut <$db as sqlx::Database>::Connection,
            steps: &[StepRecord],
        ) -> Result<(), StoreError> {
            let mut query = QueryBuilder::<$db>::new(format!("INSERT INTO step_executions ({STEP_COLUMNS}) "));
            query.push_values(steps, |mut row, step| {
                row.push_bind(to_id(step.id))
                    .push_bind(to_id(step.run_id))
                    .push_bind(&step.step_id)
                    .push_bind(&step.step_type)
                    .push_bind(step.parent_step_id.map(to_id))
                    .push_bind(&step.branch_name)
                    .push_bind(step.item_index)
                    .push_bind(&step.join_policy)
                    .push_bind(&step.agent_name)
                    .push_bind(&step.agent_digest)
                    .push_bind(step.attempt)
                    .push_bind(step.status.as_str())
                    .push_bind(&step.outcome)
                    .push_bind(json(&step.input))
                    .push_bind(json(&step.output))
                    .push_bind(&step.error)
                    .push_bind(step.started_at)
                    .push_bind(step.finished_at)
                    .push_bind(step.instantiate_us)
                    .push_bind(step.execute_us)
                    .push_bind(step.fuel_consumed)
                    .push_bind(step.memory_peak_bytes);
            });
            query.push(STEP_UPDATES);
            query.build().execute(&mut *connection).await.map_err(StoreError::query)?;
            Ok(())
        }
    };
}

pub(super) use insert_steps_as_values;

macro_rules! sql_backend {
    (db: $db:ty, pool: $pool:ty, id: $id:ty, to_id: $to_id:expr, from_id: $from_id:expr, migrations: $migrations:literal) => {
        use super::backend::ROWS_PER_STATEMENT;
        use super::records::{AgentRecord, Inserted, LogRecord, RunFilter, RunRecord, StepRecord, WorkflowRecord};
        use super::{Batch, StoreError};
        use chrono::{DateTime, Utc};
        use sqlx::QueryBuilder;
        use sqlx::types::Json;
        use uuid::Uuid;

        pub(super) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!($migrations);

        fn to_id(id: Uuid) -> $id {
            ($to_id)(id)
        }

        fn from_id(id: $id) -> Result<Uuid, StoreError> {
            ($from_id)(id)
        }

        fn json(value: &Option<serde_json::Value>) -> Option<Json<&serde_json::Value>> {
            value.as_ref().map(Json)
        }

        /// Updated when a step row is written again (its final state after "running").
        const STEP_UPDATES: &str = " ON CONFLICT (id) DO UPDATE SET status = excluded.status, \
            outcome = excluded.outcome, input = excluded.input, output = excluded.output, error = excluded.error, \
            agent_digest = excluded.agent_digest, started_at = excluded.started_at, \
            finished_at = excluded.finished_at, instantiate_us = excluded.instantiate_us, \
            execute_us = excluded.execute_us, fuel_consumed = excluded.fuel_consumed, \
            memory_peak_bytes = excluded.memory_peak_bytes";

        const RUN_COLUMNS: &str = "id, workflow_name, workflow_version, status, input, output, error, created_at, \
            started_at, finished_at, workflow_digest, pinned_agents";
        const STEP_COLUMNS: &str = "id, run_id, step_id, step_type, parent_step_id, branch_name, item_index, \
            join_policy, agent_name, agent_digest, attempt, status, outcome, input, output, error, started_at, \
            finished_at, instantiate_us, execute_us, fuel_consumed, memory_peak_bytes";

        /// Writes a batch atomically: runs, then steps, then logs, each as upserts of many
        /// rows per statement.
        pub(super) async fn write_batch(pool: &$pool, batch: &Batch) -> Result<(), StoreError> {
            // One statement commits on its own: skipping BEGIN and COMMIT saves two round
            // trips, which is most of the cost of a sequential chain of short steps.
            let statements = [batch.runs.len(), batch.steps.len(), batch.logs.len()]
                .iter()
                .map(|rows| rows.div_ceil(ROWS_PER_STATEMENT))
                .sum::<usize>();
            if statements == 1 {
                let mut connection = pool.acquire().await.map_err(StoreError::query)?;
                return write_statements(&mut connection, batch).await;
            }
            let mut tx = pool.begin().await.map_err(StoreError::query)?;
            write_statements(&mut tx, batch).await?;
            tx.commit().await.map_err(StoreError::query)
        }

        /// The statements of a batch, on one connection (in a transaction or not).
        async fn write_statements(
            connection: &mut <$db as sqlx::Database>::Connection,
            batch: &Batch,
        ) -> Result<(), StoreError> {
            for chunk in batch.runs.chunks(ROWS_PER_STATEMENT) {
                let mut query = QueryBuilder::<$db>::new(format!("INSERT INTO workflow_runs ({RUN_COLUMNS}) "));
                query.push_values(chunk, |mut row, run| {
                    row.push_bind(to_id(run.id))
                        .push_bind(&run.workflow_name)
                        .push_bind(&run.workflow_version)
                        .push_bind(run.status.as_str())
                        .push_bind(json(&run.input))
                        .push_bind(json(&run.output))
                        .push_bind(&run.error)
                        .push_bind(run.created_at)
                        .push_bind(run.started_at)
                        .push_bind(run.finished_at)
                        .push_bind(&run.workflow_digest)
                        .push_bind(json(&run.pinned_agents));
                });
                query.push(
                    " ON CONFLICT (id) DO UPDATE SET status = excluded.status, input = excluded.input, \
                     output = excluded.output, error = excluded.error, started_at = excluded.started_at, \
                     finished_at = excluded.finished_at, workflow_digest = excluded.workflow_digest, \
                     pinned_agents = excluded.pinned_agents",
                );
                query.build().execute(&mut *connection).await.map_err(StoreError::query)?;
            }
            for chunk in batch.steps.chunks(ROWS_PER_STATEMENT) {
                insert_steps(connection, chunk).await?;
            }
            for chunk in batch.logs.chunks(ROWS_PER_STATEMENT) {
                let mut query = QueryBuilder::<$db>::new(
                    "INSERT INTO step_logs (step_execution_id, seq, level, source, message, logged_at) ",
                );
                query.push_values(chunk, |mut row, log| {
                    row.push_bind(to_id(log.step_execution_id))
                        .push_bind(log.seq)
                        .push_bind(&log.level)
                        .push_bind(&log.source)
                        .push_bind(&log.message)
                        .push_bind(log.logged_at);
                });
                query.push(" ON CONFLICT (step_execution_id, seq) DO NOTHING");
                query.build().execute(&mut *connection).await.map_err(StoreError::query)?;
            }
            Ok(())
        }

        #[derive(sqlx::FromRow)]
        struct RunRow {
            id: $id,
            workflow_name: String,
            workflow_version: String,
            status: String,
            input: Option<Json<serde_json::Value>>,
            output: Option<Json<serde_json::Value>>,
            error: Option<String>,
            created_at: DateTime<Utc>,
            started_at: Option<DateTime<Utc>>,
            finished_at: Option<DateTime<Utc>>,
            workflow_digest: Option<String>,
            pinned_agents: Option<Json<serde_json::Value>>,
        }

        impl RunRow {
            fn into_record(self) -> Result<RunRecord, StoreError> {
                Ok(RunRecord {
                    id: from_id(self.id)?,
                    workflow_name: self.workflow_name,
                    workflow_version: self.workflow_version,
                    status: self.status.parse().map_err(StoreError::Corrupt)?,
                    input: self.input.map(|j| j.0),
                    output: self.output.map(|j| j.0),
                    error: self.error,
                    created_at: self.created_at,
                    started_at: self.started_at,
                    finished_at: self.finished_at,
                    workflow_digest: self.workflow_digest,
                    pinned_agents: self.pinned_agents.map(|j| j.0),
                })
            }
        }

        #[derive(sqlx::FromRow)]
        struct StepRow {
            id: $id,
            run_id: $id,
            step_id: String,
            step_type: String,
            parent_step_id: Option<$id>,
            branch_name: Option<String>,
            item_index: Option<i64>,
            join_policy: Option<String>,
            agent_name: Option<String>,
            agent_digest: Option<String>,
            attempt: i32,
            status: String,
            outcome: Option<String>,
            input: Option<Json<serde_json::Value>>,
            output: Option<Json<serde_json::Value>>,
            error: Option<String>,
            started_at: Option<DateTime<Utc>>,
            finished_at: Option<DateTime<Utc>>,
            instantiate_us: Option<i64>,
            execute_us: Option<i64>,
            fuel_consumed: Option<i64>,
            memory_peak_bytes: Option<i64>,
        }

        impl StepRow {
            fn into_record(self) -> Result<StepRecord, StoreError> {
                Ok(StepRecord {
                    id: from_id(self.id)?,
                    run_id: from_id(self.run_id)?,
                    step_id: self.step_id,
                    step_type: self.step_type,
                    parent_step_id: self.parent_step_id.map(from_id).transpose()?,
                    branch_name: self.branch_name,
                    item_index: self.item_index,
                    join_policy: self.join_policy,
                    agent_name: self.agent_name,
                    agent_digest: self.agent_digest,
                    attempt: self.attempt,
                    status: self.status.parse().map_err(StoreError::Corrupt)?,
                    outcome: self.outcome,
                    input: self.input.map(|j| j.0),
                    output: self.output.map(|j| j.0),
                    error: self.error,
                    started_at: self.started_at,
                    finished_at: self.finished_at,
                    instantiate_us: self.instantiate_us,
                    execute_us: self.execute_us,
                    fuel_consumed: self.fuel_consumed,
                    memory_peak_bytes: self.memory_peak_bytes,
                })
            }
        }

        #[derive(sqlx::FromRow)]
        struct LogRow {
            step_execution_id: $id,
            seq: i32,
            level: String,
            source: String,
            message: String,
            logged_at: DateTime<Utc>,
        }

        pub(super) async fn list_runs(pool: &$pool, filter: &RunFilter) -> Result<Vec<RunRecord>, StoreError> {
            let mut query = QueryBuilder::<$db>::new(format!("SELECT {RUN_COLUMNS} FROM workflow_runs WHERE 1 = 1"));
            if let Some(workflow) = &filter.workflow {
                query.push(" AND workflow_name = ").push_bind(workflow);
            }
            if let Some(status) = filter.status {
                query.push(" AND status = ").push_bind(status.as_str());
            }
            query.push(" ORDER BY created_at DESC, id DESC LIMIT ").push_bind(i64::from(filter.limit.unwrap_or(50)));
            let rows: Vec<RunRow> = query.build_query_as().fetch_all(pool).await.map_err(StoreError::query)?;
            rows.into_iter().map(RunRow::into_record).collect()
        }

        pub(super) async fn get_run(pool: &$pool, id: Uuid) -> Result<Option<RunRecord>, StoreError> {
            let mut query = QueryBuilder::<$db>::new(format!("SELECT {RUN_COLUMNS} FROM workflow_runs WHERE id = "));
            query.push_bind(to_id(id));
            let row: Option<RunRow> = query.build_query_as().fetch_optional(pool).await.map_err(StoreError::query)?;
            row.map(RunRow::into_record).transpose()
        }

        /// A run's step executions in the order they were created (ids are UUIDv7).
        pub(super) async fn run_steps(pool: &$pool, run_id: Uuid) -> Result<Vec<StepRecord>, StoreError> {
            let mut query =
                QueryBuilder::<$db>::new(format!("SELECT {STEP_COLUMNS} FROM step_executions WHERE run_id = "));
            query.push_bind(to_id(run_id)).push(" ORDER BY id");
            let rows: Vec<StepRow> = query.build_query_as().fetch_all(pool).await.map_err(StoreError::query)?;
            rows.into_iter().map(StepRow::into_record).collect()
        }

        pub(super) async fn run_logs(pool: &$pool, run_id: Uuid) -> Result<Vec<LogRecord>, StoreError> {
            let mut query = QueryBuilder::<$db>::new(
                "SELECT l.step_execution_id, l.seq, l.level, l.source, l.message, l.logged_at \
                 FROM step_logs l JOIN step_executions s ON s.id = l.step_execution_id WHERE s.run_id = ",
            );
            query.push_bind(to_id(run_id)).push(" ORDER BY l.step_execution_id, l.seq");
            let rows: Vec<LogRow> = query.build_query_as().fetch_all(pool).await.map_err(StoreError::query)?;
            rows.into_iter()
                .map(|row| {
                    Ok(LogRecord {
                        step_execution_id: from_id(row.step_execution_id)?,
                        seq: row.seq,
                        level: row.level,
                        source: row.source,
                        message: row.message,
                        logged_at: row.logged_at,
                    })
                })
                .collect()
        }

        /// Runs accepted or started but not finished (to resume at start-up), oldest first.
        pub(super) async fn unfinished_runs(pool: &$pool) -> Result<Vec<RunRecord>, StoreError> {
            let query = format!(
                "SELECT {RUN_COLUMNS} FROM workflow_runs WHERE status IN ('pending', 'running') ORDER BY created_at, id"
            );
            let rows: Vec<RunRow> = sqlx::query_as(&query).fetch_all(pool).await.map_err(StoreError::query)?;
            rows.into_iter().map(RunRow::into_record).collect()
        }

        /// Asks for a run to be cancelled; false when it does not exist or already finished.
        pub(super) async fn request_cancel(pool: &$pool, id: Uuid) -> Result<bool, StoreError> {
            let mut query = QueryBuilder::<$db>::new("UPDATE workflow_runs SET cancel_requested_at = ");
            query.push_bind(chrono::Utc::now()).push(" WHERE id = ").push_bind(to_id(id));
            query.push(" AND status IN ('pending', 'running')");
            let done = query.build().execute(pool).await.map_err(StoreError::query)?;
            Ok(done.rows_affected() > 0)
        }

        /// Which of `ids` someone asked to cancel.
        pub(super) async fn cancel_requested(pool: &$pool, ids: &[Uuid]) -> Result<Vec<Uuid>, StoreError> {
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let mut query = QueryBuilder::<$db>::new(
                "SELECT id FROM workflow_runs WHERE cancel_requested_at IS NOT NULL AND id IN (",
            );
            let mut list = query.separated(", ");
            for id in ids {
                list.push_bind(to_id(*id));
            }
            query.push(")");
            let found: Vec<$id> = query.build_query_scalar().fetch_all(pool).await.map_err(StoreError::query)?;
            found.into_iter().map(from_id).collect()
        }

        #[derive(sqlx::FromRow)]
        struct AgentRow {
            name: String,
            version: String,
            digest: String,
            size_bytes: i64,
            created_at: DateTime<Utc>,
        }

        impl From<AgentRow> for AgentRecord {
            fn from(row: AgentRow) -> Self {
                AgentRecord {
                    name: row.name,
                    version: row.version,
                    digest: row.digest,
                    size_bytes: row.size_bytes,
                    created_at: row.created_at,
                }
            }
        }

        /// Stores a new agent version (and its bytes, once per digest). Versions are
        /// immutable: the same version with other bytes is a conflict.
        pub(super) async fn insert_agent(pool: &$pool, agent: &AgentRecord, wasm: &[u8]) -> Result<Inserted, StoreError> {
            if let Some(existing) = find_agent(pool, &agent.name, Some(&agent.version)).await? {
                return Ok(same_or_conflict(existing.digest, &agent.digest));
            }
            let mut tx = pool.begin().await.map_err(StoreError::query)?;
            let mut query = QueryBuilder::<$db>::new(
                "INSERT INTO agent_components (digest, wasm, size_bytes, created_at) VALUES (",
            );
            query.push_bind(&agent.digest).push(", ").push_bind(wasm).push(", ").push_bind(agent.size_bytes);
            query.push(", ").push_bind(agent.created_at).push(") ON CONFLICT (digest) DO NOTHING");
            query.build().execute(&mut *tx).await.map_err(StoreError::query)?;
            let mut query =
                QueryBuilder::<$db>::new("INSERT INTO agents (name, version, digest, size_bytes, created_at) VALUES (");
            query.push_bind(&agent.name).push(", ").push_bind(&agent.version).push(", ").push_bind(&agent.digest);
            query.push(", ").push_bind(agent.size_bytes).push(", ").push_bind(agent.created_at).push(")");
            let inserted = query.build().execute(&mut *tx).await;
            match inserted {
                Ok(_) => {
                    tx.commit().await.map_err(StoreError::query)?;
                    Ok(Inserted::Created)
                }
                // Lost a race with a concurrent deploy of the same version: judge against it.
                Err(err) => {
                    drop(tx);
                    match find_agent(pool, &agent.name, Some(&agent.version)).await? {
                        Some(existing) => Ok(same_or_conflict(existing.digest, &agent.digest)),
                        None => Err(StoreError::query(err)),
                    }
                }
            }
        }

        fn same_or_conflict(existing_digest: String, digest: &str) -> Inserted {
            if existing_digest == digest { Inserted::AlreadyThere } else { Inserted::Conflict { existing_digest } }
        }

        /// One version of an agent, or its latest (the most recently deployed).
        pub(super) async fn find_agent(
            pool: &$pool,
            name: &str,
            version: Option<&str>,
        ) -> Result<Option<AgentRecord>, StoreError> {
            let mut query = QueryBuilder::<$db>::new(
                "SELECT name, version, digest, size_bytes, created_at FROM agents WHERE name = ",
            );
            query.push_bind(name);
            if let Some(version) = version {
                query.push(" AND version = ").push_bind(version);
            }
            query.push(" ORDER BY created_at DESC, version DESC LIMIT 1");
            let row: Option<AgentRow> = query.build_query_as().fetch_optional(pool).await.map_err(StoreError::query)?;
            Ok(row.map(AgentRecord::from))
        }

        /// Every deployed agent version (of one agent, or of all), oldest first.
        pub(super) async fn list_agents(pool: &$pool, name: Option<&str>) -> Result<Vec<AgentRecord>, StoreError> {
            let mut query =
                QueryBuilder::<$db>::new("SELECT name, version, digest, size_bytes, created_at FROM agents");
            if let Some(name) = name {
                query.push(" WHERE name = ").push_bind(name);
            }
            query.push(" ORDER BY name, created_at, version");
            let rows: Vec<AgentRow> = query.build_query_as().fetch_all(pool).await.map_err(StoreError::query)?;
            Ok(rows.into_iter().map(AgentRecord::from).collect())
        }

        /// The component bytes with this digest.
        pub(super) async fn agent_wasm(pool: &$pool, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
            let mut query = QueryBuilder::<$db>::new("SELECT wasm FROM agent_components WHERE digest = ");
            query.push_bind(digest);
            query.build_query_scalar().fetch_optional(pool).await.map_err(StoreError::query)
        }

        #[derive(sqlx::FromRow)]
        struct WorkflowRow {
            name: String,
            version: String,
            digest: String,
            definition: Json<serde_json::Value>,
            created_at: DateTime<Utc>,
        }

        impl From<WorkflowRow> for WorkflowRecord {
            fn from(row: WorkflowRow) -> Self {
                WorkflowRecord {
                    name: row.name,
                    version: row.version,
                    digest: row.digest,
                    definition: row.definition.0,
                    created_at: row.created_at,
                }
            }
        }

        /// Stores a new workflow version; versions are immutable.
        pub(super) async fn insert_workflow(pool: &$pool, workflow: &WorkflowRecord) -> Result<Inserted, StoreError> {
            if let Some(existing) = find_workflow(pool, &workflow.name, Some(&workflow.version)).await? {
                return Ok(same_or_conflict(existing.digest, &workflow.digest));
            }
            let mut query = QueryBuilder::<$db>::new(
                "INSERT INTO workflows (name, version, digest, definition, created_at) VALUES (",
            );
            query.push_bind(&workflow.name).push(", ").push_bind(&workflow.version).push(", ");
            query.push_bind(&workflow.digest).push(", ").push_bind(Json(&workflow.definition)).push(", ");
            query.push_bind(workflow.created_at).push(")");
            match query.build().execute(pool).await {
                Ok(_) => Ok(Inserted::Created),
                Err(err) => match find_workflow(pool, &workflow.name, Some(&workflow.version)).await? {
                    Some(existing) => Ok(same_or_conflict(existing.digest, &workflow.digest)),
                    None => Err(StoreError::query(err)),
                },
            }
        }

        /// One version of a workflow, or its latest.
        pub(super) async fn find_workflow(
            pool: &$pool,
            name: &str,
            version: Option<&str>,
        ) -> Result<Option<WorkflowRecord>, StoreError> {
            let mut query = QueryBuilder::<$db>::new(
                "SELECT name, version, digest, definition, created_at FROM workflows WHERE name = ",
            );
            query.push_bind(name);
            if let Some(version) = version {
                query.push(" AND version = ").push_bind(version);
            }
            query.push(" ORDER BY created_at DESC, version DESC LIMIT 1");
            let row: Option<WorkflowRow> =
                query.build_query_as().fetch_optional(pool).await.map_err(StoreError::query)?;
            Ok(row.map(WorkflowRecord::from))
        }

        /// Every deployed workflow version (of one workflow, or of all), oldest first.
        pub(super) async fn list_workflows(pool: &$pool, name: Option<&str>) -> Result<Vec<WorkflowRecord>, StoreError> {
            let mut query =
                QueryBuilder::<$db>::new("SELECT name, version, digest, definition, created_at FROM workflows");
            if let Some(name) = name {
                query.push(" WHERE name = ").push_bind(name);
            }
            query.push(" ORDER BY name, created_at, version");
            let rows: Vec<WorkflowRow> = query.build_query_as().fetch_all(pool).await.map_err(StoreError::query)?;
            Ok(rows.into_iter().map(WorkflowRecord::from).collect())
        }
    };
}

pub(super) use sql_backend;
