//! A host's executor: accepting runs, claiming runs no host is executing, executing at
//! most `max_active_runs` at once, renewing leases, noticing cancellations, and draining on
//! shutdown.
//!
//! A run is accepted by committing its row before anyone is told its id. A host with room
//! accepts it as its own (owner, epoch 1, a lease) and starts it at once; a host without
//! room leaves it `pending`, and whichever host has room claims it. A host that stops
//! gracefully interrupts what is still running after the grace period and releases it; a
//! host that dies leaves its leases to expire, and another host (or the same one,
//! restarted) claims the runs and resumes them without re-running what succeeded.

use super::HostConfig;
use super::exchange::Exchange;
use crate::engine::{Engine, RunControl, RunPlan};
use crate::registry::Registry;
use crate::store::{
    Fence, HostRecord, HostRole, RunRecord, RunStatus, StepRecord, Store, StoreError, Wake, WakeListener,
};
use chrono::Utc;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

/// Most runs claimed in one statement.
const CLAIM_BATCH: usize = 64;

/// How often `wait` reads a run executed elsewhere.
const WAIT_POLL: Duration = Duration::from_millis(50);

pub struct Runner {
    engine: Engine,
    registry: Arc<Registry>,
    config: HostConfig,
    /// Interrupts every run in flight (the end of a shutdown's grace period).
    shutdown: CancellationToken,
    /// No more claims: the host is draining.
    draining: CancellationToken,
    /// Heartbeats stop: every run has ended here.
    stopped: CancellationToken,
    slots: Mutex<Slots>,
    tasks: TaskTracker,
    wake: Notify,
    /// Whether claimable runs may be waiting (this host left one `pending`, or its last
    /// claim filled its room): only then does a run ending here look for more at once;
    /// otherwise notifications and the poll find them.
    backlog: AtomicBool,
    /// Units of fan-outs shared with other hosts (Postgres only).
    exchange: Option<Arc<Exchange>>,
    started_at: chrono::DateTime<Utc>,
    /// On SQLite, the lock that keeps other hosts off the file while this one runs.
    single_host: Mutex<Option<std::fs::File>>,
}

/// The runs this host executes, and the slots reserved by claims in flight.
#[derive(Default)]
struct Slots {
    active: HashMap<Uuid, Active>,
    claiming: usize,
}

struct Active {
    control: RunControl,
    /// The epoch this host holds the run at; `None` while its row is being written.
    epoch: Option<i64>,
}

/// How a run is started.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartOptions<'a> {
    /// A key already used for this workflow returns that run instead of starting another.
    pub idempotency_key: Option<&'a str>,
    /// The W3C `traceparent` of the caller: the run's trace is a child of it.
    pub trace_parent: Option<&'a str>,
}

/// A started (or found) run.
pub struct Started {
    pub run_id: Uuid,
    /// False when an `Idempotency-Key` named a run that already existed.
    pub created: bool,
    /// The task executing it here, when this host took it.
    pub task: Option<JoinHandle<Result<RunRecord, StoreError>>>,
}

impl Runner {
    pub fn new(engine: Engine, registry: Arc<Registry>, config: HostConfig) -> Arc<Self> {
        let mut engine =
            engine.with_host_id(&config.host_id).with_limits(config.run_limits).with_secrets(config.secrets.clone());
        // `braid run` keeps its run to itself: it takes no units, so it offers none either
        // (it could not take back a unit others were too busy to take).
        let exchange = (registry.store().shares_work() && config.role != HostRole::Run).then(|| {
            let max_queue_wait = engine.sandbox().config().max_queue_wait;
            Exchange::new(registry.store().clone(), &config.host_id, config.lease, config.poll, max_queue_wait)
        });
        if let Some(exchange) = &exchange {
            engine = engine.with_offload(exchange.clone());
        }
        Arc::new(Runner {
            engine,
            registry,
            config,
            shutdown: CancellationToken::new(),
            draining: CancellationToken::new(),
            stopped: CancellationToken::new(),
            slots: Mutex::new(Slots::default()),
            tasks: TaskTracker::new(),
            wake: Notify::new(),
            backlog: AtomicBool::new(false),
            exchange,
            started_at: Utc::now(),
            single_host: Mutex::new(None),
        })
    }

