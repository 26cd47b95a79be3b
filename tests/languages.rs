//! Python agents (componentize-py, `guest-sdk/python`) and JavaScript agents (ComponentizeJS,
//! `guest-sdk/js`), with the real binary: every outcome of the `misbehave-py` and
//! `misbehave-js` test agents, the example agents agreeing with the Rust ones, a workflow
//! mixing Rust, Python and JavaScript branches, and a 32-branch fan-out of each. One
//! precompiled cache for the file, so that each 12–19 MB component is compiled once.

use braid_test_artifacts::{agent_path, agents_dir};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Command;

fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("language-agents-cache")
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
    code_and_document(&output)
}

/// A `--output json` process's exit code and document.
fn code_and_document(output: &std::process::Output) -> (i32, Value) {
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
    code_and_document(&output)
}

/// What differs between the languages' test agents: the agent, the context field naming,
/// the action that throws an uncaught exception, and what its message names.
struct Language {
    misbehave: &'static str,
    step_id_field: &'static str,
    uncaught: &'static str,
    uncaught_names: &'static str,
}

const PYTHON: Language = Language {
    misbehave: "misbehave-py",
    step_id_field: "step_id",
    uncaught: "raise",
    uncaught_names: "ZeroDivisionError",
};
const JAVASCRIPT: Language = Language {
    misbehave: "misbehave-js",
    step_id_field: "stepId",
    uncaught: "throw",
    uncaught_names: "uncaught TypeError",
};

/// Every outcome of a language's `misbehave` agent.
fn every_outcome(language: &Language) {
    let agent = language.misbehave;
    let (code, ok) = call(agent, json!({ "action": "ok", "config_key": "model" }), &["--config", "model=m1"]);
    assert_eq!(code, 0, "{ok}");
    assert_eq!(ok["output"]["config"], "m1");
    assert_eq!(ok["output"][language.step_id_field], "call");
    assert_eq!(ok["output"]["attempt"], 1);

    let (code, fatal) = call(agent, json!({ "action": "error", "message": "bad input" }), &[]);
    assert_eq!(
        (code, &fatal["outcome"], &fatal["retryable"], &fatal["error"]),
        (1, &json!("guest_error"), &json!(false), &json!("bad input"))
    );
    let (_, retryable) = call(agent, json!({ "action": "retryable" }), &[]);
    assert_eq!((&retryable["outcome"], &retryable["retryable"]), (&json!("guest_error"), &json!(true)));

    // An uncaught exception: a non-retryable guest error naming it, with where it happened.
    let (_, raised) = call(agent, json!({ "action": language.uncaught }), &[]);
    assert_eq!((&raised["outcome"], &raised["retryable"]), (&json!("guest_error"), &json!(false)));
    let message = raised["error"].as_str().unwrap();
    assert!(message.contains(language.uncaught_names) && message.lines().count() > 1, "{message}");

    let (code, logged) = call(agent, json!({ "action": "log", "lines": 2 }), &[]);
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

    let (_, spun) = call(agent, json!({ "action": "loop" }), &["--timeout-ms", "500"]);
    assert_eq!(spun["outcome"], "timeout", "{spun}");
    let (_, hoarded) = call(agent, json!({ "action": "alloc" }), &["--memory-mb", "64"]);
    assert_eq!(hoarded["outcome"], "memory_limit", "{hoarded}");
}

#[test]
fn a_python_agent_gets_its_context_and_config_and_every_misbehaviour_its_outcome() {
    every_outcome(&PYTHON);
    let (_, not_json) = call("misbehave-py", json!({ "action": "not_json" }), &[]);
    assert!(not_json["error"].as_str().unwrap().contains("not JSON"), "{not_json}");
}

#[test]
fn a_javascript_agent_gets_its_context_and_config_and_every_misbehaviour_its_outcome() {
    every_outcome(&JAVASCRIPT);
    // A thrown value that is not an Error still gets a readable message.
    let (_, bare) = call("misbehave-js", json!({ "action": "throw_string" }), &[]);
    assert_eq!(bare["error"], "uncaught throw of a value that is not an Error: \"a bare string\"");
}

