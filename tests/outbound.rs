//! Outbound HTTP and secrets, end to end: the real `braid` binary, real agents
//! (`fetch-json`, `misbehave`) and a real HTTP server on 127.0.0.1 started by each test,
//! which counts what reaches it. Grants, the operator's ceiling, private networks, the
//! deadline, the body and request caps, the records, and secrets that never reach the
//! database, the logs or the API.

mod common;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::{any, get};
use braid_test_artifacts::{agent_bytes, agents_dir};
use common::server::{Server, get_json, put_agent, put_workflow, scratch, start_run};
use common::{TestDb, braid};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A local HTTP peer: what reached it.
#[derive(Default)]
struct Seen {
    hits: AtomicUsize,
    authorization: Mutex<Vec<String>>,
}

struct Peer {
    port: u16,
    seen: Arc<Seen>,
}

impl Peer {
    fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn hits(&self) -> usize {
        self.seen.hits.load(Ordering::SeqCst)
    }
}

async fn count(State(seen): State<Arc<Seen>>, headers: HeaderMap) {
    seen.hits.fetch_add(1, Ordering::SeqCst);
    if let Some(value) = headers.get("authorization") {
        seen.authorization.lock().unwrap().push(value.to_str().unwrap_or("").to_owned());
    }
}

/// Starts the peer on a runtime of its own (tests block on `braid` processes): `/json`
/// answers `{"answer": 42, "auth": <the Authorization header>}`, `/slow` answers after 30 s,
/// `/big` streams 256 MiB.
async fn peer() -> Peer {
    let seen = Arc::new(Seen::default());
    let app = Router::new()
        .route(
            "/json",
            any(|state: State<Arc<Seen>>, headers: HeaderMap| async move {
                let auth = headers.get("authorization").map(|v| v.to_str().unwrap_or("").to_owned());
                count(state, headers).await;
                axum::Json(json!({ "answer": 42, "auth": auth }))
            }),
        )
        .route(
            "/slow",
            get(|state: State<Arc<Seen>>, headers: HeaderMap| async move {
                count(state, headers).await;
                tokio::time::sleep(Duration::from_secs(30)).await;
                axum::Json(json!({ "late": true }))
            }),
        )
        .route(
            "/big",
            get(|state: State<Arc<Seen>>, headers: HeaderMap| async move {
                count(state, headers).await;
                let chunk = bytes::Bytes::from(vec![b' '; 1 << 20]);
                let stream = futures::stream::iter((0..256).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
                Body::from_stream(stream)
            }),
        )
        .with_state(seen.clone());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    Peer { port, seen }
}

/// One `fetch-json` step with `extra` fields (grants, secrets, timeout).
fn fetch_workflow(url: &str, extra: Value) -> Value {
    let mut step = json!({ "id": "fetch", "agent": "fetch-json", "input": { "url": url, "field": "/answer" } });
    step.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    json!({ "name": "fetch", "version": "1", "steps": [step] })
}

/// `braid run` of `definition` in `cwd` (its SQLite default there), JSON output.
fn run_in(cwd: &Path, definition: &Value, flags: &[&str], env: &[(&str, &str)]) -> Output {
    run_measured(cwd, definition, flags, env).0
}

/// [`run_in`], with the process's peak resident memory in KiB (from `wait4`, which reaps it).
#[allow(clippy::zombie_processes)]
fn run_measured(cwd: &Path, definition: &Value, flags: &[&str], env: &[(&str, &str)]) -> (Output, i64) {
    use std::io::Read;
    let workflow = cwd.join("workflow.json");
    std::fs::write(&workflow, definition.to_string()).unwrap();
    let mut command = braid();
    command
        .current_dir(cwd)
        .args(["run", workflow.to_str().unwrap(), "--agents", agents_dir().to_str().unwrap(), "--output", "json"])
        .args(flags);
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let stdout = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        out.read_to_end(&mut bytes).unwrap();
        bytes
    });
    let stderr = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        err.read_to_end(&mut bytes).unwrap();
        bytes
    });
    // Reaped here rather than by `Child::wait`, to read its own resource usage.
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    let (mut status, mut usage) = (0, unsafe { std::mem::zeroed::<libc::rusage>() });
    assert_eq!(unsafe { libc::wait4(pid, &mut status, 0, &mut usage) }, pid);
    let status = std::os::unix::process::ExitStatusExt::from_raw(status);
    let output = Output { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() };
    (output, usage.ru_maxrss)
}

