//! One execution: a fresh `Store` with its limits, captured logs and configuration, one
//! call of `run`, and the classification of how it ended. The instance can be made ahead
//! of its call ([`Sandbox::prepare`]), so that a chain's next step is ready when its
//! predecessor's row is durable.

use super::bindings::braid::agent::{host, types};
use super::bindings::{Agent as AgentBindings, AgentPre};
use super::limiter::MemoryLimiter;
use super::logs::{LogCapture, LogLevel, LogSource};
use super::{Agent, ExecuteError, Execution, ExecutionRequest, Limits, Metering, Outcome, Sandbox, Slot};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use wasmtime::component::ResourceTable;
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// Why the host interrupted a running guest (set just before interrupting it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interruption {
    Timeout,
    Cancelled,
}

/// The data of one execution's `Store`.
pub(crate) struct StepState {
    wasi: WasiCtx,
    http_ctx: WasiHttpCtx,
    http: super::http::StepHttp,
    table: ResourceTable,
    limiter: MemoryLimiter,
    logs: LogCapture,
    config: Arc<BTreeMap<String, String>>,
    deadline: Instant,
    idempotency_key: String,
    cancel: CancellationToken,
    interrupted: Option<Interruption>,
}

impl WasiView for StepState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for StepState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http_ctx, table: &mut self.table, hooks: &mut self.http }
    }
}

impl types::Host for StepState {}

impl host::Host for StepState {
    fn log(&mut self, level: host::LogLevel, message: String) {
        let level = match level {
            host::LogLevel::Trace => LogLevel::Trace,
            host::LogLevel::Debug => LogLevel::Debug,
            host::LogLevel::Info => LogLevel::Info,
            host::LogLevel::Warn => LogLevel::Warn,
            host::LogLevel::Error => LogLevel::Error,
        };
        self.logs.log(level, message);
    }

    fn config(&mut self, key: String) -> Option<String> {
        self.config.get(&key).cloned()
    }

    fn idempotency_key(&mut self) -> String {
        self.idempotency_key.clone()
    }
}

impl Sandbox {
    /// Runs `agent` once on `request`, waiting for a free instance slot first. Whatever the
    /// guest does, the result is an [`Execution`]; only a request the sandbox refuses to
    /// start (oversized input, a memory limit above the host's maximum) is an error.
    pub async fn execute(&self, agent: &Agent, request: ExecutionRequest) -> Result<Execution, ExecuteError> {
        self.check(&request)?;
        // A free slot is taken at once: waiting sets up a timer and a cancellation watch.
        let slot = match self.try_slot() {
            Some(slot) => slot,
            None => match self.slot(&request.cancel).await {
                Ok(slot) => slot,
                Err(refused) => return Ok(refused),
            },
        };
        self.execute_in(agent, request, slot).await
    }

    /// An instance slot if one is free right now.
    pub fn try_slot(&self) -> Option<Slot> {
        let permit = self.instance_slots.clone().try_acquire_owned().ok()?;
        Some(Slot { _permit: permit, queued: Duration::ZERO })
    }

    /// Instance slots free right now.
    pub fn free_slots(&self) -> usize {
        self.instance_slots.available_permits()
    }

    /// Waits for an instance slot. Waiting is bounded on its own (`max_queue_wait`), and
    /// recorded: the step's deadline covers the agent's own time, so a burst of work that
    /// queues does not time out steps that never ran. `Err` is the execution a wait that
    /// was cancelled or took too long ends as.
    pub async fn slot(&self, cancel: &CancellationToken) -> Result<Slot, Execution> {
        let queued_since = Instant::now();
        let max_wait = self.config.max_queue_wait;
        tokio::select! {
            permit = self.instance_slots.clone().acquire_owned() => match permit {
                Ok(permit) => Ok(Slot { _permit: permit, queued: queued_since.elapsed() }),
                Err(err) => Err(Execution::refused(Outcome::Cancelled, &format!("the instance pool closed: {err}"), queued_since.elapsed())),
            },
            () = cancel.cancelled() => Err(Execution::refused(Outcome::Cancelled, "cancelled while waiting for an instance slot", queued_since.elapsed())),
            () = tokio::time::sleep(max_wait) => Err(Execution::refused(Outcome::Timeout, &format!("waited {} ms for an instance slot (the host's max queue wait)", max_wait.as_millis()), queued_since.elapsed())),
        }
    }

