//! Cell points: the exact coordinates of every trip's origin and destination,
//! grouped by (side, cell) and week into sorted runs of order-preserving
//! 8-byte keys ([`key`]) and written to `rollup_cell_points`.
//!
//! Why: a bounding box sums the cells wholly inside it from `rollup_cell_week`,
//! but the cells its edge crosses need each trip's coordinates. Reading those
//! trips from `trips` costs a scan (or a GiST index that is slow to build and
//! still reads ~1.5M rows for a city-district box at 100M trips). Here a cut
//! cell is two binary searches over at most [`MAX_PER_ROW`] sorted keys in
//! one heap row (`cell_point_keys_le`/`_lt` in `sql/functions/cell_points.sql`).
//!
//! A file's rows carry its `file_id`; [`crate::analytics::compact`] reads the rows of
//! small files back ([`decode_row`]) and merges them into full rows with
//! `file_id` 0.
//!
//! Each row holds up to [`MAX_PER_ROW`] points of one (side, cell) in week
//! segments (`weeks`, `ends`); within a segment the keys of `lons` ascend and
//! those of `lats_sorted` ascend (for cells cut by a horizontal edge), and the
//! byte `lat_pos[i]` is the 0-based position in `lats_sorted` of the latitude
//! that pairs with the `i`-th longitude (for the corner cells).
//!
//! Why keys in a `bytea` rather than `float8[]`: the server decodes a binary
//! array element by element (a function call per float, 60M per 15M-row
//! file) but copies a `bytea` whole. The server's own COPY of one 15M-row
//! file's cell points took 2.48–3.24 s of backend CPU as `float8[]` and
//! 1.40–2.08 s as keys, 3 alternating runs each (docs/benchmarks.md), and the keys compare with
//! `memcmp` exactly as the floats do.
//!
//! A file's points (two per trip) are kept in memory for small files;
//! otherwise they are spilled to anonymous temporary files (in `TMPDIR`, 20
//! bytes a point), hash-partitioned by cell, so memory stays bounded by one
//! partition whatever the file size. After the trips' COPY each partition is sorted and encoded as
//! binary COPY rows. Everything here but [`Spill`] is pure.

use crate::kernel::grid::{Grid, DESTINATION, ORIGIN};
use std::cmp::Ordering;
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, Write};
use std::path::Path;

pub use crate::kernel::grid::Pt;

/// Bytes of a spilled [`Pt`]: its coordinates and its week with the side
/// in the low bit; the cell is computed again from the coordinates when it
/// is read back (the same [`Grid`], the same numbers, the same cell). The
/// full 32-byte point spilled 1.6x as much.
const PT_BYTES: usize = 20;

/// Points per row: two runs of 140 keys, 140 position bytes and a week
/// index of ~14 weeks make a row of about 2.6 KB, three to a page (150 would
/// fit two, wasting a third of each page). The table's `toast_tuple_target`
/// (8160) keeps such rows inline, so a query reads the arrays from the heap
/// row instead of TOAST lookups (repeated for every reference to an array),
/// and a bounding box's edge band is ~2x fewer rows and week segments than at
/// the default 2 KB limit (64 points). A row of sparse data, one week per
/// point, is at most ~3.8 KB: still inline. At most 256, for `lat_pos`.
/// The queries' binary searches are unrolled for this many keys
/// (`sql/functions/cell_points.sql`; a unit test keeps the two equal).
pub const MAX_PER_ROW: usize = 140;

/// Columns of the binary COPY rows, in order.
pub const COPY_COLUMNS: &str = "file_id, side, ix, iy, weeks, ends, lons, lats_sorted, lat_pos";

/// Memory for one partition; a file's spill is cut into as many as needed.
pub const PARTITION_BYTES: u64 = 64 << 20;

/// PostgreSQL's type oid of the `weeks` and `ends` arrays' elements.
const INT4_OID: i32 = 23;

/// The 8-byte key of a coordinate: its bits, big-endian, with the sign bit
/// set for non-negative values and every bit flipped for negative ones, so
/// that keys compare bytewise (`memcmp`, PostgreSQL's `bytea` order) exactly
/// as the floats compare numerically. `-0.0` takes the key of `0.0` (they
/// are equal numbers; a box edge at 0 includes both). NaN never gets here
/// (parsing rejects it). `cell_point_key` in `sql/functions/cell_points.sql` is the
/// same function in SQL.
pub fn key(x: f64) -> [u8; 8] {
    // -0.0 + 0.0 is +0.0.
    let b = (x + 0.0).to_bits();
    let k = if b >> 63 == 1 { !b } else { b | (1 << 63) };
    k.to_be_bytes()
}

