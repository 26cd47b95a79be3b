//! Spreading the units of a fan-out over hosts. The owner's side ([`Offload`]): a unit
//! this host has no slot for is offered in the database and waited for — woken by
//! `LISTEN/NOTIFY` when its taker marks it done (a poll of the units waited for covers lost
//! wake-ups), withdrawn if it is cancelled or nobody takes it within the max queue wait.
//! The taker's side ([`Exchange::take`]): a host with free instance slots claims offered
//! units in batches, executes each in its own sandbox (the agent loaded by digest) and
//! writes its row under its lease on the unit; a cancel request interrupts it at once.
//!
//! Bounds: the owner keeps each block's `max_parallelism` by counting its offered units
//! with the ones it runs; each host's pool bounds what it takes.

use crate::engine::{Engine, Offload, Offloaded, Unit};
use crate::metrics::METRICS;
use crate::registry::Registry;
use crate::sandbox::{Execution, Outcome, Slot};
use crate::store::{ClaimedUnit, OfferedUnit, StepStatus, Store, StoreError, UnitFence};
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

/// Most units claimed in one statement.
const CLAIM_BATCH: usize = 64;

/// A taken unit still running after this long gets a "running" row.
const RUNNING_ROW_AFTER: Duration = Duration::from_millis(50);

/// One host's side of the exchange: what it offered and waits for, what it took.
pub struct Exchange {
    store: Store,
    host_id: String,
    lease: Duration,
    /// How often an owner whose unit was cancelled (or waited too long) tries again to
    /// withdraw it, should its taker have died.
    poll: Duration,
    max_queue_wait: Duration,
    /// Other live hosts, as of the last heartbeat or `hosts` wake-up.
    others: AtomicUsize,
    /// Units offered here and not yet done, each with what wakes its waiter.
    waiting: Mutex<HashMap<Uuid, Arc<Notify>>>,
    /// Units taken here and running, with what interrupts each.
    taken: Mutex<HashMap<Uuid, CancellationToken>>,
    offered_count: AtomicU64,
    taken_count: AtomicU64,
}

impl Exchange {
    pub fn new(store: Store, host_id: &str, lease: Duration, poll: Duration, max_queue_wait: Duration) -> Arc<Self> {
        Arc::new(Exchange {
            store,
            host_id: host_id.to_owned(),
            lease,
            poll,
            max_queue_wait,
            others: AtomicUsize::new(0),
            waiting: Mutex::default(),
            taken: Mutex::default(),
            offered_count: AtomicU64::new(0),
            taken_count: AtomicU64::new(0),
        })
    }

    /// Records how many other hosts are live.
    pub fn set_others(&self, others: usize) {
        self.others.store(others, Ordering::Relaxed);
    }

    /// Units of this host's runs offered to other hosts since it started.
    pub fn offered_count(&self) -> u64 {
        self.offered_count.load(Ordering::Relaxed)
    }

    /// Units of other hosts' runs executed here since it started.
    pub fn taken_count(&self) -> u64 {
        self.taken_count.load(Ordering::Relaxed)
    }

    /// A unit offered here is done (its wake-up arrived).
    pub fn done(&self, id: Uuid) {
        if let Some(waiter) = lock(&self.waiting).get(&id) {
            waiter.notify_one();
        }
    }

    /// Someone asked to cancel unit `id`: interrupted if it runs here.
    pub fn cancel_taken(&self, id: Uuid) {
        if let Some(cancel) = lock(&self.taken).get(&id) {
            cancel.cancel();
        }
    }

    /// Asks the database which units waited for here are done (wake-ups can be lost).
    pub async fn poll_done(&self) {
        let ids: Vec<Uuid> = lock(&self.waiting).keys().copied().collect();
        match self.store.done_units(&ids).await {
            Ok(done) => done.into_iter().for_each(|id| self.done(id)),
            Err(err) => tracing::warn!("could not poll offered units: {err}"),
        }
    }

    /// Renews the leases on the units running here; interrupts those this host no longer
    /// holds or that someone asked to cancel.
    pub async fn renew(&self) -> Result<(), StoreError> {
        let ids: Vec<Uuid> = lock(&self.taken).keys().copied().collect();
        if ids.is_empty() {
            return Ok(());
        }
        let held: std::collections::HashSet<Uuid> =
            self.store.renew_units(&self.host_id, &ids, self.lease).await?.into_iter().collect();
        for id in ids.into_iter().filter(|id| !held.contains(id)) {
            self.cancel_taken(id);
        }
        Ok(())
    }

