//! The parts of the host that read what callers and authors send — JSON limits, workflow
//! definitions and validation, CEL templates, the run document — compiled from the host's
//! own source files (not copies), so that the fuzz targets build without wasmtime or sqlx.

pub mod checks;
#[path = "../../host/src/json.rs"]
pub mod json;
#[path = "../../host/src/limits.rs"]
pub mod limits;
pub mod outbound;
#[path = "../../host/src/secrets.rs"]
pub mod secrets;
pub mod store;
#[path = "../../host/src/workflow/mod.rs"]
pub mod workflow;
