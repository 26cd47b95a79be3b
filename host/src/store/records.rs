//! The recorded rows, as plain data: one struct per table, fields named like the columns.
//! Nothing here knows how rows are produced (the engine) or stored (the backends).

use crate::json::JsonDoc;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// A `workflow_runs` row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: Uuid,
    pub workflow_name: String,
    pub workflow_version: String,
    pub status: RunStatus,
    pub input: Option<JsonDoc>,
    pub output: Option<JsonDoc>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// sha256 of the workflow definition the run was pinned to (deployed workflows).
    pub workflow_digest: Option<String>,
    /// What each agent reference resolved to when the run started:
    /// `{"<reference>": {"name", "version", "digest"}}`.
    pub pinned_agents: Option<Value>,
    /// The host holding the run's lease (or that last held it).
    pub owner_host_id: Option<String>,
    /// The fencing counter: bumped by every claim; writes carrying an older one are refused.
    pub epoch: i64,
    /// How many times the run was redriven after it failed or was cancelled.
    pub redrive_count: i32,
}

/// An `agents` row: one deployed version of an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub name: String,
    pub version: String,
    pub digest: String,
    pub size_bytes: i64,
    pub created_at: DateTime<Utc>,
}

/// A `workflows` row: one deployed version of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowRecord {
    pub name: String,
    pub version: String,
    pub digest: String,
    pub definition: Value,
    pub created_at: DateTime<Utc>,
}

/// What inserting an immutable, versioned row did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// The version is new.
    Created,
    /// The same version with the same content was already there.
    AlreadyThere,
    /// The version exists with other content (whose digest this is).
    Conflict { existing_digest: String },
}

/// A `step_executions` row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub id: Uuid,
    pub run_id: Uuid,
    pub step_id: String,
    pub step_type: String,
    pub parent_step_id: Option<Uuid>,
    pub branch_name: Option<String>,
    pub item_index: Option<i64>,
    pub join_policy: Option<String>,
    pub agent_name: Option<String>,
    pub agent_digest: Option<String>,
    pub attempt: i32,
    pub status: StepStatus,
    pub outcome: Option<String>,
    pub input: Option<JsonDoc>,
    pub output: Option<JsonDoc>,
    pub error: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub instantiate_us: Option<i64>,
    pub execute_us: Option<i64>,
    pub fuel_consumed: Option<i64>,
    pub memory_peak_bytes: Option<i64>,
    /// Where the execution sits in the run (`a`, `block/branch/a`, `map[3]/a`), the same
    /// for every attempt: what resume and redrive reuse by, and the agent's idempotency key.
    pub step_key: Option<String>,
    /// Microseconds spent waiting for an instance slot before the agent started.
    pub queued_us: Option<i64>,
    /// The host that executed it.
    pub host_id: Option<String>,
}

impl StepRecord {
    /// A first attempt at `step_id` (of `step_type`) in run `run_id`, keyed by its id,
    /// with nothing else known yet: the other fields are for the caller to fill in.
    pub fn new(run_id: Uuid, step_id: &str, step_type: &str, status: StepStatus) -> Self {
        StepRecord {
            id: Uuid::now_v7(),
            run_id,
            step_id: step_id.to_owned(),
            step_type: step_type.to_owned(),
            parent_step_id: None,
            branch_name: None,
            item_index: None,
            join_policy: None,
            agent_name: None,
            agent_digest: None,
            attempt: 1,
            status,
            outcome: None,
            input: None,
            output: None,
            error: None,
            started_at: None,
            finished_at: None,
            instantiate_us: None,
            execute_us: None,
            fuel_consumed: None,
            memory_peak_bytes: None,
            step_key: Some(step_id.to_owned()),
            queued_us: None,
            host_id: None,
        }
    }
}

/// A `step_logs` row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    pub step_execution_id: Uuid,
    pub seq: i32,
    pub level: String,
    pub source: String,
    pub message: String,
    pub logged_at: DateTime<Utc>,
}