    /// Lets other hosts take the units running here at once (this host is stopping).
    pub async fn release(&self) {
        let ids: Vec<Uuid> = lock(&self.taken).keys().copied().collect();
        if ids.is_empty() {
            return;
        }
        if let Err(err) = self.store.release_units(&self.host_id, &ids).await {
            tracing::warn!(
                "could not release {} units (they are taken again once their lease expires): {err}",
                ids.len()
            );
        }
    }

    /// Interrupts every unit running here (after [`Exchange::release`]: their rows are
    /// refused).
    pub fn interrupt_all(&self) {
        lock(&self.taken).values().for_each(CancellationToken::cancel);
    }

    /// Claims what fits in this host's free instance slots, in batches, and executes each
    /// unit in `tasks`. `registry` loads the agents; `engine` runs them.
    pub async fn take(self: &Arc<Self>, engine: &Engine, registry: &Arc<Registry>, tasks: &TaskTracker) {
        loop {
            let sandbox = engine.sandbox();
            let mut slots: Vec<Slot> = std::iter::from_fn(|| sandbox.try_slot()).take(CLAIM_BATCH).collect();
            if slots.is_empty() {
                return;
            }
            let wanted = slots.len();
            let claimed = match self.store.claim_units(&self.host_id, self.lease, wanted).await {
                Ok(claimed) => claimed,
                Err(err) => {
                    tracing::warn!("could not claim units: {err}");
                    return;
                }
            };
            let count = claimed.len();
            for unit in claimed {
                let Some(slot) = slots.pop() else { break };
                let cancel = CancellationToken::new();
                lock(&self.taken).insert(unit.id, cancel.clone());
                let (exchange, engine, registry) = (self.clone(), engine.clone(), registry.clone());
                tasks.spawn(async move { exchange.execute(unit, slot, cancel, &engine, &registry).await });
            }
            if count < wanted {
                return;
            }
        }
    }

