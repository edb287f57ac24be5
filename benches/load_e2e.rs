//! Criterion end-to-end group: the real `tripload load` binary loading a
//! generated file into a real PostgreSQL+PostGIS (a throwaway cluster started
//! by the crate's embedded module; fsync off, as in the tests), one file and
//! one transaction per iteration, rollups included. The table is emptied
//! before each iteration and the time covers the whole process run.
//! `benches/compare.sh` puts the same load side by side with the alternatives.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::process::Command;
use std::time::{Duration, Instant};
use tripload::embedded::Embedded;

const ROWS: u64 = 500_000;

async fn exec(conninfo: &str, sql: &str) {
    let (c, conn) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {conninfo}: {e}"));
    tokio::spawn(conn);
    c.batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

fn bench_load(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let emb = Embedded::start_ephemeral(&dir.path().join("pg"))
        .unwrap_or_else(|e| panic!("start PostgreSQL (scripts/setup.sh installs it): {e}"));
    rt.block_on(exec(&emb.conninfo("postgres"), "CREATE DATABASE bench"));
    let conninfo = emb.conninfo("bench");
    let csv = tripload::gen::trips_csv(ROWS, 11);
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).expect("work dir");
    let load = |iters: u64| {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            rt.block_on(exec(
                &conninfo,
                "DO $$ BEGIN IF to_regclass('trips') IS NOT NULL THEN
                   TRUNCATE trips, load_files, rollup_region_week, rollup_region_source, rollup_cell_week;
                 END IF; END $$",
            ));
            let file = work.join("trips.csv");
            std::fs::write(&file, &csv).expect("write input");
            let start = Instant::now();
            let out = Command::new(env!("CARGO_BIN_EXE_tripload"))
                .current_dir(&work)
                .env("DATABASE_URL", &conninfo)
                .args(["load", "trips.csv", "--quiet", "--processed-dir", "done"])
                .output()
                .expect("run tripload");
            total += start.elapsed();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let _ = std::fs::remove_dir_all(work.join("done"));
        }
        total
    };
    let mut g = c.benchmark_group("load_e2e");
    g.sample_size(10).measurement_time(Duration::from_secs(30));
    g.throughput(Throughput::Bytes(csv.len() as u64));
    g.bench_function("bytes", |b| b.iter_custom(load));
    g.throughput(Throughput::Elements(ROWS));
    g.bench_function("rows", |b| b.iter_custom(load));
    g.finish();
}

criterion_group!(benches, bench_load);
criterion_main!(benches);
