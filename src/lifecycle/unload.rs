//! Unloading one committed file: its trips, every rollup row and cell point
//! it contributed, and its ledger row, in one transaction ([`unload_in`],
//! also the step `load --replace` runs in the new file's transaction).
//!
//! A file's rollup contribution is in one of two places, per rollup and per
//! cell (see [`crate::analytics::compact`]):
//! - rows of its own (`file_id` = the file's): deleted by `file_id` (each
//!   rollup has a `file_id` index);
//! - merged into the compacted rows (`file_id` 0) of a small file: its
//!   contribution is recomputed from its trips, which the `DELETE` of the
//!   trips returns (the same coordinates, cells and weeks as the loader
//!   computed: `ST_X`/`ST_Y` give back the stored doubles), and subtracted:
//!   counts from `rollup_cell_week`, `rollup_region_week` and
//!   `rollup_region_source` (whose `last_at` is found again among the
//!   remaining compacted trips when the file held it), and its points from
//!   the compacted cell point rows (decoded, each of the file's points
//!   removed once, encoded again from the first row that holds one of them,
//!   so that a cell's compacted rows stay one run cut every 140 points, as
//!   compaction leaves them). A point or count that is not there refuses the
//!   unload ([`LifecycleError::Inconsistent`]) rather than leave the rollups
//!   wrong.
//!
//! A crash in the middle of a compaction can leave a file with its own rows
//! in some cells and merged in others; the choice is made per cell (and per
//! region rollup), so that case is exact too. The unload holds the
//! lifecycle lock and the compaction lock shared for its transaction
//! ([`crate::lifecycle::lock`]), so no compaction moves rows under it.
//!
//! The trips are searched within the file's weeks when its own
//! `rollup_region_week` rows say which (on a hypertable, only those chunks;
//! on a plain table, through the `datetime` BRIN index), and found directly
//! where `tripload db index --by-file` built a BRIN index on `file_id`.

use crate::analytics::points::{self, Pt};
use crate::analytics::rollup::{self, CellWeeks, Grid, Rollup};
use crate::db::{query_err, DbError};
use crate::lifecycle::subtract::{
    subtract_cell_points, subtract_cell_weeks, subtract_region_source, subtract_region_week,
    CellKey, CELLS_PER_BATCH,
};
use crate::lifecycle::{event, record_event, who, LedgerFile, LifecycleError};
use crate::notify::events::Kind;
use futures_util::{pin_mut, TryStreamExt};
use rustc_hash::FxHashSet;
use std::time::Instant;
use tokio_postgres::Transaction;

/// What an unload removed.
#[derive(Debug, Clone, Default)]
pub struct Removed {
    pub file_id: i32,
    pub file_name: String,
    pub trips: u64,
    /// Rollup rows of the file's own, deleted.
    pub own_rows: u64,
    /// (side, cell)s whose compacted rows the file's contribution was
    /// subtracted from.
    pub compacted_cells: usize,
    /// Compacted region rows the file's counts were subtracted from.
    pub compacted_region_rows: u64,
}

impl std::fmt::Display for Removed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (file id {}): {} trips, {} rollup rows of its own",
            self.file_name, self.file_id, self.trips, self.own_rows
        )?;
        if self.compacted_cells > 0 || self.compacted_region_rows > 0 {
            write!(
                f,
                ", subtracted from the compacted rollups of {} cells and {} region rows",
                self.compacted_cells, self.compacted_region_rows
            )?;
        }
        Ok(())
    }
}

