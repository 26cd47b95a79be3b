//! `braid serve`, the real binary on an ephemeral port, against Postgres (and the embedded
//! SQLite default): deploys, runs, versions pinned while new ones deploy, restarts that
//! reuse precompiled artifacts, bad uploads, immutability, auth, cancel, metrics, and
//! graceful shutdown with resume.

mod common;

use braid_test_artifacts::agent_bytes;
use common::server::{Server, get_json, put_agent, put_workflow, scratch, start_run, step, wait_for_run};
use common::{TestDb, braid, examples_dir};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

async fn deploy_examples(client: &Client, server: &Server) {
    for (name, file) in [("word-count", "word-count"), ("shout", "shout"), ("digest", "digest"), ("merge", "merge")] {
        let (status, body) = put_agent(client, server, name, "1", agent_bytes(file)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["digest"].as_str().unwrap().len(), 64);
    }
}

fn example(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(examples_dir().join(name)).unwrap()).unwrap()
}

#[tokio::test]
async fn deploy_run_and_read_back_on_both_databases() {
    for db in TestDb::both().await {
        let cache = scratch();
        let server = Server::start(&db.url, cache.path(), None, &[]);
        let client = Client::new();
        deploy_examples(&client, &server).await;

        // Versions are immutable: the same bytes again are fine, other bytes conflict.
        let (status, again) = put_agent(&client, &server, "word-count", "1", agent_bytes("word-count")).await;
        assert_eq!(status, StatusCode::OK, "{again}");
        let (status, conflict) = put_agent(&client, &server, "word-count", "1", agent_bytes("shout")).await;
        assert_eq!(status, StatusCode::CONFLICT, "{conflict}");
        assert!(conflict["error"].as_str().unwrap().contains("immutable"));

        let agents = get_json(&client, &server, "/v1/agents").await;
        assert_eq!(agents["agents"].as_array().unwrap().len(), 4);
        let versions = get_json(&client, &server, "/v1/agents/word-count").await;
        assert_eq!(versions["latest"], "1");

        let (status, deployed) = put_workflow(&client, &server, "report", "1", &example("parallel.json")).await;
        assert_eq!(status, StatusCode::CREATED, "{deployed}");
        let (status, _) = put_workflow(&client, &server, "report", "1", &example("parallel.json")).await;
        assert_eq!(status, StatusCode::OK);

        let input = json!({ "input": { "text": "hello from the api" } });
        let (status, waited) = start_run(&client, &server, "report", input.clone(), true).await;
        assert_eq!(status, StatusCode::OK, "{}: {waited}", db.kind);
        assert_eq!(waited["status"], "succeeded");
        assert_eq!(waited["output"]["parts"], 3);
        assert_eq!(step(&waited, "research")[0]["step_type"], "parallel");
        let shown = get_json(&client, &server, &format!("/v1/runs/{}", waited["run_id"].as_str().unwrap())).await;
        assert_eq!(shown, waited, "GET /v1/runs/{{id}} answers the same document");

        let (status, accepted) = start_run(&client, &server, "report", input, false).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        let run_id = accepted["run_id"].as_str().unwrap();
        let finished = wait_for_run(&client, &server, run_id, |r| r["status"] == "succeeded").await;
        assert_eq!(finished["status"], "succeeded", "{finished}");
        assert_eq!(finished["workflow_digest"], deployed["digest"]);

        let listed = get_json(&client, &server, "/v1/runs?workflow=report&status=succeeded&limit=10").await;
        assert_eq!(listed["runs"].as_array().unwrap().len(), 2);
        let none = get_json(&client, &server, "/v1/runs?workflow=report&status=failed").await;
        assert_eq!(none["runs"], json!([]));
        assert!(server.stop().success());
        db.drop_database().await;
    }
}

