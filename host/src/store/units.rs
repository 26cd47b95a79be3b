//! Hosts and work units. Every host keeps a row in `hosts`, renewed on its heartbeat (both
//! databases). On Postgres, the owner of a run whose pool is full offers the units of its
//! fan-outs in `work_units`; any host with free slots claims them in batches (`FOR UPDATE
//! SKIP LOCKED`) under a lease with a fencing counter, and writes the unit's step row in
//! the same transaction that marks the unit done — refused if its lease on the unit (or
//! the owner's epoch on the run) moved on. SQLite is single-host and has no units.
//!
//! Units are opaque here: the spec is JSON the engine wrote.

use super::records::{HostRecord, StepDetails, StepRecord};
use super::{Batch, Pool, Store, StoreError, Wake, dispatch, millis};
use super::{postgres, sqlite};
use serde_json::Value;
use sqlx::types::Json;
use std::time::Duration;
use uuid::Uuid;

/// A unit as its owner offers it.
#[derive(Debug, Clone)]
pub struct OfferedUnit {
    pub id: Uuid,
    pub run_id: Uuid,
    pub run_epoch: i64,
    pub owner_host_id: String,
    pub step_key: String,
    pub agent_digest: String,
    pub attempt: i32,
    pub spec: Value,
}

/// A unit a host has claimed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedUnit {
    pub id: Uuid,
    pub run_id: Uuid,
    pub run_epoch: i64,
    pub owner_host_id: String,
    pub step_key: String,
    pub spec: Json<Value>,
    /// The attempt number this take records (one more than the last take's, if a host took
    /// it before and died).
    pub attempt: i32,
    pub claim_epoch: i64,
    /// The host that held it before, whose lease expired.
    pub previous_host: Option<String>,
}

/// The claim a host's writes for one unit carry.
#[derive(Debug, Clone)]
pub struct UnitFence {
    pub id: Uuid,
    pub host_id: String,
    pub claim_epoch: i64,
    pub run_id: Uuid,
    pub run_epoch: i64,
    pub step_key: String,
    /// Close rows a dead earlier taker left `running` at the unit's key.
    pub close_stale: bool,
}

/// The columns a claim returns.
const CLAIMED: &str =
    "u.id, u.run_id, u.run_epoch, u.owner_host_id, u.step_key, u.spec, u.attempt, u.claim_epoch, p.previous_host";

/// A unit nobody runs: offered, or claimed by a host whose lease expired.
const UNTAKEN: &str = "(status = 'offered' OR (status = 'claimed' AND lease_expires_at < clock_timestamp()))";

impl Store {
    /// Whether several hosts can share this database's work (Postgres).
    pub fn shares_work(&self) -> bool {
        matches!(self.pool, Pool::Postgres(_))
    }

    /// Writes `host`'s row with a fresh heartbeat, live for `lease`; returns how many other
    /// hosts are live.
    pub async fn beat_host(&self, host: &HostRecord, lease: Duration) -> Result<usize, StoreError> {
        let others: i64 = dispatch!(self, beat_host(host, millis(lease)))?;
        Ok(usize::try_from(others).unwrap_or(0))
    }

    /// Removes a stopped host's row.
    pub async fn remove_host(&self, host_id: &str) -> Result<(), StoreError> {
        dispatch!(self, remove_host(host_id))
    }

