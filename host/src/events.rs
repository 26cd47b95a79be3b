//! A run's changes as a stream of events, for `GET /v1/runs/{id}/events` (SSE) and `braid
//! runs watch`: first the current state (the run, then every step execution so far), then
//! each change — a step execution that appeared or changed status, the run's status — and
//! last the run's end. Each subscriber reads the records itself (the run's row and its step
//! rows, without inputs and outputs), every 250 ms — more slowly for very wide runs — and
//! sends only what changed since its last read, so every execution's end reaches it exactly
//! once, whichever host runs the run and on either database. Nothing is added to the
//! writer's path.
//!
//! What it does not own: how events are framed (the API and the CLI do that).

use crate::store::{RunRecord, RunStatus, StepRecord, StepStatus, Store, StoreError};
use serde::Serialize;
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

/// How often a run's records are read.
const POLL: Duration = Duration::from_millis(250);

/// Runs with more step executions than this are read once a second.
const WIDE_RUN: usize = 5_000;

/// One change of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RunEvent {
    /// The run's row without its input and output: first, and whenever its status changes.
    Run { run: RunRecord },
    /// A step execution that appeared or changed status (without input and output).
    Step { step: StepRecord },
    /// The run ended: the last event, with the whole row (its output included).
    End { run: RunRecord },
}

impl RunEvent {
    /// The SSE event name: `run`, `step` or `end`.
    pub fn name(&self) -> &'static str {
        match self {
            RunEvent::Run { .. } => "run",
            RunEvent::Step { .. } => "step",
            RunEvent::End { .. } => "end",
        }
    }
}

/// A subscriber's view of one run: what it has been sent so far.
pub struct RunWatch {
    store: Store,
    run_id: Uuid,
    sent_run: Option<RunStatus>,
    sent_steps: HashMap<Uuid, StepStatus>,
    ended: bool,
}

impl RunWatch {
    /// Watches run `run_id`; `None` when there is no such run.
    pub async fn new(store: Store, run_id: Uuid) -> Result<Option<RunWatch>, StoreError> {
        if store.get_run_state(run_id).await?.is_none() {
            return Ok(None);
        }
        Ok(Some(RunWatch { store, run_id, sent_run: None, sent_steps: HashMap::new(), ended: false }))
    }

    /// Whether the `end` event was sent.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// What changed since the last call (the current state on the first), waiting first
    /// unless this is the first call. Empty once the run has ended.
    pub async fn next(&mut self) -> Result<Vec<RunEvent>, StoreError> {
        if self.ended {
            return Ok(Vec::new());
        }
        if self.sent_run.is_some() {
            let pause = if self.sent_steps.len() > WIDE_RUN { Duration::from_secs(1) } else { POLL };
            tokio::time::sleep(pause).await;
        }
        // The run's row is read first: if it says the run ended, the rows read after it
        // hold every execution's end (a run's row is written after its last step's).
        let disappeared = || StoreError::Internal(format!("run {} disappeared", self.run_id));
        let run = self.store.get_run_state(self.run_id).await?.ok_or_else(disappeared)?;
        let steps = self.store.run_step_states(self.run_id).await?;
        let mut events = Vec::new();
        if self.sent_run != Some(run.status) {
            self.sent_run = Some(run.status);
            events.push(RunEvent::Run { run: run.clone() });
        }
        for step in steps {
            if self.sent_steps.insert(step.id, step.status) != Some(step.status) {
                events.push(RunEvent::Step { step });
            }
        }
        if run.status.is_terminal() {
            self.ended = true;
            // The end carries the whole row, its output included: read once.
            let run = self.store.get_run(self.run_id).await?.ok_or_else(disappeared)?;
            events.push(RunEvent::End { run });
        }
        Ok(events)
    }
}
