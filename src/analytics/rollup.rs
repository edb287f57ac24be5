//! Rollups maintained at load time, the writing side: the partials the
//! encoder computes beside the trips ([`crate::kernel::rollup`], on the grid
//! of [`crate::kernel::grid`]) are merged in file order and turned here into
//! COPY rows written in the file's own transaction — so they are exactly
//! consistent with the committed trips, and a rolled-back file contributes
//! nothing. The cells' week counts are taken from the sorted cell points
//! ([`count_grouped`]).
//!
//! - per region and week: trip counts (weekly average for a region);
//! - per region and datasource: counts and latest datetime (the bonus questions);
//! - per side (origin/destination), cell and week: trip counts (the cells
//!   wholly inside a bounding box; the cells its edge crosses are counted
//!   from the exact coordinates kept by [`crate::analytics::points`]).
//!
//! Keys carry the file id, so concurrent files never touch the same rows;
//! the rows of small files are later merged into rows with file id 0 by
//! `crate::analytics::compact`.

pub use crate::kernel::grid::{week_of, Grid, Pt, DESTINATION, ORIGIN};
pub use crate::kernel::rollup::{merge_cell_weeks, CellWeeks, Rollup, WeekCounts};
use std::fmt::Write as _;

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

// COPY text rows (tab-separated) for each rollup table.

/// `rollup_region_week (file_id, region_id, week, trips)`
pub fn region_week_rows(rollup: &Rollup, file_id: i32) -> String {
    let mut out = String::new();
    for ((r, w), n) in &rollup.region_week {
        let _ = writeln!(out, "{file_id}\t{r}\t{}\t{n}", day(*w));
    }
    out
}

/// `rollup_region_source (file_id, region_id, datasource_id, trips, last_at)`
pub fn region_source_rows(rollup: &Rollup, file_id: i32) -> String {
    let mut out = String::new();
    for ((r, d), (n, last)) in &rollup.region_source {
        let _ = writeln!(out, "{file_id}\t{r}\t{d}\t{n}\t{}", ts(*last));
    }
    out
}

/// `rollup_cell_week (file_id, side, ix, iy, weeks, trips)` rows of a
/// file's rollup. One row per cell with its weeks and counts as arrays: a
/// file then writes one row per cell it touches instead of one per cell and
/// week, which keeps the rollup's COPY and index small next to the trips.
/// Call [`Rollup::fold`] first: pending trips are not in these rows.
pub fn rollup_cell_week_rows(r: &Rollup, file_id: i32) -> String {
    debug_assert!(r.pending.is_empty(), "fold() before writing");
    cell_week_rows(&r.cell_week, file_id)
}

/// `rollup_cell_week (file_id, side, ix, iy, weeks, trips)` rows of `cells`
/// (see [`rollup_cell_week_rows`]).
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
    use crate::kernel::rollup::week_monday;

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
