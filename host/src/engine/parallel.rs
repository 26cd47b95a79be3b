//! Parallel blocks: branches fanned out as tasks, at most `max_parallelism` at once, and
//! the join policy that decides when the block is done and whether it succeeded.
//!
//! Branch tasks are started lazily as earlier ones finish, so a block never holds more
//! than `max_parallelism` branch futures. Once the policy has decided, the block cancels
//! its token: running instances are interrupted (epoch) and end `cancelled`, and branches
//! that never started are recorded `cancelled`.

use super::scope::{block_view, plain};
use super::{Ended, Placement, RunContext, StepEnd, Stop, finish_row, new_row, record_not_started, run_sequence};
use crate::json::JsonDoc;
use crate::store::Pending;
use crate::store::{StepDetails, StepStatus, StepWrite, StoreError};
use crate::workflow::{JoinPolicy, ParallelBlock, Scope, Step};
use futures::future::BoxFuture;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// What one unit of a fan-out (a branch, an item) left behind.
pub(super) struct Finished {
    pub ended: Ended,
    /// The views of the steps it ran, when the caller keeps them (a parallel block does;
    /// a map does not, so that 10,000 items do not hold 10,000 scopes).
    pub scope: Option<Scope>,
    /// Its last step's row, still being committed.
    pub last_row: Option<Pending>,
}

/// How a fan-out ended: each unit's result (None: never started), the verdict and tally.
pub(super) struct FanOutEnd {
    pub results: Vec<Option<Finished>>,
    pub verdict: Verdict,
    pub tally: Tally,
}

/// Runs `count` units, at most `max_parallelism` at once, started lazily as earlier ones
/// finish (so neither instances nor futures pile up), applying the join policy as they
/// end. Once it has decided, the rest are cancelled; units never started are recorded by
/// `not_started`. Returns when every started unit has ended and every row is committed.
///
/// The units run on `max_parallelism` worker tasks (fewer for fewer units), each taking the
/// next unit when its last one ends: a unit costs no task of its own, and its end wakes
/// nobody. Tokio spreads the workers over its threads.
pub(super) async fn fan_out(
    count: usize,
    max_parallelism: u32,
    policy: JoinPolicy,
    tolerated: u32,
    cancel: &CancellationToken,
    start: impl Fn(usize, CancellationToken) -> BoxFuture<'static, Result<Finished, StoreError>> + Send + Sync + 'static,
    mut not_started: impl FnMut(usize) -> Vec<Pending>,
) -> Result<FanOutEnd, StoreError> {
    let block_cancel = cancel.child_token();
    let tally = Tally { policy, tolerated, total: u32::try_from(count).unwrap_or(u32::MAX), succeeded: 0, failed: 0 };
    // Nothing to run (an empty map): done at once; only a quorum cannot be met.
    let verdict = match (count, policy) {
        (0, JoinPolicy::Quorum(_)) => Verdict::Failed,
        (0, _) => Verdict::Succeeded,
        _ => Verdict::Undecided,
    };
    let shared = Arc::new(Units {
        count,
        next: AtomicUsize::new(0),
        start,
        outcomes: Mutex::new(Outcomes {
            results: (0..count).map(|_| None).collect(),
            skipped: Vec::new(),
            pending: Vec::new(),
            tally,
            verdict,
        }),
        block_cancel: block_cancel.clone(),
    });
    let mut workers = JoinSet::new();
    for _ in 0..count.min(max_parallelism as usize) {
        let units = shared.clone();
        workers.spawn(async move { units.work().await });
    }
    while let Some(joined) = workers.join_next().await {
        joined.map_err(|err| StoreError::Internal(format!("a branch task failed: {err}")))??;
    }
    // Every worker has ended, and with it its share of the units.
    let units =
        Arc::into_inner(shared).ok_or_else(|| StoreError::Internal("a branch task outlived its block".into()))?;
    let taken = units.next.load(Ordering::Relaxed).min(count);
    let Outcomes { results, mut skipped, mut pending, tally, verdict } =
        units.outcomes.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    skipped.extend(taken..count);
    skipped.sort_unstable();
    for index in skipped {
        pending.extend(not_started(index));
    }
    // The block is done once every row inside it is committed.
    for row in pending {
        row.committed().await?;
    }
    Ok(FanOutEnd { results, verdict, tally })
}

/// The units of one fan-out, shared by its worker tasks.
struct Units<S> {
    count: usize,
    /// The next unit to start.
    next: AtomicUsize,
    start: S,
    outcomes: Mutex<Outcomes>,
    block_cancel: CancellationToken,
}

/// What the units that ended left, and what the join policy made of it.
struct Outcomes {
    results: Vec<Option<Finished>>,
    /// Units taken after the policy had decided, and so never started.
    skipped: Vec<usize>,
    /// The last rows of ended units, still being committed.
    pending: Vec<Pending>,
    tally: Tally,
    verdict: Verdict,
}

