//! OpenTelemetry traces of runs, exported over OTLP/HTTP when the standard variables ask for
//! it (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; protobuf by
//! default, `OTEL_EXPORTER_OTLP_PROTOCOL=http/json` for JSON; `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_SERVICE_NAME`). Off otherwise, at no cost: nothing here runs.
//!
//! One trace per run, built from its records when it ends — so that its spans nest exactly
//! as the steps do and carry their recorded times, whichever hosts ran its units: the run,
//! each block execution (parallel, map, switch, loop), a span per branch, item or iteration
//! inside a block, and each agent step execution (one per attempt), with the run id, step id, branch,
//! item index, agent digest, outcome, fuel and peak memory as attributes and the agent's log
//! lines as span events. A run started with a `traceparent` is a child of that trace.
//!
//! What it does not own: where runs end (the runner calls [`Telemetry::export_run`]).

use crate::store::{LogRecord, RunRecord, StepRecord, StepStatus};
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;
use uuid::Uuid;

/// Why traces cannot be exported as configured.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTEL_EXPORTER_OTLP_PROTOCOL={0:?} is not supported: use http/protobuf (the default) or http/json")]
    Protocol(String),
    #[error("could not set up the OTLP exporter: {0}")]
    Exporter(String),
}

/// The trace exporter of a host.
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Telemetry(OTLP)")
    }
}

impl Telemetry {
    /// The exporter the environment asks for; `None` when it asks for none.
    pub fn from_env() -> Result<Option<Telemetry>, TelemetryError> {
        let configured = ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
            .iter()
            .any(|name| std::env::var(name).is_ok_and(|value| !value.trim().is_empty()));
        if !configured {
            return Ok(None);
        }
        let protocol = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or_default();
        let protocol = match protocol.trim() {
            "" | "http/protobuf" => Protocol::HttpBinary,
            "http/json" => Protocol::HttpJson,
            other => return Err(TelemetryError::Protocol(other.to_owned())),
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(protocol)
            .build()
            .map_err(|err| TelemetryError::Exporter(err.to_string()))?;
        let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "braid".to_owned());
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(service).build())
            .build();
        let tracer = provider.tracer("braid");
        Ok(Some(Telemetry { provider, tracer }))
    }

    /// Builds run `run`'s trace from its records and sends it (blocking: call it off the
    /// async threads). `trace_parent` is the `traceparent` the run was started with.
    pub fn export_run(&self, run: &RunRecord, steps: &[StepRecord], logs: &[LogRecord], trace_parent: Option<&str>) {
        let parent = match trace_parent {
            Some(header) => {
                use opentelemetry::propagation::TextMapPropagator as _;
                let carrier = HashMap::from([("traceparent".to_owned(), header.to_owned())]);
                opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&carrier)
            }
            None => Context::new(),
        };
        let started = run.started_at.unwrap_or(run.created_at);
        let finished = run.finished_at.unwrap_or(started);
        let run_span = self
            .tracer
            .span_builder(format!("run {}", run.workflow_name))
            .with_kind(SpanKind::Internal)
            .with_start_time(SystemTime::from(started))
            .with_attributes([
                KeyValue::new("braid.run_id", run.id.to_string()),
                KeyValue::new("braid.workflow", run.workflow_name.clone()),
                KeyValue::new("braid.workflow_version", run.workflow_version.clone()),
                KeyValue::new("braid.status", run.status.as_str()),
            ])
            .start_with_context(&self.tracer, &parent);
        let run_context = parent.with_span(run_span);
        if let Some(error) = &run.error {
            run_context.span().set_status(Status::error(error.clone()));
        }

        // Each branch or item of a block gets a span of its own, spanning its rows.
        let mut groups: BTreeMap<(Uuid, String), (SystemTime, SystemTime)> = BTreeMap::new();
        for step in steps {
            if let (Some(block), Some(group)) = (step.parent_step_id, group_of(step)) {
                let (start, end) = times(step);
                let span = groups.entry((block, group)).or_insert((start, end));
                span.0 = span.0.min(start);
                span.1 = span.1.max(end);
            }
        }
        let mut logs_of: HashMap<Uuid, Vec<&LogRecord>> = HashMap::new();
        for log in logs {
            logs_of.entry(log.step_execution_id).or_default().push(log);
        }

        // Rows come in creation order, so a block's row comes before the rows inside it.
        let mut contexts: HashMap<Uuid, Context> = HashMap::new();
        let mut group_contexts: HashMap<(Uuid, String), Context> = HashMap::new();
        let mut ends: Vec<(Context, SystemTime)> = Vec::new();
        for step in steps {
            let parent = match (step.parent_step_id, group_of(step)) {
                (Some(block), Some(group)) => {
                    let key = (block, group.clone());
                    if !group_contexts.contains_key(&key) {
                        let block_context = contexts.get(&block).unwrap_or(&run_context).clone();
                        let (start, end) = groups[&key];
                        let span = self
                            .tracer
                            .span_builder(group)
                            .with_start_time(start)
                            .with_attributes(placement(run, step))
                            .start_with_context(&self.tracer, &block_context);
                        let context = block_context.with_span(span);
                        ends.push((context.clone(), end));
                        group_contexts.insert(key.clone(), context);
                    }
                    group_contexts[&key].clone()
                }
                (Some(block), None) => contexts.get(&block).unwrap_or(&run_context).clone(),
                (None, _) => run_context.clone(),
            };
            let (start, end) = times(step);
            let mut attributes = placement(run, step);
            attributes.push(KeyValue::new("braid.step_type", step.step_type.clone()));
            attributes.push(KeyValue::new("braid.status", step.status.as_str()));
            attributes.push(KeyValue::new("braid.attempt", i64::from(step.attempt)));
            let optional = [
                ("braid.agent", step.agent_name.clone().map(opentelemetry::Value::from)),
                ("braid.agent_digest", step.agent_digest.clone().map(opentelemetry::Value::from)),
                ("braid.outcome", step.outcome.clone().map(opentelemetry::Value::from)),
                ("braid.fuel_consumed", step.fuel_consumed.map(opentelemetry::Value::from)),
                ("braid.memory_peak_bytes", step.memory_peak_bytes.map(opentelemetry::Value::from)),
                ("braid.host_id", step.host_id.clone().map(opentelemetry::Value::from)),
                ("braid.join_policy", step.join_policy.clone().map(opentelemetry::Value::from)),
            ];
            attributes.extend(optional.into_iter().filter_map(|(key, value)| Some(KeyValue::new(key, value?))));
            let name = match step.step_type.as_str() {
                "agent" => format!("step {}", step.step_id),
                kind => format!("{kind} {}", step.step_id),
            };
            let mut span = self
                .tracer
                .span_builder(name)
                .with_start_time(start)
                .with_attributes(attributes)
                .start_with_context(&self.tracer, &parent);
            for log in logs_of.get(&step.id).into_iter().flatten() {
                span.add_event_with_timestamp(
                    log.message.clone(),
                    SystemTime::from(log.logged_at),
                    vec![KeyValue::new("level", log.level.clone()), KeyValue::new("source", log.source.clone())],
                );
            }
            if step.status == StepStatus::Failed {
                span.set_status(Status::error(step.error.clone().unwrap_or_default()));
            }
            let context = parent.with_span(span);
            ends.push((context.clone(), end));
            contexts.insert(step.id, context);
        }
        for (context, end) in ends {
            context.span().end_with_timestamp(end);
        }
        run_context.span().end_with_timestamp(SystemTime::from(finished));
        if let Err(err) = self.provider.force_flush() {
            tracing::warn!(run_id = %run.id, "could not export the run's trace: {err}");
        }
    }

    /// Sends what is left (blocking).
    pub fn shutdown(&self) {
        if let Err(err) = self.provider.shutdown() {
            tracing::warn!("could not flush the trace exporter: {err}");
        }
    }
}

