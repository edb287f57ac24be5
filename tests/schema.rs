//! The schema seen from outside: read-only commands (`status`, `weekly`,
//! `groups`) never migrate and work for a role that may only read; a
//! database that is unmigrated, behind, newer or of a pre-release build gets
//! an error that says what to do; the time layout follows
//! `tripload.time_layout` when it is set.

mod common;
use common::*;

/// The read-only commands, each with the text its output must hold.
fn read_only_commands() -> Vec<(Vec<&'static str>, &'static str)> {
    vec![
        (vec!["status"], "sample.csv"),
        (vec!["weekly", "--region", "Prague"], "weekly average"),
        (
            vec!["weekly", "--bbox", "14.3,49.9,14.6,50.2"],
            "weekly average",
        ),
        (
            vec!["weekly", "--bbox", "14.3,49.9,14.6,50.2", "--by", "both"],
            "weekly average",
        ),
        (vec!["groups", "--region", "Prague"], "Prague"),
        (vec!["groups"], "trips"),
    ]
}

/// A login role of the test cluster, reachable over TCP with a password,
/// with USAGE on schema public, SELECT on its tables and EXECUTE on its
/// functions in `db`, and nothing else (PUBLIC's defaults revoked there).
/// Returns its connection string.
fn reader(db: &TestDb) -> String {
    let role = format!("reader_{}", db.name);
    let password = "read-only-secret";
    db.batch(&format!(
        "CREATE ROLE {role} LOGIN PASSWORD '{password}';
         REVOKE ALL ON SCHEMA public FROM PUBLIC;
         REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA public FROM PUBLIC;
         GRANT USAGE ON SCHEMA public TO {role};
         GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role};
         GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO {role};"
    ));
    let hba: String = db.query("SHOW hba_file")[0].get(0);
    let mut rules = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
    rules.push_str(&format!(
        "host    {}   {role}   127.0.0.1/32   scram-sha-256\n",
        db.name
    ));
    std::fs::write(&hba, rules).expect("write pg_hba.conf");
    db.query("SELECT pg_reload_conf()");
    let (_, port, _) = cluster_info();
    format!(
        "host=127.0.0.1 port={port} user={role} password={password} dbname={} sslmode=disable",
        db.name
    )
}

fn as_role(w: &Work, db: &TestDb, url: &str, args: &[&str]) -> std::process::Output {
    tripload_cmd(w, db, args)
        .env("DATABASE_URL", url)
        .output()
        .expect("run tripload")
}