    /// Executes a claimed unit and writes its row under the claim.
    async fn execute(
        &self,
        claimed: ClaimedUnit,
        slot: Slot,
        cancel: CancellationToken,
        engine: &Engine,
        registry: &Registry,
    ) {
        let id = claimed.id;
        let result = self.execute_claimed(claimed, slot, cancel, engine, registry).await;
        lock(&self.taken).remove(&id);
        match result {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(unit = %id, "a unit's row was refused: it was taken over or its run changed owner")
            }
            Err(err) => {
                tracing::warn!(unit = %id, "could not record a unit (it runs again once its lease expires): {err}")
            }
        }
    }

    async fn execute_claimed(
        &self,
        claimed: ClaimedUnit,
        slot: Slot,
        cancel: CancellationToken,
        engine: &Engine,
        registry: &Registry,
    ) -> Result<bool, StoreError> {
        let unit: Unit = match serde_json::from_value(claimed.spec.0.clone()) {
            Ok(unit) => unit,
            Err(err) => {
                // Written by another version of Braid, say: the unit fails, saying why.
                return self.fail(&claimed, engine, None, format!("this host cannot read the unit: {err}")).await;
            }
        };
        let fence = self.fence(&claimed);
        let row = engine.unit_row(&unit, claimed.attempt);
        let digest = unit.row.agent_digest.clone().unwrap_or_default();
        let name = unit.row.agent_name.clone().unwrap_or_default();
        let needs = [registry.sandbox().metering(unit.fuel)].into();
        let agent = match registry.agent(&name, unit.agent_version.as_deref(), &digest, &needs).await {
            Ok(agent) => agent,
            Err(err) => {
                return self.fail(&claimed, engine, Some(&unit), format!("could not load agent {name}: {err}")).await;
            }
        };
        let running_row = row.clone();
        let run = engine.execute_unit(&unit, &agent, slot, row, cancel);
        tokio::pin!(run);
        let ran = tokio::select! {
            ran = &mut run => ran,
            () = tokio::time::sleep(RUNNING_ROW_AFTER) => {
                if !self.store.write_unit_row(&fence, &running_row, Default::default(), None).await? {
                    // Taken over already: stop at once.
                    return Ok(false);
                }
                run.await
            }
        };
        let written = self.store.write_unit_row(&fence, &ran.row, ran.details, Some(ran.retryable)).await?;
        if written && claimed.owner_host_id != self.host_id {
            self.taken_count.fetch_add(1, Ordering::Relaxed);
            METRICS.units.with_label_values(&["taken"]).inc();
        }
        Ok(written)
    }

    /// What this host's writes for `claimed` carry.
    fn fence(&self, claimed: &ClaimedUnit) -> UnitFence {
        UnitFence {
            id: claimed.id,
            host_id: self.host_id.clone(),
            claim_epoch: claimed.claim_epoch,
            run_id: claimed.run_id,
            run_epoch: claimed.run_epoch,
            step_key: claimed.step_key.clone(),
            close_stale: claimed.previous_host.is_some(),
        }
    }

    /// Ends a unit this host cannot run with a failed row saying why.
    async fn fail(
        &self,
        claimed: &ClaimedUnit,
        engine: &Engine,
        unit: Option<&Unit>,
        why: String,
    ) -> Result<bool, StoreError> {
        tracing::error!(unit = %claimed.id, "{why}");
        let Some(unit) = unit else {
            // Not even a row to write: give it back for a host that can read it.
            return Ok(false);
        };
        let mut row = engine.unit_row(unit, claimed.attempt);
        row.status = StepStatus::Failed;
        row.error = Some(format!("on host {}: {why}", self.host_id));
        row.finished_at = Some(chrono::Utc::now());
        let fence = self.fence(claimed);
        self.store.write_unit_row(&fence, &row, Default::default(), Some(false)).await
    }

    async fn offer_and_wait(&self, unit: Unit, cancel: &CancellationToken) -> Result<Offloaded, StoreError> {
        let id = unit.id;
        let waiter = Arc::new(Notify::new());
        lock(&self.waiting).insert(id, waiter.clone());
        let _forget = scopeguard(|| {
            lock(&self.waiting).remove(&id);
        });
        let offered = OfferedUnit {
            id,
            run_id: unit.row.run_id,
            run_epoch: unit.run_epoch,
            owner_host_id: self.host_id.clone(),
            step_key: unit.row.step_key.clone().unwrap_or_default(),
            agent_digest: unit.row.agent_digest.clone().unwrap_or_default(),
            attempt: unit.row.attempt,
            spec: serde_json::to_value(&unit).map_err(|err| StoreError::Internal(format!("unit {id}: {err}")))?,
        };
        self.store.offer_unit(&offered).await?;
        self.offered_count.fetch_add(1, Ordering::Relaxed);
        METRICS.units.with_label_values(&["offered"]).inc();

        let offered_at = Instant::now();
        let queue_deadline = tokio::time::sleep(self.max_queue_wait);
        tokio::pin!(queue_deadline);
        // Set once the unit is to be withdrawn (cancelled, or waited too long), and why.
        let mut giving_up: Option<(Outcome, String)> = None;
        loop {
            tokio::select! {
                () = waiter.notified() => {
                    if let Some((row, retryable)) = self.store.take_unit_result(id).await? {
                        return Ok(Offloaded::Ran { row: Box::new(row), retryable });
                    }
                }
                () = cancel.cancelled(), if giving_up.is_none() => {
                    giving_up = Some((Outcome::Cancelled, "cancelled before any host took it".to_owned()));
                    if self.store.cancel_unit(id).await? {
                        return Ok(self.not_run(giving_up, offered_at));
                    }
                }
                () = &mut queue_deadline, if giving_up.is_none() => {
                    let why = format!("no host took it within {} ms (the host's max queue wait)", self.max_queue_wait.as_millis());
                    giving_up = Some((Outcome::Timeout, why));
                    if self.store.withdraw_unit(id).await? {
                        return Ok(self.not_run(giving_up, offered_at));
                    }
                }
                // Its taker may have died after it was asked to stop: once the lease has
                // expired nobody takes it again, so it is withdrawn here.
                () = tokio::time::sleep(self.poll), if giving_up.is_some() => {
                    if self.store.withdraw_unit(id).await? {
                        return Ok(self.not_run(giving_up, offered_at));
                    }
                }
            }
        }
    }

    fn not_run(&self, why: Option<(Outcome, String)>, offered_at: Instant) -> Offloaded {
        let (outcome, message) = why.unwrap_or((Outcome::Cancelled, "withdrawn".to_owned()));
        Offloaded::NotRun(Execution::refused(outcome, &message, offered_at.elapsed()))
    }
}

impl Offload for Exchange {
    fn may_offer(&self) -> bool {
        self.others.load(Ordering::Relaxed) > 0
    }

    fn run_elsewhere<'a>(
        &'a self,
        unit: Unit,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Offloaded, StoreError>> {
        Box::pin(self.offer_and_wait(unit, cancel))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `f` when dropped (the waiter's entry goes whichever way the wait ends).
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
