//! Compaction of the rollups of small files.
//!
//! Every file writes rows of its own to the rollups (`rollup_cell_points`,
//! `rollup_cell_week`, `rollup_region_week`, `rollup_region_source`). A large
//! file's rows are full: per (side, cell) its cell points are sorted runs of
//! up to [`points::MAX_PER_ROW`] points whose week segments hold many points
//! each. A small file's are not: a 10k-trip file spread over a year leaves
//! about one point per row segment, so the same trips in a thousand small
//! files cost a bounding box thousands of times the rows and binary searches
//! (and the region and cell rollups a row per file per week or cell).
//!
//! Compaction merges the rows of committed small files (those listed in
//! `rollup_uncompacted`, see `sql/migrations/004_rollups.sql`) into rows
//! with `file_id` 0 ([`COMPACTED`]), which hold the sum of every compacted
//! file, exactly as one large file would write them:
//! - cell points: per (side, cell), the files' rows and the compacted rows
//!   that end in or after the files' first week, or are not full (the
//!   cell's last row), are read back ([`points::decode_row`]), sorted and
//!   written again as full rows ([`points::encode_rows`]). The compacted
//!   rows of a cell stay one sorted run cut every [`points::MAX_PER_ROW`]
//!   points, as one file writes it: the rows left alone are full and hold
//!   only earlier weeks, so the run rewritten after them starts at a
//!   multiple of the row size. With files
//!   in time order (watch mode) only the tail of each cell is rewritten;
//! - `rollup_cell_week`: one row per (side, cell) with the summed weeks;
//! - `rollup_region_week` and `rollup_region_source`: summed per key (the
//!   latest datetime is the maximum).
//!
//! Exact and safe beside loads and queries: each batch of cells moves in one
//! transaction (a reader sees every point of a cell once, before or after),
//! the region rollups and the file's `rollup_uncompacted` entry move in the
//! last one, and one compaction runs at a time (an advisory lock of its own,
//! [`LOCK`]). Loads only insert rows of their own files, and the cleanup of
//! a failed file deletes rows of uncommitted files only, which compaction
//! never reads, so loads neither wait for a compaction nor hold one up; only
//! the lifecycle operations, which rewrite compacted rows, exclude it. A
//! crash between transactions leaves a file listed with its rows merged in
//! some cells: the next compaction moves what is left.
//!
//! Removing a compacted file (unloading it) subtracts its contribution,
//! recomputed from its trips, from the compacted rows under the same lock:
//! see docs/architecture.md, "Compaction".

use crate::analytics::points::{self, Pt, StoredRow};
use crate::analytics::rollup::{self, CellWeeks};
use crate::db::{self, query_err, DbError};
use crate::kernel::encode::{COPY_HEADER, COPY_TRAILER};
use bytes::Bytes;
use futures_util::SinkExt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_postgres::{Client, Transaction};

/// The `file_id` of compacted rows (file ids start at 1).
pub const COMPACTED: i32 = 0;

/// Files with fewer trips are listed for compaction; larger files' rows are
/// already full and keep their own rows.
pub const SMALL_FILE_TRIPS: u64 = 1_000_000;

/// The compaction's advisory lock (session level): (class, key). Taken
/// exclusively by a compaction and shared by the lifecycle operations
/// ([`crate::lifecycle::lock`]); loading files do not take it (their key in
/// class [`crate::db::dims::LOCK_CLASS`] keeps only the dictionaries'
/// reclaim away).
pub const LOCK: (i32, i32) = (29814, 0);

/// Bytes of `lons` in a full row: a compacted row shorter than this is
/// the last of its cell, and is always rewritten with the cell's new points.
const FULL_ROW_BYTES: i32 = 8 * points::MAX_PER_ROW as i32;

/// Files merged per round; rounds repeat while files are listed.
const FILES_PER_ROUND: i64 = 4096;

/// (side, cell)s moved per transaction: bounds the points in memory (a
/// dense cell at 100M trips a year holds ~30k points of 32 bytes).
const CELLS_PER_TX: usize = 128;