/// Relations of the test database, to see that nothing was created.
fn relations(db: &TestDb) -> Vec<String> {
    db.query(
        "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') ORDER BY 1",
    )
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[test]
fn read_only_commands_work_for_a_role_that_may_only_select_and_execute() {
    let (db, w) = (fresh_db(), Work::new());
    w.land("sample.csv", &sample());
    let out = tripload(&w, &db, &["load", "landing"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let url = reader(&db);
    let role = format!("reader_{}", db.name);
    // The role really is read-only.
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v')
               AND (has_table_privilege('{role}'::name, c.oid, 'INSERT')
                 OR has_table_privilege('{role}'::name, c.oid, 'UPDATE')
                 OR has_table_privilege('{role}'::name, c.oid, 'DELETE'))"
        )),
        0
    );
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM (SELECT 1 WHERE has_schema_privilege('{role}'::name, 'public'::text, 'CREATE'::text)) c"
        )),
        0
    );
    let before = relations(&db);
    for (args, expected) in read_only_commands() {
        let out = as_role(&w, &db, &url, &args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert!(
            stdout(&out).contains(expected),
            "{args:?}: {}",
            stdout(&out)
        );
    }
    let out = as_role(&w, &db, &url, &["status", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("\"committed\""), "{}", stdout(&out));
    assert_eq!(relations(&db), before);
    // Migrating needs more than that role may do.
    let out = as_role(&w, &db, &url, &["db", "migrate"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("42501"), "{}", stderr(&out));
}

#[test]
fn read_only_commands_on_an_unmigrated_database_say_to_migrate_and_create_nothing() {
    let (db, w) = (fresh_db(), Work::new());
    let before = relations(&db);
    for (args, _) in read_only_commands() {
        let out = tripload(&w, &db, &args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("has no tripload schema") && err.contains("run `tripload db migrate`"),
            "{args:?}: {err}"
        );
        assert!(stdout(&out).is_empty(), "{args:?}: {}", stdout(&out));
    }
    assert_eq!(relations(&db), before);
    assert!(!before.iter().any(|r| r.contains("tripload")), "{before:?}");
}

#[test]
fn read_only_commands_on_a_schema_behind_say_to_migrate() {
    let (db, w) = (fresh_db(), Work::new());
    let out = tripload(&w, &db, &["db", "migrate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let latest = tripload::db::schema::latest();
    db.query(&format!(
        "DELETE FROM tripload_schema WHERE version = {latest}"
    ));
    for (args, _) in read_only_commands() {
        let out = tripload(&w, &db, &args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(&format!(
                "has schema version {}; this tripload needs version {latest}",
                latest - 1
            )) && err.contains("run `tripload db migrate`"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(
        db.count("SELECT count(*) FROM tripload_schema"),
        latest as i64 - 1
    );
    let out = tripload(&w, &db, &["db", "migrate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = tripload(&w, &db, &["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn a_database_of_a_pre_release_build_is_refused_with_what_to_do() {
    let (db, w) = (fresh_db(), Work::new());
    let out = tripload(&w, &db, &["db", "migrate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The record a pre-release build left: version 2 named by its layout,
    // versions this build does not have.
    db.batch(
        "UPDATE tripload_schema SET name = 'time layout: plain table + BRIN' WHERE version = 2;
         INSERT INTO tripload_schema (version, name) VALUES (12, 'cell points in one table')",
    );
    w.land("sample.csv", &sample());
    for args in [&["db", "migrate"][..], &["load", "landing"], &["status"]] {
        let out = tripload(&w, &db, args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("created by a pre-release build of tripload")
                && err.contains("recreate the database"),
            "{args:?}: {err}"
        );
    }
    assert!(w.exists("landing/sample.csv"));
    assert_eq!(db.trips(), 0);
}

#[test]
fn a_newer_schema_is_not_migrated_by_an_older_build_but_can_be_read() {
    let (db, w) = (fresh_db(), Work::new());
    w.land("sample.csv", &sample());
    let out = tripload(&w, &db, &["load", "landing"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let next = tripload::db::schema::latest() + 1;
    db.query(&format!(
        "INSERT INTO tripload_schema (version, name) VALUES ({next}, 'a later build')"
    ));
    let out = tripload(&w, &db, &["db", "migrate"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("schema version {next}, newer than this tripload")),
        "{}",
        stderr(&out)
    );
    let out = tripload(&w, &db, &["weekly", "--region", "Prague"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

fn recorded_layout(db: &TestDb) -> String {
    db.query("SELECT value FROM tripload_settings WHERE key = 'time_layout'")[0].get(0)
}

fn is_hypertable(db: &TestDb) -> bool {
    db.count("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'") > 0
        && db.count(
            "SELECT count(*) FROM timescaledb_information.hypertables WHERE hypertable_name = 'trips'",
        ) == 1
}

#[test]
fn the_time_layout_setting_chooses_the_layout() {
    let w = Work::new();
    let bindir = tripload::embedded::find_bindir().expect("PostgreSQL binaries");
    let timescaledb = tripload::embedded::timescale::installed_version(&bindir).is_some();

    let db = fresh_db();
    db.query(&format!(
        "ALTER DATABASE {} SET tripload.time_layout = 'plain'",
        db.name
    ));
    let out = tripload(&w, &db, &["db", "migrate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(recorded_layout(&db), "plain");
    assert!(!is_hypertable(&db));
    assert_eq!(
        db.count("SELECT count(*) FROM pg_indexes WHERE indexname = 'trips_datetime_brin'"),
        1
    );
    // The layout is fixed once chosen.
    db.query(&format!(
        "ALTER DATABASE {} SET tripload.time_layout = 'timescaledb'",
        db.name
    ));
    let out = tripload(&w, &db, &["db", "migrate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(recorded_layout(&db), "plain");

    let db = fresh_db();
    db.query(&format!(
        "ALTER DATABASE {} SET tripload.time_layout = 'timescaledb'",
        db.name
    ));
    let out = tripload(&w, &db, &["db", "migrate", "--chunk-interval", "1 day"]);
    if timescaledb {
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(recorded_layout(&db), "timescaledb");
        assert!(is_hypertable(&db));
        assert_eq!(
            db.count(
                "SELECT count(*) FROM timescaledb_information.dimensions
                 WHERE hypertable_name = 'trips' AND time_interval = interval '1 day'"
            ),
            1
        );
    } else {
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("TimescaleDB is not installed"),
            "{}",
            stderr(&out)
        );
    }

    let db = fresh_db();
    db.query(&format!(
        "ALTER DATABASE {} SET tripload.time_layout = 'distributed'",
        db.name
    ));
    let out = tripload(&w, &db, &["db", "migrate"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("\"distributed\", which is not a time layout")
            && err.contains("'citus', 'timescaledb', 'plain'"),
        "{err}"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM pg_class WHERE relname IN ('tripload_schema', 'trips')"),
        0
    );
    // Citus is a layout, usable only where the extension is created.
    db.query(&format!(
        "ALTER DATABASE {} SET tripload.time_layout = 'citus'",
        db.name
    ));
    let out = tripload(&w, &db, &["db", "migrate"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("asks for the citus layout") && err.contains("CREATE EXTENSION citus"),
        "{err}"
    );
    // A bad chunk interval is refused (whatever the layout) before anything
    // is created.
    let db = fresh_db();
    let out = tripload(&w, &db, &["db", "migrate", "--chunk-interval", "weekly"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--chunk-interval \"weekly\""),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        db.count("SELECT count(*) FROM pg_class WHERE relname = 'tripload_schema'"),
        0
    );
}
