//! Retention: dropping the trips older than a cut-off, with the rollups kept
//! exact, in one transaction.
//!
//! The cut-off is rounded down to a week boundary (Monday 00:00 UTC, the
//! rollups' week), so every week is kept or dropped whole and the weekly
//! rollups stay exact without reading kept trips: the command says so.
//!
//! - trips: on TimescaleDB whole chunks before the cut-off go with
//!   `drop_chunks` and the rest of the chunk the cut-off falls in with a
//!   `DELETE` (chunk exclusion reads only that chunk); on Citus whole time
//!   partitions go with `DROP TABLE` (after taking the loading lock of
//!   [`crate::db::partitions`] exclusively, so no file is between making its
//!   partitions and its COPY) and the rest of the partition the cut-off falls
//!   in, if any, with a `DELETE` (with weekly partitions there is none: they
//!   start on Mondays, as the cut-off does); on a plain table one `DELETE`
//!   through the BRIN index on `datetime`;
//! - `rollup_region_week`: the rows of dropped weeks are deleted;
//! - `rollup_cell_week`: the dropped weeks are cut from the front of each
//!   row's arrays (only rows whose first week is dropped are read, by an
//!   index on `weeks[1]`);
//! - `rollup_cell_points`: rows wholly before the cut-off are deleted, and
//!   the row of each run that straddles it is decoded, its dropped weeks
//!   removed and written again ([`points::encode_rows`]);
//! - `rollup_region_source` has no week: the dropped trips are counted per
//!   (file, region, datasource) from the trips before they go (reading only
//!   the dropped part of the table) and subtracted from the file's row, or
//!   from the compacted row for a compacted file. The latest datetime stays
//!   right: every kept trip is later than every dropped one, so a row with
//!   trips left keeps its maximum.
//!
//! Cell points of files still loading (listed in `cell_points_pending`) are
//! left alone: such a file's trips and rollups are not visible yet, and it
//! commits whole, old weeks included (a later retention drops them).
//!
//! Retention holds the lifecycle lock and the compaction lock shared
//! ([`crate::lifecycle::lock`]). The rows it cuts from the middle of
//! a compacted run are no longer full; compaction rewrites such rows with
//! the cell's next merge, and every query counts each row on its own, so
//! answers stay exact.

use crate::analytics::compact;
use crate::analytics::points::{self, Pt};
use crate::db::{query_err, DbError};
use crate::lifecycle::{event, record_event, who, LifecycleError};
use crate::notify::events::Kind;
use chrono::{DateTime, NaiveDate, Utc};
use std::time::Instant;
use tokio_postgres::{Client, Transaction};

/// What `--older-than` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OlderThan {
    /// Trips before this day (00:00 UTC).
    Date(NaiveDate),
    /// Trips older than now minus this PostgreSQL interval ("90 days", "6 months").
    Interval(String),
}

impl OlderThan {
    pub fn parse(s: &str) -> Result<OlderThan, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err(
                "--older-than needs a date (YYYY-MM-DD) or an interval such as '90 days'".into(),
            );
        }
        if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
            return Ok(OlderThan::Date(d));
        }
        if s.starts_with(|c: char| c.is_ascii_digit()) && s.contains(char::is_alphabetic) {
            return Ok(OlderThan::Interval(s.to_string()));
        }
        Err(format!(
            "--older-than {s:?}: expected a date (YYYY-MM-DD) or an interval such as '90 days' or '6 months'"
        ))
    }

    /// As given on the command line.
    pub fn text(&self) -> String {
        match self {
            OlderThan::Date(d) => d.to_string(),
            OlderThan::Interval(i) => i.clone(),
        }
    }
}

/// The cut-off: what was asked, and the Monday 00:00 UTC it rounds down to.
#[derive(Debug, Clone)]
pub struct Cutoff {
    pub asked: DateTime<Utc>,
    pub at: DateTime<Utc>,
    /// `at` as the rollups' week number (days since 1970-01-01 of the Monday).
    pub week: i32,
}

impl std::fmt::Display for Cutoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.at.format("%Y-%m-%d"))?;
        if self.asked != self.at {
            write!(
                f,
                " (asked {}, rounded down to the Monday 00:00 UTC that starts its week: the weekly rollups stay exact)",
                self.asked.format("%Y-%m-%d %H:%M:%S UTC")
            )?;
        }
        Ok(())
    }
}