/// In the background, compact once the listed files hold at least
/// 1/`RATIO` of the compacted trips from their first week on (what merging
/// them rewrites, at most): each compacted
/// trip is then rewritten a bounded number of times (about `RATIO + 1`)
/// however the files arrive, and between compactions the small files' rows
/// stay a fraction of what a query reads.
pub const RATIO: i64 = 4;

/// A background compactor with nothing to do for this long compacts
/// whatever is listed (a watcher gone quiet).
pub const IDLE: Duration = Duration::from_secs(5);

/// Which listed files to compact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// All of them.
    All,
    /// All of them if they are worth it ([`RATIO`]), otherwise none.
    WorthIt,
}

/// Whether to wait for a compaction that is already running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    Yes,
    /// Return `None` at once.
    No,
}

/// What a compaction did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Compacted {
    pub files: usize,
    pub cells: usize,
    /// Cell point rows read (the files' and the compacted ones they merged with).
    pub rows_in: u64,
    /// Cell point rows written.
    pub rows_out: u64,
}

impl std::fmt::Display for Compacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "compacted the rollups of {} small files ({} cells, {} cell point rows into {})",
            self.files, self.cells, self.rows_in, self.rows_out
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Row(#[from] points::RowError),
}

/// Compacts the listed files of the database at `conninfo` (see the module
/// doc). Returns `None` when another compaction holds the lock and `wait`
/// is [`Wait::No`].
pub async fn compact(
    conninfo: &str,
    policy: Policy,
    wait: Wait,
) -> Result<Option<Compacted>, CompactError> {
    let mut client = db::connect(conninfo).await?;
    let got = match wait {
        Wait::Yes => {
            client
                .execute("SELECT pg_advisory_lock($1, $2)", &[&LOCK.0, &LOCK.1])
                .await
                .map_err(query_err("waiting for the compaction lock"))?;
            true
        }
        Wait::No => client
            .query_one("SELECT pg_try_advisory_lock($1, $2)", &[&LOCK.0, &LOCK.1])
            .await
            .map_err(query_err("taking the compaction lock"))?
            .get(0),
    };
    if !got {
        return Ok(None);
    }
    // The lock goes with the connection, whatever happens below.
    let mut total = Compacted::default();
    loop {
        let files: Vec<i32> = client
            .query(
                "SELECT file_id FROM rollup_uncompacted ORDER BY file_id LIMIT $1",
                &[&FILES_PER_ROUND],
            )
            .await
            .map_err(query_err("reading the files to compact"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if files.is_empty() || (policy == Policy::WorthIt && !worth_it(&client, &files).await?) {
            break;
        }
        let round = compact_files(&mut client, &files).await?;
        total.files += round.files;
        total.cells += round.cells;
        total.rows_in += round.rows_in;
        total.rows_out += round.rows_out;
        if (files.len() as i64) < FILES_PER_ROUND {
            break;
        }
    }
    Ok(Some(total))
}

/// Whether `files` hold at least 1/[`RATIO`] of the compacted trips from
/// their first week on (what merging them would rewrite, at most).
async fn worth_it(client: &Client, files: &[i32]) -> Result<bool, DbError> {
    let row = client
        .query_one(
            "WITH n AS (SELECT sum(trips) AS trips, min(week) AS w0
                        FROM rollup_region_week WHERE file_id = ANY($1))
             SELECT coalesce(n.trips, 0)::bigint,
                    coalesce((SELECT sum(r.trips) FROM rollup_region_week r
                              WHERE r.file_id = 0 AND r.week >= n.w0), 0)::bigint
             FROM n",
            &[&files],
        )
        .await
        .map_err(query_err("measuring what compaction would merge"))?;
    let (new, old): (i64, i64) = (row.get(0), row.get(1));
    Ok(new.saturating_mul(RATIO) >= old)
}

/// A (side, cell) the files have rows in, and the first week of those rows.
#[derive(Debug, Clone, Copy)]
struct Cell {
    side: i8,
    ix: i32,
    iy: i32,
    w0: i32,
}

async fn compact_files(client: &mut Client, files: &[i32]) -> Result<Compacted, CompactError> {
    let cells: Vec<Cell> = client
        .query(
            "SELECT side, ix, iy, min(w0) FROM (
                 SELECT side, ix, iy, weeks[1] AS w0 FROM rollup_cell_points WHERE file_id = ANY($1)
                 UNION ALL
                 SELECT side, ix, iy, weeks[1] FROM rollup_cell_week WHERE file_id = ANY($1)) c
             GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
            &[&files],
        )
        .await
        .map_err(query_err("finding the cells to compact"))?
        .iter()
        .map(|r| Cell {
            side: r.get(0),
            ix: r.get(1),
            iy: r.get(2),
            w0: r.get(3),
        })
        .collect();
    let mut done = Compacted {
        files: files.len(),
        cells: cells.len(),
        ..Compacted::default()
    };
    let mut scratch = points::Scratch::default();
    for batch in cells.chunks(CELLS_PER_TX) {
        let (rows_in, rows_out) = move_cells(client, files, batch, &mut scratch).await?;
        done.rows_in += rows_in;
        done.rows_out += rows_out;
    }
    move_regions(client, files).await?;
    Ok(done)
}

