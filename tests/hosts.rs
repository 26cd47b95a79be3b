//! Many hosts on one Postgres, each a real `braid serve` (or `braid worker`) process: a
//! fan-out started through one host spreads over all of them, bounds hold across hosts, a
//! host killed with `kill -9` loses nothing and re-runs nothing that succeeded, a
//! `fail_fast` failure on one host stops units running on another, an owner stopped while
//! another host runs its units still exits, the hosts are listed, and SQLite refuses a
//! second host.

mod common;

use braid::store::{StepRecord, StepStatus, Store};
use common::server::{Server, deploy_with_misbehave, get_json, scratch, start_run};
use common::{TestDb, braid, peak_overlap};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The tests here time and count what several processes do on a 2-core machine: they run
/// one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A map over `input.items` whose items each sleep `ms` in a host call.
fn sleepy_map(name: &str, ms: u64, max_parallelism: u32) -> Value {
    json!({
        "name": name, "version": "1",
        "steps": [{
            "id": "items", "type": "map", "items": "${ input.items }", "max_parallelism": max_parallelism,
            "step": { "id": "each", "agent": "misbehave", "input": { "action": "sleep", "ms": ms } }
        }]
    })
}

fn items(count: u32) -> Value {
    json!({ "input": { "items": (0..count).collect::<Vec<u32>>() } })
}

/// Starts `count` hosts on `db` with `flags`, each with a cache of its own.
fn hosts(db: &TestDb, count: usize, flags: &[&str]) -> (Vec<Server>, Vec<tempfile::TempDir>) {
    let caches: Vec<_> = (0..count).map(|_| scratch()).collect();
    let servers = caches.iter().map(|cache| Server::start(&db.url, cache.path(), None, flags)).collect();
    (servers, caches)
}