impl<S> Units<S>
where
    S: Fn(usize, CancellationToken) -> BoxFuture<'static, Result<Finished, StoreError>> + Send + Sync,
{
    fn lock(&self) -> std::sync::MutexGuard<'_, Outcomes> {
        self.outcomes.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps how unit `index` ended, and applies the join policy.
    fn record(&self, index: usize, mut finished: Finished) {
        let mut outcomes = self.lock();
        // Units stopped because the policy had already decided do not change the verdict.
        if outcomes.verdict == Verdict::Undecided
            && !(finished.ended.status == StepStatus::Cancelled && self.block_cancel.is_cancelled())
        {
            outcomes.tally.record(finished.ended.status);
            outcomes.verdict = outcomes.tally.verdict();
            if outcomes.verdict != Verdict::Undecided {
                self.block_cancel.cancel();
            }
        }
        outcomes.pending.extend(finished.last_row.take());
        outcomes.results[index] = Some(finished);
    }

    /// One worker: takes units until there are none left or the policy has decided.
    async fn work(&self) -> Result<(), StoreError> {
        loop {
            let index = self.next.fetch_add(1, Ordering::Relaxed);
            if index >= self.count {
                return Ok(());
            }
            {
                let mut outcomes = self.lock();
                if outcomes.verdict != Verdict::Undecided {
                    outcomes.skipped.push(index);
                    continue;
                }
            }
            let finished = (self.start)(index, self.block_cancel.clone()).await?;
            self.record(index, finished);
            // A unit usually runs to its end in one poll (its instance ends without waiting,
            // its row is only queued): give the thread back between units, or the writer
            // and the I/O driver wait until a worker runs out of units.
            tokio::task::yield_now().await;
        }
    }
}

/// The block's status and error from a fan-out's verdict.
pub(super) fn block_ending(
    end: &FanOutEnd,
    policy: JoinPolicy,
    stop: &Stop,
    failures: &[String],
) -> (StepStatus, Option<String>) {
    if end.verdict != Verdict::Succeeded
        && let Some(message) = stop.timed_out()
    {
        return (StepStatus::Failed, Some(message));
    }
    if stop.token.is_cancelled() && end.verdict != Verdict::Succeeded {
        return (StepStatus::Cancelled, Some("cancelled".to_owned()));
    }
    if end.verdict == Verdict::Succeeded {
        return (StepStatus::Succeeded, None);
    }
    let detail = if failures.is_empty() { String::new() } else { format!(" ({})", failures.join("; ")) };
    let error = format!(
        "join policy {} not met: {} of {} succeeded, {} failed{detail}",
        policy.label(),
        end.tally.succeeded,
        end.tally.total,
        end.tally.failed
    );
    (StepStatus::Failed, Some(error))
}

/// The join policy's running tally.
pub(super) struct Tally {
    policy: JoinPolicy,
    tolerated: u32,
    total: u32,
    succeeded: u32,
    failed: u32,
}

/// What the policy says after a branch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
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
    stop: &Stop,
) -> Result<StepEnd, StoreError> {
    let mut row = new_row(context, step, placement);
    row.join_policy = Some(block.join_policy.label());
    // The block's row must exist before its branches' rows point at it.
    let _ = context.write(row.clone(), StepDetails::default(), StepWrite::Insert);

    let branches = block.branches.clone();
    let anchor = Arc::new(row.clone());
    let branch_placement = {
        let (branches, anchor) = (branches.clone(), anchor.clone());
        move |index: usize| {
            let name = &branches[index].name;
            Placement::inside(&anchor, Some(name.clone()), None, &format!("/{name}"))
        }
    };
    let start = {
        let (context, branches, scope, branch_placement) =
            (context.clone(), branches.clone(), scope.clone(), branch_placement.clone());
        move |index: usize, block_cancel| -> BoxFuture<'static, Result<Finished, StoreError>> {
            let task = run_sequence(
                context.clone(),
                branches[index].steps.clone(),
                scope.clone(),
                branch_placement(index),
                block_cancel,
            );
            Box::pin(async move {
                let (ended, scope, last_row) = task.await?;
                Ok(Finished { ended, scope: Some(scope), last_row })
            })
        }
    };
    let end = fan_out(
        branches.len(),
        block.max_parallelism,
        block.join_policy,
        block.tolerated_failures,
        &stop.token,
        start,
        |index| record_not_started(context, &branches[index].steps, &branch_placement(index), StepStatus::Cancelled),
    )
    .await?;

    let mut gathered = Vec::new();
    let mut branch_views = Vec::new();
    let mut views = Vec::new();
    let mut failures = Vec::new();
    for (branch, result) in branches.iter().zip(&end.results) {
        let ended = match result {
            Some(result) => result.ended.clone(),
            None => Ended {
                status: StepStatus::Cancelled,
                output: None,
                error: Some("cancelled before it started".to_owned()),
            },
        };
        if ended.status.is_success() {
            gathered.push((branch.name.as_str(), ended.output.clone()));
        } else if ended.status == StepStatus::Failed {
            failures.push(format!("{}: {}", branch.name, ended.error.as_deref().unwrap_or("failed")));
        }
        branch_views.push((branch.name.clone(), plain(&ended)));
        if let Some(scope) = result.as_ref().and_then(|r| r.scope.as_ref()) {
            // The steps each branch ran are visible after the block.
            for inner in branch.steps.iter().flat_map(step_ids) {
                if let Some(view) = scope.steps.get(&inner) {
                    views.push((inner, view.clone()));
                }
            }
        }
    }
    let (status, error) = block_ending(&end, block.join_policy, stop, &failures);
    // The branches' outputs, written from their texts: nothing is parsed or copied.
    let output = JsonDoc::object(gathered.iter().map(|(name, output)| (*name, output.as_ref())));
    let ended = Ended { status, output: Some(output), error };
    let row = finish_row(context, row, &ended, StepDetails::default(), StepWrite::Upsert);
    views.push((step.id.clone(), block_view(&ended, branch_views)));
    Ok((ended, views, row))
}

/// The ids of a step and of every step nested inside it.
pub(super) fn step_ids(step: &Step) -> Vec<String> {
    let mut ids = vec![step.id.clone()];
    for (nested, _) in step.kind.nested() {
        ids.extend(nested.iter().flat_map(step_ids));
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
