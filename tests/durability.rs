//! Runs that survive anything, proved with real processes on real databases: hosts killed
//! with `kill -9` at random moments, two hosts restarted while they share runs, a host
//! whose lease was taken over, `braid run` killed mid-run, database connections cut, and
//! the starts, redrives and bounds that come with ownership.
//!
//! The invariants checked after each: every accepted run ends (here: `succeeded`), no row
//! stays `running`, and no step execution — keyed by where it sits in the run (step id,
//! branch, item index, iteration) — has more than one `succeeded` row.

mod common;

use braid::cluster::{HostConfig, Runner};
use braid::engine::Engine;
use braid::registry::Registry;
use braid::store::{Fence, RunStatus, StepRecord, StepStatus, Store, StoreError};
use braid_test_artifacts::agents_dir;
use common::server::{Server, deploy_with_misbehave, get_json, rss_kib, scratch, start_run};
use common::{TestDb, braid, plan, sandbox};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// A run with every kind of step: a sequence, a 200-branch parallel block, a 500-item
/// map and a loop, each step a short sleep in a real instance.
/// `unit_ms` is how long each branch and item sleeps.
fn durable_workflow(unit_ms: u64) -> Value {
    let branches: Vec<Value> = (0..200)
        .map(
            |i| json!({ "name": format!("b{i}"), "agent": "misbehave", "input": { "action": "sleep", "ms": unit_ms } }),
        )
        .collect();
    json!({
        "name": "durable",
        "version": "1",
        "steps": [
            { "id": "first", "agent": "misbehave", "input": { "action": "sleep", "ms": 20 } },
            { "id": "fan", "type": "parallel", "max_parallelism": 16, "branches": branches },
            {
                "id": "items", "type": "map", "items": "${ input.items }", "max_parallelism": 16,
                "step": { "id": "each", "agent": "misbehave", "input": { "action": "sleep", "ms": unit_ms } }
            },
            {
                "id": "again", "type": "loop", "max_iterations": 6, "until": "${ iteration >= 3 }",
                "steps": [{ "id": "turn", "agent": "misbehave", "input": { "action": "sleep", "ms": 15 } }]
            },
            { "id": "last", "agent": "misbehave", "input": { "action": "ok" } }
        ]
    })
}

fn durable_input() -> Value {
    json!({ "input": { "items": (0..500).collect::<Vec<u32>>() } })
}

/// A small, seeded xorshift: the random moments are printed, so a failure can be replayed.
struct Moments(u64);

impl Moments {
    fn new() -> Self {
        let seed = std::env::var("BRAID_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
        });
        eprintln!("kill moments seeded with BRAID_TEST_SEED={seed}");
        Moments(seed)
    }

    fn between(&mut self, low_ms: u64, high_ms: u64) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_millis(low_ms + self.0 % (high_ms - low_ms + 1))
    }
}

async fn post_run(client: &Client, server: &Server, workflow: &str, body: Value) -> Uuid {
    let (status, accepted) = start_run(client, server, workflow, body, false).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    accepted["run_id"].as_str().unwrap().parse().unwrap()
}

/// Waits (reading the database directly) until every run in `ids` has ended.
async fn wait_all_ended(store: &Store, ids: &[Uuid], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let mut open = Vec::new();
        for id in ids {
            let run = store.get_run(*id).await.unwrap().expect("an accepted run is never lost");
            if !run.status.is_terminal() {
                open.push((*id, run.status, run.owner_host_id));
            }
        }
        if open.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "runs still open after {within:?}: {open:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every run succeeded, nothing is left running, and nothing that succeeded ran twice.
async fn assert_exact(store: &Store, ids: &[Uuid]) -> Vec<Vec<StepRecord>> {
    let mut all = Vec::new();
    for id in ids {
        let run = store.get_run(*id).await.unwrap().unwrap();
        assert_eq!(run.status, RunStatus::Succeeded, "run {id}: {:?}", run.error);
        let steps = store.run_steps(*id).await.unwrap();
        let running: Vec<_> = steps.iter().filter(|s| !s.status.is_terminal()).collect();
        assert!(running.is_empty(), "run {id}: rows left open: {running:#?}");
        let mut succeeded: HashMap<&str, usize> = HashMap::new();
        for step in &steps {
            let key = step.step_key.as_deref().expect("every row has a key");
            if step.status == StepStatus::Succeeded {
                *succeeded.entry(key).or_default() += 1;
            }
        }
        let twice: Vec<_> = succeeded.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "run {id}: succeeded more than once: {twice:?}");
        all.push(steps);
    }
    all
}

