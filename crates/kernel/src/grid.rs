//! The grid and the week: where a point falls (cell (ix, iy) =
//! (floor(lon/deg), floor(lat/deg))), which ISO week (Monday 00:00 UTC) a
//! datetime is in, identified by the day number (since 1970-01-01) of its
//! Monday, and the time-of-day bucket. Pure arithmetic, shared by the
//! encoder's rollup partials and the analytics that write and answer them.

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

/// One side of one trip: its cell, week and exact coordinates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pt {
    pub side: u8,
    pub ix: i32,
    pub iy: i32,
    /// Day number (since 1970-01-01) of the week's Monday.
    pub week: i32,
    pub lon: f64,
    pub lat: f64,
}

impl Pt {
    /// A placeholder (origin side, cell (0, 0), day 0, at 0°, 0°).
    pub const ZERO: Pt = Pt {
        side: 0,
        ix: 0,
        iy: 0,
        week: 0,
        lon: 0.0,
        lat: 0.0,
    };

    /// The cell it lies in: `(side, ix, iy)`.
    pub fn cell(&self) -> (u8, i32, i32) {
        (self.side, self.ix, self.iy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
