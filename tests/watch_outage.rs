//! The database going away under a watcher: in-flight files roll back and go
//! back to landing, the watcher backs off and resumes when the database
//! returns. Uses its own cluster (it is stopped mid-test), not the shared one.

mod common;
use common::*;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tripload::embedded::Embedded;

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn watcher_survives_a_database_outage_and_loads_everything_once() {
    let pgdir = tempfile::Builder::new()
        .prefix("tripload-outage")
        .tempdir()
        .unwrap();
    let emb = Embedded::ensure_running(pgdir.path()).expect("start cluster");
    block_on(async {
        let (c, conn) = tokio_postgres::connect(&emb.conninfo("postgres"), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        c.batch_execute("CREATE DATABASE outage").await.unwrap();
    });
    let db = TestDb {
        conninfo: emb.conninfo("outage"),
        name: "outage".into(),
    };
    let w = Work::new();
    let mut child = tripload_cmd(&w, &db, &["watch", "landing", "--quiet"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let landed = |name: &str, seed: u64| {
        let tmp = w.path(&format!("landing/.{name}"));
        std::fs::write(&tmp, tripload::gen::trips_csv(10_000, seed)).unwrap();
        std::fs::rename(&tmp, w.path(&format!("landing/{name}"))).unwrap();
    };
    let wait = |what: &str, cond: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(90);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    std::thread::sleep(Duration::from_millis(1500));
    landed("before.csv", 1);
    wait("before.csv", &|| w.exists("processed/before.csv"));

    assert!(Embedded::stop(pgdir.path()).unwrap());
    landed("during.csv", 2);
    // The load fails for want of a database and the file returns to landing.
    wait("during.csv back in landing", &|| {
        w.exists("landing/during.csv")
    });
    // Long enough for several attempts (backoff 1, 2, 4 s): failures while
    // the database is away do not count towards quarantine.
    std::thread::sleep(Duration::from_millis(8000));
    assert!(!w.exists("processed/during.csv"));
    assert!(
        !w.exists("failed/during.csv"),
        "quarantined during an outage"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "the watcher keeps running"
    );

    let again = Embedded::ensure_running(pgdir.path()).expect("restart cluster");
    assert_eq!(
        again.port, emb.port,
        "the embedded server keeps its port across restarts"
    );
    wait("during.csv after the outage", &|| {
        w.exists("processed/during.csv")
    });
    landed("after.csv", 3);
    wait("after.csv", &|| w.exists("processed/after.csv"));

    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success());
    assert_eq!(db.trips(), 30_000);
    assert_eq!(db.count("SELECT count(*) FROM load_files"), 3);
    assert!(db.count("SELECT count(*) FROM ingestion_events WHERE kind = 'released' AND file_name = 'during.csv'") >= 3);
    assert_eq!(
        db.count("SELECT count(*) FROM ingestion_events WHERE kind = 'quarantined'"),
        0
    );
    assert_eq!(db.count("SELECT count(*) FROM load_attempts"), 0);
    let _ = Embedded::stop(pgdir.path());
}