    fn store(&self) -> &Store {
        self.registry.store()
    }

    /// This host's settings.
    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// Registers the host (its row in `hosts`) and starts its background work: heartbeats
    /// (the host's row, its leases on runs and units) and the wake-up loop that notices
    /// cancel requests and — for `serve` and `worker` hosts — claims runs no host is
    /// executing and takes other hosts' units. Call it once the host is fully up
    /// (listening, migrated): it claims nothing before.
    pub async fn start_host(self: &Arc<Self>) -> Result<(), StoreError> {
        *self.single_host.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = self.store().lock_single_host()?;
        self.beat().await?;
        // Told before this host listens, so that it does not answer its own news with a
        // second beat while its first run starts.
        self.store().wake(Wake::Hosts).await;
        // Listening before this returns: a cancel asked right after start is heard, and the
        // first run's first commits do not share the database with the listener's set-up.
        let listener = match self.store().listen().await {
            Ok(listener) => listener,
            Err(err) => {
                tracing::warn!("cannot listen for wake-ups (polling instead): {err}");
                None
            }
        };
        // The writers have their connections and statements ready (they warm up when the
        // store opens): the first run does not wait for that.
        self.store().recorder().flush().await?;
        tokio::spawn(self.clone().heartbeat());
        tokio::spawn(self.clone().wake_loop(listener, self.config.role != HostRole::Run));
        Ok(())
    }

    /// Writes this host's row and learns how many other hosts are live.
    async fn beat(&self) -> Result<(), StoreError> {
        let sandbox = self.engine.sandbox();
        let record = HostRecord {
            host_id: self.config.host_id.clone(),
            role: self.config.role,
            started_at: self.started_at,
            heartbeat_at: Utc::now(),
            max_instances: i32::try_from(sandbox.config().max_instances).unwrap_or(i32::MAX),
            slots_in_use: i32::try_from(sandbox.live_instances()).unwrap_or(i32::MAX),
            runs_owned: i32::try_from(self.active()).unwrap_or(i32::MAX),
            units_taken: self.exchange.as_ref().map_or(0, |e| i64::try_from(e.taken_count()).unwrap_or(i64::MAX)),
            units_offered: self.exchange.as_ref().map_or(0, |e| i64::try_from(e.offered_count()).unwrap_or(i64::MAX)),
        };
        let others = self.store().beat_host(&record, self.config.lease).await?;
        if let Some(exchange) = &self.exchange {
            exchange.set_others(others);
        }
        Ok(())
    }

    /// Accepts a run of `plan` on `input`, as `options` say.
    pub async fn start(
        self: &Arc<Self>,
        plan: Arc<RunPlan>,
        input: crate::json::JsonDoc,
        options: StartOptions<'_>,
    ) -> Result<Started, StoreError> {
        let mut run = plan.new_run(input);
        if let Some(key) = options.idempotency_key {
            let (run_id, created) = self.store().insert_run_once(&run, key).await?;
            if created && let Some(parent) = options.trace_parent {
                self.store().insert_trace_parent(run_id, parent).await?;
            }
            let task = if created { self.try_claim(run_id).await? } else { None };
            return Ok(Started { run_id, created, task });
        }
        if let Some(parent) = options.trace_parent {
            // Before the run exists for anyone: its trace is exported when it ends.
            self.store().insert_trace_parent(run.id, parent).await?;
        }
        let Some(control) = self.reserve(run.id) else {
            // No room here: it waits in the database for a host with room.
            self.store().recorder().run(run.clone(), None, None).committed().await?;
            self.backlog.store(true, Ordering::Relaxed);
            self.store().wake(Wake::Run).await;
            return Ok(Started { run_id: run.id, created: true, task: None });
        };
        // Accepted as this host's, already running: one commit makes it durable and owned.
        run.owner_host_id = Some(self.config.host_id.clone());
        run.epoch = 1;
        run.status = RunStatus::Running;
        run.started_at = Some(Utc::now());
        if let Err(err) = self.store().recorder().run(run.clone(), Some(self.config.lease), None).committed().await {
            self.release(run.id);
            return Err(err);
        }
        self.held(run.id, run.epoch);
        let run_id = run.id;
        let task = self.spawn(run, control, Some(plan));
        Ok(Started { run_id, created: true, task: Some(task) })
    }

