//! End-to-end tests of `tripload load`: the real binary, a real PostgreSQL +
//! PostGIS cluster started by the harness, real files in a temp workdir.

mod common;
use common::*;

type Row = (String, f64, f64, f64, f64, i64, String);

/// Trips read back from PostgreSQL, sorted.
fn db_rows(db: &TestDb) -> Vec<Row> {
    let mut v: Vec<Row> = db
        .query(
            "SELECT region, ST_X(origin), ST_Y(origin), ST_X(destination), ST_Y(destination),
                    floor(extract(epoch FROM datetime))::bigint, datasource FROM trips_named",
        )
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
            )
        })
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}

fn coords(wkt: &str) -> (f64, f64) {
    let inner = wkt
        .trim()
        .trim_start_matches("POINT")
        .trim()
        .trim_start_matches('(')
        .trim_end_matches(')');
    let mut it = inner.split_whitespace().map(|s| s.parse::<f64>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

/// The expected rows, parsed independently with the `csv` crate and chrono.
fn file_rows(bytes: &[u8]) -> Vec<Row> {
    let mut rdr = csv::Reader::from_reader(bytes);
    let mut v: Vec<Row> = rdr
        .records()
        .map(|r| {
            let r = r.unwrap();
            let (ox, oy) = coords(&r[1]);
            let (dx, dy) = coords(&r[2]);
            let t = chrono::NaiveDateTime::parse_from_str(&r[3], "%Y-%m-%d %H:%M:%S").unwrap();
            (
                r[0].to_string(),
                ox,
                oy,
                dx,
                dy,
                t.and_utc().timestamp(),
                r[4].to_string(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}

#[test]
fn sample_loads_exactly_and_is_archived() {
    let db = fresh_db();
    let w = Work::new();
    let sample = sample();
    w.land("trips-sample.csv", &sample);
    let out = tripload(&w, &db, &["load", "landing"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(db.trips(), 100);
    let got = db_rows(&db);
    let want = file_rows(&sample);
    assert_eq!(got.len(), 100);
    assert_eq!(got, want, "values read back differ from the file");
    assert!(w.exists("processed/trips-sample.csv"));
    assert!(!w.exists("landing/trips-sample.csv"));
    assert!(
        stdout(&out).contains("trips-sample.csv"),
        "summary table: {}",
        stdout(&out)
    );
    // The ledger has the file with its counts; SRID is 4326.
    assert_eq!(db.count("SELECT rows_loaded FROM load_files"), 100);
    assert_eq!(db.count("SELECT count(*) FROM trips WHERE ST_SRID(origin) = 4326 AND ST_SRID(destination) = 4326"), 100);
}

#[test]
fn quoting_crlf_bom_and_shuffled_columns() {
    let db = fresh_db();
    let w = Work::new();
    let content = "\u{feff}datasource,\"date\"\"time\",region,extra,datetime,destination_coord,origin_coord\r\n\
        \"cheap, mobile\",x,\"New York\",\"a,\nb\",2018-05-28 09:03:40,\"POINT (1 2)\",POINT(3 4)\r\n\
        \"say \"\"hi\"\"\",x,Prague,,2018-05-28T10:00:00.5,point ( -1.5  -2.5 ),POINT (14.4 50.1)\r\n\r\n";
    // "date""time" is an unknown column (ignored): the header has 7 fields.
    w.land("quoted.csv", content.as_bytes());
    let out = tripload(&w, &db, &["load", "landing"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let rows = db_rows(&db);
    assert_eq!(
        rows,
        vec![
            (
                "New York".into(),
                3.0,
                4.0,
                1.0,
                2.0,
                1527498220,
                "cheap, mobile".into()
            ),
            (
                "Prague".into(),
                14.4,
                50.1,
                -1.5,
                -2.5,
                1527501600,
                "say \"hi\"".into()
            ),
        ]
    );
    assert_eq!(
        db.count("SELECT count(*) FROM trips WHERE datetime = '2018-05-28 10:00:00.5+00'"),
        1
    );
    assert!(
        stderr(&out).contains("extra"),
        "warns about ignored columns: {}",
        stderr(&out)
    );
}

/// One bad row per class, with the line it is on (line 1 is the header).
const BAD_ROWS: &[(&str, &str, &str)] = &[
    (
        "Prague,POINT (1 2),POINT (3 4),2018-05-28 09:03:40",
        "",
        "expected 5 fields",
    ),
    (
        "Prague,POINT EMPTY,POINT (3 4),2018-05-28 09:03:40,x",
        "origin_coord",
        "POINT EMPTY",
    ),
    (
        "Prague,POINT (1 2 3),POINT (3 4),2018-05-28 09:03:40,x",
        "origin_coord",
        "exactly 2 coordinates",
    ),
    (
        "Prague,POINT (1 2),POINT (NaN 4),2018-05-28 09:03:40,x",
        "destination_coord",
        "not a finite number",
    ),
    (
        "Prague,POINT (1 2),POINT (inf 4),2018-05-28 09:03:40,x",
        "destination_coord",
        "not a finite number",
    ),
    (
        "Prague,POINT (181 2),POINT (3 4),2018-05-28 09:03:40,x",
        "origin_coord",
        "longitude 181",
    ),
    (
        "Prague,POINT (1 91),POINT (3 4),2018-05-28 09:03:40,x",
        "origin_coord",
        "latitude 91",
    ),
    (
        "Prague,LINESTRING (1 2),POINT (3 4),2018-05-28 09:03:40,x",
        "origin_coord",
        "expected a WKT point",
    ),
    (
        "Prague,POINT (1 2),POINT (3 4),2018-02-30 09:03:40,x",
        "datetime",
        "not a real calendar date",
    ),
    (
        "Prague,POINT (1 2),POINT (3 4),28/05/2018 09:03,x",
        "datetime",
        "expected a datetime",
    ),
    (
        "  ,POINT (1 2),POINT (3 4),2018-05-28 09:03:40,x",
        "region",
        "empty",
    ),
    (
        "Prague,POINT (1 2),POINT (3 4),2018-05-28 09:03:40,",
        "datasource",
        "empty",
    ),
    (
        "Pra\"g\"ue,POINT (1 2),POINT (3 4),2018-05-28 09:03:40,x",
        "",
        "inside an unquoted field",
    ),
];

const GOOD: &str = "Turin,POINT (7.6 45.0),POINT (7.7 45.1),2018-05-21 02:54:04,baba_car";

/// Good rows interleaved with every bad row: returns the file and the line of each bad row.
fn dirty_file() -> (String, Vec<usize>) {
    let mut s = format!("{HEADER}\n");
    let mut line = 1;
    let mut lines = Vec::new();
    for (bad, _, _) in BAD_ROWS {
        s.push_str(GOOD);
        s.push('\n');
        // A quoted newline makes later line numbers depend on counting physical lines.
        s.push_str("Turin,\"POINT (7.6\n45.0)\",POINT (7.7 45.1),2018-05-21 02:54:04,baba_car\n");
        line += 3;
        s.push_str(bad);
        s.push('\n');
        line += 1;
        lines.push(line);
    }
    (s, lines)
}

#[test]
fn every_bad_row_is_rejected_with_line_column_and_reason() {
    let db = fresh_db();
    let w = Work::new();
    let (content, lines) = dirty_file();
    w.land("dirty.csv", content.as_bytes());
    let out = tripload(&w, &db, &["load", "landing", "--max-rejects", "100"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(db.trips() as usize, 2 * BAD_ROWS.len());
    let mut rdr =
        csv::Reader::from_path(w.path("processed/dirty.csv.rejects.csv")).expect("rejects file");
    assert_eq!(
        rdr.headers().unwrap(),
        vec!["file", "line", "column", "reason", "raw"]
    );
    let rejects: Vec<csv::StringRecord> = rdr.records().map(|r| r.unwrap()).collect();
    assert_eq!(rejects.len(), BAD_ROWS.len());
    for ((rec, (raw, column, reason)), line) in rejects.iter().zip(BAD_ROWS).zip(&lines) {
        assert!(rec[0].ends_with("dirty.csv"));
        assert_eq!(rec[1].parse::<usize>().unwrap(), *line, "line of {raw}");
        assert_eq!(&rec[2], *column, "column of {raw}");
        assert!(
            rec[3].contains(reason),
            "reason {:?} should mention {reason:?}",
            &rec[3]
        );
        assert_eq!(&rec[4], *raw);
    }
    assert_eq!(
        db.count("SELECT rows_rejected FROM load_files"),
        BAD_ROWS.len() as i64
    );
}

#[test]
fn strict_mode_rolls_back_and_moves_to_failed() {
    let db = fresh_db();
    let w = Work::new();
    let (content, lines) = dirty_file();
    w.land("dirty.csv", content.as_bytes());
    let out = tripload(&w, &db, &["load", "landing"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(db.trips(), 0, "nothing from a failed file stays");
    assert_eq!(db.count("SELECT count(*) FROM load_files"), 0);
    assert!(w.exists("failed/dirty.csv"));
    assert!(!w.exists("landing/dirty.csv"));
    let why = w.read("failed/dirty.csv.error.txt");
    assert!(
        why.contains(&format!("line {}", lines[0])) && why.contains("--max-rejects"),
        "{why}"
    );
    assert!(w.exists("failed/dirty.csv.rejects.csv"));
}

#[test]
fn max_rejects_over_the_limit_fails_within_commits() {
    let db = fresh_db();
    let w = Work::new();
    let (content, _) = dirty_file();
    w.land("dirty.csv", content.as_bytes());
    let out = tripload(&w, &db, &["load", "landing", "--max-rejects", "5"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(db.trips(), 0);
    let limit = BAD_ROWS.len().to_string();
    std::fs::rename(w.path("failed/dirty.csv"), w.path("landing/dirty.csv")).unwrap();
    let out = tripload(&w, &db, &["load", "landing", "--max-rejects", &limit]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(db.trips() as usize, 2 * BAD_ROWS.len());
}

#[test]
fn same_content_twice_loads_once() {
    let db = fresh_db();
    let w = Work::new();
    w.land("a.csv", &sample());
    assert!(tripload(&w, &db, &["load", "landing"]).status.success());
    w.land("copy-of-a.csv", &sample());
    let out = tripload(&w, &db, &["load", "landing"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("already loaded"), "{}", stdout(&out));
    assert_eq!(db.trips(), 100);
    assert_eq!(db.count("SELECT count(*) FROM load_files"), 1);
    assert!(w.exists("processed/copy-of-a.csv"));
}

#[test]
fn file_level_failures_fail_that_file_only() {
    let db = fresh_db();
    let w = Work::new();
    w.land(
        "1-missing-column.csv",
        b"region,origin_coord,destination_coord,datasource\nx,POINT (1 2),POINT (1 2),y\n",
    );
    w.land("2-empty.csv", b"");
    w.land("3-good.csv", &sample());
    w.land("4-header-only.csv", format!("{HEADER}\n").as_bytes());
    w.land("5-copying.csv.part", b"garbage");
    let out = tripload(&w, &db, &["load", "landing"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(db.trips(), 100);
    assert!(w
        .read("failed/1-missing-column.csv.error.txt")
        .contains("missing required column(s): datetime"));
    assert!(w.read("failed/2-empty.csv.error.txt").contains("empty"));
    assert!(w.exists("processed/3-good.csv"));
    assert!(w.exists("processed/4-header-only.csv"));
    assert!(
        w.exists("landing/5-copying.csv.part"),
        "partial files are not touched"
    );
}

#[test]
fn unreachable_database_moves_nothing() {
    let w = Work::new();
    w.land("a.csv", &sample());
    let db = TestDb {
        conninfo: "postgresql://someone:s3cret@127.0.0.1:9/nowhere".into(),
        name: "nowhere".into(),
    };
    let out = tripload(&w, &db, &["load", "landing"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("127.0.0.1:9"), "{err}");
    assert!(!err.contains("s3cret"), "password leaked: {err}");
    assert!(err.contains("hint"), "{err}");
    assert!(w.exists("landing/a.csv"));
}

#[test]
fn usage_errors_exit_2() {
    let w = Work::new();
    let db = fresh_db();
    assert_eq!(
        tripload(&w, &db, &["load", "--jobs", "0"]).status.code(),
        Some(2)
    );
    assert_eq!(
        tripload(&w, &db, &["load", "--bogus"]).status.code(),
        Some(2)
    );
    assert_eq!(
        tripload(&w, &db, &["load", "does-not-exist"]).status.code(),
        Some(2)
    );
    let help = stdout(&tripload(&w, &db, &["load", "--help"]));
    assert!(
        help.contains("Exit codes") && help.contains("--max-rejects"),
        "{help}"
    );
}

/// Integer checksums that SQL and Rust compute identically (floor of an IEEE product).
fn file_checksum(bytes: &[u8]) -> (i64, i64, i64) {
    let mut rdr = csv::Reader::from_reader(bytes);
    let (mut n, mut c, mut t) = (0i64, 0i64, 0i64);
    for r in rdr.records() {
        let r = r.unwrap();
        let (ox, oy) = coords(&r[1]);
        let (dx, dy) = coords(&r[2]);
        n += 1;
        c += (ox * 1e7).floor() as i64
            + (oy * 1e7).floor() as i64
            + (dx * 1e7).floor() as i64
            + (dy * 1e7).floor() as i64;
        t += chrono::NaiveDateTime::parse_from_str(&r[3], "%Y-%m-%d %H:%M:%S")
            .unwrap()
            .and_utc()
            .timestamp()
            % 100_000;
    }
    (n, c, t)
}

#[test]
fn a_million_rows_round_trip() {
    let db = fresh_db();
    let w = Work::new();
    let content = tripload::gen::trips_csv(1_000_000, 11);
    w.land("big.csv", &content);
    let out = tripload(&w, &db, &["load", "landing", "--chunk-mib", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r = &db.query(
        "SELECT count(*),
                sum(floor(ST_X(origin) * 1e7)::bigint + floor(ST_Y(origin) * 1e7)::bigint
                  + floor(ST_X(destination) * 1e7)::bigint + floor(ST_Y(destination) * 1e7)::bigint)::bigint,
                sum(extract(epoch FROM datetime)::bigint % 100000)::bigint
         FROM trips",
    )[0];
    let got: (i64, i64, i64) = (r.get(0), r.get(1), r.get(2));
    assert_eq!(got, file_checksum(&content));
}

#[test]
fn killed_during_copy_then_rerun_leaves_exactly_one_copy() {
    let db = fresh_db();
    let w = Work::new();
    let content = tripload::gen::trips_csv(1_500_000, 5);
    w.land("big.csv", &content);
    let mut child = tripload_cmd(&w, &db, &["load", "landing", "--quiet"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the COPY is running on the server, then kill -9.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let copying = db.count(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND query LIKE 'COPY trips%'",
            db.name
        ));
        if copying > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "COPY never started");
        assert!(
            child.try_wait().unwrap().is_none(),
            "load finished before it could be killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // The server notices the dead client and rolls back.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while db.count(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND query LIKE 'COPY trips%'",
        db.name
    )) > 0
    {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(db.trips(), 0);
    assert!(
        w.exists("landing/big.csv"),
        "a killed load leaves the file in landing"
    );
    let out = tripload(&w, &db, &["load", "landing"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(db.trips(), 1_500_000);
    assert_eq!(db.count("SELECT count(*) FROM load_files"), 1);
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let ppid = stat[stat.rfind(')').unwrap() + 2..]
            .split(' ')
            .nth(1)
            .and_then(|x| x.parse::<u32>().ok());
        if ppid == Some(pid) {
            v.push(p);
        }
    }
    v
}

/// A load runs in the process the user started (no re-exec into a session
/// of its own, so Ctrl-Z and job control stop the load itself), and SIGTERM
/// stops it: exit 143, nothing committed, the file left in landing.
#[test]
fn a_load_runs_in_the_process_started_and_sigterm_commits_nothing() {
    let db = fresh_db();
    let w = Work::new();
    w.land("a.csv", &tripload::gen::trips_csv(50_000, 12));
    let held = hold_trips_copy(&db, &w);
    let mut child = tripload_cmd(&w, &db, &["load", "landing", "--quiet"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !held.holding(&db) {
        assert!(std::time::Instant::now() < deadline, "COPY never started");
        assert!(child.try_wait().unwrap().is_none(), "the load ended early");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let kids = children_of(child.id());
    assert!(kids.is_empty(), "the load runs in a child: {kids:?}");
    // SAFETY: plain syscalls on our own child and on ourselves.
    let (sid, ours) = unsafe { (libc::getsid(child.id() as i32), libc::getsid(0)) };
    assert_eq!(sid, ours, "the load left the caller's session");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert!(
        status.code() == Some(128 + libc::SIGTERM) || status.signal() == Some(libc::SIGTERM),
        "{status:?}"
    );
    held.release(&db);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while db.count(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND query LIKE 'COPY trips%'",
        db.name
    )) > 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the COPY outlived its loader"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(db.trips(), 0);
    assert_eq!(db.count("SELECT count(*) FROM load_files"), 0);
    assert!(w.exists("landing/a.csv"));
}

#[test]
fn several_files_load_concurrently_with_jobs() {
    let db = fresh_db();
    let w = Work::new();
    for i in 0..4 {
        w.land(
            &format!("f{i}.csv"),
            &tripload::gen::trips_csv(20_000, 100 + i),
        );
    }
    let out = tripload(&w, &db, &["load", "landing", "--jobs", "4"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(db.trips(), 80_000);
    assert_eq!(db.count("SELECT count(DISTINCT file_id) FROM trips"), 4);
    assert_eq!(
        db.count("SELECT count(*) FROM regions"),
        tripload::gen::REGIONS.len() as i64
    );
}

#[test]
fn a_file_changed_while_loading_is_rolled_back() {
    let db = fresh_db();
    let w = Work::new();
    let path = w.land("growing.csv", &tripload::gen::trips_csv(1_500_000, 8));
    let child = tripload_cmd(&w, &db, &["load", "landing", "--quiet"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while db.count(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND query LIKE 'COPY trips%'",
        db.name
    )) == 0
    {
        assert!(std::time::Instant::now() < deadline, "COPY never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // A writer appends to the file mid-load.
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    writeln!(f, "{GOOD}").unwrap();
    drop(f);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(db.trips(), 0);
    assert!(w
        .read("failed/growing.csv.error.txt")
        .contains("changed while it was being loaded"));
}

/// `--no-rollups` loads the trips alone (what benches/compare.sh measures
/// against) and says what the answers then miss.
#[test]
fn no_rollups_loads_the_trips_alone_and_says_so() {
    let db = fresh_db();
    let w = Work::new();
    w.land("a.csv", &tripload::gen::trips_csv(5_000, 31));
    let out = tripload(&w, &db, &["load", "landing", "--no-rollups"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(db.trips(), 5_000);
    assert_eq!(db.count("SELECT count(*) FROM rollup_region_week"), 0);
    assert_eq!(db.count("SELECT count(*) FROM rollup_cell_points"), 0);
    assert!(
        stderr(&out).contains("will not count these files"),
        "{}",
        stderr(&out)
    );
}