#[tokio::test]
async fn bad_uploads_and_bad_requests_get_json_errors_with_the_right_status() {
    let db = TestDb::postgres().await;
    let cache = scratch();
    let server = Server::start(&db.url, cache.path(), None, &[]);
    let client = Client::new();
    let core_module = wat::parse_str("(module)").unwrap();
    for (bytes, status, expected) in [
        (b"not wasm at all".to_vec(), StatusCode::BAD_REQUEST, "not a WebAssembly binary"),
        (core_module, StatusCode::UNPROCESSABLE_ENTITY, "not a component"),
        (agent_bytes("command"), StatusCode::UNPROCESSABLE_ENTITY, "no `run` export"),
        (
            agent_bytes("wrong-signature"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "does not implement the braid:agent@0.1.0 world",
        ),
    ] {
        let (got, body) = put_agent(&client, &server, "bad", "1", bytes).await;
        assert_eq!(got, status, "{body}");
        assert!(body["error"].as_str().unwrap().contains(expected), "{body}");
    }
    assert_eq!(get_json(&client, &server, "/v1/agents").await["agents"], json!([]), "nothing bad was stored");

    let (status, body) = put_agent(&client, &server, "bad name!", "1", agent_bytes("echo")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    deploy_examples(&client, &server).await;
    let invalid = json!({ "steps": [ { "id": "a", "agent": "ghost" }, { "id": "a", "type": "parallel", "max_parallelism": 0, "branches": [] } ] });
    let (status, body) = put_workflow(&client, &server, "broken", "1", &invalid).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["details"]["problems"].as_array().unwrap().len() >= 2, "every problem is listed: {body}");
    let unknown_agent = json!({ "steps": [ { "id": "a", "agent": "ghost" } ] });
    let (status, body) = put_workflow(&client, &server, "ghostly", "1", &unknown_agent).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["details"]["problems"][0]["message"], "unknown agent \"ghost\"");
    let mismatch = json!({ "name": "other", "version": "1", "steps": [ { "id": "a", "agent": "shout" } ] });
    let (status, _) = put_workflow(&client, &server, "mine", "1", &mismatch).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // The server stops reading at the limit and closes that connection: its own client.
    let huge = "x".repeat(17 << 20);
    let response = Client::new().put(server.url("/v1/workflows/huge/1")).body(huge).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("over the limit"));

    let response = client.post(server.url("/v1/workflows/report/runs")).body("{nope").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let (status, body) = start_run(&client, &server, "no-such-workflow", json!({}), false).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let response = client.get(server.url("/v1/runs/not-a-uuid")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = client.get(server.url("/v1/nowhere")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body: Value = response.json().await.unwrap();
    assert!(body.get("error").is_some() && body.get("details").is_some());
    drop(server);
    db.drop_database().await;
}

fn sleeper_workflow(agent: &str) -> Value {
    json!({ "steps": [ { "id": "work", "agent": agent, "input": { "action": "sleep", "ms": 1500 } } ] })
}

#[tokio::test]
async fn a_new_agent_version_never_changes_runs_in_flight_and_old_versions_still_run() {
    let db = TestDb::postgres().await;
    let cache = scratch();
    let server = Server::start(&db.url, cache.path(), None, &[]);
    let client = Client::new();
    let (_, v1) = put_agent(&client, &server, "worker", "1", agent_bytes("misbehave")).await;
    put_workflow(&client, &server, "job", "1", &sleeper_workflow("worker")).await;
    put_workflow(&client, &server, "job-pinned", "1", &sleeper_workflow("worker@1")).await;

    // A run on worker@1 (the latest) is in flight while worker@2 is deployed.
    let (_, in_flight) = start_run(&client, &server, "job", json!({}), false).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, v2) = put_agent(&client, &server, "worker", "2", agent_bytes("echo")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_ne!(v1["digest"], v2["digest"]);

    let old =
        wait_for_run(&client, &server, in_flight["run_id"].as_str().unwrap(), |r| r["finished_at"].is_string()).await;
    assert_eq!(old["status"], "succeeded", "{old}");
    assert_eq!(step(&old, "work")[0]["agent_digest"], v1["digest"], "the run kept the digest it started with");
    assert_eq!(old["output"], json!({ "slept_ms": 1500 }));
    assert_eq!(old["pinned_agents"]["worker"]["version"], "1");

    // New runs of the same workflow pick up the new latest version...
    let (_, new) = start_run(&client, &server, "job", json!({}), true).await;
    assert_eq!(step(&new, "work")[0]["agent_digest"], v2["digest"], "{new}");
    // ...and the pinned workflow keeps running the old one: rolling back is running it.
    let (_, pinned) = start_run(&client, &server, "job-pinned", json!({}), true).await;
    assert_eq!(step(&pinned, "work")[0]["agent_digest"], v1["digest"]);

    // Workflow versions too: version 2 of "job" is new; "version": "1" runs the old one.
    let echo_job = json!({ "steps": [ { "id": "work", "agent": "worker@2", "input": { "hello": 1 } } ] });
    put_workflow(&client, &server, "job", "2", &echo_job).await;
    let (_, latest) = start_run(&client, &server, "job", json!({}), true).await;
    assert_eq!(latest["workflow_version"], "2");
    let (_, rolled_back) = start_run(&client, &server, "job", json!({ "version": "1" }), true).await;
    assert_eq!(rolled_back["workflow_version"], "1");
    drop(server);
    db.drop_database().await;
}

fn loads(metrics: &str, how: &str) -> u64 {
    metrics
        .lines()
        .find(|line| line.starts_with(&format!("braid_component_loads_total{{how=\"{how}\"}}")))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_restarted_host_reuses_its_precompiled_artifacts_without_compiling() {
    let db = TestDb::postgres().await;
    let cache = scratch();
    let client = Client::new();
    let server = Server::start(&db.url, cache.path(), None, &[]);
    deploy_examples(&client, &server).await;
    put_workflow(&client, &server, "report", "1", &example("parallel.json")).await;
    let metrics = client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert_eq!(loads(&metrics, "compiled"), 4, "each agent compiled once, at deploy");
    assert!(server.stop().success());
    let artifacts = std::fs::read_dir(cache.path()).unwrap().count();
    assert_eq!(artifacts, 4, "one precompiled artifact per agent");

    let server = Server::start(&db.url, cache.path(), None, &[]);
    let (status, run) = start_run(&client, &server, "report", json!({ "input": { "text": "warm" } }), true).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(run["status"], "succeeded");
    let metrics = client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert_eq!(loads(&metrics, "compiled"), 0, "nothing was compiled after the restart:\n{metrics}");
    assert_eq!(loads(&metrics, "precompiled"), 4);
    drop(server);
    db.drop_database().await;
}

#[tokio::test]
async fn with_a_token_every_v1_request_needs_it_and_health_stays_open() {
    let db = TestDb::sqlite();
    let cache = scratch();
    let server = Server::start(&db.url, cache.path(), Some("s3cret-long-enough-token"), &[]);
    let client = Client::new();
    let anonymous = client.get(server.url("/v1/agents")).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let body: Value = anonymous.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("bearer token"));
    let wrong = client.get(server.url("/v1/agents")).bearer_auth("guess").send().await.unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let right = client.get(server.url("/v1/agents")).bearer_auth("s3cret-long-enough-token").send().await.unwrap();
    assert_eq!(right.status(), StatusCode::OK);
    let upload = client.put(server.url("/v1/agents/echo/1")).body(agent_bytes("echo")).send().await.unwrap();
    assert_eq!(upload.status(), StatusCode::UNAUTHORIZED, "nothing is deployed without the token");
    let health = client.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    drop(server);

    let refused = braid()
        .args(["serve", "--listen", "0.0.0.0:0", "--database-url", &db.url])
        .env_remove("BRAID_API_TOKEN")
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("refusing to listen on 0.0.0.0:0 without a token"));
}

