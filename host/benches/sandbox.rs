//! The sandbox's cost per step: a fresh instance plus one call of a trivial agent (`echo`,
//! ~200 bytes of JSON in and out) and of a realistic one (`price-order`, ~1 KB of JSON into
//! typed structs and ~1 KB back, built exactly as the README tells users to build an agent),
//! each measured through `Sandbox::execute` next to a bare wasmtime loop over the same
//! component in the same run, plus throughput with 64 calls in flight; the realistic agent
//! also fuel-metered (as a step with a `fuel` budget runs), on the bare loop and through
//! Braid, and on a bare loop with epoch interruption (which Braid's timeouts need); then
//! with each lever of the instance pool turned off in turn. Prints Markdown tables; the
//! README's "Benchmarks" section quotes them.
//!
//! Run: `cargo bench -p braid --bench sandbox` (add `-- --calls N` to change the count).
//!
//! Scope: one component, no workflow and no database; the end-to-end figures live with
//! the workflow benchmarks.

use braid::sandbox::{ExecutionRequest, Outcome, PoolTuning, Sandbox, SandboxConfig, StepContext};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

mod bare {
    wasmtime::component::bindgen!({ world: "agent", path: "../guest-sdk/wit", exports: { default: async } });
}

const INPUT: &str = r#"{"request":"summarise","text":"Braid runs each step of a workflow in its own sandboxed WebAssembly instance.","tags":["bench","echo","json"],"limits":{"words":40,"style":"short"},"n":12345}"#;
/// The realistic agent's input: an order of seven lines, ~1.1 KB.
const ORDER: &str = include_str!("../../examples/agents/price-order/order.json");
const IN_FLIGHT: usize = 64;

/// The bare loop's store: WASI with defaults and the two host functions, nothing else.
struct BareState {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for BareState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}
impl bare::braid::agent::types::Host for BareState {}
impl bare::braid::agent::host::Host for BareState {
    fn log(&mut self, _level: bare::braid::agent::host::LogLevel, _message: String) {}
    fn idempotency_key(&mut self) -> String {
        String::new()
    }
    fn config(&mut self, _key: String) -> Option<String> {
        None
    }
}

/// A bare wasmtime setup: `InstancePre` once, a fresh `Store` and instance per call.
struct BareLoop {
    engine: Engine,
    pre: bare::AgentPre<BareState>,
    input: &'static str,
    fuel: bool,
}

impl BareLoop {
    fn new(config: &Config, wasm: &[u8], input: &'static str) -> Self {
        let engine = Engine::new(config).unwrap();
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
        bare::Agent::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).unwrap();
        let component = Component::new(&engine, wasm).unwrap();
        let pre = bare::AgentPre::new(linker.instantiate_pre(&component).unwrap()).unwrap();
        let fuel = engine.get_consume_fuel();
        BareLoop { engine, pre, input, fuel }
    }

    async fn call(&self) {
        let mut store =
            Store::new(&self.engine, BareState { wasi: WasiCtx::builder().build(), table: ResourceTable::new() });
        // Never reached (nothing advances this engine's epoch); ignored without epochs.
        store.set_epoch_deadline(u64::MAX / 2);
        if self.fuel {
            store.set_fuel(u64::MAX).unwrap();
        }
        let agent = self.pre.instantiate_async(&mut store).await.unwrap();
        let ctx = bare::braid::agent::types::StepContext {
            run_id: "bench".into(),
            step_id: "step".into(),
            branch: None,
            item_index: None,
            attempt: 1,
        };
        let output = agent.call_run(&mut store, &ctx, self.input).await.unwrap();
        assert!(output.is_ok(), "{output:?}");
    }
}

/// What the bare loop's code checks besides the guest's own work.
#[derive(Clone, Copy, PartialEq)]
enum Checks {
    None,
    /// Fuel metering (as a step with a `fuel` budget runs).
    Fuel,
    /// Epoch interruption (as every Braid step runs: its timeout and cancellation).
    Epochs,
}