/// Computes the cut-off (the server's clock for an interval).
pub async fn cutoff(
    client: &impl tokio_postgres::GenericClient,
    older: &OlderThan,
) -> Result<Cutoff, DbError> {
    let asked: DateTime<Utc> = match older {
        OlderThan::Date(d) => d
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc())
            .unwrap_or_default(),
        OlderThan::Interval(i) => client
            .query_one("SELECT now() - $1::text::interval", &[i])
            .await
            .map_err(query_err(format!(
                "reading --older-than {i:?} as a PostgreSQL interval (e.g. '90 days', '6 months')"
            )))?
            .get(0),
    };
    Ok(round_down(asked))
}

/// The cut-off for `asked`: the Monday 00:00 UTC that starts its week.
pub fn round_down(asked: DateTime<Utc>) -> Cutoff {
    let week = crate::analytics::rollup::week_of(asked.timestamp_micros());
    let at = DateTime::from_timestamp(week as i64 * 86_400, 0).unwrap_or_default();
    Cutoff { asked, at, week }
}

/// What a retention dropped.
#[derive(Debug, Clone, Default)]
pub struct Retained {
    pub trips: u64,
    /// Whole chunks (TimescaleDB) or time partitions (Citus) dropped.
    pub chunks: u64,
    /// What `chunks` counts: "chunks" or "partitions".
    pub whole: &'static str,
    pub rollup_rows_deleted: u64,
    pub rollup_rows_cut: u64,
}

async fn hypertable(client: &impl tokio_postgres::GenericClient) -> Result<bool, DbError> {
    Ok(client
        .query_one(
            "SELECT coalesce((SELECT value = 'timescaledb' FROM tripload_settings WHERE key = 'time_layout'), false)",
            &[],
        )
        .await
        .map_err(query_err("reading the time layout"))?
        .get(0))
}

/// Drops everything before `cut` inside `tx` (see the module doc), step by
/// step: the per-file counts first (they are read from the trips that go),
/// then the trips, the weekly rollups, the cell points, and the record.
pub async fn retain_in(
    tx: &Transaction<'_>,
    cut: &Cutoff,
    by: &str,
    asked: &str,
) -> Result<Retained, LifecycleError> {
    let start = Instant::now();
    let partitioned = crate::db::partitions::interval(tx).await?.is_some();
    if partitioned {
        // Before the lifecycle lock: a loader holds this one first.
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, $2)",
            &[
                &crate::db::partitions::LOADING.0,
                &crate::db::partitions::LOADING.1,
            ],
        )
        .await
        .map_err(query_err(
            "waiting for the files making their time partitions",
        ))?;
    }
    crate::lifecycle::lock(tx).await?;
    let mut done = Retained {
        whole: if partitioned { "partitions" } else { "chunks" },
        ..Retained::default()
    };
    let (trips, emptied) = subtract_region_source(tx, cut).await?;
    done.trips = trips;
    done.rollup_rows_deleted += emptied;
    done.chunks = drop_trips(tx, cut, partitioned).await?;
    done.rollup_rows_deleted += drop_region_weeks(tx, cut).await?;
    let (deleted, cut_rows) = cut_cell_weeks(tx, cut).await?;
    done.rollup_rows_deleted += deleted;
    done.rollup_rows_cut += cut_rows;
    let (deleted, cut_rows) = cut_cell_points(tx, cut.week).await?;
    done.rollup_rows_deleted += deleted;
    done.rollup_rows_cut += cut_rows;
    record(tx, cut, by, asked, &done, start).await?;
    Ok(done)
}