/// Moves the cell points and cell/week counts of `files` in `cells` into the
/// compacted rows, in one transaction. Returns the cell point rows read and
/// written.
async fn move_cells(
    client: &mut Client,
    files: &[i32],
    cells: &[Cell],
    scratch: &mut points::Scratch,
) -> Result<(u64, u64), CompactError> {
    let keys = CellKeys {
        sides: cells.iter().map(|c| c.side).collect(),
        ixs: cells.iter().map(|c| c.ix).collect(),
        iys: cells.iter().map(|c| c.iy).collect(),
        w0s: cells.iter().map(|c| c.w0).collect(),
    };
    let tx = client
        .transaction()
        .await
        .map_err(query_err("starting a compaction transaction"))?;
    let (rows_in, rows_out) = merge_cell_points(&tx, files, &keys, scratch).await?;
    merge_cell_weeks(&tx, files, &keys).await?;
    tx.commit()
        .await
        .map_err(query_err("committing a compaction transaction"))?;
    Ok((rows_in, rows_out))
}

/// The cells of one compaction transaction, as the arrays its statements
/// take: side, ix, iy, and the first week the files bring to the cell.
struct CellKeys {
    sides: Vec<i8>,
    ixs: Vec<i32>,
    iys: Vec<i32>,
    w0s: Vec<i32>,
}

