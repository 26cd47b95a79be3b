//! Hostile and careless callers and authors, tried from outside against the real `braid
//! serve` and CLI on Postgres and SQLite: deeply nested JSON, values the database cannot
//! store, unreadable rows, unauthenticated uploads. Each refusal is clear and names what is
//! wrong; nothing one caller sends fails another caller's run.

mod common;

use braid::store::{LogRecord, StepRecord, StepStatus, Store, StoreError};
use braid_test_artifacts::agent_bytes;
use common::server::{Server, get_json, put_agent, put_workflow, rss_kib, scratch, start_run, step};
use common::{TestDb, braid};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

fn nested(depth: usize) -> Value {
    serde_json::from_str(&format!("{}1{}", "[".repeat(depth), "]".repeat(depth))).unwrap()
}

fn nested_text(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

async fn deploy_agents(client: &Client, server: &Server) {
    for name in ["echo", "misbehave"] {
        let (status, body) = put_agent(client, server, name, "1", agent_bytes(name)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
}

/// Two branches echo the input, inside a block inside another: Braid's documents nest the
/// input a few levels deeper than it came in.
fn echo_twice() -> Value {
    json!({
        "name": "echo-twice", "version": "1",
        "steps": [{ "id": "outer", "type": "parallel", "branches": [{ "name": "only", "steps": [
            { "id": "fan", "type": "parallel", "branches": [
                { "name": "a", "agent": "echo", "input": "${ input }" },
                { "name": "b", "agent": "echo", "input": { "wrapped": { "again": "${ input }" } } }
            ] }
        ] }] }]
    })
}

#[tokio::test]
async fn deep_json_is_refused_at_the_door_and_everything_stored_reads_back() {
    for db in TestDb::both().await {
        let cache = scratch();
        let server = Server::start(&db.url, cache.path(), None, &[]);
        let client = Client::new();
        deploy_agents(&client, &server).await;
        let (status, body) = put_workflow(&client, &server, "echo-twice", "1", &echo_twice()).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");

        // At the limit (branch b wraps the input two levels deeper): runs, and its documents,
        // which nest the outputs deeper still, read back everywhere.
        let (status, run) = start_run(&client, &server, "echo-twice", json!({ "input": nested(62) }), true).await;
        assert_eq!(status, StatusCode::OK, "{}: {run}", db.kind);
        assert_eq!(run["status"], "succeeded", "{}: {}", db.kind, run["error"]);
        let id = run["run_id"].as_str().unwrap();
        let shown = client.get(server.url(&format!("/v1/runs/{id}"))).send().await.unwrap();
        assert_eq!(shown.status(), StatusCode::OK, "{}", db.kind);
        let listed = client.get(server.url("/v1/runs")).send().await.unwrap();
        assert_eq!(listed.status(), StatusCode::OK, "{}", db.kind);
        let listed = braid().args(["runs", "list", "--database-url", &db.url]).output().unwrap();
        assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));

        // Over it: refused, naming where.
        let (status, body) = start_run(&client, &server, "echo-twice", json!({ "input": nested(65) }), false).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains("nests deeper than 64 levels"), "{error}");
        assert_eq!(body["details"]["path"], format!("input{}", "[0]".repeat(64)));
        let too_deep_for_serde = client
            .post(server.url("/v1/workflows/echo-twice/runs"))
            .body(format!(r#"{{"input": {}}}"#, nested_text(400)))
            .send()
            .await
            .unwrap();
        assert_eq!(too_deep_for_serde.status(), StatusCode::UNPROCESSABLE_ENTITY);

        // A definition too deep is refused as a definition.
        let mut deep = echo_twice();
        deep["version"] = json!("2");
        deep["steps"][0]["branches"][0]["steps"][0]["branches"][0]["input"] = nested(70);
        let (status, body) = put_workflow(&client, &server, "echo-twice", "2", &deep).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(body.to_string().contains("nests deeper than 64 levels"), "{body}");

        // An agent that answers JSON too deep: invalid_output, and the run reads back.
        let raw = json!({ "name": "raw", "version": "1",
            "steps": [{ "id": "deep", "agent": "misbehave", "input": { "action": "raw", "text": nested_text(200) } }] });
        assert_eq!(put_workflow(&client, &server, "raw", "1", &raw).await.0, StatusCode::CREATED);
        let (status, run) = start_run(&client, &server, "raw", json!({}), true).await;
        assert_eq!(status, StatusCode::OK, "{run}");
        let deep_step = &step(&run, "deep")[0];
        assert_eq!(deep_step["outcome"], "invalid_output", "{run}");
        assert!(deep_step["error"].as_str().unwrap().contains("nests deeper"), "{deep_step}");
        drop(server);
        db.drop_database().await;
    }
}

#[tokio::test]
async fn the_cli_refuses_deep_or_nul_input_with_exit_2_naming_it() {
    let dir = scratch();
    let file = dir.path().join("one.json");
    std::fs::write(
        &file,
        json!({ "name": "one", "version": "1", "steps": [{ "id": "e", "agent": "echo", "input": "${ input }" }] })
            .to_string(),
    )
    .unwrap();
    for (input, expected) in [
        (nested_text(65), "nests deeper than 64 levels"),
        (r#"{"name": "a\u0000b"}"#.to_owned(), "--input.name holds a NUL character"),
    ] {
        let ran = braid()
            .arg("run")
            .arg(&file)
            .args(["--agents", braid_test_artifacts::agents_dir().to_str().unwrap(), "--input", &input])
            .arg("--database-url")
            .arg(format!("sqlite://{}", dir.path().join("braid.db").display()))
            .arg("--cache-dir")
            .arg(dir.path().join("cache"))
            .output()
            .unwrap();
        assert_eq!(ran.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&ran.stderr);
        assert!(stderr.contains("--input") && stderr.contains(expected), "{stderr}");
    }
}

#[tokio::test]
async fn an_unreadable_run_row_is_named_and_skipped_by_listings_and_start_up() {
    let db = TestDb::sqlite();
    let cache = scratch();
    let client = Client::new();
    let server = Server::start(&db.url, cache.path(), None, &[]);
    deploy_agents(&client, &server).await;
    put_workflow(&client, &server, "echo-twice", "1", &echo_twice()).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (_, run) = start_run(&client, &server, "echo-twice", json!({ "input": { "n": 1 } }), true).await;
        ids.push(run["run_id"].as_str().unwrap().to_owned());
    }
    assert!(server.stop().success());

    // Damage one row as a disk or a hand could: it is unfinished, so start-up claims it.
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&db.url).await.unwrap();
    sqlx::query(&format!(
        "UPDATE workflow_runs SET input = '{{not json', status = 'running', owner_host_id = NULL WHERE id = '{}'",
        ids[1]
    ))
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    let listed = braid().args(["runs", "list", "--output", "json", "--database-url", &db.url]).output().unwrap();
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let runs: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let listed_ids: Vec<&str> = runs["runs"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(listed_ids.len(), 2, "{runs}");
    assert!(!listed_ids.contains(&ids[1].as_str()));
    assert!(String::from_utf8_lossy(&listed.stderr).contains(&ids[1]), "the bad row is named");

    let server = Server::start(&db.url, cache.path(), None, &[]);
    let listed = get_json(&client, &server, "/v1/runs").await;
    assert_eq!(listed["runs"].as_array().unwrap().len(), 2, "{listed}");
    // Start-up went on, and the run nobody can resume ended, saying why.
    let store = Store::open(&db.url).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let pool = sqlx::AnyPool::connect(&db.url).await.unwrap();
        let (status, error): (String, Option<String>) =
            sqlx::query_as(&format!("SELECT status, error FROM workflow_runs WHERE id = '{}'", ids[1]))
                .fetch_one(&pool)
                .await
                .unwrap();
        pool.close().await;
        if status == "failed" {
            assert!(error.unwrap_or_default().contains("cannot be read"));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the unreadable run was never closed ({status})");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (status, run) = start_run(&client, &server, "echo-twice", json!({ "input": { "n": 2 } }), true).await;
    assert_eq!((status, run["status"].as_str()), (StatusCode::OK, Some("succeeded")));
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_nul_in_one_run_never_fails_another_callers_run() {
    let db = TestDb::postgres().await;
    let cache = scratch();
    let server = Server::start(&db.url, cache.path(), None, &[]);
    let client = Client::new();
    deploy_agents(&client, &server).await;
    put_workflow(&client, &server, "echo-twice", "1", &echo_twice()).await;
    // A template that builds a NUL, and an agent that answers one (escaped in its JSON).
    let builds = json!({ "name": "builds-nul", "version": "1",
        "steps": [{ "id": "e", "agent": "echo", "input": { "text": "${ 'a\\u0000b' }" } }] });
    assert_eq!(put_workflow(&client, &server, "builds-nul", "1", &builds).await.0, StatusCode::CREATED);
    let answers = json!({ "name": "answers-nul", "version": "1",
        "steps": [{ "id": "e", "agent": "misbehave", "input": { "action": "raw", "text": "{\"a\": \"x\\u0000y\"}" } }] });
    assert_eq!(put_workflow(&client, &server, "answers-nul", "1", &answers).await.0, StatusCode::CREATED);

    // A run output that builds one: the run fails, recorded, rather than never finishing.
    let output = json!({ "name": "output-nul", "version": "1", "output": "${ 'a\\u0000b' }",
        "steps": [{ "id": "e", "agent": "echo" }] });
    assert_eq!(put_workflow(&client, &server, "output-nul", "1", &output).await.0, StatusCode::CREATED);
    let (status, run) = start_run(&client, &server, "output-nul", json!({}), true).await;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!(run["status"], "failed");
    assert!(run["error"].as_str().unwrap().contains("NUL"), "{run}");

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..240 {
        let (client, url) = (client.clone(), server.base.clone());
        tasks.spawn(async move {
            let (workflow, input, wait) = match i % 4 {
                0 => ("echo-twice", json!({ "text": format!("bad\u{0}{i}") }), true),
                1 => ("builds-nul", json!({}), true),
                2 => ("answers-nul", json!({}), true),
                _ => ("echo-twice", json!({ "text": format!("fine {i}") }), i % 8 == 3),
            };
            let query = if wait { "?wait=true" } else { "" };
            let response = client
                .post(format!("{url}/v1/workflows/{workflow}/runs{query}"))
                .json(&json!({ "input": input }))
                .send()
                .await
                .unwrap();
            (i, response.status(), response.json::<Value>().await.unwrap())
        });
    }
    let mut accepted = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (i, status, body) = joined.unwrap();
        match i % 4 {
            0 => {
                assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
                assert_eq!(body["details"]["path"], "input.text", "{body}");
            }
            1 => {
                assert_eq!(status, StatusCode::OK, "{body}");
                assert_eq!(body["status"], "failed");
                assert!(step(&body, "e")[0]["error"].as_str().unwrap().contains("NUL"), "{body}");
            }
            2 => {
                assert_eq!(status, StatusCode::OK, "{body}");
                assert_eq!(step(&body, "e")[0]["outcome"], "invalid_output", "{body}");
            }
            _ if i % 8 == 3 => {
                assert_eq!(status, StatusCode::OK, "{body}");
                assert_eq!(body["status"], "succeeded", "{body}");
            }
            _ => {
                assert_eq!(status, StatusCode::ACCEPTED, "{body}");
                accepted.push(body["run_id"].as_str().unwrap().to_owned());
            }
        }
    }
    for id in accepted {
        let run = common::server::wait_for_run(&client, &server, &id, |r| r["status"] == "succeeded").await;
        assert_eq!(run["status"], "succeeded", "every accepted run finished: {run}");
    }
    drop(server);
    db.drop_database().await;
}

#[tokio::test]
async fn a_row_the_database_refuses_fails_only_its_own_writer() {
    // Below the door: rows the checks missed. The commit they share fails, and is written
    // again row by row so that only the bad row's writer hears of it.
    for db in TestDb::both().await {
        let store = Store::open(&db.url).await.unwrap();
        let recorder = store.recorder();
        let run = common::run_record("shared");
        recorder.run(run.clone(), None, None).committed().await.unwrap();
        let fence = braid::store::Fence::new(run.epoch);
        let mut pending = Vec::new();
        for i in 0..200 {
            let mut row = common::step_record(&run, &format!("s{i}"));
            if i == 77 {
                // Postgres refuses a NUL in text; SQLite, a status the schema does not allow.
                row.error = Some("bad\u{0}row".into());
                row.step_type = "nonsense".into();
            }
            let log = LogRecord {
                step_execution_id: row.id,
                seq: 0,
                level: "info".into(),
                source: "stdout".into(),
                message: format!("line {i}"),
                logged_at: chrono::Utc::now(),
            };
            pending.push(recorder.step(row, vec![log], &fence));
        }
        let mut failed = Vec::new();
        for (i, write) in pending.into_iter().enumerate() {
            if let Err(err) = write.committed().await {
                failed.push((i, err));
            }
        }
        assert_eq!(failed.len(), 1, "{}: {failed:?}", db.kind);
        assert_eq!(failed[0].0, 77);
        assert!(matches!(failed[0].1, StoreError::Query(_)), "{:?}", failed[0].1);
        let steps: Vec<StepRecord> = store.run_steps(run.id).await.unwrap();
        assert_eq!(steps.len(), 199, "{}", db.kind);
        assert!(steps.iter().all(|s| s.status == StepStatus::Succeeded));
        assert_eq!(store.details_of(&steps).await.unwrap().logs.len(), 199, "logs went with their rows");
        store.close().await.unwrap();
        db.drop_database().await;
    }
}

const TOKEN: &str = "a-long-random-token-for-tests";

#[tokio::test]
async fn unauthenticated_uploads_are_refused_before_their_bodies_are_read() {
    let db = TestDb::sqlite();
    let cache = scratch();
    let server = Server::start(&db.url, cache.path(), Some(TOKEN), &[]);
    let client = Client::new();
    let small = client.put(server.url("/v1/agents/echo/1")).body(vec![0u8; 1024]).send().await.unwrap();
    assert_eq!(small.status(), StatusCode::UNAUTHORIZED);
    assert!(small.json::<Value>().await.unwrap()["error"].as_str().unwrap().contains("bearer token"));

    let before = rss_kib(server.child.id(), "VmRSS:");
    let upload = vec![7u8; 64 << 20];
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let request = client.put(server.url("/v1/agents/echo/1")).body(upload.clone());
        // The host answers at once and closes the connection: the client sees the 401, or
        // the connection closing while it still sends. Either way nothing was read.
        tasks.spawn(async move { request.send().await.map(|r| r.status()) });
    }
    while let Some(done) = tasks.join_next().await {
        if let Ok(status) = done.unwrap() {
            assert_eq!(status, StatusCode::UNAUTHORIZED);
        }
    }
    let peak = rss_kib(server.child.id(), "VmHWM:");
    assert!(
        peak < before + 32 * 1024,
        "16 unauthenticated 64 MiB uploads took the host from {before} KiB to a peak of {peak} KiB"
    );
    let authorized = client.get(server.url("/v1/agents")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(authorized.status(), StatusCode::OK, "the host still serves");
}

#[tokio::test]
async fn weak_tokens_are_refused_at_start_up_and_metrics_can_require_one() {
    let db = TestDb::sqlite();
    for (token, expected) in [
        ("   ", "whitespace"),
        ("", "shorter than 16 characters"),
        ("short", "shorter than 16 characters"),
        ("a-long-enough-token\n", "whitespace"),
    ] {
        let refused = braid()
            .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &db.url])
            .env("BRAID_API_TOKEN", token)
            .output()
            .unwrap();
        assert_eq!(refused.status.code(), Some(2), "{token:?}");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains("BRAID_API_TOKEN") && stderr.contains(expected), "{token:?}: {stderr}");
    }
    let refused = braid()
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &db.url, "--metrics-token"])
        .env_remove("BRAID_API_TOKEN")
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("requires BRAID_API_TOKEN"));

    let client = Client::new();
    let cache = scratch();
    // The API token guards /metrics too.
    let server = Server::start(&db.url, cache.path(), Some(TOKEN), &["--metrics-token"]);
    let anonymous = client.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let scraped = client.get(server.url("/metrics")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(scraped.status(), StatusCode::OK);
    assert!(scraped.text().await.unwrap().contains("braid_"));
    drop(server);
    // A token of its own: the scraper does not hold the API token.
    let scraper = "a-scraper-token-of-its-own";
    let server = Server::start(&db.url, cache.path(), None, &["--metrics-token", scraper]);
    assert_eq!(client.get(server.url("/metrics")).send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let scraped = client.get(server.url("/metrics")).bearer_auth(scraper).send().await.unwrap();
    assert_eq!(scraped.status(), StatusCode::OK);
    assert_eq!(client.get(server.url("/v1/runs")).send().await.unwrap().status(), StatusCode::OK, "no API token set");
    // Without the flag, /metrics stays open.
    drop(server);
    let server = Server::start(&db.url, cache.path(), Some(TOKEN), &[]);
    assert_eq!(client.get(server.url("/metrics")).send().await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn expression_bombs_are_refused_at_deploy_and_costly_expressions_stop_at_their_budget() {
    let db = TestDb::postgres().await;
    let cache = scratch();
    let server = Server::start(&db.url, cache.path(), None, &[]);
    let client = Client::new();
    deploy_agents(&client, &server).await;

    // Eight nested comprehensions over ten items: 10^8 steps. Refused, naming where.
    let ten = "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]";
    let mut bomb = "v0".to_owned();
    for level in (0..8).rev() {
        bomb = format!("{ten}.map(v{level}, {bomb})");
    }
    let definition = json!({ "name": "bomb", "version": "1",
        "steps": [{ "id": "e", "agent": "echo", "input": { "x": format!("${{ {bomb} }}") } }] });
    let (status, body) = put_workflow(&client, &server, "bomb", "1", &definition).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let problem = &body["details"]["problems"][0];
    assert_eq!(problem["path"], "steps[0].input.x", "{body}");
    assert!(problem["message"].as_str().unwrap().contains("nests comprehensions deeper than 3"), "{body}");

    // Three levels are allowed, but 200^3 steps are not: the step fails on its budget, and
    // the server keeps answering meanwhile.
    let cube = json!({ "name": "cube", "version": "1", "steps": [{ "id": "e", "agent": "echo",
        "input": "${ input.items.map(a, input.items.map(b, input.items.map(c, a + b + c))) }" }] });
    assert_eq!(put_workflow(&client, &server, "cube", "1", &cube).await.0, StatusCode::CREATED);
    let items: Vec<u32> = (0..200).collect();
    let mut runs = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let (client, url) = (client.clone(), server.url("/v1/workflows/cube/runs?wait=true"));
        let body = json!({ "input": { "items": items } });
        runs.spawn(async move { client.post(url).json(&body).send().await.unwrap().json::<Value>().await.unwrap() });
    }
    let mut slowest = std::time::Duration::ZERO;
    while !runs.is_empty() {
        let asked = std::time::Instant::now();
        let health = client.get(server.url("/healthz")).send().await.unwrap();
        assert_eq!(health.status(), StatusCode::OK);
        slowest = slowest.max(asked.elapsed());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        while let Some(done) = runs.try_join_next() {
            let run = done.unwrap();
            assert_eq!(run["status"], "failed", "{run}");
            assert!(step(&run, "e")[0]["error"].as_str().unwrap().contains("cost budget ran out"), "{run}");
        }
    }
    assert!(slowest < std::time::Duration::from_millis(500), "/healthz took {slowest:?} while expressions ran");
    drop(server);
    db.drop_database().await;
}

fn map_of(name: &str, max_items: Option<u64>) -> Value {
    let mut map = json!({ "id": "each", "type": "map", "items": "${ input.items }", "max_parallelism": 8,
        "step": { "id": "e", "agent": "echo", "input": "${ item }" } });
    if let Some(max) = max_items {
        map["max_items"] = json!(max);
    }
    json!({ "name": name, "version": "1", "steps": [map] })
}

#[tokio::test]
async fn maps_inputs_and_what_a_run_records_are_capped_with_clear_errors() {
    let db = TestDb::postgres().await;
    let cache = scratch();
    let server = Server::start(&db.url, cache.path(), None, &["--max-map-items", "1000", "--max-run-mb", "1"]);
    let client = Client::new();
    deploy_agents(&client, &server).await;
    assert_eq!(put_workflow(&client, &server, "map", "1", &map_of("map", None)).await.0, StatusCode::CREATED);
    assert_eq!(put_workflow(&client, &server, "small", "1", &map_of("small", Some(10))).await.0, StatusCode::CREATED);
    let items = |n: u32| json!({ "input": { "items": (0..n).collect::<Vec<u32>>() } });

    let (_, run) = start_run(&client, &server, "map", items(1000), true).await;
    assert_eq!(run["status"], "succeeded", "{}", run["error"]);
    let (_, run) = start_run(&client, &server, "map", items(1001), true).await;
    assert_eq!(run["status"], "failed");
    let error = step(&run, "each")[0]["error"].as_str().unwrap().to_owned();
    assert!(error.contains("1001 items, over the limit of 1000 (the host's --max-map-items)"), "{error}");
    let (_, run) = start_run(&client, &server, "small", items(11), true).await;
    let error = step(&run, "each")[0]["error"].as_str().unwrap().to_owned();
    assert!(error.contains("11 items, over the limit of 10 (the map's max_items)"), "{error}");

    // Amplification: 200 KB fed to twenty branches is 8 MB recorded; the cap is 1 MiB.
    let fan: Vec<Value> =
        (0..20).map(|i| json!({ "name": format!("b{i}"), "agent": "echo", "input": "${ input }" })).collect();
    let amplify = json!({ "name": "amplify", "version": "1",
        "steps": [{ "id": "fan", "type": "parallel", "max_parallelism": 1, "branches": fan }] });
    assert_eq!(put_workflow(&client, &server, "amplify", "1", &amplify).await.0, StatusCode::CREATED);
    let (_, run) =
        start_run(&client, &server, "amplify", json!({ "input": { "text": "x".repeat(200_000) } }), true).await;
    assert_eq!(run["status"], "failed");
    assert!(run["error"].as_str().unwrap().contains("over the run's cap of 1048576 bytes"), "{}", run["error"]);
    let succeeded = run["steps"].as_array().unwrap().iter().filter(|s| s["status"] == "succeeded").count();
    assert!(succeeded <= 3, "the run stopped near its cap: {succeeded} branches kept their output");

    // A million items (7.9 MB) are refused at the door, and cost the host little.
    let before = rss_kib(server.child.id(), "VmRSS:");
    let (status, body) = start_run(&client, &server, "map", items(1_000_000), false).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["error"].as_str().unwrap().contains("over the limit of 4194304 bytes"), "{body}");
    let peak = rss_kib(server.child.id(), "VmHWM:");
    assert!(peak < before + 200 * 1024, "a refused 7.9 MB request took the host from {before} KiB to {peak} KiB");
    drop(server);
    db.drop_database().await;
}

#[tokio::test]
async fn out_of_range_integers_in_definitions_are_named_not_truncated() {
    let dir = scratch();
    let cases = [
        (
            json!({ "id": "p", "type": "parallel", "max_parallelism": 4_294_967_296u64,
            "branches": [{ "name": "a", "agent": "echo" }] }),
            "steps[0].max_parallelism",
            "at most 10000",
        ),
        (
            json!({ "id": "p", "type": "parallel", "join_policy": { "quorum": 4_294_967_296u64 },
            "branches": [{ "name": "a", "agent": "echo" }] }),
            "steps[0].join_policy.quorum",
            "at most 1000000",
        ),
        (
            json!({ "id": "p", "type": "parallel", "tolerated_failures": 4_294_967_296u64,
            "branches": [{ "name": "a", "agent": "echo" }] }),
            "steps[0].tolerated_failures",
            "at most 1000000",
        ),
        (json!({ "id": "e", "agent": "echo", "memory_mb": 1_000_000 }), "steps[0].memory_mb", "at most 1024"),
        (
            json!({ "id": "e", "agent": "echo", "retry": { "max_attempts": 1000 } }),
            "steps[0].retry.max_attempts",
            "at most 100",
        ),
        // Agent references are names: nothing outside --agents DIR is loaded.
        (json!({ "id": "e", "agent": "../echo" }), "steps[0].agent", "is not an agent name"),
        (json!({ "id": "e", "agent": "/etc/passwd" }), "steps[0].agent", "is not an agent name"),
    ];
    for (step_json, path, expected) in cases {
        let file = dir.path().join("wf.json");
        std::fs::write(&file, json!({ "name": "wf", "version": "1", "steps": [step_json] }).to_string()).unwrap();
        let checked = braid()
            .arg("run")
            .arg(&file)
            .args(["--agents", braid_test_artifacts::agents_dir().to_str().unwrap()])
            .arg("--database-url")
            .arg(format!("sqlite://{}", dir.path().join("braid.db").display()))
            .output()
            .unwrap();
        assert_eq!(checked.status.code(), Some(2), "{path}");
        let stderr = String::from_utf8_lossy(&checked.stderr);
        assert!(stderr.contains(path) && stderr.contains(expected), "{path}: {stderr}");
    }
}

#[tokio::test]
async fn a_closed_pipe_ends_the_cli_quietly_and_internal_errors_tell_clients_no_database_text() {
    let db = TestDb::postgres().await;
    let dir = scratch();
    let file = dir.path().join("wide.json");
    std::fs::write(&file, map_of("wide", None).to_string()).unwrap();
    let items: Vec<u32> = (0..3000).collect();
    let ran = braid()
        .arg("run")
        .arg(&file)
        .args(["--agents", braid_test_artifacts::agents_dir().to_str().unwrap(), "--output", "json"])
        .args(["--input", &json!({ "items": items }).to_string(), "--database-url", &db.url])
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .output()
        .unwrap();
    assert!(ran.status.success(), "{}", String::from_utf8_lossy(&ran.stderr));
    let id = serde_json::from_slice::<Value>(&ran.stdout).unwrap()["run_id"].as_str().unwrap().to_owned();

    // `braid runs show ID --output json | head -c 100`: megabytes into a pipe closed early.
    let mut shown = braid()
        .args(["runs", "show", &id, "--output", "json", "--database-url", &db.url])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 100];
    std::io::Read::read_exact(shown.stdout.as_mut().unwrap(), &mut first).unwrap();
    drop(shown.stdout.take());
    let ended = shown.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&ended.stderr);
    assert_ne!(ended.status.code(), Some(101), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // A failure of the host's own: the client hears of an incident, not of relations.
    let cache = scratch();
    let server = Server::start(&db.url, cache.path(), None, &[]);
    let client = Client::new();
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&db.url).await.unwrap();
    sqlx::query("ALTER TABLE step_logs RENAME TO step_logs_gone").execute(&pool).await.unwrap();
    let response = client.get(server.url(&format!("/v1/runs/{id}"))).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body: Value = response.json().await.unwrap();
    let error = body["error"].as_str().unwrap();
    assert!(error.starts_with("internal error (incident "), "{body}");
    assert!(!body.to_string().contains("step_logs"), "no database text reaches the client: {body}");
    assert!(body["details"]["incident"].is_string());
    sqlx::query("ALTER TABLE step_logs_gone RENAME TO step_logs").execute(&pool).await.unwrap();
    pool.close().await;
    drop(server);
    db.drop_database().await;
}