#[tokio::test]
async fn cancelling_a_run_stops_it_promptly() {
    let db = TestDb::postgres().await;
    let cache = scratch();
    let server = Server::start(&db.url, cache.path(), None, &[]);
    let client = Client::new();
    put_agent(&client, &server, "worker", "1", agent_bytes("misbehave")).await;
    let forever =
        json!({ "steps": [ { "id": "spin", "agent": "worker", "input": { "action": "loop" }, "timeout_ms": 60000 } ] });
    put_workflow(&client, &server, "forever", "1", &forever).await;
    let (_, accepted) = start_run(&client, &server, "forever", json!({}), false).await;
    let id = accepted["run_id"].as_str().unwrap().to_owned();
    wait_for_run(&client, &server, &id, |r| r["status"] == "running").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let response = client.post(server.url(&format!("/v1/runs/{id}/cancel"))).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let run = wait_for_run(&client, &server, &id, |r| r["status"] == "cancelled").await;
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    assert_eq!(run["status"], "cancelled");
    assert_eq!(step(&run, "spin")[0]["outcome"], "cancelled");
    let again = client.post(server.url(&format!("/v1/runs/{id}/cancel"))).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::CONFLICT);
    drop(server);
    db.drop_database().await;
}

#[tokio::test]
async fn metrics_count_runs_steps_deploys_and_instances() {
    let db = TestDb::sqlite();
    let cache = scratch();
    let server = Server::start(&db.url, cache.path(), None, &[]);
    let client = Client::new();
    deploy_examples(&client, &server).await;
    put_workflow(&client, &server, "report", "1", &example("parallel.json")).await;
    start_run(&client, &server, "report", json!({ "input": { "text": "count me" } }), true).await;
    let metrics = client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for expected in [
        "braid_runs_total{status=\"succeeded\"} 1",
        "braid_steps_total{outcome=\"succeeded\",status=\"succeeded\",step_type=\"agent\"} 4",
        "braid_steps_total{outcome=\"\",status=\"succeeded\",step_type=\"parallel\"} 1",
        "braid_step_duration_seconds_count{step_type=\"agent\"} 4",
        "braid_deploys_total{kind=\"agent\",result=\"ok\"} 4",
        "braid_deploys_total{kind=\"workflow\",result=\"ok\"} 1",
        "braid_live_instances 0",
        "braid_instance_capacity 128",
    ] {
        assert!(metrics.contains(expected), "missing {expected:?} in\n{metrics}");
    }
    drop(server);
}