/// The bare loop's pool: the same settings as Braid's (`tuning`), with the `checks` given.
fn pooled_config(tuning: PoolTuning, checks: Checks) -> Config {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(128)
        .total_core_instances(1024)
        .total_memories(256)
        .total_tables(1024)
        .total_stacks(128)
        .linear_memory_keep_resident(tuning.memory_keep_resident)
        .table_keep_resident(64 * 1024)
        .pagemap_scan(if tuning.pagemap_scan { wasmtime::Enabled::Auto } else { wasmtime::Enabled::No });
    let mut config = Config::new();
    config
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .consume_fuel(checks == Checks::Fuel)
        .epoch_interruption(checks == Checks::Epochs);
    config
}

struct Figures {
    median: Duration,
    p99: Duration,
    per_second: f64,
}

/// One way of running the agent: through Braid's sandbox, or through a bare loop.
enum Setup {
    Braid { sandbox: Arc<Sandbox>, agent: braid::sandbox::Agent, input: &'static str },
    Bare(BareLoop),
}

impl Setup {
    /// `wasm` through `Sandbox::execute` with `config`.
    fn braid(config: SandboxConfig, wasm: &[u8], input: &'static str) -> Setup {
        let sandbox = Arc::new(Sandbox::new(config).unwrap());
        assert!(sandbox.is_pooling(), "the benchmark expects the pooling allocator");
        let agent = sandbox.load(wasm).unwrap();
        Setup::Braid { sandbox, agent, input }
    }

    /// `wasm` through a bare wasmtime loop with `config`.
    fn bare(config: &Config, wasm: &[u8], input: &'static str) -> Setup {
        Setup::Bare(BareLoop::new(config, wasm, input))
    }

