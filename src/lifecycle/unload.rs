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
//! The trips are found by the BRIN index on `trips(file_id)` (a file's rows
//! are contiguous), within the file's weeks when its own `rollup_region_week`
//! rows say which (on a hypertable, only those chunks are searched).

use crate::analytics::compact;
use crate::analytics::points::{self, Pt};
use crate::analytics::rollup::{self, CellWeeks, Grid, Rollup};
use crate::db::{query_err, DbError};
use crate::lifecycle::{
    event, record_event, resolve, who, FileSpec, LedgerFile, LifecycleError, ResolveError,
    EXIT_LOADING,
};
use crate::notify::events::Kind;
use bytes::Bytes;
use futures_util::{pin_mut, SinkExt, TryStreamExt};
use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::BTreeMap;
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

/// (side, ix, iy)
type CellKey = (u8, i32, i32);

/// Cells per transaction statement when subtracting from compacted rows.
const CELLS_PER_BATCH: usize = 128;

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
            "SELECT f.file_name,
                    EXISTS (SELECT 1 FROM rollup_uncompacted u WHERE u.file_id = f.file_id),
                    EXISTS (SELECT 1 FROM rollup_region_week r WHERE r.file_id = f.file_id),
                    EXISTS (SELECT 1 FROM rollup_region_source r WHERE r.file_id = f.file_id),
                    (SELECT min(week)::timestamp AT TIME ZONE 'UTC' FROM rollup_region_week r WHERE r.file_id = f.file_id),
                    (SELECT (max(week) + 7)::timestamp AT TIME ZONE 'UTC' FROM rollup_region_week r WHERE r.file_id = f.file_id)
             FROM load_files f WHERE f.file_id = $1 AND f.committed_at IS NOT NULL
             FOR UPDATE OF f",
            &[&file_id],
        )
        .await
        .map_err(query_err("locking the file's ledger row"))?
    else {
        return Err(LifecycleError::Gone(file_id));
    };
    Ok(FileState {
        file_name: row.get(0),
        listed: row.get(1),
        own_region_week: row.get(2),
        own_region_source: row.get(3),
        range: (row.get(4), row.get(5)),
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

/// Subtracts the file's trips per region and week from the compacted rows.
async fn subtract_region_week(tx: &Transaction<'_>, c: &Rollup) -> Result<u64, LifecycleError> {
    let (mut regions, mut weeks, mut trips) = (Vec::new(), Vec::new(), Vec::new());
    for (&(r, w), &n) in &c.region_week {
        regions.push(r);
        weeks.push(w);
        trips.push(n);
    }
    let row = tx
        .query_one(
            "WITH f AS (SELECT * FROM unnest($1::int2[], $2::int4[], $3::int8[]) AS f(region_id, week, trips)),
                  upd AS (UPDATE rollup_region_week r SET trips = r.trips - f.trips FROM f
                          WHERE r.file_id = 0 AND r.region_id = f.region_id
                            AND r.week = date '1970-01-01' + f.week
                          RETURNING r.region_id, r.week, r.trips)
             SELECT count(*), count(*) FILTER (WHERE trips < 0) FROM upd",
            &[&regions, &weeks, &trips],
        )
        .await
        .map_err(query_err("subtracting the file from rollup_region_week"))?;
    let (updated, negative): (i64, i64) = (row.get(0), row.get(1));
    if updated as usize != regions.len() || negative > 0 {
        return Err(LifecycleError::Inconsistent(format!(
            "rollup_region_week: {} of the file's {} (region, week) counts are not in the compacted rows",
            regions.len() as i64 - updated + negative,
            regions.len()
        )));
    }
    tx.execute(
        "DELETE FROM rollup_region_week r
          USING unnest($1::int2[], $2::int4[]) AS f(region_id, week)
          WHERE r.file_id = 0 AND r.region_id = f.region_id
            AND r.week = date '1970-01-01' + f.week AND r.trips = 0",
        &[&regions, &weeks],
    )
    .await
    .map_err(query_err("subtracting the file from rollup_region_week"))?;
    Ok(updated as u64)
}

/// Subtracts the file's trips per region and datasource from the compacted
/// rows; where the file held the latest datetime, finds the latest among the
/// remaining compacted trips.
async fn subtract_region_source(tx: &Transaction<'_>, c: &Rollup) -> Result<u64, LifecycleError> {
    let what = "subtracting the file from rollup_region_source";
    let mut updated = 0;
    for (&(region, source), &(n, last_us)) in &c.region_source {
        let last = chrono::DateTime::from_timestamp_micros(last_us).unwrap_or_default();
        let row = tx
            .query_opt(
                "UPDATE rollup_region_source SET trips = trips - $3
                 WHERE file_id = 0 AND region_id = $1 AND datasource_id = $2
                 RETURNING trips, last_at = $4",
                &[&region, &source, &n, &last],
            )
            .await
            .map_err(query_err(what))?;
        let Some(row) = row else {
            return Err(LifecycleError::Inconsistent(format!(
                "rollup_region_source has no compacted row for region id {region}, datasource id {source}"
            )));
        };
        updated += 1;
        let (left, held_last): (i64, bool) = (row.get(0), row.get(1));
        if left < 0 {
            return Err(LifecycleError::Inconsistent(format!(
                "rollup_region_source: region id {region}, datasource id {source} counts fewer trips than the file has"
            )));
        }
        if left == 0 {
            tx.execute(
                "DELETE FROM rollup_region_source WHERE file_id = 0 AND region_id = $1 AND datasource_id = $2",
                &[&region, &source],
            )
            .await
            .map_err(query_err(what))?;
        } else if held_last {
            let latest = latest_compacted(tx, region, source, last).await?;
            let Some(latest) = latest else {
                return Err(LifecycleError::Inconsistent(format!(
                    "rollup_region_source: region id {region}, datasource id {source} counts {left} more compacted trips, and there are none"
                )));
            };
            tx.execute(
                "UPDATE rollup_region_source SET last_at = $3
                 WHERE file_id = 0 AND region_id = $1 AND datasource_id = $2",
                &[&region, &source, &latest],
            )
            .await
            .map_err(query_err(what))?;
        }
    }
    Ok(updated)
}

/// The latest datetime at or before `before` of a trip of a compacted file
/// (one without rows of its own in `rollup_region_source`) in a region and
/// datasource. Searched back from `before` in growing windows, so that only
/// the recent part of `trips` is read (BRIN on datetime, or chunks).
async fn latest_compacted(
    tx: &Transaction<'_>,
    region: i16,
    source: i16,
    before: chrono::DateTime<chrono::Utc>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, DbError> {
    for days in [1i64, 7, 35, 366, 3660, i64::MAX] {
        let from = if days == i64::MAX {
            chrono::DateTime::<chrono::Utc>::MIN_UTC
        } else {
            before - chrono::Duration::days(days)
        };
        let found: Option<chrono::DateTime<chrono::Utc>> = tx
            .query_one(
                "SELECT max(t.datetime) FROM trips t
                 WHERE t.region_id = $1 AND t.datasource_id = $2
                   AND t.datetime >= $3 AND t.datetime <= $4
                   AND NOT EXISTS (SELECT 1 FROM rollup_region_source s WHERE s.file_id = t.file_id)",
                &[&region, &source, &from, &before],
            )
            .await
            .map_err(query_err("finding the latest remaining trip"))?
            .get(0);
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

/// Subtracts the file's trips per cell and week from the compacted
/// `rollup_cell_week` rows of `cells`.
async fn subtract_cell_weeks(
    tx: &Transaction<'_>,
    cells: &[(CellKey, Vec<(i32, i64)>)],
) -> Result<(), LifecycleError> {
    for batch in cells.chunks(CELLS_PER_BATCH * 8) {
        let sides: Vec<i8> = batch.iter().map(|c| c.0 .0 as i8).collect();
        let ixs: Vec<i32> = batch.iter().map(|c| c.0 .1).collect();
        let iys: Vec<i32> = batch.iter().map(|c| c.0 .2).collect();
        let rows = tx
            .query(
                "DELETE FROM rollup_cell_week w
                  USING unnest($1::\"char\"[], $2::int4[], $3::int4[]) AS c(side, ix, iy)
                  WHERE w.file_id = 0 AND w.side = c.side AND w.ix = c.ix AND w.iy = c.iy
                 RETURNING w.side, w.ix, w.iy, w.weeks, w.trips",
                &[&sides, &ixs, &iys],
            )
            .await
            .map_err(query_err("reading the compacted cell/week counts"))?;
        let mut stored: FxHashMap<CellKey, BTreeMap<i32, i64>> = FxHashMap::default();
        for r in &rows {
            let (weeks, trips): (Vec<i32>, Vec<i64>) = (r.get(3), r.get(4));
            let c = stored
                .entry((r.get::<_, i8>(0) as u8, r.get(1), r.get(2)))
                .or_default();
            for (w, n) in weeks.into_iter().zip(trips) {
                *c.entry(w).or_default() += n;
            }
        }
        for (cell, weeks) in batch {
            let c = stored.get_mut(cell);
            for &(w, n) in weeks {
                let have = c.as_ref().and_then(|c| c.get(&w)).copied().unwrap_or(0);
                if have < n {
                    return Err(LifecycleError::Inconsistent(format!(
                        "rollup_cell_week: cell {:?} week {w} counts {have} compacted trips, the file has {n}",
                        cell
                    )));
                }
            }
            if let Some(c) = c {
                for &(w, n) in weeks {
                    if let Some(v) = c.get_mut(&w) {
                        *v -= n;
                    }
                }
            }
        }
        let mut merged = CellWeeks::default();
        for (cell, weeks) in stored {
            let c = merged.entry(cell).or_default();
            for (w, n) in weeks {
                if n != 0 {
                    c.add(w, n);
                }
            }
        }
        copy_text(
            tx,
            "rollup_cell_week (file_id, side, ix, iy, weeks, trips)",
            rollup::cell_week_rows(&merged, compact::COMPACTED),
        )
        .await?;
    }
    Ok(())
}

async fn copy_text(tx: &Transaction<'_>, target: &str, rows: String) -> Result<(), DbError> {
    if rows.is_empty() {
        return Ok(());
    }
    let what = format!("writing {target}");
    let sink = tx
        .copy_in::<_, Bytes>(&format!("COPY {target} FROM STDIN"))
        .await
        .map_err(query_err(what.clone()))?;
    pin_mut!(sink);
    sink.send(Bytes::from(rows))
        .await
        .map_err(query_err(what.clone()))?;
    sink.as_mut().finish().await.map_err(query_err(what))?;
    Ok(())
}

/// The exact identity of a point in a cell: week and coordinate keys.
type PointKey = (i32, [u8; 8], [u8; 8]);

/// Removes the file's points (`cells`: each the points of one (side, cell),
/// sorted by week first) from the compacted cell point rows: the rows from
/// the first that can hold one of them on are read, the points removed once
/// each, and the rest written back as full rows.
async fn subtract_cell_points(
    tx: &Transaction<'_>,
    cells: &[&[Pt]],
    scratch: &mut points::Scratch,
) -> Result<(), LifecycleError> {
    let sides: Vec<i8> = cells.iter().map(|c| c[0].side as i8).collect();
    let ixs: Vec<i32> = cells.iter().map(|c| c[0].ix).collect();
    let iys: Vec<i32> = cells.iter().map(|c| c[0].iy).collect();
    let w0s: Vec<i32> = cells
        .iter()
        .map(|c| c.iter().map(|p| p.week).min().unwrap_or(i32::MIN))
        .collect();
    let full = (8 * points::MAX_PER_ROW) as i32;
    let rows = tx
        .query(
            "DELETE FROM rollup_cell_points p
              USING unnest($1::\"char\"[], $2::int4[], $3::int4[], $4::int4[]) AS c(side, ix, iy, w0)
              WHERE p.file_id = 0 AND p.side = c.side AND p.ix = c.ix AND p.iy = c.iy
                AND (p.weeks[cardinality(p.weeks)] >= c.w0 OR length(p.lons) < $5)
             RETURNING p.side, p.ix, p.iy, p.weeks, p.ends, p.lons, p.lats_sorted, p.lat_pos",
            &[&sides, &ixs, &iys, &w0s, &full],
        )
        .await
        .map_err(query_err("reading the compacted cell points"))?;
    let mut pts: Vec<Pt> = Vec::new();
    for r in &rows {
        compact::decode_returned(r, 0, &mut pts)?;
    }
    drop(rows);
    let mut gone: FxHashMap<(CellKey, PointKey), u32> = FxHashMap::default();
    for c in cells {
        for p in c.iter() {
            *gone
                .entry((
                    (p.side, p.ix, p.iy),
                    (p.week, points::key(p.lon), points::key(p.lat)),
                ))
                .or_default() += 1;
        }
    }
    pts.retain(|p| {
        let k = (
            (p.side, p.ix, p.iy),
            (p.week, points::key(p.lon), points::key(p.lat)),
        );
        match gone.get_mut(&k) {
            Some(n) if *n > 0 => {
                *n -= 1;
                false
            }
            _ => true,
        }
    });
    let missing: u32 = gone.values().sum();
    if missing > 0 {
        return Err(LifecycleError::Inconsistent(format!(
            "{missing} of the file's points are not in the compacted cell points"
        )));
    }
    let (grouped, lens) = scratch.group(&pts);
    let mut out = Vec::with_capacity(grouped.len() * 20);
    let mut at = 0;
    for &n in lens {
        points::encode_rows(compact::COMPACTED, &grouped[at..at + n], &mut out);
        at += n;
    }
    if !out.is_empty() {
        compact::copy_binary(tx, out).await?;
    }
    Ok(())
}

/// What an unload would remove, for `--dry-run` (read only).
async fn plan(client: &tokio_postgres::Client, f: &LedgerFile) -> Result<String, DbError> {
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

/// `tripload unload`: resolves `spec`, unloads it (or with `dry_run` says
/// what would go), prints the outcome; returns the exit code.
pub async fn command(conninfo: &str, spec: FileSpec, dry_run: bool, wait: bool) -> u8 {
    let start = Instant::now();
    let mut client = match crate::db::connect(conninfo).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return crate::exit::EXIT_SETUP;
        }
    };
    let file = match resolve(&mut client, &spec, wait).await {
        Ok(f) => f,
        Err(e @ ResolveError::Loading { .. }) => {
            eprintln!("error: {e}");
            return EXIT_LOADING;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return crate::exit::EXIT_SETUP;
        }
    };
    if dry_run {
        return super::print_dry_run(plan(&client, &file).await);
    }
    match unload(&mut client, file.file_id).await {
        Ok(r) => {
            println!(
                "unloaded {r} in {:.2} s; the same bytes can be loaded again",
                start.elapsed().as_secs_f64()
            );
            crate::exit::EXIT_OK
        }
        Err(e) => {
            eprintln!("error: unloading {}: {e}", file.file_name);
            crate::exit::EXIT_FILES_FAILED
        }
    }
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
