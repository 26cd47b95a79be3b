//! The sandbox: runs one agent execution in a fresh, locked-down wasmtime instance.
//!
//! It owns the process's wasmtime [`Engine`] (pooling allocator sized to the host-wide
//! concurrency, epoch interruption) — and, once a step asks for a fuel budget, a second one
//! whose code counts fuel ([`Metering`]) — each with its [`Linker`] (WASI and the
//! `braid:agent/host` imports), the epoch ticker thread, and a semaphore that makes excess
//! executions wait for a free instance slot instead of failing. Loading an agent compiles
//! and links its component once ([`Agent`]); every execution gets a fresh `Store` with its
//! own limits, captured logs and configuration ([`Sandbox::execute`]).
//!
//! It knows nothing of workflows, runs or databases: callers hand it a component, an input
//! and limits, and get back an [`Execution`] that says how it ended.
//!
//! WASI is denied by default: no preopened directories, no environment, no arguments, no
//! sockets or name lookups, stdin empty; stdout and stderr are captured into the logs.
//! `wasi:http` is linked for every agent, so components that import it load, and every
//! request is refused unless the step grants its host (see `http`).

mod agent;
mod bindings;
mod epoch;
mod execution;
mod http;
mod limiter;
mod logs;
mod outcome;

pub use agent::{Agent, LoadError, Metering};
pub use execution::{Prepared, human_bytes};
pub use logs::{LogLevel, LogLine, LogSource};
pub use outcome::{Execution, Outcome};

use bindings::AgentPre;
use epoch::EpochTicker;
use execution::StepState;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use wasmtime::component::Linker;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

const MIB: u64 = 1024 * 1024;

/// What one instance slot of the pool holds, per component instance: room for the largest
/// agents there are, with headroom — a componentize-py component instantiates 14 core
/// modules, a ComponentizeJS one 4, a Rust one 3. The pool holds `max_instances` slots of
/// these, so an execution that has a slot always fits, and a fan-out of heavy agents waits
/// for a slot instead of failing. A component that needs more than one slot holds is refused at load,
/// with wasmtime's message naming the limit and what it needs.
pub const CORE_INSTANCES_PER_SLOT: u32 = 32;
/// Linear memories per slot (each reserves address space for the host's maximum memory).
pub const MEMORIES_PER_SLOT: u32 = 4;
/// Tables per slot.
pub const TABLES_PER_SLOT: u32 = 32;

/// Which instance allocator the engine uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AllocatorChoice {
    /// Pooling when the address space allows it, on-demand otherwise (the default).
    #[default]
    Auto,
    /// Pooling, or fail.
    Pooling,
    /// A fresh allocation per instance: slower, but needs no address space up front.
    OnDemand,
}

/// Host-wide settings of a sandbox. Per-step settings are [`Limits`].
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// How many instances may be live at once, host-wide. The instance pool is sized for
    /// it; executions beyond it wait.
    pub max_instances: u32,
    /// The most memory any one step may be given; per-step limits above it are refused.
    pub max_memory_bytes: u64,
    /// Limits for executions that do not set their own.
    pub default_limits: Limits,
    /// Largest input accepted, in bytes of JSON.
    pub max_input_bytes: usize,
    /// Largest output accepted, in bytes of JSON; more is `invalid_output`.
    pub max_output_bytes: usize,
    /// Log bytes kept per execution; more is dropped and counted.
    pub max_log_bytes: usize,
    /// How often the epoch advances: the granularity of deadlines and cancellation, and
    /// how often a busy guest yields to other tasks.
    pub epoch_tick: Duration,
    pub allocator: AllocatorChoice,
    /// The longest an execution waits for an instance slot before it ends as `timeout`
    /// (retryable). Separate from the step's own deadline, which starts once it has a slot.
    pub max_queue_wait: Duration,
    /// Outbound HTTP: the ceiling, private networks, per-execution limits.
    pub outbound: crate::outbound::OutboundConfig,
    /// How the instance pool resets memory between instances.
    pub pool: PoolTuning,
    /// Count fuel in every step and record `fuel_consumed` for each (`--meter-fuel`).
    /// Otherwise only steps with a fuel budget run metered code: counting fuel makes guest
    /// code ~1.2× slower (README, "Benchmarks").
    pub meter_fuel: bool,
}

