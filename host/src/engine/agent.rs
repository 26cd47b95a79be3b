//! Agent steps: rendering the input, giving the agent its config, secrets and outbound HTTP
//! grants, executing in the sandbox, redacting secrets from what it hands back, and
//! retrying what a retry could help (retryable guest errors, timeouts, traps) with
//! exponential backoff — each attempt its own row, with its logs and HTTP requests.

use super::unit::{Offloaded, Unit};
use super::{Ended, Placement, ResolvedAgent, RunContext, failed, finish_row, new_row};
use crate::json::JsonDoc;
use crate::outbound::HttpCall;
use crate::sandbox::{self, ExecutionRequest, Limits, LogLine, StepContext};
use crate::secrets::Redactor;
use crate::store::{HttpCallRecord, LogRecord, Pending, StepDetails, StepRecord, StepStatus, StepWrite, StoreError};
use crate::workflow::{AgentStep, RetryPolicy, Scope, Step};
use chrono::Utc;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long an agent step runs before its "running" row is written.
const RUNNING_ROW_AFTER: Duration = Duration::from_millis(50);

/// Runs an agent step once `previous_row` (the row of the step before it, if any) is
/// committed: its first attempt makes the instance meanwhile. `None` when the sequence was
/// cancelled before the step started.
pub(super) async fn run(
    context: &Arc<RunContext>,
    step: &Step,
    agent_step: &AgentStep,
    scope: &Scope,
    placement: &Placement,
    cancel: &CancellationToken,
    previous_row: Option<Pending>,
) -> Result<Option<(Ended, Pending)>, StoreError> {
    let mut row = new_row(context, step, placement);
    let resolved = context.plan.agents.get(&agent_step.agent).cloned();
    row.agent_name = Some(resolved.as_ref().map_or_else(|| agent_step.agent.clone(), |a| a.name.clone()));
    row.agent_digest = resolved.as_ref().map(|a| a.digest.clone());

    // A rendered input is checked like one that comes in: a template can nest values or
    // build a string with a NUL, which would otherwise fail the commit it shares.
    let rendered = agent_step
        .input
        .render_async(scope)
        .await
        .map_err(|err| format!("input{}: {err}", err.subpath))
        .and_then(|input| input.check("the rendered input").map(|()| input).map_err(|p| p.to_string()));
    // A step that fails before it could start still waits for its predecessor's row.
    let not_started = async |row: StepRecord, previous_row: Option<Pending>, err: String| {
        if !super::predecessor_committed(previous_row, cancel).await? {
            return Ok(None);
        }
        let ended = failed(err);
        let row = finish_row(context, row, &ended, StepDetails::default(), StepWrite::Insert);
        Ok(Some((ended, row)))
    };
    let input = match rendered {
        Ok(input) => input,
        Err(err) => return not_started(row, previous_row, err).await,
    };
    row.input = Some(input.clone());
    let Some(resolved) = resolved else {
        // Validation resolves every agent before a run; reaching this is a bug, not input.
        let err = format!("agent {:?} was not resolved before the run", agent_step.agent);
        return not_started(row, previous_row, err).await;
    };

    let given = match Given::for_step(&context.engine.secrets, &agent_step.config, &agent_step.secrets) {
        Ok(given) => given,
        Err(err) => return not_started(row, previous_row, err).await,
    };

    let retry = agent_step.retry.unwrap_or(RetryPolicy { max_attempts: 1, ..RetryPolicy::default() });
    // `max_attempts` counts the attempts of this drive that failed, recorded ones included
    // (an attempt cut off by its host dying did not fail, and does not count).
    let key = row.step_key.clone().unwrap_or_default();
    let failures = context.previous.failures(&key);
    if failures >= retry.max_attempts
        && let Some(latest) = context.previous.latest(&key).filter(|row| row.status == StepStatus::Failed)
    {
        if !super::predecessor_committed(previous_row, cancel).await? {
            return Ok(None);
        }
        return Ok(Some((Ended::of_row(latest), super::adopt(context, latest, placement))));
    }
    let allowed = retry.max_attempts - failures;
    let mut backoff = backoff_delays(&retry);
    let mut attempt = row.attempt;
    let mut made = 1;
    let mut previous_row = previous_row;
    loop {
        let mut attempt_row = row.clone();
        attempt_row.id = Uuid::now_v7();
        attempt_row.attempt = attempt;
        attempt_row.started_at = Some(Utc::now());
        let attempted = attempt_agent(
            context,
            step,
            agent_step,
            &resolved,
            &given,
            &input,
            attempt_row,
            placement,
            cancel,
            previous_row.take(),
        )
        .await?;
        let Some((ended, retryable, written, recorded_as)) = attempted else {
            return Ok(None);
        };
        attempt = recorded_as;
        let delay = backoff.next();
        let retry_helps = ended.status == StepStatus::Failed && retryable && !cancel.is_cancelled();
        match delay {
            Some(delay) if retry_helps && made < allowed => {
                // This attempt's row is final: commit it before trying again.
                if written.committed().await.is_err() {
                    return Ok(Some((ended, Pending::ready())));
                }
                tracing::info!(step = %step.id, attempt, ?delay, "retrying");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = cancel.cancelled() => {
                        return Ok(Some((Ended { status: StepStatus::Cancelled, output: None, error: Some("cancelled while waiting to retry".into()) }, Pending::ready())));
                    }
                }
                attempt += 1;
                made += 1;
            }
            _ => return Ok(Some((ended, written))),
        }
    }
}

