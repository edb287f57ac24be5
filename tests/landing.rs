//! Landing files with `tripload load`: only regular files are read (opened
//! once, links not followed), and the file moved after COMMIT is the file
//! that was read. The real binary, real files, a real database.

mod common;
use common::*;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// Waits for the child at most `secs`; kills it and fails if it hangs.
fn wait_or_kill(mut child: Child, secs: u64, what: &str) -> std::process::Output {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {secs} s (blocked?)");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn events(db: &TestDb, kind: &str, file: &str) -> i64 {
    db.count(&format!(
        "SELECT count(*) FROM ingestion_events WHERE kind = '{kind}' AND file_name = '{file}'"
    ))
}

#[test]
fn a_symlink_in_landing_is_refused_and_its_target_never_loaded() {
    let db = fresh_db();
    let w = Work::new();
    // A readable CSV outside landing, and a link to it inside.
    let outside = w.path("secret.csv");
    std::fs::write(&outside, sample()).unwrap();
    std::os::unix::fs::symlink(&outside, w.path("landing/link.csv")).unwrap();
    w.land("real.csv", &tripload::gen::trips_csv(50, 7));
    let out = tripload(&w, &db, &["load", "landing", "--quiet"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stdout(&out).contains("REFUSED"), "{}", stdout(&out));
    assert_eq!(db.trips(), 50, "only the regular file is loaded");
    assert_eq!(db.count("SELECT count(*) FROM load_files"), 1);
    assert_eq!(events(&db, "refused", "link.csv"), 1);
    assert_eq!(events(&db, "started", "link.csv"), 0, "never opened");
    // Left as it was: the link in landing, its target untouched.
    assert!(std::fs::symlink_metadata(w.path("landing/link.csv"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read(&outside).unwrap(), sample());
    assert!(!w.exists("processed/link.csv") && !w.exists("failed/link.csv"));

    // Named on the command line, a link is refused all the same.
    let out = tripload(&w, &db, &["load", "landing/link.csv", "--quiet"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(db.trips(), 50);
    assert_eq!(events(&db, "refused", "link.csv"), 2);
}

#[test]
fn a_fifo_in_landing_does_not_hang_load() {
    let db = fresh_db();
    let w = Work::new();
    mkfifo(&w.path("landing/pipe.csv"));
    w.land("real.csv", &tripload::gen::trips_csv(20, 8));
    // Scanning the directory, and naming the FIFO: opening it for reading
    // would wait for a writer for ever.
    for args in [
        &["load", "landing", "--quiet"][..],
        &["load", "landing/pipe.csv", "--quiet"][..],
    ] {
        let child = tripload_cmd(&w, &db, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = wait_or_kill(child, 60, &args.join(" "));
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    }
    assert_eq!(db.trips(), 20);
    assert_eq!(events(&db, "refused", "pipe.csv"), 2);
    use std::os::unix::fs::FileTypeExt;
    assert!(
        std::fs::symlink_metadata(w.path("landing/pipe.csv"))
            .unwrap()
            .file_type()
            .is_fifo(),
        "left in place"
    );
}

#[test]
fn a_file_replaced_at_its_path_during_the_load_is_not_moved_as_if_loaded() {
    let db = fresh_db();
    let w = Work::new();
    let hold = hold_trips_copy(&db, &w);
    let original = sample();
    w.land("trips.csv", &original);
    let child = tripload_cmd(&w, &db, &["load", "landing/trips.csv", "--quiet"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !hold.holding(&db) {
        assert!(Instant::now() < deadline, "the COPY never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Another file takes the name while the first one is being loaded.
    let replacement = tripload::gen::trips_csv(30, 9);
    std::fs::write(w.path("landing/.next.csv"), &replacement).unwrap();
    std::fs::rename(w.path("landing/.next.csv"), w.path("landing/trips.csv")).unwrap();
    hold.release(&db);
    let out = wait_or_kill(child, 60, "load");
    // The file read is committed; the one now at the path stays there.
    assert_eq!(db.trips(), 100, "{}", stderr(&out));
    assert_eq!(db.count("SELECT count(*) FROM load_files"), 1);
    assert!(
        !w.exists("processed/trips.csv"),
        "the replacement was moved"
    );
    assert_eq!(
        std::fs::read(w.path("landing/trips.csv")).unwrap(),
        replacement
    );
    let reason = db.query(
        "SELECT payload->>'reason' FROM ingestion_events WHERE kind = 'committed' AND file_name = 'trips.csv'",
    );
    let reason: Option<String> = reason[0].get(0);
    assert!(
        reason
            .as_deref()
            .unwrap_or("")
            .contains("no longer names the file that was read"),
        "{reason:?}"
    );
    assert!(stderr(&out).contains("no longer names the file that was read"));
    // The replacement loads on its own later.
    let out = tripload(&w, &db, &["load", "landing", "--quiet"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(db.trips(), 130);
    assert!(w.exists("processed/trips.csv"));
}