/// How the pooling allocator resets an instance's memory for the next one: the levers the
/// sandbox bench measures one at a time (README, "Benchmarks"). The defaults are the fastest
/// measured; the fields exist so that the bench can turn each off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolTuning {
    /// Bytes at the bottom of each linear memory that are reset in place (and stay resident)
    /// instead of being handed back to the kernel, which would fault them in again, zeroed,
    /// on the next instance's first touch. Rust guests keep their shadow stack there (1 MiB
    /// unless linked otherwise), then their data and heap.
    pub memory_keep_resident: usize,
    /// Reset only the pages an instance actually dirtied, found with Linux's `PAGEMAP_SCAN`
    /// (kernel 6.7 and later; on older kernels the sandbox warns once at start): without it
    /// the whole kept-resident region is `memset` every time, touched or not.
    pub pagemap_scan: bool,
}

impl Default for PoolTuning {
    fn default() -> Self {
        PoolTuning { memory_keep_resident: 1 << 20, pagemap_scan: true }
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            max_instances: 128,
            max_memory_bytes: crate::limits::MAX_STEP_MEMORY_MB * MIB,
            default_limits: Limits::default(),
            max_input_bytes: 8 << 20,
            max_output_bytes: 8 << 20,
            max_log_bytes: 256 * 1024,
            epoch_tick: Duration::from_millis(5),
            allocator: AllocatorChoice::Auto,
            max_queue_wait: Duration::from_secs(600),
            outbound: crate::outbound::OutboundConfig::default(),
            pool: PoolTuning::default(),
            meter_fuel: false,
        }
    }
}

/// Per-execution limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time for instantiation plus the call.
    pub timeout: Duration,
    /// Linear memory, over all memories of the instance.
    pub memory_bytes: u64,
    /// A deterministic CPU budget in wasmtime fuel units (roughly one per instruction).
    /// With a budget the step runs metered code and records the fuel it burned; without
    /// one it is not metered unless the sandbox meters every step
    /// ([`SandboxConfig::meter_fuel`]).
    pub fuel: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { timeout: Duration::from_secs(30), memory_bytes: 128 * MIB, fuel: None }
    }
}

/// Where a call sits in a workflow run (the WIT `step-context`).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct StepContext {
    pub run_id: String,
    pub step_id: String,
    pub branch: Option<String>,
    pub item_index: Option<u32>,
    /// Counts from 1.
    pub attempt: u32,
    /// The same for every attempt of one step execution (`host.idempotency-key`).
    pub idempotency_key: String,
}

/// One execution to perform.
#[derive(Debug, Clone)]
pub struct ExecutionRequest {
    pub context: StepContext,
    /// JSON text; callers produce it with serde, so it is not parsed again here.
    pub input: String,
    /// `None` takes the sandbox's default limits.
    pub limits: Option<Limits>,
    /// Values the guest can read with `host.config`.
    pub config: Arc<BTreeMap<String, String>>,
    /// Cancelling it interrupts the execution (within one epoch tick), which then ends
    /// as `cancelled`.
    pub cancel: CancellationToken,
    /// Where the guest may send HTTP requests (none by default).
    pub allowed_hosts: Arc<crate::outbound::HostPatterns>,
}

impl ExecutionRequest {
    /// A request with default limits, no config and a fresh cancellation token.
    pub fn new(context: StepContext, input: String) -> Self {
        // One empty config and one empty grant list for every such request.
        static NO_CONFIG: std::sync::LazyLock<Arc<BTreeMap<String, String>>> = std::sync::LazyLock::new(Arc::default);
        static NO_HOSTS: std::sync::LazyLock<Arc<crate::outbound::HostPatterns>> =
            std::sync::LazyLock::new(Arc::default);
        ExecutionRequest {
            context,
            input,
            limits: None,
            config: NO_CONFIG.clone(),
            cancel: CancellationToken::new(),
            allowed_hosts: NO_HOSTS.clone(),
        }
    }
}

