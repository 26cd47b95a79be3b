//! Running a workflow: steps in order (each possibly under an `if`), agent steps with
//! retries ([`agent`]), parallel blocks and maps fanned out under their `max_parallelism`
//! with join policies ([`parallel`], [`map`]), switches and loops ([`control`]), deadlines
//! and cancellation, and recording every run and step execution as it happens. Interrupted
//! runs resume without re-running the steps that succeeded.
//!
//! The engine knows nothing of wasmtime or SQL: it hands agent executions to the
//! [`Sandbox`] — or, when the pool is full and other hosts are up, the agent steps of
//! fan-outs to an [`Offload`] ([`unit`]) — and rows to the store's [`Recorder`]. A step's row is committed before any
//! later step (which may read its output) starts. The host-wide bound on live instances is
//! the sandbox's; each block adds its own bound on running branches, so nesting never asks
//! the pool for more than it holds — excess work waits.

mod agent;
mod control;
mod map;
mod parallel;
mod resume;
mod scope;
mod unit;

pub use unit::{Offload, Offloaded, Unit, UnitRun};

use crate::json::JsonDoc;
use crate::metrics::METRICS;
use crate::sandbox::{self, Sandbox};
use crate::store::{
    Fence, Pending, Recorder, RunRecord, RunStatus, StepDetails, StepRecord, StepStatus, StepWrite, StoreError,
};
use crate::workflow::{Scope, Step, StepKind, Workflow};
use chrono::Utc;
use futures::future::BoxFuture;
use resume::Previous;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

/// An agent ready to run, with what identifies it in records.
#[derive(Clone)]
pub struct ResolvedAgent {
    /// The agent's name (without a version).
    pub name: String,
    /// The deployed version, when the agent came from the registry.
    pub version: Option<String>,
    /// sha256 of the component's bytes, hex.
    pub digest: String,
    pub agent: sandbox::Agent,
}

/// A workflow with every agent it names resolved (and so pinned) before the run starts.
pub struct RunPlan {
    pub workflow: Arc<Workflow>,
    /// Keyed by the agent reference as written in the workflow (`name` or `name@version`).
    pub agents: HashMap<String, Arc<ResolvedAgent>>,
    /// sha256 of the definition the run starts with (stored by that digest, so that any
    /// host can resume the run).
    pub workflow_digest: Option<String>,
}

impl RunPlan {
    /// What each agent reference is pinned to, as recorded with the run.
    pub fn pins(&self) -> Value {
        let pins: serde_json::Map<String, Value> = self
            .agents
            .iter()
            .map(|(reference, agent)| {
                (reference.clone(), json!({ "name": agent.name, "version": agent.version, "digest": agent.digest }))
            })
            .collect();
        Value::Object(pins)
    }

    /// A new run of this plan, not started yet.
    pub fn new_run(&self, input: JsonDoc) -> RunRecord {
        RunRecord {
            id: Uuid::now_v7(),
            workflow_name: self.workflow.name.clone(),
            workflow_version: self.workflow.version.clone(),
            status: RunStatus::Pending,
            input: Some(input),
            output: None,
            error: None,
            created_at: Utc::now(),
            started_at: None,
            finished_at: None,
            workflow_digest: self.workflow_digest.clone(),
            pinned_agents: Some(self.pins()),
            owner_host_id: None,
            epoch: 0,
            redrive_count: 0,
        }
    }
}

/// How a run is stopped from outside: `cancel` ends it as `cancelled`; `interrupt` (a host
/// shutting down) stops it too, but leaves it unfinished, to be resumed later; `lost` (the
/// host no longer holds the run's lease) stops it without writing anything more.
#[derive(Debug, Clone, Default)]
pub struct RunControl {
    interrupt: CancellationToken,
    cancel: CancellationToken,
    lost: CancellationToken,
}

impl RunControl {
    /// A run that only its own `cancel` stops.
    pub fn new() -> Self {
        RunControl::default()
    }

    /// A run that `shutdown` interrupts.
    pub fn under(shutdown: &CancellationToken) -> Self {
        RunControl { interrupt: shutdown.clone(), cancel: shutdown.child_token(), lost: CancellationToken::new() }
    }

