//! What each fuzz target checks of one input. Shared: the fuzz targets call these, and
//! `cargo test` (tests/fuzz_corpus.rs) replays the kept corpus through them, so the corpus
//! keeps guarding the parsers on stable Rust, without libFuzzer.
//!
//! Written against `crate::{json, limits, store, workflow}`: the fuzz crate compiles those
//! modules from the host's sources, and the replay test aliases them from the `braid` crate.

use crate::json::JsonDoc;
use crate::limits::{check_json, parse_json, read_stored_json};
use crate::store::{RunRecord, RunStatus, StepRecord, StepStatus, run_document};
use crate::workflow::{Scope, Template};

/// Any text as a workflow definition: parsing and validation answer Ok or a list of
/// problems, never panic, and every problem names a path.
pub fn definition(text: &str) {
    match crate::workflow::check(text, &|agent| agent != "ghost") {
        Ok(workflow) => assert!(!workflow.steps.is_empty()),
        Err(invalid) => {
            assert!(!invalid.problems.is_empty());
            assert!(invalid.problems.iter().all(|p| !p.path.is_empty() && !p.message.is_empty()));
        }
    }
}

/// `"<template JSON>\n<scope JSON>"`: compiling and rendering end with a value or an error,
/// never a panic, and never beyond the cost budget.
pub fn template(data: &str) {
    let (template, scope) = data.split_once('\n').unwrap_or((data, "{}"));
    let template_value =
        serde_json::from_str(template).unwrap_or_else(|_| serde_json::Value::String(template.to_owned()));
    let Ok(compiled) = Template::compile(&template_value) else { return };
    let input = parse_json(scope, "input").unwrap_or(serde_json::Value::Null);
    let started = std::time::Instant::now();
    let _ = compiled.render(&Scope::new(input.into()));
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "a render outran its budget");
}

/// Any text as a stored JSON column: read at any depth, or refused; a stored document
/// (checked without a tree) agrees with the reader, and so does the door's fast check with
/// its precise one; what the door accepts reads back the same; a row holding the value
/// renders into a run document.
pub fn run_document_reader(text: &str) {
    let read = read_stored_json(text);
    let stored = JsonDoc::stored(text.to_owned());
    assert_eq!(stored.is_ok(), read.is_ok(), "the stored-document check and the reader disagree");
    assert_eq!(JsonDoc::parse(text, "value").map(|doc| doc.value().clone()), parse_json(text, "value"));
    let Ok(value) = read else { return };
    assert_eq!(stored.as_ref().map(JsonDoc::value).ok(), Some(&value));
    if check_json(&value, "value").is_ok() {
        assert_eq!(read_stored_json(&value.to_string()).ok().as_ref(), Some(&value));
    }
    let id = uuid::Uuid::nil();
    let now = chrono::Utc::now();
    let run = RunRecord {
        id,
        workflow_name: "fuzz".into(),
        workflow_version: "1".into(),
        status: RunStatus::Succeeded,
        input: Some(value.clone().into()),
        output: Some(value.clone().into()),
        error: None,
        created_at: now,
        started_at: Some(now),
        finished_at: Some(now),
        workflow_digest: None,
        pinned_agents: None,
        owner_host_id: None,
        epoch: 1,
        redrive_count: 0,
    };
    let mut step = StepRecord::new(id, "s", "agent", StepStatus::Succeeded);
    step.input = Some(value.clone().into());
    step.output = Some(value.into());
    let document = run_document(&run, &[step], &Default::default());
    assert_eq!(document["steps"].as_array().map(Vec::len), Some(1));
}
