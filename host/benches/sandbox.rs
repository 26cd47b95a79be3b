//! The sandbox's cost per step: a fresh instance plus one call of a trivial agent (`echo`,
//! ~200 bytes of JSON in and out), measured through `Sandbox::execute` next to a bare
//! wasmtime loop over the same component in the same run, plus throughput with 64 calls
//! in flight. Prints a Markdown table; the README's "Benchmarks" section quotes it.
//!
//! Run: `cargo bench -p braid --bench sandbox` (add `-- --calls N` to change the count).
//!
//! Scope: one component, no workflow and no database; the end-to-end figures live with
//! the workflow benchmarks.

use braid::sandbox::{ExecutionRequest, Outcome, Sandbox, SandboxConfig, StepContext};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

mod bare {
    wasmtime::component::bindgen!({ world: "agent", path: "../guest-sdk/wit", exports: { default: async } });
}

const INPUT: &str = r#"{"request":"summarise","text":"Braid runs each step of a workflow in its own sandboxed WebAssembly instance.","tags":["bench","echo","json"],"limits":{"words":40,"style":"short"},"n":12345}"#;
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
}

impl BareLoop {
    fn new(config: &Config, wasm: &[u8]) -> Self {
        let engine = Engine::new(config).unwrap();
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
        bare::Agent::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).unwrap();
        let component = Component::new(&engine, wasm).unwrap();
        let pre = bare::AgentPre::new(linker.instantiate_pre(&component).unwrap()).unwrap();
        BareLoop { engine, pre }
    }

    async fn call(&self) {
        let mut store =
            Store::new(&self.engine, BareState { wasi: WasiCtx::builder().build(), table: ResourceTable::new() });
        let agent = self.pre.instantiate_async(&mut store).await.unwrap();
        let ctx = bare::braid::agent::types::StepContext {
            run_id: "bench".into(),
            step_id: "echo".into(),
            branch: None,
            item_index: None,
            attempt: 1,
        };
        let output = agent.call_run(&mut store, &ctx, INPUT).await.unwrap();
        assert!(output.is_ok());
    }
}

fn pooled_config() -> Config {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(128)
        .total_core_instances(1024)
        .total_memories(256)
        .total_tables(1024)
        .total_stacks(128)
        .linear_memory_keep_resident(1 << 20)
        .table_keep_resident(64 * 1024);
    let mut config = Config::new();
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

struct Figures {
    median: Duration,
    p99: Duration,
    per_second: f64,
}

/// Times `calls` sequential calls one by one (median, p99), then `calls` more with
/// `IN_FLIGHT` at once (calls per second).
async fn measure<F, Fut>(calls: usize, call: F) -> Figures
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    for _ in 0..calls / 10 {
        call().await;
    }
    let mut samples = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        call().await;
        samples.push(started.elapsed());
    }
    samples.sort();
    let median = samples[calls / 2];
    let p99 = samples[calls * 99 / 100];

    let call = Arc::new(call);
    let permits = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..calls {
        let permit = permits.clone().acquire_owned().await.unwrap();
        let call = call.clone();
        tasks.spawn(async move {
            call().await;
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
    let per_second = calls as f64 / started.elapsed().as_secs_f64();
    Figures { median, p99, per_second }
}

fn native_echo() -> Duration {
    let runs = 100_000;
    let started = Instant::now();
    for _ in 0..runs {
        let value: serde_json::Value = serde_json::from_str(std::hint::black_box(INPUT)).unwrap();
        std::hint::black_box(serde_json::to_string(&value).unwrap());
    }
    started.elapsed() / runs
}

/// The same allocator as the `braid` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let calls = std::env::args()
        .skip_while(|arg| arg != "--calls")
        .nth(1)
        .map(|n| n.parse().expect("--calls N"))
        .unwrap_or(10_000);
    let wasm = braid_test_artifacts::agent_bytes("echo");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();

    let sandbox = Arc::new(Sandbox::new(SandboxConfig::default()).unwrap());
    assert!(sandbox.is_pooling(), "the benchmark expects the pooling allocator");
    let agent = sandbox.load(&wasm).unwrap();
    let braid = runtime.block_on(measure(calls, move || {
        let (sandbox, agent) = (sandbox.clone(), agent.clone());
        async move {
            let request = ExecutionRequest::new(
                StepContext { run_id: "bench".into(), step_id: "echo".into(), attempt: 1, ..StepContext::default() },
                INPUT.to_owned(),
            );
            let execution = sandbox.execute(&agent, request).await.unwrap();
            assert_eq!(execution.outcome, Outcome::Succeeded);
        }
    }));

    let bare_pooled = Arc::new(BareLoop::new(&pooled_config(), &wasm));
    let bare_pooled = runtime.block_on(measure(calls, move || {
        let bare = bare_pooled.clone();
        async move { bare.call().await }
    }));
    let bare_default = Arc::new(BareLoop::new(&Config::new(), &wasm));
    let bare_default = runtime.block_on(measure(calls, move || {
        let bare = bare_default.clone();
        async move { bare.call().await }
    }));
    let native = native_echo();

    println!("{calls} calls of the `echo` agent ({} bytes of JSON); {IN_FLIGHT} in flight for calls/s\n", INPUT.len());
    println!("| setup | median | p99 | calls/s ({IN_FLIGHT} in flight) | median vs bare pooled |");
    println!("|---|---|---|---|---|");
    for (name, f) in [
        ("braid `Sandbox::execute` (pooling, limits, fuel, epochs, log capture)", &braid),
        ("bare wasmtime loop, same pooling config", &bare_pooled),
        ("bare wasmtime loop, default config (on-demand)", &bare_default),
    ] {
        println!(
            "| {name} | {:.1} µs | {:.1} µs | {:.0} | {:.2}× |",
            micros(f.median),
            micros(f.p99),
            f.per_second,
            micros(f.median) / micros(bare_pooled.median)
        );
    }
    println!("| native Rust, same logic (parse + serialise) | {:.2} µs | | | |", micros(native));

    // Agents by language: the same word count in Rust, Python (componentize-py) and
    // JavaScript (ComponentizeJS).
    let languages = [
        ("Rust (`word-count`)", "word-count"),
        ("Python (`word-count-py`)", "word-count-py"),
        ("JavaScript (`word-count-js`)", "word-count-js"),
    ];
    let mut rows = Vec::new();
    for (label, name) in languages {
        let sandbox = Arc::new(Sandbox::new(SandboxConfig::default()).unwrap());
        let agent = sandbox.load(&braid_test_artifacts::agent_bytes(name)).unwrap();
        let figures = runtime.block_on(measure(LANGUAGE_CALLS, move || {
            let (sandbox, agent) = (sandbox.clone(), agent.clone());
            async move {
                let request = ExecutionRequest::new(
                    StepContext {
                        run_id: "bench".into(),
                        step_id: "count".into(),
                        attempt: 1,
                        ..StepContext::default()
                    },
                    WORDS.to_owned(),
                );
                let execution = sandbox.execute(&agent, request).await.unwrap();
                assert_eq!(execution.outcome, Outcome::Succeeded, "{:?}", execution.error);
            }
        }));
        rows.push((label, figures));
    }
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