/// The coordinate a [`key`] holds (`-0.0` comes back as `0.0`).
pub fn from_key(k: [u8; 8]) -> f64 {
    let k = u64::from_be_bytes(k);
    f64::from_bits(if k >> 63 == 1 { k ^ (1 << 63) } else { !k })
}

/// A stored row that does not hold what [`encode_rows`] writes.
#[derive(Debug, thiserror::Error)]
#[error("malformed cell points row (side {side}, cell {ix},{iy}): {why}")]
pub struct RowError {
    pub side: u8,
    pub ix: i32,
    pub iy: i32,
    pub why: &'static str,
}

/// One stored row of `rollup_cell_points`, as read back (binary results).
#[derive(Debug, Clone, Copy)]
pub struct StoredRow<'a> {
    pub side: u8,
    pub ix: i32,
    pub iy: i32,
    pub weeks: &'a [i32],
    pub ends: &'a [i32],
    pub lons: &'a [u8],
    pub lats_sorted: &'a [u8],
    pub lat_pos: &'a [u8],
}

/// Appends the points of a stored row to `out`: the inverse of
/// [`encode_rows`] (each longitude with the latitude `lat_pos` pairs it
/// with, in the week of its segment). Checks the row's shape, so that a
/// damaged row is an error, not a panic or a wrong point.
pub fn decode_row(r: StoredRow<'_>, out: &mut Vec<Pt>) -> Result<(), RowError> {
    let bad = |why| RowError {
        side: r.side,
        ix: r.ix,
        iy: r.iy,
        why,
    };
    let n = r.lons.len() / 8;
    if !r.lons.len().is_multiple_of(8)
        || r.lats_sorted.len() != r.lons.len()
        || r.lat_pos.len() != n
    {
        return Err(bad("key and position lengths differ"));
    }
    if r.weeks.len() != r.ends.len() || r.ends.last().map_or(n != 0, |&e| e as usize != n) {
        return Err(bad("segment ends do not match the keys"));
    }
    let k = |b: &[u8], i: usize| -> [u8; 8] {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[8 * i..8 * i + 8]);
        a
    };
    let mut from = 0usize;
    for (&week, &end) in r.weeks.iter().zip(r.ends) {
        let end = usize::try_from(end).map_err(|_| bad("negative segment end"))?;
        if end < from || end > n {
            return Err(bad("segment ends out of order"));
        }
        for i in from..end {
            let j = r.lat_pos[i] as usize;
            if j >= n {
                return Err(bad("latitude position out of range"));
            }
            out.push(Pt {
                side: r.side,
                ix: r.ix,
                iy: r.iy,
                week,
                lon: from_key(k(r.lons, i)),
                lat: from_key(k(r.lats_sorted, j)),
            });
        }
        from = end;
    }
    Ok(())
}

/// A point as it is spilled to a partition file: longitude, latitude, and
/// the week with the side in its lowest bit (the cell follows from the grid).
fn spill_bytes(p: Pt) -> [u8; PT_BYTES] {
    debug_assert!(p.side == ORIGIN || p.side == DESTINATION);
    debug_assert!((-(1 << 30)..1 << 30).contains(&p.week));
    let tag = (p.week << 1) | i32::from(p.side == DESTINATION);
    let mut b = [0u8; PT_BYTES];
    b[0..8].copy_from_slice(&p.lon.to_le_bytes());
    b[8..16].copy_from_slice(&p.lat.to_le_bytes());
    b[16..20].copy_from_slice(&tag.to_le_bytes());
    b
}

/// The point [`spill_bytes`] wrote, its cell placed on `grid`.
fn from_spill(b: &[u8], grid: &Grid) -> Pt {
    let f = |at: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[at..at + 8]);
        f64::from_le_bytes(a)
    };
    let mut t = [0u8; 4];
    t.copy_from_slice(&b[16..20]);
    let tag = i32::from_le_bytes(t);
    let (lon, lat) = (f(0), f(8));
    Pt {
        side: if tag & 1 == 1 { DESTINATION } else { ORIGIN },
        ix: grid.cell(lon),
        iy: grid.cell(lat),
        week: tag >> 1,
        lon,
        lat,
    }
}