    /// What the sandbox refuses before any slot is taken.
    pub fn check(&self, request: &ExecutionRequest) -> Result<Limits, ExecuteError> {
        let limits = request.limits.unwrap_or(self.config.default_limits);
        if request.input.len() > self.config.max_input_bytes {
            return Err(ExecuteError::InputTooLarge { size: request.input.len(), cap: self.config.max_input_bytes });
        }
        if limits.memory_bytes > self.config.max_memory_bytes {
            return Err(ExecuteError::MemoryAboveMax {
                requested: limits.memory_bytes,
                max: self.config.max_memory_bytes,
            });
        }
        Ok(limits)
    }

    /// Runs `agent` once on `request` in `slot`, which the caller already holds.
    pub async fn execute_in(
        &self,
        agent: &Agent,
        request: ExecutionRequest,
        slot: Slot,
    ) -> Result<Execution, ExecuteError> {
        let (mut setup, pre) = self.set_up(agent, request, slot)?;
        let started = Instant::now();
        let mut instantiated_at = None;
        let call = async {
            let instance = pre.instantiate_async(&mut setup.store).await?;
            instantiated_at = Some(Instant::now());
            instance.call_run(&mut setup.store, &setup.step_context, &setup.input).await
        };
        let result = self.race(call, &setup.cancel, setup.deadline).await;
        let finished = Instant::now();
        let instantiate = instantiated_at.unwrap_or(finished) - started;
        let execute = finished - instantiated_at.unwrap_or(finished);
        self.conclude(setup, result, instantiate, execute)
    }

