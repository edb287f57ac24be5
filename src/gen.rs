//! Realistic synthetic trip CSV for tests and benchmarks: the regions and
//! datasources of the real sample, points scattered around each city, a year of
//! datetimes. Deterministic for a given seed.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::io::Write;

/// Regions with a city centre (lon, lat).
pub const REGIONS: &[(&str, f64, f64)] = &[
    ("Prague", 14.4378, 50.0755),
    ("Turin", 7.6869, 45.0703),
    ("Hamburg", 9.9937, 53.5511),
    ("Berlin", 13.4050, 52.5200),
    ("Vienna", 16.3738, 48.2082),
    ("Milan", 9.1900, 45.4642),
];
pub const DATASOURCES: &[&str] = &[
    "funny_car",
    "baba_car",
    "cheap_mobile",
    "pt_search_app",
    "bad_diesel_vehicles",
];

/// 2018-01-01 00:00:00 UTC, and a year of seconds.
const START: i64 = 1_514_764_800;
const SPAN: i64 = 365 * 86_400;

/// Writes a header and `rows` trips to `out`.
pub fn write_trips<W: Write>(out: W, rows: u64, seed: u64) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
    let mut rng = SmallRng::seed_from_u64(seed);
    writeln!(
        out,
        "region,origin_coord,destination_coord,datetime,datasource"
    )?;
    for _ in 0..rows {
        let (name, lon, lat) = REGIONS[rng.gen_range(0..REGIONS.len())];
        let o = (
            lon + rng.gen_range(-0.15..0.15),
            lat + rng.gen_range(-0.1..0.1),
        );
        let d = (
            lon + rng.gen_range(-0.15..0.15),
            lat + rng.gen_range(-0.1..0.1),
        );
        let t = START + rng.gen_range(0..SPAN);
        let dt = chrono::DateTime::from_timestamp(t, 0).unwrap_or_default();
        writeln!(
            out,
            "{name},POINT ({} {}),POINT ({} {}),{},{}",
            o.0,
            o.1,
            d.0,
            d.1,
            dt.format("%Y-%m-%d %H:%M:%S"),
            DATASOURCES[rng.gen_range(0..DATASOURCES.len())]
        )?;
    }
    out.flush()
}

/// The same trips in memory.
pub fn trips_csv(rows: u64, seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(rows as usize * 130);
    // Writing to a Vec cannot fail.
    let _ = write_trips(&mut v, rows, seed);
    v
}