/// Removes committed file `file_id` inside `tx` (see the module doc):
/// trips, rollups, cell points, ledger row (kept in `load_files_removed`
/// with `how` and `by`), and records the event `kind`.
pub async fn unload_in(
    tx: &Transaction<'_>,
    file_id: i32,
    how: &str,
    by: &str,
    kind: Kind,
) -> Result<Removed, LifecycleError> {
    let start = Instant::now();
    crate::lifecycle::lock(tx).await?;
    let state = lock_ledger_row(tx, file_id).await?;
    let mut removed = Removed {
        file_id,
        file_name: state.file_name.clone(),
        ..Removed::default()
    };
    // Merged (wholly or in part) into the compacted rows: the contribution
    // is needed to subtract it.
    let contribution = if state.merged() {
        let (trips, r) = delete_trips_returning(tx, file_id).await?;
        removed.trips = trips;
        Some(r)
    } else {
        removed.trips = delete_trips(tx, file_id, state.range).await?;
        None
    };
    remove_region_rollups(tx, &state, contribution.as_ref(), &mut removed).await?;
    remove_cell_rollups(tx, file_id, contribution, &mut removed).await?;
    retire_ledger_row(tx, file_id, by, how, removed.trips).await?;
    record_event(
        tx,
        &event(
            kind,
            &state.file_name,
            removed.trips,
            start.elapsed().as_secs_f64(),
            format!("{how} by {by}; file id {file_id}"),
        ),
    )
    .await?;
    Ok(removed)
}

/// What the ledger and the rollups say of a committed file, read with its
/// ledger row locked.
struct FileState {
    file_name: String,
    /// Still on the compaction list: some of its rows may be merged.
    listed: bool,
    own_region_week: bool,
    own_region_source: bool,
    /// The weeks its trips span (from its rollup rows), when it has its own.
    range: (
        Option<chrono::DateTime<chrono::Utc>>,
        Option<chrono::DateTime<chrono::Utc>>,
    ),
}

impl FileState {
    fn merged(&self) -> bool {
        self.listed || !self.own_region_week
    }
}

async fn lock_ledger_row(tx: &Transaction<'_>, file_id: i32) -> Result<FileState, LifecycleError> {
    let Some(row) = tx
        .query_opt(
            "SELECT f.file_name, EXISTS (SELECT 1 FROM rollup_uncompacted u WHERE u.file_id = $1)
             FROM load_files f WHERE f.file_id = $1 AND f.committed_at IS NOT NULL
             FOR UPDATE OF f",
            &[&file_id],
        )
        .await
        .map_err(query_err("locking the file's ledger row"))?
    else {
        return Err(LifecycleError::Gone(file_id));
    };
    // Uncorrelated, by file_id: on Citus each is routed to the file's shard.
    let own = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM rollup_region_week WHERE file_id = $1),
                    EXISTS (SELECT 1 FROM rollup_region_source WHERE file_id = $1),
                    (SELECT min(week)::timestamp AT TIME ZONE 'UTC' FROM rollup_region_week WHERE file_id = $1),
                    (SELECT (max(week) + 7)::timestamp AT TIME ZONE 'UTC' FROM rollup_region_week WHERE file_id = $1)",
            &[&file_id],
        )
        .await
        .map_err(query_err("reading the file's rollup rows"))?;
    Ok(FileState {
        file_name: row.get(0),
        listed: row.get(1),
        own_region_week: own.get(0),
        own_region_source: own.get(1),
        range: (own.get(2), own.get(3)),
    })
}

/// Region rollups: all of a file's rows move in one compaction transaction,
/// so they are either all its own (deleted) or all merged (subtracted).
async fn remove_region_rollups(
    tx: &Transaction<'_>,
    state: &FileState,
    contribution: Option<&Rollup>,
    removed: &mut Removed,
) -> Result<(), LifecycleError> {
    for table in ["rollup_region_week", "rollup_region_source"] {
        removed.own_rows += tx
            .execute(
                &format!("DELETE FROM {table} WHERE file_id = $1"),
                &[&removed.file_id],
            )
            .await
            .map_err(query_err(format!("deleting the file's {table} rows")))?;
    }
    if let Some(c) = contribution {
        if !state.own_region_week {
            removed.compacted_region_rows += subtract_region_week(tx, c).await?;
        }
        if !state.own_region_source {
            removed.compacted_region_rows += subtract_region_source(tx, c).await?;
        }
    }
    Ok(())
}

