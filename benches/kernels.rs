//! Criterion benchmarks of the pure kernels on generated data (fixed seed):
//! chunk splitting, framing+parse+validate, and the full per-chunk kernel
//! (parse+validate+encode), the same with the rollups aggregated beside it,
//! the merge of per-chunk rollups, and sorting+encoding the cell points, with
//! byte and row throughput.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use tripload::db::dims::Dims;
use tripload::kernel::chunk;
use tripload::kernel::encode::encode_chunk;
use tripload::kernel::parse::{parse_header, parse_trip};
use tripload::kernel::record::{next_record, Fields};

const ROWS: u64 = 400_000;

fn data() -> Vec<u8> {
    tripload::gen::trips_csv(ROWS, 7)
}

fn bench_chunk(c: &mut Criterion) {
    let buf = data();
    let mut g = c.benchmark_group("chunk_split");
    g.throughput(Throughput::Bytes(buf.len() as u64));
    for mib in [1usize, 4] {
        g.bench_with_input(
            BenchmarkId::from_parameter(format!("{mib}MiB")),
            &mib,
            |b, &mib| b.iter(|| chunk::split(black_box(&buf), 0, mib << 20).len()),
        );
    }
    g.finish();
}

fn bench_parse(c: &mut Criterion) {
    let buf = data();
    let header = parse_header(&buf).expect("generated header");
    let body = &buf[header.data_start..];
    let mut g = c.benchmark_group("parse_validate");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("bytes", |b| {
        b.iter(|| {
            let mut fields = Fields::new();
            // As encode_chunk does: the text checked once, not per field.
            let text = std::str::from_utf8(body).ok();
            let mut pos = 0;
            let mut n = 0u64;
            while let Some(span) = next_record(body, pos) {
                pos = span.next;
                let rec = &body[span.content.clone()];
                let rec_text = text.and_then(|t| t.get(span.content));
                if fields.split(rec).is_ok() && parse_trip(&header, &fields, rec, rec_text).is_ok()
                {
                    n += 1;
                }
            }
            assert_eq!(n, ROWS);
            n
        })
    });
    g.finish();
}

fn bench_encode(c: &mut Criterion) {
    let buf = data();
    let header = parse_header(&buf).expect("generated header");
    let body = &buf[header.data_start..];
    let dims = Dims::in_memory();
    let mut g = c.benchmark_group("parse_validate_encode");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("bytes", |b| {
        b.iter(|| encode_chunk(black_box(body), &header, 1, &dims, None).map(|e| e.tuples.len()))
    });
    g.throughput(Throughput::Elements(ROWS));
    g.bench_function("rows", |b| {
        b.iter(|| encode_chunk(black_box(body), &header, 1, &dims, None).map(|e| e.rows))
    });
    g.finish();

    // The loader's real shape: 4 MiB chunks, each encoded (without, then with
    // the rollups, whose per-chunk aggregates are folded into the file's), so
    // the two functions' ratio is the rollups' CPU cost.
    let grid = tripload::analytics::rollup::Grid::default();
    let chunks = chunk::split(body, 0, 4 << 20);
    let mut g = c.benchmark_group("encode_4MiB_chunks");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("without_rollups", |b| {
        b.iter(|| {
            let mut n = 0;
            for r in &chunks {
                n += encode_chunk(black_box(&body[r.clone()]), &header, 1, &dims, None)
                    .map_or(0, |e| e.rows);
            }
            n
        })
    });
    g.bench_function("with_rollups", |b| {
        b.iter(|| {
            let mut all = tripload::analytics::rollup::Rollup::default();
            let mut n = 0;
            for r in &chunks {
                if let Ok(e) =
                    encode_chunk(black_box(&body[r.clone()]), &header, 1, &dims, Some(&grid))
                {
                    n += e.rows;
                    all.merge(e.rollup);
                }
            }
            (n, all.cell_week.len())
        })
    });
    g.finish();
}

/// The per-chunk rollups of the generated data in 4 MiB chunks, as the
/// workers produce them.
fn chunk_rollups() -> Vec<tripload::analytics::rollup::Rollup> {
    let buf = data();
    let header = parse_header(&buf).expect("generated header");
    let body = &buf[header.data_start..];
    let dims = Dims::in_memory();
    let grid = tripload::analytics::rollup::Grid::default();
    chunk::split(body, 0, 4 << 20)
        .into_iter()
        .filter_map(|r| encode_chunk(&body[r], &header, 1, &dims, Some(&grid)).ok())
        .map(|e| e.rollup)
        .collect()
}

/// Folding per-chunk rollups (4 MiB chunks) into the file's, as the loader does.
fn bench_rollup_merge(c: &mut Criterion) {
    let parts = chunk_rollups();
    let mut g = c.benchmark_group("rollup_merge");
    g.throughput(Throughput::Elements(ROWS));
    g.bench_function("rows", |b| {
        b.iter_batched(
            || parts.clone(),
            |parts| {
                let mut all = tripload::analytics::rollup::Rollup::default();
                for p in parts {
                    all.merge(p);
                }
                all.cell_week.len()
            },
            criterion::BatchSize::LargeInput,
        )
    });
    g.finish();
}

/// Cell points after the trips' COPY: ordering a file's points by cell and
/// encoding them as binary COPY rows, as the loader does (`rows`), and the
/// parts: `group_by_cell`, `encode`, and `comparator_sort`, one sort of the
/// whole set by `points::cmp` (what `group_by_cell` replaced). One core
/// unless RAYON_NUM_THREADS allows more (the per-cell sorts use the pool).
fn bench_cell_points(c: &mut Criterion) {
    let pts: Vec<tripload::analytics::points::Pt> = chunk_rollups()
        .into_iter()
        .flat_map(|r| r.pending)
        .collect();
    let mut g = c.benchmark_group("cell_points");
    g.throughput(Throughput::Elements(ROWS));
    g.bench_function("rows", |b| {
        b.iter_batched(
            || pts.clone(),
            |mut pts| {
                let lens = tripload::analytics::points::group_by_cell(&mut pts);
                let mut out = Vec::with_capacity(pts.len() * 24);
                let mut at = 0;
                for n in lens {
                    tripload::analytics::points::encode_rows(1, &pts[at..at + n], &mut out);
                    at += n;
                }
                out.len()
            },
            criterion::BatchSize::LargeInput,
        )
    });
    g.bench_function("group_by_cell", |b| {
        b.iter_batched(
            || pts.clone(),
            |mut pts| tripload::analytics::points::group_by_cell(&mut pts).len(),
            criterion::BatchSize::LargeInput,
        )
    });
    g.bench_function("comparator_sort", |b| {
        b.iter_batched(
            || pts.clone(),
            |mut pts| {
                pts.sort_unstable_by(tripload::analytics::points::cmp);
                pts.len()
            },
            criterion::BatchSize::LargeInput,
        )
    });
    let mut sorted = pts.clone();
    sorted.sort_unstable_by(tripload::analytics::points::cmp);
    g.bench_function("encode", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(sorted.len() * 24);
            tripload::analytics::points::encode_rows(1, &sorted, &mut out);
            out.len()
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_chunk,
    bench_parse,
    bench_encode,
    bench_rollup_merge,
    bench_cell_points
);
criterion_main!(benches);
