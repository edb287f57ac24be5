//! Push status events: every state change of a file is recorded in
//! `ingestion_events` and published with `NOTIFY tripload_events`, so people
//! and programs learn how ingestion goes without polling.
//!
//! Events are sent from a background task on their own connection, in order;
//! a failing event store is logged and never blocks or fails a load. Before
//! the process ends, [`Publisher::flush`] waits (a bounded time) until every
//! event published so far is stored. [`prune`] keeps the table to the
//! retention period, in small batches.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
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
    /// Not a regular file (symlink, FIFO, device, directory): never opened (`reason`).
    Refused,
    /// Watch mode: failed for environment reasons `--max-attempts` times in a
    /// row; moved to `failed/` with its history (`reason`).
    Quarantined,
    /// A loaded file was removed (`tripload unload`): `rows` trips; `reason`
    /// says who removed it.
    Unloaded,
    /// A loaded file was replaced by a new one in the new file's transaction
    /// (`load --replace`): `rows` trips of the old file removed.
    Replaced,
    /// Trips older than a cut-off were dropped (`tripload db retain`):
    /// `rows` trips; `file` is the cut-off.
    Retained,
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
            Kind::Refused => "refused",
            Kind::Quarantined => "quarantined",
            Kind::Unloaded => "unloaded",
            Kind::Replaced => "replaced",
            Kind::Retained => "retained",
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
    /// For a failed file, where known: the line of the file the failure
    /// points at, the column (a field's name or a character position) and
    /// the server's SQLSTATE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqlstate: Option<String>,
}

impl Event {
    pub fn new(event: Kind, file: &str) -> Event {
        Event {
            v: SCHEMA_VERSION,
            id: None,
            event,
            file: file.to_string(),
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            host: hostname(),
            pid: std::process::id(),
            size_bytes: None,
            bytes_done: None,
            rows: None,
            rows_rejected: None,
            seconds: None,
            reason: None,
            line: None,
            column: None,
            sqlstate: None,
        }
    }
}

/// NOTIFY payloads are limited to 8000 bytes; reasons are cut well below.
const MAX_REASON: usize = 2000;

const RETRY_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
const MAX_BACKLOG: usize = 100_000;

/// Cuts the reason to fit a NOTIFY payload and serializes the event.
fn prepare(mut e: Event) -> Option<(Kind, String, String)> {
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
    match serde_json::to_string(&e) {
        Ok(p) => Some((e.event, e.file, p)),
        Err(err) => {
            tracing::warn!("cannot encode event: {err}");
            None
        }
    }
}

enum Msg {
    Event(Box<Event>),
    /// Answered once every event sent before it is stored.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Sends events to the store in order from a background task.
#[derive(Clone)]
pub struct Publisher {
    tx: Option<mpsc::UnboundedSender<Msg>>,
}

impl Publisher {
    /// A publisher that drops everything (no database, e.g. unit tests).
    pub fn disabled() -> Publisher {
        Publisher { tx: None }
    }

    /// Starts the background sender; returns the publisher and the task to
    /// await (after dropping every publisher) so the last events are stored.
    /// After a lost connection it reconnects with `conninfo` on the next event.
    pub fn spawn(
        conninfo: String,
        client: tokio_postgres::Client,
    ) -> (Publisher, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel::<Msg>();
        let task = tokio::spawn(Store::new(conninfo, client).run(rx));
        (Publisher { tx: Some(tx) }, task)
    }

    pub fn publish(&self, e: Event) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Msg::Event(Box::new(e)));
        }
    }

    /// Waits until every event published before this call is stored, for at
    /// most `within`; false if some were not (the database is away or slow).
    pub async fn flush(&self, within: std::time::Duration) -> bool {
        let Some(tx) = &self.tx else { return true };
        let (ack, done) = tokio::sync::oneshot::channel();
        if tx.send(Msg::Flush(ack)).is_err() {
            return false;
        }
        matches!(tokio::time::timeout(within, done).await, Ok(Ok(())))
    }
}

/// Rows deleted per statement when pruning: short transactions that never
/// hold up the loaders' inserts for long.
const PRUNE_BATCH: i64 = 5_000;

