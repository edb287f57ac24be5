//! Rollups maintained at load time (no I/O here): per-file partial aggregates
//! computed by the workers beside the encoding, merged in file order, and
//! written in the file's own transaction — so they are exactly consistent with
//! the committed trips, and a rolled-back file contributes nothing.
//!
//! Grid: a lon/lat grid of `deg`-degree cells, cell (ix, iy) =
//! (floor(lon/deg), floor(lat/deg)). Weeks are ISO weeks (Monday 00:00 UTC),
//! identified by the day number (since 1970-01-01) of their Monday.
//!
//! - per region and week: trip counts (weekly average for a region);
//! - per region and datasource: counts and latest datetime (the bonus questions);
//! - one point per side (origin/destination) of every trip, with its cell and
//!   week, for [`crate::points`]: grouped by cell after the trips' COPY, they
//!   give the trip counts per cell and week (the cells wholly inside a
//!   bounding box) and the exact coordinates (the cells its edge crosses).
//!
//! Keys carry the file id, so concurrent files never touch the same rows.
//! Every map is bounded by regions × datasources × cells × weeks, never by
//! the number of rows.

use crate::points::Pt;
use rustc_hash::FxHashMap as HashMap;
use std::fmt::Write as _;

/// Grid and time-of-day bucket, fixed when the schema is created.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grid {
    pub deg: f64,
    pub bucket_secs: i64,
}

impl Default for Grid {
    fn default() -> Self {
        Grid {
            deg: 0.01,
            bucket_secs: 3600,
        }
    }
}

impl Grid {
    pub fn cell(&self, v: f64) -> i32 {
        (v / self.deg).floor() as i32
    }
    pub fn bucket(&self, datetime_us: i64) -> i16 {
        let secs_of_day = datetime_us.div_euclid(1_000_000).rem_euclid(86_400);
        (secs_of_day / self.bucket_secs.max(1)) as i16
    }
}

/// Day number of the Monday (UTC) of the week containing `datetime_us`.
pub fn week_of(datetime_us: i64) -> i32 {
    let day = datetime_us.div_euclid(86_400 * 1_000_000);
    // 1970-01-01 was a Thursday (Monday = 0 → Thursday = 3).
    (day - (day + 3).rem_euclid(7)) as i32
}

/// Side of a trip a spatial rollup is about.
pub const ORIGIN: u8 = b'o';
pub const DESTINATION: u8 = b'd';

#[derive(Debug, Default, Clone)]
pub struct Rollup {
    pub region_week: HashMap<(i16, i32), i64>,
    pub region_source: HashMap<(i16, i16), (i64, i64)>,
    /// One [`Pt`] per side of each trip of the chunk, in file order: the
    /// loader moves them to the file's [`crate::points::Spill`], and the
    /// per-cell week counts (`rollup_cell_week`) are counted from the same
    /// points once they are grouped by cell ([`crate::points::cell_week_row`]),
    /// not here: a chunk spreads its trips over thousands of cells, so a
    /// counter per cell costs a cache miss per trip (14% of the loader's CPU
    /// when it was done here).
    pub pending: Vec<Pt>,
}

impl PartialEq for Rollup {
    fn eq(&self, other: &Self) -> bool {
        let sorted = |r: &Rollup| {
            let mut v = r.pending.clone();
            v.sort_by(crate::points::cmp);
            v
        };
        self.region_week == other.region_week
            && self.region_source == other.region_source
            && sorted(self) == sorted(other)
    }
}

impl Rollup {
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        g: &Grid,
        region: i16,
        datasource: i16,
        (ox, oy): (f64, f64),
        (dx, dy): (f64, f64),
        datetime_us: i64,
    ) {
        let week = week_of(datetime_us);
        *self.region_week.entry((region, week)).or_default() += 1;
        let rs = self
            .region_source
            .entry((region, datasource))
            .or_insert((0, i64::MIN));
        rs.0 += 1;
        rs.1 = rs.1.max(datetime_us);
        let (oix, oiy, dix, diy) = (g.cell(ox), g.cell(oy), g.cell(dx), g.cell(dy));
        self.pending.push(Pt {
            side: ORIGIN,
            ix: oix,
            iy: oiy,
            week,
            lon: ox,
            lat: oy,
        });
        self.pending.push(Pt {
            side: DESTINATION,
            ix: dix,
            iy: diy,
            week,
            lon: dx,
            lat: dy,
        });
    }

    /// Folds the per-region counts of `other` (a later chunk) into `self`.
    /// Its points are left out: they go to the file's spill, not to memory.
    pub fn merge(&mut self, other: Rollup) {
        for (k, v) in other.region_week {
            *self.region_week.entry(k).or_default() += v;
        }
        for (k, (n, last)) in other.region_source {
            let e = self.region_source.entry(k).or_insert((0, i64::MIN));
            e.0 += n;
            e.1 = e.1.max(last);
        }
    }
}