    async fn call(&self) {
        match self {
            Setup::Braid { sandbox, agent, input } => {
                let request = ExecutionRequest::new(
                    StepContext {
                        run_id: "bench".into(),
                        step_id: "step".into(),
                        attempt: 1,
                        ..StepContext::default()
                    },
                    (*input).to_owned(),
                );
                let execution = sandbox.execute(agent, request).await.unwrap();
                assert_eq!(execution.outcome, Outcome::Succeeded, "{:?}", execution.error);
            }
            Setup::Bare(bare) => bare.call().await,
        }
    }
}

/// Rounds the sequential calls are interleaved in.
const ROUNDS: usize = 20;

/// Times `calls` sequential calls of each setup one by one (median, p99), interleaved:
/// `ROUNDS` rounds that each give every setup its share in turn, so that whatever the
/// machine does meanwhile falls on all of them alike; then `calls` more of each with
/// `IN_FLIGHT` at once (calls per second).
fn measure<const N: usize>(runtime: &tokio::runtime::Runtime, calls: usize, setups: [Setup; N]) -> [Figures; N] {
    let setups: Vec<Arc<Setup>> = setups.into_iter().map(Arc::new).collect();
    runtime.block_on(async {
        for setup in &setups {
            for _ in 0..calls / 10 {
                setup.call().await;
            }
        }
        let mut samples = vec![Vec::with_capacity(calls); setups.len()];
        for _ in 0..ROUNDS {
            for (setup, samples) in setups.iter().zip(&mut samples) {
                for _ in 0..calls / ROUNDS {
                    let started = Instant::now();
                    setup.call().await;
                    samples.push(started.elapsed());
                }
            }
        }
        let mut figures = Vec::new();
        for (setup, mut samples) in setups.iter().zip(samples) {
            samples.sort();
            let median = samples[samples.len() / 2];
            let p99 = samples[samples.len() * 99 / 100];
            let permits = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
            let started = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..calls {
                let permit = permits.clone().acquire_owned().await.unwrap();
                let setup = setup.clone();
                tasks.spawn(async move {
                    setup.call().await;
                    drop(permit);
                });
            }
            while tasks.join_next().await.is_some() {}
            let per_second = calls as f64 / started.elapsed().as_secs_f64();
            figures.push(Figures { median, p99, per_second });
        }
        figures.try_into().unwrap_or_else(|_| unreachable!("one figure per setup"))
    })
}

/// Native Rust doing the JSON part of the work: parse `input` and serialise it again.
fn native_json(input: &str) -> Duration {
    let runs = 100_000;
    let started = Instant::now();
    for _ in 0..runs {
        let value: serde_json::Value = serde_json::from_str(std::hint::black_box(input)).unwrap();
        std::hint::black_box(serde_json::to_string(&value).unwrap());
    }
    started.elapsed() / runs
}

/// The same allocator as the `braid` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Prints one table of `(setup, figures)` rows with each median as a ratio of `baseline`'s.
fn print_table(heading: &str, ratio_column: &str, baseline: &Figures, rows: &[(&str, &Figures)]) {
    println!("\n{heading}\n");
    println!("| setup | median | p99 | calls/s ({IN_FLIGHT} in flight) | {ratio_column} |");
    println!("|---|---|---|---|---|");
    for (name, f) in rows {
        println!(
            "| {name} | {:.1} µs | {:.1} µs | {:.0} | {:.2}× |",
            micros(f.median),
            micros(f.p99),
            f.per_second,
            micros(f.median) / micros(baseline.median)
        );
    }
}

fn main() {
    let calls = std::env::args()
        .skip_while(|arg| arg != "--calls")
        .nth(1)
        .map(|n| n.parse().expect("--calls N"))
        .unwrap_or(10_000);
    // As the `braid` binary does.
    braid::cli::allow_transparent_huge_pages(false);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let defaults = PoolTuning::default();

    // The trivial agent, built with the repository's agent profile and small stack.
    let echo = braid_test_artifacts::agent_bytes("echo");
    let [braid, bare_pooled] = measure(
        &runtime,
        calls,
        [
            Setup::braid(SandboxConfig::default(), &echo, INPUT),
            Setup::bare(&pooled_config(defaults, Checks::None), &echo, INPUT),
        ],
    );
    // On its own: its mappings and unmappings would slow whatever runs beside it.
    let [bare_default] = measure(&runtime, calls, [Setup::bare(&Config::new(), &echo, INPUT)]);
    print_table(
        &format!("{calls} calls of the `echo` agent ({} bytes of JSON)", INPUT.len()),
        "median vs bare pooled",
        &bare_pooled,
        &[
            ("braid `Sandbox::execute` (pooling, limits, epochs, log capture, output checked)", &braid),
            ("bare wasmtime loop, same pooling config", &bare_pooled),
            ("bare wasmtime loop, default config (on-demand)", &bare_default),
        ],
    );
    println!("| native Rust, same JSON (parse + serialise) | {:.2} µs | | | |", micros(native_json(INPUT)));

    // The realistic agent, built as users build one: `cargo build --release`, no flags.
    let order_path = braid_test_artifacts::agent_path_as_users_build("price-order");
    let order = std::fs::read(&order_path).unwrap_or_else(|e| panic!("{}: {e}", order_path.display()));
    let metered = SandboxConfig { meter_fuel: true, ..SandboxConfig::default() };
    let [braid, braid_fuel, bare_pooled, bare_fuel, bare_epochs] = measure(
        &runtime,
        calls,
        [
            Setup::braid(SandboxConfig::default(), &order, ORDER),
            Setup::braid(metered, &order, ORDER),
            Setup::bare(&pooled_config(defaults, Checks::None), &order, ORDER),
            Setup::bare(&pooled_config(defaults, Checks::Fuel), &order, ORDER),
            Setup::bare(&pooled_config(defaults, Checks::Epochs), &order, ORDER),
        ],
    );
    let [bare_default] = measure(&runtime, calls, [Setup::bare(&Config::new(), &order, ORDER)]);
    print_table(
        &format!(
            "{calls} calls of the realistic `price-order` agent ({} bytes of JSON in, built with plain `cargo build --release`, {} KiB)",
            ORDER.len(),
            order.len() / 1024
        ),
        "median vs bare pooled",
        &bare_pooled,
        &[
            ("braid `Sandbox::execute` (pooling, limits, epochs, log capture, output checked)", &braid),
            ("braid `Sandbox::execute`, fuel metered (a step with a `fuel` budget, or `--meter-fuel`)", &braid_fuel),
            ("bare wasmtime loop, same pooling config", &bare_pooled),
            ("bare wasmtime loop, same pooling config, fuel metered", &bare_fuel),
            ("bare wasmtime loop, same pooling config, epoch interruption (as Braid's timeouts need)", &bare_epochs),
            ("bare wasmtime loop, default config (on-demand)", &bare_default),
        ],
    );
    println!("| native Rust, same JSON (parse + serialise as `Value`) | {:.2} µs | | | |", micros(native_json(ORDER)));

    // The levers, one at a time, on the realistic agent through Braid.
    let with_pool = |pool: PoolTuning| SandboxConfig { pool, ..SandboxConfig::default() };
    let small_stack = std::fs::read(braid_test_artifacts::agent_path_small_stack("price-order")).unwrap();
    let [no_pagemap, nothing_resident, more_resident, small_stack] = measure(
        &runtime,
        calls,
        [
            Setup::braid(with_pool(PoolTuning { pagemap_scan: false, ..defaults }), &order, ORDER),
            Setup::braid(with_pool(PoolTuning { memory_keep_resident: 0, ..defaults }), &order, ORDER),
            Setup::braid(with_pool(PoolTuning { memory_keep_resident: 4 << 20, ..defaults }), &order, ORDER),
            Setup::braid(SandboxConfig::default(), &small_stack, ORDER),
        ],
    );
    // A process-wide setting of the allocator, so measured on its own.
    braid::cli::allow_transparent_huge_pages(true);
    let [huge_pages] = measure(&runtime, calls, [Setup::braid(SandboxConfig::default(), &order, ORDER)]);
    braid::cli::allow_transparent_huge_pages(false);
    print_table(
        "The levers, one at a time: `price-order` through `Sandbox::execute`",
        "median vs Braid's defaults",
        &braid,
        &[
            ("Braid's defaults (1 MiB kept resident, dirty pages found with `PAGEMAP_SCAN`, no huge pages)", &braid),
            ("without `PAGEMAP_SCAN` (the whole 1 MiB reset with `memset`)", &no_pagemap),
            ("nothing kept resident (every page `madvise`d away, faulted in again)", &nothing_resident),
            ("4 MiB kept resident", &more_resident),
            ("transparent huge pages for the host's heap (mimalloc's default)", &huge_pages),
            ("the agent linked with a 64 KiB shadow stack (`-zstack-size=65536`)", &small_stack),
        ],
    );
    println!(
        "\nFuel metering: {:.2}× the median without it on the bare loop, {:.2}× through `Sandbox::execute` (same component)",
        micros(bare_fuel.median) / micros(bare_pooled.median),
        micros(braid_fuel.median) / micros(braid.median)
    );
    println!(
        "Epoch interruption: {:.2}× the median without it on the bare loop; Braid is {:.2}× the bare loop that has it",
        micros(bare_epochs.median) / micros(bare_pooled.median),
        micros(braid.median) / micros(bare_epochs.median)
    );

    // Agents by language: the same word count in Rust, Python (componentize-py) and
    // JavaScript (ComponentizeJS).
    let languages = [
        ("Rust (`word-count`)", "word-count"),
        ("Python (`word-count-py`)", "word-count-py"),
        ("JavaScript (`word-count-js`)", "word-count-js"),
    ];
    let setups = languages
        .map(|(_, name)| Setup::braid(SandboxConfig::default(), &braid_test_artifacts::agent_bytes(name), WORDS));
    let rows: Vec<(&str, Figures)> =
        languages.iter().map(|(label, _)| *label).zip(measure(&runtime, LANGUAGE_CALLS, setups)).collect();
    println!(
        "\n{LANGUAGE_CALLS} calls of a word count by language (fresh instance + call each); {IN_FLIGHT} in flight for calls/s\n"
    );
    println!("| agent | median | p99 | calls/s ({IN_FLIGHT} in flight) | median vs Rust |");
    println!("|---|---|---|---|---|");
    for (label, f) in &rows {
        println!(
            "| {label} | {:.2} ms | {:.2} ms | {:.0} | {:.1}× |",
            micros(f.median) / 1000.0,
            micros(f.p99) / 1000.0,
            f.per_second,
            micros(f.median) / micros(rows[0].1.median)
        );
    }
}

/// Calls per language: a Python or JavaScript instance costs milliseconds, not microseconds.
const LANGUAGE_CALLS: usize = 1000;
const WORDS: &str = r#"{"text": "Braid runs every step of a workflow in its own sandbox, in Rust or in Python."}"#;

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}