/// The durable workflow's blocks ended with every unit reachable from their final row.
fn assert_complete_blocks(steps: &[StepRecord]) {
    for (block, units) in [("fan", 200), ("items", 500), ("again", 4)] {
        let finals: Vec<_> = steps.iter().filter(|s| s.step_id == block && s.status == StepStatus::Succeeded).collect();
        assert_eq!(finals.len(), 1, "{block}: one succeeded block row");
        let children = steps
            .iter()
            .filter(|s| s.parent_step_id == Some(finals[0].id) && s.status == StepStatus::Succeeded)
            .count();
        assert_eq!(children, units, "{block}: every unit hangs off the block row that ended");
    }
}

async fn kill_nine_harness(db: TestDb, kills: usize) {
    let cache = scratch();
    let flags = ["--lease-ms", "800", "--grace-period-ms", "0"];
    let client = Client::new();
    let mut server = Server::start(&db.url, cache.path(), None, &flags);
    deploy_with_misbehave(&client, &server, &durable_workflow(4)).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(post_run(&client, &server, "durable", durable_input()).await);
    }
    let mut moments = Moments::new();
    for kill in 0..kills {
        tokio::time::sleep(moments.between(30, 700)).await;
        server.kill();
        server = Server::start(&db.url, cache.path(), None, &flags);
        if kill % 7 == 3 {
            ids.push(post_run(&client, &server, "durable", durable_input()).await);
        }
    }
    let store = Store::open(&db.url).await.unwrap();
    wait_all_ended(&store, &ids, Duration::from_secs(240)).await;
    for steps in assert_exact(&store, &ids).await {
        assert_complete_blocks(&steps);
    }
    let resumed = ids.len();
    eprintln!("{}: {kills} kills, {resumed} runs, all exact", db.kind);
    drop(server);
    store.close().await.unwrap();
    db.drop_database().await;
}

#[tokio::test]
async fn kill_9_at_twenty_random_moments_loses_nothing_and_runs_nothing_twice_on_postgres() {
    kill_nine_harness(TestDb::postgres().await, 20).await;
}

#[tokio::test]
async fn kill_9_at_twenty_random_moments_loses_nothing_and_runs_nothing_twice_on_sqlite() {
    kill_nine_harness(TestDb::sqlite(), 20).await;
}

#[tokio::test]
async fn two_hosts_restarted_repeatedly_finish_every_run_exactly_once() {
    let db = TestDb::postgres().await;
    let (cache_a, cache_b) = (scratch(), scratch());
    let flags = ["--lease-ms", "800", "--grace-period-ms", "0"];
    let client = Client::new();
    let mut a = Server::start(&db.url, cache_a.path(), None, &flags);
    let mut b = Server::start(&db.url, cache_b.path(), None, &flags);
    // Items long enough that the runs are still going when the hosts start coming and going
    // (with 4 ms items a fast machine finished them all before the first restart).
    deploy_with_misbehave(&client, &a, &durable_workflow(25)).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let server = if i % 2 == 0 { &a } else { &b };
        ids.push(post_run(&client, server, "durable", durable_input()).await);
    }
    let mut moments = Moments::new();
    for round in 0..8 {
        tokio::time::sleep(moments.between(100, 600)).await;
        // Alternate the host, and between a graceful stop and a crash.
        let graceful = round % 4 < 2;
        let restart = |server: Server, cache: &std::path::Path| {
            if graceful {
                assert!(server.stop().success());
            } else {
                server.kill();
            }
            Server::start(&db.url, cache, None, &flags)
        };
        if round % 2 == 0 {
            a = restart(a, cache_a.path());
        } else {
            b = restart(b, cache_b.path());
        }
    }
    let store = Store::open(&db.url).await.unwrap();
    wait_all_ended(&store, &ids, Duration::from_secs(240)).await;
    let all = assert_exact(&store, &ids).await;
    for steps in &all {
        assert_complete_blocks(steps);
    }
    let hosts: std::collections::HashSet<_> = all.iter().flatten().filter_map(|s| s.host_id.clone()).collect();
    assert!(hosts.len() >= 3, "the work was spread over the hosts that came and went: {hosts:?}");
    drop((a, b));
    store.close().await.unwrap();
    db.drop_database().await;
}

/// Runs `sql` on the test database (a second connection, as another host would).
async fn execute_sql(url: &str, sql: &str) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    sqlx::query(sql).execute(&pool).await.unwrap();
    pool.close().await;
}