    /// Cancels the run: running instances are interrupted and recorded `cancelled`.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Drops the run: another host took it over (or this one cannot renew its lease).
    /// Running instances are interrupted and nothing more is written.
    pub fn lose(&self) {
        self.lost.cancel();
        self.cancel.cancel();
    }

    /// Whether the run was dropped.
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }
}

/// Runs workflows. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    sandbox: Arc<Sandbox>,
    recorder: Recorder,
    /// The host this engine runs in, recorded with every step execution.
    host_id: Arc<str>,
    limits: RunLimits,
    /// The host's secrets, for steps that map config keys to them.
    secrets: Arc<crate::secrets::Secrets>,
    /// Where units of a fan-out go when this host has no free instance slot (several
    /// hosts on Postgres); `None` runs everything here.
    offload: Option<Arc<dyn Offload>>,
}

/// What one run may take of a host, beyond what its definition says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunLimits {
    /// Most items a map takes (`--max-map-items`); a longer list fails the map.
    pub max_map_items: u64,
    /// Most bytes of agent step inputs and outputs a run records (`--max-run-mb`); the
    /// step that would go beyond fails, and so does the run.
    pub max_run_bytes: u64,
}

impl Default for RunLimits {
    fn default() -> Self {
        RunLimits {
            max_map_items: crate::limits::DEFAULT_MAX_MAP_ITEMS,
            max_run_bytes: crate::limits::DEFAULT_MAX_RUN_BYTES,
        }
    }
}

/// Everything a running step needs, shared by all tasks of one run.
struct RunContext {
    engine: Engine,
    plan: Arc<RunPlan>,
    run_id: Uuid,
    /// The claim every write of this run carries.
    fence: Fence,
    /// Rows of earlier drives of this run, by step key: what succeeded is not run again.
    previous: Previous,
    /// Bytes of agent step inputs and outputs recorded so far (earlier drives' included).
    recorded_bytes: std::sync::atomic::AtomicU64,
}

impl RunContext {
    /// Queues a step row (with its logs) under the run's fence: a row written for the
    /// first time as an insert, one written before as an update of it.
    fn write(&self, row: StepRecord, details: StepDetails, write: StepWrite) -> Pending {
        match write {
            StepWrite::Insert => self.engine.recorder.new_step(row, details, &self.fence),
            StepWrite::Upsert => self.engine.recorder.step_with(row, details, &self.fence),
        }
    }

    /// Counts `bytes` more recorded; an error once the run is over its cap.
    fn record_bytes(&self, bytes: u64) -> Result<(), String> {
        let cap = self.engine.limits.max_run_bytes;
        let total = self.recorded_bytes.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed) + bytes;
        if total > cap {
            return Err(format!(
                "the run's agent steps have produced {total} bytes of inputs and outputs, over the run's cap of \
                 {cap} bytes (--max-run-mb)"
            ));
        }
        Ok(())
    }
}

/// Where a step execution sits: inside which block row, on which branch, for which item
/// (of a map) or iteration (of a loop), and the key prefix of the steps placed there.
#[derive(Debug, Clone, Default)]
struct Placement {
    parent: Option<Uuid>,
    branch: Option<String>,
    item_index: Option<i64>,
    /// `""` at the top, `block/branch/`, `map[3]/`, `loop[2]/`, `switch/cases[0]/`.
    prefix: Arc<str>,
}

impl Placement {
    /// Inside the block row `parent` (whose key is `key`), on `branch`, at `item_index`.
    fn inside(parent: &StepRecord, branch: Option<String>, item_index: Option<i64>, segment: &str) -> Self {
        let key = parent.step_key.as_deref().unwrap_or_default();
        Placement { parent: Some(parent.id), branch, item_index, prefix: format!("{key}{segment}/").into() }
    }
}

/// How a block (or a run) is stopped: its cancellation token, which its own deadline (if
/// any) also fires, so that a block past its deadline ends `failed` with "timed out"
/// rather than `cancelled`.
struct Stop {
    token: CancellationToken,
    deadline: Option<(u64, Arc<std::sync::atomic::AtomicBool>, tokio::task::JoinHandle<()>)>,
}

