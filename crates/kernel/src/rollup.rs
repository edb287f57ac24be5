//! Rollup partials (pure maths, no I/O): what the encoder counts per chunk
//! beside the trips, merged in file order — per region and week, per region
//! and datasource (count, latest datetime), and per side, cell and week. The
//! writing of them (COPY rows, the file's transaction) is
//! `analytics::rollup`'s.
//!
//! Every map is bounded by regions × datasources × cells × weeks, never by
//! the number of rows.

use crate::grid::{week_of, Grid, Pt, DESTINATION, ORIGIN};
use rustc_hash::FxHashMap as HashMap;

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
pub fn week_index(monday: i32) -> i32 {
    (monday - 4).div_euclid(7)
}
/// Day number of the Monday of week index `index`.
pub fn week_monday(index: i32) -> i32 {
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
    /// `analytics::points::Spill`, and its cell points writer counts them once
    /// it has sorted them by cell and week (`analytics::rollup::count_grouped`); [`Rollup::merge`]
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
    /// (`analytics::rollup::count_grouped`) for a fraction of a hash lookup per trip.
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
