//! Control flow and resilience end to end, on SQLite and on Postgres: `if`, retries with
//! backoff (each attempt its own row), and input schemas.

mod common;

use braid::store::{RunStatus, StepStatus, Store};
use common::{TestDb, plan, rows, run as run_workflow};
use serde_json::json;

async fn open(db: &TestDb) -> Store {
    Store::open(&db.url).await.unwrap_or_else(|e| panic!("{}: {e}", db.kind))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_false_condition_skips_the_step_and_later_references_see_null() {
    for db in TestDb::both().await {
        let store = open(&db).await;
        let definition = json!({ "name": "conditional", "version": "1", "steps": [
            { "id": "maybe", "if": "input.go", "agent": "word-count", "input": { "text": "${ input.text }" } },
            { "id": "wrapped", "if": "${ !input.go }", "agent": "shout", "input": { "text": "${ input.text }" } },
            { "id": "after", "agent": "misbehave", "input": { "action": "ok", "maybe": "${ steps.maybe.output }", "status": "${ steps.maybe.status }" } } ] });
        let (run, steps) = run_workflow(&store, &definition, json!({ "go": false, "text": "a b" })).await;
        assert_eq!(run.status, RunStatus::Succeeded, "{}: {:?}", db.kind, run.error);
        let maybe = &rows(&steps, "maybe")[0];
        assert_eq!(maybe.status, StepStatus::Skipped);
        assert_eq!(maybe.outcome, None);
        assert_eq!(rows(&steps, "wrapped")[0].status, StepStatus::Succeeded);
        let seen = rows(&steps, "after")[0].output.clone().unwrap();
        assert_eq!(seen["input"]["maybe"], json!(null));
        assert_eq!(seen["input"]["status"], "skipped");

        let (run, steps) = run_workflow(&store, &definition, json!({ "go": true, "text": "a b" })).await;
        assert_eq!(run.status, RunStatus::Succeeded);
        assert_eq!(rows(&steps, "maybe")[0].output.as_deref(), Some(&json!({ "words": 2, "lines": 1, "chars": 3 })));
        assert_eq!(rows(&steps, "wrapped")[0].status, StepStatus::Skipped);

        // A condition that is not a boolean fails the step, with the reason.
        let (run, steps) = run_workflow(&store, &definition, json!({ "go": "yes", "text": "a" })).await;
        assert_eq!(run.status, RunStatus::Failed);
        assert!(rows(&steps, "maybe")[0].error.as_ref().unwrap().contains("not true or false"));
        store.close().await.unwrap();
        db.drop_database().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_failures_are_retried_with_backoff_each_attempt_its_own_row() {
    for db in TestDb::both().await {
        let store = open(&db).await;
        let flaky = |succeed_on: u64, retry: serde_json::Value| {
            json!({ "name": "retries", "version": "1", "steps": [
                { "id": "flaky", "agent": "misbehave", "input": { "action": "flaky", "succeed_on": succeed_on }, "retry": retry } ] })
        };
        let policy = json!({ "max_attempts": 4, "initial_backoff_ms": 20, "max_backoff_ms": 100, "jitter": true });
        let (run, steps) = run_workflow(&store, &flaky(3, policy.clone()), json!({})).await;
        assert_eq!(run.status, RunStatus::Succeeded, "{}: {:?}", db.kind, run.error);
        let attempts = rows(&steps, "flaky");
        let seen: Vec<_> = attempts.iter().map(|r| (r.attempt, r.status, r.outcome.clone())).collect();
        assert_eq!(
            seen,
            [
                (1, StepStatus::Failed, Some("guest_error".to_owned())),
                (2, StepStatus::Failed, Some("guest_error".to_owned())),
                (3, StepStatus::Succeeded, Some("succeeded".to_owned())),
            ],
            "{}",
            db.kind
        );
        // The agent saw its attempt number; the attempts were spaced by the backoff.
        assert_eq!(attempts[2].output.as_deref(), Some(&json!({ "attempt": 3 })));
        assert!(attempts[1].started_at.unwrap() >= attempts[0].finished_at.unwrap());

        // Out of attempts: the step fails with the last attempt's error.
        let (run, steps) =
            run_workflow(&store, &flaky(10, json!({ "max_attempts": 2, "initial_backoff_ms": 1 })), json!({})).await;
        assert_eq!(run.status, RunStatus::Failed);
        assert_eq!(rows(&steps, "flaky").len(), 2);

        // Never retried: a non-retryable guest error, and invalid output.
        for action in [json!({ "action": "error", "retryable": false }), json!({ "action": "not_json" })] {
            let definition = json!({ "name": "no-retry", "version": "1", "steps": [
                { "id": "once", "agent": "misbehave", "input": action, "retry": policy } ] });
            let (_, steps) = run_workflow(&store, &definition, json!({})).await;
            assert_eq!(rows(&steps, "once").len(), 1, "{}: {action}", db.kind);
        }
        // Retried: a timeout (workflow-level default policy).
        let definition = json!({ "name": "timeouts", "version": "1", "retry": { "max_attempts": 2, "initial_backoff_ms": 1 },
            "steps": [ { "id": "slow", "agent": "misbehave", "input": { "action": "loop" }, "timeout_ms": 100 } ] });
        let (_, steps) = run_workflow(&store, &definition, json!({})).await;
        let outcomes: Vec<_> = rows(&steps, "slow").iter().map(|r| r.outcome.clone().unwrap()).collect();
        assert_eq!(outcomes, ["timeout", "timeout"], "{}", db.kind);
        store.close().await.unwrap();
        db.drop_database().await;
    }
}

#[test]
fn an_input_that_does_not_match_the_schema_is_refused_naming_the_field() {
    let definition = json!({ "name": "typed", "version": "1",
        "input_schema": { "type": "object", "required": ["text"], "properties": { "text": { "type": "string" }, "n": { "type": "integer", "minimum": 1 } } },
        "steps": [ { "id": "count", "agent": "word-count", "input": { "text": "${ input.text }" } } ] });
    let plan = plan(&definition);
    assert!(plan.workflow.check_input(&json!({ "text": "fine", "n": 2 })).is_ok());
    let refused = plan.workflow.check_input(&json!({ "text": 5, "n": 0 })).unwrap_err();
    let problems = refused.problems.join("\n");
    assert!(problems.contains("input/text") && problems.contains("input/n"), "{problems}");
    let missing = plan.workflow.check_input(&json!({})).unwrap_err();
    assert!(missing.problems[0].contains("\"text\" is a required property"), "{:?}", missing.problems);

    let broken = braid::workflow::parse(&json!({ "name": "x", "version": "1", "input_schema": { "type": 12 }, "steps": [ { "id": "a", "agent": "w" } ] }).to_string());
    assert!(broken.unwrap_err().problems[0].path == "input_schema");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_runs_one_instance_per_item_in_order_under_its_bound() {
    for db in TestDb::both().await {
        let store = open(&db).await;
        let definition = json!({ "name": "mapped", "version": "1", "steps": [
            { "id": "m", "type": "map", "items": "${ input.docs }", "max_parallelism": 2,
              "step": { "agent": "misbehave", "input": { "action": "sleep", "ms": "${ item.ms }", "n": "${ index }" } } },
            { "id": "after", "agent": "misbehave", "input": { "action": "ok", "all": "${ steps.m.output }" } } ] });
        let docs: Vec<_> = [120, 40, 80, 10, 60].iter().map(|ms| json!({ "ms": ms })).collect();
        let (run, steps) = run_workflow(&store, &definition, json!({ "docs": docs })).await;
        assert_eq!(run.status, RunStatus::Succeeded, "{}: {:?}", db.kind, run.error);
        let map_row = &rows(&steps, "m")[0];
        assert_eq!(map_row.step_type, "map");
        // Output in item order, whatever order the items finished in.
        let expected: Vec<_> = [120, 40, 80, 10, 60].iter().map(|ms| json!({ "slept_ms": ms })).collect();
        assert_eq!(map_row.output.as_deref(), Some(&json!(expected)));
        let items = rows(&steps, "m_item");
        let mut indexes: Vec<_> = items.iter().map(|r| r.item_index.unwrap()).collect();
        indexes.sort();
        assert_eq!(indexes, [0, 1, 2, 3, 4]);
        assert!(items.iter().all(|r| r.parent_step_id == Some(map_row.id)));
        assert!(common::peak_overlap(&items) <= 2, "{}", db.kind);
        assert_eq!(rows(&steps, "after")[0].input.as_ref().unwrap()["all"], json!(expected));

        // An empty list is an empty output.
        let (run, steps) = run_workflow(&store, &definition, json!({ "docs": [] })).await;
        assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
        assert_eq!(rows(&steps, "m")[0].output.as_deref(), Some(&json!([])));

        // A tolerated failure leaves null in its place.
        let tolerant = json!({ "name": "mapped", "version": "2", "steps": [
            { "id": "m", "type": "map", "items": "${ input.actions }", "tolerated_failures": 1,
              "step": { "steps": [ { "id": "each", "agent": "misbehave", "input": { "action": "${ item }" } } ] } } ] });
        let (run, steps) = run_workflow(&store, &tolerant, json!({ "actions": ["spin", "error", "spin"] })).await;
        assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
        let output = rows(&steps, "m")[0].output.clone().unwrap();
        assert_eq!(output[1], json!(null));
        assert!(output[0]["sum"].is_number() && output[2]["sum"].is_number());
        store.close().await.unwrap();
        db.drop_database().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10000_item_map_runs_with_every_item_recorded() {
    let db = TestDb::postgres().await;
    let store = open(&db).await;
    let definition = json!({ "name": "wide", "version": "1", "steps": [
        { "id": "wide", "type": "map", "items": "${ input.items }", "max_parallelism": 64,
          "step": { "agent": "echo", "input": { "n": "${ item }" } } } ] });
    let items: Vec<u32> = (0..10_000).collect();
    let started = std::time::Instant::now();
    let (run, steps) = run_workflow(&store, &definition, json!({ "items": items })).await;
    let elapsed = started.elapsed();
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    assert_eq!(steps.len(), 10_001, "every item and the map are recorded");
    let output = rows(&steps, "wide")[0].output.clone().unwrap();
    assert_eq!(output.as_array().unwrap().len(), 10_000);
    assert_eq!(output[9_999], json!({ "n": 9_999 }));
    assert!(elapsed < std::time::Duration::from_secs(30), "took {elapsed:?}");
    store.close().await.unwrap();
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_runs_the_first_matching_case_and_records_which() {
    for db in TestDb::both().await {
        let store = open(&db).await;
        let definition = json!({ "name": "decide", "version": "1", "steps": [
            { "id": "s", "type": "switch", "cases": [
                { "when": "input.n > 10", "steps": [ { "id": "big", "agent": "shout", "input": { "text": "big" } } ] },
                { "when": "input.n > 5", "steps": [ { "id": "medium", "agent": "shout", "input": { "text": "medium" } } ] } ],
              "default": [ { "id": "small", "agent": "shout", "input": { "text": "small" } } ] },
            { "id": "after", "agent": "misbehave", "input": { "action": "ok", "case": "${ steps.s.case }", "out": "${ steps.s.output }" } } ] });
        for (n, case, text) in [(20, "cases[0]", "BIG"), (7, "cases[1]", "MEDIUM"), (1, "default", "SMALL")] {
            let (run, steps) = run_workflow(&store, &definition, json!({ "n": n })).await;
            assert_eq!(run.status, RunStatus::Succeeded, "{}: {:?}", db.kind, run.error);
            let switch_row = &rows(&steps, "s")[0];
            assert_eq!(switch_row.step_type, "switch");
            assert_eq!(switch_row.input.as_deref(), Some(&json!({ "case": case })));
            assert_eq!(switch_row.output.as_deref(), Some(&json!({ "text": text })));
            let after = rows(&steps, "after")[0].input.clone().unwrap();
            assert_eq!(after["case"], case);
            assert_eq!(
                steps.iter().filter(|r| r.parent_step_id == Some(switch_row.id)).count(),
                1,
                "only one case ran"
            );
        }
        store.close().await.unwrap();
        db.drop_database().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loops_run_until_the_condition_holds_or_fail_at_max_iterations() {
    for db in TestDb::both().await {
        let store = open(&db).await;
        let looping = |until: &str, on_max: &str| {
            json!({ "name": "looping", "version": "1", "steps": [
                { "id": "l", "type": "loop", "until": until, "max_iterations": 5, "on_max_iterations": on_max,
                  "steps": [ { "id": "count", "agent": "misbehave", "input": { "action": "ok", "round": "${ iteration }" } } ] } ] })
        };
        let (run, steps) =
            run_workflow(&store, &looping("steps.count.output.input.round >= 2", "fail"), json!({})).await;
        assert_eq!(run.status, RunStatus::Succeeded, "{}: {:?}", db.kind, run.error);
        let rounds: Vec<_> = rows(&steps, "count").iter().map(|r| r.item_index.unwrap()).collect();
        assert_eq!(rounds, [0, 1, 2], "each iteration's rows carry the iteration");
        assert_eq!(rows(&steps, "l")[0].output.as_ref().unwrap()["input"]["round"], 2);

        let (run, steps) = run_workflow(&store, &looping("false", "fail"), json!({})).await;
        assert_eq!(run.status, RunStatus::Failed);
        assert_eq!(rows(&steps, "count").len(), 5);
        assert!(rows(&steps, "l")[0].error.as_ref().unwrap().contains("max_iterations"));

        let (run, _) = run_workflow(&store, &looping("false", "succeed"), json!({})).await;
        assert_eq!(run.status, RunStatus::Succeeded);
        store.close().await.unwrap();
        db.drop_database().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_and_run_deadlines_interrupt_what_runs_and_say_they_timed_out() {
    for db in TestDb::both().await {
        let store = open(&db).await;
        let sleeper =
            |name: &str| json!({ "name": name, "agent": "misbehave", "input": { "action": "sleep", "ms": 30_000 } });
        let block = json!({ "name": "deadlines", "version": "1", "steps": [
            { "id": "fan", "type": "parallel", "timeout_ms": 300, "branches": [ sleeper("a"), sleeper("b") ] } ] });
        let started = std::time::Instant::now();
        let (run, steps) = run_workflow(&store, &block, json!({})).await;
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
        assert_eq!(run.status, RunStatus::Failed);
        let fan = &rows(&steps, "fan")[0];
        assert_eq!(fan.status, StepStatus::Failed);
        assert_eq!(fan.error.as_deref(), Some("timed out after 300 ms"), "{}", db.kind);
        assert_eq!(rows(&steps, "a")[0].status, StepStatus::Cancelled);

        let whole = json!({ "name": "deadlines", "version": "2", "timeout_ms": 300, "steps": [
            { "id": "slow", "agent": "misbehave", "input": { "action": "loop" }, "timeout_ms": 60_000 } ] });
        let started = std::time::Instant::now();
        let (run, steps) = run_workflow(&store, &whole, json!({})).await;
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(run.status, RunStatus::Failed);
        assert_eq!(run.error.as_deref(), Some("the run timed out after 300 ms"));
        assert_eq!(rows(&steps, "slow")[0].outcome.as_deref(), Some("cancelled"));
        store.close().await.unwrap();
        db.drop_database().await;
    }
}
