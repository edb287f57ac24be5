//! Several `tripload load` processes against one database at once (as from
//! several machines): while one loader's file transaction is held open in
//! the middle of its COPY, another loader's file, with region and
//! datasource names new to the database, registers its names, claims its
//! ledger row, commits, compacts and exits; then the first commits too.
//! Both files load exactly once and the rollups equal brute force. The same
//! on a Citus cluster: tests/citus_loaders.rs.

mod common;
use common::loaders::{exit_within, rollup_mismatch_queries, with_new_names, WAITING};
use common::{fresh_db, hypertable, stderr, tripload, tripload_cmd, TestDb, Work};
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
    // A first file, already loaded (new chunks for the loaders below:
    // a_loader_needing_new_chunks_commits_while_another_that_made_its_own_waits).
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

/// The advisory lock that holds the rows of one year (held by the test).
const YEAR_KEY: i64 = 4_343_435;

/// `csv` (as `tripload::gen` writes it, all in 2018) with its trips moved to
/// `year` (2018 is no leap year, so every date exists in any other year).
fn in_year(csv: &[u8], year: u32) -> Vec<u8> {
    let text = std::str::from_utf8(csv).expect("generated CSV is UTF-8");
    text.replace(",2018-", &format!(",{year}-")).into_bytes()
}

/// The distinct UTC days (`YYYY-MM-DD`) of a generated file's trips.
fn days_of(csv: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(csv).expect("generated CSV is UTF-8");
    let mut days: Vec<String> = text
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(3).expect("a datetime field")[..10].to_string())
        .collect();
    days.sort();
    days.dedup();
    days
}

/// Makes every row of `year`, before it is inserted, wait for the advisory
/// lock [`YEAR_KEY`] (which the returned session holds): a file of that
/// year stops at its first row with its transaction open; others pass.
fn hold_rows_of_year(db: &TestDb, year: u32) -> common::Session {
    db.batch(&format!(
        "CREATE FUNCTION test_hold_year() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN
              IF NEW.datetime >= '{year}-01-01 00:00:00+00' AND NEW.datetime < '{next}-01-01 00:00:00+00' THEN
                PERFORM pg_advisory_xact_lock_shared({YEAR_KEY});
              END IF;
              RETURN NEW;
            END $$;
         CREATE TRIGGER test_hold_year BEFORE INSERT ON trips
         FOR EACH ROW EXECUTE FUNCTION test_hold_year();",
        next = year + 1
    ));
    let session = db.session();
    session.query(&format!("SELECT pg_advisory_lock({YEAR_KEY})"));
    session
}

fn year_held(db: &TestDb) -> bool {
    db.count(&format!(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = {YEAR_KEY}"
    )) > 0
}