/// The waits between attempts: exponential from the initial backoff, capped, with jitter
/// when asked (backon).
fn backoff_delays(retry: &RetryPolicy) -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    let mut builder = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(retry.initial_backoff_ms))
        .with_max_delay(Duration::from_millis(retry.max_backoff_ms))
        .with_max_times(retry.max_attempts.saturating_sub(1) as usize);
    if retry.jitter {
        builder = builder.with_jitter();
    }
    builder.build()
}

/// What a step hands its agent besides the input: its config with the secrets it names,
/// and the redactor that keeps those secrets out of the records.
pub(super) struct Given {
    pub config: Arc<BTreeMap<String, String>>,
    pub redactor: Redactor,
}

impl Given {
    /// `config` with the secrets `secret_names` maps keys to filled in from `secrets`; a
    /// secret the host does not have fails the step before it runs, naming the secret
    /// (never a value).
    pub(super) fn for_step(
        secrets: &crate::secrets::Secrets,
        config: &BTreeMap<String, String>,
        secret_names: &BTreeMap<String, String>,
    ) -> Result<Given, String> {
        if secret_names.is_empty() {
            return Ok(Given { config: Arc::new(config.clone()), redactor: Redactor::default() });
        }
        let mut config = config.clone();
        let mut missing = Vec::new();
        for (key, name) in secret_names {
            match secrets.get(name) {
                Some(value) => {
                    config.insert(key.clone(), value.to_owned());
                }
                None => missing.push(format!("{name:?} (config key {key:?})")),
            }
        }
        if !missing.is_empty() {
            return Err(format!(
                "the host has no secret {}: set {}<NAME> in its environment or add it to its --secrets-file",
                missing.join(", "),
                crate::secrets::ENV_PREFIX
            ));
        }
        let redactor = Redactor::new(secret_names.values().filter_map(|name| secrets.get(name)));
        Ok(Given { config: Arc::new(config), redactor })
    }
}

