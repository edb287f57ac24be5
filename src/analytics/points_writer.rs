//! The second connection that writes a file's cell points into
//! `rollup_cell_points`, in segments of the file (`--points-segment-mib`),
//! each segment one COPY (its own transaction). With the default (4 GiB) a
//! product-sized file is one segment, written once its last chunk is parsed:
//! parsing runs ahead of the trips' COPY (see [`crate::ingest::backlog`]), so this
//! happens while the file's own backend is still copying the trips; smaller
//! segments overlap more of the trips' COPY but multiply the (cell, week)
//! fragments that a bounding-box query reads (see [`SEGMENT_MIB`]). Segments
//! keep the temporary spill bounded for files larger than that.
//!
//! Every file writes into the one table (no table per file or segment: the
//! number of relations, and of locks a query takes, does not grow with the
//! files), and a file's rows are found by the `file_id` index, to delete
//! them or (for small files) to merge them ([`crate::analytics::compact`]).
//!
//! Those rows commit before the file's transaction does, so three rules keep
//! them exactly as consistent as rows of that transaction
//! (`sql/migrations/005_cell_points.sql`):
//! - readers count a file's cell points only once its `load_files` row is
//!   visible, that is once the file's transaction has committed;
//! - `cell_points_pending` names the file from the first point written until
//!   the file's transaction deletes that row, just before its COMMIT;
//! - the file's transaction and this connection hold the file's advisory lock
//!   (shared) while they work. [`cleanup`] (right after a rollback) and
//!   [`sweep`] (what a crashed loader left, when a loader starts) take it
//!   exclusively, so they wait until both backends are gone and every
//!   segment that was going to commit has, then re-check the ledger in a new
//!   snapshot: a committed file's cell points are never deleted.

use crate::analytics::points::{self, Spill};
use crate::analytics::rollup::{self, CellWeeks};
use crate::db::{self, query_err, DbError};
use crate::kernel::encode::{COPY_HEADER, COPY_TRAILER};
use bytes::Bytes;
use futures_util::SinkExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

/// First key of the per-file advisory locks (the second is the file id).
pub const LOCK_CLASS: i32 = 29810;

/// Default MiB of input per segment: one piece for files up to 4 GiB. Each
/// segment writes its own rows per (cell, week), and a box query pays per
/// such fragment: in 256 MiB segments (7 per 15M-row file) the edge band of a
/// 15×13 km box at 100M trips held 237k week segments and took 314–350 ms
/// (p50), against 134–185 ms with one piece per file. Segments do load
/// faster (15M rows, `benches/compare.sh`: 16.7 s in 256 MiB segments, 19.1 s
/// in one piece, 13.7 s without rollups); the query targets (a box under
/// 200 ms at 100M trips) decide the default. (Those load figures predate the
/// backlog, which now overlaps a single segment with the trips' COPY.)
pub const SEGMENT_MIB: u64 = 4096;

/// Why writing cell points failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{}", crate::db::explain(what, source))]
    Db {
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("cannot read back the cell points spilled to {dir}: {source}")]
    Spill { dir: String, source: std::io::Error },
    #[error("the cell points task failed: {0}")]
    Task(String),
}

