//! Write Braid agents as typed Rust functions.
//!
//! An *agent* is one step of a Braid workflow, compiled to a WebAssembly component for the
//! `wasm32-wasip2` target. The host calls it with a [`Context`] (which run, step, branch,
//! item and attempt this is) and a JSON input; the agent answers with a JSON output or an
//! [`Error`] that says whether a retry could help. This crate turns a plain function over
//! serde types into such a component: it owns the WIT contract (`wit/agent.wit`, package
//! `braid:agent@0.1.0`) and keeps `wit-bindgen` out of sight.
//!
//! What it does not do: anything at run time beyond (de)serialising and forwarding to the
//! host. Limits, sandboxing and recording all belong to the host.
//!
//! # Example
//!
//! ```
//! use braid_sdk::{Context, Error};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize)]
//! struct Input {
//!     text: String,
//! }
//!
//! #[derive(Serialize)]
//! struct Output {
//!     words: usize,
//! }
//!
//! fn count_words(ctx: Context, input: Input) -> Result<Output, Error> {
//!     braid_sdk::log::info(&format!("step {} attempt {}", ctx.step_id, ctx.attempt));
//!     if input.text.is_empty() && braid_sdk::config("allow-empty").is_none() {
//!         return Err(Error::fatal("text is empty"));
//!     }
//!     Ok(Output { words: input.text.split_whitespace().count() })
//! }
//!
//! braid_sdk::export_agent!(count_words);
//! # fn main() {}
//! ```
//!
//! Build it as a `cdylib` with `cargo build --release --target wasm32-wasip2`; the
//! resulting `.wasm` file is the agent.
//!
//! # Errors and retries
//!
//! * A malformed input (JSON that does not match the input type) never reaches the function:
//!   the agent returns a non-retryable error that names what is wrong.
//! * `?` on any standard error gives a non-retryable [`Error`]; use [`Error::retryable`] for
//!   failures where the same input could succeed later.
//! * Panics are traps: the host records them as `trap` with the panic message from stderr.

#![deny(missing_docs)]

use std::fmt;

/// The generated bindings for the `braid:agent` world. Not a stable interface: use the
/// re-exports and helpers of this crate instead.
#[doc(hidden)]
#[allow(missing_docs, unsafe_op_in_unsafe_fn, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "agent",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "__export_agent_world",
        default_bindings_module: "braid_sdk::bindings",
    });
}

use bindings::braid::agent::host;
use bindings::braid::agent::types::{StepContext, StepError};

/// Where a call sits in a workflow run (the WIT `step-context`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// The workflow run's id.
    pub run_id: String,
    /// The step's id in the workflow definition.
    pub step_id: String,
    /// The parallel branch this step runs in, if any.
    pub branch: Option<String>,
    /// The item index in a `map` fan-out, if any.
    pub item_index: Option<u32>,
    /// The attempt number, counting from 1.
    pub attempt: u32,
}

impl Context {
    /// A key that is the same for every attempt of this step execution (retries, and runs
    /// again after a host died) and differs for every other execution. Braid runs steps at
    /// least once: hand this key to the services the agent calls (as an `Idempotency-Key`
    /// header, say) so that a side effect happens once.
    pub fn idempotency_key(&self) -> String {
        host::idempotency_key()
    }
}

impl From<StepContext> for Context {
    fn from(ctx: StepContext) -> Self {
        Context {
            run_id: ctx.run_id,
            step_id: ctx.step_id,
            branch: ctx.branch,
            item_index: ctx.item_index,
            attempt: ctx.attempt,
        }
    }
}

/// Why an agent produced no output (the WIT `step-error`).
///
/// Like `anyhow::Error`, it converts from any standard error with `?` (as a non-retryable
/// error), and for that reason does not implement `std::error::Error` itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
    retryable: bool,
}

impl Error {
    /// An error that running the same input again would not fix.
    pub fn fatal(message: impl Into<String>) -> Self {
        Error { message: message.into(), retryable: false }
    }

    /// An error that a later attempt with the same input could overcome.
    pub fn retryable(message: impl Into<String>) -> Self {
        Error { message: message.into(), retryable: true }
    }

    /// The readable explanation.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the host may retry the step.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error> From<E> for Error {
    fn from(err: E) -> Self {
        Error::fatal(err.to_string())
    }
}

impl From<Error> for StepError {
    fn from(err: Error) -> Self {
        StepError { message: err.message, retryable: err.retryable }
    }
}

#[cfg(feature = "http")]
pub mod http;

/// Logging through the host: each call becomes one line of the step execution's logs.
///
/// Lines past the host's log cap are dropped and counted by the host; logging never fails.
pub mod log {
    use super::host::{self, LogLevel};

    /// Logs a line at trace level.
    pub fn trace(message: &str) {
        host::log(LogLevel::Trace, message);
    }
    /// Logs a line at debug level.
    pub fn debug(message: &str) {
        host::log(LogLevel::Debug, message);
    }
    /// Logs a line at info level.
    pub fn info(message: &str) {
        host::log(LogLevel::Info, message);
    }
    /// Logs a line at warn level.
    pub fn warn(message: &str) {
        host::log(LogLevel::Warn, message);
    }
    /// Logs a line at error level.
    pub fn error(message: &str) {
        host::log(LogLevel::Error, message);
    }
}

/// The configuration value granted to this step under `key`, if any.
pub fn config(key: &str) -> Option<String> {
    host::config(key)
}

/// Exports a handler `fn(Context, I) -> Result<O, E>` as the agent's `run`, where `I` is
/// deserialised from the input JSON, `O` is serialised to the output JSON and `E` converts
/// into [`Error`]. Use it once per agent crate.
#[macro_export]
macro_rules! export_agent {
    ($handler:path) => {
        #[doc(hidden)]
        struct __BraidAgent;

        impl $crate::bindings::Guest for __BraidAgent {
            fn run(
                ctx: $crate::bindings::braid::agent::types::StepContext,
                input: ::std::string::String,
            ) -> ::std::result::Result<
                ::std::string::String,
                $crate::bindings::braid::agent::types::StepError,
            > {
                $crate::__private::run_json(ctx, &input, $handler)
            }
        }

        $crate::bindings::__export_agent_world!(__BraidAgent with_types_in $crate::bindings);
    };
}

#[doc(hidden)]
pub mod __private {
    use super::*;
    use serde::{Serialize, de::DeserializeOwned};

    /// Decodes the input, calls the handler and encodes its output. A malformed input is a
    /// non-retryable error that names the problem, never a trap.
    pub fn run_json<I, O, E>(
        ctx: StepContext,
        input: &str,
        handler: impl FnOnce(Context, I) -> Result<O, E>,
    ) -> Result<String, StepError>
    where
        I: DeserializeOwned,
        O: Serialize,
        E: Into<Error>,
    {
        let parsed: I = serde_json::from_str(input).map_err(|err| Error::fatal(format!("malformed input: {err}")))?;
        let output = handler(ctx.into(), parsed).map_err(Into::into)?;
        serde_json::to_string(&output)
            .map_err(|err| Error::fatal(format!("could not encode the output as JSON: {err}")).into())
    }
}