/// Waits until `GET /v1/hosts` lists `count` live hosts; returns them.
async fn wait_for_hosts(client: &Client, server: &Server, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = get_json(client, server, "/v1/hosts").await;
        let hosts = listed["hosts"].as_array().cloned().unwrap_or_default();
        if hosts.len() == count {
            return hosts;
        }
        assert!(Instant::now() < deadline, "expected {count} live hosts, got {listed}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `workflow` on `body` through `server`, waiting for it; returns the run's id and
/// the time between its recorded start and finish.
async fn run_and_wait(client: &Client, server: &Server, workflow: &str, body: Value) -> (Uuid, Duration) {
    let (status, run) = start_run(client, server, workflow, body, true).await;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert_eq!(run["status"], "succeeded", "{}", run["error"]);
    let started: chrono::DateTime<chrono::Utc> = run["started_at"].as_str().unwrap().parse().unwrap();
    let finished: chrono::DateTime<chrono::Utc> = run["finished_at"].as_str().unwrap().parse().unwrap();
    (run["run_id"].as_str().unwrap().parse().unwrap(), (finished - started).to_std().unwrap())
}

/// The agent rows of a run, by the host that ran them.
fn by_host(steps: &[StepRecord]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for step in steps.iter().filter(|s| s.step_type == "agent" && s.status == StepStatus::Succeeded) {
        *counts.entry(step.host_id.clone().unwrap_or_default()).or_default() += 1;
    }
    counts
}

/// No step execution succeeded twice, and nothing is left running.
fn assert_exact(steps: &[StepRecord]) {
    let mut succeeded: HashMap<&str, usize> = HashMap::new();
    for step in steps {
        assert!(step.status.is_terminal(), "a row was left open: {step:#?}");
        if step.status == StepStatus::Succeeded {
            *succeeded.entry(step.step_key.as_deref().unwrap()).or_default() += 1;
        }
    }
    let twice: Vec<_> = succeeded.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "succeeded more than once: {twice:?}");
}

/// Starts `count` hosts with `flags`, deploys through the first a `max_parallelism` 64 map
/// named `name` of `item_ms` sleeps, and once every host is listed starts it there on
/// `item_count` items (not waited for). Returns the hosts, their caches and the run's id.
async fn start_map_on_hosts(
    client: &Client,
    db: &TestDb,
    count: usize,
    flags: &[&str],
    (name, item_ms): (&str, u64),
    item_count: u32,
) -> (Vec<Server>, Vec<tempfile::TempDir>, Uuid) {
    let (servers, caches) = hosts(db, count, flags);
    deploy_with_misbehave(client, &servers[0], &sleepy_map(name, item_ms, 64)).await;
    wait_for_hosts(client, &servers[0], count).await;
    let (status, accepted) = start_run(client, &servers[0], name, items(item_count), false).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    (servers, caches, accepted["run_id"].as_str().unwrap().parse().unwrap())
}

/// Waits (20 s at most) until run `id`'s rows are as `ready` asks; `what` says what was
/// awaited when it never happens.
async fn wait_for_steps(store: &Store, id: Uuid, what: &str, ready: impl Fn(&[StepRecord]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready(&store.run_steps(id).await.unwrap()) {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (a minute at most) until run `id` has ended; returns its row.
async fn wait_for_end(store: &Store, id: Uuid) -> braid::store::RunRecord {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let run = store.get_run(id).await.unwrap().unwrap();
        if run.status.is_terminal() {
            return run;
        }
        assert!(Instant::now() < deadline, "the run never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Run `id`'s rows, checked: [`assert_exact`], and `items` agent rows succeeded.
async fn assert_items_done_once(store: &Store, id: Uuid, items: usize) -> Vec<StepRecord> {
    let steps = store.run_steps(id).await.unwrap();
    assert_exact(&steps);
    assert_eq!(steps.iter().filter(|s| s.step_type == "agent" && s.status == StepStatus::Succeeded).count(), items);
    steps
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wide_map_finishes_about_three_times_sooner_on_three_hosts() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let client = Client::new();
    let workflow = sleepy_map("spread", 100, 64);
    let flags = ["--max-instances", "8"];

    let alone_db = TestDb::postgres().await;
    let (alone, _caches) = hosts(&alone_db, 1, &flags);
    deploy_with_misbehave(&client, &alone[0], &workflow).await;
    // Warmed up first (each host loads the agent once), then timed.
    run_and_wait(&client, &alone[0], "spread", items(48)).await;
    let (_, one_host) = run_and_wait(&client, &alone[0], "spread", items(240)).await;
    drop(alone);

    let db = TestDb::postgres().await;
    // A shorter lease: hosts renew their rows (and counts) every second.
    let (servers, _caches) = hosts(&db, 3, &["--max-instances", "8", "--lease-ms", "3000"]);
    deploy_with_misbehave(&client, &servers[0], &workflow).await;
    let listed = wait_for_hosts(&client, &servers[0], 3).await;
    assert!(listed.iter().all(|host| host["role"] == "serve" && host["max_instances"] == 8), "{listed:?}");
    run_and_wait(&client, &servers[0], "spread", items(48)).await;
    let (id, three_hosts) = run_and_wait(&client, &servers[0], "spread", items(240)).await;

    let ratio = three_hosts.as_secs_f64() / one_host.as_secs_f64();
    eprintln!("240 items × 100 ms: one host {one_host:?}, three hosts {three_hosts:?} ({ratio:.2}×)");
    assert!(ratio <= 0.45, "three hosts took {ratio:.2}× the time of one ({three_hosts:?} against {one_host:?})");
    let store = Store::open(&db.url).await.unwrap();
    let steps = store.run_steps(id).await.unwrap();
    assert_exact(&steps);
    let placed = by_host(&steps);
    assert_eq!(placed.len(), 3, "items ran on every host: {placed:?}");
    assert_eq!(placed.values().sum::<usize>(), 240);

    // The API and the CLI show where each step ran, and what each host offered and took.
    let run = get_json(&client, &servers[0], &format!("/v1/runs/{id}")).await;
    assert!(run["steps"].as_array().unwrap().iter().all(|s| s["host_id"].is_string()), "{run}");
    let output = braid().args(["hosts", "list", "--output", "json", "--database-url", &db.url]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let listed: Value = serde_json::from_slice(&output.stdout).unwrap();
    let hosts = listed["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 3, "{listed}");
    let shown = braid().args(["runs", "show", &id.to_string(), "--database-url", &db.url]).output().unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    for host in placed.keys() {
        assert!(shown.contains(&format!("agent misbehave on {host}")), "runs show names {host}:\n{shown}");
    }
    tokio::time::sleep(Duration::from_millis(1_100)).await; // one heartbeat (a third of the lease)
    let listed = get_json(&client, &servers[0], "/v1/hosts").await;
    let offered: i64 = listed["hosts"].as_array().unwrap().iter().map(|h| h["units_offered"].as_i64().unwrap()).sum();
    let taken: i64 = listed["hosts"].as_array().unwrap().iter().map(|h| h["units_taken"].as_i64().unwrap()).sum();
    assert!(offered > 0 && taken > 0, "{listed}");
    let metrics = Client::new().get(servers[1].url("/metrics")).send().await.unwrap().text().await.unwrap();
    let taken_line = metrics.lines().find(|l| l.starts_with("braid_units_total{direction=\"taken\"}")).unwrap();
    assert!(!taken_line.ends_with(" 0"), "host 2 took units from host 1: {taken_line}");

    store.close().await.unwrap();
    drop(servers);
    db.drop_database().await;
    alone_db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_parallelism_counts_units_on_every_host() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let client = Client::new();
    let db = TestDb::postgres().await;
    // Two slots each: the owner offers what does not fit, so items run on several hosts.
    let (servers, _caches) = hosts(&db, 3, &["--max-instances", "2"]);
    let workflow = sleepy_map("bounded", 150, 4);
    deploy_with_misbehave(&client, &servers[0], &workflow).await;
    wait_for_hosts(&client, &servers[0], 3).await;
    let (id, _) = run_and_wait(&client, &servers[0], "bounded", items(40)).await;

    let store = Store::open(&db.url).await.unwrap();
    let steps = store.run_steps(id).await.unwrap();
    assert_exact(&steps);
    let items: Vec<&StepRecord> =
        steps.iter().filter(|s| s.step_type == "agent" && s.status == StepStatus::Succeeded).collect();
    assert_eq!(items.len(), 40);
    let placed = by_host(&steps);
    assert!(placed.len() >= 2, "items ran on more than one host: {placed:?}");
    let peak = peak_overlap(&items);
    assert!(peak <= 4, "{peak} items ran at once across hosts, over max_parallelism 4");
    assert!(peak >= 3, "the bound was used ({peak} at once)");
    store.close().await.unwrap();
    drop(servers);
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_mid_map_loses_nothing_and_its_units_run_again_elsewhere() {
    let _serial = ONE_AT_A_TIME.lock().await;
    kill_mid_map(Victim::Taker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_killed_mid_map_loses_nothing_and_another_host_finishes_the_run() {
    let _serial = ONE_AT_A_TIME.lock().await;
    kill_mid_map(Victim::Owner).await;
}

/// Which of three hosts dies in the middle of a 500-item map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Victim {
    /// The host whose API started the run (its owner).
    Owner,
    /// A host that only takes units of it.
    Taker,
}

async fn kill_mid_map(which: Victim) {
    let client = Client::new();
    let db = TestDb::postgres().await;
    let flags = ["--max-instances", "8", "--lease-ms", "1500"];
    let (mut servers, _caches, id) = start_map_on_hosts(&client, &db, 3, &flags, ("survivor", 120), 500).await;

    // Once the victim is busy with items, it dies.
    let store = Store::open(&db.url).await.unwrap();
    let victim = if which == Victim::Owner { servers.remove(0) } else { servers.pop().unwrap() };
    let victim_id = get_json(&client, &victim, "/healthz").await["host_id"].as_str().unwrap().to_owned();
    wait_for_steps(&store, id, &format!("the {which:?} ran items"), |steps| {
        let on_victim = steps.iter().filter(|s| s.host_id.as_deref() == Some(&victim_id)).count();
        on_victim >= 20
            && steps.iter().any(|s| s.host_id.as_deref() == Some(&victim_id) && s.status == StepStatus::Running)
    })
    .await;
    victim.kill();

    let run = wait_for_end(&store, id).await;
    assert_eq!(run.status.as_str(), "succeeded", "{:?}", run.error);
    if which == Victim::Owner {
        assert_ne!(run.owner_host_id.as_deref(), Some(victim_id.as_str()), "another host finished it");
    }
    let steps = assert_items_done_once(&store, id, 500).await;

    // What the dead host was running is closed, and ran again on a live host with the
    // next attempt number.
    let cut: Vec<&StepRecord> = steps
        .iter()
        .filter(|s| s.host_id.as_deref() == Some(&victim_id) && s.status == StepStatus::Cancelled)
        .collect();
    assert!(!cut.is_empty(), "the killed host was running items");
    for row in &cut {
        assert!(row.error.as_deref().unwrap_or_default().contains("died"), "{row:#?}");
        let again = steps
            .iter()
            .find(|s| s.step_key == row.step_key && s.status == StepStatus::Succeeded)
            .expect("a unit of the dead host ran again");
        assert_ne!(again.host_id.as_deref(), Some(victim_id.as_str()));
        assert!(again.attempt > row.attempt, "attempt {} after {}", again.attempt, row.attempt);
    }
    store.close().await.unwrap();
    drop(servers);
    db.drop_database().await;
}

/// The owner of a run stopped (SIGTERM, no grace period) while another host runs units it
/// offered: it learns that those units ended while it drains and exits (it used to wait for
/// them forever once it stopped listening), and the other host finishes the run exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_stopped_while_another_host_runs_its_units_exits_and_the_run_finishes() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let client = Client::new();
    let db = TestDb::postgres().await;
    let flags = ["--max-instances", "4", "--lease-ms", "1500", "--grace-period-ms", "0"];
    let (mut servers, _caches, id) = start_map_on_hosts(&client, &db, 2, &flags, ("drained", 150), 200).await;

    let store = Store::open(&db.url).await.unwrap();
    let taker_id = get_json(&client, &servers[1], "/healthz").await["host_id"].as_str().unwrap().to_owned();
    wait_for_steps(&store, id, "the other host ran units of the run", |steps| {
        steps.iter().any(|s| s.host_id.as_deref() == Some(&taker_id) && s.status == StepStatus::Running)
    })
    .await;
    // SIGTERM; a failed wait drops (kills) the owner, so that no process is left behind.
    let mut owner = servers.remove(0);
    let stopped = std::process::Command::new("kill").args(["-TERM", &owner.child.id().to_string()]).status();
    assert!(stopped.unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let exited = loop {
        if let Some(status) = owner.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the stopped owner never exited: it waits for units another host ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exited.success(), "the owner exits cleanly: {exited}");

    let run = wait_for_end(&store, id).await;
    assert_eq!(run.status.as_str(), "succeeded", "{:?}", run.error);
    assert_items_done_once(&store, id, 200).await;
    store.close().await.unwrap();
    drop(servers);
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fail_fast_failure_on_one_host_cancels_units_on_another_within_500_ms() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let client = Client::new();
    let db = TestDb::postgres().await;
    let cache_a = scratch();
    let owner = Server::start(&db.url, cache_a.path(), None, &["--max-instances", "2"]);
    // The other host is a worker: the same host without the HTTP API.
    let cache_b = scratch();
    let mut worker = braid()
        .args(["worker", "--max-instances", "8", "--database-url", &db.url])
        .arg("--cache-dir")
        .arg(cache_b.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(worker.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "braid worker up");

    let sleeper =
        |name: &str| json!({ "name": name, "agent": "misbehave", "input": { "action": "sleep", "ms": 20_000 } });
    let workflow = json!({
        "name": "stop-all", "version": "1",
        "steps": [{ "id": "fan", "type": "parallel", "join_policy": "fail_fast", "branches": [
            { "name": "broken", "steps": [
                { "id": "wait", "agent": "misbehave", "input": { "action": "sleep", "ms": 700 } },
                { "id": "fail", "agent": "misbehave", "input": { "action": "error", "message": "broken on purpose" } }
            ] },
            sleeper("s1"), sleeper("s2"), sleeper("s3"), sleeper("s4")
        ] }]
    });
    deploy_with_misbehave(&client, &owner, &workflow).await;
    let listed = wait_for_hosts(&client, &owner, 2).await;
    assert!(listed.iter().any(|h| h["role"] == "worker"), "{listed:?}");
    let started = Instant::now();
    let (status, run) = start_run(&client, &owner, "stop-all", json!({}), true).await;
    assert_eq!(status, StatusCode::OK, "{run}");
    assert!(started.elapsed() < Duration::from_secs(10), "the sleepers were not stopped");
    assert_eq!(run["status"], "failed");

    // However the branches were placed, the sleepers that ran on the worker (at least two:
    // the owner has two slots) were stopped there at the owner's word.
    let store = Store::open(&db.url).await.unwrap();
    let id: Uuid = run["run_id"].as_str().unwrap().parse().unwrap();
    let steps = store.run_steps(id).await.unwrap();
    let owner_host = get_json(&client, &owner, "/healthz").await["host_id"].as_str().map(str::to_owned);
    let failed_at = steps.iter().find(|s| s.step_id == "fail").unwrap().finished_at.unwrap();
    let elsewhere: Vec<&StepRecord> = steps
        .iter()
        .filter(|s| s.step_id != "wait" && s.step_id != "fail" && s.started_at.is_some() && s.host_id != owner_host)
        .collect();
    assert!(elsewhere.len() >= 2, "sleepers ran on the worker: {steps:#?}");
    for row in elsewhere {
        assert_eq!(row.status, StepStatus::Cancelled, "{row:#?}");
        let after = (row.finished_at.unwrap() - failed_at).to_std().unwrap_or_default();
        assert!(after <= Duration::from_millis(500), "{} stopped {after:?} after the failure", row.step_id);
    }
    store.close().await.unwrap();
    let _ = worker.kill();
    let _ = worker.wait();
    drop(owner);
    db.drop_database().await;
}

#[tokio::test]
async fn a_second_host_on_a_sqlite_file_is_refused() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let db = TestDb::sqlite();
    let cache = scratch();
    let first = Server::start(&db.url, cache.path(), None, &[]);
    let second = braid()
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &db.url])
        .arg("--cache-dir")
        .arg(cache.path())
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("another braid host is using the SQLite database"), "{stderr}");
    assert!(stderr.contains("need Postgres"), "{stderr}");
    let client = Client::new();
    let listed = get_json(&client, &first, "/v1/hosts").await;
    assert_eq!(listed["hosts"].as_array().unwrap().len(), 1, "{listed}");
    drop(first);
    // Once the first host is gone (even killed), the file is free again.
    let again = Server::start(&db.url, cache.path(), None, &[]);
    drop(again);
}
