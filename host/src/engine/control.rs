//! `switch` and `loop` steps: decisions and repetition, both over steps run in sequence.
//!
//! A switch runs the first case whose `when` holds (or its `default`); which case ran is
//! recorded in the switch row's `input` (`{"case": "cases[1]"}`) and carried by the case's
//! rows as `branch_name`. A loop runs its steps, then evaluates `until` with `iteration`
//! (0-based) and the iteration's step outputs in scope; each iteration's rows carry the
//! iteration as `item_index`.

use super::map::fail;
use super::scope::{bind, case_view, view};
use super::{Ended, Placement, RunContext, StepEnd, Stop, finish_row, new_row, run_sequence};
use crate::json::JsonDoc;
use crate::store::{StepDetails, StepStatus, StepWrite, StoreError};
use crate::workflow::{Binding, LoopBlock, Scope, Step, SwitchBlock, Template};
use serde_json::{Value, json};
use std::sync::Arc;

/// Evaluates a condition to a boolean, or says why it could not.
pub(super) async fn holds(condition: &Template, scope: &Scope, what: &str) -> Result<bool, String> {
    match condition.render_async(scope).await.map(JsonDoc::into_value) {
        Ok(Value::Bool(holds)) => Ok(holds),
        Ok(other) => Err(format!("{what}: the condition gave {other}, not true or false")),
        Err(err) => Err(format!("{what}: {err}")),
    }
}

pub(super) async fn switch(
    context: &Arc<RunContext>,
    step: &Step,
    switch: &SwitchBlock,
    scope: &Scope,
    placement: &Placement,
    stop: &Stop,
) -> Result<StepEnd, StoreError> {
    let mut row = new_row(context, step, placement);
    let mut chosen = None;
    for (i, case) in switch.cases.iter().enumerate() {
        match holds(&case.when, scope, &format!("cases[{i}].when")).await {
            Ok(true) => {
                chosen = Some((format!("cases[{i}]"), case.steps.clone()));
                break;
            }
            Ok(false) => {}
            Err(error) => return Ok(fail(context, step, row, error)),
        }
    }
    if chosen.is_none() {
        chosen = switch.default.clone().map(|steps| ("default".to_owned(), steps));
    }
    let label = chosen.as_ref().map_or("none", |(label, _)| label.as_str()).to_owned();
    row.input = Some(json!({ "case": label }).into());
    let Some((_, steps)) = chosen else {
        // No case held and there is no default: nothing to do.
        let ended = Ended { status: StepStatus::Succeeded, output: None, error: None };
        let written = finish_row(context, row, &ended, StepDetails::default(), StepWrite::Insert);
        return Ok((ended.clone(), vec![(step.id.clone(), case_view(&ended, &label))], written));
    };
    let _ = context.write(row.clone(), StepDetails::default(), StepWrite::Insert);
    let inner = Placement::inside(&row, Some(label.clone()), placement.item_index, &format!("/{label}"));
    let (mut ended, inner_scope, last_row) =
        run_sequence(context.clone(), steps.clone(), scope.clone(), inner, stop.token.clone()).await?;
    stop.settle(&mut ended);
    if let Some(last_row) = last_row {
        last_row.committed().await?;
    }
    let mut views = inner_views(&steps, &inner_scope);
    let written = finish_row(context, row, &ended, StepDetails::default(), StepWrite::Upsert);
    views.push((step.id.clone(), case_view(&ended, &label)));
    Ok((ended, views, written))
}

/// The views of the steps in `steps` (and inside them) that `scope` holds.
fn inner_views(steps: &[Step], scope: &Scope) -> Vec<(String, Binding)> {
    steps
        .iter()
        .flat_map(super::parallel::step_ids)
        .filter_map(|id| scope.steps.get(&id).map(|view| (id, view.clone())))
        .collect()
}

pub(super) async fn repeat(
    context: &Arc<RunContext>,
    step: &Step,
    repeat: &LoopBlock,
    scope: &Scope,
    placement: &Placement,
    stop: &Stop,
) -> Result<StepEnd, StoreError> {
    let row = new_row(context, step, placement);
    let _ = context.write(row.clone(), StepDetails::default(), StepWrite::Insert);
    let mut last = Ended { status: StepStatus::Succeeded, output: None, error: None };
    let mut last_scope = scope.clone();
    let mut done = false;
    for iteration in 0..repeat.max_iterations {
        let mut iteration_scope = scope.clone();
        bind(&mut iteration_scope, "iteration", Binding::json(json!(iteration).into()));
        let inner =
            Placement::inside(&row, placement.branch.clone(), Some(i64::from(iteration)), &format!("[{iteration}]"));
        let (ended, inner_scope, last_row) =
            run_sequence(context.clone(), repeat.body.clone(), iteration_scope, inner, stop.token.clone()).await?;
        if let Some(last_row) = last_row {
            last_row.committed().await?;
        }
        last = ended;
        last_scope = inner_scope;
        if !last.status.is_success() {
            let error = last.error.take().unwrap_or_default();
            last.error = Some(format!("iteration {iteration}: {error}"));
            break;
        }
        match holds(&repeat.until, &last_scope, "until").await {
            Ok(true) => {
                done = true;
                break;
            }
            Ok(false) => {}
            Err(error) => {
                last = super::failed(error);
                break;
            }
        }
    }
    stop.settle(&mut last);
    if last.status.is_success() && !done && repeat.fail_at_max {
        last.status = StepStatus::Failed;
        last.error = Some(format!("until did not hold after {} iterations (max_iterations)", repeat.max_iterations));
    }
    let mut views = inner_views(&repeat.body, &last_scope);
    let written = finish_row(context, row, &last, StepDetails::default(), StepWrite::Upsert);
    views.push((step.id.clone(), view(&last)));
    Ok((last, views, written))
}