/// Subtracts the trips before the cut-off from `rollup_region_source`, per
/// (file, region, datasource), counted from the trips that go (or from the
/// compacted row of a compacted file), and deletes the rows left empty.
/// Returns (trips that go, rows deleted).
async fn subtract_region_source(
    tx: &Transaction<'_>,
    cut: &Cutoff,
) -> Result<(u64, u64), LifecycleError> {
    let dropped = dropped_per_key(tx, cut).await?;
    let trips: i64 = dropped.n.iter().sum();
    // Uncorrelated statements, so that Citus plans them on its distributed
    // tables: the keys go as arrays.
    let rows = tx
        .query(
            "UPDATE rollup_region_source r SET trips = r.trips - t.n
             FROM unnest($1::int4[], $2::int2[], $3::int2[], $4::int8[]) AS t(file_id, region_id, datasource_id, n)
             WHERE r.file_id = t.file_id AND r.region_id = t.region_id AND r.datasource_id = t.datasource_id
             RETURNING r.trips",
            &[&dropped.file, &dropped.region, &dropped.source, &dropped.n],
        )
        .await
        .map_err(query_err("subtracting the trips to drop from rollup_region_source"))?;
    let negative = rows.iter().filter(|r| r.get::<_, i64>(0) < 0).count();
    let keys = dropped.n.len();
    if rows.len() != keys || negative > 0 {
        return Err(LifecycleError::Inconsistent(format!(
            "rollup_region_source: {} of {keys} (file, region, datasource) rows do not count the trips being dropped",
            keys.saturating_sub(rows.len()) + negative
        )));
    }
    let emptied = tx
        .execute("DELETE FROM rollup_region_source WHERE trips = 0", &[])
        .await
        .map_err(query_err("deleting emptied rollup_region_source rows"))?;
    Ok((trips as u64, emptied))
}

/// The trips before the cut-off per (file, region, datasource) of
/// `rollup_region_source`: the file's own rows, or the compacted rows
/// (file 0) for a file whose rows were merged.
#[derive(Default)]
struct DroppedPerKey {
    file: Vec<i32>,
    region: Vec<i16>,
    source: Vec<i16>,
    n: Vec<i64>,
}

async fn dropped_per_key(
    tx: &Transaction<'_>,
    cut: &Cutoff,
) -> Result<DroppedPerKey, LifecycleError> {
    let counted = tx
        .query(
            "SELECT file_id, region_id, datasource_id, count(*)
             FROM trips WHERE datetime < $1 GROUP BY 1, 2, 3",
            &[&cut.at],
        )
        .await
        .map_err(query_err(
            "counting the trips to drop per file, region and datasource",
        ))?;
    let files: Vec<i32> = counted
        .iter()
        .map(|r| r.get::<_, i32>(0))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let own: std::collections::HashSet<i32> = tx
        .query(
            "SELECT DISTINCT file_id FROM rollup_region_source WHERE file_id = ANY($1)",
            &[&files],
        )
        .await
        .map_err(query_err(
            "finding the files with rollup_region_source rows of their own",
        ))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut sums: std::collections::BTreeMap<(i32, i16, i16), i64> = Default::default();
    for r in &counted {
        let file: i32 = r.get(0);
        let key = (
            if own.contains(&file) { file } else { 0 },
            r.get(1),
            r.get(2),
        );
        *sums.entry(key).or_default() += r.get::<_, i64>(3);
    }
    let mut d = DroppedPerKey::default();
    for ((file, region, source), n) in sums {
        d.file.push(file);
        d.region.push(region);
        d.source.push(source);
        d.n.push(n);
    }
    Ok(d)
}

/// Deletes the trips before the cut-off; whole chunks (TimescaleDB) or time
/// partitions (Citus) go first. Returns the number of those dropped.
async fn drop_trips(
    tx: &Transaction<'_>,
    cut: &Cutoff,
    partitioned: bool,
) -> Result<u64, LifecycleError> {
    let mut chunks = 0;
    if partitioned {
        chunks = drop_partitions(tx, cut).await?;
    } else if hypertable(tx).await? {
        chunks = tx
            .query_one(
                "SELECT count(*) FROM drop_chunks('trips', older_than => $1::timestamptz)",
                &[&cut.at],
            )
            .await
            .map_err(query_err("dropping whole chunks before the cut-off"))?
            .get::<_, i64>(0) as u64;
    }
    let deleted = tx
        .execute("DELETE FROM trips WHERE datetime < $1", &[&cut.at])
        .await
        .map_err(query_err("deleting the trips before the cut-off"))?;
    tracing::debug!("retain: {chunks} whole chunks or partitions dropped, {deleted} trips deleted");
    Ok(chunks)
}

/// Drops the time partitions of `trips` that end at or before the cut-off.
async fn drop_partitions(tx: &Transaction<'_>, cut: &Cutoff) -> Result<u64, LifecycleError> {
    let old = crate::db::partitions::before(tx, cut.at).await?;
    for p in &old {
        tx.batch_execute(&format!("DROP TABLE {}", p.name))
            .await
            .map_err(query_err(format!(
                "dropping the time partition {} ({} to {})",
                p.name,
                p.from.format("%Y-%m-%d"),
                p.to.format("%Y-%m-%d")
            )))?;
    }
    Ok(old.len() as u64)
}