    /// Claims run `id` here if this host has room and no host is executing it.
    async fn try_claim(
        self: &Arc<Self>,
        id: Uuid,
    ) -> Result<Option<JoinHandle<Result<RunRecord, StoreError>>>, StoreError> {
        let Some(control) = self.reserve(id) else {
            self.backlog.store(true, Ordering::Relaxed);
            self.store().wake(Wake::Run).await;
            return Ok(None);
        };
        match self.store().claim_run(id, &self.config.host_id, self.config.lease).await {
            Ok(Some(run)) => {
                self.held(id, run.epoch);
                Ok(Some(self.spawn(run, control, None)))
            }
            Ok(None) => {
                self.release(id);
                Ok(None)
            }
            Err(err) => {
                self.release(id);
                Err(err)
            }
        }
    }

    /// Claims run `id` (which no host may be executing) and executes it here to its end:
    /// `braid runs resume` and `braid runs redrive`. `None` when another host holds it.
    pub async fn drive(self: &Arc<Self>, id: Uuid) -> Result<Option<RunRecord>, StoreError> {
        match self.try_claim(id).await? {
            Some(task) => {
                task.await.map_err(|err| StoreError::Internal(format!("the run's task failed: {err}")))?.map(Some)
            }
            None => Ok(None),
        }
    }

    /// Waits for run `id` to end, wherever it runs: through `task` when this host executes
    /// it, by reading its row otherwise.
    pub async fn wait(
        &self,
        id: Uuid,
        task: Option<JoinHandle<Result<RunRecord, StoreError>>>,
    ) -> Result<RunRecord, StoreError> {
        if let Some(task) = task {
            return task.await.map_err(|err| StoreError::Internal(format!("the run's task failed: {err}")))?;
        }
        loop {
            match self.store().get_run(id).await? {
                Some(run) if run.status.is_terminal() => return Ok(run),
                Some(_) => tokio::time::sleep(WAIT_POLL).await,
                None => return Err(StoreError::Internal(format!("run {id} disappeared"))),
            }
        }
    }

    /// Executes a run this host holds: `plan` when it was just accepted here, otherwise
    /// the plan it was pinned to, reusing what earlier drives recorded.
    fn spawn(
        self: &Arc<Self>,
        run: RunRecord,
        control: RunControl,
        plan: Option<Arc<RunPlan>>,
    ) -> JoinHandle<Result<RunRecord, StoreError>> {
        let runner = self.clone();
        self.tasks.spawn(async move {
            let (id, epoch) = (run.id, run.epoch);
            let result = runner.execute(run, &control, plan).await;
            runner.finished(id, epoch);
            if runner.backlog.load(Ordering::Relaxed) {
                runner.wake.notify_one();
            }
            if let (Ok(run), Some(telemetry)) = (&result, &runner.config.telemetry)
                && run.status.is_terminal()
            {
                runner.export_trace(run.clone(), telemetry.clone()).await;
            }
            match &result {
                Err(StoreError::LeaseLost(_)) => {
                    tracing::warn!(run_id = %id, "another host took the run over; dropped it here");
                }
                Err(err) => tracing::error!(run_id = %id, "the run could not be recorded: {err}"),
                Ok(_) => {}
            }
            result
        })
    }

