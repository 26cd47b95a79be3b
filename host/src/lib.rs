//! Braid, as a library: a WebAssembly step host for workflows of sandboxed agents.
//!
//! # Layout
//!
//! * [`sandbox`]: wasmtime. The one engine, loading (compiling and linking) agent
//!   components, and running one execution in a fresh, limited, WASI-denied instance.
//! * [`cli`]: the `braid` command line, parsing and rendering; `main.rs` only calls it.
//!
//! The sandbox knows nothing of workflows, and the CLI holds no logic of its own beyond
//! turning arguments into calls and results into text or JSON.

pub mod cli;
pub mod sandbox;
