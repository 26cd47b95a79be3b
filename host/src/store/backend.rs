//! The SQL, written once for both databases. `sql_backend!` expands to the same functions
//! for Postgres and for SQLite; what differs is passed in: the sqlx database type, how an
//! id is bound and read (a native `uuid` in Postgres, hyphenated text in SQLite), and the
//! migrations folder. Statements are built with `QueryBuilder`, which writes each
//! database's own placeholders.

/// Rows per multi-row statement: 26 values × 1,000 rows stays below both databases'
/// bind-parameter limits (65,535 for Postgres, 32,766 for SQLite).
pub(super) const ROWS_PER_STATEMENT: usize = 1000;

/// Step rows as a multi-row `VALUES` list, each written only if its run's row still has
/// the epoch it carries, so that a row of a host that lost the run's lease is not written
/// (SQLite serializes writers, so the check and the write are atomic). Postgres binds whole
/// columns as arrays instead (see `postgres.rs`). Returns how many rows were written.
macro_rules! insert_steps_as_values {
    ($db:ty) => {
        async fn insert_steps(
            connection: &mut <$db as sqlx::Database>::Connection,
            steps: &[(StepRecord, i64)],
            mode: super::StepWrite,
        ) -> Result<u64, StoreError> {
            let selected = (1..=STEP_COLUMNS.split(", ").count()).map(|i| format!("t.column{i}")).collect::<Vec<_>>();
            let mut query = QueryBuilder::<$db>::new(format!(
                "INSERT INTO step_executions ({STEP_COLUMNS}) SELECT {} FROM (",
                selected.join(", ")
            ));
            query.push_values(steps, |mut row, (step, epoch)| {
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
                    .push_bind(stored_text(&step.input))
                    .push_bind(stored_text(&step.output))
                    .push_bind(&step.error)
                    .push_bind(step.started_at)
                    .push_bind(step.finished_at)
                    .push_bind(step.instantiate_us)
                    .push_bind(step.execute_us)
                    .push_bind(step.fuel_consumed)
                    .push_bind(step.memory_peak_bytes)
                    .push_bind(&step.step_key)
                    .push_bind(step.queued_us)
                    .push_bind(&step.host_id)
                    .push_bind(*epoch);
            });
            // A primary-key lookup per row (a join could scan the runs). The WHERE clause also
            // keeps SQLite from reading ON CONFLICT as part of the FROM.
            query.push(format!(
                ") AS t WHERE t.column{} = (SELECT r.epoch FROM workflow_runs r WHERE r.id = t.column2)",
                selected.len() + 1
            ));
            if mode == super::StepWrite::Upsert {
                query.push(STEP_UPDATES);
            }
            let done = query.build().execute(&mut *connection).await.map_err(StoreError::query)?;
            Ok(done.rows_affected())
        }
    };
}

pub(super) use insert_steps_as_values;

