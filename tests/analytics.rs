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

/// A fresh database with `files` loaded, and its working directory.
fn loaded(files: &[(&str, Vec<u8>)]) -> (TestDb, Work) {
    let (db, w) = (fresh_db(), Work::new());
    load(&w, &db, files);
    (db, w)
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

/// The next float up / down (positive coordinates only: the tests' points).
fn next_up(v: f64) -> f64 {
    f64::from_bits(v.to_bits() + 1)
}

fn next_down(v: f64) -> f64 {
    f64::from_bits(v.to_bits() - 1)
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
    // The bounding-box function turns JIT off for its own query only: the
    // caller's setting, on or off, is the same afterwards in its transaction.
    db.query(
        "DO $$
         DECLARE s text;
         BEGIN
             FOREACH s IN ARRAY ARRAY['on', 'off'] LOOP
                 PERFORM set_config('jit', s, true);
                 PERFORM count(*) FROM weekly_trips_bbox(14.37, 50.0, 14.52, 50.13, 'origin');
                 IF current_setting('jit') <> s THEN
                     RAISE EXCEPTION 'jit was %, is % after weekly_trips_bbox', s, current_setting('jit');
                 END IF;
             END LOOP;
         END $$",
    );
    // And with a spatial index, the same answers.
    let out = tripload(&_w, &db, &["db", "index", "--spatial"]);
    assert!(out.status.success(), "{}", stderr(&out));
    check_bbox(&db, [14.37, 50.0, 14.52, 50.13], None, None);
}

#[test]
fn the_two_questions_on_the_sample() {
    let (db, _w) = loaded(&[("sample.csv", sample())]);
    let statements = questions();
    assert_eq!(statements.len(), 2);
    let q1 = db.query(&statements[0]);
    assert_eq!(q1.len(), 1);
    assert_eq!(q1[0].get::<_, String>(0), "pt_search_app");
    assert_eq!(q1[0].get::<_, String>(1), "Turin");
    let at: chrono::DateTime<chrono::Utc> = q1[0].get(2);
    assert_eq!(at.to_string(), "2018-05-31 06:20:59 UTC");
    let q2: Vec<String> = db.query(&statements[1]).iter().map(|r| r.get(0)).collect();
    assert_eq!(q2, ["Hamburg", "Prague", "Turin"]);
    // The top two regions, from the rollups.
    let top: Vec<(String, i64)> = db
        .query("SELECT r.name, sum(trips)::bigint FROM rollup_region_source s JOIN regions r ON r.id = s.region_id GROUP BY 1 ORDER BY 2 DESC LIMIT 2")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(top, [("Turin".to_string(), 38), ("Prague".to_string(), 34)]);
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
        db2.count("SELECT count(*) FROM rollup_region_week WHERE file_id <> 0 AND file_id NOT IN (SELECT file_id FROM load_files)"),
        0
    );
    assert_eq!(
        db2.count("SELECT count(*) FROM rollup_cell_points WHERE file_id <> 0 AND file_id NOT IN (SELECT file_id FROM load_files)"),
        0
    );
    // The small files were compacted at the end of each load: their rows are
    // file 0's, and no file is left listed.
    assert!(db2.count("SELECT count(*) FROM rollup_cell_points WHERE file_id = 0") > 0);
    assert_eq!(
        db2.count("SELECT count(*) FROM rollup_cell_points WHERE file_id <> 0"),
        0
    );
    assert_eq!(db2.count("SELECT count(*) FROM rollup_uncompacted"), 0);
    check_cell_points(&db2);
}

