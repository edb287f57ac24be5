//! Unload, replace and retain with the real binary and a real database: after
//! each, the trip count, every weekly answer and the trip groups equal
//! brute force over the trips that remain, and the rollups equal those of a
//! database loaded with only those trips.

mod common;
use common::*;
use std::process::Child;
use std::time::{Duration, Instant};

const A: u64 = 4_000;
const B: u64 = 3_000;
const C: u64 = 5_000;

fn csv(rows: u64, seed: u64) -> Vec<u8> {
    tripload::gen::trips_csv(rows, seed)
}

/// Loads each file in its own `load` run (each compacts at its end).
fn load_each(w: &Work, db: &TestDb, files: &[(&str, &[u8])]) {
    for (name, content) in files {
        let p = w.land(name, content);
        ok(&tripload(w, db, &["load", p.to_str().expect("utf-8 path")]));
    }
}

/// Loads `files` in one run that is killed once they are committed, while
/// this test holds the compaction lock shared (as unloads do; compaction
/// takes it exclusively): the files keep rollup rows of their own (listed
/// in rollup_uncompacted), as between a commit and the next compaction.
fn load_uncompacted(w: &Work, db: &TestDb, files: &[(&str, &[u8])]) {
    ok(&tripload(w, db, &["db", "migrate"]));
    let lock = db.session();
    let (class, key) = tripload::analytics::compact::LOCK;
    lock.query(&format!("SELECT pg_advisory_lock_shared({class}, {key})"));
    let before = db.count("SELECT count(*) FROM load_files");
    for (name, content) in files {
        w.land(name, content);
    }
    let mut child = tripload_cmd(w, db, &["load", "landing", "--jobs", "1", "-q"])
        .spawn()
        .expect("spawn tripload");
    let deadline = Instant::now() + Duration::from_secs(120);
    while db.count("SELECT count(*) FROM load_files WHERE committed_at IS NOT NULL")
        < before + files.len() as i64
    {
        assert!(Instant::now() < deadline, "the files did not commit");
        if let Ok(Some(st)) = child.try_wait() {
            panic!("tripload ended early: {st}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    drop(lock);
}

/// A database with `files` loaded and compacted, for comparison.
fn reference(files: &[&[u8]]) -> (TestDb, Work) {
    let (db, w) = (fresh_db(), Work::new());
    let named: Vec<(String, &[u8])> = files
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("ref-{i}.csv"), *c))
        .collect();
    let refs: Vec<(&str, &[u8])> = named.iter().map(|(n, c)| (n.as_str(), *c)).collect();
    load_each(&w, &db, &refs);
    (db, w)
}

/// The rollup rows themselves (file ids included; regions by name).
fn raw_rollups(db: &TestDb) -> Vec<String> {
    let mut all = Vec::new();
    for (table, cols) in [
        (
            "rollup_cell_points",
            "file_id, side, ix, iy, weeks, ends, lons, lats_sorted, lat_pos",
        ),
        ("rollup_cell_week", "file_id, side, ix, iy, weeks, trips"),
        (
            "rollup_region_week",
            "file_id, (SELECT name FROM regions WHERE id = region_id), week, trips",
        ),
        (
            "rollup_region_source",
            "file_id, (SELECT name FROM regions WHERE id = region_id), \
             (SELECT name FROM datasources WHERE id = datasource_id), trips, last_at",
        ),
    ] {
        all.extend(
            db.query(&format!(
                "SELECT '{table} ' || concat_ws(' ', {cols}) FROM {table} ORDER BY 1"
            ))
            .iter()
            .map(|r| r.get::<_, String>(0)),
        );
    }
    all
}

type Weeks = Vec<(chrono::NaiveDate, i64)>;

fn weeks(db: &TestDb, sql: &str) -> Weeks {
    db.query(sql).iter().map(|r| (r.get(0), r.get(1))).collect()
}

/// Brute force from `trips` alone, over the window the functions use.
fn brute(db: &TestDb, cond: &str, from: Option<&str>, to: Option<&str>) -> Weeks {
    let bound = |d: Option<&str>, agg: &str| {
        d.map(|d| format!("date_trunc('week', date '{d}')::date"))
            .unwrap_or_else(|| {
                format!("(SELECT {agg}(date_trunc('week', datetime AT TIME ZONE 'UTC'))::date FROM trips)")
            })
    };
    weeks(
        db,
        &format!(
            "WITH weeks AS (SELECT generate_series({}, {}, interval '1 week')::date AS week),
                  c AS (SELECT date_trunc('week', datetime AT TIME ZONE 'UTC')::date AS week, count(*) AS n
                        FROM trips WHERE {cond} GROUP BY 1)
             SELECT weeks.week, coalesce(c.n, 0)::bigint FROM weeks LEFT JOIN c USING (week) ORDER BY 1",
            bound(from, "min"),
            bound(to, "max")
        ),
    )
}

fn in_box(col: &str, b: [f64; 4]) -> String {
    format!(
        "ST_X({col}) BETWEEN {:?} AND {:?} AND ST_Y({col}) BETWEEN {:?} AND {:?}",
        b[0], b[2], b[1], b[3]
    )
}

const WINDOWS: [(Option<&str>, Option<&str>); 3] = [
    (None, None),
    (Some("2018-03-07"), Some("2018-04-30")),
    (Some("2018-08-01"), Some("2018-12-20")),
];

/// Every weekly answer (regions, boxes by origin, destination and both, in
/// windows) equals brute force over the trips.
fn check_answers(db: &TestDb) {
    let lit = |d: Option<&str>| d.map(|d| format!("date '{d}'")).unwrap_or("NULL".into());
    for (from, to) in WINDOWS {
        for (region, _, _) in tripload::gen::REGIONS {
            let got = weeks(
                db,
                &format!(
                    "SELECT * FROM weekly_trips_region('{region}', {}, {})",
                    lit(from),
                    lit(to)
                ),
            );
            let cond = format!("region_id = (SELECT id FROM regions WHERE name = '{region}')");
            assert_eq!(got, brute(db, &cond, from, to), "{region} {from:?}..{to:?}");
        }
        for b in [
            [14.37, 50.0, 14.52, 50.13],
            [14.3, 49.98, 14.5, 50.1],
            [7.6, 45.0, 7.75, 45.12],
            [-180.0, -90.0, 180.0, 90.0],
        ] {
            for by in ["origin", "destination", "both"] {
                let cond = match by {
                    "origin" => in_box("origin", b),
                    "destination" => in_box("destination", b),
                    _ => format!("{} AND {}", in_box("origin", b), in_box("destination", b)),
                };
                let got = weeks(
                    db,
                    &format!(
                        "SELECT * FROM weekly_trips_bbox({:?}, {:?}, {:?}, {:?}, '{by}', {}, {})",
                        b[0],
                        b[1],
                        b[2],
                        b[3],
                        lit(from),
                        lit(to)
                    ),
                );
                assert_eq!(
                    got,
                    brute(db, &cond, from, to),
                    "{b:?} by {by} {from:?}..{to:?}"
                );
            }
        }
    }
}

/// `tripload groups` as sorted lines (ties may list in another order).
fn groups(w: &Work, db: &TestDb, args: &[&str]) -> Vec<String> {
    let mut a = vec!["groups", "--format", "csv", "--top", "100000"];
    a.extend_from_slice(args);
    let out = tripload(w, db, &a);
    ok(&out);
    let mut lines: Vec<String> = stdout(&out).lines().map(String::from).collect();
    lines.sort();
    lines
}

/// Same trips, same answers, same rollups (summed over files) as `reference`.
fn same_as(w: &Work, db: &TestDb, reference: &TestDb) {
    assert_eq!(db.trips(), reference.trips());
    check_answers(db);
    assert_eq!(rollup_state(db), rollup_state(reference));
    for args in [
        &[][..],
        &["--region", "Prague"][..],
        &["--bbox", "14.37,50.0,14.52,50.13", "--by", "destination"][..],
    ] {
        assert_eq!(groups(w, db, args), groups(w, reference, args), "{args:?}");
    }
}

fn last_event(db: &TestDb, kind: &str) -> serde_json::Value {
    let rows = db.query(&format!(
        "SELECT payload::text FROM ingestion_events WHERE kind = '{kind}' ORDER BY id DESC LIMIT 1"
    ));
    assert!(!rows.is_empty(), "no {kind} event");
    serde_json::from_str(rows[0].get::<_, &str>(0)).expect("event json")
}

#[test]
fn unloading_a_compacted_file_leaves_exactly_the_other_two() {
    let (a, b, c) = (csv(A, 1), csv(B, 2), csv(C, 3));
    let (db, w) = (fresh_db(), Work::new());
    load_each(&w, &db, &[("a.csv", &a), ("b.csv", &b), ("c.csv", &c)]);
    assert_eq!(db.count("SELECT count(*) FROM rollup_uncompacted"), 0);
    assert_eq!(
        db.count("SELECT count(*) FROM rollup_cell_points WHERE file_id <> 0"),
        0,
        "the three files are compacted"
    );
    let out = tripload(&w, &db, &["unload", "b.csv"]);
    ok(&out);
    assert!(
        stdout(&out).contains(&format!("unloaded b.csv (file id 2): {B} trips")),
        "{}",
        stdout(&out)
    );
    let (reference, _rw) = reference(&[&a, &c]);
    same_as(&w, &db, &reference);
    // Byte for byte the rows compaction makes of the two remaining files.
    assert_eq!(raw_rollups(&db), raw_rollups(&reference));
    // The ledger row went to the history, with who; the event says so.
    let who: String = db.query("SELECT removed_by || ' ' || how || ' ' || trips_removed FROM load_files_removed WHERE file_name = 'b.csv'")[0].get(0);
    assert!(
        who.contains('@') && who.contains("unloaded") && who.ends_with(&B.to_string()),
        "{who}"
    );
    assert_eq!(db.count("SELECT count(*) FROM load_files"), 2);
    let e = last_event(&db, "unloaded");
    assert_eq!(e["file"], "b.csv");
    assert_eq!(e["rows"], B);
    // The same bytes load again (not "already loaded").
    let p = w.land("b.csv", &b);
    let out = tripload(&w, &db, &["load", p.to_str().unwrap()]);
    ok(&out);
    assert!(stdout(&out).contains("loaded"), "{}", stdout(&out));
    assert_eq!(db.trips() as u64, A + B + C);
    let rw = Work::new();
    let p = rw.land("b.csv", &b);
    ok(&tripload(&rw, &reference, &["load", p.to_str().unwrap()]));
    assert_eq!(raw_rollups(&db), raw_rollups(&reference));
    check_answers(&db);
}

#[test]
fn unloading_a_file_with_rollup_rows_of_its_own() {
    let (a, b, c) = (csv(A, 11), csv(B, 12), csv(C, 13));
    let (db, w) = (fresh_db(), Work::new());
    load_uncompacted(&w, &db, &[("a.csv", &a), ("b.csv", &b), ("c.csv", &c)]);
    assert_eq!(db.count("SELECT count(*) FROM rollup_uncompacted"), 3);
    // Not built by the migrations (its upkeep slows every load); on request.
    let brin = "SELECT count(*) FROM pg_indexes WHERE indexname = 'trips_file_brin'";
    assert_eq!(db.count(brin), 0);
    ok(&tripload(&w, &db, &["db", "index", "--by-file"]));
    assert_eq!(db.count(brin), 1);
    let id: i32 = db.query("SELECT file_id FROM load_files WHERE file_name = 'b.csv'")[0].get(0);
    let out = tripload(&w, &db, &["unload", "--file-id", &id.to_string()]);
    ok(&out);
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM rollup_cell_points WHERE file_id = {id}"
        )),
        0
    );
    assert_eq!(db.count("SELECT count(*) FROM rollup_uncompacted"), 2);
    let (reference, _rw) = reference(&[&a, &c]);
    same_as(&w, &db, &reference);
    ok(&tripload(&w, &db, &["db", "compact"]));
    assert_eq!(raw_rollups(&db), raw_rollups(&reference));
}

