//! Following the events: a LISTEN session on [`CHANNEL`] and the events
//! stored before it, for `status --follow` and the HTTP event stream.
//!
//! Subscribe first, then read the past: an event committed between the two
//! arrives both ways, and the reader skips the notification of an event the
//! past already gave ([`Subscription::is_new`]); nothing falls between them.
//! Events of concurrent loads may commit out of id order, so "already
//! given" is the set of ids read, not "an id below the newest".

use crate::db::{self, query_err, DbError};
use crate::notify::events::CHANNEL;
use futures_util::StreamExt;
use std::collections::HashSet;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_postgres::{AsyncMessage, Client};

/// A connection listening on the events channel. Dropping it ends the
/// LISTEN session.
pub struct Subscription {
    client: Client,
    /// The payloads of the notifications, in the order they came.
    pub live: UnboundedReceiver<String>,
    /// The ids of the past events read.
    given: HashSet<i64>,
}

/// Which past events to read when subscribing.
#[derive(Debug, Clone, Copy)]
pub enum Past {
    /// The newest `n`.
    Last(i64),
    /// Those after this id, at most `limit`.
    After { id: i64, limit: i64 },
}

impl Subscription {
    /// Opens a connection and LISTENs on [`CHANNEL`].
    pub async fn open(conninfo: &str) -> Result<Subscription, DbError> {
        let (client, mut connection) = db::open(conninfo).await?;
        let (tx, live) = tokio::sync::mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(m) = messages.next().await {
                match m {
                    Ok(AsyncMessage::Notification(n)) => {
                        if tx.send(n.payload().to_string()).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(
                            "the event subscription lost its database connection: {}",
                            db::error_text(&e)
                        );
                        break;
                    }
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .map_err(query_err("subscribing to events"))?;
        Ok(Subscription {
            client,
            live,
            given: HashSet::new(),
        })
    }

    /// The stored events `past` names, oldest first, as `(id, payload)`
    /// with the id inside the payload (as the notifications carry it).
    /// Later notifications of these events are not new.
    pub async fn past(&mut self, past: Past) -> Result<Vec<(i64, String)>, DbError> {
        let rows = match past {
            Past::After { id, limit } => {
                self.client
                    .query(
                        "SELECT id, (payload || jsonb_build_object('id', id))::text
                         FROM ingestion_events WHERE id > $1 ORDER BY id LIMIT $2",
                        &[&id, &limit],
                    )
                    .await
            }
            Past::Last(n) => {
                self.client
                    .query(
                        "SELECT id, payload FROM (
                             SELECT id, (payload || jsonb_build_object('id', id))::text AS payload
                             FROM ingestion_events ORDER BY id DESC LIMIT $1) last
                         ORDER BY id",
                        &[&n],
                    )
                    .await
            }
        }
        .map_err(query_err("reading past events"))?;
        let events: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        self.given.extend(events.iter().map(|e| e.0));
        Ok(events)
    }

    /// Whether a notification's event was not among the past events read
    /// (each event is notified once, so the id is forgotten after a match).
    pub fn is_new(&mut self, id: Option<i64>) -> bool {
        id.is_none_or(|id| !self.given.remove(&id))
    }
}
