//! Errors the data causes and errors the environment causes, told apart by
//! SQLSTATE; the dimension dictionaries a failed file cannot fill.

mod common;
use common::*;

/// A database in LATIN1: a region name outside it is a data fault the
/// server finds (22P05 untranslatable character), not the CSV parser.
fn latin1_db(db: &TestDb) -> TestDb {
    let name = format!("{}_latin1", db.name);
    db.query(&format!(
        "CREATE DATABASE {name} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
    ));
    TestDb {
        conninfo: db
            .conninfo
            .replace(&format!("dbname={}", db.name), &format!("dbname={name}")),
        name,
    }
}

fn rows(lines: &[String]) -> Vec<u8> {
    let mut out = format!("{HEADER}\n");
    for l in lines {
        out.push_str(l);
        out.push('\n');
    }
    out.into_bytes()
}

fn trip(region: &str, source: &str) -> String {
    format!("{region},POINT (7.6 45.0),POINT (7.7 45.1),2018-05-21 02:54:04,{source}")
}

fn names(db: &TestDb, table: &str) -> Vec<(i16, String)> {
    db.query(&format!("SELECT id, name FROM {table} ORDER BY id"))
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[test]
fn a_name_the_server_refuses_fails_the_file_with_its_sqlstate() {
    let base = fresh_db();
    let db = latin1_db(&base);
    let w = Work::new();
    w.land(
        "tokyo.csv",
        &rows(&[trip("Turin", "cheap_mobile"), trip("東京", "cheap_mobile")]),
    );
    let out = tripload(&w, &db, &["load", "landing", "--jobs", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // The file's fault: in failed/, not left in landing to be retried.
    assert!(w.exists("failed/tokyo.csv"), "{}", stdout(&out));
    assert!(!w.exists("landing/tokyo.csv"));
    let why = w.read("failed/tokyo.csv.error.txt");
    assert!(why.contains("SQLSTATE 22P05"), "{why}");
    // And as a field of its own.
    assert!(why.contains("\nsqlstate: 22P05\n"), "{why}");
    assert!(why.contains("LATIN1"), "the server's message: {why}");
    assert!(why.contains("region \"東京\""), "{why}");
    assert!(!why.contains("db error"), "{why}");
    assert_eq!(db.trips(), 0);
}

#[test]
fn connect_errors_carry_the_sqlstate_and_a_hint_chosen_by_it() {
    let db = fresh_db();
    let w = Work::new();
    w.land("trips.csv", &sample());
    let missing = TestDb {
        conninfo: db
            .conninfo
            .replace(&format!("dbname={}", db.name), "dbname=no_such_db"),
        name: "no_such_db".into(),
    };
    let out = tripload(&w, &missing, &["load", "landing"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("[SQLSTATE 3D000]"), "{err}");
    assert!(err.contains("createdb"), "{err}");
    assert!(w.exists("landing/trips.csv"));
}

#[test]
fn a_file_with_too_many_new_names_fails_and_leaves_the_dictionary_as_it_was() {
    let db = fresh_db();
    let w = Work::new();
    w.land("good.csv", &sample());
    let out = tripload(&w, &db, &["load", "landing"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (regions, sources) = (names(&db, "regions"), names(&db, "datasources"));

    let many: Vec<String> = (0..60)
        .map(|i| trip(&format!("Nowhere {i}"), "cheap_mobile"))
        .collect();
    w.land("many.csv", &rows(&many));
    let out = tripload(&w, &db, &["load", "landing", "--max-new-names", "50"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(w.exists("failed/many.csv"), "{}", stdout(&out));
    let why = w.read("failed/many.csv.error.txt");
    assert!(why.contains("--max-new-names 50"), "{why}");
    assert_eq!(names(&db, "regions"), regions);
    assert_eq!(names(&db, "datasources"), sources);

    // Within the limit the same names load.
    std::fs::rename(w.path("failed/many.csv"), w.path("landing/many.csv")).unwrap();
    let out = tripload(&w, &db, &["load", "landing", "--max-new-names", "60"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(names(&db, "regions").len(), regions.len() + 60);
}

#[test]
fn names_of_a_rolled_back_file_are_deleted_and_their_ids_reused() {
    let db = fresh_db();
    let w = Work::new();
    w.land("good.csv", &sample());
    let out = tripload(&w, &db, &["load", "landing"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let regions = names(&db, "regions");
    let next_id = regions.iter().map(|(id, _)| *id).max().unwrap() + 1;

    // New names, then a bad row: rolled back for --max-rejects 0.
    let mut bad: Vec<String> = (0..20)
        .map(|i| trip(&format!("Ghost {i}"), &format!("ghost_source_{i}")))
        .collect();
    bad.push("Turin,POINT (7.6 95.0),POINT (7.7 45.1),2018-05-21 02:54:04,baba_car".into());
    w.land("bad.csv", &rows(&bad));
    let out = tripload(&w, &db, &["load", "landing"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(w.exists("failed/bad.csv"));
    assert_eq!(names(&db, "regions"), regions);
    assert_eq!(
        db.count("SELECT count(*) FROM datasources WHERE name LIKE 'ghost%'"),
        0
    );

    // The next new name takes the smallest free id, not one past the ghosts.
    w.land("fresh.csv", &rows(&[trip("Brno", "cheap_mobile")]));
    let out = tripload(&w, &db, &["load", "landing"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let brno: i16 = db.query("SELECT id FROM regions WHERE name = 'Brno'")[0].get(0);
    assert_eq!(brno, next_id);
    assert_eq!(
        db.count("SELECT count(*) FROM regions WHERE registered_by IS NOT NULL"),
        0,
        "a committed file's names are permanent"
    );
}

#[test]
fn a_name_shared_with_a_committed_file_survives_the_failed_one() {
    let db = fresh_db();
    let w = Work::new();
    let mut good: Vec<String> = (0..50).map(|_| trip("Shared", "shared_src")).collect();
    good.push(trip("Turin", "cheap_mobile"));
    w.land("a-good.csv", &rows(&good));
    let mut bad: Vec<String> = (0..50).map(|_| trip("Shared", "shared_src")).collect();
    bad.push(trip("OnlyBad", "shared_src"));
    bad.push("Turin,POINT (7.6 95.0),POINT (7.7 45.1),2018-05-21 02:54:04,baba_car".into());
    w.land("b-bad.csv", &rows(&bad));
    let out = tripload(&w, &db, &["load", "landing", "--jobs", "2"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(w.exists("processed/a-good.csv") && w.exists("failed/b-bad.csv"));
    let regions: Vec<String> = names(&db, "regions").into_iter().map(|(_, n)| n).collect();
    assert!(regions.contains(&"Shared".to_string()), "{regions:?}");
    assert!(!regions.contains(&"OnlyBad".to_string()), "{regions:?}");
    // Every trip still has its names.
    assert_eq!(db.count("SELECT count(*) FROM trips_named"), db.trips());
    assert_eq!(db.trips(), 51);
}