    /// The live hosts, by id.
    pub async fn live_hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        dispatch!(self, live_hosts())
    }

    /// One step execution.
    pub async fn step(&self, id: Uuid) -> Result<Option<StepRecord>, StoreError> {
        dispatch!(self, step(id))
    }

    fn postgres(&self) -> Result<&sqlx::PgPool, StoreError> {
        match &self.pool {
            Pool::Postgres(pool) => Ok(pool),
            Pool::Sqlite(_) => Err(StoreError::Internal("work units need Postgres".into())),
        }
    }

    /// Offers a unit to every host, and wakes them.
    pub async fn offer_unit(&self, unit: &OfferedUnit) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO work_units (id, run_id, run_epoch, owner_host_id, step_key, agent_digest, spec, status, \
             attempt, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 'offered', $8, clock_timestamp())",
        )
        .bind(unit.id)
        .bind(unit.run_id)
        .bind(unit.run_epoch)
        .bind(&unit.owner_host_id)
        .bind(&unit.step_key)
        .bind(&unit.agent_digest)
        .bind(Json(&unit.spec))
        .bind(unit.attempt)
        .execute(self.postgres()?)
        .await
        .map_err(StoreError::query)?;
        self.wake(Wake::Units).await;
        Ok(())
    }

    /// Claims up to `limit` units nobody runs, oldest first, for `host` under a lease of
    /// `lease`; each claim bumps the unit's fencing counter.
    pub async fn claim_units(&self, host: &str, lease: Duration, limit: usize) -> Result<Vec<ClaimedUnit>, StoreError> {
        let sql = format!(
            "WITH p AS (SELECT id, claimed_by AS previous_host FROM work_units \
                        WHERE {UNTAKEN} AND NOT cancel_requested ORDER BY created_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
             UPDATE work_units u SET status = 'claimed', claimed_by = $1, claim_epoch = u.claim_epoch + 1, \
                    lease_expires_at = clock_timestamp() + $2 * interval '1 millisecond', \
                    attempt = CASE WHEN p.previous_host IS NULL THEN u.attempt ELSE u.attempt + 1 END \
             FROM p WHERE u.id = p.id RETURNING {CLAIMED}"
        );
        sqlx::query_as(&sql)
            .bind(host)
            .bind(millis(lease))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(self.postgres()?)
            .await
            .map_err(StoreError::query)
    }

    /// Extends `host`'s leases on `ids`; returns those it still holds and nobody asked to
    /// cancel (the rest are to be interrupted).
    pub async fn renew_units(&self, host: &str, ids: &[Uuid], lease: Duration) -> Result<Vec<Uuid>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        sqlx::query_scalar(
            "UPDATE work_units SET lease_expires_at = clock_timestamp() + $3 * interval '1 millisecond' \
             WHERE id = ANY($2) AND claimed_by = $1 AND status = 'claimed' AND NOT cancel_requested RETURNING id",
        )
        .bind(host)
        .bind(ids)
        .bind(millis(lease))
        .fetch_all(self.postgres()?)
        .await
        .map_err(StoreError::query)
    }

    /// Gives `host`'s units `ids` back for other hosts to take at once (it is shutting
    /// down); its own later writes for them are refused.
    pub async fn release_units(&self, host: &str, ids: &[Uuid]) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE work_units SET status = 'offered', lease_expires_at = clock_timestamp() \
             WHERE id = ANY($2) AND claimed_by = $1 AND status = 'claimed'",
        )
        .bind(host)
        .bind(ids)
        .execute(self.postgres()?)
        .await
        .map_err(StoreError::query)?;
        self.wake(Wake::Units).await;
        Ok(())
    }

    /// Writes a unit's step row (with its logs and HTTP requests) while `fence` still holds
    /// the unit and the run's owner still has the epoch it offered the unit at; `done`
    /// (whether a retry could help) also marks the unit done, in the same transaction, and
    /// wakes its owner. False when the write was refused: another host took the unit, it
    /// was cancelled and withdrawn, or the run changed owner.
    pub async fn write_unit_row(
        &self,
        fence: &UnitFence,
        row: &StepRecord,
        details: StepDetails,
        done: Option<bool>,
    ) -> Result<bool, StoreError> {
        let pool = self.postgres()?;
        let mut tx = pool.begin().await.map_err(StoreError::query)?;
        let held = sqlx::query(
            "UPDATE work_units SET status = CASE WHEN $4 THEN 'done' ELSE status END, row_id = $5, retryable = $6 \
             WHERE id = $1 AND claimed_by = $2 AND claim_epoch = $3 AND status = 'claimed'",
        )
        .bind(fence.id)
        .bind(&fence.host_id)
        .bind(fence.claim_epoch)
        .bind(done.is_some())
        .bind(row.id)
        .bind(done)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::query)?;
        if held.rows_affected() == 0 {
            return Ok(false);
        }
        if fence.close_stale {
            sqlx::query(
                "UPDATE step_executions SET status = 'cancelled', finished_at = clock_timestamp(), \
                 error = 'interrupted: its host (' || COALESCE(host_id, 'unknown') || ') stopped or died before it finished' \
                 WHERE run_id = $1 AND step_key = $2 AND status = 'running' AND id <> $3",
            )
            .bind(fence.run_id)
            .bind(&fence.step_key)
            .bind(row.id)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::query)?;
        }
        let batch = Batch { steps: vec![(row.clone(), fence.run_epoch)], details, ..Batch::default() };
        let written = postgres::write_statements(&mut tx, &batch, true).await?;
        if !written.refused.is_empty() {
            return Ok(false);
        }
        tx.commit().await.map_err(StoreError::query)?;
        if done.is_some() {
            self.wake(Wake::UnitDone(fence.id)).await;
        }
        Ok(true)
    }

    /// Takes back a unit nobody runs (offered, or its taker's lease expired); false when a
    /// host is running it or it is done.
    pub async fn withdraw_unit(&self, id: Uuid) -> Result<bool, StoreError> {
        let sql = format!("DELETE FROM work_units WHERE id = $1 AND {UNTAKEN}");
        let done = sqlx::query(&sql).bind(id).execute(self.postgres()?).await.map_err(StoreError::query)?;
        Ok(done.rows_affected() > 0)
    }

    /// Cancels a unit: withdrawn if nobody runs it (true), otherwise its taker is asked to
    /// interrupt it (and will mark it done).
    pub async fn cancel_unit(&self, id: Uuid) -> Result<bool, StoreError> {
        if self.withdraw_unit(id).await? {
            return Ok(true);
        }
        let requested = sqlx::query(
            "UPDATE work_units SET cancel_requested = true WHERE id = $1 AND status = 'claimed' AND NOT cancel_requested",
        )
        .bind(id)
        .execute(self.postgres()?)
        .await
        .map_err(StoreError::query)?;
        if requested.rows_affected() > 0 {
            self.wake(Wake::UnitCancel(id)).await;
        }
        Ok(false)
    }

    /// The outcome of a unit that is done — its step row and whether a retry could help —
    /// removing the unit; `None` while it is not done.
    pub async fn take_unit_result(&self, id: Uuid) -> Result<Option<(StepRecord, bool)>, StoreError> {
        let taken: Option<(Uuid, Option<bool>)> =
            sqlx::query_as("DELETE FROM work_units WHERE id = $1 AND status = 'done' RETURNING row_id, retryable")
                .bind(id)
                .fetch_optional(self.postgres()?)
                .await
                .map_err(StoreError::query)?;
        let Some((row_id, retryable)) = taken else { return Ok(None) };
        let row = self
            .step(row_id)
            .await?
            .ok_or_else(|| StoreError::Internal(format!("unit {id} is done but its row {row_id} is missing")))?;
        Ok(Some((row, retryable.unwrap_or(false))))
    }

    /// Which of `ids` are done (the poll behind the wake-ups).
    pub async fn done_units(&self, ids: &[Uuid]) -> Result<Vec<Uuid>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        sqlx::query_scalar("SELECT id FROM work_units WHERE id = ANY($1) AND status = 'done'")
            .bind(ids)
            .fetch_all(self.postgres()?)
            .await
            .map_err(StoreError::query)
    }

    /// Drops the units an earlier owner of run `run_id` offered (before `epoch`), whatever
    /// their state: a taker still running one is told to stop (its row would be refused
    /// anyway, the run's epoch having moved on). A new owner calls it when it claims the run.
    pub async fn drop_units_of_run(&self, run_id: Uuid, epoch: i64) -> Result<(), StoreError> {
        let Pool::Postgres(pool) = &self.pool else { return Ok(()) };
        let dropped: Vec<(Uuid, String)> =
            sqlx::query_as("DELETE FROM work_units WHERE run_id = $1 AND run_epoch < $2 RETURNING id, status")
                .bind(run_id)
                .bind(epoch)
                .fetch_all(pool)
                .await
                .map_err(StoreError::query)?;
        for (id, _) in dropped.iter().filter(|(_, status)| status == "claimed") {
            self.wake(Wake::UnitCancel(*id)).await;
        }
        Ok(())
    }
}