/// Replaces the cell points of `files` in the cells, and the compacted rows
/// they fall into (the cell's last rows, and rows not yet full), by the
/// compacted rows of their union. Returns the rows read and written.
async fn merge_cell_points(
    tx: &Transaction<'_>,
    files: &[i32],
    k: &CellKeys,
    scratch: &mut points::Scratch,
) -> Result<(u64, u64), CompactError> {
    let rows = tx
        .query(
            "DELETE FROM rollup_cell_points p
              USING unnest($2::\"char\"[], $3::int4[], $4::int4[], $5::int4[]) AS c(side, ix, iy, w0)
              WHERE p.side = c.side AND p.ix = c.ix AND p.iy = c.iy
                AND (p.file_id = ANY($1)
                     OR (p.file_id = 0 AND (p.weeks[cardinality(p.weeks)] >= c.w0
                                            OR length(p.lons) < $6)))
             RETURNING p.side, p.ix, p.iy, p.weeks, p.ends, p.lons, p.lats_sorted, p.lat_pos",
            &[&files, &k.sides, &k.ixs, &k.iys, &k.w0s, &FULL_ROW_BYTES],
        )
        .await
        .map_err(query_err("reading the cell points to compact"))?;
    let mut pts: Vec<Pt> = Vec::new();
    for r in &rows {
        decode_returned(r, 0, &mut pts)?;
    }
    let rows_in = rows.len() as u64;
    drop(rows);
    let (grouped, lens) = scratch.group(&pts);
    let mut out = Vec::with_capacity(grouped.len() * 20);
    let mut rows_out = 0;
    let mut at = 0;
    for &n in lens {
        rows_out += points::encode_rows(COMPACTED, &grouped[at..at + n], &mut out);
        at += n;
    }
    drop(pts);
    copy_binary(tx, out).await?;
    Ok((rows_in, rows_out))
}

/// Replaces the cell/week counts of `files` and the compacted row in each
/// cell by their sum, as the compacted row.
async fn merge_cell_weeks(
    tx: &Transaction<'_>,
    files: &[i32],
    k: &CellKeys,
) -> Result<(), CompactError> {
    let counts = tx
        .query(
            "DELETE FROM rollup_cell_week w
              USING unnest($2::\"char\"[], $3::int4[], $4::int4[]) AS c(side, ix, iy)
              WHERE w.side = c.side AND w.ix = c.ix AND w.iy = c.iy
                AND (w.file_id = ANY($1) OR w.file_id = 0)
             RETURNING w.side, w.ix, w.iy, w.weeks, w.trips",
            &[&files, &k.sides, &k.ixs, &k.iys],
        )
        .await
        .map_err(query_err("reading the cell/week counts to compact"))?;
    let mut merged = CellWeeks::default();
    for r in &counts {
        let (weeks, trips): (Vec<i32>, Vec<i64>) = (r.get(3), r.get(4));
        let c = merged
            .entry((r.get::<_, i8>(0) as u8, r.get(1), r.get(2)))
            .or_default();
        for (w, n) in weeks.into_iter().zip(trips) {
            c.add(w, n);
        }
    }
    let text = rollup::cell_week_rows(&merged, COMPACTED);
    if !text.is_empty() {
        let sink = tx
            .copy_in::<_, Bytes>(
                "COPY rollup_cell_week (file_id, side, ix, iy, weeks, trips) FROM STDIN",
            )
            .await
            .map_err(query_err("writing compacted cell/week counts"))?;
        let mut sink = Box::pin(sink);
        sink.send(Bytes::from(text))
            .await
            .map_err(query_err("writing compacted cell/week counts"))?;
        sink.as_mut()
            .finish()
            .await
            .map_err(query_err("writing compacted cell/week counts"))?;
    }
    Ok(())
}

/// Decodes a `rollup_cell_points` row returned by a statement whose columns,
/// from `first` on, are side, ix, iy, weeks, ends, lons, lats_sorted,
/// lat_pos; appends its points to `out`.
pub(crate) fn decode_returned(
    r: &tokio_postgres::Row,
    first: usize,
    out: &mut Vec<Pt>,
) -> Result<(), points::RowError> {
    let (weeks, ends): (Vec<i32>, Vec<i32>) = (r.get(first + 3), r.get(first + 4));
    points::decode_row(
        StoredRow {
            side: r.get::<_, i8>(first) as u8,
            ix: r.get(first + 1),
            iy: r.get(first + 2),
            weeks: &weeks,
            ends: &ends,
            lons: r.get(first + 5),
            lats_sorted: r.get(first + 6),
            lat_pos: r.get(first + 7),
        },
        out,
    )
}

/// Binary COPY of encoded cell point rows into `rollup_cell_points`.
pub(crate) async fn copy_binary(
    tx: &tokio_postgres::Transaction<'_>,
    rows: Vec<u8>,
) -> Result<(), DbError> {
    let what = "writing compacted cell points";
    let sink = tx
        .copy_in::<_, Bytes>(&format!(
            "COPY rollup_cell_points ({}) FROM STDIN (FORMAT binary)",
            points::COPY_COLUMNS
        ))
        .await
        .map_err(query_err(what))?;
    let mut sink = Box::pin(sink);
    sink.send(Bytes::from_static(COPY_HEADER))
        .await
        .map_err(query_err(what))?;
    let rows = Bytes::from(rows);
    let mut at = 0;
    while at < rows.len() {
        let end = (at + (1 << 20)).min(rows.len());
        sink.send(rows.slice(at..end))
            .await
            .map_err(query_err(what))?;
        at = end;
    }
    sink.send(Bytes::from_static(COPY_TRAILER))
        .await
        .map_err(query_err(what))?;
    sink.as_mut().finish().await.map_err(query_err(what))?;
    Ok(())
}

/// Moves the region rollups of `files` into the compacted rows and takes
/// the files off the list, in one transaction.
async fn move_regions(client: &mut Client, files: &[i32]) -> Result<(), DbError> {
    let tx = client
        .transaction()
        .await
        .map_err(query_err("starting a compaction transaction"))?;
    tx.execute(
        "WITH moved AS (DELETE FROM rollup_region_week WHERE file_id = ANY($1)
                        RETURNING region_id, week, trips),
              sums AS (SELECT region_id, week, sum(trips)::bigint AS trips FROM moved GROUP BY 1, 2),
              upd AS (UPDATE rollup_region_week r SET trips = r.trips + s.trips FROM sums s
                      WHERE r.file_id = 0 AND r.region_id = s.region_id AND r.week = s.week
                      RETURNING r.region_id, r.week)
         INSERT INTO rollup_region_week (file_id, region_id, week, trips)
         SELECT 0, s.region_id, s.week, s.trips FROM sums s
         WHERE NOT EXISTS (SELECT 1 FROM upd u WHERE u.region_id = s.region_id AND u.week = s.week)",
        &[&files],
    )
    .await
    .map_err(query_err("compacting rollup_region_week"))?;
    tx.execute(
        "WITH moved AS (DELETE FROM rollup_region_source WHERE file_id = ANY($1)
                        RETURNING region_id, datasource_id, trips, last_at),
              sums AS (SELECT region_id, datasource_id, sum(trips)::bigint AS trips, max(last_at) AS last_at
                       FROM moved GROUP BY 1, 2),
              upd AS (UPDATE rollup_region_source r
                         SET trips = r.trips + s.trips, last_at = greatest(r.last_at, s.last_at)
                        FROM sums s
                       WHERE r.file_id = 0 AND r.region_id = s.region_id AND r.datasource_id = s.datasource_id
                      RETURNING r.region_id, r.datasource_id)
         INSERT INTO rollup_region_source (file_id, region_id, datasource_id, trips, last_at)
         SELECT 0, s.region_id, s.datasource_id, s.trips, s.last_at FROM sums s
         WHERE NOT EXISTS (SELECT 1 FROM upd u
                           WHERE u.region_id = s.region_id AND u.datasource_id = s.datasource_id)",
        &[&files],
    )
    .await
    .map_err(query_err("compacting rollup_region_source"))?;
    tx.execute(
        "DELETE FROM rollup_uncompacted WHERE file_id = ANY($1)",
        &[&files],
    )
    .await
    .map_err(query_err("recording the compacted files"))?;
    tx.commit()
        .await
        .map_err(query_err("committing a compaction transaction"))
}

