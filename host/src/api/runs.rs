//! `/v1/runs` and `POST /v1/workflows/{name}/runs`: start runs of deployed workflows
//! (idempotently with an `Idempotency-Key`), read them back with their step executions,
//! cancel and redrive them.

use super::{ApiError, AppState, MAX_JSON_BYTES, read_json};
use crate::cluster::StartOptions;
use crate::store::{RunFilter, RunStatus, StepFilter, StepRecord, StepStatus, paged_document, step_documents};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

#[derive(Debug, Deserialize)]
pub struct StartQuery {
    #[serde(default)]
    wait: bool,
}

/// Longest `Idempotency-Key` accepted.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;

/// `POST /v1/workflows/{name}/runs` with `{"input": ..., "version": optional}`: 202
/// `{run_id}` once the run is accepted (durably); with `?wait=true`, the finished run's
/// document (as `braid run --output json` prints it). With an `Idempotency-Key` header,
/// a key already used for this workflow answers 200 with that run instead of starting
/// another.
pub async fn start(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<StartQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => match value.to_str() {
            Ok(key) if !key.trim().is_empty() && key.len() <= MAX_IDEMPOTENCY_KEY_BYTES => Some(key.to_owned()),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "the Idempotency-Key header must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} bytes of visible ASCII"
                )));
            }
        },
    };
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
    crate::limits::check_run_input(&input, "input").map_err(|problem| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, problem.to_string())
            .with_details(json!({ "path": problem.path() }))
    })?;
    let plan = state.registry.plan(&name, version.as_deref()).await?;
    plan.workflow.check_input(&input).map_err(|invalid| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "the input does not match the workflow's input_schema")
            .with_details(json!({ "problems": invalid.problems }))
    })?;
    let trace_parent = trace_parent(&headers)?;
    let options = StartOptions { idempotency_key: key.as_deref(), trace_parent: trace_parent.as_deref() };
    let started = state.runner.start(plan, input.into(), options).await?;
    let status = if started.created { StatusCode::ACCEPTED } else { StatusCode::OK };
    if !query.wait {
        return Ok((status, Json(json!({ "run_id": started.run_id, "created": started.created }))));
    }
    let run = state.runner.wait(started.run_id, started.task).await?;
    Ok((StatusCode::OK, Json(document(&state, run.id).await?)))
}

/// The W3C `traceparent` header, if any: `00-<32 hex trace id>-<16 hex parent id>-<2 hex
/// flags>` (lowercase; ids not all zeros).
fn trace_parent(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("traceparent") else { return Ok(None) };
    let text = value.to_str().unwrap_or_default().trim();
    let parts: Vec<&str> = text.split('-').collect();
    let hex = |part: &str, len: usize| {
        part.len() == len && part.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1].bytes().any(|b| b != b'0')
        && parts[2].bytes().any(|b| b != b'0');
    if !valid {
        return Err(ApiError::bad_request(
            "the traceparent header must be W3C trace context: 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>",
        ));
    }
    Ok(Some(text.to_owned()))
}

/// Most step executions in one `…/steps` page: memory per request stays bounded however
/// wide the run.
pub const MAX_STEPS_PAGE: u32 = 1000;
/// Step executions in a run document (the first page; `steps_next` leads to the rest).
pub const DOCUMENT_STEPS: u32 = 100;

/// The run's document as recorded, with its first page of step executions (the same answer
/// as `GET /v1/runs/{id}`).
async fn document(state: &AppState, id: Uuid) -> Result<Value, ApiError> {
    let store = state.registry.store();
    let filter = StepFilter { limit: DOCUMENT_STEPS, ..StepFilter::default() };
    let (run, page) = tokio::join!(store.get_run(id), store.steps_page(id, &filter));
    let run = run?.ok_or_else(|| ApiError::not_found(format!("no run {id}")))?;
    let page = page?;
    let next = next_cursor(&page, filter.limit);
    // A run that fits in one page is counted from the page (most runs: one query fewer).
    let (details, counts) = match next {
        None => {
            let mut counts = std::collections::BTreeMap::new();
            for step in &page {
                *counts.entry(step.status.as_str().to_owned()).or_insert(0i64) += 1;
            }
            (store.details_of(&page).await?, counts)
        }
        Some(_) => {
            let (details, counts) = tokio::join!(store.details_of(&page), store.step_counts(id));
            (details?, counts?)
        }
    };
    Ok(paged_document(&run, &page, &details, &counts, next))
}

/// The cursor of the page after `page`: its last id, when the page is full.
fn next_cursor(page: &[StepRecord], limit: u32) -> Option<Uuid> {
    (page.len() == limit as usize).then(|| page.last().map(|step| step.id)).flatten()
}

