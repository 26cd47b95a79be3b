//! `braid agent push|list`, `braid workflow push|list` and `braid run NAME[@VERSION]`, the
//! real binary straight against the database — with and without a server running on it.

mod common;

use braid_test_artifacts::agent_path;
use common::{TestDb, braid, examples_dir};
use serde_json::Value;
use std::process::Output;

fn run_braid(args: &[&str], database: &str, cache: &std::path::Path) -> Output {
    braid().args(args).env("BRAID_DATABASE_URL", database).env("BRAID_CACHE_DIR", cache).output().unwrap()
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[tokio::test]
async fn push_list_and_run_deployed_workflows_from_the_command_line() {
    let db = TestDb::postgres().await;
    let cache = tempfile::tempdir().unwrap();
    let push = |file: &str, name: &str, version: &str| {
        let path = agent_path(file);
        run_braid(
            &["agent", "push", path.to_str().unwrap(), "--name", name, "--version", version],
            &db.url,
            cache.path(),
        )
    };
    for agent in ["word-count", "shout", "digest", "merge"] {
        let output = push(agent, agent, "1");
        assert!(output.status.success(), "{}", text(&output));
        assert!(text(&output).starts_with(&format!("deployed {agent}@1 (")), "{}", text(&output));
    }
    let again = push("word-count", "word-count", "1");
    assert!(again.status.success() && text(&again).contains("already deployed"), "{}", text(&again));
    let conflict = push("shout", "word-count", "1");
    assert_eq!(conflict.status.code(), Some(2));
    assert!(text(&conflict).contains("versions are immutable"), "{}", text(&conflict));
    let not_an_agent = push("command", "cmd", "1");
    assert_eq!(not_an_agent.status.code(), Some(2));
    assert!(text(&not_an_agent).contains("no `run` export"));

    let listed = run_braid(&["agent", "list", "--output", "json"], &db.url, cache.path());
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed["agents"].as_array().unwrap().len(), 4);

    let example = examples_dir().join("parallel.json");
    let pushed = run_braid(&["workflow", "push", example.to_str().unwrap()], &db.url, cache.path());
    assert!(pushed.status.success(), "{}", text(&pushed));
    assert!(text(&pushed).starts_with("deployed report@1 ("));
    let workflows = run_braid(&["workflow", "list", "--output", "json"], &db.url, cache.path());
    let workflows: Value = serde_json::from_slice(&workflows.stdout).unwrap();
    assert_eq!(workflows["workflows"][0]["name"], "report");

    for reference in ["report", "report@1"] {
        let ran = run_braid(
            &["run", reference, "--input", r#"{"text": "deployed"}"#, "--output", "json"],
            &db.url,
            cache.path(),
        );
        assert_eq!(ran.status.code(), Some(0), "{}", text(&ran));
        let document: Value = serde_json::from_slice(&ran.stdout).unwrap();
        assert_eq!(document["status"], "succeeded");
        assert_eq!(document["workflow_version"], "1");
        assert_eq!(document["pinned_agents"]["merge"]["version"], "1");
    }
    let missing = run_braid(&["run", "report@9"], &db.url, cache.path());
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing).contains("no deployed workflow report@9"), "{}", text(&missing));
    db.drop_database().await;
}
