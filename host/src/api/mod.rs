//! The HTTP API (axum), JSON under `/v1`: deploy agents and workflows by name and version,
//! start, read and cancel runs, list the live hosts; `/healthz` and `/metrics` beside it.
//!
//! `router` builds the routes over an [`AppState`]; runs are executed by the host's
//! [`Runner`] (see [`crate::cluster`]). Request bodies are read
//! with explicit size limits so that every refusal, oversized bodies included, answers in
//! the same JSON error shape.

mod agents;
mod error;
mod events;
mod runs;
mod ui;
mod workflows;

pub use error::ApiError;

use crate::cluster::Runner;
use crate::metrics::METRICS;
use crate::registry::Registry;
use crate::sandbox::Sandbox;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use std::sync::Arc;

/// Largest agent component accepted by `PUT /v1/agents/...`.
pub const MAX_AGENT_BYTES: usize = 64 << 20;
/// Largest JSON body accepted elsewhere (a run's input is capped again by the sandbox).
pub const MAX_JSON_BYTES: usize = 16 << 20;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
    pub runner: Arc<Runner>,
    pub sandbox: Arc<Sandbox>,
    /// When set, every `/v1` request must carry `Authorization: Bearer <token>`.
    pub token: Option<Arc<str>>,
    /// When set, `GET /metrics` must carry `Authorization: Bearer <token>`.
    pub metrics_token: Option<Arc<str>>,
}

/// Shortest bearer token accepted (`BRAID_API_TOKEN`, `--metrics-token`).
pub const MIN_TOKEN_CHARS: usize = 16;

/// Checks a token an operator configured: long enough to resist guessing, and sendable in
/// a header as it is (no whitespace or control characters, which are usually a pasting
/// accident such as a trailing newline).
pub fn check_token(name: &str, token: &str) -> Result<(), String> {
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{name} holds whitespace or control characters; a bearer token must be one visible word"));
    }
    if token.chars().count() < MIN_TOKEN_CHARS {
        return Err(format!("{name} is shorter than {MIN_TOKEN_CHARS} characters; use a long random token"));
    }
    Ok(())
}

/// The API's routes.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/agents", get(agents::list))
        .route("/agents/{name}", get(agents::versions))
        .route("/agents/{name}/{version}", put(agents::deploy).get(agents::get))
        .route("/workflows", get(workflows::list))
        .route("/workflows/{name}", get(workflows::versions))
        .route("/workflows/{name}/{version}", put(workflows::deploy).get(workflows::get))
        .route("/workflows/{name}/runs", post(runs::start))
        .route("/runs", get(runs::list))
        .route("/runs/{id}", get(runs::get))
        .route("/runs/{id}/steps", get(runs::steps))
        .route("/runs/{id}/cancel", post(runs::cancel))
        .route("/runs/{id}/redrive", post(runs::redrive))
        .route("/runs/{id}/events", get(events::events))
        .route("/runs/{id}/blocks", get(runs::blocks))
        .route("/runs/{id}/steps/{step}", get(runs::step))
        .route("/hosts", get(hosts))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .nest("/v1", v1)
        .route("/", get(ui::index))
        .route("/ui/app.js", get(ui::script))
        .route("/ui/app.css", get(ui::style))
        .route("/healthz", get(healthz))
        .route(
            "/metrics",
            get(metrics).route_layer(middleware::from_fn_with_state(state.clone(), require_metrics_token)),
        )
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async { ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed") })
        // Handlers read bodies themselves, with their own limits and JSON errors.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    authorized(state.token.as_deref(), request, next).await
}

async fn require_metrics_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    authorized(state.metrics_token.as_deref(), request, next).await
}

/// Passes `request` on if it carries `token` (or no token is required). A request without
/// it is answered before a byte of its body is read — an unauthenticated upload costs the
/// host no memory — and its connection is closed, since the unread body cannot be skipped.
async fn authorized(token: Option<&str>, request: Request, next: Next) -> Response {
    if let Some(token) = token {
        let given = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let expected = format!("Bearer {token}");
        if given.map(|g| constant_time_eq(g.as_bytes(), expected.as_bytes())) != Some(true) {
            let mut response = ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong bearer token").into_response();
            response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
            return response;
        }
    }
    next.run(request).await
}

/// Compares without an early exit, so that timing does not reveal how much matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `GET /v1/hosts`: the live hosts on this database, with their last heartbeat, instance
/// slots in use, runs owned and units taken from and offered to other hosts.
async fn hosts(State(state): State<AppState>) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let hosts = state.registry.store().live_hosts().await?;
    Ok(axum::Json(serde_json::json!({ "hosts": hosts })))
}

/// `GET /healthz`: 200 while the database answers (within 2 s), 503 otherwise.
async fn healthz(State(state): State<AppState>) -> Response {
    let checked = tokio::time::timeout(std::time::Duration::from_secs(2), state.registry.store().ping()).await;
    let active = state.runner.active();
    let host = &state.runner.config().host_id;
    match checked {
        Ok(Ok(())) => {
            axum::Json(serde_json::json!({ "status": "ok", "database": "ok", "host_id": host, "active_runs": active }))
                .into_response()
        }
        Ok(Err(err)) => {
            tracing::warn!("health check: the database does not answer: {err}");
            unhealthy(host, "the database does not answer")
        }
        Err(_) => unhealthy(host, "the database did not answer within 2 s"),
    }
}

fn unhealthy(host: &str, database: &str) -> Response {
    let body = serde_json::json!({ "status": "unavailable", "database": database, "host_id": host });
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    METRICS.live_instances.set(state.sandbox.live_instances() as i64);
    METRICS.instance_capacity.set(i64::from(state.sandbox.config().max_instances));
    METRICS.pooling.set(i64::from(state.sandbox.is_pooling()));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], METRICS.render()).into_response()
}

/// Reads a request body up to `limit` bytes, or answers 413.
pub(crate) async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the request body is over the limit of {limit} bytes"))
    })
}

/// Reads a JSON body up to `limit` bytes.
pub(crate) async fn read_json(body: Body, limit: usize) -> Result<serde_json::Value, ApiError> {
    let bytes = read_body(body, limit).await?;
    if bytes.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    // Deeper than serde reads is deeper than any limit; each handler checks its parts.
    serde_json::from_slice(&bytes).map_err(|err| match err.to_string().starts_with("recursion limit exceeded") {
        true => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the body nests deeper than {} levels of arrays and objects", crate::limits::MAX_JSON_DEPTH),
        ),
        false => ApiError::bad_request(format!("the body is not valid JSON: {err}")),
    })
}
