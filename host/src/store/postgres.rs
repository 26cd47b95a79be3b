//! The Postgres store: native `uuid`, `jsonb` and `timestamptz` columns.

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
async fn insert_steps(connection: &mut sqlx::PgConnection, steps: &[(StepRecord, i64)]) -> Result<u64, StoreError> {
    fn column<T>(steps: &[(StepRecord, i64)], value: impl Fn(&StepRecord) -> T) -> Vec<T> {
        steps.iter().map(|(step, _)| value(step)).collect()
    }
    let json_text = |value: &Option<serde_json::Value>| value.as_ref().map(|v| v.to_string());
    let sql = format!(
        "INSERT INTO step_executions ({STEP_COLUMNS}) \
         SELECT t.id, run_id, step_id, step_type, parent_step_id, branch_name, item_index, join_policy, agent_name, \
                agent_digest, attempt, status, outcome, input::jsonb, output::jsonb, error, started_at, finished_at, \
                instantiate_us, execute_us, fuel_consumed, memory_peak_bytes, step_key, queued_us, host_id \
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::uuid[], $6::text[], \
                     $7::int8[], $8::text[], $9::text[], $10::text[], $11::int4[], $12::text[], $13::text[], $14::text[], \
                     $15::text[], $16::text[], $17::timestamptz[], $18::timestamptz[], $19::int8[], $20::int8[], \
                     $21::int8[], $22::int8[], $23::text[], $24::int8[], $25::text[], $26::int8[]) \
           AS t(id, run_id, step_id, step_type, parent_step_id, branch_name, item_index, join_policy, agent_name, \
                agent_digest, attempt, status, outcome, input, output, error, started_at, finished_at, \
                instantiate_us, execute_us, fuel_consumed, memory_peak_bytes, step_key, queued_us, host_id, epoch) \
         WHERE t.epoch = (SELECT r.epoch FROM workflow_runs r WHERE r.id = t.run_id FOR SHARE){STEP_UPDATES}"
    );
    let done = sqlx::query(&sql)
        .bind(column(steps, |s| s.id))
        .bind(column(steps, |s| s.run_id))
        .bind(column(steps, |s| s.step_id.clone()))
        .bind(column(steps, |s| s.step_type.clone()))
        .bind(column(steps, |s| s.parent_step_id))
        .bind(column(steps, |s| s.branch_name.clone()))
        .bind(column(steps, |s| s.item_index))
        .bind(column(steps, |s| s.join_policy.clone()))
        .bind(column(steps, |s| s.agent_name.clone()))
        .bind(column(steps, |s| s.agent_digest.clone()))
        .bind(column(steps, |s| s.attempt))
        .bind(column(steps, |s| s.status.as_str().to_owned()))
        .bind(column(steps, |s| s.outcome.clone()))
        .bind(column(steps, |s| json_text(&s.input)))
        .bind(column(steps, |s| json_text(&s.output)))
        .bind(column(steps, |s| s.error.clone()))
        .bind(column(steps, |s| s.started_at))
        .bind(column(steps, |s| s.finished_at))
        .bind(column(steps, |s| s.instantiate_us))
        .bind(column(steps, |s| s.execute_us))
        .bind(column(steps, |s| s.fuel_consumed))
        .bind(column(steps, |s| s.memory_peak_bytes))
        .bind(column(steps, |s| s.step_key.clone()))
        .bind(column(steps, |s| s.queued_us))
        .bind(column(steps, |s| s.host_id.clone()))
        .bind(steps.iter().map(|(_, epoch)| *epoch).collect::<Vec<i64>>())
        .execute(connection)
        .await
        .map_err(StoreError::query)?;
    Ok(done.rows_affected())
}

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