#[tokio::test]
async fn a_wide_run_is_read_a_page_at_a_time_with_counts_and_filters() {
    for db in TestDb::both().await {
        let cache = scratch();
        let server = Server::start(&db.url, cache.path(), None, &[]);
        let client = Client::new();
        deploy_agents(&client, &server).await;
        assert_eq!(put_workflow(&client, &server, "map", "1", &map_of("map", None)).await.0, StatusCode::CREATED);
        let items: Vec<u32> = (0..2500).collect();
        let (status, run) = start_run(&client, &server, "map", json!({ "input": { "items": items } }), true).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(run["status"], "succeeded", "{}", run["error"]);
        let id = run["run_id"].as_str().unwrap().to_owned();

        // The document: a summary and the first page, not 2,501 rows at once.
        assert_eq!(run["steps"].as_array().unwrap().len(), 100, "{}", db.kind);
        assert_eq!(run["steps_total"], 2501);
        assert_eq!(run["step_counts"]["succeeded"], 2501);
        let next = run["steps_next"].as_str().expect("a cursor to the next page").to_owned();
        assert_eq!(get_json(&client, &server, &format!("/v1/runs/{id}")).await, run, "GET answers the same");

        // Paging through the rest gives every row once, in order.
        let mut seen: Vec<String> =
            run["steps"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_owned()).collect();
        let mut after = Some(next);
        while let Some(cursor) = after {
            let page = get_json(&client, &server, &format!("/v1/runs/{id}/steps?after={cursor}&limit=700")).await;
            let steps = page["steps"].as_array().unwrap();
            assert!(steps.len() <= 700);
            seen.extend(steps.iter().map(|s| s["id"].as_str().unwrap().to_owned()));
            after = page["next"].as_str().map(str::to_owned);
        }
        assert_eq!(seen.len(), 2501, "{}", db.kind);
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, seen, "in creation order, each once");

        // Filters: by step id, by parent, by status.
        let map_row = get_json(&client, &server, &format!("/v1/runs/{id}/steps?step_id=each")).await;
        let map_id = map_row["steps"][0]["id"].as_str().unwrap().to_owned();
        assert_eq!(map_row["steps"].as_array().unwrap().len(), 1);
        let children = get_json(&client, &server, &format!("/v1/runs/{id}/steps?parent={map_id}&limit=1000")).await;
        assert_eq!(children["steps"].as_array().unwrap().len(), 1000);
        assert!(children["steps"].as_array().unwrap().iter().all(|s| s["parent_step_id"] == map_id.as_str()));
        let failed = get_json(&client, &server, &format!("/v1/runs/{id}/steps?status=failed")).await;
        assert_eq!(failed["steps"].as_array().unwrap().len(), 0);
        assert!(failed["next"].is_null());
        for bad in ["limit=0", "limit=1001", "status=sideways", "after=nope"] {
            let response = client.get(server.url(&format!("/v1/runs/{id}/steps?{bad}"))).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
        }

        // The CLI prints the whole document, page by page.
        let shown =
            braid().args(["runs", "show", &id, "--output", "json", "--database-url", &db.url]).output().unwrap();
        assert!(shown.status.success(), "{}", String::from_utf8_lossy(&shown.stderr));
        let document: Value = serde_json::from_slice(&shown.stdout).unwrap();
        assert_eq!(document["steps"].as_array().unwrap().len(), 2501);
        assert_eq!(document["run_id"], id.as_str());
        let text = braid().args(["runs", "show", &id, "--database-url", &db.url]).output().unwrap();
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(text.contains("(the first 1000 of 2501 step executions; --output json prints them all)"), "{text}");
        drop(server);
        db.drop_database().await;
    }
}

