//! Braid, as a library: a WebAssembly step host for workflows of sandboxed agents.
//!
//! # Layout
//!
//! The way a run flows: definition → [`workflow`] (parse, validate) → [`registry`]
//! (resolve and pin the agents) → [`engine`] (walk the steps) → [`sandbox`] (one fresh
//! instance per agent step) → [`store`] (record every run and step execution).
//!
//! * [`workflow`]: the definition model, validation with precise errors, CEL templates.
//! * [`engine`]: running a workflow: sequences, parallel blocks, join policies, cancellation.
//! * [`sandbox`]: wasmtime. The one engine, loading agent components, and one execution in
//!   a fresh, limited, WASI-denied instance.
//! * [`registry`]: where agents come from (a folder of components) and their digests.
//! * [`cluster`]: hosts and ownership: leases, fencing epochs, claims, heartbeats, and the
//!   exchange of fan-out units between hosts.
//! * [`events`]: a run's changes as events, for the SSE stream and `braid runs watch`.
//! * [`store`]: sqlx. Runs, step executions and logs in Postgres or SQLite, batched writes.
//! * [`outbound`]: outbound HTTP for agents: host-pattern grants, the operator's ceiling,
//!   refusing private addresses, the shared client, the record of each request.
//! * [`secrets`]: secrets from the host (environment, a secrets file) and their redaction.
//! * [`telemetry`]: OpenTelemetry traces of runs over OTLP, when the environment asks.
//! * [`limits`]: what callers and authors may send: JSON depth and characters, read-back.
//! * [`json`]: `JsonDoc`, a JSON document passed from agent to store to agent without
//!   being parsed or serialised again.
//! * [`build`]: agents from source: `braid new agent` and `braid build` for Rust, Python, JS.
//! * [`cli`]: the `braid` command line, parsing and rendering; `main.rs` only calls it.
//!
//! The engine knows nothing of wasmtime or SQL; the sandbox knows nothing of workflows;
//! the store knows nothing of either.

// Lossy casts hid a real bug (a definition's 4294967296 became 0): every narrowing is explicit.
#![warn(clippy::cast_possible_truncation)]

pub mod api;
pub mod build;
pub mod cli;
pub mod cluster;
pub mod engine;
pub mod events;
pub mod json;
pub mod limits;
pub mod metrics;
pub mod outbound;
pub mod registry;
pub mod sandbox;
pub mod secrets;
pub mod store;
pub mod telemetry;
pub mod workflow;
