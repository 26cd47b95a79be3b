//! `braid call`, the real binary: JSON output, exit codes, and every misbehaviour of the
//! `misbehave` test agent showing its outcome through `--output json`.

use braid_test_artifacts::agent_path;
use serde_json::{Value, json};
use std::process::{Command, Output};

fn braid(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_braid")).args(args).output().expect("run braid")
}

/// Runs `braid call AGENT --output json ARGS...` and returns the exit code and the document.
fn call_json(agent: &str, args: &[&str]) -> (i32, Value) {
    let path = agent_path(agent);
    let mut all = vec!["call", path.to_str().unwrap(), "--output", "json"];
    all.extend_from_slice(args);
    let output = braid(&all);
    let document = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {:?} stderr {:?}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code().unwrap(), document)
}

#[test]
fn a_successful_call_prints_the_documented_json_and_exits_0() {
    let (code, doc) = call_json("word-count", &["--input", r#"{"text": "one two three"}"#]);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["status"], "succeeded");
    assert_eq!(doc["outcome"], "succeeded");
    assert_eq!(doc["output"], json!({ "words": 3, "lines": 1, "chars": 13 }));
    assert_eq!(doc["error"], Value::Null);
    assert!(doc["logs"].is_array());
    assert!(doc["duration_us"].as_u64().unwrap() > 0);
    assert_eq!(doc["fuel_consumed"], Value::Null, "not metered without a budget or --meter-fuel");
    assert!(doc["memory_peak_bytes"].as_u64().unwrap() > 0);
    // Metered, the same call reports the fuel it burned, the same every time.
    let metered = ["--input", r#"{"text": "one two three"}"#, "--meter-fuel"];
    let (code, first) = call_json("word-count", &metered);
    assert_eq!(code, 0, "{first}");
    assert!(first["fuel_consumed"].as_u64().unwrap() > 0, "{first}");
    assert_eq!(call_json("word-count", &metered).1["fuel_consumed"], first["fuel_consumed"]);
    // For people, the output is pretty-printed.
    let path = agent_path("word-count");
    let text = braid(&["call", path.to_str().unwrap(), "--input", r#"{"text": "one two three"}"#]);
    let text = String::from_utf8(text.stdout).unwrap();
    let expected = serde_json::to_string_pretty(&doc["output"]).unwrap();
    assert!(text.contains(&format!("\n{expected}\n")), "{text}");
}

#[test]
fn config_values_reach_the_agent() {
    let (code, doc) = call_json("shout", &["--input", r#"{"text": "Quiet Please"}"#, "--config", "mode=lower"]);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["output"]["text"], "quiet please");
}

#[test]
fn every_misbehaviour_shows_its_outcome_and_exits_1() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp = json!({ "action": "tcp", "addr": listener.local_addr().unwrap().to_string() }).to_string();
    let cases: Vec<(String, Vec<&str>, &str)> = vec![
        (r#"{"action":"loop"}"#.into(), vec!["--timeout-ms", "200"], "timeout"),
        (r#"{"action":"sleep","ms":60000}"#.into(), vec!["--timeout-ms", "200"], "timeout"),
        (r#"{"action":"loop"}"#.into(), vec!["--fuel", "1000000"], "out_of_fuel"),
        (r#"{"action":"alloc"}"#.into(), vec!["--memory-mb", "16"], "memory_limit"),
        (r#"{"action":"recurse"}"#.into(), vec![], "trap"),
        (r#"{"action":"panic"}"#.into(), vec![], "trap"),
        (r#"{"action":"big_output","bytes":10000000}"#.into(), vec!["--memory-mb", "256"], "invalid_output"),
        (r#"{"action":"not_json"}"#.into(), vec![], "invalid_output"),
        (r#"{"action":"error"}"#.into(), vec![], "guest_error"),
        (r#"{"action":"read_file","path":"/etc/hostname"}"#.into(), vec![], "guest_error"),
        (r#"{"action":"list_dir","path":"/"}"#.into(), vec![], "guest_error"),
        (tcp, vec![], "guest_error"),
    ];
    for (input, extra, outcome) in &cases {
        let mut args = vec!["--input", input.as_str()];
        args.extend(extra.iter().copied());
        let (code, doc) = call_json("misbehave", &args);
        assert_eq!(doc["outcome"], *outcome, "{input} {extra:?}: {doc}");
        assert_eq!(doc["status"], "failed", "{input}");
        assert_eq!(code, 1, "{input}");
        assert!(doc["error"].as_str().is_some_and(|e| !e.is_empty()), "{input}: {doc}");
        assert_eq!(doc["output"], Value::Null);
    }
}

#[test]
fn a_chatty_agent_succeeds_with_capped_logs() {
    let (code, doc) = call_json("misbehave", &["--input", r#"{"action":"flood","lines":50000}"#]);
    assert_eq!(code, 0, "{doc}");
    let logs = doc["logs"].as_array().unwrap();
    let note = logs.last().unwrap();
    assert_eq!(note["source"], "braid");
    assert!(note["message"].as_str().unwrap().starts_with("dropped "), "{note}");
}

#[test]
fn the_environment_is_empty_inside_the_sandbox() {
    let output = Command::new(env!("CARGO_BIN_EXE_braid"))
        .args(["call", agent_path("misbehave").to_str().unwrap(), "--output", "json", "--input", r#"{"action":"env"}"#])
        .env("BRAID_TEST_SECRET", "do-not-leak")
        .output()
        .unwrap();
    let doc: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(doc["output"], json!({ "vars": [], "args": [], "stdin": "", "stdin_ok": true }));
}

/// Bad usage and bad input exit with 2 and say what is wrong, on stderr.
fn assert_refused(args: &[&str], expected: &str) {
    let output = braid(args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(stderr.contains(expected), "{args:?}: expected {expected:?} in {stderr}");
}

#[test]
fn bad_usage_and_bad_input_exit_2_with_the_reason() {
    let misbehave = agent_path("misbehave");
    let misbehave = misbehave.to_str().unwrap();
    assert_refused(&["call", "/no/such/agent.wasm"], "cannot read /no/such/agent.wasm");
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    assert_refused(&["call", manifest], "not a WebAssembly binary");
    let core = std::env::temp_dir().join(format!("braid-core-{}.wasm", std::process::id()));
    std::fs::write(&core, wat::parse_str("(module)").unwrap()).unwrap();
    assert_refused(&["call", core.to_str().unwrap()], "not a component");
    std::fs::remove_file(&core).ok();
    assert_refused(&["call", agent_path("command").to_str().unwrap()], "no `run` export");
    assert_refused(
        &["call", agent_path("wrong-signature").to_str().unwrap()],
        "does not implement the braid:agent@0.1.0 world",
    );
    assert_refused(&["call", misbehave, "--input", "{not json"], "--input is not valid JSON");
    assert_refused(&["call", misbehave, "--config", "novalue"], "expected KEY=VALUE");
    assert_refused(&["call", misbehave, "--memory-mb", "0"], "0 is not in 1..=1024");
    assert_refused(&["call", misbehave, "--memory-mb", "1000000"], "1000000 is not in 1..=1024");
    assert_refused(&["call"], "AGENT.wasm");
    assert_refused(&["call", misbehave, "--output", "yaml"], "invalid value 'yaml'");
}

/// `braid call` (and `braid run FILE`) with `--cache-dir DIR` and debug logs: what it printed
/// to stderr.
fn with_cache(args: &[&str], cache: &std::path::Path) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_braid"))
        .args(args)
        .arg("--cache-dir")
        .arg(cache)
        .env("BRAID_LOG", "braid=debug")
        .output()
        .expect("run braid");
    (output.status.code().unwrap(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn an_agent_is_compiled_once_per_machine_and_loaded_precompiled_after_that() {
    let cache = tempfile::tempdir().unwrap();
    let path = agent_path("word-count");
    let call = ["call", path.to_str().unwrap(), "--input", r#"{"text": "a b"}"#];
    let (code, first) = with_cache(&call, cache.path());
    assert_eq!(code, 0, "{first}");
    assert!(first.contains("agent compiled and cached"), "{first}");
    let artifacts: Vec<_> = std::fs::read_dir(cache.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");
    assert!(artifacts[0].to_string_lossy().ends_with(".cwasm"));

    let (code, second) = with_cache(&call, cache.path());
    assert_eq!(code, 0, "{second}");
    assert!(second.contains("agent loaded precompiled from the cache"), "{second}");
    assert!(!second.contains("agent compiled"), "{second}");

    // `braid run FILE --agents DIR` shares the cache: word-count is not compiled again.
    let scratch = tempfile::tempdir().unwrap();
    let workflow = scratch.path().join("w.json");
    let definition = json!({ "name": "w", "version": "1",
        "steps": [ { "id": "count", "agent": "word-count", "input": { "text": "x y z" } } ] });
    std::fs::write(&workflow, definition.to_string()).unwrap();
    let agents = path.parent().unwrap().to_str().unwrap().to_owned();
    let database = format!("sqlite://{}", scratch.path().join("b.db").display());
    let run = ["run", workflow.to_str().unwrap(), "--agents", &agents, "--database-url", &database];
    let (code, ran) = with_cache(&run, cache.path());
    assert_eq!(code, 0, "{ran}");
    assert!(ran.contains("agent loaded precompiled from the cache"), "{ran}");

    // A damaged artifact is ignored and replaced, never fatal.
    let artifact = cache.path().join(&artifacts[0]);
    std::fs::write(&artifact, b"not an artifact").unwrap();
    let (code, damaged) = with_cache(&call, cache.path());
    assert_eq!(code, 0, "{damaged}");
    assert!(damaged.contains("ignoring cached artifact") && damaged.contains("agent compiled and cached"), "{damaged}");
    let (_, repaired) = with_cache(&call, cache.path());
    assert!(repaired.contains("agent loaded precompiled from the cache"), "{repaired}");
}
