//! Python agents (componentize-py, `guest-sdk/python`), with the real binary: every outcome
//! of the `misbehave-py` test agent, the example agents' answers, a workflow mixing Rust and
//! Python branches, and a 32-branch fan-out of Python agents. One precompiled cache for the
//! file, so that each 19 MB component is compiled once.

use braid_test_artifacts::{agent_path, agents_dir};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Command;

fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("python-agents-cache")
}

/// `braid call AGENT --output json ARGS...`: the exit code and the document.
fn call(agent: &str, input: Value, args: &[&str]) -> (i32, Value) {
    let output = Command::new(env!("CARGO_BIN_EXE_braid"))
        .arg("call")
        .arg(agent_path(agent))
        .args(["--output", "json", "--input", &input.to_string()])
        .args(args)
        .arg("--cache-dir")
        .arg(cache_dir())
        .output()
        .unwrap();
    let document = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stderr)));
    (output.status.code().unwrap(), document)
}

/// `braid run` of `definition` with `input`, JSON output, in a scratch folder.
fn run(definition: &Value, input: Value) -> (i32, Value) {
    let scratch = tempfile::tempdir().unwrap();
    let workflow = scratch.path().join("workflow.json");
    std::fs::write(&workflow, definition.to_string()).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_braid"))
        .current_dir(scratch.path())
        .arg("run")
        .arg(&workflow)
        .arg("--agents")
        .arg(agents_dir())
        .args(["--output", "json", "--input", &input.to_string()])
        .arg("--cache-dir")
        .arg(cache_dir())
        .output()
        .unwrap();
    let document = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stderr)));
    (output.status.code().unwrap(), document)
}

#[test]
fn a_python_agent_gets_its_context_and_config_and_every_misbehaviour_its_outcome() {
    let (code, ok) = call("misbehave-py", json!({ "action": "ok", "config_key": "model" }), &["--config", "model=m1"]);
    assert_eq!(code, 0, "{ok}");
    assert_eq!(ok["output"]["config"], "m1");
    assert_eq!(ok["output"]["step_id"], "call");
    assert_eq!(ok["output"]["attempt"], 1);

    let (code, fatal) = call("misbehave-py", json!({ "action": "error", "message": "bad input" }), &[]);
    assert_eq!(
        (code, &fatal["outcome"], &fatal["retryable"], &fatal["error"]),
        (1, &json!("guest_error"), &json!(false), &json!("bad input"))
    );
    let (_, retryable) = call("misbehave-py", json!({ "action": "retryable" }), &[]);
    assert_eq!((&retryable["outcome"], &retryable["retryable"]), (&json!("guest_error"), &json!(true)));

    // An uncaught exception: a non-retryable guest error with the traceback.
    let (_, raised) = call("misbehave-py", json!({ "action": "raise" }), &[]);
    assert_eq!((&raised["outcome"], &raised["retryable"]), (&json!("guest_error"), &json!(false)));
    let message = raised["error"].as_str().unwrap();
    assert!(message.contains("uncaught exception") && message.contains("ZeroDivisionError"), "{message}");

    let (_, not_json) = call("misbehave-py", json!({ "action": "not_json" }), &[]);
    assert!(not_json["error"].as_str().unwrap().contains("not JSON"), "{not_json}");

    let (code, logged) = call("misbehave-py", json!({ "action": "log", "lines": 2 }), &[]);
    assert_eq!(code, 0);
    let lines: Vec<(String, String)> = logged["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["source"].as_str().unwrap().to_owned(), l["message"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(
        lines,
        [("host", "log line 0"), ("host", "log line 1"), ("stdout", "printed to stdout")]
            .map(|(s, m)| (s.to_owned(), m.to_owned()))
    );

    let (_, spun) = call("misbehave-py", json!({ "action": "loop" }), &["--timeout-ms", "500"]);
    assert_eq!(spun["outcome"], "timeout", "{spun}");
    let (_, hoarded) = call("misbehave-py", json!({ "action": "alloc" }), &["--memory-mb", "64"]);
    assert_eq!(hoarded["outcome"], "memory_limit", "{hoarded}");
}

#[test]
fn python_and_rust_agents_agree_and_run_side_by_side_in_one_workflow() {
    let text = json!({ "text": "Braid runs every step\nin its own sandbox" });
    let (code, python) = call("word-count-py", text.clone(), &[]);
    assert_eq!(code, 0, "{python}");
    let (_, rust) = call("word-count", text.clone(), &[]);
    assert_eq!(python["output"], rust["output"]);

    let example: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/workflows/mixed.json")).unwrap(),
    )
    .unwrap();
    let (code, doc) = run(&example, text);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["output"]["parts"], 3, "{doc}");
    let report = doc["output"]["report"].as_str().unwrap();
    let counts = "{\"chars\": 40, \"lines\": 2, \"words\": 8}";
    assert!(report.contains(&format!("python: {counts}")) && report.contains(&format!("rust: {counts}")), "{report}");
}

#[test]
fn a_32_branch_fan_out_of_python_agents_under_max_parallelism_16_all_succeed() {
    let branches: Vec<Value> = (0..32)
        .map(
            |i| json!({ "name": format!("b{i}"), "agent": "word-count-py", "input": { "text": "a b ".repeat(i + 1) } }),
        )
        .collect();
    let definition = json!({ "name": "fan", "version": "1", "steps": [
        { "id": "fan", "type": "parallel", "max_parallelism": 16, "branches": branches } ] });
    let (code, doc) = run(&definition, json!({}));
    assert_eq!(code, 0, "{doc}");
    let steps = doc["steps"].as_array().unwrap();
    let branches: Vec<&Value> = steps.iter().filter(|s| s["step_type"] == "agent").collect();
    assert_eq!(branches.len(), 32);
    assert!(branches.iter().all(|s| s["status"] == "succeeded" && s["attempt"] == 1), "{doc}");
    assert_eq!(doc["output"]["b31"]["words"], 64);
}
