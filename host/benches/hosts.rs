//! Many hosts on one Postgres: a slot-bound fan-out (a map whose items each sleep 100 ms in
//! a host call, `max_parallelism` 64) through the API of one host, with 1, 2 and 3 real
//! `braid serve` processes of `--max-instances 8` each on one database. Each item holds an
//! instance slot while it sleeps, so one host finishes 80 items/s at best and every added
//! host should add as much. Prints a Markdown table for the README: items/s and the ratio to
//! one host, the median of three runs after a warm-up run (each host loads the agent once).
//!
//! Run: `cargo bench -p braid --bench hosts` (Postgres from `BRAID_BENCH_POSTGRES_URL`,
//! default `postgres://postgres@127.0.0.1:5432/postgres`; scratch databases are created and
//! dropped).

use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const ITEMS: u32 = 480;
const SLEEP_MS: u64 = 100;
const SLOTS: u32 = 8;
const RUNS: usize = 3;

struct Host {
    child: Child,
    base: String,
    _cache: tempfile::TempDir,
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_host(database_url: &str) -> Host {
    let cache = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_braid"))
        .args(["serve", "--listen", "127.0.0.1:0", "--max-instances", &SLOTS.to_string()])
        .args(["--database-url", database_url])
        .arg("--cache-dir")
        .arg(cache.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    let base = line.trim().strip_prefix("braid listening on ").expect("a listening host").to_owned();
    Host { child, base, _cache: cache }
}

fn admin_url() -> String {
    std::env::var("BRAID_BENCH_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

async fn execute(url: &str, sql: &str) {
    let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect(url).await.unwrap();
    sqlx::query(sql).execute(&mut connection).await.unwrap();
}

/// Items per second through `count` hosts: the median of `RUNS` runs, each timed from the
/// run's recorded start to its finish.
async fn items_per_second(count: usize) -> f64 {
    let admin = admin_url();
    let name = format!("braid_bench_hosts_{}", uuid::Uuid::now_v7().simple());
    execute(&admin, &format!("CREATE DATABASE {name}")).await;
    let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
    let hosts: Vec<Host> = (0..count).map(|_| start_host(&url)).collect();
    let client = reqwest::Client::new();
    let first = &hosts[0].base;
    let wasm = std::fs::read(braid_test_artifacts::agents_dir().join("misbehave.wasm")).unwrap();
    assert!(
        client.put(format!("{first}/v1/agents/misbehave/1")).body(wasm).send().await.unwrap().status().is_success()
    );
    let workflow = json!({ "name": "slots", "version": "1", "steps": [{
        "id": "items", "type": "map", "items": "${ input.items }", "max_parallelism": 64,
        "step": { "id": "each", "agent": "misbehave", "input": { "action": "sleep", "ms": SLEEP_MS } } }] });
    let put = client.put(format!("{first}/v1/workflows/slots/1")).body(workflow.to_string()).send().await.unwrap();
    assert!(put.status().is_success());
    loop {
        let listed: Value = client.get(format!("{first}/v1/hosts")).send().await.unwrap().json().await.unwrap();
        if listed["hosts"].as_array().map_or(0, Vec::len) == count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut rates = Vec::new();
    for run in 0..=RUNS {
        let items = if run == 0 { 64 } else { ITEMS };
        let body = json!({ "input": { "items": (0..items).collect::<Vec<u32>>() } });
        let response = client.post(format!("{first}/v1/workflows/slots/runs?wait=true")).json(&body).send().await;
        let run_doc: Value = response.unwrap().json().await.unwrap();
        assert_eq!(run_doc["status"], "succeeded", "{run_doc}");
        let started: chrono::DateTime<chrono::Utc> = run_doc["started_at"].as_str().unwrap().parse().unwrap();
        let finished: chrono::DateTime<chrono::Utc> = run_doc["finished_at"].as_str().unwrap().parse().unwrap();
        if run > 0 {
            rates.push(f64::from(ITEMS) / (finished - started).to_std().unwrap().as_secs_f64());
        }
    }
    drop(hosts);
    execute(&admin, &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|arg| arg == "--list") {
        return;
    }
    let ceiling = 1000.0 / SLEEP_MS as f64 * f64::from(SLOTS);
    println!(
        "| hosts (`--max-instances {SLOTS}` each) | items/s ({ITEMS} items × {SLEEP_MS} ms) | vs 1 host | vs the slots' ceiling |"
    );
    println!("|---|---|---|---|");
    let mut one = None;
    for count in 1..=3 {
        let rate = items_per_second(count).await;
        let baseline = *one.get_or_insert(rate);
        println!("| {count} | {rate:.0} | {:.2}× | {:.0}% |", rate / baseline, 100.0 * rate / (ceiling * count as f64));
    }
}