/// Deletes the rows of the dropped weeks from `rollup_region_week`.
async fn drop_region_weeks(tx: &Transaction<'_>, cut: &Cutoff) -> Result<u64, LifecycleError> {
    Ok(tx
        .execute(
            "DELETE FROM rollup_region_week WHERE week < date '1970-01-01' + $1::int4",
            &[&cut.week],
        )
        .await
        .map_err(query_err(
            "deleting the dropped weeks of rollup_region_week",
        ))?)
}

/// Cuts the dropped weeks from the front of `rollup_cell_week`'s arrays and
/// deletes the rows left empty. Returns (rows deleted, rows cut).
async fn cut_cell_weeks(tx: &Transaction<'_>, cut: &Cutoff) -> Result<(u64, u64), LifecycleError> {
    let cut_rows = tx
        .execute(
            "UPDATE rollup_cell_week SET (weeks, trips) =
                 (SELECT coalesce(array_agg(u.w ORDER BY u.i), '{}'), coalesce(array_agg(u.n ORDER BY u.i), '{}')
                  FROM unnest(weeks, trips) WITH ORDINALITY AS u(w, n, i) WHERE u.w >= $1)
             WHERE weeks[1] < $1",
            &[&cut.week],
        )
        .await
        .map_err(query_err("cutting the dropped weeks from rollup_cell_week"))?;
    let deleted = tx
        .execute("DELETE FROM rollup_cell_week WHERE weeks[1] IS NULL", &[])
        .await
        .map_err(query_err("deleting emptied rollup_cell_week rows"))?;
    Ok((deleted, cut_rows))
}

/// Records the run in `retention_runs` and as the event `retained`, in the
/// same transaction.
async fn record(
    tx: &Transaction<'_>,
    cut: &Cutoff,
    by: &str,
    asked: &str,
    done: &Retained,
    start: Instant,
) -> Result<(), LifecycleError> {
    tx.execute(
        "INSERT INTO retention_runs (cut_off, asked, by, trips_dropped, chunks_dropped)
         VALUES ($1, $2, $3, $4, $5)",
        &[
            &cut.at,
            &asked,
            &by,
            &(done.trips as i64),
            &(done.chunks as i32),
        ],
    )
    .await
    .map_err(query_err("recording the retention run"))?;
    record_event(
        tx,
        &event(
            Kind::Retained,
            &format!("before {}", cut.at.format("%Y-%m-%d")),
            done.trips,
            start.elapsed().as_secs_f64(),
            format!(
                "trips before {} dropped by {by} (asked: older than {asked}); {} whole {}",
                cut.at.format("%Y-%m-%d %H:%M UTC"),
                done.chunks,
                done.whole
            ),
        ),
    )
    .await?;
    Ok(())
}

/// Deletes the cell point rows wholly before week `week` and cuts the
/// dropped weeks from the rows that straddle it (files still loading left
/// alone). Returns (rows deleted, rows cut).
async fn cut_cell_points(tx: &Transaction<'_>, week: i32) -> Result<(u64, u64), LifecycleError> {
    let deleted = tx
        .execute(
            "DELETE FROM rollup_cell_points
             WHERE weeks[1] < $1 AND weeks[cardinality(weeks)] < $1
               AND file_id NOT IN (SELECT file_id FROM cell_points_pending)",
            &[&week],
        )
        .await
        .map_err(query_err("deleting cell points before the cut-off"))?;
    let rows = tx
        .query(
            "DELETE FROM rollup_cell_points
             WHERE weeks[1] < $1 AND file_id NOT IN (SELECT file_id FROM cell_points_pending)
             RETURNING file_id, side, ix, iy, weeks, ends, lons, lats_sorted, lat_pos",
            &[&week],
        )
        .await
        .map_err(query_err(
            "reading the cell points that straddle the cut-off",
        ))?;
    let mut out = Vec::new();
    let mut pts: Vec<Pt> = Vec::new();
    for r in &rows {
        pts.clear();
        compact::decode_returned(r, 1, &mut pts)?;
        // A row's points are in row order (week, longitude, latitude): the
        // kept ones still are, and fit one row.
        pts.retain(|p| p.week >= week);
        points::encode_rows(r.get(0), &pts, &mut out);
    }
    if !out.is_empty() {
        compact::copy_binary(tx, out).await?;
    }
    Ok((deleted, rows.len() as u64))
}