#[derive(Debug, Deserialize)]
pub struct StepsQuery {
    /// `false`: leave out each execution's input and output.
    data: Option<bool>,
    after: Option<String>,
    limit: Option<u32>,
    status: Option<String>,
    step_id: Option<String>,
    parent: Option<String>,
}

/// `GET /v1/runs/{id}/steps?after=&limit=&status=&step_id=&parent=`: a page of the run's
/// step executions in creation order (`limit` 1 to 1000, default 100), with their logs, and
/// `next`, the `after` of the next page (`null` on the last).
pub async fn steps(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<StepsQuery>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let cursor = |field: &str, value: Option<String>| {
        value
            .map(|v| {
                v.parse::<Uuid>()
                    .map_err(|_| ApiError::bad_request(format!("{field}: {v:?} is not a step execution id")))
            })
            .transpose()
    };
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_STEPS_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!("limit: must be from 1 to {MAX_STEPS_PAGE}, not {limit}")));
    }
    let status = match query.status.as_deref() {
        None => None,
        Some(text) => Some(text.parse::<StepStatus>().map_err(|err| ApiError::bad_request(format!("status: {err}")))?),
    };
    let filter = StepFilter {
        after: cursor("after", query.after)?,
        limit,
        status,
        step_id: query.step_id,
        top_level: query.parent.as_deref() == Some("top"),
        without_data: query.data == Some(false),
        parent: match query.parent.as_deref() {
            Some("top") => None,
            _ => cursor("parent", query.parent)?,
        },
    };
    let store = state.registry.store();
    if store.get_run(id).await?.is_none() {
        return Err(ApiError::not_found(format!("no run {id}")));
    }
    let page = store.steps_page(id, &filter).await?;
    let details = store.details_of(&page).await?;
    let next = next_cursor(&page, limit);
    Ok(Json(json!({ "run_id": id, "steps": step_documents(&page, &details), "next": next })))
}

/// `GET /v1/runs/{id}/steps/{step}`: one step execution with its logs and HTTP requests.
pub async fn step(
    State(state): State<AppState>,
    Path((id, step)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let step_id =
        step.parse::<Uuid>().map_err(|_| ApiError::bad_request(format!("{step:?} is not a step execution id")))?;
    let store = state.registry.store();
    let row = store.step(step_id).await?.filter(|row| row.run_id == id);
    let row = row.ok_or_else(|| ApiError::not_found(format!("no step execution {step_id} in run {id}")))?;
    let rows = [row];
    let details = store.details_of(&rows).await?;
    Ok(Json(step_documents(&rows, &details).remove(0)))
}

/// `GET /v1/runs/{id}/blocks`: the run's columns (`run`) and where it stands block by block
/// — the run's top level (`block: null`), then every block execution (parallel, map,
/// switch, loop) in creation order — each with the count of the executions directly inside
/// it by status. What the UI's run page draws first, in one query of counts.
pub async fn blocks(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let store = state.registry.store();
    let run = store.get_run_state(id).await?.ok_or_else(|| ApiError::not_found(format!("no run {id}")))?;
    let blocks: Vec<Value> = store
        .progress(id)
        .await?
        .into_iter()
        .map(|block| {
            let counts: serde_json::Map<String, Value> =
                block.counts.iter().map(|(status, n)| (status.as_str().to_owned(), json!(n))).collect();
            json!({ "block": block.block, "step_id": block.step_id, "step_type": block.step_type, "counts": counts })
        })
        .collect();
    // The run's columns without its input and output (null), which can be large.
    Ok(Json(json!({ "run_id": id, "run": crate::store::run_columns(&run), "blocks": blocks })))
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

pub(super) fn parse_id(id: &str) -> Result<Uuid, ApiError> {
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

/// `POST /v1/runs/{id}/redrive`: a failed or cancelled run runs again on its pinned
/// workflow and agents, reusing every step that succeeded: 202 once it is queued (a host
/// with room claims it), 409 when the run is still unfinished or succeeded.
pub async fn redrive(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id = parse_id(&id)?;
    let store = state.registry.store();
    match store.redrive(id).await? {
        Some(run) => {
            state.runner.wake();
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({ "run_id": id, "status": run.status, "redrive_count": run.redrive_count })),
            ))
        }
        None => {
            let run = store.get_run(id).await?.ok_or_else(|| ApiError::not_found(format!("no run {id}")))?;
            Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("run {id} is {}: only failed or cancelled runs can be redriven", run.status),
            ))
        }
    }
}