/// Row order: by (side, cell, week), then longitude, then latitude.
pub fn cmp(a: &Pt, b: &Pt) -> Ordering {
    (a.side, a.ix, a.iy, a.week)
        .cmp(&(b.side, b.ix, b.iy, b.week))
        .then(a.lon.total_cmp(&b.lon))
        .then(a.lat.total_cmp(&b.lat))
}

/// Orders `pts` as [`encode_rows`] needs them: each (side, cell) contiguous,
/// by [`cmp`] within it; the cells themselves in order of first appearance.
/// A counting sort by cell, then a small sort per cell on the rayon pool
/// with integer keys: 1.6x faster on one core than sorting the whole set by
/// [`cmp`] (kernels bench), as each cell's few thousand points sort within
/// the cache. Returns the cells' lengths, in order.
pub fn group_by_cell(pts: &mut Vec<Pt>) -> Vec<usize> {
    let mut scratch = Scratch::default();
    scratch.group(pts);
    std::mem::swap(pts, &mut scratch.grouped);
    scratch.lens
}

/// The buffers of [`group_by_cell`], kept from one spill partition to the
/// next: fresh vectors of a partition's size are page-faulted and zeroed by
/// the kernel every time (9% of the loader's CPU in a profile of a 2M-row
/// load).
#[derive(Default)]
pub struct Scratch {
    slot: rustc_hash::FxHashMap<(u8, i32, i32), usize>,
    ids: Vec<u32>,
    at: Vec<usize>,
    lens: Vec<usize>,
    grouped: Vec<Pt>,
}

impl Scratch {
    /// [`group_by_cell`] of `pts` into this scratch's buffers: the grouped
    /// points and the cells' lengths.
    pub fn group(&mut self, pts: &[Pt]) -> (&[Pt], &[usize]) {
        use rayon::prelude::*;
        let Scratch {
            slot,
            ids,
            at,
            lens,
            grouped,
        } = self;
        slot.clear();
        lens.clear();
        ids.clear();
        ids.extend(pts.iter().map(|p| {
            let next = lens.len();
            let id = *slot.entry(p.cell()).or_insert(next);
            if id == next {
                lens.push(0);
            }
            lens[id] += 1;
            id as u32
        }));
        at.clear();
        let mut sum = 0;
        at.extend(lens.iter().map(|&n| {
            let start = sum;
            sum += n;
            start
        }));
        grouped.clear();
        grouped.resize(pts.len(), Pt::ZERO);
        for (p, &id) in pts.iter().zip(ids.iter()) {
            grouped[at[id as usize]] = *p;
            at[id as usize] += 1;
        }
        let mut cells: Vec<&mut [Pt]> = Vec::with_capacity(lens.len());
        let mut rest = grouped.as_mut_slice();
        for &n in lens.iter() {
            let (cell, tail) = rest.split_at_mut(n);
            cells.push(cell);
            rest = tail;
        }
        // Within a cell only (week, lon, lat) differ; integer keys in the order
        // of f64::total_cmp compare without branching on floats.
        fn ordered(x: f64) -> u64 {
            let b = x.to_bits();
            b ^ (((b as i64 >> 63) as u64) | (1 << 63))
        }
        // Sorting by (week, lon) and then settling the rare ties on both by
        // latitude gives the one order of (week, lon, lat) with a cheaper
        // compare: cell_points/group_by_cell -18%. (One u128 key of week, lon
        // and the latitude's upper bits measured 2x slower.)
        cells.par_iter_mut().for_each(|c| {
            c.sort_unstable_by_key(|p| (p.week, ordered(p.lon)));
            for tied in
                c.chunk_by_mut(|a, b| a.week == b.week && a.lon.to_bits() == b.lon.to_bits())
            {
                if tied.len() > 1 {
                    tied.sort_unstable_by_key(|p| ordered(p.lat));
                }
            }
        });
        (grouped, lens)
    }
}