/// rollup_cell_week holds, per file (or compaction, file 0), one row per
/// (side, cell), and its counts per week summed over files are exactly the
/// trips' (counted from trips alone).
fn check_cell_weeks(db: &TestDb) {
    let from_trips = "SELECT s.side, floor(ST_X(s.p) / 0.01)::int, floor(ST_Y(s.p) / 0.01)::int,
                             date_trunc('week', t.datetime AT TIME ZONE 'UTC')::date - date '1970-01-01', count(*)
                      FROM trips t, LATERAL (VALUES ('o'::\"char\", t.origin), ('d'::\"char\", t.destination)) AS s(side, p)
                      GROUP BY 1, 2, 3, 4";
    let from_rollup = "SELECT side, ix, iy, w, sum(n)::bigint
                       FROM rollup_cell_week, unnest(weeks, trips) AS u(w, n) GROUP BY 1, 2, 3, 4";
    for (a, b) in [(from_trips, from_rollup), (from_rollup, from_trips)] {
        assert_eq!(
            db.count(&format!("SELECT count(*) FROM (({a}) EXCEPT ALL ({b})) d")),
            0
        );
    }
    assert_eq!(
        db.count("SELECT count(*) FROM (SELECT 1 FROM rollup_cell_week GROUP BY file_id, side, ix, iy HAVING count(*) > 1) d"),
        0
    );
}

/// The cell points read back from PostgreSQL are exactly the trips'
/// coordinates, each once, in the right cell and week, sorted as the query
/// functions need.
fn check_cell_points(db: &TestDb) {
    let from_trips = "SELECT s.side, floor(ST_X(s.p) / 0.01)::int AS ix, floor(ST_Y(s.p) / 0.01)::int AS iy,
                             date_trunc('week', t.datetime AT TIME ZONE 'UTC')::date - date '1970-01-01' AS week,
                             ST_X(s.p) AS x, ST_Y(s.p) AS y
                      FROM trips t, LATERAL (VALUES ('o'::\"char\", t.origin), ('d'::\"char\", t.destination)) AS s(side, p)";
    let from_points = POINTS;
    assert_eq!(
        db.count("SELECT sum(length(lons) / 8)::bigint FROM rollup_cell_points"),
        2 * db.trips()
    );
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM (({from_trips}) EXCEPT ALL ({from_points})) d"
        )),
        0
    );
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM (({from_points}) EXCEPT ALL ({from_trips})) d"
        )),
        0
    );
    // Rows as the query functions need them: at most points::MAX_PER_ROW points, weeks and
    // segment ends ascending, each segment's keys of lons and lats_sorted
    // ascending, lat_pos a permutation of the segment's positions (so the
    // pairs above use every latitude of the segment once).
    assert_eq!(
        db.count(
            &"SELECT count(*) FROM rollup_cell_points p
             WHERE length(lons) NOT BETWEEN 8 AND 8 * {max} OR length(lons) % 8 <> 0
                OR 8 * length(lat_pos) <> length(lons) OR length(lats_sorted) <> length(lons)
                OR cardinality(weeks) <> cardinality(ends) OR 8 * ends[cardinality(ends)] <> length(lons)
                OR weeks <> ARRAY(SELECT DISTINCT v FROM unnest(weeks) v ORDER BY v)
                OR ends <> ARRAY(SELECT DISTINCT v FROM unnest(ends) v ORDER BY v)
                OR EXISTS (SELECT 1 FROM unnest(p.ends) WITH ORDINALITY AS u(e, k),
                           LATERAL (SELECT coalesce(p.ends[u.k - 1], 0) + 1 AS a) s,
                           generate_series(s.a, u.e - 1) i
                           WHERE substring(p.lons FROM (i - 1) * 8 + 1 FOR 8) > substring(p.lons FROM i * 8 + 1 FOR 8)
                              OR substring(p.lats_sorted FROM (i - 1) * 8 + 1 FOR 8) > substring(p.lats_sorted FROM i * 8 + 1 FOR 8))
                OR EXISTS (SELECT 1 FROM unnest(p.ends) WITH ORDINALITY AS u(e, k),
                           LATERAL (SELECT coalesce(p.ends[u.k - 1], 0) + 1 AS a) s
                           WHERE ARRAY(SELECT get_byte(p.lat_pos, i - 1) + 1 FROM generate_series(s.a, u.e) i ORDER BY 1)
                                 <> ARRAY(SELECT generate_series(s.a, u.e)))"
                .replace("{max}", &tripload::analytics::points::MAX_PER_ROW.to_string())
        ),
        0
    );
}

