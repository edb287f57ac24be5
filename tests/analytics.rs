//! Rollups and the weekly-average queries against brute-force SQL over the raw
//! `trips` table, on the real sample and on generated data; the two questions
//! on the sample; rollups independent of load order and of failed files.

mod common;
use common::*;
use rand::{Rng, SeedableRng};

fn load(w: &Work, db: &TestDb, files: &[(&str, Vec<u8>)]) {
    for (name, content) in files {
        w.land(name, content);
        let out = tripload(w, db, &["load", "landing"]);
        assert!(
            out.status.code() == Some(0) || out.status.code() == Some(1),
            "{}",
            stderr(&out)
        );
    }
}

type Weeks = Vec<(chrono::NaiveDate, i64)>;

fn rows(db: &TestDb, sql: &str) -> Weeks {
    db.query(sql).iter().map(|r| (r.get(0), r.get(1))).collect()
}

/// The brute-force answer, computed from `trips` alone (window included).
fn brute(db: &TestDb, cond: &str, from: Option<&str>, to: Option<&str>) -> Weeks {
    let w0 = from
        .map(|d| format!("date_trunc('week', date '{d}')::date"))
        .unwrap_or_else(|| {
            "(SELECT min(date_trunc('week', datetime AT TIME ZONE 'UTC'))::date FROM trips)".into()
        });
    let w1 = to
        .map(|d| format!("date_trunc('week', date '{d}')::date"))
        .unwrap_or_else(|| {
            "(SELECT max(date_trunc('week', datetime AT TIME ZONE 'UTC'))::date FROM trips)".into()
        });
    rows(
        db,
        &format!(
            "WITH weeks AS (SELECT generate_series({w0}, {w1}, interval '1 week')::date AS week),
                  c AS (SELECT date_trunc('week', datetime AT TIME ZONE 'UTC')::date AS week, count(*) AS n
                        FROM trips WHERE {cond} GROUP BY 1)
             SELECT weeks.week, coalesce(c.n, 0)::bigint FROM weeks LEFT JOIN c USING (week) ORDER BY 1"
        ),
    )
}

fn in_box(col: &str, b: [f64; 4]) -> String {
    format!(
        "ST_X({col}) BETWEEN {:?} AND {:?} AND ST_Y({col}) BETWEEN {:?} AND {:?}",
        b[0], b[2], b[1], b[3]
    )
}

fn check_bbox(db: &TestDb, b: [f64; 4], from: Option<&str>, to: Option<&str>) {
    let lit = |d: Option<&str>| d.map(|d| format!("date '{d}'")).unwrap_or("NULL".into());
    for by in ["origin", "destination", "both"] {
        let cond = match by {
            "origin" => in_box("origin", b),
            "destination" => in_box("destination", b),
            _ => format!("{} AND {}", in_box("origin", b), in_box("destination", b)),
        };
        let got =
            rows(
                db,
                &format!(
                "SELECT week, trips FROM weekly_trips_bbox({:?}, {:?}, {:?}, {:?}, '{by}', {}, {})",
                b[0], b[1], b[2], b[3], lit(from), lit(to)
            ),
            );
        assert_eq!(
            got,
            brute(db, &cond, from, to),
            "bbox {b:?} by {by} window {from:?}..{to:?}"
        );
    }
}

fn generated_db() -> (TestDb, Work) {
    let db = fresh_db();
    let w = Work::new();
    let mut files: Vec<(&str, Vec<u8>)> = vec![("sample.csv", sample())];
    files.push(("g1.csv", tripload::gen::trips_csv(20_000, 21)));
    files.push(("g2.csv", tripload::gen::trips_csv(20_000, 22)));
    load(&w, &db, &files);
    assert_eq!(db.trips(), 40_100);
    (db, w)
}

#[test]
fn weekly_results_equal_brute_force_sql() {
    let (db, _w) = generated_db();
    // Regions, default window and explicit windows (one with weeks before the data).
    for region in ["Prague", "Turin", "Hamburg", "Berlin", "Nowhere"] {
        for (from, to) in [
            (None, None),
            (Some("2018-03-07"), Some("2018-04-30")),
            (Some("2017-12-01"), Some("2018-01-20")),
        ] {
            let lit = |d: Option<&str>| d.map(|d| format!("date '{d}'")).unwrap_or("NULL".into());
            let got = rows(
                &db,
                &format!(
                    "SELECT week, trips FROM weekly_trips_region('{region}', {}, {})",
                    lit(from),
                    lit(to)
                ),
            );
            let cond = format!("region_id = (SELECT id FROM regions WHERE name = '{region}')");
            assert_eq!(
                got,
                brute(&db, &cond, from, to),
                "region {region} {from:?}..{to:?}"
            );
        }
    }
    // Boxes: everything, nothing, on cell boundaries, a point-sized box, and random ones cutting cells.
    let mut boxes = vec![
        [-180.0, -90.0, 180.0, 90.0],
        [0.0, 0.0, 1.0, 1.0],
        [14.3, 49.98, 14.5, 50.1],
        [14.37, 50.0, 14.52, 50.13],
    ];
    let mut rng = rand::rngs::SmallRng::seed_from_u64(99);
    for _ in 0..25 {
        let (_, lon, lat) = tripload::gen::REGIONS[rng.gen_range(0..tripload::gen::REGIONS.len())];
        let x0 = lon + rng.gen_range(-0.2..0.1);
        let y0 = lat + rng.gen_range(-0.15..0.05);
        boxes.push([
            x0,
            y0,
            x0 + rng.gen_range(0.0..0.25),
            y0 + rng.gen_range(0.0..0.2),
        ]);
    }
    // A box whose edges pass exactly through real points of the sample.
    let p = db.query("SELECT ST_X(origin), ST_Y(origin), ST_X(destination), ST_Y(destination) FROM trips_named WHERE region = 'Prague' LIMIT 1");
    let (ox, oy, dx, dy): (f64, f64, f64, f64) =
        (p[0].get(0), p[0].get(1), p[0].get(2), p[0].get(3));
    boxes.push([ox.min(dx), oy.min(dy), ox.max(dx), oy.max(dy)]);
    boxes.push([ox, oy, ox, oy]);
    for b in boxes {
        check_bbox(&db, b, None, None);
    }
    check_bbox(
        &db,
        [14.3, 49.9, 14.6, 50.2],
        Some("2018-06-01"),
        Some("2018-08-31"),
    );
    // And with a spatial index, the same answers.
    let out = tripload(&_w, &db, &["db", "index", "--spatial"]);
    assert!(out.status.success(), "{}", stderr(&out));
    check_bbox(&db, [14.37, 50.0, 14.52, 50.13], None, None);
}

