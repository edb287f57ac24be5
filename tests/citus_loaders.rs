//! Several `tripload load` processes against one Citus coordinator at once
//! (a coordinator and two workers, tests/common/citus.rs), and the
//! benchmark of four processes against one process with `--jobs 4`.
//! Skipped, loudly, when Citus is not installed.

mod common;
use common::citus::{
    prepared, skip_without_citus, tripload, tripload_cmd, trips_shard_of, CitusCluster, HeldShard,
};
use common::loaders::{exit_within, rollup_mismatch_queries, with_new_names, WAITING};
use common::stderr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn write(path: &Path, content: &[u8]) {
    std::fs::create_dir_all(path.parent().expect("a directory")).expect("mkdir");
    std::fs::write(path, content).expect("write");
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The `file_id` the next ledger claim gets.
fn next_file_id(cluster: &CitusCluster) -> i32 {
    let seq: String =
        cluster.query(0, "SELECT pg_get_serial_sequence('load_files', 'file_id')")[0].get(0);
    cluster.query(
        0,
        &format!(
            "SELECT (CASE WHEN is_called THEN last_value + 1 ELSE last_value END)::int FROM {seq}"
        ),
    )[0]
    .get(0)
}

#[test]
fn loaders_on_one_coordinator_do_not_wait_for_each_other() {
    if skip_without_citus("loaders_on_one_coordinator_do_not_wait_for_each_other") {
        return;
    }
    let cluster = CitusCluster::start();
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    let out = tripload(&cluster, dir, &["db", "migrate"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // The time partitions of 2018 (the generated files' year) made now:
    // attaching a new partition touches every shard of trips, A's held one
    // included, so B's own would wait for the test's lock (not for A: a
    // running COPY does not conflict with ATTACH PARTITION).
    cluster.batch(
        0,
        "SELECT tripload_trips_partitions(ARRAY(SELECT generate_series(17532, 17532 + 365)))",
    );

    // Files until the next two file ids hash to different shards, so that
    // a lock on A's shard holds A only (at most a few: 8 shards).
    let mut loaded = 0;
    let mut seed = 70;
    while trips_shard_of(&cluster, next_file_id(&cluster)).0
        == trips_shard_of(&cluster, next_file_id(&cluster) + 1).0
    {
        seed += 1;
        write(
            &dir.join(format!("landing/pre{seed}.csv")),
            &tripload::gen::trips_csv(1_000, seed),
        );
        let out = tripload(&cluster, dir, &["load", "landing"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        loaded += 1_000;
        assert!(loaded <= 20_000, "file ids keep sharing a shard");
    }

    // Loader A: its COPY waits on its shard's worker, its transaction open
    // on the coordinator (ledger row claimed, dictionaries' lock taken).
    let a_id = next_file_id(&cluster);
    let hold = HeldShard::take(&cluster, a_id);
    let (a_shard, a_worker) = (hold.shard, hold.worker);
    write(&dir.join("a/a.csv"), &tripload::gen::trips_csv(5_000, 62));
    let log_a = std::fs::File::create(dir.join("a.log")).expect("log");
    let mut a = tripload_cmd(&cluster, dir, &["load", "a"])
        .stdout(Stdio::null())
        .stderr(log_a)
        .spawn()
        .expect("start loader A");
    let waiting = format!(
        "SELECT count(*) FROM pg_locks WHERE relation = 'trips_{a_shard}'::regclass AND NOT granted"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster.count(a_worker, &waiting) == 0 {
        assert!(
            a.try_wait().expect("wait").is_none(),
            "A ended early: {}",
            read(&dir.join("a.log"))
        );
        assert!(
            Instant::now() < deadline,
            "A's COPY never reached its worker"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Loader B, another process, another file with names no one has used.
    write(
        &dir.join("b/b.csv"),
        &with_new_names(&tripload::gen::trips_csv(5_000, 63), "b"),
    );
    let log_b = std::fs::File::create(dir.join("b.log")).expect("log");
    let mut b = tripload_cmd(&cluster, dir, &["load", "b"])
        .stdout(Stdio::null())
        .stderr(log_b)
        .spawn()
        .expect("start loader B");
    let Some(status) = exit_within(&mut b, Duration::from_secs(120)) else {
        let coordinator: String = cluster.query(0, WAITING)[0].get(0);
        let worker: String = cluster.query(a_worker, WAITING)[0].get(0);
        let _ = b.kill();
        let _ = b.wait();
        drop(hold);
        let _ = a.kill();
        let _ = a.wait();
        panic!(
            "loader B did not finish while A's transaction was open; waiting on the coordinator:\n{coordinator}\non A's worker:\n{worker}\nB's log:\n{}",
            read(&dir.join("b.log"))
        );
    };
    assert!(status.success(), "{}", read(&dir.join("b.log")));
    assert!(dir.join("processed/b.csv").exists());
    assert!(
        a.try_wait().expect("wait").is_none() && cluster.count(a_worker, &waiting) > 0,
        "A should still be waiting: {}",
        read(&dir.join("a.log"))
    );
    let b_id: i32 = cluster.query(
        0,
        "SELECT file_id FROM load_files WHERE file_name = 'b.csv' AND committed_at IS NOT NULL",
    )[0]
    .get(0);
    assert_ne!(trips_shard_of(&cluster, b_id).0, a_shard);
    assert_eq!(
        cluster.count(
            0,
            &format!("SELECT count(*) FROM trips WHERE file_id = {b_id}")
        ),
        5_000
    );
    assert_eq!(
        cluster.count(
            0,
            "SELECT count(*) FROM regions WHERE name LIKE '%-b' AND registered_by IS NULL"
        ),
        tripload::gen::REGIONS.len() as i64
    );
    assert_eq!(
        cluster.count(
            0,
            "SELECT count(*) FROM datasources WHERE name LIKE '%\\_b' AND registered_by IS NULL"
        ),
        tripload::gen::DATASOURCES.len() as i64
    );
    assert_eq!(
        cluster.count(
            0,
            "SELECT count(*) FROM load_files WHERE file_name = 'a.csv'"
        ),
        0
    );

    // A goes on once its worker lets it, and commits.
    drop(hold);
    let status = exit_within(&mut a, Duration::from_secs(120)).expect("A finishes once released");
    assert!(status.success(), "{}", read(&dir.join("a.log")));

    // Each file once, on its own shard; the rollups are the trips'.
    for (name, id) in [("a.csv", a_id), ("b.csv", b_id)] {
        assert_eq!(
            cluster.count(
                0,
                &format!(
                    "SELECT count(*) FROM load_files WHERE file_name = '{name}' AND file_id = {id}
                     AND committed_at IS NOT NULL AND rows_loaded = 5000"
                )
            ),
            1,
            "{name}"
        );
        assert_eq!(
            cluster.count(
                0,
                &format!("SELECT count(*) FROM trips WHERE file_id = {id}")
            ),
            5_000,
            "{name}"
        );
    }
    assert_eq!(
        cluster.count(0, "SELECT count(*) FROM trips"),
        loaded + 10_000
    );
    for (what, sql) in rollup_mismatch_queries() {
        assert_eq!(cluster.count(0, &sql), 0, "{what}");
    }
    assert_eq!(
        cluster.count(0, "SELECT count(*) FROM rollup_uncompacted"),
        0
    );
    assert_eq!(prepared(&cluster), 0);
}

/// Rows per file of the benchmark (`TRIPLOAD_BENCH_ROWS`, default 500,000).
fn bench_rows() -> u64 {
    std::env::var("TRIPLOAD_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500_000)
}

/// Empties the tables and restarts the file ids, so that every run puts
/// its four files on the same shards.
fn reset(cluster: &CitusCluster) {
    cluster.batch(
        0,
        "TRUNCATE trips, rollup_region_week, rollup_region_source, rollup_cell_week, rollup_cell_points;
         TRUNCATE load_files, rollup_uncompacted, cell_points_pending RESTART IDENTITY;",
    );
}

/// Trips on each worker (by the shard of each file).
fn per_worker(cluster: &CitusCluster) -> [i64; 2] {
    let mut n = [0; 2];
    for r in cluster.query(0, "SELECT file_id, count(*) FROM trips GROUP BY 1") {
        let (file_id, trips): (i32, i64) = (r.get(0), r.get(1));
        n[trips_shard_of(cluster, file_id).1 - 1] += trips;
    }
    n
}

/// Four files loaded by four `tripload load` processes at once against one
/// process with `--jobs 4`, into the same cluster, the same file ids (so
/// the same shards) each run. Not a timed test: prints rows/s.
///
/// `cargo test --release --test citus_loaders -- --ignored --nocapture`
/// (`TRIPLOAD_BENCH_ROWS`, `TRIPLOAD_BENCH_REPEATS`: default 500,000 and 1).
#[test]
#[ignore = "benchmark; run with --ignored --nocapture"]
fn bench_four_processes_against_one_process_with_jobs_4() {
    if skip_without_citus("bench_four_processes_against_one_process_with_jobs_4") {
        return;
    }
    let rows = bench_rows();
    let repeats: usize = std::env::var("TRIPLOAD_BENCH_REPEATS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let cluster = CitusCluster::start();
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();
    let out = tripload(&cluster, dir, &["db", "migrate"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let sources: Vec<std::path::PathBuf> = (0..4u64)
        .map(|i| {
            let p = dir.join(format!("src/f{i}.csv"));
            write(&p, &tripload::gen::trips_csv(rows, 80 + i));
            p
        })
        .collect();
    let mut lines = Vec::new();
    for round in 0..repeats {
        for method in ["one process, --jobs 4", "four processes"] {
            reset(&cluster);
            let _ = std::fs::remove_dir_all(dir.join("processed"));
            for (i, s) in sources.iter().enumerate() {
                let to = dir.join(format!("in{i}/f{i}.csv"));
                std::fs::create_dir_all(to.parent().expect("dir")).expect("mkdir");
                std::fs::copy(s, &to).expect("copy");
            }
            let start = Instant::now();
            if method == "four processes" {
                let children: Vec<_> = (0..4)
                    .map(|i| {
                        tripload_cmd(&cluster, dir, &["load", "-q", &format!("in{i}")])
                            .stdout(Stdio::null())
                            .stderr(Stdio::piped())
                            .spawn()
                            .expect("start a loader")
                    })
                    .collect();
                for c in children {
                    let out = c.wait_with_output().expect("wait");
                    assert!(out.status.success(), "{}", stderr(&out));
                }
            } else {
                let out = tripload(
                    &cluster,
                    dir,
                    &["load", "-q", "--jobs", "4", "in0", "in1", "in2", "in3"],
                );
                assert!(out.status.success(), "{}", stderr(&out));
            }
            let secs = start.elapsed().as_secs_f64();
            assert_eq!(
                cluster.count(0, "SELECT count(*) FROM trips"),
                4 * rows as i64
            );
            let line = format!(
                "round {round}: {method}: {:.1} s, {:.0} rows/s, trips per worker {:?}",
                secs,
                (4 * rows) as f64 / secs,
                per_worker(&cluster)
            );
            println!("{line}");
            lines.push(line);
        }
    }
    assert_eq!(lines.len(), 2 * repeats);
}