#[test]
fn dry_runs_change_nothing_and_unknown_files_exit_2_with_close_names() {
    let (db, w) = (fresh_db(), Work::new());
    load_each(
        &w,
        &db,
        &[
            ("trips-2018-05.csv", &csv(A, 21)),
            ("trips-2018-06.csv", &csv(B, 22)),
        ],
    );
    let before = (
        raw_rollups(&db),
        db.trips(),
        db.count("SELECT count(*) FROM load_files"),
    );
    let out = tripload(&w, &db, &["unload", "trips-2018-06.csv", "--dry-run"]);
    ok(&out);
    assert!(
        stdout(&out).contains("would unload trips-2018-06.csv (file id 2"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains(&format!("{B} trips")),
        "{}",
        stdout(&out)
    );
    let out = tripload(
        &w,
        &db,
        &["db", "retain", "--older-than", "2018-07-05", "--dry-run"],
    );
    ok(&out);
    let text = stdout(&out);
    assert!(
        text.contains("would drop the trips before 2018-07-02"),
        "{text}"
    );
    assert!(text.contains("rounded down"), "{text}");
    assert_eq!(
        before,
        (
            raw_rollups(&db),
            db.trips(),
            db.count("SELECT count(*) FROM load_files")
        )
    );
    assert_eq!(
        db.count("SELECT count(*) FROM ingestion_events WHERE kind IN ('unloaded', 'retained')"),
        0
    );

    let out = tripload(&w, &db, &["unload", "trips-2018-5.csv"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("not a loaded file") && err.contains("trips-2018-05.csv"),
        "{err}"
    );
    let out = tripload(&w, &db, &["unload", "--file-id", "99"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // Bytes that were never loaded, named by path.
    let p = w.land("never.csv", &csv(10, 23));
    let out = tripload(&w, &db, &["unload", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // --replace of an unknown file loads nothing.
    let out = tripload(
        &w,
        &db,
        &["load", "--replace", "nosuch.csv", p.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("nothing was loaded"),
        "{}",
        stderr(&out)
    );
    assert_eq!(before.1, db.trips());
    // By hash: the same file as by name.
    let hash: String = db.query("SELECT content_hash FROM load_files WHERE file_id = 1")[0].get(0);
    let out = tripload(&w, &db, &["unload", &hash]);
    ok(&out);
    assert_eq!(db.trips() as u64, B);
}

#[test]
fn unload_of_a_file_still_loading_exits_3_or_waits_for_it() {
    let (db, w) = (fresh_db(), Work::new());
    let held = hold_trips_copy(&db, &w);
    let p = w.land("x.csv", &csv(500, 31));
    let mut load: Child = tripload_cmd(&w, &db, &["load", p.to_str().unwrap(), "-q"])
        .spawn()
        .expect("spawn load");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !held.holding(&db)
        || db.count("SELECT count(*) FROM ingestion_events WHERE kind = 'started'") == 0
    {
        assert!(Instant::now() < deadline, "the load did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    for what in [p.to_str().unwrap(), "x.csv"] {
        let out = tripload(&w, &db, &["unload", what]);
        assert_eq!(out.status.code(), Some(3), "{what}: {}", stderr(&out));
        assert!(stderr(&out).contains("still loading"), "{}", stderr(&out));
    }
    let waiting = tripload_cmd(&w, &db, &["unload", "x.csv", "--wait"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn unload");
    std::thread::sleep(Duration::from_millis(500));
    held.release(&db);
    assert!(load.wait().expect("load").success());
    let out = waiting.wait_with_output().expect("unload");
    ok(&out);
    assert_eq!(db.trips(), 0);
    assert_eq!(db.count("SELECT count(*) FROM load_files"), 0);
    assert_eq!(db.count("SELECT count(*) FROM rollup_cell_points"), 0);
}

#[test]
fn a_concurrent_reader_sees_the_old_file_or_the_new_never_both_or_neither() {
    let (a, b, b2) = (csv(A, 41), csv(B, 42), csv(20_000, 43));
    let (db, w) = (fresh_db(), Work::new());
    load_each(&w, &db, &[("a.csv", &a), ("b.csv", &b)]);
    let bbox = "weekly_trips_bbox(14.37, 50.0, 14.52, 50.13, 'origin')";
    let probe = format!(
        "SELECT (SELECT count(*) FROM trips), (SELECT coalesce(sum(trips), 0)::bigint FROM rollup_region_week),
                (SELECT sum(trips)::bigint FROM {bbox})"
    );
    let old = db.query(&probe);
    let old: (i64, i64, i64) = (old[0].get(0), old[0].get(1), old[0].get(2));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (conninfo, probe, stop) = (db.conninfo.clone(), probe.clone(), stop.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (c, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                let mut seen = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let r = c.query_one(&probe, &[]).await.unwrap();
                    seen.push((r.get::<_, i64>(0), r.get::<_, i64>(1), r.get::<_, i64>(2)));
                }
                seen
            })
        })
    };
    let p = w.land("b-fixed.csv", &b2);
    let out = tripload(
        &w,
        &db,
        &["load", "--replace", "b.csv", p.to_str().unwrap()],
    );
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = reader.join().expect("reader");
    ok(&out);
    assert!(
        stdout(&out).contains("replaced b.csv (file id 2)"),
        "{}",
        stdout(&out)
    );
    let new = db.query(&probe);
    let new: (i64, i64, i64) = (new[0].get(0), new[0].get(1), new[0].get(2));
    assert_eq!(new.0 as u64, A + 20_000);
    assert!(seen.len() > 3, "the reader polled {} times", seen.len());
    for s in &seen {
        assert!(
            *s == old || *s == new,
            "saw {s:?}, not old {old:?} or new {new:?}"
        );
    }
    assert_eq!(seen.first(), Some(&old));
    assert_eq!(seen.last(), Some(&new));
    assert_eq!(
        db.count("SELECT count(*) FROM load_files WHERE file_name = 'b.csv'"),
        0
    );
    let how: String =
        db.query("SELECT how FROM load_files_removed WHERE file_name = 'b.csv'")[0].get(0);
    assert!(how.starts_with("replaced by b-fixed.csv"), "{how}");
    assert_eq!(last_event(&db, "replaced")["rows"], B);
    let (reference, _rw) = reference(&[&a, &b2]);
    same_as(&w, &db, &reference);
    assert_eq!(raw_rollups(&db), raw_rollups(&reference));
}

#[test]
fn a_newer_version_in_the_name_replaces_the_older_one() {
    let (db, w) = (fresh_db(), Work::new());
    let (v1, v2, v3) = (csv(A, 51), csv(B, 52), csv(C, 53));
    load_each(
        &w,
        &db,
        &[("trips-2018-05.csv", &v1), ("other.csv", &csv(100, 54))],
    );
    for (name, content) in [("trips-2018-05.v3.csv", &v3), ("trips-2018-05.v2.csv", &v2)] {
        let p = w.land(name, content);
        ok(&tripload(
            &w,
            &db,
            &["load", "--replace-versions", p.to_str().unwrap()],
        ));
    }
    // v3 replaced v1; v2 then found no lower version committed, and loaded.
    let names: Vec<String> = db
        .query("SELECT file_name FROM load_files ORDER BY file_id")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        names,
        ["other.csv", "trips-2018-05.v3.csv", "trips-2018-05.v2.csv"]
    );
    assert_eq!(db.trips() as u64, 100 + B + C);
    // Without the flag, a versioned name is just a file.
    let p = w.land("other.v2.csv", &csv(10, 55));
    ok(&tripload(&w, &db, &["load", p.to_str().unwrap()]));
    assert_eq!(
        db.count("SELECT count(*) FROM load_files WHERE file_name = 'other.csv'"),
        1
    );
}

/// The CSV's header and the rows whose datetime is on or after `day`.
fn rows_from(content: &[u8], day: &str) -> Vec<u8> {
    let text = String::from_utf8(content.to_vec()).expect("utf-8");
    let mut lines = text.lines();
    let mut out = format!("{}\n", lines.next().expect("header"));
    for l in lines {
        let dt = l.split(',').nth(3).expect("datetime");
        if dt >= day {
            out.push_str(l);
            out.push('\n');
        }
    }
    out.into_bytes()
}

/// A fresh database whose schema has the plain layout (table + BRIN on
/// datetime), as migrations make it where TimescaleDB is not installed
/// (asked for with the `tripload.time_layout` setting).
fn plain_db(w: &Work) -> TestDb {
    let db = fresh_db();
    db.query(&format!(
        "ALTER DATABASE {} SET tripload.time_layout = 'plain'",
        db.name
    ));
    ok(&tripload(w, &db, &["db", "migrate"]));
    assert_eq!(
        db.count(
            "SELECT count(*) FROM tripload_settings WHERE key = 'time_layout' AND value = 'plain'"
        ),
        1
    );
    db
}

fn retention(db: TestDb, w: Work, hypertable: bool) {
    let (a, b, c) = (csv(A, 61), csv(B, 62), csv(C, 63));
    load_each(&w, &db, &[("a.csv", &a), ("b.csv", &b)]);
    // One file with rollup rows of its own.
    load_uncompacted(&w, &db, &[("c.csv", &c)]);
    let out = tripload(&w, &db, &["db", "retain", "--older-than", "2018-07-05"]);
    ok(&out);
    let text = stdout(&out);
    assert!(
        text.contains("from 2018-07-02") && text.contains("rounded down"),
        "{text}"
    );
    let chunks: i64 = db.query("SELECT chunks_dropped::bigint FROM retention_runs")[0].get(0);
    assert_eq!(chunks > 0, hypertable, "{text}");
    assert_eq!(
        db.count("SELECT count(*) FROM trips WHERE datetime < '2018-07-02 00:00:00+00'"),
        0
    );
    let kept: Vec<Vec<u8>> = [&a, &b, &c]
        .iter()
        .map(|f| rows_from(f, "2018-07-02"))
        .collect();
    let dropped = (A + B + C) as i64 - db.trips();
    assert!(dropped > 5_000, "{dropped}");
    assert_eq!(last_event(&db, "retained")["rows"], dropped);
    let (ref3, _rw3) = reference(&[&kept[0], &kept[1], &kept[2]]);
    same_as(&w, &db, &ref3);
    // Compaction and unloading still work on what remains, exactly.
    ok(&tripload(&w, &db, &["db", "compact"]));
    assert_eq!(rollup_state(&db), rollup_state(&ref3));
    ok(&tripload(&w, &db, &["unload", "a.csv"]));
    let (ref2, _rw2) = reference(&[&kept[1], &kept[2]]);
    same_as(&w, &db, &ref2);
    // Nothing older to drop: a second run drops nothing.
    let out = tripload(&w, &db, &["db", "retain", "--older-than", "2018-07-02"]);
    ok(&out);
    assert!(stdout(&out).contains("dropped 0 trips"), "{}", stdout(&out));
}

#[test]
fn retention_keeps_the_rollups_exact_on_the_default_layout() {
    let (db, w) = (fresh_db(), Work::new());
    ok(&tripload(&w, &db, &["db", "migrate"]));
    let hypertable = db.count(
        "SELECT count(*) FROM tripload_settings WHERE key = 'time_layout' AND value = 'timescaledb'",
    ) > 0;
    retention(db, w, hypertable);
}

#[test]
fn retention_keeps_the_rollups_exact_on_a_plain_table() {
    let w = Work::new();
    let db = plain_db(&w);
    retention(db, w, false);
}

#[test]
fn watch_retain_drops_the_old_weeks_of_files_as_they_land() {
    let (db, w) = (fresh_db(), Work::new());
    ok(&tripload(&w, &db, &["db", "migrate"]));
    let a = csv(A, 71);
    std::fs::create_dir_all(w.path("landing")).expect("landing");
    let mut watcher = tripload_cmd(
        &w,
        &db,
        &[
            "watch",
            "landing",
            "--quiet",
            "--quiet-period",
            "0.5",
            "--retain",
            "2018-07-05",
            "--retain-every",
            "1",
        ],
    )
    .spawn()
    .expect("start watcher");
    // Renamed into landing: taken at once.
    std::fs::write(w.path("a.csv.part"), &a).expect("write");
    std::fs::rename(w.path("a.csv.part"), w.path("landing/a.csv")).expect("rename");
    let deadline = Instant::now() + Duration::from_secs(120);
    while db.count("SELECT count(*) FROM retention_runs") == 0 {
        assert!(Instant::now() < deadline, "no retention ran after the load");
        if let Ok(Some(st)) = watcher.try_wait() {
            panic!("the watcher ended early: {st}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Later runs find nothing older and record nothing.
    std::thread::sleep(Duration::from_secs(3));
    stop_child(&mut watcher);
    assert_eq!(db.count("SELECT count(*) FROM load_files"), 1);
    assert_eq!(db.count("SELECT count(*) FROM retention_runs"), 1);
    assert_eq!(
        db.count("SELECT count(*) FROM trips WHERE datetime < '2018-07-02 00:00:00+00'"),
        0
    );
    let dropped = A as i64 - db.trips();
    assert!(dropped > 1_000, "{dropped}");
    assert_eq!(last_event(&db, "retained")["rows"], dropped);
    let kept = rows_from(&a, "2018-07-02");
    let (reference, _rw) = reference(&[&kept]);
    same_as(&w, &db, &reference);
}

/// SIGTERM, then waits for the process to end (it must exit 0).
fn stop_child(child: &mut Child) {
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            assert!(st.success(), "watcher exit: {st}");
            return;
        }
        assert!(Instant::now() < deadline, "the watcher did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}
