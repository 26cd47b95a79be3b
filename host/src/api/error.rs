//! The API's errors: one JSON shape everywhere, `{ "error": ..., "details": ... }`, with
//! one status code per kind of failure. Internal failures answer a generic message with an
//! incident id; the detail (with its sources) goes to the log.

use crate::registry::{DeployError, PlanError};
use crate::sandbox::LoadError;
use crate::store::StoreError;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: String,
    pub details: Value,
}

impl ApiError {
    pub fn new(status: StatusCode, error: impl Into<String>) -> Self {
        ApiError { status, error: error.into(), details: Value::Null }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, what)
    }

    pub fn bad_request(what: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, what)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.error, "details": self.details }))).into_response()
    }
}

impl From<StoreError> for ApiError {
    /// A failure of the host's own: the client learns that it happened and an incident id,
    /// the log learns the detail (never raw database text to clients).
    fn from(err: StoreError) -> Self {
        let incident = uuid::Uuid::now_v7();
        // The chain of sources, each said once (a message often repeats its source's).
        let mut detail = String::new();
        for cause in std::iter::successors(Some(&err as &dyn std::error::Error), |e| e.source()) {
            let text = cause.to_string();
            if !detail.contains(&text) {
                detail = if detail.is_empty() { text } else { format!("{detail}: {text}") };
            }
        }
        tracing::error!(%incident, "request failed: {detail}");
        let (status, what) = match err {
            StoreError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "the database is unavailable"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
        };
        ApiError::new(status, format!("{what} (incident {incident}; the server's log has the details)"))
            .with_details(json!({ "incident": incident }))
    }
}

impl From<DeployError> for ApiError {
    fn from(err: DeployError) -> Self {
        let message = err.to_string();
        match err {
            DeployError::BadName { .. } => ApiError::bad_request(message),
            DeployError::NotAnAgent(LoadError::NotWasm) => ApiError::bad_request(message),
            DeployError::NotAnAgent(_) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message),
            DeployError::Conflict { existing_digest, .. } => {
                ApiError::new(StatusCode::CONFLICT, message).with_details(json!({ "existing_digest": existing_digest }))
            }
            DeployError::Invalid(invalid) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid workflow")
                .with_details(json!({ "problems": invalid.problems })),
            DeployError::Mismatch(_) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message),
            DeployError::Store(err) => err.into(),
        }
    }
}

impl From<PlanError> for ApiError {
    fn from(err: PlanError) -> Self {
        let message = err.to_string();
        match err {
            PlanError::UnknownWorkflow(_) => ApiError::not_found(message),
            PlanError::UnknownAgent(_) | PlanError::Invalid { .. } | PlanError::Load { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message)
            }
            PlanError::Store(err) => err.into(),
        }
    }
}