/// Why a sandbox could not be created.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("could not configure the wasmtime engine: {0}")]
    Engine(String),
    #[error("could not start the epoch ticker thread: {0}")]
    Ticker(#[from] std::io::Error),
    #[error(transparent)]
    Outbound(#[from] crate::outbound::ClientError),
}

/// Why an execution was refused before it started. Everything that happens once the guest
/// runs is an [`Outcome`] instead.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    #[error("the input is {size} bytes, over the cap of {cap} bytes")]
    InputTooLarge { size: usize, cap: usize },
    #[error("a memory limit of {requested} bytes is above the host's maximum of {max} bytes")]
    MemoryAboveMax { requested: u64, max: u64 },
    #[error("the sandbox failed to set up the execution: {0}")]
    Host(String),
}

/// One of the sandbox's instance slots, held until dropped: an execution runs in one.
pub struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    /// How long it took to get.
    queued: Duration,
}

/// The process's wasmtime host for agents. Cheap to share behind an `Arc`.
pub struct Sandbox {
    /// The engine of each [`Metering`], built on first use (the default one at start).
    engines: [OnceLock<MeteredEngine>; 2],
    /// Held while an engine is being built, so that only one is.
    building: Mutex<()>,
    outbound: Arc<crate::outbound::Outbound>,
    /// The instance slots of every engine together: the host-wide bound.
    instance_slots: Arc<Semaphore>,
    config: SandboxConfig,
    // Last: stop ticking only after everything else is torn down.
    ticker: EpochTicker,
}

/// One wasmtime engine, with or without fuel metering, and its linker. Each has a pool of
/// `max_instances` slots: the sandbox's semaphore bounds them together.
struct MeteredEngine {
    engine: Engine,
    linker: Linker<StepState>,
    pooling: bool,
}

impl Sandbox {
    /// Builds the default engine (probing for the pooling allocator), its linker and the
    /// ticker.
    pub fn new(config: SandboxConfig) -> Result<Self, SandboxError> {
        let outbound = Arc::new(crate::outbound::Outbound::new(config.outbound.clone())?);
        let sandbox = Sandbox {
            engines: [OnceLock::new(), OnceLock::new()],
            building: Mutex::new(()),
            outbound,
            instance_slots: Arc::new(Semaphore::new(config.max_instances as usize)),
            ticker: EpochTicker::start(config.epoch_tick)?,
            config,
        };
        sandbox.engine_for(sandbox.default_metering())?;
        Ok(sandbox)
    }

    /// How a step with this fuel budget (or none) runs: metered when it has a budget or
    /// when the sandbox meters every step.
    pub fn metering(&self, fuel: Option<u64>) -> Metering {
        if fuel.is_some() { Metering::Metered } else { self.default_metering() }
    }

    /// How agents are loaded unless a budget asks for metering.
    pub fn default_metering(&self) -> Metering {
        if self.config.meter_fuel { Metering::Metered } else { Metering::Unmetered }
    }

    /// The engine of `metering`, built now if this is its first use.
    fn engine_for(&self, metering: Metering) -> Result<&MeteredEngine, SandboxError> {
        let cell = &self.engines[metering as usize];
        if let Some(engine) = cell.get() {
            return Ok(engine);
        }
        let _building = self.building.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(engine) = cell.get() {
            return Ok(engine);
        }
        let built = MeteredEngine::build(&self.config, metering)?;
        self.ticker.tick(&built.engine);
        Ok(cell.get_or_init(|| built))
    }

    /// The host-wide settings.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// Whether instances come from the pooling allocator.
    pub fn is_pooling(&self) -> bool {
        self.engine_for(self.default_metering()).is_ok_and(|engine| engine.pooling)
    }

    /// Instances live right now.
    pub fn live_instances(&self) -> usize {
        self.config.max_instances as usize - self.instance_slots.available_permits()
    }
}

