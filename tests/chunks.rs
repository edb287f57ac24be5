//! The TimescaleDB chunks a file makes before its transaction (hypertable
//! layout; `sql/functions/chunks.sql`): the chunks are TimescaleDB's own
//! (the ranges a row would have made), a file that fails leaves its empty
//! chunks, and `db retain` drops them with the rest. On the plain layout
//! the same runs check that nothing is made and retention still works.
//! Loaders not waiting for each other's new chunks: tests/loaders.rs.

mod common;
use common::loaders::rollup_mismatch_queries;
use common::{fresh_db, hypertable, ok, stderr, stdout, tripload, TestDb, Work};

/// `csv` (as `tripload::gen` writes it, all in 2018) moved to `year`.
fn in_year(csv: &[u8], year: u32) -> Vec<u8> {
    let text = std::str::from_utf8(csv).expect("generated CSV is UTF-8");
    text.replace(",2018-", &format!(",{year}-")).into_bytes()
}

/// (start, end) of each chunk of `trips` within [from, to), as text.
fn chunks_between(db: &TestDb, from: &str, to: &str) -> Vec<(String, String)> {
    db.query(&format!(
        "SELECT (range_start AT TIME ZONE 'UTC')::text, (range_end AT TIME ZONE 'UTC')::text
         FROM timescaledb_information.chunks
         WHERE hypertable_name = 'trips' AND range_start >= '{from} 00:00:00+00' AND range_end <= '{to} 00:00:00+00'
         ORDER BY range_start"
    ))
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

#[test]
fn a_failed_file_leaves_empty_chunks_that_retention_drops() {
    let db = fresh_db();
    let w = Work::new();
    w.land("first.csv", &tripload::gen::trips_csv(2_000, 81));
    ok(&tripload(&w, &db, &["load", "landing"]));
    let hyper = hypertable(&db);

    // A file of 2019 whose last line is bad: with --max-rejects 0 it fails
    // after its chunks were made (before its transaction).
    let mut bad = in_year(&tripload::gen::trips_csv(3_000, 82), 2019);
    bad.extend_from_slice(
        b"Turin,POINT (x 45),POINT (7.6 45.1),2019-06-20 10:00:00,cheap_mobile\n",
    );
    w.land("bad.csv", &bad);
    let out = tripload(&w, &db, &["load", "--max-rejects", "0", "landing"]);
    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(w.exists("failed/bad.csv"), "{}", stderr(&out));
    assert_eq!(db.trips(), 2_000);
    if hyper {
        // The weekly chunks of 2019 as TimescaleDB makes them (from a
        // Thursday: 2018-12-27 holds 2019-01-01, and first.csv's last days),
        // empty but for first.csv's rows of 2018.
        let of_2019 = chunks_between(&db, "2018-12-27", "2020-01-02");
        assert_eq!(of_2019.len(), 53, "{of_2019:?}");
        assert_eq!(of_2019[0].0, "2018-12-27 00:00:00");
        assert_eq!(of_2019[52].1, "2020-01-02 00:00:00");
        assert_eq!(
            db.count("SELECT count(*) FROM trips WHERE datetime >= '2019-01-01 00:00:00+00'"),
            0
        );
    }

    // A row of 2019 inserted by hand goes into one of those chunks: they
    // are the ones TimescaleDB itself would have made.
    if hyper {
        let before = db.count("SELECT count(*) FROM timescaledb_information.chunks");
        db.batch(
            "INSERT INTO trips VALUES ('2019-06-20 10:00:00+00', 1, 1,
                'SRID=4326;POINT(7.6 45.1)', 'SRID=4326;POINT(7.6 45.1)', 0);
             DELETE FROM trips WHERE file_id = 0",
        );
        assert_eq!(
            db.count("SELECT count(*) FROM timescaledb_information.chunks"),
            before
        );
    }

    // Retention drops every chunk before its cut-off, the empty ones too,
    // and keeps the rollups the trips' (none left).
    let out = tripload(&w, &db, &["db", "retain", "--older-than", "2020-01-06"]);
    ok(&out);
    assert_eq!(db.trips(), 0);
    if hyper {
        let dropped: i64 = db.query("SELECT chunks_dropped::bigint FROM retention_runs")[0].get(0);
        // 2018's 53 weeks and 2019's 52 more.
        assert_eq!(dropped, 53 + 52, "{}", stdout(&out));
        assert_eq!(
            db.count(
                "SELECT count(*) FROM timescaledb_information.chunks
                 WHERE hypertable_name = 'trips' AND range_end <= '2020-01-06 00:00:00+00'"
            ),
            0
        );
    }
    for (what, sql) in rollup_mismatch_queries() {
        assert_eq!(db.count(&sql), 0, "{what}");
    }

    // The same days again: the chunks are made again, and a file loads.
    w.land(
        "again.csv",
        &in_year(&tripload::gen::trips_csv(3_000, 82), 2019),
    );
    ok(&tripload(&w, &db, &["load", "landing"]));
    assert_eq!(db.trips(), 3_000);
    if hyper {
        assert_eq!(chunks_between(&db, "2018-12-27", "2020-01-02").len(), 53);
    }
}
