//! Watch mode and push events end to end: the real binary watching a real
//! directory, a real database, `status --follow` as a real subscriber.

mod common;
use common::*;
use std::io::{BufRead, Write};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

fn watcher(w: &Work, db: &TestDb, extra: &[&str]) -> Child {
    let mut args = vec!["watch", "landing", "--quiet-period", "0.7", "--quiet"];
    args.extend_from_slice(extra);
    tripload_cmd(w, db, &args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start watcher")
}

fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop(mut child: Child) -> std::process::ExitStatus {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "watcher did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn processed(w: &Work) -> usize {
    std::fs::read_dir(w.path("processed"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn slow_writer_and_renamed_part_file_each_load_once_and_complete() {
    let db = fresh_db();
    let w = Work::new();
    let child = watcher(&w, &db, &[]);
    // Written in place, in pieces, with pauses shorter than the quiet period.
    let content = tripload::gen::trips_csv(20_000, 1);
    let mut f = std::fs::File::create(w.path("landing/slow.csv")).unwrap();
    for piece in content.chunks(content.len() / 5 + 1) {
        f.write_all(piece).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(f);
    // The atomic-rename convention: written as .part, renamed into place.
    std::fs::write(
        w.path("landing/fast.csv.part"),
        tripload::gen::trips_csv(10_000, 2),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        w.exists("landing/fast.csv.part"),
        "a .part file is never taken"
    );
    std::fs::rename(w.path("landing/fast.csv.part"), w.path("landing/fast.csv")).unwrap();
    wait_for("both files", 60, || processed(&w) == 2);
    assert!(stop(child).success());
    assert_eq!(db.trips(), 30_000);
    assert_eq!(db.count("SELECT count(*) FROM load_files"), 2);
    assert_eq!(
        db.count("SELECT rows_loaded FROM load_files WHERE file_name = 'slow.csv'"),
        20_000
    );
    assert!(!w.exists("failed"));
}

#[test]
fn two_watchers_on_one_directory_load_every_file_exactly_once() {
    let db = fresh_db();
    let w = Work::new();
    let a = watcher(&w, &db, &["--jobs", "2"]);
    let b = watcher(&w, &db, &["--jobs", "2"]);
    std::thread::sleep(Duration::from_millis(1500));
    for i in 0..8u64 {
        let tmp = w.path(&format!("landing/.f{i}.csv"));
        std::fs::write(&tmp, tripload::gen::trips_csv(5_000, 50 + i)).unwrap();
        std::fs::rename(&tmp, w.path(&format!("landing/f{i}.csv"))).unwrap();
    }
    wait_for("all files", 90, || processed(&w) == 8);
    assert!(stop(a).success());
    assert!(stop(b).success());
    assert_eq!(db.trips(), 40_000);
    assert_eq!(db.count("SELECT count(*) FROM load_files"), 8);
    assert!(!w.exists("failed"));
    assert_eq!(std::fs::read_dir(w.path("processing")).unwrap().count(), 0);
}

#[test]
fn sigterm_during_a_load_finishes_it_and_exits_0() {
    let db = fresh_db();
    let w = Work::new();
    let child = watcher(&w, &db, &[]);
    std::thread::sleep(Duration::from_millis(1000));
    std::fs::write(
        w.path("landing/.big.csv"),
        tripload::gen::trips_csv(1_500_000, 4),
    )
    .unwrap();
    std::fs::rename(w.path("landing/.big.csv"), w.path("landing/big.csv")).unwrap();
    let copying = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND query LIKE 'COPY trips%'",
        db.name
    );
    wait_for("COPY to start", 60, || db.count(&copying) > 0);
    let status = stop(child);
    assert!(status.success(), "{status:?}");
    // Whole file or nothing, and the file is where its state says.
    match db.trips() {
        1_500_000 => assert!(w.exists("processed/big.csv")),
        0 => assert!(w.exists("landing/big.csv")),
        n => panic!("partial file in the database: {n} rows"),
    }
    assert_eq!(std::fs::read_dir(w.path("processing")).unwrap().count(), 0);
}

#[test]
fn second_signal_aborts_returns_the_file_and_leaves_nothing() {
    let db = fresh_db();
    let w = Work::new();
    let child = watcher(&w, &db, &["--threads", "1"]);
    std::thread::sleep(Duration::from_millis(1000));
    std::fs::write(
        w.path("landing/.big.csv"),
        tripload::gen::trips_csv(3_000_000, 6),
    )
    .unwrap();
    std::fs::rename(w.path("landing/.big.csv"), w.path("landing/big.csv")).unwrap();
    let copying = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND query LIKE 'COPY trips%'",
        db.name
    );
    wait_for("COPY to start", 60, || db.count(&copying) > 0);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(100));
    let status = stop(child);
    assert_eq!(
        status.code(),
        Some(130),
        "a second signal exits 130: {status:?}"
    );
    wait_for("the server to roll back", 30, || db.count(&copying) == 0);
    match db.trips() {
        0 => assert!(
            w.exists("landing/big.csv"),
            "an aborted file goes back to landing"
        ),
        3_000_000 => {} // committed just before the abort: a rerun skips it as already loaded
        n => panic!("partial file in the database: {n} rows"),
    }
}

#[test]
fn status_follow_receives_claimed_progress_committed_in_order() {
    let db = fresh_db();
    let w = Work::new();
    // Migrate first so the follower has its table.
    assert!(tripload(&w, &db, &["db", "migrate"]).status.success());
    let mut follower = tripload_cmd(&w, &db, &["status", "--follow", "--json", "--limit", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let follow_out = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(follow_out)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    std::thread::sleep(Duration::from_millis(800));
    let child = tripload_cmd(
        &w,
        &db,
        &["watch", "landing", "--quiet", "--progress-every-ms", "50"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    std::fs::write(
        w.path("landing/.e.csv"),
        tripload::gen::trips_csv(400_000, 9),
    )
    .unwrap();
    std::fs::rename(w.path("landing/.e.csv"), w.path("landing/e.csv")).unwrap();
    let mut kinds = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !kinds.contains(&"committed".to_string()) {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("events before the deadline");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["v"], 1);
        assert_eq!(v["file"], "e.csv");
        if v["event"] == "committed" {
            assert_eq!(v["rows"], 400_000);
            assert_eq!(v["rows_rejected"], 0);
        }
        kinds.push(v["event"].as_str().unwrap().to_string());
    }
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(stop(child).success());
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("claimed"),
        "{kinds:?}"
    );
    assert_eq!(
        kinds.get(1).map(String::as_str),
        Some("started"),
        "{kinds:?}"
    );
    assert!(kinds.iter().any(|k| k == "progress"), "{kinds:?}");
    assert_eq!(kinds.last().map(String::as_str), Some("committed"));
    // A late subscriber catches up from the event table.
    let out = tripload(&w, &db, &["status", "--json"]);
    assert!(
        stdout(&out).contains("\"event\":\"committed\""),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_claim_left_by_a_dead_watcher_is_released_and_loaded() {
    let db = fresh_db();
    let w = Work::new();
    std::fs::create_dir(w.path("processing")).unwrap();
    // A pid that is not running on this host.
    let dead = {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    };
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into());
    std::fs::write(
        w.path(&format!("processing/{host}~{dead}~orphan.csv")),
        sample(),
    )
    .unwrap();
    let child = watcher(&w, &db, &[]);
    wait_for("the orphan to load", 60, || {
        w.exists("processed/orphan.csv")
    });
    assert!(stop(child).success());
    assert_eq!(db.trips(), 100);
    assert_eq!(
        db.count("SELECT count(*) FROM ingestion_events WHERE kind = 'released'"),
        1
    );
}

fn land_renamed(w: &Work, name: &str, content: &[u8]) {
    let tmp = w.path(&format!("landing/.{name}"));
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, w.path(&format!("landing/{name}"))).unwrap();
}

fn events(db: &TestDb, kind: &str, file: &str) -> i64 {
    db.count(&format!(
        "SELECT count(*) FROM ingestion_events WHERE kind = '{kind}' AND file_name = '{file}'"
    ))
}

#[test]
fn links_and_fifos_in_landing_are_refused_and_never_read() {
    let db = fresh_db();
    let w = Work::new();
    let outside = w.path("secret.csv");
    std::fs::write(&outside, sample()).unwrap();
    // One link already there at start-up.
    std::os::unix::fs::symlink(&outside, w.path("landing/early.csv")).unwrap();
    // And an event past the default retention, pruned by the watcher.
    assert!(tripload(&w, &db, &["db", "migrate"]).status.success());
    db.query(
        "INSERT INTO ingestion_events (at, kind, file_name, payload) \
         VALUES (now() - interval '31 days', 'committed', 'ancient.csv', '{}')",
    );
    let child = watcher(&w, &db, &[]);
    std::thread::sleep(Duration::from_millis(1000));
    // Created in place, renamed in, and a FIFO (reading it would block).
    std::os::unix::fs::symlink(&outside, w.path("landing/link.csv")).unwrap();
    std::os::unix::fs::symlink(&outside, w.path("landing/.l2.csv")).unwrap();
    std::fs::rename(w.path("landing/.l2.csv"), w.path("landing/link2.csv")).unwrap();
    mkfifo(&w.path("landing/pipe.csv"));
    land_renamed(&w, "good.csv", &tripload::gen::trips_csv(40, 11));
    wait_for("good.csv", 60, || w.exists("processed/good.csv"));
    for f in ["early.csv", "link.csv", "link2.csv", "pipe.csv"] {
        wait_for(f, 30, || events(&db, "refused", f) == 1);
    }
    wait_for("pruning", 30, || {
        events(&db, "committed", "ancient.csv") == 0
    });
    // Past the quiet period: still nothing taken from the links.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(stop(child).success());
    assert_eq!(db.trips(), 40, "the links' target was never loaded");
    assert_eq!(db.count("SELECT count(*) FROM load_files"), 1);
    assert_eq!(std::fs::read(&outside).unwrap(), sample());
    for f in ["early.csv", "link.csv", "link2.csv"] {
        assert!(std::fs::symlink_metadata(w.path(&format!("landing/{f}")))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(events(&db, "claimed", f), 0);
    }
}

/// Rows of datasource `poison` make the server fail the COPY with SQLSTATE
/// 53100 (disk full): an environment failure, while the database answers.
fn poison_the_trips(db: &TestDb, w: &Work) {
    let out = tripload(w, db, &["db", "migrate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    db.query(
        "CREATE FUNCTION test_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           IF NEW.datasource_id = (SELECT id FROM datasources WHERE name = 'poison') THEN \
             RAISE EXCEPTION 'could not extend file (test)' USING ERRCODE = '53100'; \
           END IF; RETURN NEW; END $$",
    );
    db.query(
        "CREATE TRIGGER test_poison BEFORE INSERT ON trips \
         FOR EACH ROW EXECUTE FUNCTION test_poison()",
    );
}

fn poison_csv() -> Vec<u8> {
    let mut s = String::from("region,origin_coord,destination_coord,datetime,datasource\n");
    for i in 0..5 {
        s.push_str(&format!(
            "Prague,POINT (14.49 50.00),POINT (14.43 50.04),2018-05-28 09:0{i}:40,poison\n"
        ));
    }
    s.into_bytes()
}

#[test]
fn a_file_failing_for_environment_reasons_is_quarantined_with_its_history_across_restarts() {
    let db = fresh_db();
    let w = Work::new();
    poison_the_trips(&db, &w);
    let attempts =
        "SELECT coalesce(max(jsonb_array_length(attempts)), 0)::bigint FROM load_attempts";
    // A first watcher sees it fail twice, then stops.
    let a = watcher(&w, &db, &["--max-attempts", "10"]);
    land_renamed(&w, "poison.csv", &poison_csv());
    wait_for("two failed attempts", 60, || db.count(attempts) >= 2);
    assert!(stop(a).success());
    assert!(
        w.exists("landing/poison.csv"),
        "released, not quarantined yet"
    );
    assert!(!w.exists("failed/poison.csv"));
    let before = db.count(attempts);
    assert!(events(&db, "released", "poison.csv") >= 2);

    // The next watcher (default --max-attempts 3) remembers them: the next
    // failure quarantines the file, and the queue goes on.
    let b = watcher(&w, &db, &[]);
    land_renamed(&w, "good.csv", &tripload::gen::trips_csv(40, 12));
    wait_for("quarantine", 60, || w.exists("failed/poison.csv.error.txt"));
    wait_for("good.csv", 60, || w.exists("processed/good.csv"));
    assert!(stop(b).success());
    assert!(w.exists("failed/poison.csv"));
    assert!(!w.exists("landing/poison.csv"));
    let text = w.read("failed/poison.csv.error.txt");
    let tries = text
        .lines()
        .filter(|l| l.contains("could not extend file (test)"))
        .count() as i64;
    assert!(
        tries >= 3 && tries == before + 1,
        "{before} before restart:\n{text}"
    );
    assert!(
        text.contains(&format!("failed {tries} times in a row")),
        "{text}"
    );
    assert_eq!(events(&db, "quarantined", "poison.csv"), 1);
    assert_eq!(
        db.count("SELECT count(*) FROM load_attempts"),
        0,
        "history cleared"
    );
    assert_eq!(db.trips(), 40);
    assert_eq!(db.count("SELECT count(*) FROM load_files"), 1);
}

#[test]
fn max_attempts_1_quarantines_at_the_first_failure() {
    // A failure while the database answers counts (one during an outage does
    // not: tests/watch_outage.rs).
    let db = fresh_db();
    let w = Work::new();
    poison_the_trips(&db, &w);
    let child = watcher(&w, &db, &["--max-attempts", "1"]);
    land_renamed(&w, "poison.csv", &poison_csv());
    wait_for("quarantine", 60, || w.exists("failed/poison.csv.error.txt"));
    assert!(stop(child).success());
    assert_eq!(events(&db, "released", "poison.csv"), 0);
    assert_eq!(events(&db, "quarantined", "poison.csv"), 1);
}

#[test]
fn the_final_event_of_a_file_finished_just_before_sigterm_is_stored() {
    let db = fresh_db();
    let w = Work::new();
    assert!(tripload(&w, &db, &["db", "migrate"]).status.success());
    let child = watcher(&w, &db, &[]);
    std::thread::sleep(Duration::from_millis(1500));
    // The event store is slow: inserts wait behind this lock.
    let s = db.session();
    s.query("BEGIN");
    s.query("LOCK TABLE ingestion_events IN EXCLUSIVE MODE");
    land_renamed(&w, "last.csv", &tripload::gen::trips_csv(50, 13));
    wait_for("last.csv", 60, || w.exists("processed/last.csv"));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(1500));
    let mut child = child;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the watcher waits for its last events"
    );
    s.query("COMMIT");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "watcher did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    assert_eq!(events(&db, "committed", "last.csv"), 1);
    assert_eq!(events(&db, "claimed", "last.csv"), 1);
}