    /// Makes `agent`'s instance for `request` in `slot` without calling it: a chain's next
    /// step is made while its predecessor's row commits, and called once that row is
    /// durable. The instance is bounded by the step's deadline and cancellation like the
    /// call; whatever went wrong making it is reported by [`Prepared::call`].
    pub async fn prepare(
        &self,
        agent: &Agent,
        request: ExecutionRequest,
        slot: Slot,
    ) -> Result<Prepared<'_>, ExecuteError> {
        let (mut setup, pre) = self.set_up(agent, request, slot)?;
        let started = Instant::now();
        let instance = self.race(pre.instantiate_async(&mut setup.store), &setup.cancel, setup.deadline).await;
        let made_at = Instant::now();
        Ok(Prepared { sandbox: self, setup, instance, instantiate: made_at - started, made_at })
    }

    /// The store of one execution (its limits, captured logs, configuration, deadline) and
    /// the code to instantiate in it.
    fn set_up<'a>(
        &self,
        agent: &'a Agent,
        request: ExecutionRequest,
        slot: Slot,
    ) -> Result<(Setup, &'a AgentPre<StepState>), ExecuteError> {
        let limits = self.check(&request)?;
        let ExecutionRequest { context, input, limits: _, config, cancel, allowed_hosts } = request;
        let metering = self.metering(limits.fuel);
        let (Some(pre), Ok(engine)) = (agent.pre(metering), self.engine_for(metering)) else {
            return Err(ExecuteError::Host(format!(
                "the agent was not loaded for {} code, which this step needs",
                match metering {
                    Metering::Metered => "fuel-metered",
                    Metering::Unmetered => "unmetered",
                }
            )));
        };
        let deadline = Instant::now() + limits.timeout;

        let logs = LogCapture::new(self.config.max_log_bytes);
        let wasi = WasiCtx::builder().stdout(logs.pipe(LogSource::Stdout)).stderr(logs.pipe(LogSource::Stderr)).build();
        let http_calls = super::http::CallLog::default();
        let state = StepState {
            wasi,
            http_ctx: WasiHttpCtx::new(),
            http: super::http::StepHttp {
                outbound: self.outbound.clone(),
                grants: allowed_hosts,
                deadline,
                logs: logs.clone(),
                calls: http_calls.clone(),
                requests: 0,
            },
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX)),
            logs: logs.clone(),
            config,
            deadline,
            idempotency_key: context.idempotency_key,
            cancel: cancel.clone(),
            interrupted: None,
        };
        let mut store = Store::new(&engine.engine, state);
        store.limiter(|state| &mut state.limiter);
        let fuel_budget = limits.fuel.unwrap_or(u64::MAX);
        if metering == Metering::Metered {
            store.set_fuel(fuel_budget).map_err(|e| ExecuteError::Host(format!("{e:#}")))?;
        }
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut ctx| {
            let state = ctx.data_mut();
            if state.cancel.is_cancelled() {
                state.interrupted = Some(Interruption::Cancelled);
                Ok(UpdateDeadline::Interrupt)
            } else if Instant::now() >= state.deadline {
                state.interrupted = Some(Interruption::Timeout);
                Ok(UpdateDeadline::Interrupt)
            } else {
                // Let other tasks on this worker run between ticks.
                Ok(UpdateDeadline::Yield(1))
            }
        });

        let step_context = types::StepContext {
            run_id: context.run_id,
            step_id: context.step_id,
            branch: context.branch,
            item_index: context.item_index,
            attempt: context.attempt,
        };
        Ok((
            Setup {
                store,
                step_context,
                input,
                deadline,
                limits,
                metering,
                fuel_budget,
                cancel,
                logs,
                http_calls,
                queued: slot.queued,
                _slot: slot,
            },
            pre,
        ))
    }

    /// Runs `work` (instantiating or calling a guest) against the step's cancellation and
    /// deadline. A guest blocked in an async host call (a WASI sleep, say) never reaches an
    /// epoch check, so the race stops it. The race gives the epoch callback a head start of
    /// a few ticks: a guest it interrupts unwinds normally, and its fuel and memory figures
    /// stay exact. Biased towards `work`: most instantiations and calls finish in their
    /// first poll, and then neither timer is even made (each is built when first polled).
    async fn race<T>(
        &self,
        work: impl std::future::Future<Output = T>,
        cancel: &CancellationToken,
        deadline: Instant,
    ) -> Result<T, Interruption> {
        let grace = self.config.epoch_tick * 3;
        tokio::select! {
            biased;
            result = work => Ok(result),
            () = async { cancel.cancelled().await; tokio::time::sleep(grace).await } => Err(Interruption::Cancelled),
            () = async { tokio::time::sleep_until((deadline + grace).into()).await } => Err(Interruption::Timeout),
        }
    }

    fn fail(&self, execution: &mut Execution, state: &StepState, outcome: Outcome, limits: super::Limits) {
        execution.outcome = outcome;
        execution.error = Some(self.describe(outcome, None, state, limits));
        execution.retryable = outcome == Outcome::Timeout;
    }

    /// The agent's answer as a document: checked (size, syntax, depth, NUL) without being
    /// parsed into a tree, and passed on as the text it is.
    fn check_output(&self, output: String) -> Result<crate::json::JsonDoc, String> {
        let cap = self.config.max_output_bytes;
        if output.len() > cap {
            return Err(format!("the output is {} bytes, over the cap of {cap} bytes", output.len()));
        }
        crate::json::JsonDoc::parse_owned(output, "the output").map_err(|problem| match problem {
            crate::limits::JsonProblem::Syntax(_, err) => format!("the output is not JSON: {err}"),
            other => other.to_string(),
        })
    }

    /// A readable message for a failed execution. For traps it ends with the tail of the
    /// guest's stderr: a panic, an allocation failure and a broken pipe all trap the same
    /// way, and only stderr tells them apart.
    fn describe(
        &self,
        outcome: Outcome,
        err: Option<&wasmtime::Error>,
        state: &StepState,
        limits: super::Limits,
    ) -> String {
        let mut message = match outcome {
            Outcome::Timeout => format!("timed out after {} ms", limits.timeout.as_millis()),
            Outcome::Cancelled => "cancelled".to_owned(),
            Outcome::OutOfFuel => format!("ran out of fuel (budget {})", limits.fuel.unwrap_or(u64::MAX)),
            Outcome::MemoryLimit => format!(
                "memory limit of {} reached: the agent asked for {} in all",
                human_bytes(state.limiter.limit_bytes() as u64),
                human_bytes(state.limiter.refused_bytes().unwrap_or_default() as u64)
            ),
            _ => match err {
                Some(err) => match err.downcast_ref::<Trap>() {
                    Some(trap) => trap.to_string(),
                    None => root_message(err),
                },
                None => "trap".to_owned(),
            },
        };
        let stderr = state.logs.stderr_tail();
        if matches!(outcome, Outcome::Trap | Outcome::MemoryLimit) && !stderr.is_empty() {
            message.push_str("; stderr: ");
            message.push_str(&stderr);
        }
        message
    }
}