/// One attempt: executes the agent — here, or on another host when this one has no free
/// instance slot and the step is a unit of a fan-out — and records the attempt's row.
/// Returns how it ended, whether a retry could help, the row being committed and the
/// attempt number it was recorded under (a unit taken again after its host died counts
/// further); `None` when the sequence was cancelled while `previous_row` committed.
/// With a free slot, the instance is made while `previous_row` commits.
#[allow(clippy::too_many_arguments)]
async fn attempt_agent(
    context: &Arc<RunContext>,
    step: &Step,
    agent_step: &AgentStep,
    resolved: &ResolvedAgent,
    given: &Given,
    input: &JsonDoc,
    mut row: StepRecord,
    placement: &Placement,
    cancel: &CancellationToken,
    previous_row: Option<Pending>,
) -> Result<Option<(Ended, bool, Pending, i32)>, StoreError> {
    let sandbox = &context.engine.sandbox;
    let defaults = sandbox.config().default_limits;
    let input_text = input.text().to_owned();
    let input_bytes = input_text.len() as u64;
    let limits = Limits {
        timeout: agent_step.timeout_ms.map_or(defaults.timeout, Duration::from_millis),
        memory_bytes: agent_step.memory_mb.map_or(defaults.memory_bytes, |mb| mb.saturating_mul(1 << 20)),
        fuel: agent_step.fuel.or(defaults.fuel),
    };
    let request = ExecutionRequest {
        context: StepContext {
            run_id: context.run_id.to_string(),
            step_id: step.id.clone(),
            branch: placement.branch.clone(),
            item_index: placement.item_index.and_then(|i| u32::try_from(i).ok()),
            attempt: u32::try_from(row.attempt).unwrap_or(1),
            idempotency_key: format!("{}/{}", context.run_id, row.step_key.as_deref().unwrap_or(&step.id)),
        },
        input: input_text,
        limits: Some(limits),
        config: given.config.clone(),
        cancel: cancel.clone(),
        allowed_hosts: agent_step.allowed_hosts.patterns.clone(),
    };
    let mut slot = sandbox.try_slot();
    let start = match slot.take() {
        Some(free) if previous_row.is_some() => Start::Prepared(sandbox.prepare(&resolved.agent, request, free).await),
        free => {
            slot = free;
            Start::Later(request)
        }
    };
    if previous_row.is_some() {
        if !super::predecessor_committed(previous_row, cancel).await? {
            return Ok(None);
        }
        // The step starts when its predecessor's row is durable, whatever was made before.
        row.started_at = Some(Utc::now());
    }
    let mut refused = None;
    // The single-host fast path: a free slot here is always taken. Only a unit of a
    // fan-out, on a full host, with another host up, is offered.
    if let Start::Later(request) = &start
        && slot.is_none()
        && (placement.branch.is_some() || placement.item_index.is_some())
        && sandbox.check(request).is_ok()
        && let Some(offload) = context.engine.offload.as_ref().filter(|offload| offload.may_offer())
    {
        let mut template = row.clone();
        template.input = Some(input.clone());
        let unit = Unit {
            id: Uuid::now_v7(),
            run_epoch: context.fence.epoch,
            row: template,
            agent_version: resolved.version.clone(),
            context: request.context.clone(),
            timeout_ms: u64::try_from(limits.timeout.as_millis()).unwrap_or(u64::MAX),
            memory_bytes: limits.memory_bytes,
            fuel: limits.fuel,
            config: agent_step.config.clone(),
            secrets: agent_step.secrets.clone(),
            allowed_hosts: agent_step.allowed_hosts.patterns.iter().map(|p| p.as_str().to_owned()).collect(),
        };
        match offload.run_elsewhere(unit, cancel).await {
            Ok(Offloaded::Ran { row: ran, retryable }) => {
                return Ok(Some(ran_elsewhere(context, *ran, retryable, input_bytes)));
            }
            Ok(Offloaded::NotRun(execution)) => refused = Some(execution),
            Err(err) => {
                tracing::warn!(step = %step.id, "could not offer the step to other hosts (running it here): {err}");
            }
        }
    }
    // A step still running after a moment gets a "running" row, so that long steps are
    // visible while they run. Quick steps skip it: their final row is their only write,
    // which keeps a chain of short steps at one commit each. Nothing waits for it.
    let running = async {
        if let Some(refused) = refused {
            return Ok(refused);
        }
        let request = match start {
            Start::Prepared(prepared) => return prepared?.call().await,
            Start::Later(request) => request,
        };
        let slot = match slot.take() {
            Some(slot) => slot,
            None => match sandbox.slot(cancel).await {
                Ok(slot) => slot,
                Err(refused) => return Ok(refused),
            },
        };
        sandbox.execute_in(&resolved.agent, request, slot).await
    };
    tokio::pin!(running);
    // Biased towards the execution: one that ends in its first poll never registers the
    // timer.
    let mut final_write = StepWrite::Insert;
    let result = tokio::select! {
        biased;
        result = &mut running => result,
        () = tokio::time::sleep(RUNNING_ROW_AFTER) => {
            let _ = context.write(row.clone(), StepDetails::default(), StepWrite::Insert);
            final_write = StepWrite::Upsert;
            running.await
        }
    };
    let attempt = row.attempt;
    let (row, mut ended, details, retryable) = conclude(row, result, &given.redactor);
    // A run may record only so much: the step that would take it over its cap fails
    // (its output is not kept), and so does every later one.
    let output_bytes = ended.output.as_ref().map_or(0, |output| output.text_len() as u64);
    if let Err(over) = context.record_bytes(input_bytes + output_bytes)
        && ended.status == StepStatus::Succeeded
    {
        ended = failed(over);
    }
    let written = finish_row(context, row, &ended, details, final_write);
    Ok(Some((ended, retryable, written, attempt)))
}

/// How an attempt's execution begins: with an instance made while the previous step's row
/// committed, or from its request once it has a slot.
enum Start<'a> {
    Prepared(Result<sandbox::Prepared<'a>, sandbox::ExecuteError>),
    Later(ExecutionRequest),
}