/// Trips sharing exact coordinates, and neighbours one float step away, with
/// box edges through them on every side: the binary searches count ties once.
#[test]
fn box_edges_through_repeated_points_count_each_trip_once() {
    let (x, y) = (14.437_812_345_678_9_f64, 50.075_512_345_678_9_f64);
    let mut csv = String::from("region,origin_coord,destination_coord,datetime,datasource\n");
    let pts = [
        (x, y),
        (x, y),
        (x, y),
        (next_down(x), y),
        (next_up(x), y),
        (x, next_down(y)),
        (x, next_up(y)),
        (next_down(x), next_down(y)),
        (next_up(x), next_up(y)),
        (x + 0.003, y + 0.004),
        (x - 0.02, y + 0.001),
    ];
    for (i, (px, py)) in pts.iter().enumerate() {
        for week in 0..3 {
            csv.push_str(&format!(
                "Prague,POINT ({px:?} {py:?}),POINT ({py:?} {px:?}),2018-05-{:02} 0{}:00:00,funny_car\n",
                7 + week * 7,
                i % 10
            ));
        }
    }
    let (db, _w) = loaded(&[
        ("ties.csv", csv.into_bytes()),
        ("g.csv", tripload::gen::trips_csv(3_000, 5)),
    ]);
    check_cell_weeks(&db);
    check_cell_points(&db);
    let mut boxes = Vec::new();
    for (ex, ey) in [
        (x, y),
        (next_down(x), next_down(y)),
        (next_up(x), next_up(y)),
    ] {
        for d in [0.0, 1e-9, 0.004, 0.05] {
            boxes.push([ex, ey - d, ex + d, ey + d]); // left edge through the points
            boxes.push([ex - d, ey - d, ex, ey + d]); // right edge
            boxes.push([ex - d, ey, ex + d, ey + d]); // bottom edge
            boxes.push([ex - d, ey - d, ex + d, ey]); // top edge
            boxes.push([ex, ey, ex + d, ey + d]); // corner
            boxes.push([ex - d, ey - d, ex, ey]); // the other corner
        }
    }
    for b in boxes {
        check_bbox(&db, b, None, None);
    }
}

/// The edge band is one cell wide on each side (cells from floor(x0 / g) + 1
/// to floor(x1 / g) - 1 count as wholly inside), argued from the rounding
/// being monotonic rather than kept safe by a margin. Points on grid lines and
/// one ulp either side, in boxes whose edges are those grid lines (and one ulp
/// either side), where x / g rounds both below and above the integer.
#[test]
fn box_edges_on_grid_lines_count_exactly() {
    let g = 0.01_f64;
    // Grid lines near Prague written as decimals, as a user would type them;
    // keep some whose quotient by g rounds below the integer and some above.
    let line = |k: i64| {
        format!("{}.{:02}", k / 100, k % 100)
            .parse::<f64>()
            .unwrap()
    };
    let mut below = (1430..1460).map(line).filter(|&v| v / g < (v / g).round());
    let mut above = (1430..1460).map(line).filter(|&v| v / g > (v / g).round());
    let mut exact = (1430..1460).map(line).filter(|&v| v / g == (v / g).round());
    let mut xs: Vec<f64> = Vec::new();
    xs.extend(below.next());
    xs.extend(above.next());
    xs.extend(exact.next());
    assert!(
        xs.len() >= 2,
        "no grid lines on both sides of rounding: {xs:?}"
    );
    let ys: Vec<f64> = (5000..5030)
        .map(line)
        .filter(|&v| v / g != (v / g).round())
        .take(2)
        .chain([50.05])
        .collect();
    let mut csv = String::from("region,origin_coord,destination_coord,datetime,datasource\n");
    let mut n = 0;
    for &x in &xs {
        for &y in &ys {
            for (px, py) in [
                (x, y),
                (next_down(x), y),
                (next_up(x), y),
                (x, next_down(y)),
                (x, next_up(y)),
                (x + 0.004, y - 0.003),
                (x - 0.006, y + 0.002),
            ] {
                n += 1;
                csv.push_str(&format!(
                    "Prague,POINT ({px:?} {py:?}),POINT ({px:?} {py:?}),2018-05-{:02} 10:00:00,funny_car\n",
                    7 + (n % 3) * 7
                ));
            }
        }
    }
    let (db, _w) = loaded(&[
        ("grid.csv", csv.into_bytes()),
        ("g.csv", tripload::gen::trips_csv(3_000, 6)),
    ]);
    check_cell_weeks(&db);
    let mut boxes = Vec::new();
    for &x in &xs {
        for &y in &ys {
            for ex in [x, next_down(x), next_up(x)] {
                for ey in [y, next_down(y), next_up(y)] {
                    boxes.push([ex, ey, ex + 0.02, ey + 0.02]); // low edges on the lines
                    boxes.push([ex - 0.02, ey - 0.02, ex, ey]); // high edges on them
                    boxes.push([ex - 0.01, ey - 0.01, ex, ey]); // one cell wide
                    boxes.push([ex, ey, ex, ey]); // a point
                }
            }
        }
    }
    let lo = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = |v: &[f64]| v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    boxes.push([lo(&xs), lo(&ys), hi(&xs), hi(&ys)]);
    for b in boxes {
        check_bbox(&db, b, None, None);
    }
}

