//! The JSON document of a recorded run, as `braid run --output json`, `braid runs show`
//! and `GET /v1/runs/{id}` print it: the run's columns (with `run_id` for its id) and
//! `steps`, every step execution row with its `logs`.

use super::{LogRecord, RunRecord, StepRecord};
use serde_json::{Value, json};
use std::collections::HashMap;
use uuid::Uuid;

/// `{run_id, status, output, error, workflow, ..., steps: [...]}`; each step is its
/// `step_executions` row with its `logs`.
pub fn run_document(run: &RunRecord, steps: &[StepRecord], logs: &[LogRecord]) -> Value {
    let mut logs_by_step: HashMap<Uuid, Vec<&LogRecord>> = HashMap::new();
    for log in logs {
        logs_by_step.entry(log.step_execution_id).or_default().push(log);
    }
    let steps: Vec<Value> = steps
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
            value
        })
        .collect();
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
        "steps": steps,
    })
}
