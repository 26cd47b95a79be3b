//! A run's live events: `GET /v1/runs/{id}/events` (Server-Sent Events) from a real
//! `braid serve`, and `braid runs watch` from another process.

mod common;

use braid::store::Store;
use common::server::{Server, deploy_with_misbehave, scratch, start_run};
use common::{TestDb, braid};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use std::collections::HashMap;

/// 1,000 branches that each sleep 10 ms, 64 at a time.
fn wide() -> Value {
    let branches: Vec<Value> = (0..1000)
        .map(|i| json!({ "name": format!("b{i}"), "agent": "misbehave", "input": { "action": "sleep", "ms": 30 } }))
        .collect();
    json!({ "name": "wide", "version": "1",
            "steps": [{ "id": "fan", "type": "parallel", "max_parallelism": 64, "branches": branches }] })
}

/// The events of one SSE body: (event name, data as JSON).
fn parse_sse(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter_map(|frame| {
            let mut name = None;
            let mut data = String::new();
            for line in frame.lines() {
                if let Some(value) = line.strip_prefix("event:") {
                    name = Some(value.trim().to_owned());
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push_str(value.trim_start());
                }
            }
            Some((name?, serde_json::from_str(&data).unwrap_or(Value::Null)))
        })
        .collect()
}

/// Every execution's final status, counted per execution id; asserts the stream's shape.
fn ends(events: &[(String, Value)]) -> HashMap<String, usize> {
    assert_eq!(events.first().map(|(name, _)| name.as_str()), Some("run"), "the run's state comes first");
    let (last, data) = events.last().unwrap();
    assert_eq!(last, "end", "the stream ends with the run");
    assert_eq!(data["run"]["status"], "succeeded");
    let mut ends: HashMap<String, usize> = HashMap::new();
    for (name, data) in events {
        if name == "step" && !["running", "pending"].contains(&data["step"]["status"].as_str().unwrap()) {
            *ends.entry(data["step"]["id"].as_str().unwrap().to_owned()).or_default() += 1;
        }
    }
    ends
}

async fn subscribe(client: &Client, server: &Server, id: &str) -> Vec<(String, Value)> {
    let response = client.get(server.url(&format!("/v1/runs/{id}/events"))).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    parse_sse(&response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_end_reaches_two_subscribers_once_and_a_late_one_gets_the_state_first() {
    let db = TestDb::postgres().await;
    let cache = scratch();
    let server = Server::start(&db.url, cache.path(), None, &[]);
    let client = Client::new();
    deploy_with_misbehave(&client, &server, &wide()).await;
    let (status, accepted) = start_run(&client, &server, "wide", json!({}), false).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let id = accepted["run_id"].as_str().unwrap().to_owned();

    let (first, second) = tokio::join!(subscribe(&client, &server, &id), subscribe(&client, &server, &id));
    let store = Store::open(&db.url).await.unwrap();
    let rows = store.run_steps(id.parse().unwrap()).await.unwrap();
    assert_eq!(rows.len(), 1001, "the block and its 1,000 branches");
    for events in [&first, &second] {
        let ends = ends(events);
        assert_eq!(ends.len(), rows.len(), "every execution's end arrived");
        assert!(ends.values().all(|&n| n == 1), "each exactly once");
    }
    // Live: the subscribers saw executions running before they ended.
    assert!(first.iter().any(|(name, data)| name == "step" && data["step"]["status"] == "running"));

    // After the end, a subscriber gets the whole state at once, then the end.
    let late = subscribe(&client, &server, &id).await;
    assert_eq!(ends(&late).len(), rows.len());
    assert_eq!(late.len(), 1 + rows.len() + 1, "run, every execution once, end");

    let unknown = client.get(server.url(&format!("/v1/runs/{}/events", uuid::Uuid::now_v7()))).send().await.unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    store.close().await.unwrap();
    drop(server);
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn braid_runs_watch_follows_a_run_another_process_executes() {
    let db = TestDb::sqlite();
    let cache = scratch();
    let server = Server::start(&db.url, cache.path(), None, &[]);
    let client = Client::new();
    let workflow = json!({ "name": "steps", "version": "1", "steps": [
        { "id": "a", "agent": "misbehave", "input": { "action": "sleep", "ms": 300 } },
        { "id": "b", "agent": "misbehave", "input": { "action": "sleep", "ms": 300 } } ] });
    deploy_with_misbehave(&client, &server, &workflow).await;
    let (_, accepted) = start_run(&client, &server, "steps", json!({}), false).await;
    let id = accepted["run_id"].as_str().unwrap().to_owned();

    let watched = tokio::task::spawn_blocking({
        let (url, id) = (db.url.clone(), id.clone());
        move || braid().args(["runs", "watch", &id, "--output", "json", "--database-url", &url]).output().unwrap()
    })
    .await
    .unwrap();
    assert!(watched.status.success(), "{}", String::from_utf8_lossy(&watched.stderr));
    let events: Vec<Value> =
        String::from_utf8_lossy(&watched.stdout).lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(events.first().unwrap()["type"], "run");
    assert_eq!(events.last().unwrap()["type"], "end");
    let statuses = |step: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["type"] == "step" && e["step"]["step_id"] == step)
            .map(|e| e["step"]["status"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(statuses("b"), ["running", "succeeded"], "b was seen running, then done: {events:?}");

    // Text, after the end: the state, then the end line; exit 0 for a succeeded run.
    let text = braid().args(["runs", "watch", &id, "--database-url", &db.url]).output().unwrap();
    assert!(text.status.success());
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("  a  succeeded") && text.ends_with(&format!("run {id} succeeded\n")), "{text}");
    drop(server);
}