/// Cells: per cell, the file's own rows are deleted and its part of merged
/// rows is subtracted.
async fn remove_cell_rollups(
    tx: &Transaction<'_>,
    file_id: i32,
    contribution: Option<Rollup>,
    removed: &mut Removed,
) -> Result<(), LifecycleError> {
    let own_week_cells = delete_own_cells(tx, "rollup_cell_week", file_id).await?;
    let own_point_cells = delete_own_cells(tx, "rollup_cell_points", file_id).await?;
    removed.own_rows += own_week_cells.1 + own_point_cells.1;
    let Some(c) = contribution else {
        return Ok(());
    };
    let mut scratch = points::Scratch::default();
    let (grouped, lens) = scratch.group(&c.pending);
    let mut counts = CellWeeks::default();
    rollup::count_grouped(&mut counts, grouped, lens);
    let week_cells: Vec<(CellKey, Vec<(i32, i64)>)> = counts
        .iter()
        .filter(|(k, _)| !own_week_cells.0.contains(*k))
        .map(|(k, w)| (*k, w.weeks()))
        .collect();
    subtract_cell_weeks(tx, &week_cells).await?;
    let mut at = 0;
    let mut point_cells: Vec<&[Pt]> = Vec::new();
    for &len in lens {
        let cell = &grouped[at..at + len];
        at += len;
        if !own_point_cells
            .0
            .contains(&(cell[0].side, cell[0].ix, cell[0].iy))
        {
            point_cells.push(cell);
        }
    }
    removed.compacted_cells = point_cells.len().max(week_cells.len());
    for batch in point_cells.chunks(CELLS_PER_BATCH) {
        subtract_cell_points(tx, batch, &mut points::Scratch::default()).await?;
    }
    Ok(())
}

/// Takes the file off the compaction list and moves its ledger row to
/// `load_files_removed` (who, how, when): the same bytes may load again.
async fn retire_ledger_row(
    tx: &Transaction<'_>,
    file_id: i32,
    by: &str,
    how: &str,
    trips: u64,
) -> Result<(), LifecycleError> {
    tx.execute(
        "DELETE FROM rollup_uncompacted WHERE file_id = $1",
        &[&file_id],
    )
    .await
    .map_err(query_err("taking the file off the compaction list"))?;
    tx.execute(
        "WITH d AS (DELETE FROM load_files WHERE file_id = $1 RETURNING *)
         INSERT INTO load_files_removed (file_id, content_hash, file_name, size_bytes, rows_loaded,
                                         committed_at, loaded_by, removed_by, how, trips_removed)
         SELECT file_id, content_hash, file_name, size_bytes, rows_loaded, committed_at, loaded_by,
                $2, $3, $4 FROM d",
        &[&file_id, &by, &how, &(trips as i64)],
    )
    .await
    .map_err(query_err(
        "moving the file's ledger row to load_files_removed",
    ))?;
    Ok(())
}

/// Deletes the file's trips, within the weeks its rollup rows name (chunk
/// exclusion on a hypertable).
async fn delete_trips(
    tx: &Transaction<'_>,
    file_id: i32,
    range: (
        Option<chrono::DateTime<chrono::Utc>>,
        Option<chrono::DateTime<chrono::Utc>>,
    ),
) -> Result<u64, DbError> {
    let what = query_err("deleting the file's trips");
    match range {
        (Some(lo), Some(hi)) => tx
            .execute(
                "DELETE FROM trips WHERE file_id = $1 AND datetime >= $2 AND datetime < $3",
                &[&file_id, &lo, &hi],
            )
            .await
            .map_err(what),
        _ => tx
            .execute("DELETE FROM trips WHERE file_id = $1", &[&file_id])
            .await
            .map_err(what),
    }
}

