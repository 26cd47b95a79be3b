//! What an earlier drive of a run left behind, and how a resumed (or redriven) run reuses
//! it. Every step execution has a key that names where it sits in the run (`a`,
//! `block/branch/a`, `map[3]/a`, `loop[2]/a`, `switch/cases[0]/a`), the same for every
//! attempt: a step with a row at its key that succeeded (or was skipped) is not run again,
//! wherever it sits — a map item, a loop iteration, a branch, a nested step — and a block
//! that succeeded is reused whole, its scope rebuilt from the rows inside it. A success is
//! final: no later row at the key (say, one an interrupted drive wrote for an item it never
//! reached) makes the step run again.
//!
//! This module only reads rows; the engine decides what to run and writes the new rows.

use super::Ended;
use super::scope::{block_view, case_view, plain, view};
use crate::store::{StepRecord, StepStatus};
use crate::workflow::Binding;
use crate::workflow::{Step, StepKind};
use chrono::{DateTime, Utc};
use std::collections::HashMap;

/// The rows of earlier attempts at a run, by step key.
#[derive(Default)]
pub(super) struct Previous {
    by_key: HashMap<String, History>,
}

/// The attempts recorded at one key.
struct History {
    /// The row that decides: the latest success if there is one, else the latest row.
    latest: StepRecord,
    max_attempt: i32,
    /// Attempts that failed since the current drive started: they use up `max_attempts`.
    /// A redrive starts a new drive, so failed steps get their attempts again.
    failures: u32,
}

impl Previous {
    /// Indexes `rows` by key. `drive_started` is when the current drive of the run began
    /// (its first start, or its last redrive).
    pub(super) fn new(rows: &[StepRecord], drive_started: Option<DateTime<Utc>>) -> Self {
        let mut by_key: HashMap<String, History> = HashMap::new();
        for row in rows {
            let Some(key) = &row.step_key else { continue };
            let failed_now = row.status == StepStatus::Failed
                && drive_started.is_none_or(|drive| row.started_at.is_none_or(|started| started >= drive));
            let history = by_key.entry(key.clone()).or_insert_with(|| History {
                latest: row.clone(),
                max_attempt: row.attempt,
                failures: 0,
            });
            history.failures += u32::from(failed_now);
            history.max_attempt = history.max_attempt.max(row.attempt);
            if rank(row) > rank(&history.latest) {
                history.latest = row.clone();
            }
        }
        Previous { by_key }
    }

    /// The row that decides at `key`: its latest success, or else its latest row.
    pub(super) fn latest(&self, key: &str) -> Option<&StepRecord> {
        self.by_key.get(key).map(|history| &history.latest)
    }

    /// The row of `key`'s success, if it succeeded or was skipped: the step is done.
    pub(super) fn done(&self, key: &str) -> Option<&StepRecord> {
        self.latest(key).filter(|row| row.status.is_success())
    }

    /// The attempt number the next execution at `key` takes: numbers never repeat.
    pub(super) fn next_attempt(&self, key: &str) -> i32 {
        self.by_key.get(key).map_or(1, |history| history.max_attempt + 1)
    }

