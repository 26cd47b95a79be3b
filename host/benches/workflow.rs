//! Workflows end to end with recording: a fan-out of 10,000 branches of the trivial `echo`
//! agent under `max_parallelism` 64, and a chain of 40 sequential steps each durably
//! recorded before the next starts — on Postgres and on SQLite — next to the sandbox-only
//! throughput measured in the same run. Prints a Markdown table for the README.
//!
//! Then the realistic agent (`price-order`: ~1 KB of JSON into typed structs and back, built
//! exactly as the README tells users to) through the real `braid run` binary on Postgres: a
//! 2,000-branch fan-out and a 40-step chain, each timed from the run's recorded start to its
//! recorded finish — each chain run followed by its baselines: 40 of the smallest durable
//! commits this Postgres makes, 40 commits of a step's input and output, and 40 of the
//! chain's own step rows through Braid's recorder.
//!
//! Run: `cargo bench -p braid --bench workflow` (Postgres from `BRAID_BENCH_POSTGRES_URL`,
//! default `postgres://postgres@127.0.0.1:5432/postgres`; a scratch database is created
//! and dropped).

use braid::engine::{Engine, RunPlan};
use braid::registry::AgentDirectory;
use braid::sandbox::{ExecutionRequest, Outcome, Sandbox, SandboxConfig, StepContext};
use braid::store::{RunStatus, Store};
use braid::workflow;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const BRANCHES: usize = 10_000;
const IN_FLIGHT: usize = 64;
const CHAIN: usize = 40;
const CHAIN_RUNS: usize = 20;

fn plan(sandbox: &Sandbox, definition: Value) -> Arc<RunPlan> {
    let workflow = workflow::parse(&definition.to_string()).unwrap();
    let agents = AgentDirectory::new(braid_test_artifacts::agents_dir());
    workflow::validate(&workflow, &|r| agents.path_of(r).is_some()).unwrap();
    let resolved = agents.resolve(&workflow, sandbox).unwrap();
    Arc::new(RunPlan { workflow: Arc::new(workflow), agents: resolved, workflow_digest: None })
}

fn fan_out() -> Value {
    let branches: Vec<Value> = (0..BRANCHES)
        .map(|i| json!({ "name": format!("b{i}"), "agent": "echo", "input": { "i": i, "text": "${ input.text }" } }))
        .collect();
    json!({ "name": "fan-out", "version": "1", "steps": [
        { "id": "fan", "type": "parallel", "max_parallelism": IN_FLIGHT, "branches": branches } ] })
}

fn map_items() -> Value {
    json!({ "name": "map", "version": "1", "steps": [
        { "id": "each", "type": "map", "items": "${ input.items }", "max_parallelism": IN_FLIGHT,
          "step": { "agent": "echo", "input": { "n": "${ item }", "text": "${ input.text }" } } } ] })
}

fn chain() -> Value {
    let mut steps = vec![json!({ "id": "s0", "agent": "echo", "input": { "n": 0, "text": "${ input.text }" } })];
    for i in 1..CHAIN {
        steps.push(json!({ "id": format!("s{i}"), "agent": "echo", "input": { "n": i, "previous": format!("${{ steps.s{}.output.n }}", i - 1) } }));
    }
    json!({ "name": "chain", "version": "1", "steps": steps })
}

/// 1,000 branches of one word-count agent, `max_parallelism` 64.
const LANGUAGE_BRANCHES: usize = 1000;

fn language_fan_out(agent: &str) -> Value {
    let branches: Vec<Value> = (0..LANGUAGE_BRANCHES)
        .map(|i| json!({ "name": format!("b{i}"), "agent": agent, "input": { "text": "one two three four ${ input.n }" } }))
        .collect();
    json!({ "name": "fan-out", "version": "1", "steps": [
        { "id": "fan", "type": "parallel", "max_parallelism": IN_FLIGHT, "branches": branches } ] })
}