#[tokio::test]
async fn a_host_that_lost_its_lease_cannot_write_and_stops_its_instances() {
    for db in TestDb::both().await {
        let store = Store::open(&db.url).await.unwrap();
        let cache = scratch();
        let registry = std::sync::Arc::new(Registry::new(store.clone(), sandbox(), cache.path()));
        let mut config = HostConfig::new("host-a");
        config.lease = Duration::from_millis(600);
        let runner = Runner::new(Engine::new(sandbox(), store.recorder().clone()), registry, config);
        runner.start_host().await.unwrap();
        let slow = json!({ "name": "slow", "version": "1",
            "steps": [{ "id": "nap", "agent": "misbehave", "input": { "action": "sleep", "ms": 10000 } }] });
        let started = runner.start(plan(&slow), json!({}).into(), Default::default()).await.unwrap();
        let id = started.run_id;
        tokio::time::sleep(Duration::from_millis(300)).await;

        // Another host takes the run over, as a claim does: owner and epoch change.
        execute_sql(
            &db.url,
            &format!("UPDATE workflow_runs SET owner_host_id = 'host-b', epoch = epoch + 1 WHERE id = '{id}'"),
        )
        .await;
        let taken_at = Instant::now();
        let ended = runner.wait(id, started.task).await;
        assert!(matches!(ended, Err(StoreError::LeaseLost(lost)) if lost == id), "{}: {ended:?}", db.kind);
        assert!(
            taken_at.elapsed() < Duration::from_secs(2),
            "{}: the instance was stopped at the next heartbeat, not after its 10 s sleep ({:?})",
            db.kind,
            taken_at.elapsed()
        );
        assert_eq!(runner.active(), 0);

        // Nothing the old host wrote after the takeover landed: the new owner's row stands,
        // and the step is as the old host last wrote it before losing the run.
        let run = store.get_run(id).await.unwrap().unwrap();
        assert_eq!(run.owner_host_id.as_deref(), Some("host-b"));
        assert_eq!(run.status, RunStatus::Running);
        let steps = store.run_steps(id).await.unwrap();
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].status, StepStatus::Running, "{}: the interrupted row was not overwritten", db.kind);

        // A write under the old epoch is refused by the database and tells its fence.
        let stale = Fence::new(run.epoch - 1);
        let mut row = steps[0].clone();
        row.id = Uuid::now_v7();
        row.status = StepStatus::Succeeded;
        let refused = store.recorder().step(row.clone(), Vec::new(), &stale).committed().await;
        assert_eq!(refused, Err(StoreError::LeaseLost(id)));
        assert!(stale.lost().is_cancelled());
        let current = Fence::new(run.epoch);
        store.recorder().step(row, Vec::new(), &current).committed().await.unwrap();
        assert_eq!(store.run_steps(id).await.unwrap().len(), 2, "the current epoch still writes");
        store.close().await.unwrap();
        db.drop_database().await;
    }
}

/// A map whose items 3 and 7 fail on their first attempt (and only then).
fn flaky_map() -> Value {
    json!({
        "name": "flaky-map",
        "version": "1",
        "steps": [{
            "id": "items", "type": "map", "items": "${ input.items }", "max_parallelism": 4,
            "step": { "id": "each", "agent": "misbehave", "input": { "action": "${ item }", "succeed_on": 2 } }
        }]
    })
}

fn flaky_items() -> Value {
    let items: Vec<&str> = (0..10).map(|i| if i == 3 || i == 7 { "flaky" } else { "ok" }).collect();
    json!({ "items": items })
}

/// `braid run` of the flaky map, which fails (items 3 and 7); its run id.
fn failed_flaky_run(url: &str, dir: &std::path::Path) -> Uuid {
    let file = dir.join("flaky.json");
    std::fs::write(&file, flaky_map().to_string()).unwrap();
    let ran =
        braid_run(&file, url, dir).args(["--input", &flaky_items().to_string(), "--output", "json"]).output().unwrap();
    assert_eq!(ran.status.code(), Some(1), "{}", String::from_utf8_lossy(&ran.stderr));
    serde_json::from_slice::<Value>(&ran.stdout).unwrap()["run_id"].as_str().unwrap().parse().unwrap()
}

/// The rows of the map's items after a redrive: failed items ran again as attempt 2, the
/// others ran once, and the map row that ended holds all ten.
fn assert_redriven(steps: &[StepRecord]) {
    let each: Vec<_> = steps.iter().filter(|s| s.step_id == "each").collect();
    for index in 0..10 {
        let mut rows: Vec<_> = each.iter().filter(|s| s.item_index == Some(index)).collect();
        rows.sort_by_key(|s| s.attempt);
        let attempts: Vec<(i32, StepStatus)> = rows.iter().map(|s| (s.attempt, s.status)).collect();
        if index == 3 || index == 7 {
            assert_eq!(attempts, [(1, StepStatus::Failed), (2, StepStatus::Succeeded)], "item {index}");
            assert_eq!(rows[1].output.as_ref().unwrap()["attempt"], 2);
        } else {
            assert_eq!(attempts, [(1, StepStatus::Succeeded)], "item {index} ran once");
        }
    }
    let maps: Vec<_> = steps.iter().filter(|s| s.step_id == "items").collect();
    assert_eq!(
        maps.iter().map(|s| (s.attempt, s.status)).collect::<Vec<_>>(),
        [(1, StepStatus::Failed), (2, StepStatus::Succeeded)]
    );
    let adopted = each.iter().filter(|s| s.parent_step_id == Some(maps[1].id) && s.status.is_success()).count();
    assert_eq!(adopted, 10, "every item is reachable from the map row that ended");
}

