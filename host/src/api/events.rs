//! `GET /v1/runs/{id}/events`: a run's changes as Server-Sent Events (see
//! [`crate::events`]): `run`, `step` and `end` events whose data is the JSON of a
//! [`RunEvent`], the current state first, ending with the run. Bounded: a subscriber that
//! does not read for [`SLOW_CLIENT`] while events wait for it is dropped, and never more than
//! [`EVENT_BUFFER`] events are held for it.

use super::{ApiError, AppState};
use crate::events::{RunEvent, RunWatch};
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::mpsc;

/// Most events held for one subscriber.
pub const EVENT_BUFFER: usize = 256;

/// How long a full buffer may wait for a subscriber to read before it is dropped.
pub const SLOW_CLIENT: Duration = Duration::from_secs(10);

pub async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id = super::runs::parse_id(&id)?;
    let Some(mut watch) = RunWatch::new(state.registry.store().clone(), id).await? else {
        return Err(ApiError::not_found(format!("no run {id}")));
    };
    let (sender, receiver) = mpsc::channel::<Event>(EVENT_BUFFER);
    tokio::spawn(async move {
        while !watch.ended() {
            let events = match watch.next().await {
                Ok(events) => events,
                Err(err) => {
                    tracing::warn!(run_id = %id, "the event stream stopped: {err}");
                    let _ = sender
                        .send_timeout(
                            Event::default().event("error").data("the records could not be read"),
                            SLOW_CLIENT,
                        )
                        .await;
                    return;
                }
            };
            for event in events {
                if sender.send_timeout(frame(&event), SLOW_CLIENT).await.is_err() {
                    // Gone, or not reading: nothing is kept for it.
                    tracing::info!(run_id = %id, "dropped a subscriber of the run's events that stopped reading");
                    return;
                }
            }
        }
    });
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|event| (Ok(event), receiver))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn frame(event: &RunEvent) -> Event {
    let data = serde_json::to_string(event).unwrap_or_else(|err| format!("{{\"error\": \"{err}\"}}"));
    Event::default().event(event.name()).data(data)
}