/// What a retention would drop, for `--dry-run` (read only).
pub async fn plan(client: &Client, cut: &Cutoff) -> Result<String, DbError> {
    let partitioned = crate::db::partitions::interval(client).await?.is_some();
    let whole = if partitioned { "partitions" } else { "chunks" };
    let chunks: i64 = if partitioned {
        crate::db::partitions::before(client, cut.at).await?.len() as i64
    } else if hypertable(client).await? {
        client
            .query_one(
                "SELECT count(*) FROM show_chunks('trips', older_than => $1::timestamptz)",
                &[&cut.at],
            )
            .await
            .map_err(query_err("listing the chunks before the cut-off"))?
            .get(0)
    } else {
        0
    };
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM trips WHERE datetime < $1),
                    (SELECT count(*) FROM rollup_region_week WHERE week < date '1970-01-01' + $2::int4),
                    (SELECT count(*) FROM rollup_cell_week WHERE weeks[1] < $2),
                    (SELECT count(*) FROM rollup_cell_points WHERE weeks[1] < $2)",
            &[&cut.at, &cut.week],
        )
        .await
        .map_err(query_err("measuring what retention would drop"))?;
    let (trips, rw, cw, cp): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    Ok(format!(
        "dry run: would drop the trips before {cut}: {trips} trips ({chunks} whole {whole}), \
         {rw} rollup_region_week rows, and cut or delete {cw} rollup_cell_week and {cp} rollup_cell_points rows; nothing was changed"
    ))
}

/// One run of a retention policy (`watch --retain`): drops what is older
/// than `older` when there is anything to drop; returns the summary line,
/// or `None` when nothing was older (no transaction, no event).
pub async fn apply(conninfo: &str, older: &OlderThan) -> Result<Option<String>, LifecycleError> {
    let mut client = crate::db::connect(conninfo).await?;
    let cut = cutoff(&client, older).await?;
    let any: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM trips WHERE datetime < $1)",
            &[&cut.at],
        )
        .await
        .map_err(query_err("looking for trips before the cut-off"))?
        .get(0);
    if !any {
        return Ok(None);
    }
    let r = retain(&mut client, &cut, &older.text()).await?;
    Ok(Some(format!(
        "retention: dropped {} trips before {} ({} whole {})",
        r.trips,
        cut.at.format("%Y-%m-%d"),
        r.chunks,
        r.whole
    )))
}

/// Drops everything before `cut` in a transaction of its own.
pub async fn retain(
    client: &mut Client,
    cut: &Cutoff,
    asked: &str,
) -> Result<Retained, LifecycleError> {
    let by = who(&*client).await?;
    let tx = client
        .transaction()
        .await
        .map_err(query_err("starting the retention transaction"))?;
    let r = retain_in(&tx, cut, &by, asked).await?;
    tx.commit()
        .await
        .map_err(query_err("committing the retention"))?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_than_is_a_date_or_an_interval() {
        assert_eq!(
            OlderThan::parse("2018-05-30"),
            Ok(OlderThan::Date(
                NaiveDate::from_ymd_opt(2018, 5, 30).unwrap()
            ))
        );
        assert_eq!(
            OlderThan::parse("90 days"),
            Ok(OlderThan::Interval("90 days".into()))
        );
        assert!(OlderThan::parse("").is_err());
        assert!(OlderThan::parse("yesterday").is_err());
        assert!(OlderThan::parse("2018-02-30").is_err());
    }

    #[test]
    fn the_cut_off_rounds_down_to_monday_utc() {
        let at = |d: &str| {
            chrono::NaiveDateTime::parse_from_str(d, "%Y-%m-%d %H:%M:%S")
                .unwrap()
                .and_utc()
        };
        // 2018-05-30 was a Wednesday; 2018-05-28 a Monday.
        let c = round_down(at("2018-05-30 13:00:00"));
        assert_eq!(c.at, at("2018-05-28 00:00:00"));
        assert!(c.to_string().contains("rounded down"), "{c}");
        let monday = round_down(at("2018-05-28 00:00:00"));
        assert_eq!(monday.at, monday.asked);
        assert_eq!(monday.to_string(), "2018-05-28");
        assert_eq!(round_down(at("2018-06-03 23:59:59")).at, monday.at);
    }
}