#[tokio::test]
async fn a_redriven_run_reruns_only_its_failed_map_items_with_the_next_attempts() {
    // Through the API, on Postgres.
    let db = TestDb::postgres().await;
    let cache = scratch();
    let server = Server::start(&db.url, cache.path(), None, &[]);
    let client = Client::new();
    deploy_with_misbehave(&client, &server, &flaky_map()).await;
    let (status, failed) = start_run(&client, &server, "flaky-map", json!({ "input": flaky_items() }), true).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(failed["status"], "failed", "{failed}");
    let id = failed["run_id"].as_str().unwrap();
    let redrive = |id: String| {
        let client = client.clone();
        let url = server.url(&format!("/v1/runs/{id}/redrive"));
        async move {
            let response = client.post(url).send().await.unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = redrive(id.to_owned()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["redrive_count"], 1);
    let store = Store::open(&db.url).await.unwrap();
    let run_id: Uuid = id.parse().unwrap();
    wait_all_ended(&store, &[run_id], Duration::from_secs(30)).await;
    let run = store.get_run(run_id).await.unwrap().unwrap();
    assert_eq!((run.status, run.redrive_count), (RunStatus::Succeeded, 1), "{:?}", run.error);
    assert_redriven(&store.run_steps(run_id).await.unwrap());
    let (status, body) = redrive(id.to_owned()).await;
    assert_eq!(status, StatusCode::CONFLICT, "a succeeded run is not redriven: {body}");
    let (status, _) = redrive(Uuid::now_v7().to_string()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    drop(server);
    store.close().await.unwrap();
    db.drop_database().await;

    // Through the CLI, on SQLite: `braid run` fails, `braid runs redrive` finishes it.
    let db = TestDb::sqlite();
    let dir = scratch();
    let id = failed_flaky_run(&db.url, dir.path()).to_string();
    let id = id.as_str();
    let redriven = braid()
        .args(["runs", "redrive", id, "--output", "json", "--database-url", &db.url])
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .output()
        .unwrap();
    assert!(redriven.status.success(), "{}", String::from_utf8_lossy(&redriven.stderr));
    let document: Value = serde_json::from_slice(&redriven.stdout).unwrap();
    assert_eq!(document["status"], "succeeded");
    assert_eq!(document["redrive_count"], 1);
    let store = Store::open(&db.url).await.unwrap();
    assert_redriven(&store.run_steps(id.parse().unwrap()).await.unwrap());
    let again = braid().args(["runs", "redrive", id, "--database-url", &db.url]).output().unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("only failed or cancelled runs"));
    store.close().await.unwrap();
}

/// A drive interrupted before it reached map items that an earlier drive had finished
/// once wrote "cancelled, never started" rows above their successes, and the next drive ran
/// those items again (seen in `two_hosts_restarted_repeatedly_…`). A success is final.
#[tokio::test]
async fn a_row_written_after_a_success_at_the_same_key_never_makes_the_step_run_again() {
    let db = TestDb::sqlite();
    let dir = scratch();
    let id = failed_flaky_run(&db.url, dir.path());
    // What the interrupted drive left: a later attempt at item 0, cancelled before it started.
    execute_sql(
        &db.url,
        &format!(
            "INSERT INTO step_executions (id, run_id, step_id, step_type, parent_step_id, item_index, attempt, status, \
             error, step_key, host_id) SELECT '{}', run_id, step_id, step_type, parent_step_id, item_index, 2, \
             'cancelled', 'cancelled before it started', step_key, 'ghost' FROM step_executions \
             WHERE run_id = '{id}' AND step_id = 'each' AND item_index = 0",
            Uuid::now_v7()
        ),
    )
    .await;
    let redriven = braid()
        .args(["runs", "redrive", &id.to_string(), "--output", "json", "--database-url", &db.url])
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .output()
        .unwrap();
    assert!(redriven.status.success(), "{}", String::from_utf8_lossy(&redriven.stderr));
    let store = Store::open(&db.url).await.unwrap();
    let steps = store.run_steps(id).await.unwrap();
    let item_zero: Vec<_> = steps
        .iter()
        .filter(|s| s.step_id == "each" && s.item_index == Some(0))
        .map(|s| (s.attempt, s.status))
        .collect();
    assert_eq!(item_zero.len(), 2, "item 0 did not run again: {item_zero:?}");
    assert!(item_zero.contains(&(1, StepStatus::Succeeded)) && item_zero.contains(&(2, StepStatus::Cancelled)));
    store.close().await.unwrap();
}

#[tokio::test]
async fn an_idempotency_key_retried_concurrently_gives_one_run() {
    for db in TestDb::both().await {
        let cache = scratch();
        let server = Server::start(&db.url, cache.path(), None, &[]);
        let client = Client::new();
        let quick = json!({ "name": "quick", "version": "1",
            "steps": [{ "id": "a", "agent": "misbehave", "input": { "action": "sleep", "ms": 50 } }] });
        deploy_with_misbehave(&client, &server, &quick).await;
        let post = |key: &'static str| {
            let request = client
                .post(server.url("/v1/workflows/quick/runs"))
                .header("Idempotency-Key", key)
                .json(&json!({ "input": {} }));
            async move {
                let response = request.send().await.unwrap();
                let status = response.status();
                (status, response.json::<Value>().await.unwrap())
            }
        };
        let answers = futures::future::join_all((0..10).map(|_| post("order-42"))).await;
        let ids: std::collections::HashSet<_> = answers.iter().map(|(_, body)| body["run_id"].clone()).collect();
        assert_eq!(ids.len(), 1, "{}: one run for one key: {answers:?}", db.kind);
        let created = answers.iter().filter(|(status, _)| *status == StatusCode::ACCEPTED).count();
        let found = answers.iter().filter(|(status, _)| *status == StatusCode::OK).count();
        assert_eq!((created, found), (1, 9), "{}: {answers:?}", db.kind);
        let (_, other) = post("order-43").await;
        assert_ne!(other["run_id"], answers[0].1["run_id"], "another key is another run");

        let id: Uuid = answers[0].1["run_id"].as_str().unwrap().parse().unwrap();
        let store = Store::open(&db.url).await.unwrap();
        wait_all_ended(&store, &[id], Duration::from_secs(20)).await;
        let runs = get_json(&client, &server, "/v1/runs?workflow=quick").await;
        assert_eq!(runs["runs"].as_array().unwrap().len(), 2, "{}", db.kind);
        // Still the same run once it has finished.
        let (status, later) = post("order-42").await;
        assert_eq!((status, &later["run_id"]), (StatusCode::OK, &answers[0].1["run_id"]));
        let bad =
            client.post(server.url("/v1/workflows/quick/runs")).header("Idempotency-Key", "").send().await.unwrap();
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
        drop(server);
        store.close().await.unwrap();
        db.drop_database().await;
    }
}

#[tokio::test]
async fn five_hundred_runs_at_once_never_exceed_max_active_runs_and_memory_stays_flat() {
    let db = TestDb::postgres().await;
    let cache = scratch();
    let server = Server::start(&db.url, cache.path(), None, &["--max-active-runs", "8"]);
    let client = Client::new();
    let quick = json!({ "name": "quick", "version": "1",
        "steps": [{ "id": "a", "agent": "misbehave", "input": { "action": "sleep", "ms": 20 } }] });
    deploy_with_misbehave(&client, &server, &quick).await;
    // Warm up, then measure from a steady state.
    for _ in 0..8 {
        start_run(&client, &server, "quick", json!({ "input": {} }), true).await;
    }
    let pid = server.child.id();
    let before = rss_kib(pid, "VmRSS:");
    let posts = (0..500).map(|_| {
        let request = client.post(server.url("/v1/workflows/quick/runs")).json(&json!({ "input": {} }));
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    });
    let accepted = futures::future::join_all(posts).await;
    let ids: Vec<Uuid> = accepted.iter().map(|a| a["run_id"].as_str().unwrap().parse().unwrap()).collect();
    let store = Store::open(&db.url).await.unwrap();
    wait_all_ended(&store, &ids, Duration::from_secs(120)).await;
    let peak = rss_kib(pid, "VmHWM:");
    let mut runs = Vec::new();
    for id in &ids {
        let run = store.get_run(*id).await.unwrap().unwrap();
        assert_eq!(run.status, RunStatus::Succeeded);
        runs.push(run);
    }
    let mut events: Vec<(chrono::DateTime<chrono::Utc>, i32)> = Vec::new();
    for run in &runs {
        events.push((run.started_at.unwrap(), 1));
        events.push((run.finished_at.unwrap(), -1));
    }
    events.sort();
    let (mut live, mut most) = (0, 0);
    for (_, delta) in events {
        live += delta;
        most = most.max(live);
    }
    eprintln!("max-active-runs 8: at most {most} executing at once; RSS {before} KiB before, peak {peak} KiB");
    assert!(most <= 8, "at most 8 runs executed at once, saw {most}");
    assert!(most >= 4, "the bound was used, not serialised: {most}");
    assert!(peak < before + 64 * 1024, "memory stayed flat: {before} KiB before, peak {peak} KiB");
    drop(server);
    store.close().await.unwrap();
    db.drop_database().await;
}

/// A workflow file whose middle step sleeps, for `braid run` to be killed in.
fn sleepy_file(dir: &std::path::Path) -> std::path::PathBuf {
    let file = dir.join("sleepy.json");
    let workflow = json!({ "name": "sleepy", "version": "1", "steps": [
        { "id": "quick", "agent": "misbehave", "input": { "action": "ok" } },
        { "id": "slow", "agent": "misbehave", "input": { "action": "sleep", "ms": 3000, "report": true } },
        { "id": "after", "agent": "misbehave", "input": { "action": "ok" } }
    ]});
    std::fs::write(&file, workflow.to_string()).unwrap();
    file
}

/// `braid run FILE` on `url`, with the test agents and a cache in `dir`.
fn braid_run(file: &std::path::Path, url: &str, dir: &std::path::Path) -> std::process::Command {
    let mut command = braid();
    command
        .arg("run")
        .arg(file)
        .args(["--database-url", url])
        .arg("--agents")
        .arg(agents_dir())
        .arg("--cache-dir")
        .arg(dir.join("cache"));
    command
}

/// Starts `braid run` on the sleepy workflow and kills it (`kill -9`) while `slow` runs.
async fn kill_braid_run_mid_step(url: &str, dir: &std::path::Path) -> Uuid {
    let mut child = braid_run(&sleepy_file(dir), url, dir)
        .args(["--lease-ms", "1000"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let store = Store::open(url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let id = loop {
        let runs = store.list_runs(&Default::default()).await.unwrap();
        if let Some(run) = runs.first() {
            let steps = store.run_steps(run.id).await.unwrap();
            if steps.iter().any(|s| s.step_id == "slow" && s.status == StepStatus::Running) {
                break run.id;
            }
        }
        assert!(Instant::now() < deadline, "the slow step never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    child.kill().unwrap();
    child.wait().unwrap();
    store.close().await.unwrap();
    id
}

/// After the resume: `quick` ran once, `slow` was closed (its host died) and ran again as
/// attempt 2 — seeing attempt 2 and the same idempotency key — and `after` ran once.
fn assert_resumed(steps: &[StepRecord]) {
    let attempts = |id: &str| -> Vec<(i32, StepStatus)> {
        let mut rows: Vec<_> = steps.iter().filter(|s| s.step_id == id).map(|s| (s.attempt, s.status)).collect();
        rows.sort_by_key(|r| r.0);
        rows
    };
    assert_eq!(attempts("quick"), [(1, StepStatus::Succeeded)]);
    assert_eq!(attempts("slow"), [(1, StepStatus::Cancelled), (2, StepStatus::Succeeded)]);
    assert_eq!(attempts("after"), [(1, StepStatus::Succeeded)]);
    let slow: Vec<_> = steps.iter().filter(|s| s.step_id == "slow").collect();
    let died = slow.iter().find(|s| s.attempt == 1).unwrap();
    assert!(died.error.as_deref().unwrap().contains("stopped or died"), "{:?}", died.error);
    let output = slow.iter().find(|s| s.attempt == 2).unwrap().output.clone().unwrap();
    assert_eq!(output["attempt"], 2);
    assert_eq!(output["idempotency_key"], format!("{}/slow", died.run_id));
}

#[tokio::test]
async fn a_killed_braid_run_is_finished_by_runs_resume_once_its_lease_expires() {
    let db = TestDb::sqlite();
    let dir = scratch();
    let id = kill_braid_run_mid_step(&db.url, dir.path()).await;
    let resume = || {
        braid()
            .args(["runs", "resume", &id.to_string(), "--database-url", &db.url])
            .arg("--cache-dir")
            .arg(dir.path().join("cache"))
            .output()
            .unwrap()
    };
    let early = resume();
    assert_eq!(early.status.code(), Some(2), "the dead host's lease still holds");
    assert!(String::from_utf8_lossy(&early.stderr).contains("until its lease expires"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let resumed = resume();
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    let store = Store::open(&db.url).await.unwrap();
    assert_resumed(&store.run_steps(id).await.unwrap());
    assert_eq!(store.get_run(id).await.unwrap().unwrap().status, RunStatus::Succeeded);
    let again = resume();
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already finished"));
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_killed_braid_run_is_finished_by_a_server_that_never_saw_its_workflow() {
    let db = TestDb::postgres().await;
    let dir = scratch();
    let id = kill_braid_run_mid_step(&db.url, dir.path()).await;
    // The server has nothing deployed: it resumes from the definition and components the
    // run stored by digest.
    let server = Server::start(&db.url, &dir.path().join("server-cache"), None, &["--lease-ms", "1000"]);
    let store = Store::open(&db.url).await.unwrap();
    wait_all_ended(&store, &[id], Duration::from_secs(30)).await;
    assert_eq!(store.get_run(id).await.unwrap().unwrap().status, RunStatus::Succeeded);
    assert_resumed(&store.run_steps(id).await.unwrap());
    drop(server);
    store.close().await.unwrap();
    db.drop_database().await;
}

#[tokio::test]
async fn cancelling_a_run_no_host_runs_closes_every_open_row() {
    let db = TestDb::sqlite();
    let dir = scratch();
    let id = kill_braid_run_mid_step(&db.url, dir.path()).await;
    let cancelled = braid().args(["runs", "cancel", &id.to_string(), "--database-url", &db.url]).output().unwrap();
    assert!(cancelled.status.success(), "{}", String::from_utf8_lossy(&cancelled.stderr));
    assert!(String::from_utf8_lossy(&cancelled.stdout).contains("cancelled"));
    let store = Store::open(&db.url).await.unwrap();
    assert_eq!(store.get_run(id).await.unwrap().unwrap().status, RunStatus::Cancelled);
    let steps = store.run_steps(id).await.unwrap();
    assert!(steps.iter().all(|s| s.status.is_terminal()), "{steps:#?}");
    let slow = steps.iter().find(|s| s.step_id == "slow").unwrap();
    assert_eq!(slow.status, StepStatus::Cancelled);
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_second_server_whose_port_is_taken_claims_nothing() {
    let db = TestDb::postgres().await;
    let (cache_a, cache_b) = (scratch(), scratch());
    let client = Client::new();
    let a = Server::start(&db.url, cache_a.path(), None, &["--lease-ms", "800"]);
    let slow = json!({ "name": "slow", "version": "1",
        "steps": [{ "id": "nap", "agent": "misbehave", "input": { "action": "sleep", "ms": 2500 } }] });
    deploy_with_misbehave(&client, &a, &slow).await;
    let id = post_run(&client, &a, "slow", json!({ "input": {} })).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let address = a.base.trim_start_matches("http://").to_owned();
    let second = braid()
        .args(["serve", "--listen", &address, "--database-url", &db.url, "--lease-ms", "800"])
        .arg("--cache-dir")
        .arg(cache_b.path())
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&second.stderr).contains("cannot listen"));
    let store = Store::open(&db.url).await.unwrap();
    wait_all_ended(&store, &[id], Duration::from_secs(20)).await;
    let steps = assert_exact(&store, &[id]).await.remove(0);
    assert_eq!(steps.len(), 1, "the live host's step ran once and was not touched: {steps:#?}");
    let owner = store.get_run(id).await.unwrap().unwrap().owner_host_id;
    assert_eq!(steps[0].host_id, owner);
    drop(a);
    store.close().await.unwrap();
    db.drop_database().await;
}

#[tokio::test]
async fn cut_database_connections_lose_no_run_and_health_says_so() {
    let db = TestDb::postgres().await;
    let cache = scratch();
    let server = Server::start(&db.url, cache.path(), None, &["--lease-ms", "1500"]);
    let client = Client::new();
    let steps: Vec<Value> = (0..6)
        .map(|i| json!({ "id": format!("s{i}"), "agent": "misbehave", "input": { "action": "sleep", "ms": 60 } }))
        .collect();
    deploy_with_misbehave(&client, &server, &json!({ "name": "chain", "version": "1", "steps": steps })).await;
    let mut ids = Vec::new();
    for _ in 0..24 {
        ids.push(post_run(&client, &server, "chain", json!({ "input": {} })).await);
    }
    let database = db.url.rsplit('/').next().unwrap().to_owned();
    let admin = common::postgres_admin_url();
    let terminate = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}' AND pid <> pg_backend_pid()"
    );
    // Connections cut three times mid-run.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(120)).await;
        execute_sql(&admin, &terminate).await;
    }
    // Then an outage longer than the lease: health says so, the host stops its runs, and
    // once the database is back they are claimed again and finish.
    execute_sql(&admin, &format!("ALTER DATABASE {database} WITH ALLOW_CONNECTIONS false")).await;
    execute_sql(&admin, &terminate).await;
    let health = client.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(health.json::<Value>().await.unwrap()["database"].as_str().unwrap().contains("database"));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    execute_sql(&admin, &format!("ALTER DATABASE {database} WITH ALLOW_CONNECTIONS true")).await;
    let store = Store::open(&db.url).await.unwrap();
    wait_all_ended(&store, &ids, Duration::from_secs(90)).await;
    assert_exact(&store, &ids).await;
    let health = client.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    drop(server);
    store.close().await.unwrap();
    db.drop_database().await;
}

#[tokio::test]
async fn attempts_continue_after_a_crash_and_max_attempts_counts_them_all() {
    let db = TestDb::sqlite();
    let dir = scratch();
    let file = dir.path().join("retrying.json");
    let workflow = json!({ "name": "retrying", "version": "1", "steps": [{
        "id": "flaky", "agent": "misbehave", "input": { "action": "flaky", "succeed_on": 10 },
        "retry": { "max_attempts": 3, "initial_backoff_ms": 700, "max_backoff_ms": 700 }
    }]});
    std::fs::write(&file, workflow.to_string()).unwrap();
    let mut child = braid_run(&file, &db.url, dir.path())
        .args(["--lease-ms", "1000"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let store = Store::open(&db.url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    // Killed while it waits to retry after its second failure.
    let id = loop {
        if let Some(run) = store.list_runs(&Default::default()).await.unwrap().first() {
            let failed =
                store.run_steps(run.id).await.unwrap().iter().filter(|s| s.status == StepStatus::Failed).count();
            if failed == 2 {
                break run.id;
            }
        }
        assert!(Instant::now() < deadline, "two attempts never failed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    child.kill().unwrap();
    child.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let resumed = braid()
        .args(["runs", "resume", &id.to_string(), "--database-url", &db.url])
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .output()
        .unwrap();
    assert_eq!(resumed.status.code(), Some(1), "the run fails: {}", String::from_utf8_lossy(&resumed.stderr));
    let steps = store.run_steps(id).await.unwrap();
    let attempts: Vec<(i32, StepStatus)> = steps.iter().map(|s| (s.attempt, s.status)).collect();
    assert_eq!(attempts, [(1, StepStatus::Failed), (2, StepStatus::Failed), (3, StepStatus::Failed)]);
    assert!(steps[2].error.as_deref().unwrap().contains("attempt 3 failed"), "the agent saw attempt 3");
    store.close().await.unwrap();
}

#[tokio::test]
async fn time_queued_for_an_instance_is_recorded_and_not_part_of_the_step_deadline() {
    use braid::engine::RunPlan;
    use braid::sandbox::{Sandbox, SandboxConfig};
    let db = TestDb::sqlite();
    let store = Store::open(&db.url).await.unwrap();
    // Two instance slots for six branches that each take 300 ms of a 450 ms deadline.
    let small = std::sync::Arc::new(Sandbox::new(SandboxConfig { max_instances: 2, ..Default::default() }).unwrap());
    let branches: Vec<Value> = (0..6)
        .map(|i| {
            json!({ "name": format!("b{i}"), "agent": "misbehave", "timeout_ms": 450,
                    "input": { "action": "sleep", "ms": 300 } })
        })
        .collect();
    let definition = json!({ "name": "burst", "version": "1", "steps": [
        { "id": "fan", "type": "parallel", "max_parallelism": 6, "branches": branches }] });
    let workflow = braid::workflow::parse(&definition.to_string()).unwrap();
    let agents = braid::registry::AgentDirectory::new(agents_dir()).resolve(&workflow, &small).unwrap();
    let plan = std::sync::Arc::new(RunPlan { workflow: std::sync::Arc::new(workflow), agents, workflow_digest: None });
    let engine = Engine::new(small, store.recorder().clone());
    let run = engine.run(plan, Uuid::now_v7(), json!({}).into(), Default::default()).await.unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    let steps = store.run_steps(run.id).await.unwrap();
    let queued: Vec<i64> = steps.iter().filter(|s| s.step_type == "agent").map(|s| s.queued_us.unwrap()).collect();
    assert_eq!(queued.len(), 6);
    assert!(queued.iter().filter(|us| **us >= 250_000).count() >= 2, "later branches waited for a slot: {queued:?}");
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_server_started_beside_a_live_braid_run_on_sqlite_is_refused_and_leaves_its_run_alone() {
    let db = TestDb::sqlite();
    let dir = scratch();
    let child = braid_run(&sleepy_file(dir.path()), &db.url, dir.path())
        .args(["--output", "json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // SQLite is single-host: the server refuses to start beside the running host.
    let refused = braid()
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &db.url])
        .arg("--cache-dir")
        .arg(dir.path().join("server-cache"))
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("need Postgres"), "{stderr}");
    let output = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap()).await.unwrap();
    assert!(output.status.success(), "the run finished where it started");
    let document: Value = serde_json::from_slice(&output.stdout).unwrap();
    let id: Uuid = document["run_id"].as_str().unwrap().parse().unwrap();
    let store = Store::open(&db.url).await.unwrap();
    let steps = assert_exact(&store, &[id]).await.remove(0);
    assert_eq!(steps.len(), 3, "each step ran once, on the braid run host: {steps:#?}");
    assert!(steps.iter().all(|s| s.host_id == steps[0].host_id));
    store.close().await.unwrap();
}
