//! `/v1/workflows`: deploy a definition as `name@version` (validated against the deployed
//! agents; versions immutable), list workflows and their versions.

use super::{ApiError, AppState, MAX_JSON_BYTES, read_json};
use crate::metrics::METRICS;
use crate::registry::Deployed;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

/// `PUT /v1/workflows/{name}/{version}` with the definition: 201 when new, 200 when the
/// same definition was already deployed, 409 for another, 422 listing every problem.
pub async fn deploy(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let definition = read_json(body, MAX_JSON_BYTES).await?;
    let result = state.registry.deploy_workflow(&name, &version, definition).await;
    METRICS.deploys.with_label_values(&["workflow", if result.is_ok() { "ok" } else { "refused" }]).inc();
    let (workflow, deployed) = result?;
    let status = if deployed == Deployed::Created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(json!({ "name": workflow.name, "version": workflow.version, "digest": workflow.digest }))))
}

/// A workflow row without its (possibly large) definition.
fn summary(workflow: &crate::store::WorkflowRecord) -> Value {
    json!({ "name": workflow.name, "version": workflow.version, "digest": workflow.digest, "created_at": workflow.created_at })
}

/// `GET /v1/workflows`: every workflow version.
pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let workflows = state.registry.store().list_workflows(None).await?;
    Ok(Json(json!({ "workflows": workflows.iter().map(summary).collect::<Vec<_>>() })))
}

/// `GET /v1/workflows/{name}`: its versions, oldest first, and which is the latest.
pub async fn versions(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let versions = state.registry.store().list_workflows(Some(&name)).await?;
    let latest = versions.iter().max_by(|a, b| (a.created_at, &a.version).cmp(&(b.created_at, &b.version)));
    let Some(latest) = latest else { return Err(ApiError::not_found(format!("no deployed workflow {name}"))) };
    Ok(Json(
        json!({ "name": name, "latest": latest.version, "versions": versions.iter().map(summary).collect::<Vec<_>>() }),
    ))
}

/// `GET /v1/workflows/{name}/{version}`: with its definition.
pub async fn get(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let workflow = state.registry.store().find_workflow(&name, Some(&version)).await?;
    workflow
        .map(|w| Json(json!(w)))
        .ok_or_else(|| ApiError::not_found(format!("no deployed workflow {name}@{version}")))
}