fn db_err(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> WriteError {
    move |source| WriteError::Db { what, source }
}

/// A file's cell points writer: segments go in through [`Writer::segments`]
/// (the encoding stage sends the last one when parsing ends); [`Writer::finish`] says whether all of them were
/// written and returns the file's trips by cell and week, counted from the
/// sorted points (the file's transaction writes those to `rollup_cell_week`).
/// Dropped unfinished, it stops at once (its connection closes, so the
/// segment in flight cannot commit).
pub struct Writer {
    segments: Option<mpsc::Sender<Spill>>,
    task: Option<JoinHandle<Result<CellWeeks, WriteError>>>,
}

impl Writer {
    /// Connects, takes the file's lock and names the file as pending.
    pub async fn start(conninfo: &str, file_id: i32) -> Result<Writer, DbError> {
        let client = db::connect(conninfo).await?;
        client
            .batch_execute(&format!(
                "SELECT pg_advisory_lock_shared({LOCK_CLASS}, {file_id});
                 INSERT INTO cell_points_pending (file_id) VALUES ({file_id});"
            ))
            .await
            .map_err(query_err("registering the file's cell points"))?;
        // One segment queued while one is written: the spill on disk stays
        // within about three segments' points whatever the file size.
        let (tx, mut rx) = mpsc::channel::<Spill>(1);
        let task = tokio::spawn(async move {
            let mut cells = CellWeeks::default();
            while let Some(spill) = rx.recv().await {
                let segment = copy_segment(&client, file_id, spill).await?;
                // A move for the first segment; later ones fold ~10^5 cells each.
                rollup::merge_cell_weeks(&mut cells, segment);
            }
            client
                .batch_execute(&format!(
                    "SELECT pg_advisory_unlock_shared({LOCK_CLASS}, {file_id})"
                ))
                .await
                .map_err(db_err("releasing the cell points lock"))?;
            Ok(cells)
        });
        Ok(Writer {
            segments: Some(tx),
            task: Some(task),
        })
    }

    /// A sender for the encoding stage (which blocks on it while the writer
    /// is two segments behind).
    pub fn segments(&self) -> Option<mpsc::Sender<Spill>> {
        self.segments.clone()
    }

    /// Why the writer stopped, if it already has (the encoding stage only
    /// sees that its segments are no longer taken).
    pub async fn failure(&mut self) -> Option<WriteError> {
        if !self.task.as_ref().is_some_and(|t| t.is_finished()) {
            return None;
        }
        self.join().await.err()
    }

    /// Waits until every queued segment is written; returns the file's trips
    /// by cell and week.
    pub async fn finish(mut self) -> Result<CellWeeks, WriteError> {
        self.segments = None;
        self.join().await
    }

    async fn join(&mut self) -> Result<CellWeeks, WriteError> {
        match self.task.take() {
            None => Err(WriteError::Task("already finished".into())),
            Some(t) => t.await.map_err(|e| WriteError::Task(e.to_string()))?,
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// Cell points being grouped, counted and encoded on a blocking thread (the
/// sorts on the rayon pool), a partition of the spill at a time, into a small
/// queue; the task returns the segment's trips by cell and week.
struct Producer {
    task: JoinHandle<std::io::Result<CellWeeks>>,
    rx: mpsc::Receiver<Bytes>,
}

fn start_producer(file_id: i32, spill: Spill) -> Producer {
    // Room for part of a partition's rows, so that the next partition is
    // read and sorted while the server inserts this one.
    let (btx, rx) = mpsc::channel::<Bytes>(16);
    let task = tokio::task::spawn_blocking(move || {
        let mut scratch = points::Scratch::default();
        let mut cells = CellWeeks::default();
        spill.drain(|pts| {
            let (pts, lens) = scratch.group(pts);
            rollup::count_grouped(&mut cells, pts, lens);
            // Buffers of about 1 MiB, cut between cells (a cell's rows are
            // rarely over 200 KB), keep the pipe full.
            let mut out = Vec::with_capacity(1 << 20);
            let mut at = 0;
            for &n in lens {
                points::encode_rows(file_id, &pts[at..at + n], &mut out);
                at += n;
                if out.len() >= 768 << 10 {
                    let full = std::mem::replace(&mut out, Vec::with_capacity(1 << 20));
                    if btx.blocking_send(Bytes::from(full)).is_err() {
                        return false;
                    }
                }
            }
            out.is_empty() || btx.blocking_send(Bytes::from(out)).is_ok()
        })?;
        Ok(cells)
    });
    Producer { task, rx }
}

/// One segment's cell points in one COPY (its own transaction); returns the
/// segment's trips by cell and week.
async fn copy_segment(
    client: &Client,
    file_id: i32,
    spill: Spill,
) -> Result<CellWeeks, WriteError> {
    let what = "COPY rollup_cell_points";
    let Producer { task, rx } = start_producer(file_id, spill);
    let sink = client
        .copy_in::<_, Bytes>(&format!(
            "COPY rollup_cell_points ({}) FROM STDIN (FORMAT binary)",
            points::COPY_COLUMNS
        ))
        .await
        .map_err(db_err(what))?;
    let mut sink = Box::pin(sink);
    sink.send(Bytes::from_static(COPY_HEADER))
        .await
        .map_err(db_err(what))?;
    // Closes rx when the COPY fails, which stops the producer.
    let copy_error = crate::db::copy_in::forward(&mut sink, rx).await;
    let cells = match task.await {
        Err(e) => return Err(WriteError::Task(e.to_string())),
        Ok(Err(source)) => {
            return Err(WriteError::Spill {
                dir: std::env::temp_dir().display().to_string(),
                source,
            })
        }
        Ok(Ok(cells)) => cells,
    };
    if let Some(e) = copy_error {
        return Err(db_err(what)(e));
    }
    sink.send(Bytes::from_static(COPY_TRAILER))
        .await
        .map_err(db_err(what))?;
    sink.as_mut().finish().await.map_err(db_err(what))?;
    Ok(cells)
}

/// Deletes the cell points of `file_id` unless the file committed, once no
/// backend works on it; with `wait`, waits for that (up to `lock_timeout`),
/// otherwise skips a file that is still being loaded. Returns the rows
/// deleted, or `None` when the file was skipped.
async fn delete_uncommitted(
    client: &mut Client,
    file_id: i32,
    wait: bool,
) -> Result<Option<u64>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    if wait {
        tx.batch_execute("SET LOCAL lock_timeout = '60s'").await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, $2)",
            &[&LOCK_CLASS, &file_id],
        )
        .await?;
    } else {
        let got: bool = tx
            .query_one(
                "SELECT pg_try_advisory_xact_lock($1, $2)",
                &[&LOCK_CLASS, &file_id],
            )
            .await?
            .get(0);
        if !got {
            return Ok(None);
        }
    }
    // New statements, new snapshots (READ COMMITTED): they see the file's
    // commit if it happened before the lock was granted.
    let committed: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM load_files WHERE file_id = $1)",
            &[&file_id],
        )
        .await?
        .get(0);
    let mut deleted = 0;
    if !committed {
        // Holding the file's lock exclusively, no segment of it is being
        // written: each has committed or is gone.
        deleted = tx
            .execute(
                "DELETE FROM rollup_cell_points WHERE file_id = $1",
                &[&file_id],
            )
            .await?;
    }
    tx.execute(
        "DELETE FROM cell_points_pending WHERE file_id = $1",
        &[&file_id],
    )
    .await?;
    tx.commit().await?;
    Ok(Some(deleted))
}

