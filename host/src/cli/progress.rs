//! Live progress of a run on a terminal (`braid run`): one line for the run — elapsed time
//! and how many step executions are done, running and failed — and one per block (parallel,
//! map, switch, loop) with the same counts for the executions inside it, redrawn a few
//! times a second from the records (indicatif). Nothing is drawn when standard output or
//! standard error is not a terminal, or for runs that end within a moment.
//!
//! Reading the records (not the engine's state) makes it work for a run any host executes.

use crate::store::{BlockProgress, StepStatus, Store};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Nothing is drawn for a run that ends sooner than this.
const QUIET_FOR: Duration = Duration::from_millis(300);

/// How often the records are read.
const REFRESH: Duration = Duration::from_millis(150);

/// Most block lines drawn (the first blocks of the run, in creation order).
const MAX_BLOCK_LINES: usize = 12;

/// A run being followed on the terminal; [`Follow::finish`] clears its lines.
pub struct Follow {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Follow {
    /// Follows run `run_id` when both standard output and standard error are terminals.
    pub fn start(store: &Store, run_id: Uuid) -> Option<Follow> {
        if !std::io::stdout().is_terminal() || !std::io::stderr().is_terminal() {
            return None;
        }
        let stop = CancellationToken::new();
        let task = tokio::spawn(draw(store.clone(), run_id, stop.clone()));
        Some(Follow { stop, task })
    }

    /// Stops drawing and clears what was drawn.
    pub async fn finish(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn draw(store: Store, run_id: Uuid, stop: CancellationToken) {
    tokio::select! {
        () = tokio::time::sleep(QUIET_FOR) => {}
        () = stop.cancelled() => return,
    }
    let lines = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
    let style = ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let run_line = lines.add(ProgressBar::new_spinner().with_style(style));
    let block_style = ProgressStyle::with_template("    {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner());
    let mut block_lines: HashMap<Uuid, ProgressBar> = HashMap::new();
    loop {
        if let Ok(progress) = store.progress(run_id).await {
            run_line.set_message(format!("run {run_id}  {}", summary(&total(&progress))));
            run_line.tick();
            for block in progress.iter().filter(|block| block.block.is_some()).take(MAX_BLOCK_LINES) {
                let Some(id) = block.block else { continue };
                let line = block_lines
                    .entry(id)
                    .or_insert_with(|| lines.add(ProgressBar::new_spinner().with_style(block_style.clone())));
                line.set_message(format!("{} ({})  {}", block.step_id, block.step_type, summary(&block.counts)));
            }
        }
        tokio::select! {
            () = tokio::time::sleep(REFRESH) => {}
            () = stop.cancelled() => break,
        }
    }
    for line in block_lines.values() {
        line.finish_and_clear();
    }
    run_line.finish_and_clear();
    let _ = lines.clear();
}

/// Every execution of the run, by status.
fn total(progress: &[BlockProgress]) -> std::collections::BTreeMap<StepStatus, i64> {
    let mut total = std::collections::BTreeMap::new();
    for (status, count) in progress.iter().flat_map(|block| &block.counts) {
        *total.entry(*status).or_default() += count;
    }
    total
}

/// `12 done · 8 running · 1 failed` (and `cancelled` when any were).
fn summary(counts: &std::collections::BTreeMap<StepStatus, i64>) -> String {
    let count = |status| counts.get(&status).copied().unwrap_or(0);
    let done = count(StepStatus::Succeeded) + count(StepStatus::Skipped);
    let mut text = format!(
        "{done} done · {} running · {} failed",
        count(StepStatus::Running) + count(StepStatus::Pending),
        count(StepStatus::Failed)
    );
    if count(StepStatus::Cancelled) > 0 {
        text.push_str(&format!(" · {} cancelled", count(StepStatus::Cancelled)));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_counts_skipped_as_done_and_names_cancellations_only_when_there_are_some() {
        let counts = [(StepStatus::Succeeded, 3), (StepStatus::Skipped, 1), (StepStatus::Running, 2)].into();
        assert_eq!(summary(&counts), "4 done · 2 running · 0 failed");
        let counts = [(StepStatus::Failed, 1), (StepStatus::Cancelled, 5)].into();
        assert_eq!(summary(&counts), "0 done · 0 running · 1 failed · 5 cancelled");
    }
}
