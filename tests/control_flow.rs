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
        assert_eq!(rows(&steps, "maybe")[0].output, Some(json!({ "words": 2, "lines": 1, "chars": 3 })));
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
        assert_eq!(attempts[2].output, Some(json!({ "attempt": 3 })));
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