/// The background compactor of this process, started by the first
/// [`after_commit`].
static BACKGROUND: OnceLock<Arc<Notify>> = OnceLock::new();

/// Tells the background compactor that a file committed: it compacts when
/// that is worth it ([`Policy::WorthIt`]), and everything once no file has
/// committed for [`IDLE`]. It never waits for another compaction (the lock),
/// and a process that exits mid-compaction loses nothing (the transaction in
/// flight rolls back). Call from within the tokio runtime.
pub fn after_commit(conninfo: &str) {
    let wake = BACKGROUND.get_or_init(|| {
        let wake = Arc::new(Notify::new());
        tokio::spawn(background(conninfo.to_string(), Arc::clone(&wake)));
        wake
    });
    wake.notify_one();
}

async fn background(conninfo: String, wake: Arc<Notify>) {
    let mut dirty = false;
    loop {
        let policy = match tokio::time::timeout(IDLE, wake.notified()).await {
            Ok(()) => Policy::WorthIt,
            Err(_) if dirty => Policy::All,
            Err(_) => continue,
        };
        dirty = true;
        match compact(&conninfo, policy, Wait::No).await {
            Ok(Some(c)) => {
                if policy == Policy::All {
                    dirty = false;
                }
                if c.files > 0 {
                    tracing::debug!("{c} (in the background)");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("compaction failed (the next one retries): {e}"),
        }
    }
}
