//! Work units: an agent step of a parallel branch or a map item, ready to run on any host
//! — its input already rendered, its agent pinned by digest, its limits, config, secret
//! names and grants spelled out. The owner of a run offers a unit only when its own
//! instance pool is full and another host is up ([`Offload`]); whichever host takes it
//! executes it here ([`Engine::execute_unit`]) and records its row under a lease on the
//! unit. The owner keeps everything else (templates, retries, join policies, deadlines).
//!
//! This module knows nothing of how units travel between hosts (`cluster/` and `store/`).

use super::agent::{Given, conclude};
use super::{Ended, Engine, ResolvedAgent, close_row};
use crate::sandbox::{Execution, ExecutionRequest, Limits, Slot, StepContext};
use crate::store::{StepDetails, StepRecord, StoreError};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// One agent execution that any host may run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Unit {
    pub id: Uuid,
    /// The epoch of the run's owner when it offered the unit: the unit's row is written
    /// only while the run still has it.
    pub run_epoch: i64,
    /// The attempt's row as the owner would write it (run, step, key, attempt, agent,
    /// input); the executing host gives it a fresh id and its own host id.
    pub row: StepRecord,
    /// The pinned agent's deployed version, if any (its digest is in `row`).
    pub agent_version: Option<String>,
    pub context: StepContext,
    pub timeout_ms: u64,
    pub memory_bytes: u64,
    pub fuel: Option<u64>,
    /// The step's config, without secrets.
    pub config: BTreeMap<String, String>,
    /// Config key → secret name, filled in from the executing host's secrets.
    pub secrets: BTreeMap<String, String>,
    /// The step's `allowed_hosts` patterns, and where they were written.
    pub allowed_hosts: Vec<String>,
}

impl Unit {
    /// The limits the unit runs under.
    pub fn limits(&self) -> Limits {
        Limits { timeout: Duration::from_millis(self.timeout_ms), memory_bytes: self.memory_bytes, fuel: self.fuel }
    }
}

/// How a unit offered to other hosts ended.
pub enum Offloaded {
    /// A host ran it and committed its row (final: succeeded, failed or cancelled).
    Ran { row: Box<StepRecord>, retryable: bool },
    /// No host ran it: cancelled, or nobody took it within the host's max queue wait.
    NotRun(Execution),
}

/// Where the engine sends units it has no slot for (the cluster's exchange).
pub trait Offload: Send + Sync {
    /// Whether offering a unit now could help: another host is up.
    fn may_offer(&self) -> bool;

    /// Offers `unit` to every host (this one included, once it has a free slot) and waits
    /// until one has run it, or until `cancel` (the unit is then withdrawn, or interrupted
    /// wherever it runs, and waited for).
    fn run_elsewhere<'a>(
        &'a self,
        unit: Unit,
        cancel: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Offloaded, StoreError>>;
}

/// What executing a unit produced: its final row (not yet written), its logs and HTTP
/// requests, and whether a retry could help.
pub struct UnitRun {
    pub row: StepRecord,
    pub details: StepDetails,
    pub retryable: bool,
}

impl Engine {
    /// The row a take of `unit` on this host records, numbered `attempt`: a fresh id per
    /// take, so that a unit taken again after its host died leaves both attempts visible.
    pub fn unit_row(&self, unit: &Unit, attempt: i32) -> StepRecord {
        let mut row = unit.row.clone();
        row.id = Uuid::now_v7();
        row.attempt = attempt;
        row.host_id = Some(self.host_id.to_string());
        row.started_at = Some(chrono::Utc::now());
        row
    }

    /// Executes `unit` here, in `slot`, as `row` (from [`Engine::unit_row`]). The row is
    /// closed but not written: the caller writes it under its lease on the unit.
    pub async fn execute_unit(
        &self,
        unit: &Unit,
        agent: &ResolvedAgent,
        slot: Slot,
        row: StepRecord,
        cancel: CancellationToken,
    ) -> UnitRun {
        let attempt = row.attempt;
        let given = match Given::for_step(&self.secrets, &unit.config, &unit.secrets) {
            Ok(given) => given,
            Err(err) => {
                let ended = super::failed(format!("on host {}: {err}", self.host_id));
                return UnitRun { row: close_row(row, &ended), details: StepDetails::default(), retryable: false };
            }
        };
        let allowed_hosts = match crate::outbound::HostPatterns::parse(&unit.allowed_hosts) {
            Ok(patterns) => Arc::new(patterns),
            Err(errors) => {
                let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
                let ended = super::failed(format!("allowed_hosts: {}", errors.join("; ")));
                return UnitRun { row: close_row(row, &ended), details: StepDetails::default(), retryable: false };
            }
        };
        let mut context = unit.context.clone();
        context.attempt = u32::try_from(attempt).unwrap_or(1);
        let request = ExecutionRequest {
            context,
            input: row.input.as_ref().map_or_else(|| "null".to_owned(), ToString::to_string),
            limits: Some(unit.limits()),
            config: given.config.clone(),
            cancel,
            allowed_hosts,
        };
        let execution = self.sandbox.execute_in(&agent.agent, request, slot).await;
        let (row, ended, details, retryable): (StepRecord, Ended, StepDetails, bool) =
            conclude(row, execution, &given.redactor);
        UnitRun { row: close_row(row, &ended), details, retryable }
    }
}
