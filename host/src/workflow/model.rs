//! The definition model: what a parsed workflow is made of. Built only by `parse`, so
//! every value here has passed the structural checks.

use super::Template;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A parsed workflow definition.
#[derive(Debug, Clone)]
pub struct Workflow {
    pub name: String,
    pub version: String,
    pub steps: Arc<[Step]>,
    /// The run's output; `None` makes it the last step's output.
    pub output: Option<Template>,
    /// The definition as given, for recording.
    pub source: serde_json::Value,
}

/// One step: its id, where it sits in the document, and what it does.
#[derive(Debug, Clone)]
pub struct Step {
    pub id: String,
    /// The JSON path of the step in the definition, for messages.
    pub path: String,
    pub kind: StepKind,
}

#[derive(Debug, Clone)]
pub enum StepKind {
    Agent(AgentStep),
    Parallel(ParallelBlock),
}

impl StepKind {
    /// The recorded `step_type`.
    pub fn type_name(&self) -> &'static str {
        match self {
            StepKind::Agent(_) => "agent",
            StepKind::Parallel(_) => "parallel",
        }
    }
}

/// Runs one agent with a templated input.
#[derive(Debug, Clone)]
pub struct AgentStep {
    /// `name` (latest) or `name@version`, as written.
    pub agent: String,
    pub input: Template,
    pub timeout_ms: Option<u64>,
    pub memory_mb: Option<u64>,
    pub fuel: Option<u64>,
    pub config: BTreeMap<String, String>,
}

/// Named branches run concurrently, at most `max_parallelism` at once.
#[derive(Debug, Clone)]
pub struct ParallelBlock {
    pub max_parallelism: u32,
    pub join_policy: JoinPolicy,
    pub tolerated_failures: u32,
    pub branches: Arc<[Branch]>,
}

/// A branch: a name and the steps it runs in sequence (one, for the short form).
#[derive(Debug, Clone)]
pub struct Branch {
    pub name: String,
    pub steps: Arc<[Step]>,
}

/// When a parallel block is done, and whether it succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinPolicy {
    /// Wait for every branch; fail when more than `tolerated_failures` failed.
    All,
    /// The first failure cancels the running branches and fails the block.
    FailFast,
    /// The first success wins and cancels the rest; fails only if every branch fails.
    Any,
    /// Done when N branches succeeded (the rest cancelled); fails once N is out of reach.
    Quorum(u32),
}

impl JoinPolicy {
    /// The recorded `join_policy`: `all`, `fail_fast`, `any` or `quorum:N`.
    pub fn label(self) -> String {
        match self {
            JoinPolicy::All => "all".to_owned(),
            JoinPolicy::FailFast => "fail_fast".to_owned(),
            JoinPolicy::Any => "any".to_owned(),
            JoinPolicy::Quorum(n) => format!("quorum:{n}"),
        }
    }
}