impl Stop {
    /// A child of `cancel`, cancelled too after `timeout_ms`.
    fn new(cancel: &CancellationToken, timeout_ms: Option<u64>) -> Self {
        let token = cancel.child_token();
        let deadline = timeout_ms.map(|ms| {
            let fired = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let (flag, on_time) = (fired.clone(), token.clone());
            let timer = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                on_time.cancel();
            });
            (ms, fired, timer)
        });
        Stop { token, deadline }
    }

    /// "timed out after N ms", when the deadline is what stopped it.
    fn timed_out(&self) -> Option<String> {
        let (ms, fired, _) = self.deadline.as_ref()?;
        fired.load(std::sync::atomic::Ordering::SeqCst).then(|| format!("timed out after {ms} ms"))
    }

    /// Turns an ending the deadline caused into a failure that says so.
    fn settle(&self, ended: &mut Ended) {
        if !ended.status.is_success()
            && let Some(message) = self.timed_out()
        {
            ended.status = StepStatus::Failed;
            ended.error = Some(message);
        }
    }
}

impl Drop for Stop {
    fn drop(&mut self) {
        if let Some((_, _, timer)) = &self.deadline {
            timer.abort();
        }
    }
}

/// How a step or a sequence of steps ended.
#[derive(Debug, Clone)]
struct Ended {
    status: StepStatus,
    output: Option<JsonDoc>,
    error: Option<String>,
}

impl Ended {
    fn of_row(row: &StepRecord) -> Self {
        Ended { status: row.status, output: row.output.clone(), error: row.error.clone() }
    }
}

impl Engine {
    pub fn new(sandbox: Arc<Sandbox>, recorder: Recorder) -> Self {
        Engine {
            sandbox,
            recorder,
            host_id: crate::cluster::default_host_id().into(),
            limits: RunLimits::default(),
            secrets: Arc::default(),
            offload: None,
        }
    }

    /// The same engine, offering units of fan-outs to `offload` when its pool is full.
    pub fn with_offload(mut self, offload: Arc<dyn Offload>) -> Self {
        self.offload = Some(offload);
        self
    }

    /// The host this engine runs in.
    pub fn host_id(&self) -> &str {
        &self.host_id
    }