/// After a file's transaction failed: deletes the cell points it had
/// written. A failure here is logged; the next loader's [`sweep`] retries.
pub async fn cleanup(conninfo: &str, file_id: i32) {
    let result = async {
        let mut client = db::connect(conninfo).await.map_err(|e| e.to_string())?;
        delete_uncommitted(&mut client, file_id, true)
            .await
            .map_err(|e| db::error_text(&e))
    }
    .await;
    match result {
        Ok(n) => tracing::debug!(
            "file {file_id}: deleted {} uncommitted cell point rows",
            n.unwrap_or(0)
        ),
        Err(e) => tracing::warn!(
            "file {file_id}: could not delete its uncommitted cell points ({e}); queries ignore them, and the next load deletes them"
        ),
    }
}

/// Deletes the cell points that loaders which died mid-file left behind
/// (queries already ignore them). Files still being loaded are skipped.
pub async fn sweep(client: &mut Client) -> Result<u64, DbError> {
    let pending: Vec<i32> = client
        .query("SELECT file_id FROM cell_points_pending", &[])
        .await
        .map_err(query_err("reading pending cell points"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut rows = 0;
    for file_id in pending {
        if let Some(n) = delete_uncommitted(client, file_id, false)
            .await
            .map_err(query_err(format!(
                "deleting the cell points left by an unfinished load of file {file_id}"
            )))?
        {
            if n > 0 {
                tracing::info!(
                    "deleted {n} cell point rows left by an unfinished load (file id {file_id})"
                );
            }
            rows += n;
        }
    }
    Ok(rows)
}