/// A unit another host ran and recorded: how it ended, counted against the run's cap like
/// any step (over it, the row is written again as failed, without its output).
fn ran_elsewhere(
    context: &RunContext,
    ran: StepRecord,
    retryable: bool,
    input_bytes: u64,
) -> (Ended, bool, Pending, i32) {
    let attempt = ran.attempt;
    let ended = Ended::of_row(&ran);
    let output_bytes = ended.output.as_ref().map_or(0, |output| output.text_len() as u64);
    if let Err(over) = context.record_bytes(input_bytes + output_bytes)
        && ended.status == StepStatus::Succeeded
    {
        let ended = failed(over);
        let written = finish_row(context, ran, &ended, StepDetails::default(), StepWrite::Upsert);
        return (ended, false, written, attempt);
    }
    (ended, retryable, Pending::ready(), attempt)
}

/// What an execution (or a refusal to start one) leaves for the attempt's row: the row
/// with its outcome and figures, how the step ended, the logs and HTTP requests to record
/// with it, and whether a retry could help. The step's secrets are redacted from all of it.
pub(super) fn conclude(
    mut row: StepRecord,
    result: Result<sandbox::Execution, sandbox::ExecuteError>,
    redactor: &Redactor,
) -> (StepRecord, Ended, StepDetails, bool) {
    let mut execution = match result {
        Ok(execution) => execution,
        Err(err) => return (row, failed(err.to_string()), StepDetails::default(), false),
    };
    redact(redactor, &mut execution);
    row.outcome = Some(execution.outcome.as_str().to_owned());
    row.queued_us = Some(micros(execution.queued));
    row.instantiate_us = Some(micros(execution.instantiate));
    row.execute_us = Some(micros(execution.execute));
    row.fuel_consumed = execution.fuel_consumed.map(|fuel| i64::try_from(fuel).unwrap_or(i64::MAX));
    row.memory_peak_bytes = Some(i64::try_from(execution.memory_peak_bytes).unwrap_or(i64::MAX));
    let ended = Ended {
        status: match execution.outcome {
            sandbox::Outcome::Succeeded => StepStatus::Succeeded,
            sandbox::Outcome::Cancelled => StepStatus::Cancelled,
            _ => StepStatus::Failed,
        },
        output: execution.output,
        error: execution.error,
    };
    let details = StepDetails {
        logs: log_records(row.id, execution.logs),
        http_calls: call_records(row.id, execution.http_calls),
    };
    (row, ended, details, execution.retryable)
}

/// Takes the step's secrets out of everything of `execution` that is recorded or passed on.
fn redact(redactor: &Redactor, execution: &mut sandbox::Execution) {
    if redactor.is_empty() {
        return;
    }
    if let Some(output) = execution.output.take() {
        let mut value = output.into_value();
        redactor.json(&mut value);
        execution.output = Some(JsonDoc::from_value(value));
    }
    if let Some(error) = &mut execution.error {
        redactor.in_place(error);
    }
    for line in &mut execution.logs {
        redactor.in_place(&mut line.message);
    }
    for call in &mut execution.http_calls {
        redactor.in_place(&mut call.path);
        redactor.in_place(&mut call.host);
        if let Some(error) = &mut call.error {
            redactor.in_place(error);
        }
    }
}

fn call_records(step_execution_id: Uuid, calls: Vec<HttpCall>) -> Vec<HttpCallRecord> {
    calls
        .into_iter()
        .enumerate()
        .map(|(seq, call)| HttpCallRecord {
            step_execution_id,
            seq: i32::try_from(seq).unwrap_or(i32::MAX),
            method: call.method,
            scheme: call.scheme,
            host: call.host,
            port: i32::from(call.port),
            path: call.path,
            status: call.status.map(i32::from),
            error: call.error,
            bytes_out: i64::try_from(call.bytes_out).unwrap_or(i64::MAX),
            bytes_in: i64::try_from(call.bytes_in).unwrap_or(i64::MAX),
            duration_us: i64::try_from(call.duration_us).unwrap_or(i64::MAX),
            started_at: call.started_at,
        })
        .collect()
}

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

fn log_records(step_execution_id: Uuid, lines: Vec<LogLine>) -> Vec<LogRecord> {
    lines
        .into_iter()
        .enumerate()
        .map(|(seq, line)| LogRecord {
            step_execution_id,
            seq: i32::try_from(seq).unwrap_or(i32::MAX),
            level: line.level.as_str().to_owned(),
            source: serde_json::to_value(line.source)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            message: line.message,
            logged_at: line.logged_at.into(),
        })
        .collect()
}