/// One execution's store and what its call and its classification need.
struct Setup {
    store: Store<StepState>,
    step_context: types::StepContext,
    input: String,
    /// The step's deadline, from when its store was made.
    deadline: Instant,
    limits: Limits,
    metering: Metering,
    fuel_budget: u64,
    cancel: CancellationToken,
    logs: LogCapture,
    http_calls: super::http::CallLog,
    queued: Duration,
    _slot: Slot,
}

/// An agent's instance made for one execution and not called yet ([`Sandbox::prepare`]).
/// It holds its instance slot; dropping it frees both without running the guest's `run`.
pub struct Prepared<'a> {
    sandbox: &'a Sandbox,
    setup: Setup,
    /// The instance, or why making it failed, or what stopped it.
    instance: Result<wasmtime::Result<AgentBindings>, Interruption>,
    instantiate: Duration,
    made_at: Instant,
}

impl Prepared<'_> {
    /// Calls `run` on the instance and classifies how the execution ended. The timeout
    /// covers making the instance and the call, not the wait between. Whatever the guest
    /// does, the result is an [`Execution`].
    pub async fn call(self) -> Result<Execution, ExecuteError> {
        let Prepared { sandbox, mut setup, instance, instantiate, made_at } = self;
        let started = Instant::now();
        let (result, execute) = match instance {
            Ok(Ok(instance)) => {
                let deadline = setup.deadline + (started - made_at);
                setup.store.data_mut().deadline = deadline;
                setup.store.data_mut().http.deadline = deadline;
                let call = instance.call_run(&mut setup.store, &setup.step_context, &setup.input);
                let result = sandbox.race(call, &setup.cancel, deadline).await;
                (result, started.elapsed())
            }
            Ok(Err(err)) => (Ok(Err(err)), Duration::ZERO),
            Err(interruption) => (Err(interruption), Duration::ZERO),
        };
        sandbox.conclude(setup, result, instantiate, execute)
    }
}

/// What instantiating and calling a guest came to: its answer (or its own error), a trap,
/// or the host's interruption.
type CallResult = Result<wasmtime::Result<Result<String, types::StepError>>, Interruption>;

