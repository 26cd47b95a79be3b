//! `/v1/agents`: deploy a component as `name@version` (type-checked and precompiled at
//! deploy; versions immutable), list agents and their versions.

use super::{ApiError, AppState, MAX_AGENT_BYTES, read_body};
use crate::metrics::METRICS;
use crate::registry::Deployed;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

/// `PUT /v1/agents/{name}/{version}` with the `.wasm` bytes: 201 when new, 200 when the
/// same bytes were already deployed, 409 for other bytes under the same version.
pub async fn deploy(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let wasm = read_body(body, MAX_AGENT_BYTES).await?;
    let result = state.registry.deploy_agent(&name, &version, wasm.to_vec()).await;
    METRICS.deploys.with_label_values(&["agent", if result.is_ok() { "ok" } else { "refused" }]).inc();
    let (agent, deployed) = result?;
    let status = if deployed == Deployed::Created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((
        status,
        Json(
            json!({ "name": agent.name, "version": agent.version, "digest": agent.digest, "size_bytes": agent.size_bytes }),
        ),
    ))
}

/// `GET /v1/agents`: every agent with its versions.
pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let agents = state.registry.store().list_agents(None).await?;
    Ok(Json(json!({ "agents": agents })))
}

/// `GET /v1/agents/{name}`: the versions of one agent, oldest first; `latest` is the one
/// `"agent": "name"` resolves to.
pub async fn versions(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let versions = state.registry.store().list_agents(Some(&name)).await?;
    let latest = versions.iter().max_by(|a, b| (a.created_at, &a.version).cmp(&(b.created_at, &b.version))).cloned();
    let Some(latest) = latest else { return Err(ApiError::not_found(format!("no deployed agent {name}"))) };
    Ok(Json(json!({ "name": name, "latest": latest.version, "versions": versions })))
}

/// `GET /v1/agents/{name}/{version}`.
pub async fn get(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let agent = state.registry.store().find_agent(&name, Some(&version)).await?;
    agent.map(|a| Json(json!(a))).ok_or_else(|| ApiError::not_found(format!("no deployed agent {name}@{version}")))
}
