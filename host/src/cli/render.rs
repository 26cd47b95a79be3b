//! Rendering recorded runs as text: the tree of steps. (The JSON document of a run is
//! [`crate::store::run_document`], shared with the HTTP API.)

use crate::store::{HttpCallRecord, RunRecord, StepRecord};
use std::collections::HashMap;
use uuid::Uuid;

/// The run as a tree of steps with status, outcome and duration (and each agent step's
/// outbound HTTP requests), then its output or error. Where steps ran: one line for the
/// run when one host ran them all, otherwise on each agent step.
pub fn run_text(run: &RunRecord, steps: &[StepRecord], calls: &[HttpCallRecord]) -> String {
    let mut children: HashMap<Option<Uuid>, Vec<&StepRecord>> = HashMap::new();
    for step in steps {
        children.entry(step.parent_step_id).or_default().push(step);
    }
    let mut calls_of: HashMap<Uuid, Vec<&HttpCallRecord>> = HashMap::new();
    for call in calls {
        calls_of.entry(call.step_execution_id).or_default().push(call);
    }
    let hosts: std::collections::BTreeSet<&str> = steps.iter().filter_map(|s| s.host_id.as_deref()).collect();
    let per_step = hosts.len() > 1;
    let on = match (per_step, hosts.first()) {
        (false, Some(host)) => format!("  on {host}"),
        _ => String::new(),
    };
    let mut text = format!(
        "run {}  {}@{}  {}{}{on}\n",
        run.id,
        run.workflow_name,
        run.workflow_version,
        run.status,
        duration(run.started_at, run.finished_at)
    );
    write_children(&mut text, &Tree { children, calls_of, per_step }, None, 1);
    if let Some(output) = &run.output {
        // Pretty-printed from the value: the stored text is compact, fine for machines only.
        text.push_str(&format!("output: {}\n", serde_json::to_string_pretty(output.value()).unwrap_or_default()));
    }
    if let Some(error) = &run.error {
        text.push_str(&format!("error: {error}\n"));
    }
    text
}

/// The steps by parent, and the requests by step.
struct Tree<'a> {
    children: HashMap<Option<Uuid>, Vec<&'a StepRecord>>,
    calls_of: HashMap<Uuid, Vec<&'a HttpCallRecord>>,
    /// Whether each agent step says which host ran it (the run spans several).
    per_step: bool,
}

fn write_children(text: &mut String, tree: &Tree, parent: Option<Uuid>, depth: usize) {
    for step in tree.children.get(&parent).into_iter().flatten() {
        let branch = step.branch_name.as_ref().map(|b| format!("[{b}] ")).unwrap_or_default();
        let item = step.item_index.map(|i| format!("#{i} ")).unwrap_or_default();
        let attempt = if step.attempt > 1 { format!(" (attempt {})", step.attempt) } else { String::new() };
        let on = match (&step.host_id, tree.per_step) {
            (Some(host), true) => format!(" on {host}"),
            _ => String::new(),
        };
        let what = match (&step.agent_name, &step.join_policy) {
            (Some(agent), _) => format!("agent {agent}{on}"),
            (None, Some(policy)) => format!("{} ({policy})", step.step_type),
            _ => step.step_type.clone(),
        };
        let outcome = step.outcome.as_ref().filter(|o| o.as_str() != step.status.as_str()).map(|o| format!(" ({o})"));
        text.push_str(&format!(
            "{}{branch}{item}{}{attempt}  {what}  {}{}{}\n",
            "  ".repeat(depth),
            step.step_id,
            step.status,
            outcome.unwrap_or_default(),
            duration(step.started_at, step.finished_at),
        ));
        if let (Some(error), false) = (&step.error, step.status.as_str() == "succeeded") {
            text.push_str(&format!("{}  error: {error}\n", "  ".repeat(depth)));
        }
        for call in tree.calls_of.get(&step.id).into_iter().flatten() {
            let ended = match (call.status, &call.error) {
                (Some(status), None) => format!("{status}, {} bytes in", call.bytes_in),
                (Some(status), Some(error)) => format!("{status}, then {error}"),
                (None, Some(error)) => error.clone(),
                (None, None) => "no response".to_owned(),
            };
            text.push_str(&format!(
                "{}  http {} {}://{}:{}{} → {ended}  {:.1} ms\n",
                "  ".repeat(depth),
                call.method,
                call.scheme,
                call.host,
                call.port,
                call.path,
                call.duration_us as f64 / 1000.0
            ));
        }
        write_children(text, tree, Some(step.id), depth + 1);
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