impl Sandbox {
    /// Classifies how an execution ended and gathers its figures, logs and HTTP requests.
    fn conclude(
        &self,
        setup: Setup,
        result: CallResult,
        instantiate: Duration,
        execute: Duration,
    ) -> Result<Execution, ExecuteError> {
        let Setup { store, limits, metering, fuel_budget, logs, http_calls, queued, .. } = setup;
        let fuel_consumed = match metering {
            Metering::Metered => Some(fuel_budget - store.get_fuel().unwrap_or(0)),
            Metering::Unmetered => None,
        };
        let state = store.data();
        let mut execution = Execution {
            outcome: Outcome::Succeeded,
            output: None,
            error: None,
            retryable: false,
            logs: Vec::new(),
            queued,
            instantiate,
            execute,
            fuel_consumed,
            memory_peak_bytes: state.limiter.peak_bytes() as u64,
            http_calls: Vec::new(),
        };
        match result {
            Err(interruption) => self.fail(&mut execution, state, interruption_outcome(interruption), limits),
            // The host ran out, not the agent: every slot holds what any loadable component
            // needs, so this would be a Braid bug, and is reported as one.
            Ok(Err(err)) if err.downcast_ref::<wasmtime::PoolConcurrencyLimitError>().is_some() => {
                return Err(ExecuteError::Host(format!("the host's instance pool ran out ({err:#})")));
            }
            Ok(Err(err)) => {
                let outcome = classify_trap(&err, state);
                execution.error = Some(self.describe(outcome, Some(&err), state, limits));
                execution.outcome = outcome;
                execution.retryable = matches!(outcome, Outcome::Trap | Outcome::Timeout);
            }
            // A guest that failed after it was refused memory (Python's MemoryError, say)
            // failed because of its memory limit.
            Ok(Ok(Err(step_error))) if state.limiter.refused_bytes().is_some() => {
                let limit = self.describe(Outcome::MemoryLimit, None, state, limits);
                execution.outcome = Outcome::MemoryLimit;
                execution.error = Some(crate::limits::storable_text(format!(
                    "{limit}; the agent then failed: {}",
                    step_error.message
                )));
            }
            Ok(Ok(Err(step_error))) => {
                execution.outcome = Outcome::GuestError;
                execution.error = Some(crate::limits::storable_text(step_error.message));
                execution.retryable = step_error.retryable;
            }
            Ok(Ok(Ok(output))) => match self.check_output(output) {
                Ok(value) => execution.output = Some(value),
                Err(message) => {
                    execution.outcome = Outcome::InvalidOutput;
                    execution.error = Some(message);
                }
            },
        }
        if matches!(execution.outcome, Outcome::Timeout | Outcome::Cancelled) {
            // Compiled code keeps its fuel count in a register and writes it back at calls;
            // an interrupted loop never does, so the count would understate what ran.
            execution.fuel_consumed = None;
        }
        drop(store);
        // After the store: response bodies the guest left unread end their records on drop.
        execution.logs = logs.finish();
        execution.http_calls =
            std::mem::take(&mut *http_calls.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        Ok(execution)
    }
}

fn interruption_outcome(interruption: Interruption) -> Outcome {
    match interruption {
        Interruption::Timeout => Outcome::Timeout,
        Interruption::Cancelled => Outcome::Cancelled,
    }
}

/// Sorts a failed instantiation or call into an outcome. What the host did on purpose
/// (interrupting, refusing memory) explains the trap better than the trap code does.
fn classify_trap(err: &wasmtime::Error, state: &StepState) -> Outcome {
    if let Some(interruption) = state.interrupted {
        return interruption_outcome(interruption);
    }
    if err.downcast_ref::<Trap>() == Some(&Trap::OutOfFuel) {
        return Outcome::OutOfFuel;
    }
    if state.limiter.refused_bytes().is_some() {
        return Outcome::MemoryLimit;
    }
    Outcome::Trap
}

/// The innermost cause: wasmtime wraps errors in context lines and a backtrace header.
fn root_message(err: &wasmtime::Error) -> String {
    err.chain().last().map(|cause| cause.to_string()).unwrap_or_else(|| err.to_string())
}

/// Bytes for people: `64 MiB`, `1.5 KiB`, `12 bytes`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if bytes >= size {
            let value = bytes as f64 / size as f64;
            return if value.fract() == 0.0 { format!("{value:.0} {unit}") } else { format!("{value:.1} {unit}") };
        }
    }
    format!("{bytes} bytes")
}