    /// How many attempts at `key` failed in the current drive.
    pub(super) fn failures(&self, key: &str) -> u32 {
        self.by_key.get(key).map_or(0, |history| history.failures)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

/// Orders the rows at one key: any success above any other row, then by attempt.
fn rank(row: &StepRecord) -> (bool, i32, uuid::Uuid) {
    (row.status.is_success(), row.attempt, row.id)
}

/// The key of `step` under `prefix` (the enclosing placement's).
pub(super) fn key(prefix: &str, step: &Step) -> String {
    format!("{prefix}{}", step.id)
}

/// The scope views a step that is done leaves behind, rebuilt from the rows at and under
/// `key`: its own view and, as when it ran, those of the steps inside it that are visible
/// after it (a parallel block's branch steps, a switch's case, a loop's last iteration).
pub(super) fn recorded_views(previous: &Previous, step: &Step, key: &str) -> Vec<(String, Binding)> {
    let mut views = Vec::new();
    step_views(previous, step, key, &mut views);
    views
}

/// Pushes the views of `step` (recorded at `key`) and returns how it ended, or `None`
/// when nothing is recorded there.
fn step_views(previous: &Previous, step: &Step, key: &str, views: &mut Vec<(String, Binding)>) -> Option<Ended> {
    let row = previous.latest(key)?;
    let ended = Ended::of_row(row);
    let own = match &step.kind {
        StepKind::Agent(_) | StepKind::Map(_) => view(&ended),
        StepKind::Parallel(block) => {
            let mut branches = Vec::new();
            for branch in block.branches.iter() {
                let prefix = format!("{key}/{}/", branch.name);
                let end = sequence_views(previous, &branch.steps, &prefix, views).unwrap_or_else(|| Ended {
                    status: StepStatus::Cancelled,
                    output: None,
                    error: Some("cancelled before it started".to_owned()),
                });
                branches.push((branch.name.clone(), plain(&end)));
            }
            block_view(&ended, branches)
        }
        StepKind::Switch(switch) => {
            let label = row.input.as_ref().and_then(|input| input["case"].as_str()).unwrap_or("none").to_owned();
            let steps = match label.strip_prefix("cases[").and_then(|rest| rest.strip_suffix(']')) {
                Some(index) => {
                    index.parse::<usize>().ok().and_then(|i| switch.cases.get(i)).map(|case| case.steps.clone())
                }
                None if label == "default" => switch.default.clone(),
                None => None,
            };
            if let Some(steps) = steps {
                sequence_views(previous, &steps, &format!("{key}/{label}/"), views);
            }
            case_view(&ended, &label)
        }
        StepKind::Loop(repeat) => {
            let first = repeat.body.first().map(|s| s.id.clone()).unwrap_or_default();
            let iterations = (0..).take_while(|i| previous.latest(&format!("{key}[{i}]/{first}")).is_some()).count();
            if let Some(last) = iterations.checked_sub(1) {
                sequence_views(previous, &repeat.body, &format!("{key}[{last}]/"), views);
            }
            view(&ended)
        }
    };
    views.push((step.id.clone(), own));
    Some(ended)
}

/// Pushes the views of a recorded sequence and returns how it ended, as the engine's
/// sequence reports it (the first step that did not succeed ends it).
fn sequence_views(
    previous: &Previous,
    steps: &[Step],
    prefix: &str,
    views: &mut Vec<(String, Binding)>,
) -> Option<Ended> {
    let mut last: Option<Ended> = None;
    for step in steps {
        let Some(mut ended) = step_views(previous, step, &key(prefix, step), views) else { break };
        if !ended.status.is_success() {
            let error = ended.error.take().unwrap_or_default();
            ended.error = Some(format!("step {:?} {}: {error}", step.id, ended.status));
            return Some(ended);
        }
        last = Some(ended);
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn row(attempt: i32, status: StepStatus) -> StepRecord {
        let mut row = StepRecord::new(Uuid::nil(), "each", "agent", status);
        row.attempt = attempt;
        row.step_key = Some("items[0]/each".into());
        row
    }

    #[test]
    fn a_success_stays_the_deciding_row_whatever_comes_after_it() {
        let rows = [row(1, StepStatus::Failed), row(2, StepStatus::Succeeded), row(3, StepStatus::Cancelled)];
        let previous = Previous::new(&rows, None);
        assert_eq!(previous.done("items[0]/each").map(|r| r.attempt), Some(2));
        assert_eq!(previous.next_attempt("items[0]/each"), 4, "attempt numbers never repeat");
        let unfinished = Previous::new(&rows[..1], None);
        assert!(unfinished.done("items[0]/each").is_none());
        assert_eq!(unfinished.latest("items[0]/each").map(|r| r.status), Some(StepStatus::Failed));
    }
}
