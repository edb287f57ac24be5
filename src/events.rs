//! Push status events: every state change of a file is recorded in
//! `ingestion_events` and published with `NOTIFY tripload_events`, so people
//! and programs learn how ingestion goes without polling.
//!
//! Events are sent from a background task on their own connection, in order;
//! a failing event store is logged and never blocks or fails a load.

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// The NOTIFY channel.
pub const CHANNEL: &str = "tripload_events";
/// Version of the JSON payload schema (field `v`).
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A watcher took the file from the landing directory.
    Claimed,
    /// Loading began (`size_bytes`).
    Started,
    /// Every few seconds during a load (`rows`, `bytes_done`, `size_bytes`).
    Progress,
    /// Committed (`rows`, `rows_rejected`, `seconds`).
    Committed,
    /// Rolled back (`reason`; `rows_rejected`).
    Failed,
    /// Same content already loaded; nothing done.
    Skipped,
    /// A claimed file went back to the landing directory (shutdown, database down).
    Released,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Claimed => "claimed",
            Kind::Started => "started",
            Kind::Progress => "progress",
            Kind::Committed => "committed",
            Kind::Failed => "failed",
            Kind::Skipped => "skipped",
            Kind::Released => "released",
        }
    }
}

/// One event; the JSON payload of schema version 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub v: u32,
    /// Assigned by the event store (absent before it is stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    pub event: Kind,
    pub file: String,
    /// RFC 3339 UTC time of the change.
    pub at: String,
    pub host: String,
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_done: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_rejected: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Event {
    pub fn new(event: Kind, file: &str) -> Event {
        Event {
            v: SCHEMA_VERSION,
            id: None,
            event,
            file: file.to_string(),
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            host: crate::load::hostname(),
            pid: std::process::id(),
            size_bytes: None,
            bytes_done: None,
            rows: None,
            rows_rejected: None,
            seconds: None,
            reason: None,
        }
    }
}

/// NOTIFY payloads are limited to 8000 bytes; reasons are cut well below.
const MAX_REASON: usize = 2000;

/// Sends events to the store in order from a background task.
#[derive(Clone)]
pub struct Publisher {
    tx: Option<mpsc::UnboundedSender<Event>>,
}

impl Publisher {
    /// A publisher that drops everything (no database, e.g. unit tests).
    pub fn disabled() -> Publisher {
        Publisher { tx: None }
    }

    /// Starts the background sender; returns the publisher and the task to
    /// await (after dropping every publisher) so the last events are stored.
    pub fn spawn(client: tokio_postgres::Client) -> (Publisher, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
        let task = tokio::spawn(async move {
            let sql = format!(
                "WITH e AS (INSERT INTO ingestion_events (kind, file_name, payload)
                            VALUES ($1, $2, $3::text::jsonb) RETURNING id, payload)
                 SELECT pg_notify('{CHANNEL}', (payload || jsonb_build_object('id', id))::text) FROM e"
            );
            while let Some(mut e) = rx.recv().await {
                if let Some(r) = e.reason.as_mut() {
                    if r.len() > MAX_REASON {
                        let mut end = MAX_REASON;
                        while !r.is_char_boundary(end) {
                            end -= 1;
                        }
                        r.truncate(end);
                        r.push('…');
                    }
                }
                let payload = match serde_json::to_string(&e) {
                    Ok(p) => p,
                    Err(err) => {
                        tracing::warn!("cannot encode event: {err}");
                        continue;
                    }
                };
                if let Err(err) = client
                    .execute(&sql, &[&e.event.as_str(), &e.file, &payload])
                    .await
                {
                    tracing::warn!(
                        "cannot publish {} event for {}: {err}",
                        e.event.as_str(),
                        e.file
                    );
                }
            }
        });
        (Publisher { tx: Some(tx) }, task)
    }

    pub fn publish(&self, e: Event) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_versioned_and_skips_absent_fields() {
        let mut e = Event::new(Kind::Committed, "a.csv");
        e.rows = Some(100);
        let json = serde_json::to_string(&e).unwrap();
        assert!(
            json.starts_with("{\"v\":1,\"event\":\"committed\",\"file\":\"a.csv\""),
            "{json}"
        );
        assert!(json.contains("\"rows\":100") && !json.contains("reason"));
        let back: Event = serde_json::from_str(&json).unwrap();
        assert_eq!(back, e);
    }
}