fn document(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("not JSON: {}\n{}", String::from_utf8_lossy(&output.stdout), stderr(output)))
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn step<'a>(document: &'a Value, id: &str) -> &'a Value {
    document["steps"].as_array().unwrap().iter().rev().find(|s| s["step_id"] == id).unwrap()
}

fn braid_logs(step: &Value) -> Vec<String> {
    step["logs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|line| line["source"] == "braid")
        .map(|line| line["message"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn without_a_grant_nothing_leaves_with_one_the_request_gets_through_and_a_port_is_not_another() {
    let peer = peer().await;
    let cwd = scratch();
    let url = format!("{}/json", peer.origin());
    let private = ["--allow-private-network"];

    // No grant: refused before any connection; the logs name the URL and the grant.
    let output = run_in(cwd.path(), &fetch_workflow(&url, json!({})), &private, &[]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let doc = document(&output);
    let fetch = step(&doc, "fetch");
    assert_eq!(fetch["outcome"], "guest_error");
    assert!(fetch["error"].as_str().unwrap().contains("refused"), "{}", fetch["error"]);
    let notes = braid_logs(fetch);
    assert!(notes.iter().any(|n| n.contains(&url) && n.contains(&format!("\"{}\"", peer.origin()))), "{notes:?}");
    assert_eq!(fetch["http_calls"][0]["status"], Value::Null);
    assert!(fetch["http_calls"][0]["error"].as_str().unwrap().starts_with("denied"));
    assert_eq!(peer.hits(), 0, "a refused request reached the server");

    // A grant for another port opens nothing.
    let other_port = format!("http://127.0.0.1:{}", peer.port.wrapping_add(1));
    let output = run_in(cwd.path(), &fetch_workflow(&url, json!({ "allowed_hosts": [other_port] })), &private, &[]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(peer.hits(), 0);

    // `*.localhost` matches subdomains, not `localhost` itself.
    let by_name = format!("http://localhost:{}/json", peer.port);
    let subdomains = format!("http://*.localhost:{}", peer.port);
    let output = run_in(cwd.path(), &fetch_workflow(&by_name, json!({ "allowed_hosts": [subdomains] })), &private, &[]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(peer.hits(), 0);

    // The grant: through, recorded.
    let output = run_in(cwd.path(), &fetch_workflow(&url, json!({ "allowed_hosts": [peer.origin()] })), &private, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let doc = document(&output);
    let fetch = step(&doc, "fetch");
    assert_eq!(fetch["output"]["value"], 42);
    let call = &fetch["http_calls"][0];
    assert_eq!(
        (&call["method"], &call["scheme"], &call["host"], &call["port"], &call["path"], &call["status"]),
        (&json!("GET"), &json!("http"), &json!("127.0.0.1"), &json!(peer.port), &json!("/json"), &json!(200))
    );
    assert!(call["bytes_in"].as_i64().unwrap() > 0);
    assert_eq!(peer.hits(), 1);
}

#[tokio::test]
async fn private_addresses_are_refused_even_when_granted_unless_the_host_allows_them() {
    let peer = peer().await;
    let cwd = scratch();
    // By address, and by a name that resolves to loopback (checked after DNS).
    for (url, grant) in [
        (format!("{}/json", peer.origin()), peer.origin()),
        (format!("http://localhost:{}/json", peer.port), format!("http://localhost:{}", peer.port)),
    ] {
        let definition = fetch_workflow(&url, json!({ "allowed_hosts": [grant] }));
        let before = peer.hits();
        let output = run_in(cwd.path(), &definition, &[], &[]);
        assert_eq!(output.status.code(), Some(1), "{url}");
        let doc = document(&output);
        let notes = braid_logs(step(&doc, "fetch"));
        assert!(notes.iter().any(|n| n.contains("--allow-private-network")), "{url}: {notes:?}");
        assert_eq!(peer.hits(), before, "{url} reached the server");

        let output = run_in(cwd.path(), &definition, &["--allow-private-network"], &[]);
        assert_eq!(output.status.code(), Some(0), "{url}: {}", stderr(&output));
    }
    assert_eq!(peer.hits(), 2);
}

#[tokio::test]
async fn grants_beyond_allow_outbound_fail_the_run_and_the_deploy_and_bad_entries_are_all_named() {
    let peer = peer().await;
    let cwd = scratch();
    let definition = fetch_workflow(&format!("{}/json", peer.origin()), json!({ "allowed_hosts": [peer.origin()] }));
    let output = run_in(cwd.path(), &definition, &["--allow-outbound", "https://*.example.com"], &[]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.contains("steps[0].allowed_hosts[0]") && message.contains("--allow-outbound"), "{message}");
    assert_eq!(peer.hits(), 0);

    // Every bad entry, with the other problems of the definition.
    let bad = json!({ "name": "bad", "version": "1", "allowed_hosts": ["*"], "steps": [
        { "id": "a", "agent": "fetch-json", "allowed_hosts": ["api.example.com", "https://x.com/v1", "https://ok.com"] },
        { "id": "a", "agent": "fetch-json", "secrets": { "api_key": "not a name" } },
    ] });
    let output = run_in(cwd.path(), &bad, &[], &[]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    for expected in [
        "allowed_hosts[0]: \"*\"",
        "steps[0].allowed_hosts[0]: \"api.example.com\" is not a host pattern: the scheme is missing",
        "steps[0].allowed_hosts[1]: \"https://x.com/v1\" is not a host pattern: a path is not allowed",
        "steps[1].secrets.api_key",
        "duplicate",
    ] {
        assert!(message.contains(expected), "missing {expected:?} in:\n{message}");
    }
    assert!(!message.contains("ok.com"), "{message}");

    // A serving host refuses to deploy it (422), naming the entry.
    let db = TestDb::sqlite();
    let cache = scratch();
    let server = Server::start(&db.url, cache.path(), None, &["--allow-outbound", "https://*.example.com"]);
    let client = Client::new();
    let (status, body) = put_agent(&client, &server, "fetch-json", "1", agent_bytes("fetch_json")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = put_workflow(&client, &server, "fetch", "1", &definition).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("steps[0].allowed_hosts[0]"), "{body}");
    let within = fetch_workflow("https://api.example.com/x", json!({ "allowed_hosts": ["https://api.example.com"] }));
    let (status, body) = put_workflow(&client, &server, "fetch", "1", &within).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // Another host with a narrower ceiling refuses to run what this one deployed.
    let output = braid()
        .current_dir(cwd.path())
        .args(["run", "fetch@1", "--database-url", &db.url, "--allow-outbound", "https://other.example.net"])
        .arg("--cache-dir")
        .arg(cache.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("steps[0].allowed_hosts[0]"), "{}", stderr(&output));
}

#[tokio::test]
async fn a_slow_server_is_cut_at_the_deadline_a_big_body_fails_for_the_guest_and_the_request_cap_holds() {
    let peer = peer().await;
    let cwd = scratch();
    let private = "--allow-private-network";
    let grant = json!([peer.origin()]);

    let started = Instant::now();
    let slow =
        fetch_workflow(&format!("{}/slow", peer.origin()), json!({ "allowed_hosts": grant, "timeout_ms": 1000 }));
    let output = run_in(cwd.path(), &slow, &[private], &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert_eq!(step(&document(&output), "fetch")["outcome"], "timeout");

    // 256 MiB offered, 1 MiB allowed: the guest's body read fails; the host's memory stays
    // what it is for a small answer.
    let small = fetch_workflow(&format!("{}/json", peer.origin()), json!({ "allowed_hosts": grant }));
    let (_, small_rss_kib) = run_measured(cwd.path(), &small, &[private, "--max-http-response-bytes", "1048576"], &[]);
    let big = fetch_workflow(&format!("{}/big", peer.origin()), json!({ "allowed_hosts": grant }));
    let (output, big_rss_kib) = run_measured(cwd.path(), &big, &[private, "--max-http-response-bytes", "1048576"], &[]);
    assert_eq!(output.status.code(), Some(1));
    let doc = document(&output);
    let fetch = step(&doc, "fetch");
    let recorded = fetch["http_calls"][0]["error"].as_str().unwrap_or_default();
    assert!(recorded.contains("over 1048576 bytes"), "{fetch}");
    assert!(fetch["http_calls"][0]["bytes_in"].as_i64().unwrap() <= 2 << 20);
    assert!(
        big_rss_kib < small_rss_kib + 32 * 1024,
        "the host peaked at {big_rss_kib} KiB with the big body, {small_rss_kib} KiB with a small one"
    );

    // Five requests asked, three allowed: the fourth is refused, the server saw three.
    let before = peer.hits();
    let mut many = fetch_workflow(&format!("{}/json", peer.origin()), json!({ "allowed_hosts": grant }));
    many["steps"][0]["input"]["repeat"] = json!(5);
    let output = run_in(cwd.path(), &many, &[private, "--max-http-requests", "3"], &[]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(peer.hits() - before, 3);
    let doc = document(&output);
    let calls = step(&doc, "fetch")["http_calls"].as_array().unwrap().clone();
    assert_eq!(calls.len(), 4, "{calls:?}");
    assert!(calls[3]["error"].as_str().unwrap().contains("--max-http-requests"));
}

/// Whether `needle` occurs in any file of `dir` (the SQLite database, its WAL, anything).
fn found_in_files(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let bytes = std::fs::read(entry.path()).unwrap_or_default();
        if bytes.windows(needle.len()).any(|window| window == needle.as_bytes()) {
            found.push(entry.path().display().to_string());
        }
    }
    found
}

#[tokio::test]
async fn a_secret_reaches_the_agent_and_is_written_nowhere_even_when_the_agent_leaks_it() {
    const SECRET: &str = "sk-test-4f1c9e2a77d0";
    let peer = peer().await;
    let cwd = scratch();
    let definition = json!({ "name": "secret", "version": "1", "steps": [
        { "id": "call", "agent": "fetch-json", "input": { "url": format!("{}/json", peer.origin()) },
          "secrets": { "api_key": "MODEL_KEY" }, "allowed_hosts": [peer.origin()] },
        { "id": "leak", "agent": "misbehave", "input": { "action": "leak", "config_key": "token", "succeed": true },
          "secrets": { "token": "MODEL_KEY" } },
        { "id": "fail", "agent": "misbehave", "input": { "action": "leak", "config_key": "token" },
          "secrets": { "token": "MODEL_KEY" } },
    ] });
    let output = run_in(cwd.path(), &definition, &["--allow-private-network"], &[("BRAID_SECRET_MODEL_KEY", SECRET)]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    // It reached the agent, and through it the server.
    assert_eq!(*peer.seen.authorization.lock().unwrap(), vec![format!("Bearer {SECRET}")]);
    let doc = document(&output);
    assert_eq!(step(&doc, "call")["output"]["value"]["auth"], "Bearer [redacted]");
    assert_eq!(step(&doc, "leak")["output"]["leaked"], "[redacted]");
    assert_eq!(step(&doc, "fail")["error"], "failed holding [redacted]");
    let leak_logs: Vec<&str> =
        step(&doc, "leak")["logs"].as_array().unwrap().iter().map(|l| l["message"].as_str().unwrap()).collect();
    assert_eq!(leak_logs, ["the key is [redacted]", "stdout has [redacted]", "stderr has [redacted]"]);
    // Nowhere: not the output, not the host's own logs, not a byte of the database files.
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), stderr(&output));
    assert!(!printed.contains(SECRET), "printed:\n{printed}");
    assert_eq!(found_in_files(cwd.path(), SECRET), Vec::<String>::new());

    // A secret the host does not have: the step fails before it runs, naming it.
    let missing = json!({ "name": "missing", "version": "1", "steps": [
        { "id": "leak", "agent": "misbehave", "input": { "action": "leak" }, "secrets": { "key": "NOT_SET_ANYWHERE" } },
    ] });
    let output = run_in(cwd.path(), &missing, &[], &[]);
    assert_eq!(output.status.code(), Some(1));
    let doc = document(&output);
    let leak = step(&doc, "leak");
    assert!(leak["error"].as_str().unwrap().contains("\"NOT_SET_ANYWHERE\""), "{leak}");
    assert_eq!(leak["outcome"], Value::Null, "it never ran");
}

#[tokio::test]
async fn a_secret_from_a_secrets_file_stays_out_of_the_api_and_postgres() {
    const SECRET: &str = "sk-file-93be11d0c6";
    let peer = peer().await;
    let db = TestDb::postgres().await;
    let cache = scratch();
    let secrets = cache.path().join("secrets.toml");
    std::fs::write(&secrets, format!("MODEL_KEY = \"{SECRET}\"\n")).unwrap();
    let server = Server::start(
        &db.url,
        cache.path(),
        None,
        &["--allow-private-network", "--secrets-file", secrets.to_str().unwrap()],
    );
    let client = Client::new();
    let (status, body) = put_agent(&client, &server, "fetch-json", "1", agent_bytes("fetch_json")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let definition = fetch_workflow(
        &format!("{}/json", peer.origin()),
        json!({ "allowed_hosts": [peer.origin()], "secrets": { "api_key": "MODEL_KEY" } }),
    );
    let mut definition = definition;
    definition["steps"][0]["input"]["field"] = json!("/auth");
    let (status, body) = put_workflow(&client, &server, "fetch", "1", &definition).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, run) = start_run(&client, &server, "fetch", json!({ "input": {} }), true).await;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"]["value"], "Bearer [redacted]");
    assert_eq!(*peer.seen.authorization.lock().unwrap(), vec![format!("Bearer {SECRET}")]);
    let read_back = get_json(&client, &server, &format!("/v1/runs/{}", run["run_id"].as_str().unwrap())).await;
    for answer in [&run, &read_back] {
        assert!(!answer.to_string().contains(SECRET), "{answer}");
    }
    assert_eq!(read_back["steps"][0]["http_calls"].as_array().unwrap().len(), 1, "{read_back}");

    use sqlx::Connection;
    let mut connection = sqlx::PgConnection::connect(&db.url).await.unwrap();
    for table in
        ["workflow_runs", "step_executions", "step_logs", "step_http_calls", "workflows", "workflow_definitions"]
    {
        let found: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table} t WHERE t::text LIKE $1"))
            .bind(format!("%{SECRET}%"))
            .fetch_one(&mut connection)
            .await
            .unwrap();
        assert_eq!(found, 0, "the secret is in {table}");
    }
    drop(connection);
    drop(server);
    db.drop_database().await;
}

#[tokio::test]
async fn sixty_four_branches_of_ten_requests_each_are_all_recorded_on_postgres() {
    let peer = peer().await;
    let db = TestDb::postgres().await;
    let cwd = scratch();
    let branches: Vec<Value> = (0..64)
        .map(|i| {
            json!({ "name": format!("b{i}"), "agent": "fetch-json", "allowed_hosts": [peer.origin()],
                    "input": { "url": format!("{}/json", peer.origin()), "repeat": 10, "field": "/answer" } })
        })
        .collect();
    let definition = json!({ "name": "fan", "version": "1", "steps": [
        { "id": "fan", "type": "parallel", "max_parallelism": 64, "branches": branches },
    ] });
    let output = run_in(cwd.path(), &definition, &["--allow-private-network", "--database-url", &db.url], &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(peer.hits(), 640);

    use sqlx::Connection;
    let mut connection = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let (calls, ok): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE status = 200 AND error IS NULL) FROM step_http_calls")
            .fetch_one(&mut connection)
            .await
            .unwrap();
    assert_eq!((calls, ok), (640, 640));
    drop(connection);
    db.drop_database().await;
}

#[tokio::test]
async fn the_model_example_asks_the_stub_with_the_hosts_secret() {
    // The README's example, on a free port instead of 8089.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut stub = std::process::Command::new("python3")
        .arg(common::examples_dir().join("../model_stub.py"))
        .arg(port.to_string())
        .spawn()
        .expect("python3 runs the model stub");
    let text = std::fs::read_to_string(common::examples_dir().join("model.json")).unwrap();
    let definition: Value = serde_json::from_str(&text.replace("8089", &port.to_string())).unwrap();
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(10), "the stub did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let cwd = scratch();
    let input = ["--input", r#"{"prompt": "hello there"}"#, "--allow-private-network"];
    let output = run_in(cwd.path(), &definition, &input, &[("BRAID_SECRET_MODEL_API_KEY", "sk-local-test")]);
    let without_key = run_in(cwd.path(), &definition, &input, &[]);
    stub.kill().unwrap();
    stub.wait().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(document(&output)["output"]["answer"], "You said 2 words: hello there");
    assert_eq!(without_key.status.code(), Some(1));
    let error = document(&without_key)["error"].as_str().unwrap_or_default().to_owned();
    assert!(error.contains("\"MODEL_API_KEY\""), "{error}");
}

/// A chain's next step makes its instance while its predecessor's row commits, but calls
/// nothing before that row is durable: when the row is refused (another host took the run
/// over while the first step ran), the second step never reaches the network.
#[tokio::test]
async fn a_step_calls_out_only_once_its_predecessors_row_is_durable() {
    let peer = peer().await;
    let db = TestDb::postgres().await;
    let cwd = scratch();
    let workflow = json!({ "name": "nap-then-fetch", "version": "1", "steps": [
        { "id": "nap", "agent": "misbehave", "input": { "action": "sleep", "ms": 1500 } },
        { "id": "fetch", "agent": "fetch-json", "input": { "url": format!("{}/json", peer.origin()), "field": "/answer" },
          "allowed_hosts": [peer.origin()] } ] });
    let flags = ["--allow-private-network", "--database-url", db.url.as_str()];

    // Left alone, the second step calls out once.
    let output = run_in(cwd.path(), &workflow, &flags, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(peer.hits(), 1);
    let first_run = document(&output)["run_id"].as_str().unwrap().to_owned();

    // Taken over half a second into its first step (the host renews its lease only every
    // 5 s, so it learns of it from its next write: the first step's row).
    let (cwd_path, flags_owned) = (cwd.path().to_owned(), flags.map(str::to_owned));
    let running = std::thread::spawn(move || {
        let flags: Vec<&str> = flags_owned.iter().map(String::as_str).collect();
        run_in(&cwd_path, &workflow, &flags, &[])
    });
    let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url).await.unwrap();
    let taken = loop {
        let found: Option<(String,)> =
            sqlx::query_as("SELECT id::text FROM workflow_runs WHERE status = 'running' AND id::text <> $1 LIMIT 1")
                .bind(&first_run)
                .fetch_optional(&mut connection)
                .await
                .unwrap();
        if let Some((id,)) = found {
            break id;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    sqlx::query("UPDATE workflow_runs SET owner_host_id = 'host-b', epoch = epoch + 1 WHERE id::text = $1")
        .bind(&taken)
        .execute(&mut connection)
        .await
        .unwrap();
    let output = running.join().unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert_eq!(peer.hits(), 1, "the second step called out before its predecessor's row was durable");
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT step_id, status FROM step_executions WHERE run_id::text = $1 ORDER BY id")
            .bind(&taken)
            .fetch_all(&mut connection)
            .await
            .unwrap();
    // The first step's "running" row, if it landed before the takeover; never a finished one.
    assert!(rows.iter().all(|(step, status)| step == "nap" && status == "running"), "{rows:?}");
    drop(connection);
    db.drop_database().await;
}
