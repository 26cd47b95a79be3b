//! `/v1/runs` and `POST /v1/workflows/{name}/runs`: start runs of deployed workflows, read
//! them back with their step executions, cancel them.

use super::{ApiError, AppState, MAX_JSON_BYTES, read_json};
use crate::store::{RunFilter, RunStatus, run_document};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

#[derive(Debug, Deserialize)]
pub struct StartQuery {
    #[serde(default)]
    wait: bool,
}

/// `POST /v1/workflows/{name}/runs` with `{"input": ..., "version": optional}`: 202
/// `{run_id}` once the run is accepted (durably); with `?wait=true`, the finished run's
/// document (as `braid run --output json` prints it).
pub async fn start(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<StartQuery>,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let request = read_json(body, MAX_JSON_BYTES).await?;
    let (input, version) = match &request {
        Value::Null => (Value::Null, None),
        Value::Object(fields) => {
            if let Some(unknown) = fields.keys().find(|k| !matches!(k.as_str(), "input" | "version")) {
                return Err(ApiError::bad_request(format!("unknown field {unknown:?} (expected input, version)")));
            }
            let version = match fields.get("version") {
                None | Some(Value::Null) => None,
                Some(Value::String(v)) => Some(v.clone()),
                Some(other) => Some(other.to_string()),
            };
            (fields.get("input").cloned().unwrap_or(Value::Null), version)
        }
        _ => return Err(ApiError::bad_request("the body must be an object: {\"input\": ..., \"version\": ...}")),
    };
    let plan = state.registry.plan(&name, version.as_deref()).await?;
    plan.workflow.check_input(&input).map_err(|invalid| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "the input does not match the workflow's input_schema")
            .with_details(json!({ "problems": invalid.problems }))
    })?;
    let started = state.runner.start(plan, input).await?;
    if !query.wait {
        return Ok((StatusCode::ACCEPTED, Json(json!({ "run_id": started.run.id }))));
    }
    let run = started
        .task
        .await
        .map_err(|err| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("the run's task failed: {err}")))??;
    Ok((StatusCode::OK, Json(document(&state, run.id).await?)))
}

/// The run's document as recorded (the same answer as `GET /v1/runs/{id}`).
async fn document(state: &AppState, id: Uuid) -> Result<Value, ApiError> {
    let store = state.registry.store();
    let (run, steps, logs) = tokio::join!(store.get_run(id), store.run_steps(id), store.run_logs(id));
    let run = run?.ok_or_else(|| ApiError::not_found(format!("no run {id}")))?;
    let (steps, logs) = (steps?, logs?);
    Ok(run_document(&run, &steps, &logs))
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    workflow: Option<String>,
    status: Option<String>,
    limit: Option<u32>,
}

/// `GET /v1/runs?workflow=&status=&limit=`: newest first.
pub async fn list(State(state): State<AppState>, Query(query): Query<ListQuery>) -> Result<Json<Value>, ApiError> {
    let status = match query.status.as_deref() {
        None => None,
        Some(text) => Some(text.parse::<RunStatus>().map_err(ApiError::bad_request)?),
    };
    let filter = RunFilter { workflow: query.workflow, status, limit: Some(query.limit.unwrap_or(50).min(1000)) };
    let runs = state.registry.store().list_runs(&filter).await?;
    Ok(Json(json!({ "runs": runs })))
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    id.parse().map_err(|_| ApiError::bad_request(format!("{id:?} is not a run id")))
}

/// `GET /v1/runs/{id}`: the run and its step executions.
pub async fn get(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(document(&state, parse_id(&id)?).await?))
}

/// `POST /v1/runs/{id}/cancel`: 202 while it stops (instances are interrupted at once,
/// here or on whichever host runs it), 409 when it already finished.
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id = parse_id(&id)?;
    let run = state.registry.store().get_run(id).await?.ok_or_else(|| ApiError::not_found(format!("no run {id}")))?;
    if run.status.is_terminal() {
        return Err(ApiError::new(StatusCode::CONFLICT, format!("run {id} already finished ({})", run.status)));
    }
    // Recorded first, so that another host running it (or resuming it later) stops it too.
    if !state.registry.store().request_cancel(id).await? {
        return Err(ApiError::new(StatusCode::CONFLICT, format!("run {id} already finished")));
    }
    state.runner.cancel(id);
    Ok((StatusCode::ACCEPTED, Json(json!({ "run_id": id, "status": "cancelling" }))))
}