fn put_i32(out: &mut Vec<u8>, v: i32) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// A `bytea` of the coordinates' [`key`]s, in order.
fn put_keys(out: &mut Vec<u8>, vals: impl ExactSizeIterator<Item = f64>) {
    put_i32(out, vals.len() as i32 * 8);
    for v in vals {
        out.extend_from_slice(&key(v));
    }
}

/// A one-dimensional int4[] in PostgreSQL's binary array format.
fn put_int_array(out: &mut Vec<u8>, vals: &[i32]) {
    let n = vals.len() as i32;
    put_i32(out, 20 + n * 8);
    put_i32(out, 1);
    put_i32(out, 0);
    put_i32(out, INT4_OID);
    put_i32(out, n);
    put_i32(out, 1);
    for &v in vals {
        put_i32(out, 4);
        put_i32(out, v);
    }
}

/// Appends the binary COPY tuples (see [`COPY_COLUMNS`]) for `pts`, which must
/// be sorted by [`cmp`]: one row per run of at most [`MAX_PER_ROW`] points of
/// one (side, cell), whatever their weeks — the server's cost is mostly per
/// row and per array element, so rows are filled rather than cut per week.
/// Inside a row the points are ordered by week, then longitude: `weeks` lists
/// the row's weeks, `ends[k]` is the 1-based position of the last point of
/// `weeks[k]`; `lats_sorted` is sorted within each week's segment and
/// `lat_pos` maps each point to its latitude there. Returns the number of rows.
pub fn encode_rows(file_id: i32, pts: &[Pt], out: &mut Vec<u8>) -> u64 {
    const _: () = assert!(MAX_PER_ROW <= 256, "lat_pos holds a row position in a byte");
    let mut rows = 0;
    // Row positions of the points in latitude order, per segment.
    let mut order: Vec<u8> = Vec::with_capacity(MAX_PER_ROW);
    let mut pos = [0u8; MAX_PER_ROW];
    let (mut weeks, mut ends) = (Vec::new(), Vec::new());
    for cell in pts.chunk_by(|a, b| a.cell() == b.cell()) {
        for piece in cell.chunks(MAX_PER_ROW) {
            let p = piece[0];
            weeks.clear();
            ends.clear();
            order.clear();
            let mut at = 0;
            for week in piece.chunk_by(|a, b| a.week == b.week) {
                let from = at;
                at += week.len();
                weeks.push(week[0].week);
                ends.push(at as i32);
                // Positions fit a byte: at <= MAX_PER_ROW <= 256.
                order.extend((from..at).map(|i| i as u8));
                order[from..]
                    .sort_by(|&a, &b| piece[a as usize].lat.total_cmp(&piece[b as usize].lat));
            }
            for (k, &i) in order.iter().enumerate() {
                pos[i as usize] = k as u8;
            }
            out.extend_from_slice(&9i16.to_be_bytes());
            put_i32(out, 4);
            put_i32(out, file_id);
            put_i32(out, 1);
            out.push(p.side);
            for v in [p.ix, p.iy] {
                put_i32(out, 4);
                put_i32(out, v);
            }
            put_int_array(out, &weeks);
            put_int_array(out, &ends);
            put_keys(out, piece.iter().map(|q| q.lon));
            put_keys(out, order.iter().map(|&i| piece[i as usize].lat));
            put_i32(out, piece.len() as i32);
            out.extend_from_slice(&pos[..piece.len()]);
            rows += 1;
        }
    }
    rows
}

/// A file's points until its trips are copied: in memory, or spilled to
/// partitions on disk.
pub enum Spill {
    Memory(Vec<Pt>),
    /// Partitions on disk, and the grid the points' cells come from.
    Files(Vec<BufWriter<File>>, Grid),
}

