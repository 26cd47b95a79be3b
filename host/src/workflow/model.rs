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
    /// What a run's input must look like, if the definition says.
    pub input_schema: Option<InputSchema>,
    /// The whole run's deadline.
    pub timeout_ms: Option<u64>,
    /// The definition as given, for recording.
    pub source: serde_json::Value,
}

/// A compiled JSON Schema for run inputs.
#[derive(Clone)]
pub struct InputSchema(pub(super) Arc<jsonschema::Validator>);

impl std::fmt::Debug for InputSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InputSchema")
    }
}

/// Why a run's input was refused: one line per violation, each naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the input does not match the workflow's input_schema:\n  {}", .problems.join("\n  "))]
pub struct InvalidInput {
    pub problems: Vec<String>,
}

impl Workflow {
    /// Checks a run's input against the workflow's `input_schema` (if any).
    pub fn check_input(&self, input: &serde_json::Value) -> Result<(), InvalidInput> {
        let Some(InputSchema(validator)) = &self.input_schema else { return Ok(()) };
        let problems: Vec<String> = validator
            .iter_errors(input)
            .map(|error| {
                let path = error.instance_path().to_string();
                let field = if path.is_empty() { "input".to_owned() } else { format!("input{path}") };
                format!("{field}: {error}")
            })
            .collect();
        if problems.is_empty() { Ok(()) } else { Err(InvalidInput { problems }) }
    }
}

/// One step: its id, where it sits in the document, and what it does.
#[derive(Debug, Clone)]
pub struct Step {
    pub id: String,
    /// The JSON path of the step in the definition, for messages.
    pub path: String,
    /// `if`: the step runs only when this CEL condition holds; otherwise it is `skipped`.
    pub condition: Option<Template>,
    /// A block's own deadline (parallel, map, switch, loop); an agent step's is in
    /// [`AgentStep::timeout_ms`].
    pub timeout_ms: Option<u64>,
    pub kind: StepKind,
}

#[derive(Debug, Clone)]
pub enum StepKind {
    Agent(AgentStep),
    Parallel(ParallelBlock),
    Map(MapBlock),
    Switch(SwitchBlock),
    Loop(LoopBlock),
}

impl StepKind {
    /// The recorded `step_type`.
    pub fn type_name(&self) -> &'static str {
        match self {
            StepKind::Agent(_) => "agent",
            StepKind::Parallel(_) => "parallel",
            StepKind::Map(_) => "map",
            StepKind::Switch(_) => "switch",
            StepKind::Loop(_) => "loop",
        }
    }

    /// The step lists nested directly inside this step, with the variables each binds.
    pub fn nested(&self) -> Vec<(&Arc<[Step]>, &'static [&'static str])> {
        match self {
            StepKind::Agent(_) => Vec::new(),
            StepKind::Parallel(block) => block.branches.iter().map(|b| (&b.steps, &[][..])).collect(),
            StepKind::Map(map) => vec![(&map.body, &["item", "index"][..])],
            StepKind::Switch(switch) => switch
                .cases
                .iter()
                .map(|c| (&c.steps, &[][..]))
                .chain(switch.default.iter().map(|d| (d, &[][..])))
                .collect(),
            StepKind::Loop(repeat) => vec![(&repeat.body, &["iteration"][..])],
        }
    }
}

/// One sandboxed run of `body` per item of a list computed at run time.
#[derive(Debug, Clone)]
pub struct MapBlock {
    pub items: Template,
    pub max_parallelism: u32,
    /// Most items the map takes (beyond the host's `--max-map-items`); a longer list fails it.
    pub max_items: Option<u64>,
    pub join_policy: JoinPolicy,
    pub tolerated_failures: u32,
    /// The steps run for each item (`item` and `index` in scope).
    pub body: Arc<[Step]>,
}

/// The first case whose condition holds runs; otherwise the default, if any.
#[derive(Debug, Clone)]
pub struct SwitchBlock {
    pub cases: Arc<[Case]>,
    pub default: Option<Arc<[Step]>>,
}

/// A switch case.
#[derive(Debug, Clone)]
pub struct Case {
    pub when: Template,
    pub steps: Arc<[Step]>,
}

/// Runs `body` again and again until `until` holds (`iteration` in scope).
#[derive(Debug, Clone)]
pub struct LoopBlock {
    pub body: Arc<[Step]>,
    pub until: Template,
    pub max_iterations: u32,
    /// Whether reaching `max_iterations` without `until` holding fails the loop.
    pub fail_at_max: bool,
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
    /// The step's own `retry`, or the workflow's.
    pub retry: Option<RetryPolicy>,
    /// Where the agent may send HTTP requests: its own `allowed_hosts`, or the nearest
    /// enclosing branch's, map's or workflow's; none by default.
    pub allowed_hosts: Arc<Grants>,
    /// Config keys whose values are the host's secrets: key → secret name.
    pub secrets: BTreeMap<String, String>,
}

/// An `allowed_hosts` list and where it was written (for messages about it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Shared with every execution of the step (the sandbox takes an `Arc`).
    pub patterns: Arc<crate::outbound::HostPatterns>,
    /// The JSON path of the list (`allowed_hosts`, `steps[2].allowed_hosts`); empty when
    /// nothing was granted.
    pub path: String,
}

/// When and how often a failed agent step is tried again: exponential backoff from
/// `initial_backoff_ms`, doubling up to `max_backoff_ms`, optionally with jitter. Only
/// failures a retry could help are retried: guest errors the agent marks retryable,
/// timeouts and traps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = no retry).
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_attempts: 3, initial_backoff_ms: 100, max_backoff_ms: 10_000, jitter: true }
    }
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
