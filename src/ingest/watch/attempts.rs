//! Environment failures counted per file, towards quarantine: a file that
//! fails N times in a row while the database answers is moved to `failed/`
//! with its history, so one file cannot stall the queue.

use super::claim::Claimed;
use crate::db;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Environment failures of each file, counted towards quarantine.
///
/// A failure counts only while the database answers, all of it (on Citus
/// every worker too, [`db::node_health`]): during an outage every file
/// fails alike and none is to blame. The history is kept in
/// `load_attempts`, so it survives a restart of the watcher (a file that
/// failed twice before a restart is quarantined at its next failure), and
/// in memory.
pub(super) struct Attempts {
    conninfo: String,
    client: Option<tokio_postgres::Client>,
    max: u32,
    /// Keys with a row in `load_attempts`.
    stored: HashSet<String>,
}

const ATTEMPTS_DB_WITHIN: Duration = Duration::from_secs(5);

impl Attempts {
    pub(super) async fn start(
        conninfo: &str,
        client: tokio_postgres::Client,
        max: u32,
    ) -> Attempts {
        let stored = match client
            .query("SELECT file_key FROM load_attempts", &[])
            .await
        {
            Ok(rows) => rows.iter().map(|r| r.get::<_, String>(0)).collect(),
            Err(e) => {
                tracing::warn!("cannot read the attempt history: {}", db::error_text(&e));
                HashSet::new()
            }
        };
        Attempts {
            conninfo: conninfo.to_string(),
            client: Some(client),
            max,
            stored,
        }
    }

    async fn client(&mut self) -> Option<&tokio_postgres::Client> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = tokio::time::timeout(ATTEMPTS_DB_WITHIN, db::connect(&self.conninfo))
                .await
                .ok()
                .and_then(Result::ok);
        }
        self.client.as_ref()
    }

    /// Records a failure of `c`; returns the file's history of failures in a
    /// row (this one last) when it counts, `None` while the database is away.
    pub(super) async fn failed(&mut self, c: &Claimed, reason: &str) -> Option<Vec<String>> {
        let line = format!(
            "{}  {}",
            chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC"),
            reason.replace(['\n', '\r'], " ")
        );
        let client = self.client().await?;
        let whole = tokio::time::timeout(
            ATTEMPTS_DB_WITHIN,
            db::node_health::all_nodes_answer(client),
        )
        .await
        .ok()?
        .ok()?;
        if !whole {
            tracing::info!(
                "{}: not counted towards quarantine: a database node does not answer",
                c.name
            );
            return None;
        }
        let row = tokio::time::timeout(
            ATTEMPTS_DB_WITHIN,
            client.query_one(
                "INSERT INTO load_attempts (file_key, file_name, attempts)
                 VALUES ($1, $2, jsonb_build_array($3::text))
                 ON CONFLICT (file_key) DO UPDATE
                   SET attempts = load_attempts.attempts || jsonb_build_array($3::text),
                       file_name = EXCLUDED.file_name, updated_at = now()
                 RETURNING attempts::text",
                &[&c.key, &c.name, &line],
            ),
        )
        .await
        .ok()?
        .ok()?;
        self.stored.insert(c.key.clone());
        serde_json::from_str::<Vec<String>>(row.get::<_, &str>(0)).ok()
    }

    /// Whether `history` calls for quarantine.
    pub(super) fn exhausted(&self, history: &[String]) -> bool {
        history.len() >= self.max as usize
    }

    /// Forgets the failures of a file that has left the queue.
    pub(super) async fn forget(&mut self, key: &str) {
        if !self.stored.remove(key) {
            return;
        }
        let Some(client) = self.client().await else {
            return;
        };
        let _ = tokio::time::timeout(
            ATTEMPTS_DB_WITHIN,
            client.execute("DELETE FROM load_attempts WHERE file_key = $1", &[&key]),
        )
        .await;
    }
}

/// Moves a file that failed `history.len()` times in a row to `failed/`, with
/// the history in `<file>.error.txt`.
pub(super) fn quarantine(
    c: &Claimed,
    failed_dir: &Path,
    history: &[String],
) -> Result<PathBuf, String> {
    let dest = crate::ingest::archive::move_read_file_into_as(&c.path, c.id, failed_dir, &c.name)
        .map_err(|e| e.to_string())?;
    let mut text = format!(
        "file: {}\nquarantined: {}\nits load failed {} times in a row for reasons other than its content, while the database was reachable:\n",
        c.name,
        chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC"),
        history.len()
    );
    for h in history {
        text.push_str("  ");
        text.push_str(h);
        text.push('\n');
    }
    text.push_str("nothing from this file was committed. once the cause is fixed, move the file back to the landing directory.\n");
    if let Err(e) = crate::ingest::archive::write_error(&dest, &text) {
        tracing::error!("{}: could not write the error file: {e}", dest.display());
    }
    Ok(dest)
}