    /// The same engine, holding runs to `limits`.
    pub fn with_limits(mut self, limits: RunLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The same engine, giving steps the host's `secrets` where they ask for them.
    pub fn with_secrets(mut self, secrets: Arc<crate::secrets::Secrets>) -> Self {
        self.secrets = secrets;
        self
    }

    /// The same engine, recording `host_id` as the host of what it runs.
    pub fn with_host_id(mut self, host_id: &str) -> Self {
        self.host_id = host_id.into();
        self
    }

    /// The sandbox the engine runs agents in.
    pub fn sandbox(&self) -> &Arc<Sandbox> {
        &self.sandbox
    }

    /// Runs `plan` on `input` as a new run `run_id` owned by this engine's host (with a
    /// lease it does not renew: for runs that end within it, such as tests'), recording
    /// everything; cancelling `cancel` stops the running instances and records what was
    /// stopped as cancelled. Returns the run's final row. Fails only when recording fails.
    pub async fn run(
        &self,
        plan: Arc<RunPlan>,
        run_id: Uuid,
        input: JsonDoc,
        cancel: CancellationToken,
    ) -> Result<RunRecord, StoreError> {
        let mut run = RunRecord { id: run_id, ..plan.new_run(input) };
        run.owner_host_id = Some(self.host_id.to_string());
        run.epoch = 1;
        run.status = RunStatus::Running;
        run.started_at = Some(Utc::now());
        // Committed before any step row is written: rows inside blocks may go to another
        // writer, and their fence reads this row.
        self.recorder.run(run.clone(), Some(Duration::from_secs(3600)), None).committed().await?;
        let control = RunControl { cancel, ..RunControl::default() };
        self.execute(plan, run, &control, &[]).await
    }

    /// Runs a run this host has claimed (`run.epoch` is its claim). `previous` holds the
    /// rows of earlier drives of the run — a host that stopped or died, or a failed run
    /// redriven: rows left unfinished are closed as `cancelled`, and what succeeded (a
    /// step, a branch, a map item, a loop iteration, a whole block) is reused, not run
    /// again; the rest runs with the next attempt numbers. Returns the run's row at the
    /// end: final, or still `running` when `control` was interrupted (to be resumed);
    /// [`StoreError::LeaseLost`] when another host took the run over.
    pub async fn execute(
        &self,
        plan: Arc<RunPlan>,
        mut run: RunRecord,
        control: &RunControl,
        previous: &[StepRecord],
    ) -> Result<RunRecord, StoreError> {
        let fence = Fence::with_token(run.epoch, control.lost.clone());
        // A refused write (the epoch moved on) stops the run's instances at once.
        let on_lost = {
            let (lost, cancel) = (control.lost.clone(), control.cancel.clone());
            tokio::spawn(async move {
                lost.cancelled().await;
                cancel.cancel();
            })
        };
        let result = self.drive(plan, &mut run, control, previous, fence).await;
        on_lost.abort();
        if control.is_lost() {
            return Err(StoreError::LeaseLost(run.id));
        }
        result
    }

    async fn drive(
        &self,
        plan: Arc<RunPlan>,
        run: &mut RunRecord,
        control: &RunControl,
        previous: &[StepRecord],
        fence: Fence,
    ) -> Result<RunRecord, StoreError> {
        // A run accepted here as `running` (or claimed in that state) is recorded as it is.
        let recorded = run.status == RunStatus::Running
            && run.error.is_none()
            && run.started_at.is_some()
            && run.owner_host_id.as_deref() == Some(&*self.host_id);
        run.status = RunStatus::Running;
        run.started_at.get_or_insert_with(Utc::now);
        run.error = None;
        run.owner_host_id = Some(self.host_id.to_string());
        if !recorded {
            // Not waited for: the accepted (or claimed) row already makes the run durable,
            // and every later write of it lands after this one (a run's rows all go to
            // one writer).
            let _ = self.recorder.run(run.clone(), None, Some(&fence));
        }
        // Rows left running by a host that stopped or died end here.
        let rows = close_open_rows(&self.recorder, previous, &fence, |row| {
            format!(
                "interrupted: its host ({}) stopped or died before it finished",
                row.host_id.as_deref().unwrap_or("unknown")
            )
        })
        .await?;

        let input = run.input.clone().unwrap_or_default();
        let context = Arc::new(RunContext {
            engine: self.clone(),
            plan: plan.clone(),
            run_id: run.id,
            fence: fence.clone(),
            previous: Previous::new(&rows, run.started_at),
            recorded_bytes: std::sync::atomic::AtomicU64::new(recorded_bytes(&rows)),
        });
        if !context.previous.is_empty() {
            tracing::info!(run_id = %run.id, "resuming: reusing what succeeded");
        }
        let span = tracing::info_span!("run", run_id = %run.id, workflow = %plan.workflow.name);
        let stop = Stop::new(&control.cancel, plan.workflow.timeout_ms);
        let (mut ended, scope, last_row) = run_sequence(
            context,
            plan.workflow.steps.clone(),
            Scope::new(input),
            Placement::default(),
            stop.token.clone(),
        )
        .instrument(span)
        .await?;
        if let Some(message) = stop.timed_out() {
            ended.status = StepStatus::Failed;
            ended.error = Some(format!("the run {message}"));
        }

        if control.is_lost() {
            return Err(StoreError::LeaseLost(run.id));
        }
        if control.interrupt.is_cancelled() && !ended.status.is_success() {
            run.error = Some("interrupted: the host shut down; the run resumes when it starts again".into());
            // Released: any host may take it over at once.
            run.owner_host_id = None;
            return self.finish(run.clone(), last_row, &fence).await;
        }
        run.status = match ended.status {
            StepStatus::Succeeded | StepStatus::Skipped => RunStatus::Succeeded,
            StepStatus::Cancelled => RunStatus::Cancelled,
            _ => RunStatus::Failed,
        };
        run.error = ended.error.take();
        if run.status == RunStatus::Succeeded {
            match &plan.workflow.output {
                None => run.output = ended.output.take(),
                // Checked like any JSON that is stored: a NUL would fail the run's last write.
                Some(template) => {
                    match template.render_async(&scope).await.map_err(|err| err.to_string()).and_then(|output| {
                        output.check("the rendered value").map(|()| output).map_err(|p| p.to_string())
                    }) {
                        Ok(output) => run.output = Some(output),
                        Err(err) => {
                            run.status = RunStatus::Failed;
                            run.error = Some(format!("output: {err}"));
                        }
                    }
                }
            }
        }
        run.finished_at = Some(Utc::now());
        METRICS.runs.with_label_values(&[run.status.as_str()]).inc();
        self.finish(run.clone(), last_row, &fence).await
    }

    async fn finish(&self, run: RunRecord, last_row: Option<Pending>, fence: &Fence) -> Result<RunRecord, StoreError> {
        finish(&self.recorder, run, last_row, fence).await
    }
}

/// Writes the run's row after its last step's, and waits for both: queued together, they
/// usually share one commit.
async fn finish(
    recorder: &Recorder,
    run: RunRecord,
    last_row: Option<Pending>,
    fence: &Fence,
) -> Result<RunRecord, StoreError> {
    let run_row = recorder.run(run.clone(), None, Some(fence));
    if let Some(last_row) = last_row {
        last_row.committed().await?;
    }
    run_row.committed().await?;
    Ok(run)
}

/// Closes the rows of `rows` that are not final as `cancelled` with the error `why` gives,
/// waits until they are committed, and returns every row as it now stands.
async fn close_open_rows(
    recorder: &Recorder,
    rows: &[StepRecord],
    fence: &Fence,
    why: impl Fn(&StepRecord) -> String,
) -> Result<Vec<StepRecord>, StoreError> {
    let mut rows = rows.to_vec();
    let mut closing = Vec::new();
    for row in rows.iter_mut().filter(|row| !row.status.is_terminal()) {
        row.status = StepStatus::Cancelled;
        row.error = Some(why(row));
        row.finished_at = Some(Utc::now());
        closing.push(recorder.step(row.clone(), Vec::new(), fence));
    }
    for closed in closing {
        closed.committed().await?;
    }
    Ok(rows)
}

/// Ends a claimed run (`run.epoch` is the claim) that was asked to stop while no host ran
/// it: its open rows and the run itself are closed as `cancelled`.
pub async fn close_cancelled(
    recorder: &Recorder,
    mut run: RunRecord,
    previous: &[StepRecord],
) -> Result<RunRecord, StoreError> {
    let fence = Fence::new(run.epoch);
    close_open_rows(recorder, previous, &fence, |_| "cancelled".to_owned()).await?;
    run.status = RunStatus::Cancelled;
    run.error = Some("cancelled".into());
    run.finished_at = Some(Utc::now());
    METRICS.runs.with_label_values(&[run.status.as_str()]).inc();
    finish(recorder, run, None, &fence).await
}

/// What a sequence leaves behind: how it ended (with the last step's output), the scope
/// with every step that ran, and the last step's row, still being committed.
type SequenceEnd = (Ended, Scope, Option<Pending>);

/// Runs `steps` in order until one does not succeed. Each step's row is committed before
/// the next step starts (an agent step makes its instance meanwhile, and calls it once the
/// row is durable); the last one's commit is left to the caller to wait for, so that a
/// finished branch frees its place in its block at once.
fn run_sequence(
    context: Arc<RunContext>,
    steps: Arc<[Step]>,
    mut scope: Scope,
    placement: Placement,
    cancel: CancellationToken,
) -> BoxFuture<'static, Result<SequenceEnd, StoreError>> {
    Box::pin(async move {
        let mut last = Ended { status: StepStatus::Succeeded, output: None, error: None };
        let mut last_row: Option<Pending> = None;
        for (index, step) in steps.iter().enumerate() {
            let previous_row = last_row.take();
            // Cancelled already: no instance is made for a step that will not start.
            let started = if cancel.is_cancelled() {
                predecessor_committed(previous_row, &cancel).await?;
                None
            } else {
                run_step(&context, step, &scope, &placement, &cancel, previous_row).await?
            };
            let Some((ended, views, row)) = started else {
                // The steps this sequence will not start are recorded, so that every step
                // of a cancelled branch or run stays visible.
                for row in record_not_started(&context, &steps[index..], &placement, StepStatus::Cancelled) {
                    row.committed().await?;
                }
                let ended = Ended { status: StepStatus::Cancelled, output: None, error: Some("cancelled".into()) };
                return Ok((ended, scope, None));
            };
            last_row = Some(row);
            for (id, view) in views {
                scope.steps.insert(id, view);
            }
            last = ended;
            if !last.status.is_success() {
                let error = last.error.take().unwrap_or_default();
                last.error = Some(format!("step {:?} {}: {error}", step.id, last.status));
                break;
            }
        }
        Ok((last, scope, last_row))
    })
}