impl MeteredEngine {
    /// An engine (pooling if the configuration and the address space allow) and its linker.
    fn build(config: &SandboxConfig, metering: Metering) -> Result<MeteredEngine, SandboxError> {
        let (engine, pooling) = match config.allocator {
            AllocatorChoice::OnDemand => (build_engine(config, metering, false)?, false),
            AllocatorChoice::Pooling => (build_engine(config, metering, true)?, true),
            AllocatorChoice::Auto => match build_engine(config, metering, true) {
                Ok(engine) => (engine, true),
                Err(err) => {
                    tracing::warn!("pooling allocator unavailable ({err}); using on-demand allocation");
                    (build_engine(config, metering, false)?, false)
                }
            },
        };
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| SandboxError::Engine(format!("{e:#}")))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| SandboxError::Engine(format!("{e:#}")))?;
        bindings::Agent::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |state| state)
            .map_err(|e| SandboxError::Engine(format!("{e:#}")))?;
        Ok(MeteredEngine { engine, linker, pooling })
    }

    fn instantiate_pre(&self, component: &wasmtime::component::Component) -> wasmtime::Result<AgentPre<StepState>> {
        AgentPre::new(self.linker.instantiate_pre(component)?)
    }
}

fn build_engine(config: &SandboxConfig, metering: Metering, pooling: bool) -> Result<Engine, SandboxError> {
    let mut wasm = Config::new();
    wasm.epoch_interruption(true)
        .consume_fuel(metering == Metering::Metered)
        .wasm_component_model(true)
        // Guests get 512 KiB of native stack for wasm frames; deeper recursion traps.
        .max_wasm_stack(512 * 1024);
    if pooling {
        let slots = config.max_instances;
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(slots)
            .total_core_instances(slots * CORE_INSTANCES_PER_SLOT)
            .max_core_instances_per_component(CORE_INSTANCES_PER_SLOT)
            .total_memories(slots * MEMORIES_PER_SLOT)
            .max_memories_per_component(MEMORIES_PER_SLOT)
            .total_tables(slots * TABLES_PER_SLOT)
            .max_tables_per_component(TABLES_PER_SLOT)
            .total_stacks(slots)
            .max_memory_size(usize::try_from(config.max_memory_bytes).unwrap_or(usize::MAX))
            // Reset small memories and tables in place instead of with madvise: the
            // biggest lever on instantiation cost (README, "Benchmarks").
            .linear_memory_keep_resident(config.pool.memory_keep_resident)
            .table_keep_resident(64 * 1024)
            .pagemap_scan(if config.pool.pagemap_scan { Enabled::Auto } else { Enabled::No });
        wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        if config.pool.pagemap_scan && !PoolingAllocationConfig::is_pagemap_scan_available() {
            tracing::warn!(
                "this kernel has no PAGEMAP_SCAN (Linux 6.7 or later): every instance resets all of its \
                 resident memory, which makes steps slower (README, \"Benchmarks\")"
            );
        }
    }
    let engine = Engine::new(&wasm).map_err(|e| SandboxError::Engine(format!("{e:#}")))?;
    if pooling {
        // Pool address space is reserved lazily on some systems: prove one slot works now
        // rather than failing on the first step.
        probe_pool(&engine, metering).map_err(|e| SandboxError::Engine(format!("{e:#}")))?;
    }
    Ok(engine)
}

/// Instantiates an empty component once, to find out whether the pool can be used.
fn probe_pool(engine: &Engine, metering: Metering) -> wasmtime::Result<()> {
    let component = wasmtime::component::Component::new(
        engine,
        "(component (core module $m (memory 1)) (core instance (instantiate $m)))",
    )?;
    let mut store = wasmtime::Store::new(engine, ());
    if metering == Metering::Metered {
        store.set_fuel(u64::MAX)?;
    }
    store.set_epoch_deadline(u64::MAX / 2);
    wasmtime::component::Linker::<()>::new(engine).instantiate(&mut store, &component)?;
    Ok(())
}
