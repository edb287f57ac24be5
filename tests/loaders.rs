//! Several `tripload load` processes against one database at once (as from
//! several machines): while one loader's file transaction is held open in
//! the middle of its COPY, another loader's file, with region and
//! datasource names new to the database, registers its names, claims its
//! ledger row, commits, compacts and exits; then the first commits too.
//! Both files load exactly once and the rollups equal brute force. The same
//! on a Citus cluster: tests/citus_loaders.rs.

mod common;
use common::loaders::{exit_within, rollup_mismatch_queries, with_new_names, WAITING};
use common::{fresh_db, stderr, tripload, tripload_cmd, TestDb, Work};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The advisory lock that holds loader A's rows (held by the test).
const HOLD_KEY: i64 = 4_343_434;

/// The `file_id` the next ledger claim gets.
fn next_file_id(db: &TestDb) -> i32 {
    let seq: String = db.query("SELECT pg_get_serial_sequence('load_files', 'file_id')")[0].get(0);
    db.query(&format!(
        "SELECT (CASE WHEN is_called THEN last_value + 1 ELSE last_value END)::int FROM {seq}"
    ))[0]
        .get(0)
}

/// Makes every row of file `file_id` wait, before it is inserted, for the
/// advisory lock [`HOLD_KEY`] (which the returned session holds): that
/// file's COPY stops at its first row, its transaction open with its ledger
/// row claimed and the dictionaries' lock taken; other files pass.
fn hold_rows_of(db: &TestDb, file_id: i32) -> common::Session {
    db.batch(&format!(
        "CREATE FUNCTION test_hold_file() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN
              IF NEW.file_id = {file_id} THEN PERFORM pg_advisory_xact_lock_shared({HOLD_KEY}); END IF;
              RETURN NEW;
            END $$;
         CREATE TRIGGER test_hold BEFORE INSERT ON trips
         FOR EACH ROW EXECUTE FUNCTION test_hold_file();"
    ));
    let session = db.session();
    session.query(&format!("SELECT pg_advisory_lock({HOLD_KEY})"));
    session
}

fn held(db: &TestDb) -> bool {
    db.count(&format!(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = {HOLD_KEY}"
    )) > 0
}

fn write(w: &Work, rel: &str, content: &[u8]) {
    let path = w.path(rel);
    std::fs::create_dir_all(path.parent().expect("a directory")).expect("mkdir");
    std::fs::write(path, content).expect("write");
}

#[test]
fn a_loader_commits_and_exits_while_another_waits() {
    let db = fresh_db();
    let w = Work::new();
    // A first file: on the hypertable layout every week of the generated
    // year then has its chunk, so neither loader creates one below (a
    // TimescaleDB transaction that creates a chunk holds a lock that the
    // next chunk creation waits for until it ends: see architecture.md,
    // known limits).
    w.land("first.csv", &tripload::gen::trips_csv(20_000, 61));
    let out = tripload(&w, &db, &["load", "landing"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Loader A: its COPY waits at its first row.
    let a_id = next_file_id(&db);
    let holder = hold_rows_of(&db, a_id);
    write(&w, "a/a.csv", &tripload::gen::trips_csv(5_000, 62));
    let log_a = std::fs::File::create(w.path("a.log")).expect("log");
    let mut a = tripload_cmd(&w, &db, &["load", "a"])
        .stdout(Stdio::null())
        .stderr(log_a)
        .spawn()
        .expect("start loader A");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !held(&db) {
        assert!(
            a.try_wait().expect("wait").is_none(),
            "A ended early: {}",
            w.read("a.log")
        );
        assert!(Instant::now() < deadline, "A's COPY never reached its rows");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Loader B, another process, another file with names no one has used:
    // it registers them, claims, copies, commits, compacts and exits while
    // A's transaction is still open.
    write(
        &w,
        "b/b.csv",
        &with_new_names(&tripload::gen::trips_csv(5_000, 63), "b"),
    );
    let log_b = std::fs::File::create(w.path("b.log")).expect("log");
    let mut b = tripload_cmd(&w, &db, &["load", "b"])
        .stdout(Stdio::null())
        .stderr(log_b)
        .spawn()
        .expect("start loader B");
    let Some(status) = exit_within(&mut b, Duration::from_secs(90)) else {
        let waiting: String = db.query(WAITING)[0].get(0);
        let _ = b.kill();
        let _ = b.wait();
        drop(holder);
        let _ = a.kill();
        let _ = a.wait();
        panic!(
            "loader B did not finish while A's transaction was open; waiting sessions:\n{waiting}\nB's log:\n{}",
            w.read("b.log")
        );
    };
    assert!(status.success(), "{}", w.read("b.log"));
    assert!(w.exists("processed/b.csv"), "{}", w.read("b.log"));
    assert!(
        a.try_wait().expect("wait").is_none() && held(&db),
        "A should still be waiting: {}",
        w.read("a.log")
    );
    let b_id: i32 = db.query(
        "SELECT file_id FROM load_files WHERE file_name = 'b.csv' AND committed_at IS NOT NULL",
    )[0]
    .get(0);
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM trips WHERE file_id = {b_id}"
        )),
        5_000
    );
    // B's new names are committed (not pending); A's row is not visible.
    assert_eq!(
        db.count("SELECT count(*) FROM regions WHERE name LIKE '%-b' AND registered_by IS NULL"),
        tripload::gen::REGIONS.len() as i64
    );
    assert_eq!(
        db.count(
            "SELECT count(*) FROM datasources WHERE name LIKE '%\\_b' AND registered_by IS NULL"
        ),
        tripload::gen::DATASOURCES.len() as i64
    );
    assert_eq!(
        db.count("SELECT count(*) FROM load_files WHERE file_name = 'a.csv'"),
        0
    );

    // A goes on once released.
    holder.query(&format!("SELECT pg_advisory_unlock({HOLD_KEY})"));
    let status = exit_within(&mut a, Duration::from_secs(120)).expect("A finishes once released");
    assert!(status.success(), "{}", w.read("a.log"));
    db.batch("DROP TRIGGER test_hold ON trips");

    // Each file once, with its own trips; the rollups are the trips'.
    let files: Vec<(String, i32, i64)> = db
        .query(
            "SELECT f.file_name, f.file_id, (SELECT count(*) FROM trips t WHERE t.file_id = f.file_id)
             FROM load_files f WHERE f.committed_at IS NOT NULL ORDER BY f.file_id",
        )
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        files,
        [
            ("first.csv".to_string(), a_id - 1, 20_000),
            ("a.csv".to_string(), a_id, 5_000),
            ("b.csv".to_string(), b_id, 5_000),
        ]
    );
    assert_eq!(db.trips(), 30_000);
    for (what, sql) in rollup_mismatch_queries() {
        assert_eq!(db.count(&sql), 0, "{what}");
    }
    // Both processes compacted what they loaded.
    assert_eq!(db.count("SELECT count(*) FROM rollup_uncompacted"), 0);
}