/// How a step ended, the views it adds to the scope (its own, and those of the steps
/// inside it), and its row, still being committed.
type StepEnd = (Ended, Vec<(String, crate::workflow::Binding)>, Pending);

/// Waits until the previous step's row (if any) is durable; false when the sequence was
/// cancelled meanwhile, and the next step must not start.
async fn predecessor_committed(previous_row: Option<Pending>, cancel: &CancellationToken) -> Result<bool, StoreError> {
    if let Some(row) = previous_row {
        row.committed().await?;
    }
    Ok(!cancel.is_cancelled())
}

/// Runs one step once `previous_row` (the row of the step before it, if any) is committed;
/// `None` when the sequence was cancelled before it started. Only an agent step does
/// anything before: it makes its instance.
async fn run_step(
    context: &Arc<RunContext>,
    step: &Step,
    scope: &Scope,
    placement: &Placement,
    cancel: &CancellationToken,
    previous_row: Option<Pending>,
) -> Result<Option<StepEnd>, StoreError> {
    let key = resume::key(&placement.prefix, step);
    let done = context.previous.done(&key);
    let previous_row = match &step.kind {
        StepKind::Agent(_) if done.is_none() && step.condition.is_none() => previous_row,
        _ if predecessor_committed(previous_row, cancel).await? => None,
        _ => return Ok(None),
    };
    if let Some(done) = done {
        // Resuming: this step succeeded (or was skipped) in an earlier drive; use what it
        // recorded, wherever it sits.
        let ended = Ended::of_row(done);
        let views = resume::recorded_views(&context.previous, step, &key);
        let written = adopt(context, done, placement);
        return Ok(Some((ended, views, written)));
    }
    if let Some(condition) = &step.condition {
        let decided = control::holds(condition, scope, "if").await;
        if decided != Ok(true) {
            // A false condition skips the step; one that cannot be evaluated fails it.
            let ended = match decided {
                Ok(_) => Ended { status: StepStatus::Skipped, output: None, error: None },
                Err(error) => failed(error),
            };
            let mut row = new_row(context, step, placement);
            if let StepKind::Agent(agent) = &step.kind {
                row.agent_name = context.plan.agents.get(&agent.agent).map(|a| a.name.clone());
            }
            let written = finish_row(context, row, &ended, StepDetails::default(), StepWrite::Insert);
            let view = scope::view(&ended);
            return Ok(Some((ended, vec![(step.id.clone(), view)], written)));
        }
    }
    let ended = match &step.kind {
        StepKind::Agent(agent) => {
            let Some((ended, row)) = agent::run(context, step, agent, scope, placement, cancel, previous_row).await?
            else {
                return Ok(None);
            };
            let view = scope::view(&ended);
            (ended, vec![(step.id.clone(), view)], row)
        }
        StepKind::Parallel(block) => {
            parallel::run(context, step, block, scope, placement, &Stop::new(cancel, step.timeout_ms)).await?
        }
        StepKind::Map(map) => {
            map::run(context, step, map, scope, placement, &Stop::new(cancel, step.timeout_ms)).await?
        }
        StepKind::Switch(switch) => {
            control::switch(context, step, switch, scope, placement, &Stop::new(cancel, step.timeout_ms)).await?
        }
        StepKind::Loop(repeat) => {
            control::repeat(context, step, repeat, scope, placement, &Stop::new(cancel, step.timeout_ms)).await?
        }
    };
    Ok(Some(ended))
}