/// The branch or item a row sits in, as a span name: `branch b3` (a parallel branch or a
/// switch case), `item 17` (a map item or a loop iteration).
fn group_of(step: &StepRecord) -> Option<String> {
    match (&step.branch_name, step.item_index) {
        (Some(branch), _) => Some(format!("branch {branch}")),
        (None, Some(index)) => Some(format!("item {index}")),
        (None, None) => None,
    }
}

fn times(step: &StepRecord) -> (SystemTime, SystemTime) {
    let start = step.started_at.or(step.finished_at).map_or_else(SystemTime::now, SystemTime::from);
    let end = step.finished_at.map_or(start, SystemTime::from);
    (start, end.max(start))
}

/// The attributes that say where a row sits.
fn placement(run: &RunRecord, step: &StepRecord) -> Vec<KeyValue> {
    let mut attributes =
        vec![KeyValue::new("braid.run_id", run.id.to_string()), KeyValue::new("braid.step_id", step.step_id.clone())];
    if let Some(branch) = &step.branch_name {
        attributes.push(KeyValue::new("braid.branch", branch.clone()));
    }
    if let Some(index) = step.item_index {
        attributes.push(KeyValue::new("braid.item_index", index));
    }
    if let Some(key) = &step.step_key {
        attributes.push(KeyValue::new("braid.step_key", key.clone()));
    }
    attributes
}