/// The days of `days` that no committed chunk of `trips` holds.
fn days_without_chunk(db: &TestDb, days: &[String]) -> Vec<String> {
    let list = days
        .iter()
        .map(|d| format!("'{d}'"))
        .collect::<Vec<_>>()
        .join(",");
    db.query(&format!(
        "SELECT coalesce(string_agg(d::text, ' ' ORDER BY d), '')
         FROM unnest(ARRAY[{list}]::date[]) d
         WHERE NOT EXISTS (
             SELECT 1 FROM timescaledb_information.chunks c
             WHERE c.hypertable_name = 'trips'
               AND c.range_start <= d::timestamp AT TIME ZONE 'UTC'
               AND (d + 1)::timestamp AT TIME ZONE 'UTC' <= c.range_end)"
    ))[0]
        .get::<_, String>(0)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Kills the loaders and fails with what the server's sessions wait for.
fn give_up(db: &TestDb, w: &Work, loaders: &mut [&mut std::process::Child], what: &str) -> ! {
    let waiting: String = db.query(WAITING)[0].get(0);
    for l in loaders.iter_mut() {
        let _ = l.kill();
        let _ = l.wait();
    }
    panic!(
        "{what}; waiting sessions:\n{waiting}\nlogs:\n{}",
        w.read("load.log")
    );
}

/// Waits until a COPY waits on [`YEAR_KEY`] (within 60 s).
fn wait_for_year_hold(db: &TestDb, w: &Work, loader: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !year_held(db) {
        if loader.try_wait().expect("wait").is_some() {
            give_up(db, w, &mut [loader], "the held loader ended early");
        }
        if Instant::now() > deadline {
            give_up(
                db,
                w,
                &mut [loader],
                "the held loader's COPY never reached its rows",
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Each committed file's rows, the trips' total and the rollups checked.
fn each_file_once(db: &TestDb, want: &[(&str, i64)]) {
    let files: Vec<(String, i64)> = db
        .query(
            "SELECT f.file_name, (SELECT count(*) FROM trips t WHERE t.file_id = f.file_id)
             FROM load_files f WHERE f.committed_at IS NOT NULL ORDER BY f.file_name",
        )
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let want: Vec<(String, i64)> = want.iter().map(|(f, n)| (f.to_string(), *n)).collect();
    assert_eq!(files, want);
    assert_eq!(db.trips(), want.iter().map(|(_, n)| n).sum::<i64>());
    for (what, sql) in rollup_mismatch_queries() {
        assert_eq!(db.count(&sql), 0, "{what}");
    }
}

/// Loader A's file needs chunks of 2019 and B's of 2021, none of which
/// exist. A makes its chunks, commits them, and its COPY is then held at its
/// first row; B, another process, makes its own chunks, loads, commits and
/// exits meanwhile: no chunk is made inside a file's transaction, where it
/// would hold up every other loader until that file commits (on the plain
/// layout the same run checks that nothing waits either).
#[test]
fn a_loader_needing_new_chunks_commits_while_another_that_made_its_own_waits() {
    let db = fresh_db();
    let w = Work::new();
    let out = tripload(&w, &db, &["db", "migrate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let a_csv = in_year(&tripload::gen::trips_csv(5_000, 64), 2019);
    let b_csv = in_year(&tripload::gen::trips_csv(5_000, 65), 2021);
    write(&w, "a/a.csv", &a_csv);
    write(&w, "b/b.csv", &b_csv);
    let holder = hold_rows_of_year(&db, 2019);
    let log = std::fs::File::create(w.path("load.log")).expect("log");
    let mut a = tripload_cmd(&w, &db, &["load", "a"])
        .stdout(Stdio::null())
        .stderr(log.try_clone().expect("log"))
        .spawn()
        .expect("start loader A");
    wait_for_year_hold(&db, &w, &mut a);
    if hypertable(&db) {
        // A's chunks were made, and committed, before its transaction.
        assert_eq!(
            days_without_chunk(&db, &days_of(&a_csv)),
            Vec::<String>::new()
        );
        assert_eq!(
            days_without_chunk(&db, &days_of(&b_csv)).len(),
            days_of(&b_csv).len()
        );
    }

    let started = Instant::now();
    let mut b = tripload_cmd(&w, &db, &["load", "b"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start loader B");
    let Some(status) = exit_within(&mut b, Duration::from_secs(60)) else {
        drop(holder);
        give_up(
            &db,
            &w,
            &mut [&mut a, &mut b],
            "loader B did not finish while A's transaction was open",
        );
    };
    eprintln!(
        "loader B: done in {:.2} s while A was held",
        started.elapsed().as_secs_f64()
    );
    assert!(status.success(), "{}", w.read("load.log"));
    assert!(w.exists("processed/b.csv"), "{}", w.read("load.log"));
    assert!(
        a.try_wait().expect("wait").is_none() && year_held(&db),
        "A should still be waiting: {}",
        w.read("load.log")
    );
    assert_eq!(
        db.count("SELECT count(*) FROM load_files WHERE file_name = 'a.csv'"),
        0
    );

    holder.query(&format!("SELECT pg_advisory_unlock({YEAR_KEY})"));
    let status = exit_within(&mut a, Duration::from_secs(120)).expect("A finishes once released");
    assert!(status.success(), "{}", w.read("load.log"));
    db.batch("DROP TRIGGER test_hold_year ON trips");
    each_file_once(&db, &[("a.csv", 5_000), ("b.csv", 5_000)]);
}

/// The same between two files of one `load --jobs 2`: B's first 40,000
/// rows go into weeks whose chunks exist, then 5,000 into 2021, which has
/// none; A (2019) is held at its first row. B commits while A waits.
#[test]
fn files_of_one_jobs_process_needing_new_chunks_do_not_wait_for_each_other() {
    let db = fresh_db();
    let w = Work::new();
    w.land("first.csv", &tripload::gen::trips_csv(2_000, 66));
    let out = tripload(&w, &db, &["load", "landing"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let a_csv = in_year(&tripload::gen::trips_csv(2_000, 67), 2019);
    let mut b_csv = tripload::gen::trips_csv(40_000, 68);
    let late = in_year(&tripload::gen::trips_csv(5_000, 69), 2021);
    let body = late.iter().position(|&c| c == b'\n').expect("a header") + 1;
    b_csv.extend_from_slice(&late[body..]);
    write(&w, "both/a.csv", &a_csv);
    write(&w, "both/b.csv", &b_csv);
    let holder = hold_rows_of_year(&db, 2019);
    let log = std::fs::File::create(w.path("load.log")).expect("log");
    let mut run = tripload_cmd(&w, &db, &["load", "--jobs", "2", "both"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start the loader");
    wait_for_year_hold(&db, &w, &mut run);
    let committed_b =
        "SELECT count(*) FROM load_files WHERE file_name = 'b.csv' AND committed_at IS NOT NULL";
    let deadline = Instant::now() + Duration::from_secs(60);
    while db.count(committed_b) == 0 {
        if Instant::now() > deadline {
            drop(holder);
            give_up(
                &db,
                &w,
                &mut [&mut run],
                "file B did not commit while A's transaction was open",
            );
        }
        assert!(
            run.try_wait().expect("wait").is_none(),
            "the loader ended early: {}",
            w.read("load.log")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(year_held(&db), "A should still be waiting");
    holder.query(&format!("SELECT pg_advisory_unlock({YEAR_KEY})"));
    let status = exit_within(&mut run, Duration::from_secs(120))
        .expect("the loader finishes once A is released");
    assert!(status.success(), "{}", w.read("load.log"));
    db.batch("DROP TRIGGER test_hold_year ON trips");
    each_file_once(
        &db,
        &[("a.csv", 2_000), ("b.csv", 45_000), ("first.csv", 2_000)],
    );
}