/// Attaches a row of an earlier drive that is reused to the block row it now belongs to,
/// so that every execution of a block that ends is reachable from that block's row.
fn adopt(context: &RunContext, row: &StepRecord, placement: &Placement) -> Pending {
    if row.parent_step_id == placement.parent {
        return Pending::ready();
    }
    let mut adopted = row.clone();
    adopted.parent_step_id = placement.parent;
    context.write(adopted, StepDetails::default(), StepWrite::Upsert)
}

/// A fresh row for a step execution of `context`'s run, numbered after the attempts
/// recorded at its key.
fn new_row(context: &RunContext, step: &Step, placement: &Placement) -> StepRecord {
    let key = resume::key(&placement.prefix, step);
    StepRecord {
        id: Uuid::now_v7(),
        run_id: context.run_id,
        step_id: step.id.clone(),
        step_type: step.kind.type_name().to_owned(),
        parent_step_id: placement.parent,
        branch_name: placement.branch.clone(),
        item_index: placement.item_index,
        join_policy: None,
        agent_name: None,
        agent_digest: None,
        attempt: context.previous.next_attempt(&key),
        status: StepStatus::Running,
        outcome: None,
        input: None,
        output: None,
        error: None,
        started_at: Some(Utc::now()),
        finished_at: None,
        instantiate_us: None,
        execute_us: None,
        fuel_consumed: None,
        memory_peak_bytes: None,
        step_key: Some(key),
        queued_us: None,
        host_id: Some(context.engine.host_id.to_string()),
    }
}

