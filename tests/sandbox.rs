//! The sandbox against real components: the example agents give the right answers, and
//! the `misbehave` test agent proves that every limit and every denial ends with the right
//! outcome — and that the same sandbox goes on serving afterwards.

use braid::sandbox::{
    Agent, ExecuteError, Execution, ExecutionRequest, Limits, LoadError, LogSource, Metering, Outcome, Sandbox,
    SandboxConfig, StepContext,
};
use braid_test_artifacts::{agent_bytes, agent_path};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// One sandbox for every test in this file, as in a real host: misbehaviour in one test
/// must not disturb the others.
fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| {
        Sandbox::new(SandboxConfig {
            max_instances: 16,
            max_output_bytes: MIB as usize,
            max_input_bytes: MIB as usize,
            max_log_bytes: 16 * 1024,
            ..SandboxConfig::default()
        })
        .expect("sandbox")
    })
}

fn agent(name: &str) -> Agent {
    sandbox().load(&agent_bytes(name)).unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

/// The misbehaving agent, loaded for plain and for fuel-metered code (steps with a budget).
fn misbehave() -> &'static Agent {
    static AGENT: OnceLock<Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        let metered = sandbox().load_for(&agent_bytes("misbehave"), Metering::Metered).expect("metered misbehave");
        agent("misbehave").merge(&metered)
    })
}

fn request(input: Value) -> ExecutionRequest {
    ExecutionRequest {
        limits: Some(Limits { timeout: Duration::from_secs(10), memory_bytes: 32 * MIB, fuel: None }),
        ..ExecutionRequest::new(
            StepContext { run_id: "run-1".into(), step_id: "step-1".into(), attempt: 1, ..StepContext::default() },
            input.to_string(),
        )
    }
}

async fn run(agent: &Agent, request: ExecutionRequest) -> Execution {
    sandbox().execute(agent, request).await.expect("execution starts")
}

/// Runs the misbehave agent with `input` and `limits`, checks the outcome, then proves the
/// sandbox still serves a well-behaved call.
async fn expect_outcome(input: Value, limits: Limits, outcome: Outcome) -> Execution {
    let execution = run(misbehave(), ExecutionRequest { limits: Some(limits), ..request(input.clone()) }).await;
    assert_eq!(execution.outcome, outcome, "{input}: {execution:#?}");
    assert_still_serving().await;
    execution
}

async fn assert_still_serving() {
    let execution = run(misbehave(), request(json!({ "action": "ok" }))).await;
    assert_eq!(execution.outcome, Outcome::Succeeded, "{execution:#?}");
}

fn limits() -> Limits {
    request(Value::Null).limits.unwrap()
}

/// The pool resets only the pages an instance dirtied (`PAGEMAP_SCAN`): whatever one
/// instance leaves in static data, on its stack or on its heap, the next instance in the
/// same slot must not find. One slot, so that every call reuses it.
#[tokio::test]
async fn an_instance_never_sees_what_the_previous_one_left_in_memory() {
    let one_slot = Sandbox::new(SandboxConfig { max_instances: 1, ..SandboxConfig::default() }).unwrap();
    assert!(one_slot.is_pooling(), "the test is about the pooling allocator's reset");
    let agent = one_slot.load(&agent_bytes("misbehave")).unwrap();
    let input = json!({ "action": "remnants", "seed": "a secret the next tenant must not read" });
    for call in 0..5 {
        let execution = one_slot.execute(&agent, request(input.clone())).await.unwrap();
        assert_eq!(execution.outcome, Outcome::Succeeded, "{execution:#?}");
        assert_eq!(
            execution.output.as_deref(),
            Some(&json!({ "found": [] })),
            "call {call} found an earlier instance's data"
        );
    }
    // The scan does find the marker where it is: in static data, the heap, the stack.
    let own = json!({ "action": "remnants", "seed": "a secret the next tenant must not read", "leave_first": true });
    let execution = one_slot.execute(&agent, request(own)).await.unwrap();
    let found = execution.output.as_ref().and_then(|output| output["found"].as_array()).map_or(0, Vec::len);
    assert!(found >= 3, "the scan should find the instance's own marker: {execution:#?}");
}

