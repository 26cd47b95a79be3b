//! Outbound HTTP from an agent: the `fetch-json` example agent GETting a small JSON answer
//! from a server on 127.0.0.1, through `Sandbox::execute` with the step's grant, next to a
//! native `reqwest` GET of the same URL in the same run. Prints a Markdown table for the
//! README.
//!
//! The added latency per request is measured inside steps, so that instantiation and the
//! agent's own work do not count: the median of a step making 11 GETs, less the median of a
//! step making one, over 10, against the median native GET. Then requests/s with 64 steps
//! in flight, 10 GETs each, against 64 native tasks doing the same.
//!
//! Run: `cargo bench -p braid --bench outbound`.

use braid::outbound::{HostPatterns, OutboundConfig};
use braid::sandbox::{ExecutionRequest, Outcome, Sandbox, SandboxConfig, StepContext};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The same allocator as the `braid` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SAMPLES: usize = 400;
const BRANCHES: usize = 64;
const PER_BRANCH: u32 = 10;
const ROUNDS: usize = 5;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

/// A server on its own runtime: `/json` answers a small JSON object.
fn serve() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        runtime.block_on(async move {
            let app = axum::Router::new().route(
                "/json",
                axum::routing::get(|| async { axum::Json(json!({ "answer": 42, "text": "a small answer" })) }),
            );
            axum::serve(tokio::net::TcpListener::from_std(listener).unwrap(), app).await.unwrap();
        });
    });
    origin
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let origin = serve();
    let url = format!("{origin}/json");
    let config = SandboxConfig {
        outbound: OutboundConfig { allow_private_network: true, max_requests: 1000, ..OutboundConfig::default() },
        ..SandboxConfig::default()
    };
    let sandbox = Arc::new(Sandbox::new(config).unwrap());
    let agent = Arc::new(sandbox.load(&braid_test_artifacts::agent_bytes("fetch_json")).unwrap());
    let grants = Arc::new(HostPatterns::parse(&[origin.as_str()]).unwrap());
    let step = |repeat: u32| {
        let (sandbox, agent, grants, url) = (sandbox.clone(), agent.clone(), grants.clone(), url.clone());
        async move {
            let input = json!({ "url": url, "field": "/answer", "repeat": repeat }).to_string();
            let mut request = ExecutionRequest::new(StepContext::default(), input);
            request.allowed_hosts = grants;
            let started = Instant::now();
            let execution = sandbox.execute(&agent, request).await.unwrap();
            assert_eq!(execution.outcome, Outcome::Succeeded, "{:?}", execution.error);
            assert_eq!(execution.http_calls.len(), repeat as usize);
            started.elapsed()
        }
    };
    let client = reqwest::Client::new();
    let native = |client: reqwest::Client, url: String| async move {
        let started = Instant::now();
        let body: serde_json::Value = client.get(&url).send().await.unwrap().json().await.unwrap();
        assert_eq!(body["answer"], 42);
        started.elapsed()
    };

    runtime.block_on(async {
        // Warm both: connections pooled, code paged in.
        for _ in 0..50 {
            step(1).await;
            native(client.clone(), url.clone()).await;
        }
        // Interleaved, so that the machine's drift hits all three alike.
        let (mut one, mut eleven, mut direct) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..SAMPLES {
            one.push(step(1).await);
            eleven.push(step(11).await);
            direct.push(native(client.clone(), url.clone()).await);
        }
        let (one, eleven, direct) = (median(one), median(eleven), median(direct));
        let per_request = eleven.saturating_sub(one) / 10;

        // 64 in flight: steps of 10 GETs against native tasks of 10 GETs, best of rounds.
        let mut step_rate: f64 = 0.0;
        let mut native_rate: f64 = 0.0;
        for _ in 0..ROUNDS {
            let started = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..BRANCHES {
                tasks.spawn(step(PER_BRANCH));
            }
            while tasks.join_next().await.is_some() {}
            step_rate = step_rate.max((BRANCHES as f64 * f64::from(PER_BRANCH)) / started.elapsed().as_secs_f64());

            let started = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..BRANCHES {
                let (client, url) = (client.clone(), url.clone());
                tasks.spawn(async move {
                    for _ in 0..PER_BRANCH {
                        native(client.clone(), url.clone()).await;
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
            native_rate =
                native_rate.max((BRANCHES as f64 * f64::from(PER_BRANCH)) / started.elapsed().as_secs_f64());
        }

        println!("`fetch-json` GETting ~40 bytes of JSON from 127.0.0.1; {SAMPLES} samples each, medians\n");
        println!("| measure | figure | baseline (same run) |");
        println!("|---|---|---|");
        println!("| one step with one GET (instantiate, call, GET, parse) | {:.0} µs | native reqwest GET {:.0} µs |", micros(one), micros(direct));
        println!(
            "| one more GET inside a step ((11 GETs − 1 GET) ÷ 10) | {:.0} µs | native reqwest GET {:.0} µs: **{:+.0} µs added** |",
            micros(per_request),
            micros(direct),
            micros(per_request) - micros(direct)
        );
        println!(
            "| requests/s, {BRANCHES} steps in flight × {PER_BRANCH} GETs (best of {ROUNDS}) | {step_rate:.0} | {native_rate:.0} native ({:.2}×) |",
            step_rate / native_rate
        );
    });
}