/// What earlier drives recorded of agent step inputs and outputs.
fn recorded_bytes(rows: &[StepRecord]) -> u64 {
    rows.iter()
        .filter(|row| row.step_type == "agent")
        .flat_map(|row| [&row.input, &row.output])
        .map(|doc| doc.as_ref().map_or(0, |doc| doc.text_len() as u64))
        .sum()
}

/// Ends `row` as `ended` and queues it (with `logs`) for the next commit: inserted, or
/// updating the row written when it started (`write`).
fn finish_row(context: &RunContext, row: StepRecord, ended: &Ended, details: StepDetails, write: StepWrite) -> Pending {
    context.write(close_row(row, ended), details, write)
}

/// `row`, ended as `ended` (and counted in the metrics).
fn close_row(mut row: StepRecord, ended: &Ended) -> StepRecord {
    row.status = ended.status;
    row.output = ended.output.clone();
    row.error = ended.error.clone();
    row.finished_at = Some(Utc::now());
    let outcome = row.outcome.as_deref().unwrap_or("");
    METRICS.steps.with_label_values(&[&row.step_type, row.status.as_str(), outcome]).inc();
    if let Some(started) = row.started_at {
        let seconds = (Utc::now() - started).num_microseconds().unwrap_or(0) as f64 / 1e6;
        METRICS.step_seconds.with_label_values(&[&row.step_type]).observe(seconds);
    }
    row
}

fn failed(error: String) -> Ended {
    Ended { status: StepStatus::Failed, output: None, error: Some(error) }
}

/// Rows for steps that never started because their branch was cancelled first, so that
/// every branch of a block stays visible in the records.
fn record_not_started(context: &RunContext, steps: &[Step], placement: &Placement, status: StepStatus) -> Vec<Pending> {
    let mut rows = Vec::new();
    for step in steps {
        // A step an earlier drive finished is done, not "not started": no row hides it.
        if context.previous.done(&resume::key(&placement.prefix, step)).is_some() {
            continue;
        }
        let mut row = new_row(context, step, placement);
        row.started_at = None;
        if let StepKind::Agent(agent) = &step.kind {
            row.agent_name = context.plan.agents.get(&agent.agent).map(|a| a.name.clone());
        }
        let ended = Ended { status, output: None, error: Some("cancelled before it started".into()) };
        rows.push(finish_row(context, row, &ended, StepDetails::default(), StepWrite::Insert));
    }
    rows
}
