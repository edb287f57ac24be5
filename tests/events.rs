//! `ingestion_events` over a long life: events past the retention period are
//! pruned by the loader, and `status` reads a bounded range of the table
//! whatever its size.

mod common;
use common::*;

/// `n` events of files `<prefix>-<i>.csv`, stamped `age` ago.
fn insert_events(db: &TestDb, prefix: &str, n: i64, age: &str) {
    db.query(&format!(
        "INSERT INTO ingestion_events (at, kind, file_name, payload)
         SELECT now() - interval '{age}', 'committed', '{prefix}-' || g || '.csv',
                jsonb_build_object('v', 1, 'event', 'committed', 'file', '{prefix}-' || g || '.csv',
                                   'at', to_char(now() - interval '{age}', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
                                   'host', 'h', 'pid', 1, 'rows', g)
         FROM generate_series(1, {n}) g"
    ));
}

#[test]
fn old_events_are_pruned_by_the_loader_and_recent_ones_kept() {
    let db = fresh_db();
    let w = Work::new();
    assert!(tripload(&w, &db, &["db", "migrate"]).status.success());
    insert_events(&db, "old", 12_000, "40 days");
    insert_events(&db, "month", 300, "20 days");
    insert_events(&db, "recent", 500, "1 hour");
    w.land("new.csv", &sample());
    let out = tripload(&w, &db, &["load", "landing", "--quiet"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let count = |prefix: &str| {
        db.count(&format!(
            "SELECT count(*) FROM ingestion_events WHERE file_name LIKE '{prefix}-%'"
        ))
    };
    assert_eq!(count("old"), 0, "older than the default 30 days");
    assert_eq!(count("month"), 300);
    assert_eq!(count("recent"), 500);
    assert_eq!(
        db.count("SELECT count(*) FROM ingestion_events WHERE file_name = 'new.csv' AND kind = 'committed'"),
        1
    );
    // status: the latest state of the most recently active files.
    let out = tripload(&w, &db, &["status", "--limit", "3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(".csv")).collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[2].contains("committed") && lines[2].contains("new.csv"),
        "{text}"
    );
    assert!(
        lines[0].contains("recent-499.csv") && lines[1].contains("recent-500.csv"),
        "{text}"
    );
    assert!(
        text.contains("ledger: 1 files committed, 100 rows loaded"),
        "{text}"
    );
    // A shorter retention prunes more; 0 keeps everything.
    w.land("second.csv", &tripload::gen::trips_csv(10, 1));
    let out = tripload(
        &w,
        &db,
        &["load", "landing", "--events-retention-days", "0"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(count("month"), 300);
    w.land("third.csv", &tripload::gen::trips_csv(10, 2));
    let out = tripload(
        &w,
        &db,
        &["load", "landing", "--events-retention-days", "10"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(count("month"), 0);
    assert_eq!(count("recent"), 500);
}

#[test]
fn status_reads_a_range_of_the_primary_key_not_the_whole_table() {
    let db = fresh_db();
    let w = Work::new();
    assert!(tripload(&w, &db, &["db", "migrate"]).status.success());
    insert_events(&db, "f", 300_000, "1 hour");
    db.query("ANALYZE ingestion_events");
    let newest = db.count("SELECT max(id) FROM ingestion_events");
    let limit = 20;
    let sql = tripload::notify::status::RECENT_SQL
        .replace("$1", &limit.to_string())
        .replace(
            "$2",
            &(newest - tripload::notify::status::window(limit)).to_string(),
        );
    let plan: Vec<String> = db
        .query(&format!("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {sql}"))
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    let plan = plan.join("\n");
    assert!(!plan.contains("Seq Scan"), "{plan}");
    assert!(plan.contains("ingestion_events_pkey"), "{plan}");
    // Rows read from the table: the window, not the table.
    let scanned: i64 = plan
        .lines()
        .find(|l| l.contains("ingestion_events_pkey"))
        .and_then(|l| l.split("rows=").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("{plan}"));
    assert!(scanned <= tripload::notify::status::window(limit), "{plan}");
    // And the command answers from that window.
    let out = tripload(&w, &db, &["status", "--limit", "2", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let files: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["file"].to_string())
        .collect();
    assert_eq!(files, ["\"f-299999.csv\"", "\"f-300000.csv\""], "{text}");
}
