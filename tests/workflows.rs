//! Workflows end to end, on SQLite and on a real Postgres: parallel branches each in their
//! own instance under `max_parallelism`, outputs gathered for later steps, every join
//! policy with real cancellation, partial results, and every row recorded.

mod common;

use braid::store::{RunStatus, StepStatus, Store};
use chrono::Duration;
use common::{TestDb, peak_overlap, row, rows, run as run_workflow};
use serde_json::{Value, json};

fn sleep_branch(name: &str, ms: u64) -> Value {
    json!({ "name": name, "agent": "misbehave", "input": { "action": "sleep", "ms": ms, "branch": name } })
}

fn failing_branch(name: &str) -> Value {
    json!({ "name": name, "agent": "misbehave", "input": { "action": "error", "message": format!("{name} broke") } })
}

/// A branch that fails after `ms`, so that its siblings are surely running by then.
fn failing_after(name: &str, ms: u64) -> Value {
    json!({ "name": name, "steps": [
        { "id": format!("{name}_wait"), "agent": "misbehave", "input": { "action": "sleep", "ms": ms } },
        { "id": name, "agent": "misbehave", "input": { "action": "error", "message": format!("{name} broke") } } ] })
}

fn block(policy: Value, max_parallelism: u32, tolerated: u32, branches: Vec<Value>) -> Value {
    json!({ "name": "blocks", "version": "1", "steps": [
        { "id": "fan", "type": "parallel", "max_parallelism": max_parallelism, "join_policy": policy,
          "tolerated_failures": tolerated, "branches": branches },
        { "id": "after", "agent": "misbehave", "input": { "action": "ok", "seen": "${ steps.fan.output }" } } ] })
}