    async fn execute(
        &self,
        run: RunRecord,
        control: &RunControl,
        plan: Option<Arc<RunPlan>>,
    ) -> Result<RunRecord, StoreError> {
        let engine = &self.engine;
        let Some(plan) = plan else {
            // Units an earlier owner offered are its no more: what they would write is
            // refused (the epoch moved on), and the resume offers its own.
            self.store().drop_units_of_run(run.id, run.epoch).await?;
            let previous = match self.store().run_steps(run.id).await {
                Ok(previous) => previous,
                // A row that cannot be read: resuming could run a finished step again.
                Err(StoreError::Corrupt(err)) => return self.fail_unresumable(run, err).await,
                Err(err) => return Err(err),
            };
            if !self.store().cancel_requested(&[run.id]).await?.is_empty() {
                // Asked to stop while no host ran it: it ends here, every open row closed.
                return crate::engine::close_cancelled(self.store().recorder(), run, &previous).await;
            }
            return match self.registry.plan_for_run(&run).await {
                Ok(plan) => {
                    tracing::info!(run_id = %run.id, epoch = run.epoch, "executing a claimed run");
                    engine.execute(plan, run, control, &previous).await
                }
                // Nothing to run it with: close it rather than claim it forever.
                Err(err) => self.fail_unresumable(run, err.to_string()).await,
            };
        };
        engine.execute(plan, run, control, &[] as &[StepRecord]).await
    }

    /// Sends the finished run's trace, built from its records (off the async threads).
    async fn export_trace(&self, run: RunRecord, telemetry: Arc<crate::telemetry::Telemetry>) {
        let read = async {
            let steps = self.store().run_step_states(run.id).await?;
            let logs = self.store().details_of(&steps).await?.logs;
            let parent = self.store().trace_parent(run.id).await?;
            Ok::<_, StoreError>((steps, logs, parent))
        };
        match read.await {
            Ok((steps, logs, parent)) => {
                let exported = tokio::task::spawn_blocking(move || {
                    telemetry.export_run(&run, &steps, &logs, parent.as_deref());
                });
                if let Err(err) = exported.await {
                    tracing::warn!("exporting a run's trace failed: {err}");
                }
            }
            Err(err) => tracing::warn!(run_id = %run.id, "could not read the run to export its trace: {err}"),
        }
    }

    /// Ends a claimed run that cannot be resumed, saying why, rather than claim it forever.
    async fn fail_unresumable(&self, run: RunRecord, why: String) -> Result<RunRecord, StoreError> {
        tracing::error!(run_id = %run.id, "run {} could not be resumed: {why}", run.id);
        let mut failed = run;
        failed.status = RunStatus::Failed;
        failed.error = Some(format!("could not be resumed: {why}"));
        failed.finished_at = Some(Utc::now());
        failed.owner_host_id = None;
        let fence = Fence::new(failed.epoch);
        self.store().recorder().run(failed.clone(), None, Some(&fence)).committed().await?;
        Ok(failed)
    }

    /// Cancels a run in flight on this host; false when it is not running here.
    pub fn cancel(&self, id: Uuid) -> bool {
        match self.lock().active.get(&id) {
            Some(active) => {
                active.control.cancel();
                true
            }
            None => false,
        }
    }

    /// Looks for claimable runs now (a run was redriven here).
    pub fn wake(&self) {
        self.backlog.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Runs executing here right now.
    pub fn active(&self) -> usize {
        self.lock().active.len()
    }

    /// Stops claiming, waits up to `grace` for runs in flight to finish, then interrupts
    /// the rest (released for any host to resume) and waits for their records.
    pub async fn shutdown(&self, grace: Duration) {
        self.draining.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait()).await.is_err() {
            tracing::warn!("grace period over: interrupting {} runs", self.active());
            if let Some(exchange) = &self.exchange {
                // Given back first, so that their interrupted rows are refused and other
                // hosts run them again.
                exchange.release().await;
                exchange.interrupt_all();
            }
            self.shutdown.cancel();
            self.tasks.wait().await;
        }
        self.stopped.cancel();
        if let Err(err) = self.store().remove_host(&self.config.host_id).await {
            tracing::warn!("could not remove this host's row (it expires with its heartbeat): {err}");
        }
        self.store().wake(Wake::Hosts).await;
    }

