//! OpenTelemetry traces: a real `braid serve` exporting over OTLP/HTTP to a receiver in the
//! test (on 127.0.0.1), as JSON and as protobuf.

mod common;

use axum::body::Bytes;
use axum::http::HeaderMap;
use common::TestDb;
use common::server::{Server, deploy_with_misbehave, scratch};
use reqwest::Client;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the receiver got: each request's content type and body.
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

async fn receiver() -> (String, Received) {
    let received: Received = Arc::default();
    let store = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let store = store.clone();
            async move {
                let kind = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                store.lock().unwrap().push((kind, body.to_vec()));
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{address}"), received)
}

fn workflow() -> Value {
    json!({ "name": "traced", "version": "1", "steps": [
        { "id": "first", "agent": "misbehave", "input": { "action": "log", "lines": 2 } },
        { "id": "fan", "type": "parallel", "branches": [
            { "name": "b0", "agent": "misbehave", "fuel": 1000000000, "input": { "action": "sleep", "ms": 20 } },
            { "name": "b1", "agent": "misbehave", "input": { "action": "sleep", "ms": 20 } } ] },
        { "id": "items", "type": "map", "items": "${ [1, 2] }",
          "step": { "id": "each", "agent": "misbehave", "input": { "action": "ok" } } } ] })
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

async fn run_traced(server: &Server) -> String {
    let client = Client::new();
    deploy_with_misbehave(&client, server, &workflow()).await;
    let response = client
        .post(server.url("/v1/workflows/traced/runs?wait=true"))
        .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let run: Value = response.json().await.unwrap();
    assert_eq!(run["status"], "succeeded", "{run}");
    run["run_id"].as_str().unwrap().to_owned()
}

/// Waits until the receiver has a request whose body mentions `needle`.
async fn wait_for(received: &Received, needle: &str) -> Vec<(String, Vec<u8>)> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = received.lock().unwrap().clone();
        if got.iter().any(|(_, body)| body.windows(needle.len()).any(|w| w == needle.as_bytes())) {
            return got;
        }
        assert!(Instant::now() < deadline, "no trace arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An OTLP/JSON attribute's value as text.
fn attribute(span: &Value, key: &str) -> Option<String> {
    let attributes = span["attributes"].as_array()?;
    let value = &attributes.iter().find(|a| a["key"] == key)?["value"];
    value.as_object()?.values().next().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_one_trace_nested_as_its_steps_with_their_attributes_and_logs() {
    let (endpoint, received) = receiver().await;
    let db = TestDb::sqlite();
    let cache = scratch();
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")];
    let server = Server::start_with_env(&db.url, cache.path(), None, &[], &env);
    let run_id = run_traced(&server).await;
    let got = wait_for(&received, &run_id).await;

    let mut spans: Vec<Value> = Vec::new();
    for (kind, body) in &got {
        assert!(kind.starts_with("application/json"), "{kind}");
        let request: Value = serde_json::from_slice(body).unwrap();
        for resource in request["resourceSpans"].as_array().unwrap() {
            for scope in resource["scopeSpans"].as_array().unwrap() {
                spans.extend(scope["spans"].as_array().unwrap().iter().cloned());
            }
        }
    }
    let by_name: HashMap<String, &Value> = spans.iter().map(|s| (s["name"].as_str().unwrap().to_owned(), s)).collect();
    let id = |name: &str| by_name[name]["spanId"].as_str().unwrap().to_owned();
    let parent = |name: &str| {
        by_name.get(name).unwrap_or_else(|| panic!("no span {name}: {by_name:#?}"))["parentSpanId"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    // One trace, the caller's, and the run is the caller span's child.
    assert!(spans.iter().all(|s| s["traceId"] == TRACE_ID), "{spans:#?}");
    assert_eq!(parent("run traced"), CALLER_SPAN);
    assert_eq!(attribute(by_name["run traced"], "braid.run_id").as_deref(), Some(run_id.as_str()));
    // run → block → branch/item → step (attempt).
    assert_eq!(parent("step first"), id("run traced"));
    assert_eq!(parent("parallel fan"), id("run traced"));
    assert_eq!(parent("branch b0"), id("parallel fan"));
    assert_eq!(parent("step b0"), id("branch b0"));
    assert_eq!(parent("map items"), id("run traced"));
    assert_eq!(parent("item 0"), id("map items"));
    assert_eq!(parent("item 1"), id("map items"));
    let step = by_name["step b0"];
    assert_eq!(attribute(step, "braid.branch").as_deref(), Some("b0"));
    assert_eq!(attribute(step, "braid.outcome").as_deref(), Some("succeeded"));
    assert_eq!(attribute(step, "braid.attempt").as_deref(), Some("1"));
    assert!(attribute(step, "braid.agent_digest").is_some_and(|d| d.len() == 64));
    // A step with a fuel budget runs metered code and reports what it burned; without one
    // it is not metered.
    assert!(attribute(step, "braid.fuel_consumed").is_some());
    assert!(attribute(by_name["step b1"], "braid.fuel_consumed").is_none());
    assert!(attribute(step, "braid.memory_peak_bytes").is_some());
    let items: Vec<&Value> = spans.iter().filter(|s| s["name"] == "step each").collect();
    assert_eq!(items.len(), 2);
    for item in items {
        let index = attribute(item, "braid.item_index").unwrap();
        assert_eq!(item["parentSpanId"].as_str().unwrap(), id(&format!("item {}", index.trim_matches('"'))));
    }
    // The agent's log lines are the step span's events.
    // A malformed traceparent is refused, naming the header.
    let refused = Client::new()
        .post(server.url("/v1/workflows/traced/runs"))
        .header("traceparent", "00-not-a-trace-01")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), reqwest::StatusCode::BAD_REQUEST);
    assert!(refused.text().await.unwrap().contains("traceparent"));
    let events: Vec<&str> =
        by_name["step first"]["events"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(events, ["log line 0", "log line 1"]);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_is_the_default_protocol() {
    let (endpoint, received) = receiver().await;
    let db = TestDb::sqlite();
    let cache = scratch();
    let server =
        Server::start_with_env(&db.url, cache.path(), None, &[], &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())]);
    let run_id = run_traced(&server).await;
    let got = wait_for(&received, &run_id).await;
    assert!(
        got.iter().all(|(kind, _)| kind == "application/x-protobuf"),
        "{:?}",
        got.iter().map(|g| &g.0).collect::<Vec<_>>()
    );
    drop(server);
}