#[tokio::test]
async fn concurrent_reads_of_a_huge_run_cost_a_page_each() {
    let db = TestDb::postgres().await;
    // 30,000 rows of 2 KB each, written directly: a 60 MB run document if read at once.
    let store = Store::open(&db.url).await.unwrap();
    let run = common::run_record("huge");
    store.recorder().run(run.clone(), None, None).committed().await.unwrap();
    let fence = braid::store::Fence::new(run.epoch);
    let mut pending = Vec::new();
    for i in 0..30_000 {
        let mut row = common::step_record(&run, &format!("b{i}"));
        row.output = Some(json!({ "text": "y".repeat(2048) }).into());
        pending.push(store.recorder().step(row, Vec::new(), &fence));
    }
    for write in pending {
        write.committed().await.unwrap();
    }
    store.close().await.unwrap();

    let cache = scratch();
    let server = Server::start(&db.url, cache.path(), None, &[]);
    let client = Client::new();
    let before = rss_kib(server.child.id(), "VmRSS:");
    let mut reads = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (client, url) = (client.clone(), server.url(&format!("/v1/runs/{}", run.id)));
        reads.spawn(async move { client.get(url).send().await.unwrap().json::<Value>().await.unwrap() });
    }
    while let Some(read) = reads.join_next().await {
        let document = read.unwrap();
        assert_eq!(document["steps"].as_array().unwrap().len(), 100);
        assert_eq!(document["steps_total"], 30_000);
    }
    // And the largest pages of the rest, 8 at once.
    let mut reads = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (client, url) = (client.clone(), server.url(&format!("/v1/runs/{}/steps?limit=1000", run.id)));
        reads.spawn(async move { client.get(url).send().await.unwrap().json::<Value>().await.unwrap() });
    }
    while let Some(read) = reads.join_next().await {
        assert_eq!(read.unwrap()["steps"].as_array().unwrap().len(), 1000);
    }
    let peak = rss_kib(server.child.id(), "VmHWM:");
    assert!(peak < before + 300 * 1024, "8 reads took the host from {before} KiB to a peak of {peak} KiB");
    drop(server);
    db.drop_database().await;
}
