//! Runs in flight on this host: starting accepted runs, cancelling them, resuming the ones
//! a previous process accepted but did not finish, and draining on shutdown.
//!
//! A run is accepted by committing its `pending` row before anyone is told its id, so a
//! host that stops before finishing it finds it again at start-up. On shutdown, running
//! steps get a grace period; what is still running then is interrupted — its steps are
//! recorded `cancelled`, the run stays unfinished — and resumed by the next start, without
//! running again the steps that had succeeded.

use crate::engine::{Engine, RunControl, RunPlan};
use crate::registry::Registry;
use crate::store::{RunRecord, RunStatus, StoreError};
use chrono::Utc;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

/// How often a host checks for cancellations asked for from outside.
const CANCEL_POLL: Duration = Duration::from_millis(200);

pub struct Runner {
    engine: Engine,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
    active: Mutex<HashMap<Uuid, RunControl>>,
    tasks: TaskTracker,
}

/// A started run: its accepted row, and the task that finishes it.
pub struct Started {
    pub run: RunRecord,
    pub task: JoinHandle<Result<RunRecord, StoreError>>,
}

impl Runner {
    pub fn new(engine: Engine, registry: Arc<Registry>) -> Arc<Self> {
        Arc::new(Runner {
            engine,
            registry,
            shutdown: CancellationToken::new(),
            active: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
        })
    }

    /// Accepts a run of `plan` (its `pending` row committed) and starts it.
    pub async fn start(self: &Arc<Self>, plan: Arc<RunPlan>, input: Value) -> Result<Started, StoreError> {
        let run = plan.new_run(input);
        self.registry.store().recorder().run(run.clone()).committed().await?;
        let task = self.spawn(plan, run.clone(), Vec::new());
        Ok(Started { run, task })
    }

    fn spawn(
        self: &Arc<Self>,
        plan: Arc<RunPlan>,
        run: RunRecord,
        previous: Vec<crate::store::StepRecord>,
    ) -> JoinHandle<Result<RunRecord, StoreError>> {
        let control = RunControl::under(&self.shutdown);
        self.lock_active().insert(run.id, control.clone());
        let runner = self.clone();
        self.tasks.spawn(async move {
            let id = run.id;
            let result = runner.engine.execute(plan, run, &control, &previous).await;
            runner.lock_active().remove(&id);
            if let Err(err) = &result {
                tracing::error!(run_id = %id, "run could not be recorded: {err}");
            }
            result
        })
    }

    /// Polls for cancellations asked for from outside this process (`braid runs cancel`,
    /// another host's API) and cancels the runs in flight here; stops with the runner.
    pub fn watch_cancel_requests(self: &Arc<Self>) {
        let runner = Arc::downgrade(self);
        let store = self.registry.store().clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(CANCEL_POLL).await;
                let Some(runner) = runner.upgrade() else { break };
                let active: Vec<Uuid> = runner.lock_active().keys().copied().collect();
                match store.cancel_requested(&active).await {
                    Ok(requested) => requested.into_iter().for_each(|id| {
                        runner.cancel(id);
                    }),
                    Err(err) => tracing::warn!("could not check for cancel requests: {err}"),
                }
            }
        });
    }

    /// Cancels a run in flight on this host; false when it is not running here.
    pub fn cancel(&self, id: Uuid) -> bool {
        match self.lock_active().get(&id) {
            Some(control) => {
                control.cancel();
                true
            }
            None => false,
        }
    }

    /// Finds runs accepted but not finished (by an earlier process) and runs them, on the
    /// workflow version and agent digests they were pinned to. Returns how many resumed.
    pub async fn resume_unfinished(self: &Arc<Self>) -> Result<usize, StoreError> {
        let store = self.registry.store().clone();
        let mut resumed = 0;
        let unfinished = store.unfinished_runs().await?;
        let ids: Vec<Uuid> = unfinished.iter().map(|run| run.id).collect();
        let cancelled = store.cancel_requested(&ids).await?;
        for mut run in unfinished {
            if cancelled.contains(&run.id) {
                // Asked to stop while no host was running it: it ends here.
                run.status = RunStatus::Cancelled;
                run.error = Some("cancelled".into());
                run.finished_at = Some(Utc::now());
                store.recorder().run(run).committed().await?;
                continue;
            }
            match self.registry.plan_for_run(&run).await {
                Ok(plan) => {
                    let previous = store.run_steps(run.id).await?;
                    tracing::info!(run_id = %run.id, "resuming run");
                    drop(self.spawn(plan, run, previous));
                    resumed += 1;
                }
                Err(err) => {
                    // Nothing to run it with any more: close it rather than retry forever.
                    let mut failed = run;
                    failed.status = RunStatus::Failed;
                    failed.error = Some(format!("could not be resumed: {err}"));
                    failed.finished_at = Some(Utc::now());
                    store.recorder().run(failed).committed().await?;
                }
            }
        }
        Ok(resumed)
    }

    /// Waits up to `grace` for runs in flight to finish, then interrupts the rest and waits
    /// for their records to be written.
    pub async fn shutdown(&self, grace: Duration) {
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait()).await.is_err() {
            tracing::warn!("grace period over: interrupting {} runs", self.lock_active().len());
            self.shutdown.cancel();
            self.tasks.wait().await;
        }
    }

    /// Runs in flight right now.
    pub fn active(&self) -> usize {
        self.lock_active().len()
    }

    fn lock_active(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, RunControl>> {
        self.active.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