/// Recorded branches/s of a 1,000-branch fan-out of each language's word count on `url`
/// (the best of two runs after a warm-up).
async fn languages(sandbox: &Arc<Sandbox>, url: &str) -> Vec<(&'static str, f64)> {
    let store = Store::open(url).await.unwrap();
    let engine = Engine::new(sandbox.clone(), store.recorder().clone());
    let mut rates = Vec::new();
    for (label, agent) in [("Rust", "word-count"), ("Python", "word-count-py"), ("JavaScript", "word-count-js")] {
        let plan = plan(sandbox, language_fan_out(agent));
        let mut best: f64 = 0.0;
        for round in 0..3 {
            let started = Instant::now();
            let run = engine
                .run(plan.clone(), Uuid::now_v7(), json!({ "n": round }).into(), CancellationToken::new())
                .await
                .unwrap();
            let elapsed = started.elapsed();
            assert_eq!(run.status, RunStatus::Succeeded, "{label}: {:?}", run.error);
            if round > 0 {
                best = best.max(LANGUAGE_BRANCHES as f64 / elapsed.as_secs_f64());
            }
        }
        rates.push((label, best));
    }
    store.close().await.unwrap();
    rates
}

async fn sandbox_only(sandbox: &Arc<Sandbox>, plan: &RunPlan) -> f64 {
    let agent = plan.agents["echo"].clone();
    let permits = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..BRANCHES {
        let permit = permits.clone().acquire_owned().await.unwrap();
        let (sandbox, agent) = (sandbox.clone(), agent.clone());
        tasks.spawn(async move {
            let request = ExecutionRequest::new(
                StepContext { run_id: "bench".into(), step_id: format!("b{i}"), attempt: 1, ..StepContext::default() },
                json!({ "i": i, "text": "fan-out" }).to_string(),
            );
            let execution = sandbox.execute(&agent.agent, request).await.unwrap();
            assert_eq!(execution.outcome, Outcome::Succeeded);
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
    BRANCHES as f64 / started.elapsed().as_secs_f64()
}

struct Figures {
    branches_per_second: f64,
    map_items_per_second: f64,
    chain_median: Duration,
    chain_best: Duration,
}

async fn measure(
    sandbox: &Arc<Sandbox>,
    url: &str,
    fan: &Arc<RunPlan>,
    chain: &Arc<RunPlan>,
    map: &Arc<RunPlan>,
) -> Figures {
    let store = Store::open(url).await.unwrap();
    let engine = Engine::new(sandbox.clone(), store.recorder().clone());
    let input = json!({ "text": "fan-out" });

    // Warm up (connections, caches), then the measured fan-out.
    engine.run(chain.clone(), Uuid::now_v7(), input.clone().into(), CancellationToken::new()).await.unwrap();
    let started = Instant::now();
    let run = engine.run(fan.clone(), Uuid::now_v7(), input.clone().into(), CancellationToken::new()).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    let recorded = store.run_steps(run.id).await.unwrap();
    assert_eq!(recorded.len(), BRANCHES + 1, "every branch and the block are recorded");

    let items: Vec<usize> = (0..BRANCHES).collect();
    let started = Instant::now();
    let run = engine
        .run(map.clone(), Uuid::now_v7(), json!({ "items": items, "text": "map" }).into(), CancellationToken::new())
        .await
        .unwrap();
    let map_elapsed = started.elapsed();
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    assert_eq!(store.run_steps(run.id).await.unwrap().len(), BRANCHES + 1, "every item and the map are recorded");

    let mut chain_times = Vec::new();
    for _ in 0..CHAIN_RUNS {
        let started = Instant::now();
        let run =
            engine.run(chain.clone(), Uuid::now_v7(), input.clone().into(), CancellationToken::new()).await.unwrap();
        chain_times.push(started.elapsed());
        assert_eq!(run.status, RunStatus::Succeeded);
    }
    chain_times.sort();
    store.close().await.unwrap();
    Figures {
        branches_per_second: BRANCHES as f64 / elapsed.as_secs_f64(),
        map_items_per_second: BRANCHES as f64 / map_elapsed.as_secs_f64(),
        chain_median: chain_times[CHAIN_RUNS / 2],
        chain_best: chain_times[0],
    }
}

/// Branches of the realistic fan-out through `braid run`.
const USERS_BRANCHES: usize = 2000;
/// The realistic agent's input: an order of seven lines, ~1.1 KB.
const ORDER: &str = include_str!("../../examples/agents/price-order/order.json");

/// The realistic agent's workflows as files for `braid run`: a fan-out of
/// `USERS_BRANCHES` branches and a chain of `CHAIN` steps, each step pricing the run's order.
fn users_workflows(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let branches: Vec<Value> = (0..USERS_BRANCHES)
        .map(|i| json!({ "name": format!("b{i}"), "agent": "price-order", "input": "${ input }" }))
        .collect();
    let fan = json!({ "name": "orders-fan-out", "version": "1", "steps": [
        { "id": "fan", "type": "parallel", "max_parallelism": IN_FLIGHT, "branches": branches } ] });
    let steps: Vec<Value> =
        (0..CHAIN).map(|i| json!({ "id": format!("s{i}"), "agent": "price-order", "input": "${ input }" })).collect();
    let chain = json!({ "name": "orders-chain", "version": "1", "steps": steps });
    let (fan_path, chain_path) = (dir.join("orders-fan-out.json"), dir.join("orders-chain.json"));
    std::fs::write(&fan_path, fan.to_string()).unwrap();
    std::fs::write(&chain_path, chain.to_string()).unwrap();
    (fan_path, chain_path)
}

/// One `braid run` of `workflow` on `database_url` with the agents built as users build
/// them: the time from the run's recorded start to its recorded finish, and its step rows.
fn braid_run(workflow: &std::path::Path, database_url: &str) -> (Duration, usize) {
    let agents = braid_test_artifacts::agent_path_as_users_build("price-order").parent().unwrap().to_owned();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_braid"))
        .arg("run")
        .arg(workflow)
        .arg("--agents")
        .arg(&agents)
        .args(["--input", ORDER, "--database-url", database_url, "--output", "json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "braid run failed: {}", String::from_utf8_lossy(&output.stderr));
    let run: Value = serde_json::from_slice(&output.stdout).unwrap();
    let at = |field: &str| {
        chrono::DateTime::parse_from_rfc3339(run[field].as_str().unwrap_or_else(|| panic!("no {field} in {run}")))
            .unwrap()
    };
    let took = (at("finished_at") - at("started_at")).to_std().unwrap();
    (took, run["steps"].as_array().map_or(0, Vec::len))
}

/// Runs of the realistic fan-out through `braid run`.
const USERS_FAN_RUNS: usize = 5;

/// The realistic agent through `braid run` on Postgres: the fan-out's recorded branches/s
/// (best and median of `USERS_FAN_RUNS`); the chain's median and best of `CHAIN_RUNS`, and
/// its baselines measured right after each of its runs (medians of `CHAIN_RUNS`).
struct UsersFigures {
    fan_best: f64,
    fan_median: f64,
    chain_median: Duration,
    chain_best: Duration,
    /// `CHAIN` commits of the smallest row there is, one after another.
    smallest_commits: Duration,
    /// `CHAIN` commits of a row holding one of the chain's steps' input and output.
    document_commits: Duration,
    /// `CHAIN` step rows like the chain's, written one after another through Braid's
    /// recorder (its writer, statement and fence) with no engine and no agent.
    recorded_commits: Duration,
    /// The chain over each baseline taken right after it: medians of the per-run ratios.
    over_smallest: f64,
    over_documents: f64,
    over_recorded: f64,
}

async fn through_braid_run(database_url: &str) -> UsersFigures {
    let dir = tempfile::tempdir().unwrap();
    let (fan, chain) = users_workflows(dir.path());
    // Blocking in `braid_run` is fine: this runs on the main thread, not on a worker.
    braid_run(&chain, database_url); // warm-up: the agent's compiled artifact is cached
    let mut fan_rates: Vec<f64> = (0..USERS_FAN_RUNS)
        .map(|_| {
            let (took, rows) = braid_run(&fan, database_url);
            assert_eq!(rows, USERS_BRANCHES + 1, "every branch and the block are recorded");
            USERS_BRANCHES as f64 / took.as_secs_f64()
        })
        .collect();
    fan_rates.sort_by(f64::total_cmp);
    let mut baseline = CommitBaseline::new(database_url).await;
    let (mut chains, mut smallest, mut documents, mut recorded) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut over_smallest, mut over_documents, mut over_recorded) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..CHAIN_RUNS {
        let (took, rows) = braid_run(&chain, database_url);
        assert_eq!(rows, CHAIN);
        // This disk's commit latency moves by 2-3x from one minute to the next: each run
        // is compared with commits made right after it.
        let small = baseline.commits(Row::Smallest).await;
        let docs = baseline.commits(Row::Documents).await;
        let steps = baseline.recorded_steps().await;
        over_smallest.push(took.as_secs_f64() / small.as_secs_f64());
        over_documents.push(took.as_secs_f64() / docs.as_secs_f64());
        over_recorded.push(took.as_secs_f64() / steps.as_secs_f64());
        chains.push(took);
        smallest.push(small);
        documents.push(docs);
        recorded.push(steps);
    }
    for durations in [&mut chains, &mut smallest, &mut documents, &mut recorded] {
        durations.sort();
    }
    for ratios in [&mut over_smallest, &mut over_documents, &mut over_recorded] {
        ratios.sort_by(f64::total_cmp);
    }
    UsersFigures {
        fan_best: fan_rates[USERS_FAN_RUNS - 1],
        fan_median: fan_rates[USERS_FAN_RUNS / 2],
        chain_median: chains[CHAIN_RUNS / 2],
        chain_best: chains[0],
        smallest_commits: smallest[CHAIN_RUNS / 2],
        document_commits: documents[CHAIN_RUNS / 2],
        recorded_commits: recorded[CHAIN_RUNS / 2],
        over_smallest: over_smallest[CHAIN_RUNS / 2],
        over_documents: over_documents[CHAIN_RUNS / 2],
        over_recorded: over_recorded[CHAIN_RUNS / 2],
    }
}

/// Which row a baseline commit inserts.
#[derive(Clone, Copy)]
enum Row {
    /// One integer: the cheapest durable commit this Postgres makes.
    Smallest,
    /// The input and output of one of the chain's steps (as recorded, lz4-compressed text):
    /// the bytes every step of the chain commits, without anything else Braid writes.
    Documents,
}

/// The chain's baselines: `CHAIN` one-row inserts in a row, each its own transaction, from
/// one connection with prepared statements. A chain whose every step is committed before
/// the next starts cannot take less than the first; the second also writes each step's
/// documents. The third writes the chain's own step rows through Braid's recorder, one
/// after another, under a run's fence: the chain over it is what the engine and the agent
/// add; it over the second, what the rest of a step row and Braid's writer add.
struct CommitBaseline {
    connection: sqlx::PgConnection,
    /// A step's input and output, read from the chain's own rows.
    documents: (String, String),
    /// The recorder's store, a run of its own, and a step row of the chain to write again.
    store: Store,
    fence: braid::store::Fence,
    step: braid::store::StepRecord,
}

impl CommitBaseline {
    async fn new(url: &str) -> CommitBaseline {
        use sqlx::Connection;
        let mut connection = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query("CREATE TABLE bench_smallest (id bigserial PRIMARY KEY, v int)")
            .execute(&mut connection)
            .await
            .unwrap();
        sqlx::query("CREATE TABLE bench_documents (id uuid PRIMARY KEY, input text COMPRESSION lz4, output text COMPRESSION lz4)")
            .execute(&mut connection)
            .await
            .unwrap();
        let documents: (String, String) = sqlx::query_as(
            "SELECT input, output FROM step_executions WHERE agent_name = 'price-order' AND output IS NOT NULL LIMIT 1",
        )
        .fetch_one(&mut connection)
        .await
        .unwrap();
        let (store, fence, step) = recorded_chain_step(url, &documents).await;
        let mut baseline = CommitBaseline { connection, documents, store, fence, step };
        for row in [Row::Smallest, Row::Documents] {
            baseline.commits(row).await; // statements prepared, pages touched
        }
        baseline.recorded_steps().await;
        baseline
    }

    /// `CHAIN` step rows committed through the recorder, each waited for before the next is
    /// queued (as the chain does): their total time.
    async fn recorded_steps(&self) -> Duration {
        let started = Instant::now();
        for _ in 0..CHAIN {
            let mut step = self.step.clone();
            step.id = Uuid::now_v7();
            let details = braid::store::StepDetails::default();
            self.store.recorder().new_step(step, details, &self.fence).committed().await.unwrap();
        }
        started.elapsed()
    }

    /// `CHAIN` commits of `row`, one after another: their total time.
    async fn commits(&mut self, row: Row) -> Duration {
        let started = Instant::now();
        for _ in 0..CHAIN {
            let insert = match row {
                Row::Smallest => sqlx::query("INSERT INTO bench_smallest (v) VALUES (1)"),
                Row::Documents => sqlx::query("INSERT INTO bench_documents (id, input, output) VALUES ($1, $2, $3)")
                    .bind(Uuid::now_v7())
                    .bind(&self.documents.0)
                    .bind(&self.documents.1),
            };
            insert.execute(&mut self.connection).await.unwrap();
        }
        started.elapsed()
    }
}

/// A store on `url`, a running run of its own (accepted as `braid run` accepts one) with
/// its fence, and a finished step row of the chain's shape holding `documents`.
async fn recorded_chain_step(
    url: &str,
    documents: &(String, String),
) -> (Store, braid::store::Fence, braid::store::StepRecord) {
    use braid::json::JsonDoc;
    use braid::store::{RunRecord, StepRecord, StepStatus};
    let store = Store::open(url).await.unwrap();
    let now = chrono::Utc::now();
    let run = RunRecord {
        id: Uuid::now_v7(),
        workflow_name: "commit-baseline".into(),
        workflow_version: "1".into(),
        status: RunStatus::Running,
        input: Some(JsonDoc::parse(&documents.0, "input").unwrap()),
        output: None,
        error: None,
        created_at: now,
        started_at: Some(now),
        finished_at: None,
        workflow_digest: None,
        pinned_agents: None,
        owner_host_id: Some("bench".into()),
        epoch: 1,
        redrive_count: 0,
    };
    let fence = braid::store::Fence::new(run.epoch);
    store.recorder().run(run.clone(), Some(Duration::from_secs(3600)), None).committed().await.unwrap();
    let mut step = StepRecord::new(run.id, "s0", "agent", StepStatus::Succeeded);
    step.agent_name = Some("price-order".into());
    step.agent_digest = Some(format!("sha256:{}", "0".repeat(64)));
    step.outcome = Some("succeeded".into());
    step.input = Some(JsonDoc::parse(&documents.0, "input").unwrap());
    step.output = Some(JsonDoc::parse(&documents.1, "output").unwrap());
    step.started_at = Some(now);
    step.finished_at = Some(now);
    step.instantiate_us = Some(14);
    step.execute_us = Some(21);
    step.memory_peak_bytes = Some(1_114_112);
    step.step_key = Some("s0".into());
    step.queued_us = Some(0);
    step.host_id = Some("bench".into());
    (store, fence, step)
}

/// The same allocator as the `braid` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // As the `braid` binary does.
    braid::cli::allow_transparent_huge_pages(false);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let sandbox = Arc::new(Sandbox::new(SandboxConfig::default()).unwrap());
    let fan = plan(&sandbox, fan_out());
    let chain = plan(&sandbox, chain());
    let map = plan(&sandbox, map_items());

    let admin = std::env::var("BRAID_BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let database = format!("braid_bench_{}", Uuid::now_v7().simple());
    let postgres_url = format!("{}/{database}", admin.rsplit_once('/').unwrap().0);
    let scratch = std::env::temp_dir().join(format!("braid-bench-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&scratch).unwrap();
    let sqlite_url = format!("sqlite://{}", scratch.join("braid.db").display());

    let (sandbox_rate, postgres, sqlite, by_language, users) = runtime.block_on(async {
        use sqlx::Connection;
        let mut admin_connection = sqlx::PgConnection::connect(&admin).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {database}")).execute(&mut admin_connection).await.unwrap();
        let sandbox_rate = sandbox_only(&sandbox, &fan).await;
        let postgres = measure(&sandbox, &postgres_url, &fan, &chain, &map).await;
        let sqlite = measure(&sandbox, &sqlite_url, &fan, &chain, &map).await;
        let by_language = languages(&sandbox, &postgres_url).await;
        let users = through_braid_run(&postgres_url).await;
        sqlx::query(&format!("DROP DATABASE {database} WITH (FORCE)")).execute(&mut admin_connection).await.unwrap();
        (sandbox_rate, postgres, sqlite, by_language, users)
    });
    std::fs::remove_dir_all(&scratch).ok();

    println!(
        "fan-out: {BRANCHES} branches of `echo`, max_parallelism {IN_FLIGHT}; chain: {CHAIN} sequential steps (median of {CHAIN_RUNS})\n"
    );
    println!(
        "| setup | recorded branches/s | vs sandbox-only | 10,000-item map, items/s | 40-step chain, median | best |"
    );
    println!("|---|---|---|---|---|---|");
    println!("| sandbox only (no workflow, no records) | {sandbox_rate:.0} | 1.00× | | | |");
    for (name, f) in [("Postgres", &postgres), ("SQLite (WAL, synchronous=NORMAL)", &sqlite)] {
        println!(
            "| {name} | {:.0} | {:.2}× | {:.0} | {:.1} ms | {:.1} ms |",
            f.branches_per_second,
            f.branches_per_second / sandbox_rate,
            f.map_items_per_second,
            f.chain_median.as_secs_f64() * 1e3,
            f.chain_best.as_secs_f64() * 1e3
        );
    }
    println!(
        "\n{LANGUAGE_BRANCHES} branches of a word count, max_parallelism {IN_FLIGHT}, recorded in Postgres (best of two)\n"
    );
    println!("| agent | recorded branches/s |");
    println!("|---|---|");
    for (label, rate) in by_language {
        println!("| {label} | {rate:.0} |");
    }
    println!(
        "\nThe realistic agent (`price-order`, built with plain `cargo build --release`) through `braid run` on Postgres, \
         timed from the run's recorded start to its finish\n"
    );
    let ms = |duration: Duration| duration.as_secs_f64() * 1e3;
    println!("| workflow | figure | baseline (same run) |");
    println!("|---|---|---|");
    println!(
        "| {USERS_BRANCHES}-branch fan-out, max_parallelism {IN_FLIGHT} (best of {USERS_FAN_RUNS}; median) | {:.0} recorded branches/s ({:.0}) | |",
        users.fan_best, users.fan_median
    );
    println!(
        "| {CHAIN}-step chain (median of {CHAIN_RUNS}; best) | {:.1} ms ({:.1} ms) | right after each run, {CHAIN} commits one after another (medians): of the smallest row {:.1} ms, of a step's input and output {:.1} ms, of the chain's step rows through Braid's recorder {:.1} ms; the chain is {:.2}×, {:.2}× and {:.2}× those (medians of the per-run ratios) |",
        ms(users.chain_median),
        ms(users.chain_best),
        ms(users.smallest_commits),
        ms(users.document_commits),
        ms(users.recorded_commits),
        users.over_smallest,
        users.over_documents,
        users.over_recorded
    );
}
