//! `GET /api/events`: the ingestion events as Server-Sent Events. Each client
//! gets its own connection that LISTENs on `tripload_events`; it subscribes
//! first, then catches up from `ingestion_events` (after `Last-Event-ID`, or
//! the last `catch_up` events), then passes on each notification of an event
//! it has not sent (`notify::subscribe`). `id:` is the event's id in the table, `data:` the v1 payload.

use crate::notify::subscribe::{Past, Subscription};
use crate::serve::api::Params;
use crate::serve::error::ApiError;
use crate::serve::Shared;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::{Stream, StreamExt};
use std::collections::VecDeque;

/// Events sent from the table in one catch-up at most.
const MAX_CATCH_UP: i64 = 10_000;

/// One stream's state: what to send next, and the connection that feeds it
/// (dropped with the stream, which ends the LISTEN session).
struct Feed {
    sub: Subscription,
    _permit: tokio::sync::OwnedSemaphorePermit,
    backlog: VecDeque<(i64, String)>,
}

impl Feed {
    async fn next(mut self) -> Option<(SseEvent, Feed)> {
        loop {
            if let Some((id, payload)) = self.backlog.pop_front() {
                return Some((sse(id, payload), self));
            }
            let payload = self.sub.live.recv().await?;
            let Some(id) = payload_id(&payload) else {
                continue;
            };
            if self.sub.is_new(Some(id)) {
                return Some((sse(id, payload), self));
            }
        }
    }
}

fn sse(id: i64, payload: String) -> SseEvent {
    SseEvent::default().id(id.to_string()).data(payload)
}

fn payload_id(payload: &str) -> Option<i64> {
    serde_json::from_str::<serde_json::Value>(payload)
        .ok()?
        .get("id")?
        .as_i64()
}

/// Where to resume: the `Last-Event-ID` header (a reconnecting browser), or
/// the `after` parameter.
fn resume_from(headers: &HeaderMap, p: &Params) -> Result<Option<i64>, ApiError> {
    let raw = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or(p.get("after"));
    raw.map(|s| {
        s.trim().parse::<i64>().map_err(|_| {
            ApiError::BadRequest(format!("Last-Event-ID / after={s:?}: expected an event id"))
        })
    })
    .transpose()
}

/// `GET /api/events[?catch_up=N][&after=ID]`.
pub async fn events(
    State(state): State<Shared>,
    headers: HeaderMap,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, std::convert::Infallible>>>, ApiError> {
    let p = Params::parse(q, &["catch_up", "after"])?;
    let after = resume_from(&headers, &p)?;
    let catch_up = match p.get("catch_up") {
        None => 20,
        Some(s) => match s.parse::<i64>() {
            Ok(n) if (0..=MAX_CATCH_UP).contains(&n) => n,
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "catch_up={s:?}: expected a whole number from 0 to {MAX_CATCH_UP}"
                )))
            }
        },
    };
    let permit = std::sync::Arc::clone(&state.streams)
        .try_acquire_owned()
        .map_err(|_| ApiError::Busy("too many event streams open; try again later".into()))?;
    let feed = subscribe(&state.conninfo, after, catch_up, permit).await?;
    let stream = futures_util::stream::unfold(feed, Feed::next).map(Ok);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// LISTEN, then read what came before (nothing falls between the two).
async fn subscribe(
    conninfo: &str,
    after: Option<i64>,
    catch_up: i64,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Result<Feed, ApiError> {
    let mut sub = Subscription::open(conninfo).await?;
    let past = match after {
        Some(id) => Past::After {
            id,
            limit: MAX_CATCH_UP,
        },
        None => Past::Last(catch_up),
    };
    let backlog = sub.past(past).await?.into();
    Ok(Feed {
        sub,
        _permit: permit,
        backlog,
    })
}