#[tokio::test]
async fn shutdown_interrupts_what_it_must_and_the_next_start_resumes_without_rerunning_finished_steps() {
    for db in TestDb::both().await {
        let cache = scratch();
        let client = Client::new();
        let server = Server::start(&db.url, cache.path(), None, &["--grace-period-ms", "200"]);
        put_agent(&client, &server, "word-count", "1", agent_bytes("word-count")).await;
        put_agent(&client, &server, "worker", "1", agent_bytes("misbehave")).await;
        let two_steps = json!({ "steps": [
            { "id": "first", "agent": "word-count", "input": { "text": "done once" } },
            { "id": "second", "agent": "worker", "input": { "action": "sleep", "ms": 2000 } } ] });
        put_workflow(&client, &server, "two", "1", &two_steps).await;
        let (_, accepted) = start_run(&client, &server, "two", json!({}), false).await;
        let id = accepted["run_id"].as_str().unwrap().to_owned();
        let running = wait_for_run(&client, &server, &id, |r| {
            step(r, "second").first().is_some_and(|s| s["status"] == "running")
        })
        .await;
        assert_eq!(step(&running, "first")[0]["status"], "succeeded");

        let stopping = Instant::now();
        assert!(server.stop().success(), "{}: a clean exit", db.kind);
        assert!(stopping.elapsed() < Duration::from_secs(5), "the grace period bounds shutdown");

        // Restarted: the run resumes; the first step is not run again.
        let server = Server::start(&db.url, cache.path(), None, &[]);
        let resumed = wait_for_run(&client, &server, &id, |r| r["status"] == "succeeded").await;
        assert_eq!(resumed["status"], "succeeded", "{}: {resumed}", db.kind);
        assert_eq!(step(&resumed, "first").len(), 1, "the finished step ran once");
        let second: Vec<_> =
            step(&resumed, "second").iter().map(|s| s["status"].as_str().unwrap().to_owned()).collect();
        assert_eq!(second, ["cancelled", "succeeded"], "{}", db.kind);
        assert_eq!(resumed["output"], json!({ "slept_ms": 2000 }));
        drop(server);
        db.drop_database().await;
    }
}

#[tokio::test]
async fn what_the_cli_pushes_a_running_server_runs() {
    let db = TestDb::postgres().await;
    let cache = scratch();
    let server = Server::start(&db.url, cache.path(), None, &[]);
    let client = Client::new();
    let path = braid_test_artifacts::agent_path("shout");
    let pushed = braid()
        .args(["agent", "push", path.to_str().unwrap(), "--name", "shout", "--version", "7", "--database-url", &db.url])
        .arg("--cache-dir")
        .arg(cache.path())
        .output()
        .unwrap();
    assert!(pushed.status.success(), "{}", String::from_utf8_lossy(&pushed.stderr));
    let workflow = json!({ "steps": [ { "id": "loud", "agent": "shout@7", "input": { "text": "${ input.text }" } } ] });
    let (status, _) = put_workflow(&client, &server, "loud", "1", &workflow).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, run) = start_run(&client, &server, "loud", json!({ "input": { "text": "pushed by the cli" } }), true).await;
    assert_eq!(run["output"], json!({ "text": "PUSHED BY THE CLI" }));
    drop(server);
    db.drop_database().await;
}

#[tokio::test]
async fn an_input_that_does_not_match_the_schema_is_refused_with_422() {
    let db = TestDb::sqlite();
    let cache = scratch();
    let server = Server::start(&db.url, cache.path(), None, &[]);
    let client = Client::new();
    put_agent(&client, &server, "word-count", "1", agent_bytes("word-count")).await;
    let typed = json!({ "input_schema": { "type": "object", "required": ["text"], "properties": { "text": { "type": "string" } } },
        "steps": [ { "id": "count", "agent": "word-count", "input": { "text": "${ input.text }" } } ] });
    let (status, _) = put_workflow(&client, &server, "typed", "1", &typed).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = start_run(&client, &server, "typed", json!({ "input": { "text": 42 } }), true).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["details"]["problems"][0].as_str().unwrap().starts_with("input/text:"), "{body}");
    let runs = get_json(&client, &server, "/v1/runs").await;
    assert_eq!(runs["runs"], json!([]), "nothing ran");
    let (status, ok) = start_run(&client, &server, "typed", json!({ "input": { "text": "fine words" } }), true).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ok["output"]["words"], 2);
    drop(server);
}