macro_rules! sql_backend {
    (
        db: $db:ty, pool: $pool:ty, id: $id:ty, to_id: $to_id:expr, from_id: $from_id:expr,
        migrations: $migrations:literal, now: $now:literal, lease_until: ($lease_start:literal, $lease_end:literal),
        skip_locked: $skip_locked:literal
    ) => {
        use super::backend::ROWS_PER_STATEMENT;
        use super::records::{
            AgentRecord, HostRecord, HttpCallRecord, Inserted, LogRecord, RunFilter, RunRecord, StepDetails, StepFilter,
            StepRecord, WorkflowRecord,
        };
        use super::stored_json::{StoredDoc, StoredJson, stored_text};
        use super::{Batch, StepWrite, StoreError, Written};
        use chrono::{DateTime, Utc};
        use sqlx::QueryBuilder;
        use sqlx::types::Json;
        use std::collections::HashSet;
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

        /// Pushes "now + `ms` milliseconds" in the database's clock (leases are judged by
        /// the database's clock, never a host's).
        fn push_lease_until(query: &mut QueryBuilder<'_, $db>, ms: i64) {
            query.push($lease_start).push_bind(ms).push($lease_end);
        }

        /// Binds the values of a run row, in the order of `RUN_WRITE_COLUMNS`, and its lease
        /// in milliseconds from now (NULL keeps the current lease). Bound for every row, so
        /// that a statement's text — and its prepared statement — depends only on the row
        /// count.
        fn push_run<'args>(
            row: &mut sqlx::query_builder::Separated<'_, 'args, $db, &'static str>,
            run: &'args RunRecord,
            lease_ms: Option<i64>,
        ) {
            row.push_bind(to_id(run.id))
                .push_bind(&run.workflow_name)
                .push_bind(&run.workflow_version)
                .push_bind(run.status.as_str())
                .push_bind(stored_text(&run.input))
                .push_bind(stored_text(&run.output))
                .push_bind(&run.error)
                .push_bind(run.created_at)
                .push_bind(run.started_at)
                .push_bind(run.finished_at)
                .push_bind(&run.workflow_digest)
                .push_bind(json(&run.pinned_agents))
                .push_bind(&run.owner_host_id)
                .push_bind(run.epoch);
            row.push($lease_start).push_bind_unseparated(lease_ms).push_unseparated($lease_end);
        }

        /// Runs no host is executing: accepted and unowned, or owned under an expired lease.
        const CLAIMABLE: &str = concat!(
            "status IN ('pending', 'running') AND (owner_host_id IS NULL OR lease_expires_at IS NULL OR lease_expires_at < ",
            $now,
            ")"
        );

        /// Updated when a step row is written again (its final state after "running", or a
        /// succeeded row that a resumed block adopts).
        const STEP_UPDATES: &str = " ON CONFLICT (id) DO UPDATE SET status = excluded.status, \
            outcome = excluded.outcome, input = excluded.input, output = excluded.output, error = excluded.error, \
            agent_digest = excluded.agent_digest, started_at = excluded.started_at, \
            finished_at = excluded.finished_at, instantiate_us = excluded.instantiate_us, \
            execute_us = excluded.execute_us, fuel_consumed = excluded.fuel_consumed, \
            memory_peak_bytes = excluded.memory_peak_bytes, parent_step_id = excluded.parent_step_id, \
            queued_us = excluded.queued_us, host_id = excluded.host_id";

        const RUN_COLUMNS: &str = "id, workflow_name, workflow_version, status, input, output, error, created_at, \
            started_at, finished_at, workflow_digest, pinned_agents, owner_host_id, epoch, redrive_count";
        /// What a run write sets (redrive_count only changes through `redrive`).
        const RUN_WRITE_COLUMNS: &str = "id, workflow_name, workflow_version, status, input, output, error, \
            created_at, started_at, finished_at, workflow_digest, pinned_agents, owner_host_id, epoch, lease_expires_at";
        const STEP_COLUMNS: &str = "id, run_id, step_id, step_type, parent_step_id, branch_name, item_index, \
            join_policy, agent_name, agent_digest, attempt, status, outcome, input, output, error, started_at, \
            finished_at, instantiate_us, execute_us, fuel_consumed, memory_peak_bytes, step_key, queued_us, host_id";

        /// Writes a batch atomically: runs, then steps, then logs, each as upserts of many
        /// rows per statement (new step rows as plain inserts, unless `again`: the batch
        /// may have been written already). A write carrying a stale epoch is left out (the
        /// database compares it with the run's row in the same statement), and its run
        /// reported.
        pub(super) async fn write_batch(
            connection: &mut <$db as sqlx::Database>::Connection,
            batch: &Batch,
            again: bool,
        ) -> Result<Written, StoreError> {
            use sqlx::Connection;
            // One statement commits on its own: skipping BEGIN and COMMIT saves two round
            // trips, which is most of the cost of a sequential chain of short steps.
            let statements = [
                batch.runs.len(),
                batch.new_steps.len(),
                batch.steps.len(),
                batch.details.logs.len(),
                batch.details.http_calls.len(),
            ]
            .iter()
            .map(|rows| rows.div_ceil(ROWS_PER_STATEMENT))
            .sum::<usize>();
            if statements == 1 {
                return write_statements(connection, batch, again).await;
            }
            let mut tx = connection.begin().await.map_err(StoreError::query)?;
            let written = write_statements(&mut tx, batch, again).await?;
            tx.commit().await.map_err(StoreError::query)?;
            Ok(written)
        }

        /// Writes a run row with the nil id (which no run has) on `connection`, inside a
        /// transaction its caller rolls back: a writer's warm-up, so that a run's first
        /// write (its acceptance, on the path to its first step) neither parses the upsert
        /// nor loads what it touches.
        #[allow(dead_code)] // Postgres's writers warm up; SQLite has nothing to prepare.
        pub(super) async fn upsert_nobody(connection: &mut <$db as sqlx::Database>::Connection) -> Result<(), StoreError> {
            let now = Utc::now();
            let nobody = RunRecord {
                id: Uuid::nil(),
                workflow_name: "warm-up".into(),
                workflow_version: "0".into(),
                status: super::RunStatus::Pending,
                input: None,
                output: None,
                error: None,
                created_at: now,
                started_at: None,
                finished_at: None,
                workflow_digest: None,
                pinned_agents: None,
                owner_host_id: None,
                epoch: 0,
                redrive_count: 0,
            };
            let runs = [(nobody, Some(0))];
            upsert_runs(&runs).build().execute(&mut *connection).await.map_err(StoreError::query)?;
            Ok(())
        }

        /// The upsert of `runs` (each with the lease to give its owner, in milliseconds).
        fn upsert_runs(runs: &[(RunRecord, Option<i64>)]) -> QueryBuilder<'_, $db> {
            let mut query = QueryBuilder::<$db>::new(format!("INSERT INTO workflow_runs ({RUN_WRITE_COLUMNS}) "));
            query.push_values(runs, |mut row, (run, lease_ms)| push_run(&mut row, run, *lease_ms));
            // A write of a host whose epoch moved on changes nothing.
            query.push(
                " ON CONFLICT (id) DO UPDATE SET status = excluded.status, input = excluded.input, \
                 output = excluded.output, error = excluded.error, started_at = excluded.started_at, \
                 finished_at = excluded.finished_at, workflow_digest = excluded.workflow_digest, \
                 pinned_agents = excluded.pinned_agents, owner_host_id = excluded.owner_host_id, \
                 lease_expires_at = COALESCE(excluded.lease_expires_at, workflow_runs.lease_expires_at) \
                 WHERE workflow_runs.epoch = excluded.epoch",
            );
            query
        }

        /// The statements of a batch, on one connection (in a transaction or not); see
        /// [`write_batch`] for `again`.
        pub(super) async fn write_statements(
            connection: &mut <$db as sqlx::Database>::Connection,
            batch: &Batch,
            again: bool,
        ) -> Result<Written, StoreError> {
            let mut written = Written::default();
            for chunk in batch.runs.chunks(ROWS_PER_STATEMENT) {
                let done = upsert_runs(chunk).build().execute(&mut *connection).await.map_err(StoreError::query)?;
                if done.rows_affected() < chunk.len() as u64 {
                    let carried = chunk.iter().map(|(run, _)| (run.id, run.epoch));
                    written.refused.extend(stale_runs(connection, carried).await?);
                }
            }
            let new_rows = if again { StepWrite::Upsert } else { StepWrite::Insert };
            let chunks = batch.new_steps.chunks(ROWS_PER_STATEMENT).map(|chunk| (chunk, new_rows));
            for (chunk, mode) in chunks.chain(batch.steps.chunks(ROWS_PER_STATEMENT).map(|c| (c, StepWrite::Upsert))) {
                if insert_steps(connection, chunk, mode).await? < chunk.len() as u64 {
                    let carried = chunk.iter().map(|(step, epoch)| (step.run_id, *epoch));
                    written.refused.extend(stale_runs(connection, carried).await?);
                }
            }
            // Logs go with their step row: none for a row that was refused (every step row
            // of a run whose epoch moved on was refused, and only those).
            let refused_steps: HashSet<Uuid> = batch
                .all_steps()
                .filter(|(step, _)| written.refused.contains(&step.run_id))
                .map(|(step, _)| step.id)
                .collect();
            let logs: Vec<&LogRecord> =
                batch.details.logs.iter().filter(|log| !refused_steps.contains(&log.step_execution_id)).collect();
            for chunk in logs.chunks(ROWS_PER_STATEMENT) {
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
            let calls: Vec<&HttpCallRecord> = batch
                .details
                .http_calls
                .iter()
                .filter(|call| !refused_steps.contains(&call.step_execution_id))
                .collect();
            for chunk in calls.chunks(ROWS_PER_STATEMENT) {
                let mut query = QueryBuilder::<$db>::new(format!("INSERT INTO step_http_calls ({HTTP_CALL_COLUMNS}) "));
                query.push_values(chunk, |mut row, call| {
                    row.push_bind(to_id(call.step_execution_id))
                        .push_bind(call.seq)
                        .push_bind(&call.method)
                        .push_bind(&call.scheme)
                        .push_bind(&call.host)
                        .push_bind(call.port)
                        .push_bind(&call.path)
                        .push_bind(call.status)
                        .push_bind(&call.error)
                        .push_bind(call.bytes_out)
                        .push_bind(call.bytes_in)
                        .push_bind(call.duration_us)
                        .push_bind(call.started_at);
                });
                query.push(" ON CONFLICT (step_execution_id, seq) DO NOTHING");
                query.build().execute(&mut *connection).await.map_err(StoreError::query)?;
            }
            Ok(written)
        }

        /// Which of the runs written with these epochs have another epoch now (or no row):
        /// asked only when a statement wrote fewer rows than it was given, which is rare.
        async fn stale_runs(
            connection: &mut <$db as sqlx::Database>::Connection,
            carried: impl Iterator<Item = (Uuid, i64)>,
        ) -> Result<HashSet<Uuid>, StoreError> {
            let carried: std::collections::HashMap<Uuid, i64> = carried.collect();
            let mut query = QueryBuilder::<$db>::new("SELECT id, epoch FROM workflow_runs WHERE id IN (");
            let mut list = query.separated(", ");
            for id in carried.keys() {
                list.push_bind(to_id(*id));
            }
            query.push(")");
            let rows: Vec<($id, i64)> =
                query.build_query_as().fetch_all(&mut *connection).await.map_err(StoreError::query)?;
            let mut current = std::collections::HashMap::new();
            for (id, epoch) in rows {
                current.insert(from_id(id)?, epoch);
            }
            Ok(carried.into_iter().filter(|(id, epoch)| current.get(id) != Some(epoch)).map(|(id, _)| id).collect())
        }

        #[derive(sqlx::FromRow)]
        struct RunRow {
            id: $id,
            workflow_name: String,
            workflow_version: String,
            status: String,
            input: Option<StoredDoc>,
            output: Option<StoredDoc>,
            error: Option<String>,
            created_at: DateTime<Utc>,
            started_at: Option<DateTime<Utc>>,
            finished_at: Option<DateTime<Utc>>,
            workflow_digest: Option<String>,
            pinned_agents: Option<StoredJson>,
            owner_host_id: Option<String>,
            epoch: i64,
            redrive_count: i32,
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
                    owner_host_id: self.owner_host_id,
                    epoch: self.epoch,
                    redrive_count: self.redrive_count,
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
            input: Option<StoredDoc>,
            output: Option<StoredDoc>,
            error: Option<String>,
            started_at: Option<DateTime<Utc>>,
            finished_at: Option<DateTime<Utc>>,
            instantiate_us: Option<i64>,
            execute_us: Option<i64>,
            fuel_consumed: Option<i64>,
            memory_peak_bytes: Option<i64>,
            step_key: Option<String>,
            queued_us: Option<i64>,
            host_id: Option<String>,
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
                    step_key: self.step_key,
                    queued_us: self.queued_us,
                    host_id: self.host_id,
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

        const HTTP_CALL_COLUMNS: &str = "step_execution_id, seq, method, scheme, host, port, path, status, error, \
            bytes_out, bytes_in, duration_us, started_at";

        #[derive(sqlx::FromRow)]
        struct HttpCallRow {
            step_execution_id: $id,
            seq: i32,
            method: String,
            scheme: String,
            host: String,
            port: i32,
            path: String,
            status: Option<i32>,
            error: Option<String>,
            bytes_out: i64,
            bytes_in: i64,
            duration_us: i64,
            started_at: DateTime<Utc>,
        }

        impl HttpCallRow {
            fn into_record(self) -> Result<HttpCallRecord, StoreError> {
                Ok(HttpCallRecord {
                    step_execution_id: from_id(self.step_execution_id)?,
                    seq: self.seq,
                    method: self.method,
                    scheme: self.scheme,
                    host: self.host,
                    port: self.port,
                    path: self.path,
                    status: self.status,
                    error: self.error,
                    bytes_out: self.bytes_out,
                    bytes_in: self.bytes_in,
                    duration_us: self.duration_us,
                    started_at: self.started_at,
                })
            }
        }

        impl LogRow {
            fn into_record(self) -> Result<LogRecord, StoreError> {
                Ok(LogRecord {
                    step_execution_id: from_id(self.step_execution_id)?,
                    seq: self.seq,
                    level: self.level,
                    source: self.source,
                    message: self.message,
                    logged_at: self.logged_at,
                })
            }
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
            let rows = query.build().fetch_all(pool).await.map_err(StoreError::query)?;
            let (runs, unreadable) = readable_runs(&rows);
            for (id, err) in unreadable {
                tracing::error!(run_id = %id, "run {id} cannot be read and is left out of the listing: {err}");
            }
            Ok(runs)
        }

        /// Decodes run rows one by one: a row that cannot be read is returned apart, with
        /// its id and why, so that one bad row never hides the others.
        fn readable_runs(rows: &[<$db as sqlx::Database>::Row]) -> (Vec<RunRecord>, Vec<(String, String)>) {
            use sqlx::{FromRow, Row};
            let mut runs = Vec::with_capacity(rows.len());
            let mut unreadable = Vec::new();
            for row in rows {
                match RunRow::from_row(row).map_err(StoreError::query).and_then(RunRow::into_record) {
                    Ok(run) => runs.push(run),
                    Err(err) => {
                        let id = row.try_get::<$id, _>("id").ok().and_then(|id| from_id(id).ok());
                        let id = id.map_or_else(|| "(unreadable id)".to_owned(), |id| id.to_string());
                        unreadable.push((id, err.to_string()));
                    }
                }
            }
            (runs, unreadable)
        }

        pub(super) async fn get_run(pool: &$pool, id: Uuid) -> Result<Option<RunRecord>, StoreError> {
            read_run(pool, id, RUN_COLUMNS).await
        }

        /// One run without its input and output (read as `null`), which can be large.
        pub(super) async fn get_run_state(pool: &$pool, id: Uuid) -> Result<Option<RunRecord>, StoreError> {
            read_run(pool, id, &RUN_COLUMNS.replace(" input, output,", " NULL AS input, NULL AS output,")).await
        }

        async fn read_run(pool: &$pool, id: Uuid, columns: &str) -> Result<Option<RunRecord>, StoreError> {
            let mut query = QueryBuilder::<$db>::new(format!("SELECT {columns} FROM workflow_runs WHERE id = "));
            query.push_bind(to_id(id));
            let row: Option<RunRow> = query.build_query_as().fetch_optional(pool).await.map_err(StoreError::query)?;
            row.map(RunRow::into_record).transpose()
        }

        /// A run's step executions in the order they were created (ids are UUIDv7).
        pub(super) async fn run_steps(pool: &$pool, run_id: Uuid) -> Result<Vec<StepRecord>, StoreError> {
            read_run_steps(pool, run_id, STEP_COLUMNS).await
        }

        /// A run's step executions without their inputs and outputs (which can be large):
        /// what a watcher of the run needs, read often.
        pub(super) async fn run_step_states(pool: &$pool, run_id: Uuid) -> Result<Vec<StepRecord>, StoreError> {
            read_run_steps(pool, run_id, &light_step_columns()).await
        }

        /// The step columns with NULL for `input` and `output`.
        fn light_step_columns() -> String {
            STEP_COLUMNS.replace(" input, output,", " NULL AS input, NULL AS output,")
        }

        async fn read_run_steps(pool: &$pool, run_id: Uuid, columns: &str) -> Result<Vec<StepRecord>, StoreError> {
            let mut query =
                QueryBuilder::<$db>::new(format!("SELECT {columns} FROM step_executions WHERE run_id = "));
            query.push_bind(to_id(run_id)).push(" ORDER BY id");
            let rows = query.build().fetch_all(pool).await.map_err(StoreError::query)?;
            rows.iter()
                .map(|row| {
                    use sqlx::{FromRow, Row};
                    StepRow::from_row(row).map_err(StoreError::query).and_then(StepRow::into_record).map_err(|err| {
                        let id = row.try_get::<$id, _>("id").ok().and_then(|id| from_id(id).ok());
                        let id = id.map_or_else(|| "(unreadable id)".to_owned(), |id| id.to_string());
                        StoreError::Corrupt(format!("step execution {id} of run {run_id} cannot be read: {err}"))
                    })
                })
                .collect()
        }

        /// One page of a run's step executions, in creation order, after `filter.after`.
        pub(super) async fn steps_page(
            pool: &$pool,
            run_id: Uuid,
            filter: &StepFilter,
        ) -> Result<Vec<StepRecord>, StoreError> {
            let columns = if filter.without_data { light_step_columns() } else { STEP_COLUMNS.to_owned() };
            let mut query =
                QueryBuilder::<$db>::new(format!("SELECT {columns} FROM step_executions WHERE run_id = "));
            query.push_bind(to_id(run_id));
            if let Some(after) = filter.after {
                query.push(" AND id > ").push_bind(to_id(after));
            }
            if let Some(status) = filter.status {
                query.push(" AND status = ").push_bind(status.as_str());
            }
            if let Some(step_id) = &filter.step_id {
                query.push(" AND step_id = ").push_bind(step_id.clone());
            }
            if let Some(parent) = filter.parent {
                query.push(" AND parent_step_id = ").push_bind(to_id(parent));
            }
            if filter.top_level {
                query.push(" AND parent_step_id IS NULL");
            }
            query.push(" ORDER BY id LIMIT ").push_bind(i64::from(filter.limit));
            let rows: Vec<StepRow> = query.build_query_as().fetch_all(pool).await.map_err(StoreError::query)?;
            rows.into_iter().map(StepRow::into_record).collect()
        }

        /// How many step executions a run has, by status.
        pub(super) async fn step_counts(pool: &$pool, run_id: Uuid) -> Result<Vec<(String, i64)>, StoreError> {
            let mut query =
                QueryBuilder::<$db>::new("SELECT status, COUNT(*) FROM step_executions WHERE run_id = ");
            query.push_bind(to_id(run_id)).push(" GROUP BY status");
            query.build_query_as().fetch_all(pool).await.map_err(StoreError::query)
        }

        /// How many of a run's step executions sit in each block row (NULL: the run's top
        /// level), by status.
        pub(super) async fn counts_by_parent(
            pool: &$pool,
            run_id: Uuid,
        ) -> Result<Vec<(Option<Uuid>, String, i64)>, StoreError> {
            let mut query = QueryBuilder::<$db>::new(
                "SELECT parent_step_id, status, COUNT(*) FROM step_executions WHERE run_id = ",
            );
            query.push_bind(to_id(run_id)).push(" GROUP BY parent_step_id, status");
            let rows: Vec<(Option<$id>, String, i64)> =
                query.build_query_as().fetch_all(pool).await.map_err(StoreError::query)?;
            rows.into_iter().map(|(parent, status, count)| Ok((parent.map(from_id).transpose()?, status, count))).collect()
        }

        /// A run's block rows (every execution that is not an agent step): id, step id, type.
        pub(super) async fn block_rows(pool: &$pool, run_id: Uuid) -> Result<Vec<(Uuid, String, String)>, StoreError> {
            let mut query = QueryBuilder::<$db>::new(
                "SELECT id, step_id, step_type FROM step_executions WHERE step_type <> 'agent' AND run_id = ",
            );
            query.push_bind(to_id(run_id)).push(" ORDER BY id");
            let rows: Vec<($id, String, String)> =
                query.build_query_as().fetch_all(pool).await.map_err(StoreError::query)?;
            rows.into_iter().map(|(id, step_id, step_type)| Ok((from_id(id)?, step_id, step_type))).collect()
        }

        /// The logs and HTTP requests of these step executions.
        pub(super) async fn details_of(pool: &$pool, step_ids: &[Uuid]) -> Result<StepDetails, StoreError> {
            if step_ids.is_empty() {
                return Ok(StepDetails::default());
            }
            let (logs, http_calls) = futures::try_join!(logs_of(pool, step_ids), http_calls_of(pool, step_ids))?;
            Ok(StepDetails { logs, http_calls })
        }

        async fn http_calls_of(pool: &$pool, step_ids: &[Uuid]) -> Result<Vec<HttpCallRecord>, StoreError> {
            let mut query = QueryBuilder::<$db>::new(format!(
                "SELECT {HTTP_CALL_COLUMNS} FROM step_http_calls WHERE step_execution_id IN ("
            ));
            let mut list = query.separated(", ");
            for id in step_ids {
                list.push_bind(to_id(*id));
            }
            query.push(") ORDER BY step_execution_id, seq");
            let rows: Vec<HttpCallRow> = query.build_query_as().fetch_all(pool).await.map_err(StoreError::query)?;
            rows.into_iter().map(HttpCallRow::into_record).collect()
        }

        async fn logs_of(pool: &$pool, step_ids: &[Uuid]) -> Result<Vec<LogRecord>, StoreError> {
            let mut query = QueryBuilder::<$db>::new(
                "SELECT step_execution_id, seq, level, source, message, logged_at FROM step_logs \
                 WHERE step_execution_id IN (",
            );
            let mut list = query.separated(", ");
            for id in step_ids {
                list.push_bind(to_id(*id));
            }
            query.push(") ORDER BY step_execution_id, seq");
            let rows: Vec<LogRow> = query.build_query_as().fetch_all(pool).await.map_err(StoreError::query)?;
            rows.into_iter().map(LogRow::into_record).collect()
        }

        /// Claims up to `limit` runs no host is executing, oldest first, for `host`: each
        /// claim bumps the run's epoch and gives `host` the lease for `lease_ms`. Postgres
        /// skips rows another host is claiming at the same moment (`SKIP LOCKED`); SQLite
        /// serializes writers.
        pub(super) async fn claim_runs(
            pool: &$pool,
            host: &str,
            lease_ms: i64,
            limit: i64,
        ) -> Result<Vec<RunRecord>, StoreError> {
            let mut query = QueryBuilder::<$db>::new("UPDATE workflow_runs SET owner_host_id = ");
            query.push_bind(host).push(", epoch = epoch + 1, lease_expires_at = ");
            push_lease_until(&mut query, lease_ms);
            query.push(format!(" WHERE id IN (SELECT id FROM workflow_runs WHERE {CLAIMABLE} ORDER BY created_at, id LIMIT "));
            query.push_bind(limit).push(concat!($skip_locked, ")"));
            query.push(format!(" RETURNING {RUN_COLUMNS}"));
            let rows = query.build().fetch_all(pool).await.map_err(StoreError::query)?;
            let (mut runs, unreadable) = readable_runs(&rows);
            // Claimed but unreadable: nobody could ever run it, so it ends here, named.
            for (id, err) in unreadable {
                tracing::error!(run_id = %id, "run {id} cannot be read, so it cannot be resumed; failing it: {err}");
                let mut query = QueryBuilder::<$db>::new(
                    "UPDATE workflow_runs SET status = 'failed', owner_host_id = NULL, lease_expires_at = NULL, error = ",
                );
                query.push_bind(format!("its record cannot be read, so it cannot be resumed: {err}"));
                query.push(", finished_at = ").push_bind(Utc::now()).push(" WHERE CAST(id AS TEXT) = ").push_bind(id);
                query.build().execute(pool).await.map_err(StoreError::query)?;
            }
            runs.sort_by_key(|run| (run.created_at, run.id));
            Ok(runs)
        }

        /// Claims run `id` for `host` if no host is executing it.
        pub(super) async fn claim_run(
            pool: &$pool,
            id: Uuid,
            host: &str,
            lease_ms: i64,
        ) -> Result<Option<RunRecord>, StoreError> {
            let mut query = QueryBuilder::<$db>::new("UPDATE workflow_runs SET owner_host_id = ");
            query.push_bind(host).push(", epoch = epoch + 1, lease_expires_at = ");
            push_lease_until(&mut query, lease_ms);
            query.push(" WHERE id = ").push_bind(to_id(id));
            query.push(format!(" AND {CLAIMABLE} RETURNING {RUN_COLUMNS}"));
            let row: Option<RunRow> = query.build_query_as().fetch_optional(pool).await.map_err(StoreError::query)?;
            row.map(RunRow::into_record).transpose()
        }

        /// Extends the leases `host` holds on `ids` (the runs it is executing); returns
        /// those it still holds, with their epochs (a run missing was taken over).
        pub(super) async fn renew_leases(
            pool: &$pool,
            host: &str,
            ids: &[Uuid],
            lease_ms: i64,
        ) -> Result<Vec<(Uuid, i64)>, StoreError> {
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let mut query = QueryBuilder::<$db>::new("UPDATE workflow_runs SET lease_expires_at = ");
            push_lease_until(&mut query, lease_ms);
            query.push(" WHERE owner_host_id = ").push_bind(host);
            query.push(" AND status IN ('pending', 'running') AND id IN (");
            let mut list = query.separated(", ");
            for id in ids {
                list.push_bind(to_id(*id));
            }
            query.push(") RETURNING id, epoch");
            let rows: Vec<($id, i64)> = query.build_query_as().fetch_all(pool).await.map_err(StoreError::query)?;
            rows.into_iter().map(|(id, epoch)| Ok((from_id(id)?, epoch))).collect()
        }

        /// Sends a failed or cancelled run back to `pending` (unowned, its epoch bumped so
        /// that nothing of an earlier owner lands), counting the redrive. None when the run
        /// is not failed or cancelled.
        pub(super) async fn redrive(pool: &$pool, id: Uuid) -> Result<Option<RunRecord>, StoreError> {
            let mut query = QueryBuilder::<$db>::new(
                "UPDATE workflow_runs SET status = 'pending', redrive_count = redrive_count + 1, error = NULL, \
                 output = NULL, started_at = NULL, finished_at = NULL, cancel_requested_at = NULL, \
                 owner_host_id = NULL, lease_expires_at = NULL, epoch = epoch + 1 WHERE id = ",
            );
            query.push_bind(to_id(id));
            query.push(format!(" AND status IN ('failed', 'cancelled') RETURNING {RUN_COLUMNS}"));
            let row: Option<RunRow> = query.build_query_as().fetch_optional(pool).await.map_err(StoreError::query)?;
            row.map(RunRow::into_record).transpose()
        }

        /// Accepts `run` under `key` (per workflow) unless the key already names a run:
        /// returns the run the key names, and whether it was created now.
        pub(super) async fn insert_run_once(
            pool: &$pool,
            run: &RunRecord,
            key: &str,
        ) -> Result<(Uuid, bool), StoreError> {
            let mut tx = pool.begin().await.map_err(StoreError::query)?;
            let mut query = QueryBuilder::<$db>::new(format!("INSERT INTO workflow_runs ({RUN_WRITE_COLUMNS}) VALUES ("));
            push_run(&mut query.separated(", "), run, None);
            query.push(")");
            query.build().execute(&mut *tx).await.map_err(StoreError::query)?;
            let mut query = QueryBuilder::<$db>::new(
                "INSERT INTO run_idempotency_keys (workflow_name, idempotency_key, run_id, created_at) VALUES (",
            );
            query.push_bind(&run.workflow_name).push(", ").push_bind(key).push(", ").push_bind(to_id(run.id));
            query.push(", ").push_bind(run.created_at).push(") ON CONFLICT (workflow_name, idempotency_key) DO NOTHING");
            if query.build().execute(&mut *tx).await.map_err(StoreError::query)?.rows_affected() == 1 {
                tx.commit().await.map_err(StoreError::query)?;
                return Ok((run.id, true));
            }
            // The key is taken (by a run committed before ours): that run is the answer.
            drop(tx);
            let mut query = QueryBuilder::<$db>::new(
                "SELECT run_id FROM run_idempotency_keys WHERE workflow_name = ",
            );
            query.push_bind(&run.workflow_name).push(" AND idempotency_key = ").push_bind(key);
            let existing: $id = query.build_query_scalar().fetch_one(pool).await.map_err(StoreError::query)?;
            Ok((from_id(existing)?, false))
        }

        /// Stores a definition by digest (once).
        pub(super) async fn insert_definition(
            pool: &$pool,
            digest: &str,
            definition: &serde_json::Value,
        ) -> Result<(), StoreError> {
            let mut query =
                QueryBuilder::<$db>::new("INSERT INTO workflow_definitions (digest, definition, created_at) VALUES (");
            query.push_bind(digest).push(", ").push_bind(Json(definition)).push(", ").push_bind(Utc::now());
            query.push(") ON CONFLICT (digest) DO NOTHING");
            query.build().execute(pool).await.map_err(StoreError::query)?;
            Ok(())
        }

        /// The definition with this digest.
        pub(super) async fn definition(pool: &$pool, digest: &str) -> Result<Option<serde_json::Value>, StoreError> {
            let mut query = QueryBuilder::<$db>::new("SELECT definition FROM workflow_definitions WHERE digest = ");
            query.push_bind(digest);
            let found: Option<StoredJson> =
                query.build_query_scalar().fetch_optional(pool).await.map_err(StoreError::query)?;
            Ok(found.map(|json| json.0))
        }

        /// Stores component bytes by digest, unless they are there already.
        pub(super) async fn insert_component(pool: &$pool, digest: &str, wasm: &[u8]) -> Result<(), StoreError> {
            let mut query = QueryBuilder::<$db>::new("SELECT COUNT(*) FROM agent_components WHERE digest = ");
            query.push_bind(digest);
            let count: i64 = query.build_query_scalar().fetch_one(pool).await.map_err(StoreError::query)?;
            if count > 0 {
                return Ok(());
            }
            let mut connection = pool.acquire().await.map_err(StoreError::query)?;
            insert_component_bytes(&mut connection, digest, wasm).await
        }

        async fn insert_component_bytes(
            connection: &mut <$db as sqlx::Database>::Connection,
            digest: &str,
            wasm: &[u8],
        ) -> Result<(), StoreError> {
            let mut query = QueryBuilder::<$db>::new(
                "INSERT INTO agent_components (digest, wasm, size_bytes, created_at) VALUES (",
            );
            query.push_bind(digest).push(", ").push_bind(wasm).push(", ").push_bind(wasm.len() as i64);
            query.push(", ").push_bind(Utc::now()).push(") ON CONFLICT (digest) DO NOTHING");
            query.build().execute(&mut *connection).await.map_err(StoreError::query)?;
            Ok(())
        }

        /// One step execution, if it exists.
        pub(super) async fn step(pool: &$pool, id: Uuid) -> Result<Option<StepRecord>, StoreError> {
            let mut query = QueryBuilder::<$db>::new(format!("SELECT {STEP_COLUMNS} FROM step_executions WHERE id = "));
            query.push_bind(to_id(id));
            let row: Option<StepRow> = query.build_query_as().fetch_optional(pool).await.map_err(StoreError::query)?;
            row.map(StepRow::into_record).transpose()
        }

        /// Writes `host`'s row with a fresh heartbeat, live for `lease_ms` more; returns how
        /// many other hosts that take units are live.
        pub(super) async fn beat_host(pool: &$pool, host: &HostRecord, lease_ms: i64) -> Result<i64, StoreError> {
            let mut query = QueryBuilder::<$db>::new(
                "INSERT INTO hosts (host_id, role, started_at, heartbeat_at, expires_at, max_instances, slots_in_use, \
                 runs_owned, units_taken, units_offered) VALUES (",
            );
            query.push_bind(&host.host_id).push(", ").push_bind(host.role.as_str()).push(", ");
            query.push_bind(host.started_at).push(", ").push_bind(host.heartbeat_at).push(", ");
            push_lease_until(&mut query, lease_ms);
            query.push(", ").push_bind(host.max_instances).push(", ").push_bind(host.slots_in_use);
            query.push(", ").push_bind(host.runs_owned).push(", ").push_bind(host.units_taken);
            query.push(", ").push_bind(host.units_offered);
            query.push(
                ") ON CONFLICT (host_id) DO UPDATE SET role = excluded.role, heartbeat_at = excluded.heartbeat_at, \
                 expires_at = excluded.expires_at, max_instances = excluded.max_instances, \
                 slots_in_use = excluded.slots_in_use, runs_owned = excluded.runs_owned, \
                 units_taken = excluded.units_taken, units_offered = excluded.units_offered",
            );
            query.build().execute(pool).await.map_err(StoreError::query)?;
            // Hosts that take units: `braid run` hosts do not.
            let mut query = QueryBuilder::<$db>::new(concat!(
                "SELECT COUNT(*) FROM hosts WHERE role <> 'run' AND expires_at > ", $now, " AND host_id <> "
            ));
            query.push_bind(&host.host_id);
            query.build_query_scalar().fetch_one(pool).await.map_err(StoreError::query)
        }

        /// Removes `host_id`'s row (it stopped); rows of hosts dead for a day go too.
        pub(super) async fn remove_host(pool: &$pool, host_id: &str) -> Result<(), StoreError> {
            let mut query = QueryBuilder::<$db>::new("DELETE FROM hosts WHERE host_id = ");
            query.push_bind(host_id);
            query.push(" OR expires_at < ");
            push_lease_until(&mut query, -86_400_000);
            query.build().execute(pool).await.map_err(StoreError::query)?;
            Ok(())
        }

        #[derive(sqlx::FromRow)]
        struct HostRow {
            host_id: String,
            role: String,
            started_at: DateTime<Utc>,
            heartbeat_at: DateTime<Utc>,
            max_instances: i32,
            slots_in_use: i32,
            runs_owned: i32,
            units_taken: i64,
            units_offered: i64,
        }

        /// The live hosts (their heartbeat's expiry not passed), by id.
        pub(super) async fn live_hosts(pool: &$pool) -> Result<Vec<HostRecord>, StoreError> {
            let query = concat!(
                "SELECT host_id, role, started_at, heartbeat_at, max_instances, slots_in_use, runs_owned, units_taken, \
                 units_offered FROM hosts WHERE expires_at > ", $now, " ORDER BY host_id"
            );
            let rows: Vec<HostRow> = sqlx::query_as(query).fetch_all(pool).await.map_err(StoreError::query)?;
            rows.into_iter()
                .map(|row| {
                    Ok(HostRecord {
                        role: row.role.parse().map_err(StoreError::Corrupt)?,
                        host_id: row.host_id,
                        started_at: row.started_at,
                        heartbeat_at: row.heartbeat_at,
                        max_instances: row.max_instances,
                        slots_in_use: row.slots_in_use,
                        runs_owned: row.runs_owned,
                        units_taken: row.units_taken,
                        units_offered: row.units_offered,
                    })
                })
                .collect()
        }

        /// Records the `traceparent` run `run_id` was started with.
        pub(super) async fn insert_trace_parent(pool: &$pool, run_id: Uuid, traceparent: &str) -> Result<(), StoreError> {
            let mut query = QueryBuilder::<$db>::new("INSERT INTO run_trace_parents (run_id, traceparent) VALUES (");
            query.push_bind(to_id(run_id)).push(", ").push_bind(traceparent).push(") ON CONFLICT (run_id) DO NOTHING");
            query.build().execute(pool).await.map_err(StoreError::query)?;
            Ok(())
        }

        /// The `traceparent` run `run_id` was started with, if any.
        pub(super) async fn trace_parent(pool: &$pool, run_id: Uuid) -> Result<Option<String>, StoreError> {
            let mut query = QueryBuilder::<$db>::new("SELECT traceparent FROM run_trace_parents WHERE run_id = ");
            query.push_bind(to_id(run_id));
            query.build_query_scalar().fetch_optional(pool).await.map_err(StoreError::query)
        }

        /// Whether the database answers.
        pub(super) async fn ping(pool: &$pool) -> Result<(), StoreError> {
            sqlx::query("SELECT 1").execute(pool).await.map_err(StoreError::query)?;
            Ok(())
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
            insert_component_bytes(&mut tx, &agent.digest, wasm).await?;
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
            definition: StoredJson,
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
            // Runs find their definition by digest, however they were started.
            insert_definition(pool, &workflow.digest, &workflow.definition).await?;
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
