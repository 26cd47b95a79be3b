//! Rendering recorded runs: the JSON documents of `braid run` / `braid runs show`, and the
//! text tree of steps.

use crate::store::{LogRecord, RunRecord, StepRecord};
use serde_json::{Value, json};
use std::collections::HashMap;
use uuid::Uuid;

/// `{run_id, status, output, error, workflow, ..., steps: [...]}`; each step is its
/// `step_executions` row with its `logs`.
pub fn run_json(run: &RunRecord, steps: &[StepRecord], logs: &[LogRecord]) -> Value {
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
        "steps": steps,
    })
}

/// The run as a tree of steps with status, outcome and duration, then its output or error.
pub fn run_text(run: &RunRecord, steps: &[StepRecord]) -> String {
    let mut children: HashMap<Option<Uuid>, Vec<&StepRecord>> = HashMap::new();
    for step in steps {
        children.entry(step.parent_step_id).or_default().push(step);
    }
    let mut text = format!(
        "run {}  {}@{}  {}{}\n",
        run.id,
        run.workflow_name,
        run.workflow_version,
        run.status,
        duration(run.started_at, run.finished_at)
    );
    write_children(&mut text, &children, None, 1);
    if let Some(output) = &run.output {
        text.push_str(&format!("output: {}\n", serde_json::to_string_pretty(output).unwrap_or_default()));
    }
    if let Some(error) = &run.error {
        text.push_str(&format!("error: {error}\n"));
    }
    text
}

fn write_children(
    text: &mut String,
    children: &HashMap<Option<Uuid>, Vec<&StepRecord>>,
    parent: Option<Uuid>,
    depth: usize,
) {
    for step in children.get(&parent).into_iter().flatten() {
        let branch = step.branch_name.as_ref().map(|b| format!("[{b}] ")).unwrap_or_default();
        let what = match (&step.agent_name, &step.join_policy) {
            (Some(agent), _) => format!("agent {agent}"),
            (None, Some(policy)) => format!("{} ({policy})", step.step_type),
            _ => step.step_type.clone(),
        };
        let outcome = step.outcome.as_ref().filter(|o| o.as_str() != step.status.as_str()).map(|o| format!(" ({o})"));
        text.push_str(&format!(
            "{}{branch}{}  {what}  {}{}{}\n",
            "  ".repeat(depth),
            step.step_id,
            step.status,
            outcome.unwrap_or_default(),
            duration(step.started_at, step.finished_at),
        ));
        if let (Some(error), false) = (&step.error, step.status.as_str() == "succeeded") {
            text.push_str(&format!("{}  error: {error}\n", "  ".repeat(depth)));
        }
        write_children(text, children, Some(step.id), depth + 1);
    }
}

fn duration(started: Option<chrono::DateTime<chrono::Utc>>, finished: Option<chrono::DateTime<chrono::Utc>>) -> String {
    match (started, finished) {
        (Some(started), Some(finished)) => {
            format!("  {:.1} ms", (finished - started).num_microseconds().unwrap_or(0) as f64 / 1000.0)
        }
        _ => String::new(),
    }
}
