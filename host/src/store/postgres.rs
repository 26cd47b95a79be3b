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
) -> Result<u64, StoreError> {
    // Binds every column of the rows, each value given by `$value!(|step| ...)`: whole
    // columns as arrays, or one row's values.
    macro_rules! bind_step_columns {
        ($query:expr, $value:ident) => {
            $query
                .bind($value!(|s: &StepRecord| s.id))
                .bind($value!(|s: &StepRecord| s.run_id))
                .bind($value!(|s: &StepRecord| s.step_id.clone()))
                .bind($value!(|s: &StepRecord| s.step_type.clone()))
                .bind($value!(|s: &StepRecord| s.parent_step_id))
                .bind($value!(|s: &StepRecord| s.branch_name.clone()))
                .bind($value!(|s: &StepRecord| s.item_index))
                .bind($value!(|s: &StepRecord| s.join_policy.clone()))
                .bind($value!(|s: &StepRecord| s.agent_name.clone()))
                .bind($value!(|s: &StepRecord| s.agent_digest.clone()))
                .bind($value!(|s: &StepRecord| s.attempt))
                .bind($value!(|s: &StepRecord| s.status.as_str().to_owned()))
                .bind($value!(|s: &StepRecord| s.outcome.clone()))
                .bind($value!(|s: &'a StepRecord| super::stored_json::stored_text(&s.input)))
                .bind($value!(|s: &'a StepRecord| super::stored_json::stored_text(&s.output)))
                .bind($value!(|s: &StepRecord| s.error.clone()))
                .bind($value!(|s: &StepRecord| s.started_at))
                .bind($value!(|s: &StepRecord| s.finished_at))
                .bind($value!(|s: &StepRecord| s.instantiate_us))
                .bind($value!(|s: &StepRecord| s.execute_us))
                .bind($value!(|s: &StepRecord| s.fuel_consumed))
                .bind($value!(|s: &StepRecord| s.memory_peak_bytes))
                .bind($value!(|s: &StepRecord| s.step_key.clone()))
                .bind($value!(|s: &StepRecord| s.queued_us))
                .bind($value!(|s: &StepRecord| s.host_id.clone()))
        };
    }
    let query = if let [(step, epoch)] = steps {
        // One row (every step of a sequential chain): plain parameters, which Postgres
        // plans once for all executions (a generic plan), where the arrays below would be
        // planned again at every execution — a tenth of a millisecond on a chain's path.
        macro_rules! one {
            ($value:expr) => {
                ($value)(step)
            };
        }
        bind_step_columns!(sqlx::query(&ONE_STEP_SQL), one).bind(*epoch)
    } else {
        macro_rules! column {
            ($value:expr) => {
                steps.iter().map(|(step, _)| ($value)(step)).collect::<Vec<_>>()
            };
        }
        bind_step_columns!(sqlx::query(&STEPS_SQL), column)
            .bind(steps.iter().map(|(_, epoch)| *epoch).collect::<Vec<i64>>())
    };
    let done = query.execute(connection).await.map_err(StoreError::query)?;
    Ok(done.rows_affected())
}

/// Prepares the writer's step statements on its connection ahead of its first commit, which
/// would otherwise also parse them and load the catalog entries they touch. They are
/// prepared by running them (sqlx then declares its own parameter types; a statement
/// prepared bare would get the types Postgres infers, and sqlx binds values in binary by
/// their Rust types without checking them) on rows whose fence writes nothing: no run has
/// the nil id. Postgres plans a prepared statement anew for its first five executions before
/// it settles on one plan for all, so the one-row statement runs six times: those plans are
/// spent here, not on the first steps of a run.
pub(super) async fn prepare_writes(connection: &mut sqlx::PgConnection) -> Result<(), StoreError> {
    let nobody = || (StepRecord::new(Uuid::nil(), "warm-up", "agent", crate::store::StepStatus::Succeeded), -1);
    for _ in 0..6 {
        insert_steps(&mut *connection, &[nobody()]).await?;
    }
    insert_steps(&mut *connection, &[nobody(), nobody()]).await?;
    Ok(())
}

/// The step upsert for many rows: each column one array parameter, expanded with `UNNEST`.
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
         WHERE t.epoch = (SELECT r.epoch FROM workflow_runs r WHERE r.id = t.run_id FOR SHARE){STEP_UPDATES}"
    )
});

/// The step upsert for one row, with the same fence.
static ONE_STEP_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "INSERT INTO step_executions ({STEP_COLUMNS}) \
         SELECT $1::uuid, $2::uuid, $3::text, $4::text, $5::uuid, $6::text, $7::int8, $8::text, $9::text, \
                $10::text, $11::int4, $12::text, $13::text, $14::text, $15::text, $16::text, $17::timestamptz, \
                $18::timestamptz, $19::int8, $20::int8, $21::int8, $22::int8, $23::text, $24::int8, $25::text \
         WHERE $26::int8 = (SELECT r.epoch FROM workflow_runs r WHERE r.id = $2::uuid FOR SHARE){STEP_UPDATES}"
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
