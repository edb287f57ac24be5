//! The ledger of loaded files (`load_files`), keyed by content hash: what makes
//! a load exactly-once.
//!
//! The claim row is inserted first thing in the file's transaction. The unique
//! key makes a second loader of the same bytes wait for the first: it then sees
//! the committed row (and skips) or the rollback (and loads). The counts are
//! filled in just before COMMIT, so a ledger row exists only with its trips.

use crate::db::{query_err, DbError};
use tokio_postgres::{Client, Transaction};

/// A committed file, as the ledger remembers it.
#[derive(Debug, Clone)]
pub struct LoadedFile {
    pub file_id: i32,
    pub file_name: String,
    pub rows_loaded: i64,
    pub committed_at: String,
}

/// The committed load of this content, if any (a fast pre-check outside the
/// transaction; [`claim`] is the authoritative one).
pub async fn find(client: &Client, hash: &str) -> Result<Option<LoadedFile>, DbError> {
    let row = client
        .query_opt(
            "SELECT file_id, file_name, rows_loaded, coalesce(committed_at::text, '')
             FROM load_files WHERE content_hash = $1",
            &[&hash],
        )
        .await
        .map_err(query_err("looking the file up in the ledger"))?;
    Ok(row.map(|r| LoadedFile {
        file_id: r.get(0),
        file_name: r.get(1),
        rows_loaded: r.get(2),
        committed_at: r.get(3),
    }))
}

/// Claims `hash` inside the file's transaction: `Some(file_id)` when this
/// transaction owns it, `None` when another load of the same content committed.
pub async fn claim(
    tx: &Transaction<'_>,
    hash: &str,
    file_name: &str,
    size: u64,
    loaded_by: &str,
) -> Result<Option<i32>, DbError> {
    let row = tx
        .query_opt(
            "INSERT INTO load_files (content_hash, file_name, size_bytes, loaded_by)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (content_hash) DO NOTHING
             RETURNING file_id",
            &[&hash, &file_name, &(size as i64), &loaded_by],
        )
        .await
        .map_err(query_err("claiming the file in the ledger"))?;
    Ok(row.map(|r| r.get(0)))
}

/// Records the outcome in the same transaction, just before COMMIT.
pub async fn finish(
    tx: &Transaction<'_>,
    file_id: i32,
    rows_loaded: u64,
    rows_rejected: u64,
    seconds: f64,
) -> Result<(), DbError> {
    tx.execute(
        "UPDATE load_files
         SET rows_loaded = $2, rows_rejected = $3, load_seconds = $4, committed_at = clock_timestamp()
         WHERE file_id = $1",
        &[&file_id, &(rows_loaded as i64), &(rows_rejected as i64), &seconds],
    )
    .await
    .map_err(query_err("recording the file in the ledger"))?;
    Ok(())
}