/// A file larger than one spill partition: its points go through temporary
/// files on disk and come back complete.
#[test]
fn cell_points_of_a_file_spilled_to_disk_are_complete() {
    let rows = 420_000;
    let csv = tripload::gen::trips_csv(rows, 77);
    assert!(csv.len() as u64 * 4 / 3 > tripload::analytics::points::PARTITION_BYTES);
    let (db, _w) = loaded(&[("big.csv", csv)]);
    assert_eq!(db.trips(), rows as i64);
    check_cell_weeks(&db);
    check_cell_points(&db);
    check_bbox(&db, [14.37, 50.0, 14.52, 50.13], None, None);
    // Full rows exist, and every row stayed inline (nothing in TOAST): the
    // query reads the keys from the heap row.
    assert!(
        db.count(&format!(
            "SELECT count(*) FROM rollup_cell_points WHERE length(lons) = {}",
            8 * tripload::analytics::points::MAX_PER_ROW
        )) > 0
    );
    assert_eq!(
        db.count("SELECT pg_relation_size(reltoastrelid) FROM pg_class WHERE relname = 'rollup_cell_points'"),
        0
    );
}

#[test]
fn weekly_command_prints_counts_and_average() {
    let (db, w) = loaded(&[("sample.csv", sample())]);
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

/// A region without trips (never loaded, or only in the dictionary) is
/// named as unknown, with the known regions (at most 20 listed), instead of
/// an answer of zero trips per week.
#[test]
fn unknown_region_is_named_with_the_known_ones() {
    let mut csv = b"region,origin_coord,destination_coord,datetime,datasource\n".to_vec();
    for i in 0..25 {
        csv.extend_from_slice(
            format!("Region {i:02},POINT (14.4 50.0),POINT (14.5 50.1),2018-05-2{} 10:00:00,cheap_mobile\n", i % 7)
                .as_bytes(),
        );
    }
    let (db, w) = loaded(&[("regions.csv", csv)]);
    db.query("INSERT INTO regions (id, name) VALUES (30000, 'Ghost')");
    for name in ["Nowhere", "Ghost"] {
        for cmd in [
            &["weekly", "--region", name][..],
            &["groups", "--region", name],
        ] {
            let out = tripload(&w, &db, cmd);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{cmd:?}: {err}");
            assert!(stdout(&out).is_empty(), "{cmd:?}: {}", stdout(&out));
            assert!(err.contains(&format!("unknown region \"{name}\"")), "{err}");
            assert!(
                err.contains("known regions (25): \"Region 00\", \"Region 01\", ")
                    && err.contains("\"Region 19\" and 5 more"),
                "{err}"
            );
            assert!(
                !err.contains("Region 20") && !err.contains("Ghost\","),
                "{err}"
            );
        }
    }
    let out = tripload(&w, &db, &["weekly", "--region", "Region 07"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("(1 trips)"), "{}", stdout(&out));
}

/// Trips around a few hotspots, so that groups hold many trips.
fn clustered_csv(rows: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let spots = [
        ("Prague", 14.4205, 50.0875),
        ("Prague", 14.2600, 50.1008),
        ("Prague", 14.4350, 50.0830),
        ("Turin", 7.6660, 45.0620),
        ("Turin", 7.6900, 45.0700),
    ];
    let sources = ["funny_car", "cheap_mobile", "pt_search_app"];
    let mut out = b"region,origin_coord,destination_coord,datetime,datasource\n".to_vec();
    for _ in 0..rows {
        let o = rng.gen_range(0..spots.len());
        let same: Vec<usize> = (0..spots.len())
            .filter(|&i| spots[i].0 == spots[o].0 && i != o)
            .collect();
        let d = same[rng.gen_range(0..same.len())];
        let j = |rng: &mut rand::rngs::SmallRng| rng.gen_range(-0.004..0.004);
        let hour = [7, 8, 8, 9, 17, 18][rng.gen_range(0..6)];
        out.extend_from_slice(
            format!(
                "{},POINT ({} {}),POINT ({} {}),2018-0{}-{:02} {:02}:{:02}:{:02},{}\n",
                spots[o].0,
                spots[o].1 + j(&mut rng),
                spots[o].2 + j(&mut rng),
                spots[d].1 + j(&mut rng),
                spots[d].2 + j(&mut rng),
                rng.gen_range(3..6),
                rng.gen_range(1..29),
                hour,
                rng.gen_range(0..60),
                rng.gen_range(0..60),
                sources[rng.gen_range(0..sources.len())]
            )
            .as_bytes(),
        );
    }
    out
}

type GroupKey = (String, i64, i64, i64, i64, String);

/// Groups computed from CSV text in Rust, independently of the database:
/// key → (trips, first, last, datasources).
fn groups_from_csv(
    csv: &[u8],
    cell: f64,
    bucket_min: i64,
    keep: impl Fn(&str, (f64, f64), (f64, f64)) -> bool,
) -> std::collections::BTreeMap<GroupKey, (i64, String, String, std::collections::BTreeSet<String>)>
{
    let mut m = std::collections::BTreeMap::new();
    let text = std::str::from_utf8(csv).unwrap();
    let pt = |s: &str| -> (f64, f64) {
        let inner = s.trim_start_matches("POINT (").trim_end_matches(')');
        let mut it = inner.split(' ').map(|v| v.parse::<f64>().unwrap());
        (it.next().unwrap(), it.next().unwrap())
    };
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let (o, d) = (pt(f[1]), pt(f[2]));
        if !keep(f[0], o, d) {
            continue;
        }
        let t = chrono::NaiveDateTime::parse_from_str(f[3], "%Y-%m-%d %H:%M:%S").unwrap();
        let mins = t.time().num_seconds_from_midnight() as i64 / 60;
        let b = mins / bucket_min * bucket_min;
        let key = (
            f[0].to_string(),
            (o.0 / cell).floor() as i64,
            (o.1 / cell).floor() as i64,
            (d.0 / cell).floor() as i64,
            (d.1 / cell).floor() as i64,
            format!("{:02}:{:02}", b / 60, b % 60),
        );
        let e = m.entry(key).or_insert((
            0i64,
            f[3].to_string(),
            f[3].to_string(),
            std::collections::BTreeSet::new(),
        ));
        e.0 += 1;
        e.1 = e.1.clone().min(f[3].to_string());
        e.2 = e.2.clone().max(f[3].to_string());
        e.3.insert(f[4].to_string());
    }
    m
}

/// `tripload groups --format csv` parsed back into the same shape.
fn groups_from_cli(
    w: &Work,
    db: &TestDb,
    args: &[&str],
) -> std::collections::BTreeMap<GroupKey, (i64, String, String, std::collections::BTreeSet<String>)>
{
    let mut a = vec!["groups", "--format", "csv", "--top", "100000"];
    a.extend_from_slice(args);
    let out = tripload(w, db, &a);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("trips,region,origin_ix,origin_iy,destination_ix,destination_iy,bucket_start,first_at,last_at,datasources")
    );
    let mut m = std::collections::BTreeMap::new();
    let mut last_n = i64::MAX;
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        let n: i64 = f[0].parse().unwrap();
        assert!(n <= last_n, "largest first");
        last_n = n;
        let key = (
            f[1].to_string(),
            f[2].parse().unwrap(),
            f[3].parse().unwrap(),
            f[4].parse().unwrap(),
            f[5].parse().unwrap(),
            f[6].to_string(),
        );
        let ds = f[9].split(' ').map(String::from).collect();
        assert!(m
            .insert(key, (n, f[7].to_string(), f[8].to_string(), ds))
            .is_none());
    }
    m
}

