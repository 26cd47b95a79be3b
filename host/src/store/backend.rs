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
        use super::records::{LogRecord, RunFilter, RunRecord, StepRecord};
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

        const RUN_COLUMNS: &str =
            "id, workflow_name, workflow_version, status, input, output, error, created_at, started_at, finished_at";
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
                        .push_bind(run.finished_at);
                });
                query.push(
                    " ON CONFLICT (id) DO UPDATE SET status = excluded.status, input = excluded.input, \
                     output = excluded.output, error = excluded.error, started_at = excluded.started_at, \
                     finished_at = excluded.finished_at",
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
    };
}

pub(super) use sql_backend;
