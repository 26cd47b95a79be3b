//! The deployed host: the first run of a deployed agent after a restart (its precompiled
//! artifact loaded from the cache) next to a warm run; deploy time per MiB of wasm; and
//! one-step runs per second through `POST /v1/workflows/{name}/runs?wait=true` with 16
//! clients, every run recorded in Postgres, next to the same runs started in-process
//! without HTTP in the same run. Prints a Markdown table for the README.
//!
//! Run: `cargo bench -p braid --bench server` (Postgres from `BRAID_BENCH_POSTGRES_URL`,
//! default `postgres://postgres@127.0.0.1:5432/postgres`; a scratch database is created
//! and dropped).

use braid::api::{self, AppState};
use braid::cluster::{HostConfig, Runner};
use braid::engine::{Engine, RunControl};
use braid::registry::Registry;
use braid::sandbox::{Sandbox, SandboxConfig};
use braid::store::{RunStatus, Store};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The same allocator as the `braid` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RESTARTS: usize = 20;
const DEPLOYS: usize = 10;
const CLIENTS: usize = 16;
const RUNS: usize = 4000;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// The same component with a different digest: a custom section appended.
fn variant(wasm: &[u8], n: usize) -> Vec<u8> {
    let name = b"braid-bench";
    let payload = n.to_le_bytes();
    let mut bytes = wasm.to_vec();
    bytes.push(0); // custom section
    bytes.push((1 + name.len() + payload.len()) as u8);
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(&payload);
    bytes
}

async fn one_run(registry: &Registry, engine: &Engine) -> Duration {
    let started = Instant::now();
    let plan = registry.plan("one", None).await.unwrap();
    let run =
        engine.execute(plan.clone(), plan.new_run(json!({ "n": 1 }).into()), &RunControl::new(), &[]).await.unwrap();
    assert_eq!(run.status, RunStatus::Succeeded);
    started.elapsed()
}

fn main() {
    // As the `braid` binary does.
    braid::cli::allow_transparent_huge_pages(false);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let admin = std::env::var("BRAID_BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let database = format!("braid_bench_{}", Uuid::now_v7().simple());
    let url = format!("{}/{database}", admin.rsplit_once('/').unwrap().0);
    let cache = std::env::temp_dir().join(format!("braid-bench-cache-{}", Uuid::now_v7()));

    runtime.block_on(async {
        use sqlx::Connection;
        let mut admin_connection = sqlx::PgConnection::connect(&admin).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {database}")).execute(&mut admin_connection).await.unwrap();

        let store = Store::open(&url).await.unwrap();
        let sandbox = Arc::new(Sandbox::new(SandboxConfig::default()).unwrap());
        let engine = Engine::new(sandbox.clone(), store.recorder().clone());
        let registry = Arc::new(Registry::new(store.clone(), sandbox.clone(), &cache));
        let echo = braid_test_artifacts::agent_bytes("echo");
        registry.deploy_agent("echo", "1", echo.clone()).await.unwrap();
        let one = json!({ "steps": [ { "id": "echo", "agent": "echo", "input": "${ input }" } ] });
        registry.deploy_workflow("one", "1", one).await.unwrap();

        // First run after a restart (a registry that has loaded nothing yet) vs warm.
        let mut first = Vec::new();
        let mut warm = Vec::new();
        for _ in 0..RESTARTS {
            let restarted = Registry::new(store.clone(), sandbox.clone(), &cache);
            first.push(one_run(&restarted, &engine).await);
            warm.push(one_run(&restarted, &engine).await);
        }
        let (first, warm) = (median(first), median(warm));

        // Deploys: type-check, compile, precompile to the cache, store the bytes.
        let misbehave = braid_test_artifacts::agent_bytes("misbehave");
        let started = Instant::now();
        for n in 0..DEPLOYS {
            registry.deploy_agent("deploy-bench", &n.to_string(), variant(&misbehave, n)).await.unwrap();
        }
        let per_deploy = started.elapsed() / DEPLOYS as u32;
        let mib = misbehave.len() as f64 / (1 << 20) as f64;

        // Runs through the API, 16 clients, each waiting for its run.
        let runner = Runner::new(engine.clone(), registry.clone(), HostConfig::new("bench"));
        runner.start_host().await.unwrap();
        let state = AppState { registry: registry.clone(), runner: runner.clone(), sandbox: sandbox.clone(), token: None, metrics_token: None };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, api::router(state)).await.unwrap() });
        let client = reqwest::Client::new();
        let endpoint = format!("http://{address}/v1/workflows/one/runs?wait=true");
        let api_rate = {
            let started = Instant::now();
            let mut clients = tokio::task::JoinSet::new();
            for _ in 0..CLIENTS {
                let (client, endpoint) = (client.clone(), endpoint.clone());
                clients.spawn(async move {
                    for i in 0..RUNS / CLIENTS {
                        let response = client.post(&endpoint).json(&json!({ "input": { "i": i } })).send().await.unwrap();
                        assert_eq!(response.status(), 200);
                        let body: serde_json::Value = response.json().await.unwrap();
                        assert_eq!(body["status"], "succeeded");
                    }
                });
            }
            while clients.join_next().await.is_some() {}
            RUNS as f64 / started.elapsed().as_secs_f64()
        };
        // The same runs without HTTP: plan, accept, run, read back the document.
        let direct_rate = {
            let started = Instant::now();
            let mut clients = tokio::task::JoinSet::new();
            for _ in 0..CLIENTS {
                let (registry, runner, store) = (registry.clone(), runner.clone(), store.clone());
                clients.spawn(async move {
                    for i in 0..RUNS / CLIENTS {
                        let plan = registry.plan("one", None).await.unwrap();
                        let started = runner.start(plan, json!({ "i": i }).into(), Default::default()).await.unwrap();
                        let run = runner.wait(started.run_id, started.task).await.unwrap();
                        let steps = store.run_steps(run.id).await.unwrap();
                        assert_eq!(steps.len(), 1);
                    }
                });
            }
            while clients.join_next().await.is_some() {}
            RUNS as f64 / started.elapsed().as_secs_f64()
        };
        let recorded: Vec<_> = store.list_runs(&braid::store::RunFilter { limit: Some(1), ..Default::default() }).await.unwrap();
        assert!(!recorded.is_empty());

        println!("one-step workflow (`echo`), Postgres; {RESTARTS} restarts, {DEPLOYS} deploys, {RUNS} runs with {CLIENTS} clients\n");
        println!("| measure | figure | baseline (same run) |");
        println!("|---|---|---|");
        println!(
            "| first run after a restart (artifact loaded from the cache), median | {:.2} ms | warm run {:.2} ms (+{:.2} ms) |",
            ms(first),
            ms(warm),
            ms(first.saturating_sub(warm))
        );
        println!(
            "| deploy (type-check, compile, precompile, store) of a {:.2} MiB agent | {:.0} ms ({:.0} ms per MiB) | |",
            mib,
            ms(per_deploy),
            ms(per_deploy) / mib
        );
        println!(
            "| runs/s through `POST .../runs?wait=true`, {CLIENTS} clients | {api_rate:.0} | {direct_rate:.0} runs/s in-process without HTTP ({:.2}×) |",
            api_rate / direct_rate
        );

        store.close().await.unwrap();
        drop(admin_connection);
        let mut admin_connection = sqlx::PgConnection::connect(&admin).await.unwrap();
        sqlx::query(&format!("DROP DATABASE {database} WITH (FORCE)")).execute(&mut admin_connection).await.unwrap();
    });
    std::fs::remove_dir_all(&cache).ok();
}
