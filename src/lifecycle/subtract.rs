//! Subtracting one file's contribution from the compacted rollup rows
//! (`file_id` 0) it was merged into: counts from `rollup_region_week`,
//! `rollup_region_source` and `rollup_cell_week`, points from
//! `rollup_cell_points`. The contribution is what the `DELETE` of its trips
//! returned ([`super::unload`]); a count or point that is not there is an
//! error ([`LifecycleError::Inconsistent`]), never a silent miss.

use crate::analytics::compact;
use crate::analytics::points::{self, Pt};
use crate::analytics::rollup::{self, CellWeeks, Rollup};
use crate::db::{query_err, DbError};
use crate::lifecycle::LifecycleError;
use bytes::Bytes;
use futures_util::{pin_mut, SinkExt};
use rustc_hash::FxHashMap;
use std::collections::BTreeMap;
use tokio_postgres::Transaction;

/// (side, ix, iy)
pub(super) type CellKey = (u8, i32, i32);

/// Cells per transaction statement when subtracting from compacted rows.
pub(super) const CELLS_PER_BATCH: usize = 128;

/// Subtracts the file's trips per region and week from the compacted rows.
pub(super) async fn subtract_region_week(
    tx: &Transaction<'_>,
    c: &Rollup,
) -> Result<u64, LifecycleError> {
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
pub(super) async fn subtract_region_source(
    tx: &Transaction<'_>,
    c: &Rollup,
) -> Result<u64, LifecycleError> {
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
pub(super) async fn subtract_cell_weeks(
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
pub(super) async fn subtract_cell_points(
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