#[tokio::test]
async fn example_agents_compute_their_answers() {
    let text = "the quick brown fox\njumps over the lazy dog";
    let words = run(&agent("word-count"), request(json!({ "text": text }))).await;
    assert_eq!(words.output.as_deref(), Some(&json!({ "words": 9, "lines": 2, "chars": 43 })), "{words:#?}");

    let shout = run(&agent("shout"), request(json!({ "text": "make me loud" }))).await;
    assert_eq!(shout.output.as_deref(), Some(&json!({ "text": "MAKE ME LOUD" })));
    let title = ExecutionRequest {
        config: Arc::new(BTreeMap::from([("mode".to_owned(), "title".to_owned())])),
        ..request(json!({ "text": "make me a title" }))
    };
    assert_eq!(run(&agent("shout"), title).await.output.as_deref(), Some(&json!({ "text": "Make Me A Title" })));

    let digest = run(&agent("digest"), request(json!({ "text": "hello" }))).await;
    assert_eq!(
        digest.output.as_deref(),
        Some(&json!({ "hex": "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824", "bytes": 5 }))
    );

    let merge = ExecutionRequest {
        config: Arc::new(BTreeMap::from([("style".to_owned(), "short".to_owned())])),
        ..request(json!({ "parts": { "words": { "words": 9, "lines": 2 }, "deep": { "text": "LOUD" } } }))
    };
    let merged = run(&agent("merge"), merge).await;
    assert_eq!(
        merged.output.as_deref(),
        Some(&json!({ "report": "deep: text=LOUD\nwords: lines=2, words=9", "parts": 2 }))
    );
    assert!(merged.logs.iter().any(|l| l.source == LogSource::Host && l.message.contains("merging 2 parts")));
}

#[tokio::test]
async fn the_agent_sees_its_context_and_config() {
    let req = ExecutionRequest {
        context: StepContext {
            run_id: "r-42".into(),
            step_id: "fetch".into(),
            branch: Some("left".into()),
            item_index: Some(7),
            attempt: 3,
            idempotency_key: "r-42/fetch".into(),
        },
        config: Arc::new(BTreeMap::from([("key".to_owned(), "granted".to_owned())])),
        ..request(json!({ "action": "ok" }))
    };
    let execution = run(misbehave(), req).await;
    let output = execution.output.expect("output");
    assert_eq!(output["run_id"], "r-42");
    assert_eq!(output["step_id"], "fetch");
    assert_eq!(output["branch"], "left");
    assert_eq!(output["item_index"], 7);
    assert_eq!(output["attempt"], 3);
    assert_eq!(output["config"], "granted");
    assert_eq!(output["idempotency_key"], "r-42/fetch");
    let missing = run(misbehave(), request(json!({ "action": "ok", "config_key": "other" }))).await;
    assert_eq!(missing.output.unwrap()["config"], Value::Null, "ungranted config is absent");
}

#[tokio::test]
async fn guest_errors_say_whether_a_retry_helps() {
    let flaky = expect_outcome(
        json!({ "action": "error", "message": "upstream busy", "retryable": true }),
        limits(),
        Outcome::GuestError,
    )
    .await;
    assert_eq!(flaky.error.as_deref(), Some("upstream busy"));
    assert!(flaky.retryable);
    let fatal = expect_outcome(json!({ "action": "error", "retryable": false }), limits(), Outcome::GuestError).await;
    assert!(!fatal.retryable);
}

#[tokio::test]
async fn malformed_input_is_a_clear_non_retryable_error_not_a_trap() {
    let execution = run(&agent("word-count"), request(json!({ "txt": "typo" }))).await;
    assert_eq!(execution.outcome, Outcome::GuestError);
    assert!(!execution.retryable);
    let error = execution.error.unwrap();
    assert!(error.contains("malformed input") && error.contains("missing field `text`"), "{error}");
}

/// A chain's next step makes its instance while its predecessor's row commits
/// (`Sandbox::prepare`): the instance holds its slot until it is called or dropped, and its
/// timeout covers making it and the call, not the wait between.
#[tokio::test]
async fn an_instance_made_ahead_keeps_its_slot_and_its_whole_timeout_until_called() {
    let one_slot = Sandbox::new(SandboxConfig { max_instances: 1, ..SandboxConfig::default() }).unwrap();
    let agent = one_slot.load(&agent_bytes("misbehave")).unwrap();
    let limits = Limits { timeout: Duration::from_millis(1000), ..limits() };
    let ahead = |input: Value| async {
        let slot = one_slot.try_slot().expect("a free slot");
        let request = ExecutionRequest { limits: Some(limits), ..request(input) };
        one_slot.prepare(&agent, request, slot).await.expect("prepared")
    };

    let dropped = ahead(json!({ "action": "ok" })).await;
    assert_eq!(one_slot.free_slots(), 0, "the instance holds its slot");
    drop(dropped);
    assert_eq!(one_slot.free_slots(), 1, "dropped uncalled, it frees its slot");

    // Called after waiting longer than its timeout, it still has all of it.
    let waited = ahead(json!({ "action": "sleep", "ms": 300 })).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let execution = waited.call().await.unwrap();
    assert_eq!(execution.outcome, Outcome::Succeeded, "{execution:#?}");
    assert!(execution.execute >= Duration::from_millis(300), "{execution:#?}");

    // And the timeout still bounds the call itself.
    let waited = ahead(json!({ "action": "sleep", "ms": 60_000 })).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let called = Instant::now();
    let execution = waited.call().await.unwrap();
    assert_eq!(execution.outcome, Outcome::Timeout, "{execution:#?}");
    assert!(called.elapsed() < Duration::from_secs(5), "{:?}", called.elapsed());
    assert_eq!(one_slot.free_slots(), 1);
}