#[test]
fn python_javascript_and_rust_agents_agree_and_run_side_by_side_in_one_workflow() {
    let text = json!({ "text": "Braid runs every step\nin its own sandbox" });
    let (_, rust) = call("word-count", text.clone(), &[]);
    for agent in ["word-count-py", "word-count-js"] {
        let (code, answer) = call(agent, text.clone(), &[]);
        assert_eq!(code, 0, "{answer}");
        assert_eq!(answer["output"], rust["output"], "{agent}");
    }

    let example: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/workflows/mixed.json")).unwrap(),
    )
    .unwrap();
    let (code, doc) = run(&example, text);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["output"]["parts"], 4, "{doc}");
    // Each line of the report is `language: <that agent's output as JSON>` (outputs pass
    // from step to step as the agents wrote them, their key order included).
    let report = doc["output"]["report"].as_str().unwrap();
    let counts = json!({ "chars": 40, "lines": 2, "words": 8 });
    for language in ["javascript", "python", "rust"] {
        let line = report.lines().find_map(|line| line.strip_prefix(&format!("{language}: ")));
        let parsed: Option<Value> = line.and_then(|json| serde_json::from_str(json).ok());
        assert_eq!(parsed.as_ref(), Some(&counts), "{language}: {report}");
    }
}

#[test]
fn a_32_branch_fan_out_of_python_agents_under_max_parallelism_16_all_succeed() {
    fan_out_of("word-count-py");
}

#[test]
fn a_32_branch_fan_out_of_javascript_agents_under_max_parallelism_16_all_succeed() {
    fan_out_of("word-count-js");
}

fn fan_out_of(agent: &str) {
    let branches: Vec<Value> = (0..32)
        .map(|i| json!({ "name": format!("b{i}"), "agent": agent, "input": { "text": "a b ".repeat(i + 1) } }))
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

#[test]
fn braid_new_and_braid_build_make_an_agent_that_braid_call_runs_in_every_language() {
    // The build tools the test build installed, as a user would have them on PATH.
    let tools = agents_dir().join("../..");
    let path = format!(
        "{}:{}:{}",
        tools.join("python-venv/bin").display(),
        tools.join("js-tools/node_modules/.bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let scratch = tempfile::tempdir().unwrap();
    for language in ["rust", "python", "js"] {
        let name = format!("hello-{language}");
        let braid = |args: &[&str]| {
            Command::new(env!("CARGO_BIN_EXE_braid"))
                .current_dir(scratch.path())
                .env("PATH", &path)
                .env_remove("CARGO_TARGET_DIR")
                .args(args)
                .output()
                .unwrap()
        };
        let created = braid(&["new", "agent", &name, "--lang", language]);
        assert_eq!(created.status.code(), Some(0), "{}", String::from_utf8_lossy(&created.stderr));
        let again = braid(&["new", "agent", &name, "--lang", language]);
        assert_eq!(again.status.code(), Some(2), "a second new must not overwrite the first");
        let built = braid(&["build", &name]);
        assert_eq!(built.status.code(), Some(0), "{language}: {}", String::from_utf8_lossy(&built.stderr));
        let wasm = scratch.path().join(&name).join(format!("{name}.wasm"));
        let cache = cache_dir();
        let called = braid(&[
            "call",
            wasm.to_str().unwrap(),
            "--input",
            r#"{"text": "one two three"}"#,
            "--output",
            "json",
            "--cache-dir",
            cache.to_str().unwrap(),
        ]);
        assert_eq!(called.status.code(), Some(0), "{language}: {}", String::from_utf8_lossy(&called.stdout));
        let document: Value = serde_json::from_slice(&called.stdout).unwrap();
        assert_eq!(document["output"]["words"], 3, "{language}: {document}");
        let refused = braid(&["call", wasm.to_str().unwrap(), "--input", r#"{"text": ""}"#, "--output", "json"]);
        let document: Value = serde_json::from_slice(&refused.stdout).unwrap();
        assert_eq!((refused.status.code(), &document["outcome"]), (Some(1), &json!("guest_error")), "{language}");
    }
    let unknown = Command::new(env!("CARGO_BIN_EXE_braid")).args(["build"]).arg(scratch.path()).output().unwrap();
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("not an agent project"));
}