async fn open(db: &TestDb) -> Store {
    Store::open(&db.url).await.unwrap_or_else(|e| panic!("{}: {e}", db.kind))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branches_run_concurrently_never_beyond_max_parallelism() {
    for db in TestDb::both().await {
        let store = open(&db).await;
        let branches = (0..6).map(|i| sleep_branch(&format!("b{i}"), 150)).collect();
        let (run, steps) = run_workflow(&store, &block(json!("all"), 2, 0, branches), json!({})).await;
        assert_eq!(run.status, RunStatus::Succeeded, "{}: {run:#?}", db.kind);

        let fan = row(&steps, "fan");
        let branch_rows: Vec<_> = steps.iter().filter(|s| s.parent_step_id == Some(fan.id)).collect();
        assert_eq!(branch_rows.len(), 6);
        // From the recorded times: exactly two at once, never three.
        assert_eq!(peak_overlap(&branch_rows), 2, "{}", db.kind);
        let block_time = fan.finished_at.unwrap() - fan.started_at.unwrap();
        assert!(block_time >= Duration::milliseconds(450), "{}: {block_time}", db.kind);
        for branch in &branch_rows {
            assert_eq!(branch.step_type, "agent");
            assert_eq!(branch.outcome.as_deref(), Some("succeeded"));
            assert_eq!(branch.branch_name.as_deref(), Some(branch.step_id.as_str()));
            assert!(branch.agent_digest.as_ref().is_some_and(|d| d.len() == 64));
        }
        assert_eq!(fan.step_type, "parallel");
        assert_eq!(fan.join_policy.as_deref(), Some("all"));
        store.close().await.unwrap();
        db.drop_database().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_branch_starts_at_once_up_to_the_bound() {
    for db in TestDb::both().await {
        let store = open(&db).await;
        let branches = (0..4).map(|i| sleep_branch(&format!("b{i}"), 300)).collect();
        let (run, steps) = run_workflow(&store, &block(json!("all"), 4, 0, branches), json!({})).await;
        assert_eq!(run.status, RunStatus::Succeeded);
        let fan = row(&steps, "fan");
        let branch_rows: Vec<_> = steps.iter().filter(|s| s.parent_step_id == Some(fan.id)).collect();
        assert_eq!(peak_overlap(&branch_rows), 4, "{}", db.kind);
        let first = branch_rows.iter().map(|r| r.started_at.unwrap()).min().unwrap();
        let last = branch_rows.iter().map(|r| r.started_at.unwrap()).max().unwrap();
        assert!(last - first < Duration::milliseconds(100), "{}: starts spread over {}", db.kind, last - first);
        // Independent steps run concurrently: four 300 ms sleeps take well under 1.2 s.
        assert!(fan.finished_at.unwrap() - fan.started_at.unwrap() < Duration::milliseconds(800));
        store.close().await.unwrap();
        db.drop_database().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_branches_are_collected_before_the_next_step_which_sees_their_outputs() {
    for db in TestDb::both().await {
        let store = open(&db).await;
        let branches = vec![sleep_branch("slow", 200), sleep_branch("quick", 10)];
        let (run, steps) = run_workflow(&store, &block(json!("all"), 2, 0, branches), json!({})).await;
        assert_eq!(run.status, RunStatus::Succeeded);
        let after = row(&steps, "after");
        for branch in ["slow", "quick"] {
            assert!(after.started_at.unwrap() >= row(&steps, branch).finished_at.unwrap(), "{}", db.kind);
        }
        assert!(after.started_at.unwrap() >= row(&steps, "fan").finished_at.unwrap());
        // The aggregated output, keyed by branch name, reached the next step.
        let seen = &after.input.as_ref().unwrap()["seen"];
        assert_eq!(seen["slow"], json!({ "slept_ms": 200 }), "{}: {seen}", db.kind);
        assert_eq!(seen["quick"], json!({ "slept_ms": 10 }));
        assert_eq!(row(&steps, "fan").output.as_ref().unwrap(), seen);
        store.close().await.unwrap();
        db.drop_database().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_all_waits_for_every_branch_even_when_one_fails_and_keeps_partial_results() {
    for db in TestDb::both().await {
        let store = open(&db).await;
        let branches = || vec![failing_branch("broken"), sleep_branch("slow", 200), sleep_branch("quick", 10)];

        // Nothing tolerated: the block fails, but only after every branch finished, and the
        // succeeded branches' outputs are kept.
        let (run, steps) = run_workflow(&store, &block(json!("all"), 3, 0, branches()), json!({})).await;
        assert_eq!(run.status, RunStatus::Failed, "{}", db.kind);
        let fan = row(&steps, "fan");
        assert_eq!(fan.status, StepStatus::Failed);
        assert_eq!(row(&steps, "slow").status, StepStatus::Succeeded, "the slow branch was not cut short");
        assert!(fan.finished_at.unwrap() >= row(&steps, "slow").finished_at.unwrap());
        assert_eq!(fan.output.as_deref(), Some(&json!({ "slow": { "slept_ms": 200 }, "quick": { "slept_ms": 10 } })));
        assert!(fan.error.as_ref().unwrap().contains("broken broke"), "{:?}", fan.error);
        assert!(rows(&steps, "after").is_empty(), "nothing runs after a failed block");
        assert!(run.error.unwrap().contains("fan"));

        // One failure tolerated: the block succeeds with the partial results, and the
        // failed branch's status and error are reachable by later steps.
        let mut tolerant = block(json!("all"), 3, 1, branches());
        tolerant["steps"][1]["input"]["why"] = json!("${ steps.fan.branches.broken.error }");
        tolerant["steps"][1]["input"]["state"] = json!("${ steps.fan.branches.broken.status }");
        let (run, steps) = run_workflow(&store, &tolerant, json!({})).await;
        assert_eq!(run.status, RunStatus::Succeeded, "{}: {:?}", db.kind, run.error);
        let after_input = row(&steps, "after").input.clone().unwrap();
        assert_eq!(after_input["seen"], json!({ "slow": { "slept_ms": 200 }, "quick": { "slept_ms": 10 } }));
        assert_eq!(after_input["state"], "failed");
        assert!(after_input["why"].as_str().unwrap().contains("broken broke"));
        assert_eq!(row(&steps, "broken").outcome.as_deref(), Some("guest_error"));
        store.close().await.unwrap();
        db.drop_database().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_fast_cancels_the_running_branches() {
    for db in TestDb::both().await {
        let store = open(&db).await;
        let branches = vec![sleep_branch("long", 30_000), failing_after("broken", 200), sleep_branch("never", 10)];
        let started = std::time::Instant::now();
        let (run, steps) = run_workflow(&store, &block(json!("fail_fast"), 2, 0, branches), json!({})).await;
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "cancellation was not prompt");
        assert_eq!(run.status, RunStatus::Failed);
        let long = row(&steps, "long");
        assert_eq!(long.status, StepStatus::Cancelled, "{}", db.kind);
        assert_eq!(long.outcome.as_deref(), Some("cancelled"));
        // The third branch never started: recorded as cancelled, without an outcome.
        let never = row(&steps, "never");
        assert_eq!(never.status, StepStatus::Cancelled);
        assert_eq!(never.outcome, None);
        assert_eq!(row(&steps, "fan").join_policy.as_deref(), Some("fail_fast"));
        store.close().await.unwrap();
        db.drop_database().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_takes_the_first_success_and_cancels_the_rest() {
    for db in TestDb::both().await {
        let store = open(&db).await;
        // "fast" takes long enough that "slow" is surely running when it wins.
        let branches = vec![failing_branch("broken"), sleep_branch("fast", 300), sleep_branch("slow", 30_000)];
        let (run, steps) = run_workflow(&store, &block(json!("any"), 3, 0, branches), json!({})).await;
        assert_eq!(run.status, RunStatus::Succeeded, "{}: {:?}", db.kind, run.error);
        assert_eq!(row(&steps, "slow").status, StepStatus::Cancelled);
        assert_eq!(row(&steps, "slow").outcome.as_deref(), Some("cancelled"));
        assert_eq!(row(&steps, "fan").output.as_deref(), Some(&json!({ "fast": { "slept_ms": 300 } })));

        let all_fail = vec![failing_branch("a"), failing_branch("b")];
        let (run, _) = run_workflow(&store, &block(json!("any"), 2, 0, all_fail), json!({})).await;
        assert_eq!(run.status, RunStatus::Failed);
        store.close().await.unwrap();
        db.drop_database().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_is_done_at_n_successes_and_fails_once_out_of_reach() {
    for db in TestDb::both().await {
        let store = open(&db).await;
        let branches = vec![sleep_branch("a", 10), sleep_branch("b", 30), sleep_branch("slow", 30_000)];
        let (run, steps) = run_workflow(&store, &block(json!({ "quorum": 2 }), 3, 0, branches), json!({})).await;
        assert_eq!(run.status, RunStatus::Succeeded, "{}: {:?}", db.kind, run.error);
        assert_eq!(row(&steps, "slow").status, StepStatus::Cancelled);
        assert_eq!(row(&steps, "fan").join_policy.as_deref(), Some("quorum:2"));

        let hopeless = vec![failing_branch("x"), failing_branch("y"), sleep_branch("slow", 30_000)];
        let started = std::time::Instant::now();
        let (run, steps) = run_workflow(&store, &block(json!({ "quorum": 2 }), 3, 0, hopeless), json!({})).await;
        assert_eq!(run.status, RunStatus::Failed);
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "the block did not fail early");
        assert_eq!(row(&steps, "slow").status, StepStatus::Cancelled);
        store.close().await.unwrap();
        db.drop_database().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_blocks_and_sequences_inside_branches_are_recorded_under_their_block() {
    for db in TestDb::both().await {
        let store = open(&db).await;
        let definition = json!({ "name": "nested", "version": "1", "steps": [
            { "id": "outer", "type": "parallel", "max_parallelism": 2, "branches": [
                { "name": "seq", "steps": [
                    { "id": "s1", "agent": "digest", "input": { "text": "${ input.text }" } },
                    { "id": "s2", "agent": "shout", "input": { "text": "${ steps.s1.output.hex }" } } ] },
                { "name": "inner", "type": "parallel", "branches": [
                    { "name": "w", "agent": "word-count", "input": { "text": "${ input.text }" } } ] } ] },
            { "id": "last", "agent": "merge", "input": { "parts": { "hex": "${ steps.s2.output.text }", "words": "${ steps.w.output.words }" } } } ],
            "output": "${ steps.last.output.parts }" });
        let (run, steps) = run_workflow(&store, &definition, json!({ "text": "one two" })).await;
        assert_eq!(run.status, RunStatus::Succeeded, "{}: {:?}", db.kind, run.error);
        assert_eq!(run.output.as_deref(), Some(&json!(2)));
        let outer = row(&steps, "outer");
        let inner = row(&steps, "inner");
        assert_eq!(inner.parent_step_id, Some(outer.id));
        assert_eq!(inner.branch_name.as_deref(), Some("inner"));
        assert_eq!(row(&steps, "w").parent_step_id, Some(inner.id));
        assert_eq!(row(&steps, "s2").parent_step_id, Some(outer.id));
        assert_eq!(row(&steps, "s2").branch_name.as_deref(), Some("seq"));
        assert!(row(&steps, "s2").started_at.unwrap() >= row(&steps, "s1").finished_at.unwrap());
        store.close().await.unwrap();
        db.drop_database().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expression_that_fails_at_run_time_fails_its_step_with_the_reason() {
    let db = TestDb::sqlite();
    let store = open(&db).await;
    let definition = json!({ "name": "bad-ref", "version": "1", "steps": [
        { "id": "a", "agent": "word-count", "input": { "text": "${ input.missing }" } } ] });
    let (run, steps) = run_workflow(&store, &definition, json!({ "text": "x" })).await;
    assert_eq!(run.status, RunStatus::Failed);
    let a = row(&steps, "a");
    assert_eq!(a.status, StepStatus::Failed);
    assert_eq!(a.outcome, None, "the agent never ran");
    assert!(
        a.error.as_ref().unwrap().contains("input.text") && a.error.as_ref().unwrap().contains("input.missing"),
        "{:?}",
        a.error
    );
    store.close().await.unwrap();
}
