//! Parallel blocks: branches fanned out as tasks, at most `max_parallelism` at once, and
//! the join policy that decides when the block is done and whether it succeeded.
//!
//! Branch tasks are started lazily as earlier ones finish, so a block never holds more
//! than `max_parallelism` branch futures. Once the policy has decided, the block cancels
//! its token: running instances are interrupted (epoch) and end `cancelled`, and branches
//! that never started are recorded `cancelled`.

use super::scope::block_view;
use super::{Ended, Placement, RunContext, StepEnd, finish_row, new_row, record_not_started, run_sequence};
use crate::store::Pending;
use crate::store::{StepStatus, StoreError};
use crate::workflow::{JoinPolicy, ParallelBlock, Scope, Step};
use serde_json::{Map, Value, json};
use std::sync::Arc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// What a branch left behind.
struct BranchResult {
    index: usize,
    ended: Ended,
    /// The views of the steps it ran, for the scope after the block.
    scope: Scope,
    /// Its last step's row, still being committed.
    last_row: Option<Pending>,
}

/// The join policy's running tally.
struct Tally {
    policy: JoinPolicy,
    tolerated: u32,
    total: u32,
    succeeded: u32,
    failed: u32,
}

/// What the policy says after a branch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Undecided,
    Succeeded,
    Failed,
}

impl Tally {
    fn record(&mut self, status: StepStatus) {
        if status.is_success() {
            self.succeeded += 1;
        } else {
            self.failed += 1;
        }
    }

    fn verdict(&self) -> Verdict {
        let finished = self.succeeded + self.failed;
        match self.policy {
            JoinPolicy::All if finished < self.total => Verdict::Undecided,
            JoinPolicy::All if self.failed > self.tolerated => Verdict::Failed,
            JoinPolicy::All => Verdict::Succeeded,
            JoinPolicy::FailFast if self.failed > 0 => Verdict::Failed,
            JoinPolicy::FailFast if finished == self.total => Verdict::Succeeded,
            JoinPolicy::Any if self.succeeded > 0 => Verdict::Succeeded,
            JoinPolicy::Any if self.failed == self.total => Verdict::Failed,
            JoinPolicy::Quorum(n) if self.succeeded >= n => Verdict::Succeeded,
            JoinPolicy::Quorum(n) if self.failed > self.total.saturating_sub(n) => Verdict::Failed,
            _ => Verdict::Undecided,
        }
    }
}

pub(super) async fn run(
    context: &Arc<RunContext>,
    step: &Step,
    block: &ParallelBlock,
    scope: &Scope,
    placement: &Placement,
    cancel: &CancellationToken,
) -> Result<StepEnd, StoreError> {
    let mut row = new_row(context, step, placement);
    row.join_policy = Some(block.join_policy.label());
    // The block's row must exist before its branches' rows point at it.
    let _ = context.engine.recorder.step(row.clone(), Vec::new());

    let block_cancel = cancel.child_token();
    let branches = block.branches.clone();
    let mut tally = Tally {
        policy: block.join_policy,
        tolerated: block.tolerated_failures,
        total: branches.len() as u32,
        succeeded: 0,
        failed: 0,
    };
    let mut verdict = Verdict::Undecided;
    let mut results: Vec<Option<BranchResult>> = (0..branches.len()).map(|_| None).collect();
    let mut running = JoinSet::new();
    let mut pending: Vec<Pending> = Vec::new();
    let mut next = 0;
    loop {
        while verdict == Verdict::Undecided && next < branches.len() && running.len() < block.max_parallelism as usize {
            let branch = &branches[next];
            let branch_placement = Placement { parent: Some(row.id), branch: Some(branch.name.clone()) };
            let task = run_sequence(
                context.clone(),
                branch.steps.clone(),
                scope.clone(),
                branch_placement,
                block_cancel.clone(),
            );
            let index = next;
            running.spawn(async move {
                task.await.map(|(ended, scope, last_row)| BranchResult { index, ended, scope, last_row })
            });
            next += 1;
        }
        let Some(joined) = running.join_next().await else { break };
        let result = joined.map_err(|err| StoreError::Query(format!("a branch task failed: {err}")))??;
        // Branches stopped because the policy had already decided do not change the verdict.
        if verdict == Verdict::Undecided
            && !(result.ended.status == StepStatus::Cancelled && block_cancel.is_cancelled())
        {
            tally.record(result.ended.status);
            verdict = tally.verdict();
            if verdict != Verdict::Undecided {
                block_cancel.cancel();
            }
        }
        let index = result.index;
        pending.extend(results[index].insert(result).last_row.take());
    }
    // Branches the policy never needed: recorded as cancelled.
    for branch in &branches[next..] {
        let placement = Placement { parent: Some(row.id), branch: Some(branch.name.clone()) };
        pending.extend(record_not_started(context, &branch.steps, &placement, StepStatus::Cancelled));
    }
    // The block is done once every row inside it is committed.
    for row in pending {
        row.committed().await?;
    }

    let mut output = Map::new();
    let mut branch_views = Map::new();
    let mut views = Vec::new();
    let mut failures = Vec::new();
    for (branch, result) in branches.iter().zip(&results) {
        let (status, branch_output, error) = match result {
            Some(result) => (result.ended.status, result.ended.output.clone(), result.ended.error.clone()),
            None => (StepStatus::Cancelled, None, Some("cancelled before it started".to_owned())),
        };
        if status.is_success() {
            output.insert(branch.name.clone(), branch_output.clone().unwrap_or(Value::Null));
        } else if status == StepStatus::Failed {
            failures.push(format!("{}: {}", branch.name, error.as_deref().unwrap_or("failed")));
        }
        branch_views
            .insert(branch.name.clone(), json!({ "status": status.as_str(), "output": branch_output, "error": error }));
        if let Some(result) = result {
            // The steps each branch ran are visible after the block.
            for inner in branch.steps.iter().flat_map(step_ids) {
                if let Some(view) = result.scope.steps.get(&inner) {
                    views.push((inner, view.clone()));
                }
            }
        }
    }

    let status = if cancel.is_cancelled() {
        StepStatus::Cancelled
    } else if verdict == Verdict::Succeeded {
        StepStatus::Succeeded
    } else {
        StepStatus::Failed
    };
    let error = match status {
        StepStatus::Succeeded => None,
        StepStatus::Cancelled => Some("cancelled".to_owned()),
        _ => Some(format!(
            "join policy {} not met: {} of {} branches succeeded, {} failed{}",
            block.join_policy.label(),
            tally.succeeded,
            tally.total,
            tally.failed,
            if failures.is_empty() { String::new() } else { format!(" ({})", failures.join("; ")) }
        )),
    };
    let ended = Ended { status, output: Some(Value::Object(output)), error };
    let row = finish_row(context, row, &ended, Vec::new());
    views.push((step.id.clone(), block_view(&ended, branch_views)));
    Ok((ended, views, row))
}

