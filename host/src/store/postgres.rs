//! The Postgres store: native `uuid` and `timestamptz` columns; inputs and outputs as text
//! holding the JSON Braid checked (the server does not parse it again), other JSON as `jsonb`.

super::backend::sql_backend!(
    db: sqlx::Postgres,
    pool: sqlx::PgPool,
    id: Uuid,
    to_id: |id: Uuid| id,
    from_id: |id: Uuid| Ok::<_, StoreError>(id),
    migrations: "../migrations/postgres",
    now: "clock_timestamp()",
    lease_until: ("(clock_timestamp() + ", " * interval '1 millisecond')"),
    skip_locked: " FOR UPDATE SKIP LOCKED"
);

/// Step rows bound column by column as arrays and expanded with `UNNEST`: 26 parameters
/// per statement whatever the row count, which Postgres parses and plans in a fraction of
/// the time a 22,000-placeholder `VALUES` list takes (the writer's main cost in a fan-out).
///
/// Each row carries the epoch of the host writing it, and is written only if its run's row
/// still has that epoch: a primary-key lookup per row that also locks the run's row
/// `FOR SHARE` until the commit, so that a concurrent claim (which bumps the epoch) waits
/// for this write, or this write sees the new epoch and writes nothing — a host that lost a
/// run never lands a row after the new owner took it. (A correlated subquery rather than a
/// join with the locked runs: it plans and runs in about half the time for the few rows of
/// a typical commit, on the writer's serial path.) Returns how many rows were written.
async fn insert_steps<'a>(
    connection: &mut sqlx::PgConnection,
    steps: &'a [(StepRecord, i64)],
    mode: super::StepWrite,
) -> Result<u64, StoreError> {
    use sqlx::Arguments as _;
    // The arguments buffer is sized up front: grown by doubling, it copied a wide fan-out's
    // megabytes of inputs and outputs several times over (and faulted in fresh memory).
    let text = |value: &Option<crate::json::JsonDoc>| value.as_ref().map_or(0, crate::json::JsonDoc::text_len);
    let bytes: usize = steps
        .iter()
        .map(|(s, _)| text(&s.input) + text(&s.output) + s.error.as_ref().map_or(0, String::len) + 512)
        .sum();
    let mut arguments = sqlx::postgres::PgArguments::default();
    arguments.reserve(26, bytes);
    // Adds every column of the rows, each value given by `$value!(|step| ...)`: whole
    // columns as arrays, or one row's values.
    macro_rules! add_step_columns {
        ($value:ident) => {{
            let add = |result: Result<(), sqlx::error::BoxDynError>| {
                result.map_err(|err| StoreError::Internal(err.to_string()))
            };
            add(arguments.add($value!(|s: &'a StepRecord| s.id)))?;
            add(arguments.add($value!(|s: &'a StepRecord| s.run_id)))?;
            add(arguments.add($value!(|s: &'a StepRecord| s.step_id.as_str())))?;
            add(arguments.add($value!(|s: &'a StepRecord| s.step_type.as_str())))?;
            add(arguments.add($value!(|s: &'a StepRecord| s.parent_step_id)))?;
            add(arguments.add($value!(|s: &'a StepRecord| s.branch_name.as_deref())))?;
            add(arguments.add($value!(|s: &'a StepRecord| s.item_index)))?;
            add(arguments.add($value!(|s: &'a StepRecord| s.join_policy.as_deref())))?;
            add(arguments.add($value!(|s: &'a StepRecord| s.agent_name.as_deref())))?;
            add(arguments.add($value!(|s: &'a StepRecord| s.agent_digest.as_deref())))?;
            add(arguments.add($value!(|s: &'a StepRecord| s.attempt)))?;
            add(arguments.add($value!(|s: &'a StepRecord| s.status.as_str())))?;
            add(arguments.add($value!(|s: &'a StepRecord| s.outcome.as_deref())))?;
            add(arguments.add($value!(|s: &'a StepRecord| super::stored_json::stored_text(&s.input))))?;
            add(arguments.add($value!(|s: &'a StepRecord| super::stored_json::stored_text(&s.output))))?;
            add(arguments.add($value!(|s: &'a StepRecord| s.error.as_deref())))?;
            add(arguments.add($value!(|s: &'a StepRecord| s.started_at)))?;
            add(arguments.add($value!(|s: &'a StepRecord| s.finished_at)))?;
            add(arguments.add($value!(|s: &'a StepRecord| s.instantiate_us)))?;
            add(arguments.add($value!(|s: &'a StepRecord| s.execute_us)))?;
            add(arguments.add($value!(|s: &'a StepRecord| s.fuel_consumed)))?;
            add(arguments.add($value!(|s: &'a StepRecord| s.memory_peak_bytes)))?;
            add(arguments.add($value!(|s: &'a StepRecord| s.step_key.as_deref())))?;
            add(arguments.add($value!(|s: &'a StepRecord| s.queued_us)))?;
            add(arguments.add($value!(|s: &'a StepRecord| s.host_id.as_deref())))?;
        }};
    }
    let sql = step_sql(steps.len(), mode);
    if let [(step, epoch)] = steps {
        // One row (every step of a sequential chain): plain parameters, which Postgres
        // plans once for all executions (a generic plan), where the arrays below would be
        // planned again at every execution — a tenth of a millisecond on a chain's path.
        macro_rules! one {
            ($value:expr) => {
                ($value)(step)
            };
        }
        add_step_columns!(one);
        arguments.add(*epoch).map_err(|err| StoreError::Internal(err.to_string()))?;
    } else {
        macro_rules! column {
            ($value:expr) => {
                steps.iter().map(|(step, _)| ($value)(step)).collect::<Vec<_>>()
            };
        }
        add_step_columns!(column);
        arguments
            .add(steps.iter().map(|(_, epoch)| *epoch).collect::<Vec<i64>>())
            .map_err(|err| StoreError::Internal(err.to_string()))?;
    }
    let query = sqlx::query_with(sql, arguments);
    let done = query.execute(connection).await.map_err(StoreError::query)?;
    Ok(done.rows_affected())
}

/// Prepares the writer's statements on its connection ahead of its first commit, which
/// would otherwise also parse them and load the catalog entries (tables, indexes, checks,
/// the TOAST compression) they touch. They are prepared by running them (sqlx then declares
/// its own parameter types; a statement prepared bare would get the types Postgres infers,
/// and sqlx binds values in binary by their Rust types without checking them) on rows of a
/// run with the nil id (which no run has), in a transaction that is rolled back. Postgres
/// plans a prepared statement anew for its first five executions before it settles on one
/// plan for all, so the one-row statements run six times: those plans are spent here, not
/// on the first steps of a run.
pub(super) async fn prepare_writes(connection: &mut sqlx::PgConnection) -> Result<(), StoreError> {
    use sqlx::Connection;
    let mut tx = connection.begin().await.map_err(StoreError::query)?;
    upsert_nobody(&mut tx).await?;
    // As large as a typical agent's input, so that the stored documents are compressed.
    let document = crate::json::JsonDoc::from_value(serde_json::Value::String("warm-up ".repeat(300)));
    let nobody = || {
        let mut row = StepRecord::new(Uuid::nil(), "warm-up", "agent", crate::store::StepStatus::Succeeded);
        row.input = Some(document.clone());
        row.output = Some(document.clone());
        (row, 0)
    };
    for mode in [super::StepWrite::Insert, super::StepWrite::Upsert] {
        for _ in 0..6 {
            insert_steps(&mut tx, &[nobody()], mode).await?;
        }
        insert_steps(&mut tx, &[nobody(), nobody()], mode).await?;
    }
    tx.rollback().await.map_err(StoreError::query)
}

/// The statement writing `rows` step rows as `mode` says.
fn step_sql(rows: usize, mode: super::StepWrite) -> &'static str {
    static SQL: std::sync::LazyLock<[String; 4]> = std::sync::LazyLock::new(|| {
        [
            format!("{}{STEP_UPDATES}", *ONE_STEP_SQL),
            ONE_STEP_SQL.clone(),
            format!("{}{STEP_UPDATES}", *STEPS_SQL),
            STEPS_SQL.clone(),
        ]
    });
    let at = usize::from(rows > 1) * 2 + usize::from(mode == super::StepWrite::Insert);
    &SQL[at]
}

/// The step insert for many rows: each column one array parameter, expanded with `UNNEST`.
static STEPS_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "INSERT INTO step_executions ({STEP_COLUMNS}) \
         SELECT t.id, run_id, step_id, step_type, parent_step_id, branch_name, item_index, join_policy, agent_name, \
                agent_digest, attempt, status, outcome, input, output, error, started_at, finished_at, \
                instantiate_us, execute_us, fuel_consumed, memory_peak_bytes, step_key, queued_us, host_id \
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::uuid[], $6::text[], \
                     $7::int8[], $8::text[], $9::text[], $10::text[], $11::int4[], $12::text[], $13::text[], $14::text[], \
                     $15::text[], $16::text[], $17::timestamptz[], $18::timestamptz[], $19::int8[], $20::int8[], \
                     $21::int8[], $22::int8[], $23::text[], $24::int8[], $25::text[], $26::int8[]) \
           AS t(id, run_id, step_id, step_type, parent_step_id, branch_name, item_index, join_policy, agent_name, \
                agent_digest, attempt, status, outcome, input, output, error, started_at, finished_at, \
                instantiate_us, execute_us, fuel_consumed, memory_peak_bytes, step_key, queued_us, host_id, epoch) \
         WHERE t.epoch = (SELECT r.epoch FROM workflow_runs r WHERE r.id = t.run_id FOR SHARE)"
    )
});

/// The step insert for one row, with the same fence.
static ONE_STEP_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "INSERT INTO step_executions ({STEP_COLUMNS}) \
         SELECT $1::uuid, $2::uuid, $3::text, $4::text, $5::uuid, $6::text, $7::int8, $8::text, $9::text, \
                $10::text, $11::int4, $12::text, $13::text, $14::text, $15::text, $16::text, $17::timestamptz, \
                $18::timestamptz, $19::int8, $20::int8, $21::int8, $22::int8, $23::text, $24::int8, $25::text \
         WHERE $26::int8 = (SELECT r.epoch FROM workflow_runs r WHERE r.id = $2::uuid FOR SHARE)"
    )
});

/// Wakes every host listening on [`WAKE_CHANNEL`] (new work, a cancel request).
pub(super) async fn notify(pool: &sqlx::PgPool, payload: &str) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(super::WAKE_CHANNEL)
        .bind(payload)
        .execute(pool)
        .await
        .map_err(StoreError::query)?;
    Ok(())
}