fn ts(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string())
        .unwrap_or_default()
}

fn day(d: i32) -> String {
    chrono::DateTime::from_timestamp(d as i64 * 86_400, 0)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

/// COPY text rows (tab-separated) for each rollup table.
impl Rollup {
    /// `rollup_region_week (file_id, region_id, week, trips)`
    pub fn region_week_rows(&self, file_id: i32) -> String {
        let mut out = String::new();
        for ((r, w), n) in &self.region_week {
            let _ = writeln!(out, "{file_id}\t{r}\t{}\t{n}", day(*w));
        }
        out
    }

    /// `rollup_region_source (file_id, region_id, datasource_id, trips, last_at)`
    pub fn region_source_rows(&self, file_id: i32) -> String {
        let mut out = String::new();
        for ((r, d), (n, last)) in &self.region_source {
            let _ = writeln!(out, "{file_id}\t{r}\t{d}\t{n}\t{}", ts(*last));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weeks_start_on_monday_utc() {
        // 2018-05-28 was a Monday; 2018-06-03 a Sunday.
        let monday = crate::parse::parse_datetime(b"2018-05-28 00:00:00").unwrap();
        let sunday = crate::parse::parse_datetime(b"2018-06-03 23:59:59").unwrap();
        assert_eq!(week_of(monday), week_of(sunday));
        assert_eq!(day(week_of(sunday)), "2018-05-28");
        assert_eq!(day(week_of(monday - 1)), "2018-05-21");
        assert_eq!(day(week_of(0)), "1969-12-29");
    }

    #[test]
    fn cells_and_buckets() {
        let g = Grid::default();
        assert_eq!(g.cell(14.4973), 1449);
        assert_eq!(g.cell(-0.001), -1);
        assert_eq!(
            g.bucket(crate::parse::parse_datetime(b"2018-05-28 09:03:40").unwrap()),
            9
        );
    }

    #[test]
    fn merge_equals_adding_in_one() {
        let g = Grid::default();
        let rows = [
            (1, 2, (14.1, 50.1), (14.2, 50.2), 1_527_498_220_000_000i64),
            (1, 3, (14.1, 50.1), (14.2, 50.2), 1_527_498_320_000_000),
            (2, 2, (7.6, 45.0), (7.7, 45.1), 1_517_498_220_000_000),
        ];
        let mut one = Rollup::default();
        let (mut a, mut b) = (Rollup::default(), Rollup::default());
        for (i, (r, d, o, de, t)) in rows.iter().enumerate() {
            one.add(&g, *r, *d, *o, *de, *t);
            if i < 1 {
                a.add(&g, *r, *d, *o, *de, *t)
            } else {
                b.add(&g, *r, *d, *o, *de, *t)
            }
        }
        let points: Vec<Pt> = a.pending.iter().chain(&b.pending).copied().collect();
        a.merge(b);
        a.pending = points;
        assert_eq!(a, one);
        assert_eq!(one.region_week.values().sum::<i64>(), 3);
        assert_eq!(one.region_week[&(1, week_of(1_527_498_220_000_000))], 2);
        assert_eq!(one.region_source[&(1, 3)], (1, 1_527_498_320_000_000));
        assert_eq!(one.region_source[&(1, 2)], (1, 1_527_498_220_000_000));
        let o = one.pending.iter().filter(|p| p.side == ORIGIN).count();
        assert_eq!((o, one.pending.len()), (3, 6));
        assert_eq!(
            (one.pending[0].ix, one.pending[0].iy, one.pending[0].week),
            (g.cell(14.1), g.cell(50.1), week_of(1_527_498_220_000_000))
        );
    }
}
