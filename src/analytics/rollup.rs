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
//! - per side (origin/destination), cell and week: trip counts (the cells
//!   wholly inside a bounding box; the cells its edge crosses are counted
//!   from the exact coordinates kept by [`crate::analytics::points`]).
//!
//! Keys carry the file id, so concurrent files never touch the same rows;
//! the rows of small files are later merged into rows with file id 0 by
//! [`crate::analytics::compact`].
//! Every map is bounded by regions × datasources × cells × weeks, never by
//! the number of rows.

use crate::analytics::points::Pt;
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

/// Trip counts by week for one cell: dense counters from the first week
/// seen (a file rarely spans more than a year), sparse past
/// [`WeekCounts::DENSE_MAX`] weeks. Keying the cell map by cell alone keeps it small enough to stay in
/// cache (cells × 2 entries instead of cells × weeks × 2), which is most of
/// the rollups' cost per row.
#[derive(Debug, Clone)]
pub enum WeekCounts {
    /// `counts[i]` trips in week index `base + i`.
    Dense {
        base: i32,
        counts: Vec<i64>,
    },
    Sparse(std::collections::BTreeMap<i32, i64>),
}

impl Default for WeekCounts {
    fn default() -> Self {
        WeekCounts::Dense {
            base: 0,
            counts: Vec::new(),
        }
    }
}

/// Week index of the Monday with day number `day` (1970-01-05, day 4, was a Monday).
fn week_index(monday: i32) -> i32 {
    (monday - 4).div_euclid(7)
}
fn week_monday(index: i32) -> i32 {
    index * 7 + 4
}

impl WeekCounts {
    /// Weeks a dense counter may span before it turns sparse.
    pub const DENSE_MAX: usize = 1024;

    /// Adds `n` trips to the week whose Monday is day `monday`.
    pub fn add(&mut self, monday: i32, n: i64) {
        let w = week_index(monday);
        match self {
            WeekCounts::Dense { base, counts } => {
                if counts.is_empty() {
                    *base = w;
                }
                if w < *base {
                    let grow = (*base - w) as usize;
                    if counts.len() + grow <= Self::DENSE_MAX {
                        counts.splice(0..0, std::iter::repeat_n(0, grow));
                        *base = w;
                    } else {
                        self.make_sparse().add(monday, n);
                        return;
                    }
                }
                let i = (w - *base) as usize;
                if i >= counts.len() {
                    if i < Self::DENSE_MAX {
                        counts.resize(i + 1, 0);
                    } else {
                        self.make_sparse().add(monday, n);
                        return;
                    }
                }
                counts[i] += n;
            }
            WeekCounts::Sparse(m) => *m.entry(w).or_default() += n,
        }
    }

    fn make_sparse(&mut self) -> &mut Self {
        if let WeekCounts::Dense { base, counts } = self {
            let m = counts
                .iter()
                .enumerate()
                .filter(|(_, &n)| n != 0)
                .map(|(i, &n)| (*base + i as i32, n))
                .collect();
            *self = WeekCounts::Sparse(m);
        }
        self
    }

    /// (Monday day number, trips) for the weeks with trips, in order.
    pub fn weeks(&self) -> Vec<(i32, i64)> {
        match self {
            WeekCounts::Dense { base, counts } => counts
                .iter()
                .enumerate()
                .filter(|(_, &n)| n != 0)
                .map(|(i, &n)| (week_monday(*base + i as i32), n))
                .collect(),
            WeekCounts::Sparse(m) => m
                .iter()
                .filter(|(_, &n)| n != 0)
                .map(|(&w, &n)| (week_monday(w), n))
                .collect(),
        }
    }

    /// Folds `other` in.
    pub fn merge(&mut self, other: WeekCounts) {
        for (monday, n) in other.weeks() {
            self.add(monday, n);
        }
    }
}

impl PartialEq for WeekCounts {
    fn eq(&self, other: &Self) -> bool {
        self.weeks() == other.weeks()
    }
}

/// (side, ix, iy) → trips by week.
pub type CellWeeks = HashMap<(u8, i32, i32), WeekCounts>;

