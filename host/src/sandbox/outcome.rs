//! How an execution ended, and everything measured about it.

use super::logs::LogLine;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// The one way an execution ended. Every variant is recorded under its snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// `run` returned valid JSON within every limit.
    Succeeded,
    /// `run` returned a `step-error`; it says whether a retry could help.
    GuestError,
    /// The guest trapped: a panic, `unreachable`, a stack overflow, an out-of-bounds access.
    Trap,
    /// The step's wall-clock deadline passed.
    Timeout,
    /// The step's fuel budget ran out.
    OutOfFuel,
    /// The guest needed more memory than the step's limit.
    MemoryLimit,
    /// `run` returned text that is not JSON, or more than the output cap.
    InvalidOutput,
    /// Someone stopped the step (a join policy, a cancelled run, a shutdown).
    Cancelled,
}

impl Outcome {
    /// Every outcome, in declaration order.
    pub const ALL: [Outcome; 8] = [
        Outcome::Succeeded,
        Outcome::GuestError,
        Outcome::Trap,
        Outcome::Timeout,
        Outcome::OutOfFuel,
        Outcome::MemoryLimit,
        Outcome::InvalidOutput,
        Outcome::Cancelled,
    ];

    /// The outcome's recorded name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::GuestError => "guest_error",
            Outcome::Trap => "trap",
            Outcome::Timeout => "timeout",
            Outcome::OutOfFuel => "out_of_fuel",
            Outcome::MemoryLimit => "memory_limit",
            Outcome::InvalidOutput => "invalid_output",
            Outcome::Cancelled => "cancelled",
        }
    }

    /// Whether this is the successful outcome.
    pub fn is_success(self) -> bool {
        self == Outcome::Succeeded
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result of one execution of an agent: its outcome, output or error, logs and costs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Execution {
    pub outcome: Outcome,
    /// The agent's output, when it succeeded.
    pub output: Option<crate::json::JsonDoc>,
    /// A readable explanation, when it did not.
    pub error: Option<String>,
    /// Whether a retry could help: the agent's own say for guest errors, the host's for
    /// the rest (timeouts and traps may pass; invalid output and cancellation will not).
    pub retryable: bool,
    pub logs: Vec<LogLine>,
    /// Time spent waiting for an instance slot (not part of the step's deadline).
    #[serde(with = "duration_micros")]
    pub queued: Duration,
    #[serde(with = "duration_micros")]
    pub instantiate: Duration,
    #[serde(with = "duration_micros")]
    pub execute: Duration,
    /// Fuel the guest burned (always metered; the budget is optional). `None` when the
    /// execution was interrupted (timeout, cancelled): the count is not exact then.
    pub fuel_consumed: Option<u64>,
    /// The most linear memory the instance held at once.
    pub memory_peak_bytes: u64,
    /// Every outbound HTTP request the guest made, refused ones included, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_calls: Vec<crate::outbound::HttpCall>,
}

impl Execution {
    /// Instantiation plus execution.
    pub fn duration(&self) -> Duration {
        self.instantiate + self.execute
    }
}

mod duration_micros {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(u64::try_from(duration.as_micros()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_micros(u64::deserialize(deserializer)?))
    }
}

impl Execution {
    /// An execution that never started: stopped (`outcome`) while waiting `queued` for a
    /// slot, for the reason `message` gives.
    pub fn refused(outcome: Outcome, message: &str, queued: Duration) -> Execution {
        Execution {
            outcome,
            output: None,
            error: Some(message.to_owned()),
            retryable: outcome == Outcome::Timeout,
            logs: Vec::new(),
            queued,
            instantiate: Duration::ZERO,
            execute: Duration::ZERO,
            fuel_consumed: None,
            memory_peak_bytes: 0,
            http_calls: Vec::new(),
        }
    }
}
