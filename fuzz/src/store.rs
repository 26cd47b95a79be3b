//! The host's records and run document, without the database.

#[path = "../../host/src/store/document.rs"]
mod document;
#[path = "../../host/src/store/records.rs"]
pub mod records;

pub use document::{paged_document, run_document};
pub use records::{HttpCallRecord, LogRecord, RunRecord, RunStatus, StepDetails, StepRecord, StepStatus};