/// The scope views of a block that succeeded in an earlier attempt at the run: its own
/// (branches rebuilt from the recorded rows) and those of the steps inside it.
pub(super) fn recorded_views(
    context: &RunContext,
    step: &Step,
    block: &ParallelBlock,
    ended: &Ended,
) -> Vec<(String, cel::Value)> {
    let mut views = Vec::new();
    let mut branch_views = Map::new();
    for branch in block.branches.iter() {
        let last = branch.steps.last().and_then(|last| context.previous.get(&last.id));
        let (status, output, error) = match last {
            Some(row) => (row.status, row.output.clone(), row.error.clone()),
            None => (StepStatus::Cancelled, None, None),
        };
        branch_views
            .insert(branch.name.clone(), json!({ "status": status.as_str(), "output": output, "error": error }));
        for inner in branch.steps.iter().flat_map(step_ids) {
            if let Some(row) = context.previous.get(&inner) {
                views.push((inner, super::scope::view(&Ended::of_row(row))));
            }
        }
    }
    views.push((step.id.clone(), block_view(ended, branch_views)));
    views
}

/// The ids of a step and of every step nested inside it.
fn step_ids(step: &Step) -> Vec<String> {
    let mut ids = vec![step.id.clone()];
    if let crate::workflow::StepKind::Parallel(block) = &step.kind {
        for branch in block.branches.iter() {
            ids.extend(branch.steps.iter().flat_map(step_ids));
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts(policy: JoinPolicy, tolerated: u32, total: u32, statuses: &[StepStatus]) -> Vec<Verdict> {
        let mut tally = Tally { policy, tolerated, total, succeeded: 0, failed: 0 };
        statuses
            .iter()
            .map(|&status| {
                tally.record(status);
                tally.verdict()
            })
            .collect()
    }

    use StepStatus::{Failed as F, Succeeded as S};
    use Verdict::{Failed as VF, Succeeded as VS, Undecided as U};

    #[test]
    fn all_waits_for_every_branch_and_tolerates_what_it_may() {
        assert_eq!(verdicts(JoinPolicy::All, 0, 3, &[F, S, S]), [U, U, VF]);
        assert_eq!(verdicts(JoinPolicy::All, 1, 3, &[F, S, S]), [U, U, VS]);
        assert_eq!(verdicts(JoinPolicy::All, 1, 3, &[F, F, S]), [U, U, VF]);
    }

    #[test]
    fn fail_fast_decides_on_the_first_failure() {
        assert_eq!(verdicts(JoinPolicy::FailFast, 0, 3, &[S, F]), [U, VF]);
        assert_eq!(verdicts(JoinPolicy::FailFast, 0, 2, &[S, S]), [U, VS]);
    }

    #[test]
    fn any_wins_on_the_first_success_and_fails_only_when_all_fail() {
        assert_eq!(verdicts(JoinPolicy::Any, 0, 3, &[F, S]), [U, VS]);
        assert_eq!(verdicts(JoinPolicy::Any, 0, 2, &[F, F]), [U, VF]);
    }

    #[test]
    fn quorum_decides_as_soon_as_it_can() {
        assert_eq!(verdicts(JoinPolicy::Quorum(2), 0, 4, &[S, F, S]), [U, U, VS]);
        assert_eq!(verdicts(JoinPolicy::Quorum(3), 0, 4, &[F, F]), [U, VF]);
        assert_eq!(verdicts(JoinPolicy::Quorum(3), 0, 4, &[S, F, S]), [U, U, U]);
    }
}