    /// Reserves a slot for run `id`, if this host has room.
    fn reserve(&self, id: Uuid) -> Option<RunControl> {
        let mut slots = self.lock();
        if slots.active.len() + slots.claiming >= self.config.max_active_runs {
            return None;
        }
        let control = RunControl::under(&self.shutdown);
        slots.active.insert(id, Active { control: control.clone(), epoch: None });
        Some(control)
    }

    /// Records that this host holds run `id` at `epoch` (its heartbeat renews it from now).
    fn held(&self, id: Uuid, epoch: i64) {
        if let Some(active) = self.lock().active.get_mut(&id) {
            active.epoch = Some(epoch);
        }
    }

    fn release(&self, id: Uuid) {
        self.lock().active.remove(&id);
    }

    /// Frees the slot of the drive of run `id` at `epoch` — unless this host has claimed
    /// the run again since (the slot is then the new drive's).
    fn finished(&self, id: Uuid, epoch: i64) {
        let mut slots = self.lock();
        if slots.active.get(&id).is_some_and(|active| active.epoch.is_none_or(|held| held == epoch)) {
            slots.active.remove(&id);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Renews this host's row and leases every third of the lease. A run the database no
    /// longer shows as this host's (its epoch moved on) is dropped at once, and so is a
    /// unit it no longer holds; when the database cannot be reached for longer than a
    /// lease, every run is dropped — other hosts will have claimed them by then.
    async fn heartbeat(self: Arc<Self>) {
        let interval = self.config.lease / 3;
        let mut last_renewed = Instant::now();
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = self.stopped.cancelled() => break,
            }
            if let Err(err) = self.beat().await {
                tracing::warn!("could not renew this host's row (retrying): {err}");
            }
            if let Some(exchange) = &self.exchange
                && let Err(err) = exchange.renew().await
            {
                tracing::warn!("could not renew the leases on units (retrying): {err}");
            }
            let held: Vec<(Uuid, i64)> =
                self.lock().active.iter().filter_map(|(id, active)| Some((*id, active.epoch?))).collect();
            if held.is_empty() {
                last_renewed = Instant::now();
                continue;
            }
            let ids: Vec<Uuid> = held.iter().map(|(id, _)| *id).collect();
            match self.store().renew_leases(&self.config.host_id, &ids, self.config.lease).await {
                Ok(renewed) => {
                    last_renewed = Instant::now();
                    let renewed: HashSet<(Uuid, i64)> = renewed.into_iter().collect();
                    for lost in held.iter().filter(|held| !renewed.contains(held)) {
                        tracing::warn!(run_id = %lost.0, "lease lost: another host took the run over; stopping it here");
                        self.lose(lost.0);
                    }
                }
                Err(err) if last_renewed.elapsed() >= self.config.lease => {
                    tracing::error!(
                        "cannot reach the database to renew leases for {} ms, longer than the lease ({} ms): \
                         stopping {} runs here so that other hosts can resume them ({err})",
                        last_renewed.elapsed().as_millis(),
                        self.config.lease.as_millis(),
                        ids.len()
                    );
                    for id in ids {
                        self.lose(id);
                    }
                }
                Err(err) => tracing::warn!("could not renew leases (retrying): {err}"),
            }
        }
    }

    fn lose(&self, id: Uuid) {
        if let Some(active) = self.lock().active.get(&id) {
            active.control.lose();
        }
    }

