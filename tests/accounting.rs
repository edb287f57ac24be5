//! Every line of a file is accounted for, and no input reaches an output
//! unbounded: the real binary against the harness's PostgreSQL. A stray
//! quote fails its file naming the line, strict files list every bad line,
//! names with control characters are rejected rows, and the summary, the
//! ledger and the events count rejected lines.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;

/// `rows` generated trips (line 1 is the header, row i on line i + 1).
fn trips(rows: u64, seed: u64) -> Vec<String> {
    let text = String::from_utf8(tripload::gen::trips_csv(rows, seed)).unwrap();
    assert!(!text.contains('"'), "generated rows have no quotes");
    text.lines().map(str::to_string).collect()
}

/// The issue's file: 1,000 rows, line 11's last field is `funny_car"`.
fn stray_quote_file() -> (Vec<u8>, usize) {
    let mut lines = trips(1000, 11);
    let cut = lines[10].rfind(',').unwrap() + 1;
    lines[10].truncate(cut);
    lines[10].push_str("funny_car\"");
    let column = lines[10].len();
    ((lines.join("\n") + "\n").into_bytes(), column)
}

fn event_payloads(db: &TestDb, kind: &str) -> Vec<serde_json::Value> {
    db.query(&format!(
        "SELECT payload::text FROM ingestion_events WHERE kind = '{kind}' ORDER BY id"
    ))
    .iter()
    .map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap())
    .collect()
}

#[test]
fn a_stray_quote_fails_the_file_naming_its_line() {
    let (content, column) = stray_quote_file();
    // With the default --max-record-bytes (the runaway record is ~100 KB)
    // and with a limit above the file's size (the quote runs to the end).
    for (args, says) in [
        (vec![], "is still open 65536 bytes into the record"),
        (
            vec!["--max-record-bytes", "1048576"],
            "is never closed (it runs to the end of the file)",
        ),
    ] {
        let db = fresh_db();
        let w = Work::new();
        w.land("stray.csv", &content);
        let mut all = vec!["load", "landing", "--max-rejects", "5"];
        all.extend(args);
        let out = tripload(&w, &db, &all);
        let (so, se) = (stdout(&out), stderr(&out));
        assert_eq!(out.status.code(), Some(1), "{so}\n{se}");
        assert!(w.exists("failed/stray.csv") && !w.exists("landing/stray.csv"));
        assert_eq!(db.trips(), 0, "nothing committed");
        assert_eq!(
            db.count("SELECT count(*) FROM load_files"),
            0,
            "no ledger row"
        );
        let why = w.read("failed/stray.csv.error.txt");
        let at = format!("line 11, column {column}: a quoted field opens here");
        assert!(why.contains(&at) && why.contains(says), "{why}");
        assert!(so.contains(&at), "{so}");
        // The position as fields, in the error file and in the event.
        assert!(
            why.contains(&format!("\nline: 11\ncolumn: {column}\n")),
            "{why}"
        );
        let ev = event_payloads(&db, "failed").pop().expect("a failed event");
        assert_eq!(ev["line"], 11, "{ev}");
        assert_eq!(ev["column"], column.to_string(), "{ev}");
        assert!(ev.get("sqlstate").is_none(), "{ev}");
        // Sent again after a fix, it loads: nothing was recorded as loaded.
        let fixed = String::from_utf8(content.clone())
            .unwrap()
            .replace("funny_car\"", "funny_car");
        w.land("stray.csv", fixed.as_bytes());
        let out = tripload(&w, &db, &["load", "landing"]);
        assert!(out.status.success(), "{}", stdout(&out));
        assert_eq!(db.trips(), 1000);
    }
}