/// Deletes events older than `days` days (none when `days` is 0), oldest
/// first, in batches; returns how many were deleted.
pub async fn prune(client: &tokio_postgres::Client, days: u32) -> Result<u64, crate::db::DbError> {
    if days == 0 {
        return Ok(0);
    }
    let days = i32::try_from(days).unwrap_or(i32::MAX);
    let mut total = 0;
    loop {
        let n = client
            .execute(
                "DELETE FROM ingestion_events WHERE id IN (
                     SELECT id FROM ingestion_events
                     WHERE at < now() - make_interval(days => $1)
                     ORDER BY at LIMIT $2)",
                &[&days, &PRUNE_BATCH],
            )
            .await
            .map_err(crate::db::query_err("pruning old ingestion events"))?;
        total += n;
        if n < PRUNE_BATCH as u64 {
            return Ok(total);
        }
    }
}

/// This machine's name, as events and reports show it.
pub fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into())
}

/// The background side of a [`Publisher`]: stores events in order, keeps
/// them while the database is away (bounded: the oldest are dropped, with a
/// warning), and acknowledges flushes once everything before them is stored.
struct Store {
    conninfo: String,
    client: Option<tokio_postgres::Client>,
    sql: String,
    backlog: VecDeque<(Kind, String, String)>,
}

impl Store {
    fn new(conninfo: String, client: tokio_postgres::Client) -> Store {
        Store {
            conninfo,
            client: Some(client),
            sql: format!(
                "WITH e AS (INSERT INTO ingestion_events (kind, file_name, payload)
                            VALUES ($1, $2, $3::text::jsonb) RETURNING id, payload)
                 SELECT pg_notify('{CHANNEL}', (payload || jsonb_build_object('id', id))::text) FROM e"
            ),
            backlog: VecDeque::new(),
        }
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let mut flushes: Vec<tokio::sync::oneshot::Sender<()>> = Vec::new();
        let mut open = true;
        let mut final_tries = 0;
        while open || !self.backlog.is_empty() || !flushes.is_empty() {
            tokio::select! {
                e = rx.recv(), if open => match e {
                    Some(Msg::Event(e)) => self.backlog.extend(prepare(*e)),
                    Some(Msg::Flush(ack)) => flushes.push(ack),
                    None => open = false,
                },
                _ = tokio::time::sleep(RETRY_EVERY), if !self.backlog.is_empty() => {}
            }
            self.bound();
            self.send_in_order().await;
            if self.backlog.is_empty() {
                for ack in flushes.drain(..) {
                    let _ = ack.send(());
                }
            }
            if !open && !self.backlog.is_empty() {
                // The run is over: a few more tries, then say what is lost.
                final_tries += 1;
                if self.client.is_none() || final_tries > 3 {
                    tracing::warn!(
                        "{} events could not be stored in ingestion_events",
                        self.backlog.len()
                    );
                    break;
                }
            }
        }
    }

    /// Drops the oldest events beyond [`MAX_BACKLOG`].
    fn bound(&mut self) {
        if self.backlog.len() > MAX_BACKLOG {
            let n = self.backlog.len() - MAX_BACKLOG;
            self.backlog.drain(..n);
            tracing::warn!("dropped {n} undelivered events (database away too long)");
        }
    }

    /// Stores the waiting events in order, until the database fails.
    async fn send_in_order(&mut self) {
        while let Some((kind, file, payload)) = self.backlog.front().cloned() {
            match self.store(kind, &file, &payload).await {
                Ok(()) => {}
                // The event itself is refused (e.g. a file name the
                // database's encoding cannot hold): retrying cannot help.
                Err((crate::db::Fault::Data, err)) => {
                    tracing::warn!("dropped the {} event for {file}: {err}", kind.as_str());
                }
                Err((crate::db::Fault::Environment, err)) => {
                    tracing::warn!(
                        "cannot publish {} event for {file} yet ({err}); {} waiting",
                        kind.as_str(),
                        self.backlog.len()
                    );
                    return;
                }
            }
            self.backlog.pop_front();
        }
    }

    /// Stores one event, reconnecting first when the connection was lost.
    async fn store(
        &mut self,
        kind: Kind,
        file: &str,
        payload: &str,
    ) -> Result<(), (crate::db::Fault, String)> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = crate::db::connect(&self.conninfo).await.ok();
        }
        let Some(c) = self.client.as_ref() else {
            return Err((
                crate::db::Fault::Environment,
                "database unreachable".to_string(),
            ));
        };
        c.execute(&self.sql, &[&kind.as_str(), &file, &payload])
            .await
            .map(drop)
            .map_err(|e| {
                (
                    crate::db::fault(&e),
                    crate::db::explain("storing the event", &e),
                )
            })
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