use chrono::Timelike;

#[test]
fn trip_groups_equal_groups_computed_from_the_csv() {
    let db = fresh_db();
    let w = Work::new();
    let a = clustered_csv(3_000, 41);
    let b = clustered_csv(2_000, 42);
    load(&w, &db, &[("a.csv", a.clone()), ("b.csv", b.clone())]);
    let mut all = a.clone();
    all.extend_from_slice(&b[b.iter().position(|&c| c == b'\n').unwrap() + 1..]);

    let expect = groups_from_csv(&all, 0.01, 60, |_, _, _| true);
    let got = groups_from_cli(&w, &db, &[]);
    assert_eq!(got, expect);
    assert!(
        expect.values().map(|v| v.0).max().unwrap() > 20,
        "hotspots make big groups"
    );

    // Another cell size and bucket, a region, a box by each end.
    let expect = groups_from_csv(&all, 0.005, 15, |r, _, _| r == "Turin");
    let got = groups_from_cli(
        &w,
        &db,
        &[
            "--region",
            "Turin",
            "--cell-deg",
            "0.005",
            "--bucket-minutes",
            "15",
        ],
    );
    assert_eq!(got, expect);
    let bx = [14.40, 50.07, 14.43, 50.10];
    let inb = |p: (f64, f64)| p.0 >= bx[0] && p.0 <= bx[2] && p.1 >= bx[1] && p.1 <= bx[3];
    for (by, keep) in [
        (
            "origin",
            Box::new(move |_: &str, o, _| inb(o))
                as Box<dyn Fn(&str, (f64, f64), (f64, f64)) -> bool>,
        ),
        ("destination", Box::new(move |_: &str, _, d| inb(d))),
        ("both", Box::new(move |_: &str, o, d| inb(o) && inb(d))),
    ] {
        let expect = groups_from_csv(&all, 0.01, 60, keep);
        let got = groups_from_cli(&w, &db, &["--bbox", "14.40,50.07,14.43,50.10", "--by", by]);
        assert_eq!(got, expect, "by {by}");
    }

    // --top keeps the largest; the table format names the cells.
    let out = tripload(&w, &db, &["groups", "--top", "3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    assert_eq!(table.lines().count(), 2 + 3, "{table}");
    let top = groups_from_csv(&all, 0.01, 60, |_, _, _| true)
        .values()
        .map(|v| v.0)
        .max()
        .unwrap();
    assert!(
        table
            .lines()
            .nth(2)
            .unwrap()
            .trim_start()
            .starts_with(&top.to_string()),
        "{table}"
    );
    // Unknown region: exit 2, named with the known ones; bad arguments: exit 2.
    let out = tripload(&w, &db, &["groups", "--region", "Atlantis"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("unknown region \"Atlantis\"")
            && stderr(&out).contains("known regions (2): \"Prague\", \"Turin\""),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    for bad in [
        &["groups", "--cell-deg", "0"][..],
        &["groups", "--bucket-minutes", "0"],
        &["groups", "--bbox", "1,2,3"],
    ] {
        assert_eq!(tripload(&w, &db, bad).status.code(), Some(2), "{bad:?}");
    }
}

/// Cell points written a segment at a time by the second connection: a file
/// that fails after several segments were committed leaves none of them, and
/// a file loaded in segments gives the same rollups, cell points and answers
/// as one loaded in a single piece.
#[test]
fn cell_points_written_in_segments_leave_nothing_when_the_file_fails() {
    let good = tripload::gen::trips_csv(40_000, 91);
    assert!(good.len() > 4 << 20, "several 1 MiB segments");
    // Long enough that the segments before the bad row (at the end) commit
    // while the trips are still being copied.
    let mut bad = tripload::gen::trips_csv(200_000, 92);
    bad.extend_from_slice(b"Prague,POINT (1 2),POINT (3 4),2018-02-30 00:00:00,x\n");

    let db = fresh_db();
    let w = Work::new();
    w.land("bad.csv", &bad);
    let out = tripload_cmd(&w, &db, &["load", "landing", "--points-segment-mib", "1"])
        .env("TRIPLOAD_LOG", "tripload=debug")
        .output()
        .expect("run tripload");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(w.exists("failed/bad.csv"));
    // The segments before the bad row had committed, and were deleted.
    let log = stderr(&out);
    let deleted: u64 = log
        .split("deleted ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no cleanup in the log:\n{log}"));
    assert!(
        deleted > 100,
        "{deleted} rows of committed segments deleted"
    );
    assert_eq!(db.count("SELECT count(*) FROM rollup_cell_points"), 0);
    assert_eq!(db.count("SELECT count(*) FROM cell_points_pending"), 0);
    assert_eq!(db.trips(), 0);
    let segment_tables =
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'rollup_cell_points'::regclass";
    assert_eq!(
        db.count(segment_tables),
        0,
        "the segments' tables are dropped"
    );

    w.land("good.csv", &good);
    let out = tripload_cmd(&w, &db, &["load", "landing", "--points-segment-mib", "1"])
        .env("TRIPLOAD_LOG", "tripload=debug")
        .output()
        .expect("run tripload");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(db.count("SELECT count(*) FROM cell_points_pending"), 0);
    // Every segment wrote into the one table: no table of its own.
    assert_eq!(db.count(segment_tables), 0);
    check_cell_weeks(&db);
    check_cell_points(&db);
    let one = fresh_db();
    let w1 = Work::new();
    load(&w1, &one, &[("good.csv", good)]);
    assert_eq!(rollup_state(&db), rollup_state(&one));
    // Each segment's cells ended in a partial row; compaction (a small file)
    // merged them into the rows that one piece gives.
    let compacted: u64 = stderr(&out)
        .split("compacted the rollups of 1 small files (")
        .nth(1)
        .and_then(|t| t.split(" cells, ").nth(1))
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no compaction in the log:\n{}", stderr(&out)));
    let rows = |db: &TestDb| db.count("SELECT count(*) FROM rollup_cell_points");
    assert!(
        compacted as i64 > rows(&one),
        "{compacted} rows written in segments"
    );
    assert_eq!(rows(&db), rows(&one));
    let raw = |db: &TestDb| -> Vec<String> {
        db.query("SELECT concat_ws(' ', file_id, side, ix, iy, weeks, ends, lons, lats_sorted, lat_pos) FROM rollup_cell_points ORDER BY 1")
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    assert_eq!(raw(&db), raw(&one));
    for b in [
        [14.37, 50.0, 14.52, 50.13],
        [14.4312, 50.0405, 14.4987, 50.0789],
        [-180.0, -90.0, 180.0, 90.0],
    ] {
        check_bbox(&db, b, None, None);
    }
}

/// Cell points whose file never committed (a loader killed mid-file) count
/// for nothing, are left alone while their loader may still be alive (it
/// holds the file's lock), and are deleted by the next loader that starts; a
/// committed file's points survive a stale pending entry.
#[test]
fn cell_points_of_unfinished_loads_are_ignored_then_swept() {
    let (db, w) = generated_db();
    let committed = db.count("SELECT min(file_id)::bigint FROM load_files");
    let before = db.count("SELECT count(*) FROM rollup_cell_points");
    // What a killed loader leaves: committed segments of file 9999 (a copy of
    // real rows, so they fall in every box), named pending, no ledger row.
    db.query(
        "INSERT INTO rollup_cell_points SELECT 9999, side, ix, iy, weeks, ends, lons, lats_sorted, lat_pos FROM rollup_cell_points",
    );
    db.query("INSERT INTO cell_points_pending (file_id) VALUES (9999)");
    // And a committed file whose pending row outlived it, with rows of its
    // own (the compacted rows, handed to it: the same points, still counted
    // once).
    db.query(&format!(
        "UPDATE rollup_cell_points SET file_id = {committed} WHERE file_id = 0"
    ));
    db.query(&format!(
        "INSERT INTO cell_points_pending (file_id) VALUES ({committed})"
    ));
    for b in [
        [14.37, 50.0, 14.52, 50.13],
        [14.4312, 50.0405, 14.4987, 50.0789],
    ] {
        check_bbox(&db, b, None, None);
    }

    // A live loader of file 9999 holds its lock: the sweep skips it.
    let live = db.session();
    live.query("SELECT pg_advisory_lock_shared(29810, 9999)");
    w.land("s2.csv", &tripload::gen::trips_csv(500, 23));
    let out = tripload(&w, &db, &["load", "landing"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        db.count("SELECT count(*) FROM rollup_cell_points WHERE file_id = 9999"),
        before
    );
    drop(live);

    w.land("s3.csv", &tripload::gen::trips_csv(500, 24));
    let out = tripload(&w, &db, &["load", "landing"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        db.count("SELECT count(*) FROM rollup_cell_points WHERE file_id = 9999"),
        0
    );
    assert_eq!(db.count("SELECT count(*) FROM cell_points_pending"), 0);
    assert!(
        db.count(&format!(
            "SELECT count(*) FROM rollup_cell_points WHERE file_id = {committed}"
        )) > 0,
        "a committed file keeps its cell points"
    );
    check_cell_points(&db);
    check_bbox(&db, [14.37, 50.0, 14.52, 50.13], None, None);
}

fn backlog_peak(log: &str) -> u64 {
    log.split("backlog peak ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no backlog peak in the log:\n{log}"))
}

/// Every trip as text, in order (ids are the same in two fresh databases
/// loaded with the same file).
fn trips_digest(db: &TestDb) -> String {
    db.query(
        "SELECT md5(string_agg(concat_ws('|', datetime, region_id, datasource_id, ST_AsText(origin), ST_AsText(destination), file_id), ',' ORDER BY datetime, ST_X(origin), ST_Y(origin), ST_X(destination), ST_Y(destination), region_id, datasource_id)) FROM trips",
    )[0]
    .get(0)
}

/// Parsing runs ahead of the trips' COPY into the backlog on disk, so the
/// cell points are written while the trips are still being copied; the
/// database ends up exactly as when parsing waits for the COPY
/// (`--backlog-mib 0`).
///
/// The first run does not rely on the server being slower than the parser
/// (on a fast server nothing needs to wait): a row trigger holds the trips'
/// COPY at its first row on an advisory lock this test keeps until the file's
/// cell points are committed, which happens only after its last chunk is
/// parsed. By then all but a few MiB of the ~30 MiB of encoded trips must be
/// on disk.
#[test]
fn trips_queued_on_disk_load_the_same_as_trips_that_wait() {
    let rows = 300_000;
    let csv = tripload::gen::trips_csv(rows, 93);
    let mut runs = Vec::new();
    for backlog in [None, Some("0")] {
        let db = fresh_db();
        let w = Work::new();
        w.land("a.csv", &csv);
        // 1 MiB chunks: 4 MiB in memory.
        let mut args = vec!["load", "landing", "--chunk-mib", "1"];
        if let Some(b) = backlog {
            args.extend(["--backlog-mib", b]);
        }
        let held = backlog.is_none().then(|| hold_trips_copy(&db, &w));
        // A file, not a pipe: nothing reads the log while the load is held.
        let log = std::fs::File::create(w.path("log")).expect("log file");
        let mut child = tripload_cmd(&w, &db, &args)
            .env("TRIPLOAD_LOG", "tripload=debug")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("run tripload");
        if let Some(held) = held {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
            let cell_points = || db.count("SELECT count(*) FROM rollup_cell_points") > 0;
            while !(held.holding(&db) && cell_points()) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the load never reached the held COPY with its cell points written"
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            held.release(&db);
        }
        let status = child.wait().expect("run tripload");
        let log = w.read("log");
        assert!(status.success(), "{log}");
        assert!(w.exists("processed/a.csv"));
        let peak = backlog_peak(&log);
        match backlog {
            None => assert!(peak > 8 << 20, "only {peak} bytes waited on disk"),
            Some(_) => assert_eq!(peak, 0),
        }
        assert_eq!(db.trips(), rows as i64);
        runs.push((trips_digest(&db), rollup_state(&db), db, w));
    }
    assert_eq!(runs[0].0, runs[1].0);
    assert_eq!(runs[0].1, runs[1].1);
    // Equal, and right: the cell points are exactly the trips' coordinates.
    check_cell_weeks(&runs[0].2);
    check_cell_points(&runs[0].2);
    check_bbox(&runs[0].2, [14.37, 50.0, 14.52, 50.13], None, None);
}

/// The same trips as one file and as 40 small files loaded together (two
/// at a time): compaction leaves byte for byte the rollup rows of the one
/// file, so bounding boxes read as few rows; the answers are exact.
#[test]
fn small_files_compact_into_the_rows_of_one_file() {
    let csv = tripload::gen::trips_csv(40_000, 51);
    let text = String::from_utf8(csv.clone()).expect("utf-8");
    let (header, body) = text.split_once('\n').expect("header");
    let lines: Vec<&str> = body.lines().collect();
    let many = fresh_db();
    let w = Work::new();
    for (i, part) in lines.chunks(1_000).enumerate() {
        w.land(
            &format!("part-{i:03}.csv"),
            format!("{header}\n{}\n", part.join("\n")).as_bytes(),
        );
    }
    let out = tripload(&w, &many, &["load", "landing", "--jobs", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(many.count("SELECT count(*) FROM load_files"), 40);
    let (one, _w1) = loaded(&[("all.csv", csv)]);
    assert_eq!(many.trips(), one.trips());
    let raw = |db: &TestDb, table: &str, cols: &str| -> Vec<String> {
        db.query(&format!(
            "SELECT concat_ws(' ', {cols}) FROM {table} ORDER BY 1"
        ))
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    for (table, cols) in [
        (
            "rollup_cell_points",
            "file_id, side, ix, iy, weeks, ends, lons, lats_sorted, lat_pos",
        ),
        ("rollup_cell_week", "file_id, side, ix, iy, weeks, trips"),
        // By name: the two loads may number the names in another order.
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
        let (a, b) = (raw(&many, table, cols), raw(&one, table, cols));
        assert!(a.len() > 5, "{table}");
        assert_eq!(a, b, "{table}");
    }
    assert_eq!(many.count("SELECT count(*) FROM rollup_uncompacted"), 0);
    check_cell_weeks(&many);
    check_cell_points(&many);
    for b in [
        [14.37, 50.0, 14.52, 50.13],
        [14.4312, 50.0405, 14.4987, 50.0789],
    ] {
        check_bbox(&many, b, None, None);
    }
    for r in ["Prague", "Milan"] {
        assert_eq!(
            rows(&many, &format!("SELECT * FROM weekly_trips_region('{r}')")),
            brute(
                &many,
                &format!("region_id = (SELECT id FROM regions WHERE name = '{r}')"),
                None,
                None
            )
        );
    }
}