#[test]
fn the_two_questions_on_the_sample() {
    let db = fresh_db();
    let w = Work::new();
    load(&w, &db, &[("sample.csv", sample())]);
    let sql =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/sql/questions.sql")).unwrap();
    let statements: Vec<&str> = sql
        .split(';')
        .filter(|s| {
            s.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with("--"))
        })
        .collect();
    assert_eq!(statements.len(), 2);
    let q1 = db.query(statements[0]);
    assert_eq!(q1.len(), 1);
    assert_eq!(q1[0].get::<_, String>(0), "pt_search_app");
    assert_eq!(q1[0].get::<_, String>(1), "Turin");
    let at: chrono::DateTime<chrono::Utc> = q1[0].get(2);
    assert_eq!(at.to_string(), "2018-05-31 06:20:59 UTC");
    let q2: Vec<String> = db.query(statements[1]).iter().map(|r| r.get(0)).collect();
    assert_eq!(q2, ["Hamburg", "Prague", "Turin"]);
    // The top two regions, from the rollups.
    let top: Vec<(String, i64)> = db
        .query("SELECT r.name, sum(trips)::bigint FROM rollup_region_source s JOIN regions r ON r.id = s.region_id GROUP BY 1 ORDER BY 2 DESC LIMIT 2")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(top, [("Turin".to_string(), 38), ("Prague".to_string(), 34)]);
}

/// Rollups summed over files, in a canonical order.
fn rollup_state(db: &TestDb) -> Vec<String> {
    db.query(
        "SELECT 'rw ' || g.name || ' ' || week || ' ' || sum(trips) FROM rollup_region_week r JOIN regions g ON g.id = r.region_id GROUP BY g.name, week
         UNION ALL
         SELECT 'rs ' || g.name || ' ' || d.name || ' ' || sum(trips) || ' ' || max(last_at) FROM rollup_region_source r
           JOIN regions g ON g.id = r.region_id JOIN datasources d ON d.id = r.datasource_id GROUP BY g.name, d.name
         UNION ALL
         SELECT 'cw ' || side::text || ' ' || ix || ' ' || iy || ' ' || w || ' ' || sum(n) FROM rollup_cell_week, unnest(weeks, trips) AS u(w, n) GROUP BY side, ix, iy, w
         ORDER BY 1",
    )
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[test]
fn rollups_do_not_depend_on_load_order_or_failed_files() {
    let a = tripload::gen::trips_csv(5_000, 31);
    let b = tripload::gen::trips_csv(5_000, 32);
    let mut bad = tripload::gen::trips_csv(3_000, 33);
    bad.extend_from_slice(b"Prague,POINT (1 2),POINT (3 4),2018-02-30 00:00:00,x\n");

    let db1 = fresh_db();
    let w1 = Work::new();
    load(
        &w1,
        &db1,
        &[
            ("a.csv", a.clone()),
            ("b.csv", b.clone()),
            ("s.csv", sample()),
        ],
    );
    let db2 = fresh_db();
    let w2 = Work::new();
    load(
        &w2,
        &db2,
        &[
            ("s.csv", sample()),
            ("bad.csv", bad),
            ("b.csv", b),
            ("a.csv", a),
        ],
    );
    assert!(
        w2.exists("failed/bad.csv"),
        "the bad file failed (strict mode)"
    );
    assert_eq!(db1.trips(), db2.trips());
    let (s1, s2) = (rollup_state(&db1), rollup_state(&db2));
    assert!(s1.len() > 100);
    assert_eq!(s1, s2);
    // Rollups are exactly the committed trips, and carry only committed files.
    assert_eq!(
        db2.count("SELECT sum(trips)::bigint FROM rollup_region_week"),
        db2.trips()
    );
    assert_eq!(
        db2.count("SELECT count(*) FROM rollup_region_week WHERE file_id NOT IN (SELECT file_id FROM load_files)"),
        0
    );
}

#[test]
fn weekly_command_prints_counts_and_average() {
    let db = fresh_db();
    let w = Work::new();
    load(&w, &db, &[("sample.csv", sample())]);
    let out = tripload(
        &w,
        &db,
        &["weekly", "--region", "Turin", "--format", "json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["total_trips"], 38);
    let weeks = v["week_count"].as_f64().unwrap();
    assert!((v["weekly_average"].as_f64().unwrap() - 38.0 / weeks).abs() < 1e-9);
    let out = tripload(
        &w,
        &db,
        &[
            "weekly",
            "--bbox",
            "7.5,44.9,7.8,45.2",
            "--by",
            "both",
            "--format",
            "csv",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("week,trips\n"));
    let bad = tripload(&w, &db, &["weekly", "--bbox", "7.8,44.9,7.5,45.2"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("MINLON <= MAXLON"),
        "{}",
        stderr(&bad)
    );
}