/// Adds to `cells` the points of `pts` grouped as
/// [`crate::analytics::points::Scratch::group`] returns them (each cell contiguous,
/// sorted by week within it; `lens` the cells' lengths): one map lookup per
/// cell and one count per week, instead of a lookup per point.
pub fn count_grouped(cells: &mut CellWeeks, pts: &[Pt], lens: &[usize]) {
    let mut at = 0;
    for &n in lens {
        let cell = &pts[at..at + n];
        at += n;
        let Some(p) = cell.first() else { continue };
        let counts = cells.entry((p.side, p.ix, p.iy)).or_default();
        for week in cell.chunk_by(|a, b| a.week == b.week) {
            counts.add(week[0].week, week.len() as i64);
        }
    }
}

/// Folds `other` into `into` (a move when `into` is empty: a file of one
/// segment costs nothing here).
pub fn merge_cell_weeks(into: &mut CellWeeks, other: CellWeeks) {
    if into.is_empty() {
        *into = other;
        return;
    }
    for (k, v) in other {
        match into.entry(k) {
            std::collections::hash_map::Entry::Occupied(mut e) => e.get_mut().merge(v),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(v);
            }
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct Rollup {
    pub region_week: HashMap<(i16, i32), i64>,
    pub region_source: HashMap<(i16, i16), (i64, i64)>,
    /// (side, ix, iy) → trips by week.
    pub cell_week: CellWeeks,
    /// (side, ix, iy, week) of trips not yet counted in `cell_week`: a worker
    /// only appends (a chunk spreads its trips over thousands of cells, so
    /// counting them per chunk costs a cache miss and an allocation per
    /// trip). The loader sends them, with their coordinates, to the file's
    /// [`crate::analytics::points::Spill`], and its cell points writer counts them once
    /// it has sorted them by cell and week ([`count_grouped`]); [`Rollup::merge`]
    /// counts them here, for callers without that writer.
    pub pending: Vec<Pt>,
}

impl PartialEq for Rollup {
    fn eq(&self, other: &Self) -> bool {
        let (mut a, mut b) = (self.clone(), other.clone());
        a.fold();
        b.fold();
        a.region_week == b.region_week
            && a.region_source == b.region_source
            && a.cell_week == b.cell_week
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

    /// Counts the pending trips into `cell_week`.
    pub fn fold(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        self.count(&pending);
    }

    fn count(&mut self, pending: &[Pt]) {
        for p in pending {
            self.cell_week
                .entry((p.side, p.ix, p.iy))
                .or_default()
                .add(p.week, 1);
        }
    }

    /// Folds `other` (a later chunk) into `self`.
    pub fn merge(&mut self, other: Rollup) {
        self.count(&other.pending);
        self.merge_counts(other);
    }

    /// Folds `other`'s counts into `self` but drops its pending trips: the
    /// loader's cell points writer counts those from its sorted segments
    /// ([`count_grouped`]) for a fraction of a hash lookup per trip.
    pub fn merge_counts(&mut self, other: Rollup) {
        for (k, v) in other.region_week {
            *self.region_week.entry(k).or_default() += v;
        }
        for (k, (n, last)) in other.region_source {
            let e = self.region_source.entry(k).or_insert((0, i64::MIN));
            e.0 += n;
            e.1 = e.1.max(last);
        }
        merge_cell_weeks(&mut self.cell_week, other.cell_week);
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

    /// `rollup_cell_week (file_id, side, ix, iy, week, trips)`
    /// One row per cell with its weeks and counts as arrays: a file then
    /// writes one row per cell it touches instead of one per cell and week,
    /// which keeps the rollup's COPY and index small next to the trips.
    /// Call [`Rollup::fold`] first: pending trips are not in these rows.
    pub fn cell_week_rows(&self, file_id: i32) -> String {
        debug_assert!(self.pending.is_empty(), "fold() before writing");
        cell_week_rows(&self.cell_week, file_id)
    }
}

/// `rollup_cell_week (file_id, side, ix, iy, weeks, trips)` rows of `cells`
/// (see [`Rollup::cell_week_rows`]).
pub fn cell_week_rows(cells: &CellWeeks, file_id: i32) -> String {
    let mut out = String::new();
    for (&(side, ix, iy), counts) in cells {
        let weeks = counts.weeks();
        if weeks.is_empty() {
            continue;
        }
        let _ = write!(out, "{file_id}\t{}\t{ix}\t{iy}\t{{", side as char);
        for (i, (w, _)) in weeks.iter().enumerate() {
            let _ = write!(out, "{}{w}", if i > 0 { "," } else { "" });
        }
        out.push_str("}\t{");
        for (i, (_, n)) in weeks.iter().enumerate() {
            let _ = write!(out, "{}{n}", if i > 0 { "," } else { "" });
        }
        out.push_str("}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weeks_start_on_monday_utc() {
        // 2018-05-28 was a Monday; 2018-06-03 a Sunday.
        let monday = crate::kernel::parse::parse_datetime(b"2018-05-28 00:00:00").unwrap();
        let sunday = crate::kernel::parse::parse_datetime(b"2018-06-03 23:59:59").unwrap();
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
            g.bucket(crate::kernel::parse::parse_datetime(b"2018-05-28 09:03:40").unwrap()),
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
        a.merge(b);
        assert_eq!(a, one);
        one.fold();
        assert_eq!(
            one.cell_week[&(ORIGIN, g.cell(14.1), g.cell(50.1))].weeks(),
            [(week_of(1_527_498_220_000_000), 2)]
        );
        assert_eq!(one.region_week.values().sum::<i64>(), 3);
        assert_eq!(one.region_source[&(1, 3)].0, 1);
    }

    #[test]
    fn week_counts_dense_sparse_and_merge_agree_with_a_map() {
        use std::collections::BTreeMap;
        let monday = |i: i32| week_monday(i);
        // Weeks in any order, far apart (sparse), before the base, repeated.
        let many: Vec<i32> = (0..40).rev().chain(20..60).collect();
        let spread: Vec<i32> = (0..14).map(|i| i * 500 - 3000).collect();
        let seqs: [&[i32]; 6] = [
            &[10, 12, 10, 5, 11],
            &[3000, 2, 2, -40, 2500],
            &[7],
            &[100, 99, 98, 1200, 97],
            &many,
            &spread,
        ];
        for a in seqs {
            for b in seqs {
                let mut expect: BTreeMap<i32, i64> = BTreeMap::new();
                let (mut x, mut y) = (WeekCounts::default(), WeekCounts::default());
                for &w in a {
                    x.add(monday(w), 1);
                    *expect.entry(monday(w)).or_default() += 1;
                }
                for &w in b {
                    y.add(monday(w), 2);
                    *expect.entry(monday(w)).or_default() += 2;
                }
                x.merge(y);
                assert_eq!(
                    x.weeks(),
                    expect.into_iter().collect::<Vec<_>>(),
                    "{a:?} {b:?}"
                );
            }
        }
        assert_eq!(week_index(week_of(0)), -1);
        assert_eq!(
            week_monday(week_index(week_of(1_527_498_220_000_000))),
            week_of(1_527_498_220_000_000)
        );
    }

    proptest::proptest! {
        /// The writer's count over grouped points (spill partitions, then
        /// segments merged) equals counting each point as it is added.
        #[test]
        fn counting_grouped_points_equals_counting_each(
            pts in proptest::collection::vec((0u8..2, -3i32..3, -3i32..3, -5i32..40), 0..400),
            cuts in proptest::collection::vec(0usize..400, 0..4),
        ) {
            let pts: Vec<Pt> = pts
                .iter()
                .enumerate()
                .map(|(i, &(side, ix, iy, w))| Pt {
                    side: if side == 0 { ORIGIN } else { DESTINATION },
                    ix,
                    iy,
                    week: week_monday(w * w - 30 * w),
                    lon: i as f64,
                    lat: -(i as f64),
                })
                .collect();
            let mut each = Rollup { pending: pts.clone(), ..Rollup::default() };
            each.fold();
            let mut bounds: Vec<usize> = cuts.iter().map(|&c| c.min(pts.len())).collect();
            bounds.extend([0, pts.len()]);
            bounds.sort_unstable();
            let mut total = CellWeeks::default();
            let mut scratch = crate::analytics::points::Scratch::default();
            for seg in bounds.windows(2) {
                let mut cells = CellWeeks::default();
                let (grouped, lens) = scratch.group(&pts[seg[0]..seg[1]]);
                count_grouped(&mut cells, grouped, lens);
                merge_cell_weeks(&mut total, cells);
            }
            proptest::prop_assert_eq!(total, each.cell_week);
        }
    }
}
