//! A long watch, shortened: 2,000 small files through the real `tripload
//! watch` on a server with PostgreSQL's default lock table
//! (`max_locks_per_transaction` 64, `max_connections` 100). Every file is
//! loaded once; bounding-box queries and `pg_dump --schema-only` still work
//! (each takes a lock per relation it reads, so they fail once the catalog
//! grows with the files); the number of relations after 2,000 files is the
//! number after 100; the watcher compacts the small files' rollups.

mod common;
use common::*;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const FILES: usize = 2_000;
const FIRST: usize = 100;
const ROWS: u64 = 10;

fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn stop(mut child: Child) -> std::process::ExitStatus {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = child.try_wait().expect("wait for the watcher") {
            return s;
        }
        assert!(Instant::now() < deadline, "watcher did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Moves files `from..to` of `staging` into landing (renames: each appears whole).
fn land(w: &Work, from: usize, to: usize) {
    for i in from..to {
        let name = format!("f{i:05}.csv");
        std::fs::rename(w.path("staging").join(&name), w.path("landing").join(&name))
            .expect("move into landing");
    }
}

fn relations(db: &TestDb) -> i64 {
    db.count("SELECT count(*) FROM pg_class")
}

#[test]
fn two_thousand_small_files_through_watch_keep_the_catalog_flat() {
    let start = Instant::now();
    let db = fresh_db();
    let w = Work::new();
    assert_eq!(
        db.query("SHOW max_locks_per_transaction")[0].get::<_, String>(0),
        "64"
    );
    assert_eq!(
        db.query("SHOW max_connections")[0].get::<_, String>(0),
        "100"
    );
    std::fs::create_dir(w.path("staging")).expect("staging");
    for i in 0..FILES {
        std::fs::write(
            w.path("staging").join(format!("f{i:05}.csv")),
            tripload::gen::trips_csv(ROWS, 10_000 + i as u64),
        )
        .expect("write a file");
    }
    let child: Child = tripload_cmd(
        &w,
        &db,
        &[
            "watch",
            "landing",
            "--quiet-period",
            "0.2",
            "--jobs",
            "2",
            "--quiet",
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("start watcher");
    // The watcher creates the schema as it starts.
    wait_for("the schema", 120, || {
        db.count("SELECT count(*) FROM pg_class WHERE relname = 'load_files'") == 1
    });
    let loaded = || db.count("SELECT count(*) FROM load_files");

    land(&w, 0, FIRST);
    wait_for("the first files", 120, || loaded() == FIRST as i64);
    let after_first = relations(&db);
    land(&w, FIRST, FILES);
    wait_for("every file", 600, || loaded() == FILES as i64);
    // Gone quiet, the watcher compacts what is left.
    wait_for("the compaction of every file", 120, || {
        db.count("SELECT count(*) FROM rollup_uncompacted") == 0
    });
    let after_all = relations(&db);
    let out = tripload(
        &w,
        &db,
        &[
            "weekly",
            "--bbox",
            "14.37,50.0,14.52,50.13",
            "--format",
            "json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let weekly: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert!(stop(child).success());

    // Every file once: the ledger, the trips and the processed directory.
    assert_eq!(loaded(), FILES as i64);
    assert_eq!(
        db.count("SELECT count(DISTINCT content_hash) FROM load_files"),
        FILES as i64
    );
    assert_eq!(db.trips(), FILES as i64 * ROWS as i64);
    assert_eq!(
        db.count("SELECT sum(rows_loaded)::bigint FROM load_files"),
        db.trips()
    );
    assert_eq!(
        std::fs::read_dir(w.path("processed"))
            .expect("processed")
            .count(),
        FILES
    );
    assert!(!w.exists("failed"));

    // The catalog did not grow with the files.
    assert!(
        (after_all - after_first).abs() <= 3,
        "{after_first} relations after {FIRST} files, {after_all} after {FILES}"
    );
    // The rollups did not either: compacted, one row per region and week.
    assert_eq!(
        db.count("SELECT count(*) FROM rollup_region_week WHERE file_id <> 0"),
        0
    );
    assert!(
        db.count("SELECT count(*) FROM rollup_region_week")
            <= db.count("SELECT count(DISTINCT (region_id, date_trunc('week', datetime AT TIME ZONE 'UTC'))) FROM trips")
    );

    // The box's answer is exact.
    let brute = db.count(
        "SELECT count(*) FROM trips
          WHERE ST_X(origin) BETWEEN 14.37 AND 14.52 AND ST_Y(origin) BETWEEN 50.0 AND 50.13",
    );
    assert!(brute > 0);
    assert_eq!(weekly["total_trips"].as_i64(), Some(brute), "{weekly}");

    // A schema dump locks every relation too.
    let dump = std::process::Command::new("/usr/lib/postgresql/15/bin/pg_dump")
        .args(["--schema-only", "--dbname", &db.conninfo])
        .output()
        .expect("run pg_dump");
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    assert!(
        String::from_utf8_lossy(&dump.stdout).contains("CREATE TABLE public.rollup_cell_points")
    );
    eprintln!(
        "soak: {FILES} files in {:.0} s; {after_first} relations after {FIRST} files, {after_all} after {FILES}",
        start.elapsed().as_secs_f64()
    );
}