/// A `step_http_calls` row: one outbound HTTP request of a step execution. No query
/// string, headers or bodies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpCallRecord {
    pub step_execution_id: Uuid,
    pub seq: i32,
    pub method: String,
    pub scheme: String,
    pub host: String,
    pub port: i32,
    pub path: String,
    pub status: Option<i32>,
    pub error: Option<String>,
    pub bytes_out: i64,
    pub bytes_in: i64,
    pub duration_us: i64,
    pub started_at: DateTime<Utc>,
}

/// What is written and read with step rows besides the rows: their log lines and their
/// outbound HTTP requests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepDetails {
    pub logs: Vec<LogRecord>,
    pub http_calls: Vec<HttpCallRecord>,
}

impl StepDetails {
    pub fn logs(logs: Vec<LogRecord>) -> StepDetails {
        StepDetails { logs, http_calls: Vec::new() }
    }

    pub fn is_empty(&self) -> bool {
        self.logs.is_empty() && self.http_calls.is_empty()
    }
}

/// Generates a status enum stored as its snake_case name.
macro_rules! status_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            /// The stored name.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Whether the status counts as success: succeeded, or skipped by its condition.
            pub fn is_success(self) -> bool {
                matches!(self.as_str(), "succeeded" | "skipped")
            }

            /// Whether the status is final.
            pub fn is_terminal(self) -> bool {
                !matches!(self.as_str(), "pending" | "running")
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(text: &str) -> Result<Self, String> {
                match text {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        concat!("unknown ", stringify!($name), " {:?} (expected one of: ", $($text, " "),+, ")"),
                        other
                    )),
                }
            }
        }
    };
}

status_enum!(
    /// A run's status.
    RunStatus { Pending = "pending", Running = "running", Succeeded = "succeeded", Failed = "failed", Cancelled = "cancelled" }
);

status_enum!(
    /// A step execution's status.
    StepStatus {
        Pending = "pending",
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        Cancelled = "cancelled",
        Skipped = "skipped",
    }
);

/// Which runs to list.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub workflow: Option<String>,
    pub status: Option<RunStatus>,
    pub limit: Option<u32>,
}

/// Which step executions of a run to read: a page after `after` (creation order).
#[derive(Debug, Clone, Default)]
pub struct StepFilter {
    pub after: Option<Uuid>,
    pub limit: u32,
    pub status: Option<StepStatus>,
    pub step_id: Option<String>,
    pub parent: Option<Uuid>,
    /// Only the run's top-level executions (no parent block).
    pub top_level: bool,
    /// Leave out inputs and outputs (read as `null`), which can be large.
    pub without_data: bool,
}

/// What kind of process a host is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostRole {
    /// `braid serve`: the HTTP API, owns runs, takes units.
    Serve,
    /// `braid worker`: owns runs and takes units, without the HTTP API.
    Worker,
    /// `braid run` (and `braid runs resume|redrive`): drives one run, takes no units.
    Run,
}

impl HostRole {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            HostRole::Serve => "serve",
            HostRole::Worker => "worker",
            HostRole::Run => "run",
        }
    }
}

impl FromStr for HostRole {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "serve" => Ok(HostRole::Serve),
            "worker" => Ok(HostRole::Worker),
            "run" => Ok(HostRole::Run),
            other => Err(format!("unknown host role {other:?} (expected serve, worker or run)")),
        }
    }
}

/// A host's row: who it is and what it was doing at its last heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostRecord {
    pub host_id: String,
    pub role: HostRole,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    /// The instance pool's size (`--max-instances`).
    pub max_instances: i32,
    /// Instances alive at the heartbeat.
    pub slots_in_use: i32,
    /// Runs it was executing (holding the lease of).
    pub runs_owned: i32,
    /// Units of other hosts' runs it has executed since it started.
    pub units_taken: i64,
    /// Units of its runs it has offered to other hosts since it started.
    pub units_offered: i64,
}
