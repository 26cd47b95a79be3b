//! `map` steps: one sandboxed run of the body per item of a list computed at run time,
//! under `max_parallelism` and the same join policies as parallel blocks (the shared
//! [`fan_out`]). Items start lazily as earlier ones finish, so a 10,000-item map holds at
//! most `max_parallelism` instances and tasks at once, and its rows reach the database in
//! group commits, not a round trip per item.

use super::parallel::{Finished, block_ending, fan_out};
use super::scope::{bind, view};
use super::{
    Ended, Placement, RunContext, StepEnd, Stop, failed, finish_row, new_row, record_not_started, run_sequence,
};
use crate::json::JsonDoc;
use crate::store::{StepDetails, StepStatus, StepWrite, StoreError};
use crate::workflow::{Binding, MapBlock, Scope, Step};
use futures::future::BoxFuture;
use serde_json::{Value, json};
use std::sync::Arc;

/// At most this many item errors are quoted in a failed map's error.
const QUOTED_FAILURES: usize = 5;

pub(super) async fn run(
    context: &Arc<RunContext>,
    step: &Step,
    map: &MapBlock,
    scope: &Scope,
    placement: &Placement,
    stop: &Stop,
) -> Result<StepEnd, StoreError> {
    let mut row = new_row(context, step, placement);
    row.join_policy = Some(map.join_policy.label());
    let rendered = map.items.render_async(scope).await.map(JsonDoc::into_value);
    let items = match rendered {
        Ok(Value::Array(items)) => {
            let host = context.engine.limits.max_map_items;
            let (limit, whose) = match map.max_items {
                Some(own) if own <= host => (own, "the map's max_items"),
                _ => (host, "the host's --max-map-items"),
            };
            if items.len() as u64 > limit {
                let error = format!("items: the list has {} items, over the limit of {limit} ({whose})", items.len());
                return Ok(fail(context, step, row, error));
            }
            Arc::new(items)
        }
        Ok(other) => return Ok(fail(context, step, row, format!("items: expected a list, got {other}"))),
        Err(err) => return Ok(fail(context, step, row, format!("items: {err}"))),
    };
    row.input = Some(json!({ "items": items.len() }).into());
    let _ = context.write(row.clone(), StepDetails::default(), StepWrite::Insert);

    let anchor = Arc::new(row.clone());
    let item_placement = {
        let anchor = anchor.clone();
        move |index: usize| Placement::inside(&anchor, None, Some(index as i64), &format!("[{index}]"))
    };
    let start = {
        let (context, body, scope, items, item_placement) =
            (context.clone(), map.body.clone(), scope.clone(), items.clone(), item_placement.clone());
        move |index: usize, map_cancel| -> BoxFuture<'static, Result<Finished, StoreError>> {
            let mut item_scope = scope.clone();
            bind(&mut item_scope, "item", Binding::json(items[index].clone().into()));
            bind(&mut item_scope, "index", Binding::json(json!(index).into()));
            let task = run_sequence(context.clone(), body.clone(), item_scope, item_placement(index), map_cancel);
            Box::pin(async move {
                let (ended, _, last_row) = task.await?;
                Ok(Finished { ended, scope: None, last_row })
            })
        }
    };
    let end = fan_out(
        items.len(),
        map.max_parallelism,
        map.join_policy,
        map.tolerated_failures,
        &stop.token,
        start,
        |index| record_not_started(context, &map.body, &item_placement(index), StepStatus::Cancelled),
    )
    .await?;

    let mut failures = Vec::new();
    let outputs = end.results.iter().enumerate().map(|(index, result)| match result {
        Some(result) if result.ended.status.is_success() => result.ended.output.as_ref(),
        Some(result) => {
            if result.ended.status == StepStatus::Failed && failures.len() < QUOTED_FAILURES {
                failures.push(format!("item {index}: {}", result.ended.error.as_deref().unwrap_or("failed")));
            }
            None
        }
        None => None,
    });
    // The items' outputs, written from their texts in item order (`null` where one failed).
    let output = JsonDoc::array(outputs.collect::<Vec<_>>());
    let (status, error) = block_ending(&end, map.join_policy, stop, &failures);
    let ended = Ended { status, output: Some(output), error };
    let written = finish_row(context, row, &ended, StepDetails::default(), StepWrite::Upsert);
    Ok((ended.clone(), vec![(step.id.clone(), view(&ended))], written))
}

/// Ends a block that could not start (its row not written yet), with `error`.
pub(super) fn fail(context: &RunContext, step: &Step, row: crate::store::StepRecord, error: String) -> StepEnd {
    let ended = failed(error);
    let written = finish_row(context, row, &ended, StepDetails::default(), StepWrite::Insert);
    (ended.clone(), vec![(step.id.clone(), view(&ended))], written)
}