fn partition_of(p: &Pt, n: usize) -> usize {
    let h = (p.ix as u32 as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (p.iy as u32 as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
        ^ p.side as u64;
    ((h >> 32) % n as u64) as usize
}

impl Spill {
    /// For a file of `file_bytes`: at most two points of 32 bytes in memory
    /// per row of at least 48 bytes, so the points take at most 4/3 of the
    /// file; one partition per `partition_bytes` of that (at most 1024 open
    /// files). The points' cells must be `grid`'s.
    pub fn new(file_bytes: u64, partition_bytes: u64, dir: &Path, grid: Grid) -> io::Result<Spill> {
        let bound = file_bytes.saturating_mul(4) / 3;
        if bound <= partition_bytes {
            return Ok(Spill::Memory(Vec::new()));
        }
        let n = bound.div_ceil(partition_bytes.max(1)).clamp(2, 1024) as usize;
        let files = (0..n)
            .map(|_| tempfile::tempfile_in(dir).map(|f| BufWriter::with_capacity(32 << 10, f)))
            .collect::<io::Result<_>>()?;
        Ok(Spill::Files(files, grid))
    }

    pub fn push(&mut self, pts: &[Pt]) -> io::Result<()> {
        match self {
            Spill::Memory(v) => v.extend_from_slice(pts),
            Spill::Files(files, _) => {
                let n = files.len();
                for p in pts {
                    files[partition_of(p, n)].write_all(&spill_bytes(*p))?;
                }
            }
        }
        Ok(())
    }

    /// Calls `each` with every partition's points (unsorted; in one buffer
    /// reused from partition to partition); stops early when it returns false.
    pub fn drain(self, mut each: impl FnMut(&[Pt]) -> bool) -> io::Result<()> {
        match self {
            Spill::Memory(v) => {
                each(&v);
            }
            Spill::Files(files, grid) => {
                let (mut raw, mut pts) = (Vec::new(), Vec::new());
                for w in files {
                    let mut f = w.into_inner().map_err(|e| e.into_error())?;
                    let len = f.stream_position()? as usize;
                    f.rewind()?;
                    raw.clear();
                    raw.reserve(len);
                    f.read_to_end(&mut raw)?;
                    // The partition's file and its pages go now.
                    drop(f);
                    pts.clear();
                    pts.extend(raw.chunks_exact(PT_BYTES).map(|b| from_spill(b, &grid)));
                    if !each(&pts) {
                        break;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(side: u8, ix: i32, iy: i32, week: i32, lon: f64, lat: f64) -> Pt {
        Pt {
            side,
            ix,
            iy,
            week,
            lon,
            lat,
        }
    }

    /// A decoded row: (side, ix, iy, weeks, ends, lons, lats_sorted, lat_pos).
    type Row = (
        u8,
        i32,
        i32,
        Vec<i32>,
        Vec<i32>,
        Vec<f64>,
        Vec<f64>,
        Vec<u8>,
    );
    fn decode(mut b: &[u8]) -> Vec<Row> {
        fn take<'a>(b: &mut &'a [u8], n: usize) -> &'a [u8] {
            let (h, t) = b.split_at(n);
            *b = t;
            h
        }
        fn i32_(b: &mut &[u8]) -> i32 {
            i32::from_be_bytes(take(b, 4).try_into().unwrap())
        }
        fn int(b: &mut &[u8]) -> i32 {
            assert_eq!(i32_(b), 4);
            i32_(b)
        }
        fn header(b: &mut &[u8], oid: i32, elem: i32) -> i32 {
            let len = i32_(b);
            let (dims, nulls, o, n, lb) = (i32_(b), i32_(b), i32_(b), i32_(b), i32_(b));
            assert_eq!(
                (dims, nulls, o, lb, len),
                (1, 0, oid, 1, 20 + n * (4 + elem))
            );
            n
        }
        let ints = |b: &mut &[u8]| {
            let n = header(b, 23, 4);
            (0..n).map(|_| int(b)).collect::<Vec<_>>()
        };
        let floats = |b: &mut &[u8]| {
            let len = i32_(b) as usize;
            assert_eq!(len % 8, 0);
            take(b, len)
                .chunks(8)
                .map(|k| from_key(k.try_into().unwrap()))
                .collect::<Vec<_>>()
        };
        let mut rows = Vec::new();
        while !b.is_empty() {
            assert_eq!(take(&mut b, 2), 9i16.to_be_bytes());
            assert_eq!(int(&mut b), 7);
            assert_eq!(i32_(&mut b), 1);
            let side = take(&mut b, 1)[0];
            let (ix, iy) = (int(&mut b), int(&mut b));
            rows.push((
                side,
                ix,
                iy,
                ints(&mut b),
                ints(&mut b),
                floats(&mut b),
                floats(&mut b),
                {
                    let n = i32_(&mut b) as usize;
                    take(&mut b, n).to_vec()
                },
            ));
        }
        rows
    }

    #[test]
    fn the_sql_searches_cover_a_full_row() {
        let sql = include_str!("../../sql/functions/cell_points.sql");
        assert!(sql.contains(&format!("cell_point_search(op, -1, 128, {MAX_PER_ROW})")));
    }

    #[test]
    fn keys_compare_as_the_floats_do() {
        let mut vals = vec![
            -180.0,
            -14.5,
            -1e-300,
            -f64::MIN_POSITIVE / 4.0,
            -0.0,
            0.0,
            f64::MIN_POSITIVE / 4.0,
            1e-300,
            0.01,
            14.497_379_443_819_5,
            f64::from_bits(14.497_379_443_819_5_f64.to_bits() + 1),
            50.0,
            180.0,
        ];
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..2000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let v = f64::from_bits(rng);
            if v.is_finite() {
                vals.push(v);
            }
        }
        for &a in &vals {
            assert_eq!(from_key(key(a)), a + 0.0);
            for &b in &vals[..13] {
                assert_eq!(
                    key(a).cmp(&key(b)),
                    a.partial_cmp(&b).unwrap(),
                    "{a} vs {b}"
                );
            }
        }
        assert_eq!(key(-0.0), key(0.0));
    }

    #[test]
    fn rows_group_sort_and_split() {
        let mut pts = vec![
            pt(b'o', 1, 2, 10, 0.015, 0.029),
            pt(b'd', 1, 2, 10, 0.5, 0.5),
            pt(b'o', 1, 2, 10, 0.011, 0.021),
            pt(b'o', 1, 2, 17, 0.012, 0.025),
            pt(b'o', 1, 2, 10, 0.011, 0.020),
            pt(b'o', 1, 2, 17, 0.013, 0.022),
        ];
        // A big cell: split into runs of MAX_PER_ROW, across weeks.
        for i in 0..(MAX_PER_ROW + 5) {
            pts.push(pt(
                b'o',
                3,
                4,
                10 + (i as i32 / 30) * 7,
                0.03 + i as f64 * 1e-6,
                0.05 - i as f64 * 1e-6,
            ));
        }
        pts.sort_unstable_by(cmp);
        let mut out = Vec::new();
        let n = encode_rows(7, &pts, &mut out);
        let rows = decode(&out);
        assert_eq!(n as usize, rows.len());
        assert_eq!(rows.len(), 4);
        assert_eq!(
            rows[0],
            (b'd', 1, 2, vec![10], vec![1], vec![0.5], vec![0.5], vec![0])
        );
        assert_eq!(
            rows[1],
            (
                b'o',
                1,
                2,
                vec![10, 17],
                vec![3, 5],
                vec![0.011, 0.011, 0.015, 0.012, 0.013],
                vec![0.020, 0.021, 0.029, 0.022, 0.025],
                vec![0, 1, 2, 4, 3]
            )
        );
        assert_eq!((rows[2].5.len(), rows[3].5.len()), (MAX_PER_ROW, 5));
        // 30 points a week: the first row's segments end every 30 points.
        let ends: Vec<i32> = (1..=MAX_PER_ROW.div_ceil(30) as i32)
            .map(|k| (30 * k).min(MAX_PER_ROW as i32))
            .collect();
        let weeks: Vec<i32> = (0..ends.len() as i32).map(|k| 10 + 7 * k).collect();
        assert_eq!((rows[2].3.clone(), rows[2].4.clone()), (weeks, ends));
        let last_week = 10 + 7 * ((MAX_PER_ROW as i32 + 4) / 30);
        assert_eq!(
            (rows[3].3.clone(), rows[3].4.clone()),
            (vec![last_week], vec![5])
        );

        for r in &rows {
            let mut from = 0;
            for &end in &r.4 {
                let seg = from..end as usize;
                assert!(
                    r.5[seg.clone()].windows(2).all(|w| w[0] <= w[1]),
                    "lons ascending"
                );
                assert!(
                    r.6[seg.clone()].windows(2).all(|w| w[0] <= w[1]),
                    "lats_sorted ascending"
                );
                // lat_pos is a permutation of the segment's positions.
                let mut p: Vec<usize> = r.7[seg.clone()].iter().map(|&i| i as usize).collect();
                p.sort_unstable();
                assert_eq!(p, seg.collect::<Vec<_>>());
                from = end as usize;
            }
            assert_eq!((from, r.6.len(), r.7.len()), (r.5.len(), from, from));
        }
        // Pairs survive: each lon finds its own lat through lat_pos.
        let pairs = |r: &Row| -> Vec<(f64, f64)> {
            r.5.iter()
                .zip(&r.7)
                .map(|(&x, &i)| (x, r.6[i as usize]))
                .collect()
        };
        let want: Vec<(f64, f64)> = pts
            .iter()
            .filter(|q| (q.side, q.ix, q.iy) == (b'o', 3, 4))
            .map(|q| (q.lon, q.lat))
            .collect();
        assert_eq!([pairs(&rows[2]), pairs(&rows[3])].concat(), want);
        assert_eq!(rows[2].6[0], 0.05 - 29.0 * 1e-6);
        assert_eq!(rows[3].6[0], 0.05 - (MAX_PER_ROW + 4) as f64 * 1e-6);
    }

    /// Stored rows decode to exactly the points they were encoded from (the
    /// compaction reads rows back this way), and damaged rows are errors.
    #[test]
    fn rows_decode_to_the_points_they_were_encoded_from() {
        let mut pts: Vec<Pt> = (0..3000)
            .map(|i: i32| {
                let lon = ((i * 7919) % 401 - 200) as f64 * 1e-4;
                let lat = if i % 97 == 0 {
                    -0.0
                } else {
                    ((i * 104_729) % 89) as f64 * 1e-3 - 0.04
                };
                let week = (i * 13) % 9 * 7 - 14;
                pt(
                    if i % 3 == 0 { b'o' } else { b'd' },
                    lon.floor() as i32,
                    (i % 4) - 2,
                    week,
                    lon,
                    lat,
                )
            })
            .collect();
        let lens = group_by_cell(&mut pts);
        assert!(lens.len() > 4);
        let mut out = Vec::new();
        encode_rows(7, &pts, &mut out);
        let mut back = Vec::new();
        for r in decode(&out) {
            let keys = |v: &[f64]| v.iter().flat_map(|&x| key(x)).collect::<Vec<u8>>();
            let (lons, lats) = (keys(&r.5), keys(&r.6));
            let row = StoredRow {
                side: r.0,
                ix: r.1,
                iy: r.2,
                weeks: &r.3,
                ends: &r.4,
                lons: &lons,
                lats_sorted: &lats,
                lat_pos: &r.7,
            };
            decode_row(row, &mut back).unwrap();
            // Damage: a short position run, an end past the keys.
            assert!(decode_row(
                StoredRow {
                    lat_pos: &r.7[1..],
                    ..row
                },
                &mut Vec::new()
            )
            .is_err());
            let mut ends = r.4.clone();
            *ends.last_mut().unwrap() += 1;
            assert!(decode_row(StoredRow { ends: &ends, ..row }, &mut Vec::new()).is_err());
        }
        let bits = |v: &[Pt]| -> Vec<(u8, i32, i32, i32, u64, u64)> {
            v.iter()
                .map(|p| {
                    (
                        p.side,
                        p.ix,
                        p.iy,
                        p.week,
                        (p.lon + 0.0).to_bits(),
                        (p.lat + 0.0).to_bits(),
                    )
                })
                .collect()
        };
        assert_eq!(bits(&back), bits(&pts));
    }

    #[test]
    fn grouping_by_cell_orders_each_cell_as_a_full_sort_would() {
        let mut pts: Vec<Pt> = (0..20_000)
            .map(|i: i32| {
                let side = if i % 3 == 0 { b'o' } else { b'd' };
                // Repeated coordinates, both signs, -0.0 and ties on lon.
                let lon = ((i * 7919) % 401 - 200) as f64 * 1e-4;
                // Latitudes that differ only in their low bits, and weeks
                // before 1970.
                let lat = if i % 97 == 0 {
                    -0.0
                } else if i % 5 == 1 {
                    50.0 + ((i * 7) % 3) as f64 * 1e-12
                } else {
                    ((i * 104_729) % 89) as f64 * 1e-3 - 0.04
                };
                let week = if i % 11 == 0 { -7 } else { (i * 13) % 5 * 7 };
                pt(side, (i * 31) % 13 - 6, (i * 17) % 7 - 3, week, lon, lat)
            })
            .collect();
        let mut want = pts.clone();
        want.sort_by(cmp);
        let lens = group_by_cell(&mut pts);
        assert_eq!(lens.iter().sum::<usize>(), want.len());
        let mut at = 0;
        let mut seen = Vec::new();
        for n in lens {
            let cell = &pts[at..at + n];
            let key = cell[0].cell();
            assert!(cell.iter().all(|p| p.cell() == key), "a cell is contiguous");
            assert!(!seen.contains(&key), "and appears once");
            seen.push(key);
            let same: Vec<Pt> = want.iter().filter(|p| p.cell() == key).copied().collect();
            // Bitwise: -0.0 and 0.0 keep cmp's order too.
            let bits = |v: &[Pt]| -> Vec<(i32, u64, u64)> {
                v.iter()
                    .map(|p| (p.week, p.lon.to_bits(), p.lat.to_bits()))
                    .collect()
            };
            assert_eq!(bits(cell), bits(&same));
            at += n;
        }
    }

    /// One scratch reused over partitions of different cells and sizes
    /// gives each partition what a fresh grouping gives it.
    #[test]
    fn a_reused_scratch_groups_like_a_fresh_one() {
        let part = |n: i32, seed: i32| -> Vec<Pt> {
            (0..n)
                .map(|i| {
                    let k = i * 7 + seed;
                    pt(
                        if k % 3 == 0 { b'o' } else { b'd' },
                        k % (5 + seed),
                        (k / 3) % 4,
                        k % 6,
                        ((k * 37) % 101) as f64 * 1e-3,
                        ((k * 53) % 97) as f64 * -1e-3,
                    )
                })
                .collect()
        };
        let mut scratch = Scratch::default();
        for (n, seed) in [(3000, 1), (10, 4), (0, 2), (5000, 9), (700, 1)] {
            let pts = part(n, seed);
            let mut fresh = pts.clone();
            let lens = group_by_cell(&mut fresh);
            let (grouped, got_lens) = scratch.group(&pts);
            assert_eq!(got_lens, &lens[..]);
            assert_eq!(grouped, &fresh[..]);
        }
    }

    #[test]
    fn spilled_partitions_hold_exactly_what_was_pushed() {
        let dir = tempfile::tempdir().unwrap();
        let grid = Grid {
            deg: 0.003,
            ..Grid::default()
        };
        let pts: Vec<Pt> = (0..5000)
            .map(|i| {
                // Both signs, -0.0, points on cell edges, weeks before 1970.
                let lon = (i % 401 - 200) as f64 * 1e-3;
                let lat = if i % 7 == 0 { -0.0 } else { -(i as f64) * 1e-4 };
                pt(
                    if i % 2 == 0 { b'o' } else { b'd' },
                    grid.cell(lon),
                    grid.cell(lat),
                    (i % 5 - 2) * 7,
                    lon,
                    lat,
                )
            })
            .collect();
        // Small file: memory. Larger: several partitions on disk.
        for (file_bytes, want_files) in [(1_000, false), (1_000_000, true)] {
            let mut spill = Spill::new(file_bytes, 100_000, dir.path(), grid).unwrap();
            assert_eq!(matches!(spill, Spill::Files(..)), want_files);
            for c in pts.chunks(333) {
                spill.push(c).unwrap();
            }
            let mut got = Vec::new();
            let mut parts = 0;
            spill
                .drain(|p| {
                    // A cell never straddles partitions.
                    let mut keys: Vec<_> = p.iter().map(|q| (q.side, q.ix, q.iy)).collect();
                    keys.sort_unstable();
                    keys.dedup();
                    for k in keys {
                        assert!(!got.iter().any(|q: &Pt| (q.side, q.ix, q.iy) == k));
                    }
                    got.extend(p);
                    parts += 1;
                    true
                })
                .unwrap();
            assert_eq!(parts > 1, want_files);
            let (mut a, mut b) = (got, pts.clone());
            a.sort_unstable_by(cmp);
            b.sort_unstable_by(cmp);
            // Bitwise, so -0.0 comes back as -0.0.
            let bits = |v: &[Pt]| -> Vec<(u8, i32, i32, i32, u64, u64)> {
                v.iter()
                    .map(|p| (p.side, p.ix, p.iy, p.week, p.lon.to_bits(), p.lat.to_bits()))
                    .collect()
            };
            assert_eq!(bits(&a), bits(&b));
        }
    }
}