#[test]
fn a_control_character_in_a_name_is_a_rejected_row() {
    let mut lines = trips(50, 3);
    // A NUL in a region, an escape sequence in a datasource.
    lines[5] = lines[5].replacen(',', "\0,", 1);
    let cut = lines[9].rfind(',').unwrap() + 1;
    lines[9].truncate(cut);
    lines[9].push_str("car\x1b[2J");
    let content = (lines.join("\n") + "\n").into_bytes();
    let db = fresh_db();
    let w = Work::new();
    w.land("ctl.csv", &content);
    let out = tripload(&w, &db, &["load", "landing", "--max-rejects", "2"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(db.trips(), 48);
    assert!(w.exists("processed/ctl.csv"));
    let rejects = w.read("processed/ctl.csv.rejects.csv");
    assert!(
        !rejects.contains('\0') && !rejects.contains('\x1b'),
        "{rejects:?}"
    );
    let mut rdr = csv::Reader::from_reader(rejects.as_bytes());
    let recs: Vec<csv::StringRecord> = rdr.records().map(|r| r.unwrap()).collect();
    assert_eq!(recs.len(), 2);
    assert_eq!((&recs[0][1], &recs[0][2]), ("6", "region"));
    assert!(
        recs[0][3].contains("control character \\x00"),
        "{:?}",
        &recs[0]
    );
    assert!(recs[0][4].contains("\\x00,"), "{:?}", &recs[0]);
    assert_eq!((&recs[1][1], &recs[1][2]), ("10", "datasource"));
    assert!(recs[1][4].ends_with("car\\x1B[2J"), "{:?}", &recs[1]);

    // Strict: the file's fault, so it goes to failed/ (never retried).
    let db = fresh_db();
    let w = Work::new();
    w.land("ctl.csv", &content);
    let out = tripload(&w, &db, &["load", "landing"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(w.exists("failed/ctl.csv") && !w.exists("landing/ctl.csv"));
    let why = w.read("failed/ctl.csv.error.txt");
    assert!(
        why.contains("2 bad lines") && why.contains("line 6"),
        "{why}"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM regions WHERE name ~ '[[:cntrl:]]'"),
        0
    );
}

/// A file of `good` rows with bad lines among them, one bad record spanning
/// three lines and two blank lines. Returns it with the bad lines' numbers.
fn mixed_file() -> (Vec<u8>, Vec<u64>, u64) {
    let rows = trips(200, 5);
    let mut out = vec![rows[0].clone()];
    let mut bad = Vec::new();
    let mut good = 0;
    // The physical line the next pushed string starts on.
    let next_line = |out: &Vec<String>| {
        out.iter()
            .map(|s| 1 + s.matches('\n').count() as u64)
            .sum::<u64>()
            + 1
    };
    for (i, r) in rows[1..].iter().enumerate() {
        if i % 20 == 7 {
            bad.push(next_line(&out));
            out.push(r.replacen("POINT (", "POINT (999 ", 1));
        }
        if i == 50 {
            out.push(String::new());
            out.push("\r".into());
        }
        if i == 100 {
            // Three physical lines, one record, one bad datetime.
            let start = next_line(&out);
            bad.extend([start, start + 1, start + 2]);
            out.push("\"Pra\nh\na\",POINT (1 2),POINT (3 4),yesterday,x".into());
        }
        out.push(r.clone());
        good += 1;
    }
    ((out.join("\n") + "\n").into_bytes(), bad, good)
}

#[test]
fn every_line_is_a_row_a_rejected_line_a_blank_line_or_the_header() {
    let (content, bad, good) = mixed_file();
    let physical = content.iter().filter(|&&b| b == b'\n').count() as u64;
    let (header, blank) = (1, 2);
    assert_eq!(good + bad.len() as u64 + blank + header, physical);
    let db = fresh_db();
    let w = Work::new();
    w.land("mixed.csv", &content);
    let out = tripload(&w, &db, &["load", "landing", "--max-rejects", "100"]);
    let so = stdout(&out);
    assert!(out.status.success(), "{so}\n{}", stderr(&out));
    // Summary: file, status, rows loaded, lines rejected.
    let row = so.lines().find(|l| l.starts_with("mixed.csv")).expect(&so);
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[2], good.to_string(), "{so}");
    assert_eq!(cells[3], bad.len().to_string(), "{so}");
    assert!(so.contains("lines rejected"), "{so}");
    assert!(stderr(&out).contains(&format!("({} lines rejected, 2 blank)", bad.len())));
    // Ledger.
    let r = &db.query("SELECT rows_loaded, rows_rejected FROM load_files")[0];
    assert_eq!(
        (r.get::<_, i64>(0), r.get::<_, i64>(1)),
        (good as i64, bad.len() as i64)
    );
    // Events.
    let committed = event_payloads(&db, "committed");
    assert_eq!(committed.len(), 1);
    assert_eq!(committed[0]["rows"], good);
    assert_eq!(committed[0]["rows_rejected"], bad.len() as u64);
    // The rejects file lists each bad record at its first line.
    let mut rdr = csv::Reader::from_path(w.path("processed/mixed.csv.rejects.csv")).unwrap();
    let lines: Vec<u64> = rdr
        .records()
        .map(|r| r.unwrap()[1].parse().unwrap())
        .collect();
    let starts: Vec<u64> = bad
        .iter()
        .copied()
        .filter(|l| !bad.contains(&(l - 1)))
        .collect();
    assert_eq!(lines, starts);
}

#[test]
fn a_strict_file_lists_every_bad_line() {
    let (content, bad, _) = mixed_file();
    for max in ["0", "3"] {
        let db = fresh_db();
        let w = Work::new();
        w.land("mixed.csv", &content);
        let out = tripload(&w, &db, &["load", "landing", "--max-rejects", max]);
        assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
        assert_eq!(db.trips(), 0);
        assert_eq!(db.count("SELECT count(*) FROM load_files"), 0);
        let mut rdr = csv::Reader::from_path(w.path("failed/mixed.csv.rejects.csv")).unwrap();
        let listed = rdr.records().count();
        assert_eq!(listed, bad.len() - 2, "every bad record listed (max {max})");
        let why = w.read("failed/mixed.csv.error.txt");
        let count = format!("{} bad lines, more than --max-rejects {max}", bad.len());
        assert!(
            why.contains(&count) && why.contains("every one is listed"),
            "{why}"
        );
        assert!(why.contains(&format!("line {}", bad[0])), "{why}");
        let failed = event_payloads(&db, "failed");
        assert_eq!(failed[0]["rows_rejected"], bad.len() as u64);
        assert!(failed[0]["reason"].as_str().unwrap().contains(&count));
        // Where: the first bad line, as a field.
        assert_eq!(failed[0]["line"], bad[0], "{}", failed[0]);
        assert!(why.contains(&format!("\nline: {}\n", bad[0])), "{why}");
    }
}

#[test]
fn raw_text_is_capped_and_escaped_and_outputs_are_no_more_readable_than_the_input() {
    // A header with a huge, hostile column name: the file fails.
    let evil = format!("\x1b]0;pwned\x07{}", "A".repeat(100_000));
    let db = fresh_db();
    let w = Work::new();
    let p = w.land("evil.csv", format!("region,{evil}\n").as_bytes());
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = tripload(&w, &db, &["load", "landing"]);
    assert_eq!(out.status.code(), Some(1));
    let why = w.read("failed/evil.csv.error.txt");
    let reason = &event_payloads(&db, "failed")[0]["reason"];
    for text in [
        why.as_str(),
        &stdout(&out),
        &stderr(&out),
        reason.as_str().unwrap(),
    ] {
        assert!(text.len() < 2000, "{} bytes", text.len());
        assert!(!text.contains('\x1b') && !text.contains('\x07'), "{text:?}");
    }
    assert!(why.contains("\\x1B]0;pwned\\x07AAA"), "{why}");
    let mode = |p: std::path::PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(w.path("failed/evil.csv.error.txt")), 0o600);

    // A rejected row of 30 KB keeps a 4 KiB excerpt; the rejects file takes
    // the input's permissions.
    let mut lines = trips(20, 1);
    lines[3] = format!("{}{}", lines[3], "\x01".repeat(30_000));
    let w = Work::new();
    let p = w.land("long.csv", (lines.join("\n") + "\n").as_bytes());
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = tripload(&w, &db, &["load", "landing", "--max-rejects", "1"]);
    assert!(out.status.success(), "{}", stdout(&out));
    let rejects = w.read("processed/long.csv.rejects.csv");
    assert!(rejects.len() < 5000, "{}", rejects.len());
    assert!(!rejects.contains('\x01'));
    assert!(rejects.contains("bytes in all]"), "{rejects}");
    assert_eq!(mode(w.path("processed/long.csv.rejects.csv")), 0o640);
}