#[tokio::test]
async fn an_endless_loop_times_out() {
    let started = Instant::now();
    let limits = Limits { timeout: Duration::from_millis(200), ..limits() };
    let execution = expect_outcome(json!({ "action": "loop" }), limits, Outcome::Timeout).await;
    assert!(execution.error.unwrap().contains("200 ms"));
    assert!(execution.retryable);
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_guest_blocked_in_a_host_call_still_times_out() {
    let limits = Limits { timeout: Duration::from_millis(200), ..limits() };
    let execution = expect_outcome(json!({ "action": "sleep", "ms": 60_000 }), limits, Outcome::Timeout).await;
    assert!(execution.duration() < Duration::from_secs(2), "{:?}", execution.duration());
}

#[tokio::test]
async fn a_fuel_budget_stops_an_endless_loop_deterministically() {
    let limits = Limits { fuel: Some(5_000_000), ..limits() };
    let execution = expect_outcome(json!({ "action": "loop" }), limits, Outcome::OutOfFuel).await;
    assert_eq!(execution.fuel_consumed, Some(5_000_000));

    // Metered, the same work costs the same fuel every time.
    let spin = json!({ "action": "spin", "iterations": 10_000 });
    let metered = |input: Value| ExecutionRequest {
        limits: Some(Limits { fuel: Some(1 << 40), ..crate::limits() }),
        ..request(input)
    };
    let first = run(misbehave(), metered(spin.clone())).await;
    let second = run(misbehave(), metered(spin.clone())).await;
    assert_eq!(first.outcome, Outcome::Succeeded);
    assert!(first.fuel_consumed.unwrap() > 10_000);
    assert_eq!(first.fuel_consumed, second.fuel_consumed);
    // Without a budget the step runs unmetered code, which counts nothing.
    let unmetered = run(misbehave(), request(spin)).await;
    assert_eq!((unmetered.outcome, unmetered.fuel_consumed), (Outcome::Succeeded, None));
    // An agent loaded without metered code cannot take a budget: the sandbox says so
    // rather than running it unbounded.
    let plain = agent("misbehave");
    let refused = sandbox().execute(&plain, metered(json!({ "action": "ok" }))).await.unwrap_err().to_string();
    assert!(refused.contains("not loaded for fuel-metered code"), "{refused}");
}

#[tokio::test]
async fn unbounded_memory_growth_hits_the_memory_limit() {
    let limits = Limits { memory_bytes: 16 * MIB, ..limits() };
    let execution = expect_outcome(json!({ "action": "alloc" }), limits, Outcome::MemoryLimit).await;
    assert!(execution.memory_peak_bytes <= 16 * MIB, "{}", execution.memory_peak_bytes);
    assert!(execution.memory_peak_bytes > 8 * MIB, "{}", execution.memory_peak_bytes);
    let error = execution.error.unwrap();
    assert!(error.contains("memory limit of 16 MiB") && error.contains("memory allocation of"), "{error}");
}

#[tokio::test]
async fn unbounded_recursion_traps() {
    let execution = expect_outcome(json!({ "action": "recurse" }), limits(), Outcome::Trap).await;
    assert!(execution.error.unwrap().contains("wasm trap"));
    // Bounded recursion is fine.
    let bounded = run(misbehave(), request(json!({ "action": "recurse", "depth": 50 }))).await;
    assert_eq!(bounded.outcome, Outcome::Succeeded, "{bounded:#?}");
}

#[tokio::test]
async fn a_panic_traps_with_the_panic_message() {
    let execution =
        expect_outcome(json!({ "action": "panic", "message": "the sky is falling" }), limits(), Outcome::Trap).await;
    let error = execution.error.unwrap();
    assert!(error.contains("unreachable") && error.contains("the sky is falling"), "{error}");
    assert!(execution.logs.iter().any(|l| l.source == LogSource::Stderr && l.message.contains("the sky is falling")));
}

#[tokio::test]
async fn output_over_the_cap_or_not_json_is_invalid_output() {
    let big =
        expect_outcome(json!({ "action": "big_output", "bytes": 2 * MIB }), limits(), Outcome::InvalidOutput).await;
    assert!(big.error.unwrap().contains("over the cap of 1048576 bytes"));
    assert!(big.output.is_none());
    let text = expect_outcome(json!({ "action": "not_json" }), limits(), Outcome::InvalidOutput).await;
    assert!(text.error.unwrap().contains("not JSON"));
    assert!(!text.retryable);
}

#[tokio::test]
async fn a_stdout_flood_is_capped_and_counted_without_failing_the_step() {
    let execution = expect_outcome(json!({ "action": "flood", "lines": 20_000 }), limits(), Outcome::Succeeded).await;
    assert_eq!(execution.output.as_deref(), Some(&json!({ "printed": 20_000 })));
    let kept: usize = execution.logs.iter().map(|l| l.message.len()).sum();
    assert!(kept <= 16 * 1024 + 200, "kept {kept} bytes");
    let note = execution.logs.last().unwrap();
    assert_eq!(note.source, LogSource::Braid);
    assert!(
        note.message.starts_with("dropped ") && note.message.contains("over the cap of 16384 bytes"),
        "{}",
        note.message
    );
    assert!(execution.logs.iter().any(|l| l.source == LogSource::Stdout));
    assert!(execution.logs.iter().any(|l| l.source == LogSource::Stderr));
}

#[tokio::test]
async fn host_log_lines_are_capped_too() {
    let execution = expect_outcome(json!({ "action": "log", "lines": 10_000 }), limits(), Outcome::Succeeded).await;
    assert!(execution.logs.len() < 10_000);
    assert!(execution.logs.last().unwrap().message.starts_with("dropped "));
}

#[tokio::test]
async fn files_are_denied() {
    let read =
        expect_outcome(json!({ "action": "read_file", "path": "/etc/passwd" }), limits(), Outcome::GuestError).await;
    assert!(read.error.unwrap().contains("No such file or directory"));
    let cwd =
        expect_outcome(json!({ "action": "read_file", "path": "Cargo.toml" }), limits(), Outcome::GuestError).await;
    assert!(cwd.error.unwrap().contains("No such file or directory"));
    let list = expect_outcome(json!({ "action": "list_dir", "path": "/" }), limits(), Outcome::GuestError).await;
    assert!(list.error.unwrap().contains("No such file or directory"));
}

#[tokio::test]
async fn environment_arguments_and_stdin_are_empty() {
    // SAFETY: set before any sandbox call reads the host environment (none does).
    unsafe { std::env::set_var("BRAID_TEST_SECRET", "do-not-leak") };
    let execution = expect_outcome(json!({ "action": "env" }), limits(), Outcome::Succeeded).await;
    assert_eq!(execution.output.as_deref(), Some(&json!({ "vars": [], "args": [], "stdin": "", "stdin_ok": true })));
}

#[tokio::test]
async fn network_connections_are_denied() {
    // A real listener, so that a refused connection can only be the sandbox's doing.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let execution = expect_outcome(json!({ "action": "tcp", "addr": addr }), limits(), Outcome::GuestError).await;
    assert!(execution.error.unwrap().contains("Permission denied"));
    assert!(listener.accept().is_err(), "the guest reached the listener");
}

#[tokio::test]
async fn cancelling_interrupts_a_running_guest_promptly() {
    let req = request(json!({ "action": "loop" }));
    let cancel = req.cancel.clone();
    let started = Instant::now();
    let running = tokio::spawn(async move { sandbox().execute(misbehave(), req).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    cancel.cancel();
    let execution = running.await.unwrap().unwrap();
    assert_eq!(execution.outcome, Outcome::Cancelled);
    assert!(!execution.retryable);
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    assert_still_serving().await;
}

#[tokio::test]
async fn excess_executions_wait_for_a_slot_instead_of_failing() {
    let small = Arc::new(Sandbox::new(SandboxConfig { max_instances: 2, ..SandboxConfig::default() }).unwrap());
    let agent = small.load(&agent_bytes("misbehave")).unwrap();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (small, agent) = (small.clone(), agent.clone());
        tasks.push(tokio::spawn(async move {
            small.execute(&agent, request(json!({ "action": "sleep", "ms": 150 }))).await.unwrap()
        }));
    }
    let mut peak_live = 0;
    while tasks.iter().any(|t| !t.is_finished()) {
        peak_live = peak_live.max(small.live_instances());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().outcome, Outcome::Succeeded);
    }
    assert!(peak_live <= 2, "{peak_live} instances were live at once");
    // Six 150 ms calls, two at a time: at least three rounds.
    assert!(started.elapsed() >= Duration::from_millis(450), "{:?}", started.elapsed());
}

#[tokio::test]
async fn oversized_input_and_excessive_limits_are_refused_before_running() {
    let big = request(json!({ "text": "x".repeat(2 * MIB as usize) }));
    assert!(matches!(sandbox().execute(misbehave(), big).await, Err(ExecuteError::InputTooLarge { .. })));
    let greedy = ExecutionRequest {
        limits: Some(Limits { memory_bytes: 1 << 40, ..limits() }),
        ..request(json!({ "action": "ok" }))
    };
    let err = sandbox().execute(misbehave(), greedy).await.unwrap_err();
    assert!(err.to_string().contains("above the host's maximum"), "{err}");
}

#[test]
fn bytes_that_are_not_an_agent_are_refused_with_the_reason() {
    let garbage = sandbox().load(b"definitely not wasm").err().unwrap();
    assert!(matches!(garbage, LoadError::NotWasm), "{garbage}");

    let core = sandbox().load(&wat::parse_str("(module)").unwrap()).err().unwrap();
    assert!(matches!(core, LoadError::CoreModule), "{core}");
    assert!(core.to_string().contains("wasm32-wasip2"));

    let truncated = agent_bytes("echo");
    let truncated = sandbox().load(&truncated[..truncated.len() / 2]).err().unwrap();
    assert!(matches!(truncated, LoadError::Compile(_)), "{truncated}");

    let command = sandbox().load(&agent_bytes("command")).err().unwrap();
    let message = command.to_string();
    assert!(matches!(command, LoadError::WrongWorld(_)), "{message}");
    assert!(message.contains("no `run` export") && message.contains("wasi:cli/run"), "{message}");

    let wrong = sandbox().load(&agent_bytes("wrong-signature")).err().unwrap();
    let message = wrong.to_string();
    assert!(matches!(wrong, LoadError::WrongWorld(_)), "{message}");
    assert!(message.contains("`run`"), "{message}");

    assert!(agent_path("echo").exists());
}

#[tokio::test]
async fn the_on_demand_allocator_fallback_runs_agents_too() {
    let on_demand = Sandbox::new(SandboxConfig {
        max_instances: 2,
        allocator: braid::sandbox::AllocatorChoice::OnDemand,
        ..SandboxConfig::default()
    })
    .unwrap();
    assert!(!on_demand.is_pooling());
    let agent = on_demand.load(&agent_bytes("word-count")).unwrap();
    let execution = on_demand.execute(&agent, request(json!({ "text": "still counts" }))).await.unwrap();
    assert_eq!(execution.output.as_deref(), Some(&json!({ "words": 2, "lines": 1, "chars": 12 })));
    assert!(sandbox().is_pooling(), "this machine has the address space for the pool");
}

/// A component that instantiates `count` core modules (and implements nothing).
fn component_with_core_instances(count: usize) -> Vec<u8> {
    let instances = "(core instance (instantiate $m))".repeat(count);
    wat::parse_str(format!("(component (core module $m) {instances})")).unwrap()
}

#[test]
fn a_slot_fits_a_python_sized_component_and_a_bigger_one_is_refused_at_load_naming_the_limit() {
    assert!(sandbox().is_pooling(), "the pool is what this test is about");
    // 14 core instances, as componentize-py makes: past the pool's check, refused only for
    // not implementing the world.
    let python_sized = sandbox().load(&component_with_core_instances(14)).err().unwrap();
    assert!(matches!(python_sized, LoadError::WrongWorld(_)), "{python_sized}");
    // More than a slot holds: refused before anything runs, naming the limit and the need.
    let too_big = sandbox().load(&component_with_core_instances(33)).err().unwrap().to_string();
    assert!(
        too_big.contains("33 core module instances")
            && too_big.contains(&format!("maximum of {}", braid::sandbox::CORE_INSTANCES_PER_SLOT)),
        "{too_big}"
    );
}
