//! The JSON document of a recorded run, as `braid run --output json`, `braid runs show`
//! and `GET /v1/runs/{id}` print it: the run's columns (with `run_id` for its id) and
//! `steps`, step execution rows with their `logs` and `http_calls` — all of them for the CLI, one page with
//! the counts by status and the next page's cursor for the API ([`paged_document`]).

use super::{HttpCallRecord, LogRecord, RunRecord, StepDetails, StepRecord};
use serde_json::{Value, json};
use std::collections::HashMap;
use uuid::Uuid;

/// `{run_id, status, output, error, workflow, ..., steps: [...]}`; each step is its
/// `step_executions` row with its `logs` and `http_calls`.
pub fn run_document(run: &RunRecord, steps: &[StepRecord], details: &StepDetails) -> Value {
    let mut document = run_columns(run);
    document["steps"] = Value::Array(step_documents(steps, details));
    document
}

/// The run's columns with one page of its step executions: `step_counts` (by status),
/// `steps_total`, and `steps_next`, the cursor of the next page (`null` on the last).
pub fn paged_document(
    run: &RunRecord,
    page: &[StepRecord],
    details: &StepDetails,
    counts: &std::collections::BTreeMap<String, i64>,
    next: Option<Uuid>,
) -> Value {
    let mut document = run_document(run, page, details);
    document["step_counts"] = json!(counts);
    document["steps_total"] = json!(counts.values().sum::<i64>());
    document["steps_next"] = json!(next);
    document
}

/// Each step execution row as JSON, with its `logs` and `http_calls`.
pub fn step_documents(steps: &[StepRecord], details: &StepDetails) -> Vec<Value> {
    let mut logs_by_step: HashMap<Uuid, Vec<&LogRecord>> = HashMap::new();
    for log in &details.logs {
        logs_by_step.entry(log.step_execution_id).or_default().push(log);
    }
    let mut calls_by_step: HashMap<Uuid, Vec<&HttpCallRecord>> = HashMap::new();
    for call in &details.http_calls {
        calls_by_step.entry(call.step_execution_id).or_default().push(call);
    }
    steps
        .iter()
        .map(|step| {
            let mut value = serde_json::to_value(step).unwrap_or(Value::Null);
            let lines: Vec<Value> = logs_by_step
                .get(&step.id)
                .map(|lines| {
                    lines
                        .iter()
                        .map(|l| json!({ "seq": l.seq, "level": l.level, "source": l.source, "message": l.message, "logged_at": l.logged_at }))
                        .collect()
                })
                .unwrap_or_default();
            value["logs"] = Value::Array(lines);
            let calls: Vec<Value> = calls_by_step
                .get(&step.id)
                .map(|calls| {
                    calls
                        .iter()
                        .map(|c| {
                            json!({
                                "seq": c.seq, "method": c.method, "scheme": c.scheme, "host": c.host, "port": c.port,
                                "path": c.path, "status": c.status, "error": c.error, "bytes_out": c.bytes_out,
                                "bytes_in": c.bytes_in, "duration_us": c.duration_us, "started_at": c.started_at,
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            value["http_calls"] = Value::Array(calls);
            value
        })
        .collect()
}

/// The run's own columns, `run_id` for its id.
pub fn run_columns(run: &RunRecord) -> Value {
    json!({
        "run_id": run.id,
        "workflow_name": run.workflow_name,
        "workflow_version": run.workflow_version,
        "status": run.status,
        "input": run.input,
        "output": run.output,
        "error": run.error,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "workflow_digest": run.workflow_digest,
        "pinned_agents": run.pinned_agents,
        "owner_host_id": run.owner_host_id,
        "epoch": run.epoch,
        "redrive_count": run.redrive_count,
    })
}