/// Deletes the file's trips and computes their rollups as the loader did.
async fn delete_trips_returning(
    tx: &Transaction<'_>,
    file_id: i32,
) -> Result<(u64, Rollup), DbError> {
    let grid: f64 = tx
        .query_one("SELECT coalesce(tripload_setting('grid_deg'), 0.01)", &[])
        .await
        .map_err(query_err("reading the grid"))?
        .get(0);
    let g = Grid {
        deg: grid,
        ..Grid::default()
    };
    let what = "deleting the file's trips";
    let rows = tx
        .query_raw(
            "DELETE FROM trips WHERE file_id = $1
             RETURNING region_id, datasource_id, datetime,
                       ST_X(origin), ST_Y(origin), ST_X(destination), ST_Y(destination)",
            [&file_id],
        )
        .await
        .map_err(query_err(what))?;
    pin_mut!(rows);
    let mut r = Rollup::default();
    let mut n = 0u64;
    while let Some(row) = rows.try_next().await.map_err(query_err(what))? {
        let at: chrono::DateTime<chrono::Utc> = row.get(2);
        r.add(
            &g,
            row.get(0),
            row.get(1),
            (row.get(3), row.get(4)),
            (row.get(5), row.get(6)),
            at.timestamp_micros(),
        );
        n += 1;
    }
    Ok((n, r))
}

/// Deletes the file's own rows of a cell rollup; returns their cells and
/// how many rows went.
async fn delete_own_cells(
    tx: &Transaction<'_>,
    table: &str,
    file_id: i32,
) -> Result<(FxHashSet<CellKey>, u64), DbError> {
    let rows = tx
        .query(
            &format!("DELETE FROM {table} WHERE file_id = $1 RETURNING side, ix, iy"),
            &[&file_id],
        )
        .await
        .map_err(query_err(format!("deleting the file's {table} rows")))?;
    let cells = rows
        .iter()
        .map(|r| (r.get::<_, i8>(0) as u8, r.get(1), r.get(2)))
        .collect();
    Ok((cells, rows.len() as u64))
}

/// What an unload would remove, for `--dry-run` (read only).
pub async fn plan(client: &tokio_postgres::Client, f: &LedgerFile) -> Result<String, DbError> {
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM trips WHERE file_id = $1),
                    (SELECT count(*) FROM rollup_region_week WHERE file_id = $1)
                  + (SELECT count(*) FROM rollup_region_source WHERE file_id = $1)
                  + (SELECT count(*) FROM rollup_cell_week WHERE file_id = $1)
                  + (SELECT count(*) FROM rollup_cell_points WHERE file_id = $1),
                    EXISTS (SELECT 1 FROM rollup_uncompacted WHERE file_id = $1)
                    OR NOT EXISTS (SELECT 1 FROM rollup_region_week WHERE file_id = $1)",
            &[&f.file_id],
        )
        .await
        .map_err(query_err("measuring what the unload would remove"))?;
    let (trips, own, merged): (i64, i64, bool) = (row.get(0), row.get(1), row.get(2));
    Ok(format!(
        "dry run: would unload {} (file id {}, {}, committed {}): {trips} trips, {own} rollup rows of its own{}, and its ledger row; nothing was changed",
        f.file_name,
        f.file_id,
        f.content_hash,
        f.committed_at,
        if merged && trips > 0 {
            ", and its contribution to the compacted rollups (subtracted)"
        } else {
            ""
        }
    ))
}

/// Unloads `file_id` in a transaction of its own.
pub async fn unload(
    client: &mut tokio_postgres::Client,
    file_id: i32,
) -> Result<Removed, LifecycleError> {
    let by = who(&*client).await?;
    let tx = client
        .transaction()
        .await
        .map_err(query_err("starting the unload transaction"))?;
    let r = unload_in(&tx, file_id, "unloaded", &by, Kind::Unloaded).await?;
    tx.commit()
        .await
        .map_err(query_err("committing the unload"))?;
    Ok(r)
}