    /// Wakes on notifications (Postgres), local events (a run ended here) and a poll
    /// interval; checks the runs in flight for cancel requests and claims what there is
    /// room for. It runs until the host has stopped, not only until it drains: a run
    /// finishing during the drain may wait for units that other hosts ran, and learns that
    /// they are done from here.
    async fn wake_loop(self: Arc<Self>, mut listener: Option<WakeListener>, claim: bool) {
        // A host that claims polls at once (runs left by a host that died wait for it); one
        // that only runs its own run has nothing to poll for before that run is under way.
        let first_poll = tokio::time::Instant::now() + if claim { Duration::ZERO } else { self.config.poll };
        let mut poll = tokio::time::interval_at(first_poll, self.config.poll);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut polled = false;
            tokio::select! {
                () = self.stopped.cancelled() => break,
                () = self.wake.notified() => {}
                _ = poll.tick() => polled = true,
                message = next_wake(&mut listener) => match message {
                    Ok(Some(Wake::Cancel(id))) => {
                        self.cancel(id);
                    }
                    Ok(Some(Wake::UnitDone(id))) => {
                        if let Some(exchange) = &self.exchange {
                            exchange.done(id);
                        }
                        // Its taker has a slot free now.
                        if claim {
                            self.take_units().await;
                        }
                        continue;
                    }
                    Ok(Some(Wake::UnitCancel(id))) => {
                        if let Some(exchange) = &self.exchange {
                            exchange.cancel_taken(id);
                        }
                        continue;
                    }
                    Ok(Some(Wake::Units)) => {
                        if claim {
                            self.take_units().await;
                        }
                        continue;
                    }
                    Ok(Some(Wake::Hosts)) => {
                        if let Err(err) = self.beat().await {
                            tracing::warn!("could not renew this host's row: {err}");
                        }
                        continue;
                    }
                    Ok(Some(Wake::Run) | None) => {}
                    Err(err) => {
                        tracing::warn!("lost the wake-up connection (reconnecting): {err}");
                        tokio::time::sleep(self.config.poll).await;
                    }
                },
            }
            if polled {
                self.check_cancel_requests().await;
                if let Some(exchange) = &self.exchange {
                    exchange.poll_done().await;
                }
            }
            if claim && !self.draining.is_cancelled() {
                self.claim_what_fits().await;
                if polled {
                    self.take_units().await;
                }
            }
        }
    }

    /// Takes other hosts' units while this host has free instance slots.
    async fn take_units(&self) {
        if let Some(exchange) = &self.exchange
            && !self.draining.is_cancelled()
        {
            exchange.take(&self.engine, &self.registry, &self.tasks).await;
        }
    }

    /// One query for every run in flight here.
    async fn check_cancel_requests(&self) {
        let ids: Vec<Uuid> = self.lock().active.keys().copied().collect();
        match self.store().cancel_requested(&ids).await {
            Ok(requested) => {
                for id in requested {
                    self.cancel(id);
                }
            }
            Err(err) => tracing::warn!("could not check for cancel requests: {err}"),
        }
    }

    /// Claims runs no host is executing while this host has room, in batches.
    async fn claim_what_fits(self: &Arc<Self>) {
        loop {
            let room = {
                let mut slots = self.lock();
                let room = self.config.max_active_runs.saturating_sub(slots.active.len() + slots.claiming);
                let room = room.min(CLAIM_BATCH);
                slots.claiming += room;
                room
            };
            if room == 0 {
                return;
            }
            let claimed = self.store().claim_runs(&self.config.host_id, self.config.lease, room).await;
            let claimed = match claimed {
                Ok(claimed) => claimed,
                Err(err) => {
                    self.lock().claiming -= room;
                    tracing::warn!("could not claim runs: {err}");
                    return;
                }
            };
            let count = claimed.len();
            for run in claimed {
                let control = RunControl::under(&self.shutdown);
                {
                    let mut slots = self.lock();
                    slots.claiming -= 1;
                    slots.active.insert(run.id, Active { control: control.clone(), epoch: Some(run.epoch) });
                }
                drop(self.spawn(run, control, None));
            }
            self.lock().claiming -= room - count;
            self.backlog.store(count == room, Ordering::Relaxed);
            if count < room {
                return;
            }
        }
    }
}

async fn next_wake(listener: &mut Option<WakeListener>) -> Result<Option<Wake>, StoreError> {
    match listener {
        Some(listener) => listener.recv().await,
        None => std::future::pending().await,
    }
}
