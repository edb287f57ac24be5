//! `tripload serve` against the real binary and a real database: every
//! endpoint, JSON equal to the CLI's, bad input answered 400, the event
//! stream in order and resumed with Last-Event-ID, authentication and
//! listening rules, uploads, and a read-only database role.

mod common;
use common::serve::{serve, serve_with, spawn_listening, Server};
use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build()
}

/// Status and body of a request (any status).
fn call(req: ureq::Request) -> (u16, String) {
    match req.call() {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("request failed: {e}"),
    }
}

fn get(s: &Server, path: &str) -> (u16, String) {
    call(agent().get(&format!("{}{path}", s.base)))
}

fn get_json(s: &Server, path: &str) -> Value {
    let (code, body) = get(s, path);
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

fn cli_json(w: &Work, db: &TestDb, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend_from_slice(&["--format", "json"]);
    let out = tripload(w, db, &a);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    serde_json::from_str(&stdout(&out)).unwrap()
}

fn loaded(w: &Work, db: &TestDb) {
    w.land("sample.csv", &sample());
    let out = tripload(w, db, &["load", "landing", "--quiet"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

const PRAGUE: &str = "14.2,49.9,14.8,50.2";

#[test]
fn weekly_and_groups_answer_exactly_what_the_cli_prints() {
    let db = fresh_db();
    let w = Work::new();
    loaded(&w, &db);
    let s = serve(&w, &db);
    // A region without trips: the CLI exits 2 naming the known regions, the
    // API answers 400 with the same words.
    let out = tripload(&w, &db, &["weekly", "--region", "Nowhere"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    for path in ["/api/weekly?region=Nowhere", "/api/groups?region=Nowhere"] {
        let (code, body) = get(&s, path);
        assert_eq!(code, 400, "{path}: {body}");
        assert!(
            body.contains("unknown region") && body.contains("Prague"),
            "{path}: {body}"
        );
    }
    let cases: Vec<(String, Vec<&str>)> = vec![
        ("region=Prague".into(), vec!["--region", "Prague"]),
        (format!("bbox={PRAGUE}"), vec!["--bbox", PRAGUE]),
        (
            format!("bbox={PRAGUE}&by=destination"),
            vec!["--bbox", PRAGUE, "--by", "destination"],
        ),
        (
            format!("bbox={PRAGUE}&by=both"),
            vec!["--bbox", PRAGUE, "--by", "both"],
        ),
        (
            "region=Turin&from=2018-05-14&to=2018-05-27".into(),
            vec![
                "--region",
                "Turin",
                "--from",
                "2018-05-14",
                "--to",
                "2018-05-27",
            ],
        ),
        (
            format!("bbox={PRAGUE}&by=origin&from=2018-05-21&to=2018-06-30"),
            vec![
                "--bbox",
                PRAGUE,
                "--from",
                "2018-05-21",
                "--to",
                "2018-06-30",
            ],
        ),
    ];
    let mut nonzero = 0;
    for (query, args) in &cases {
        let api = get_json(&s, &format!("/api/weekly?{query}"));
        let mut cli_args = vec!["weekly"];
        cli_args.extend_from_slice(args);
        let cli = cli_json(&w, &db, &cli_args);
        assert_eq!(api, cli, "weekly {query}");
        if api["total_trips"].as_i64().unwrap() > 0 {
            nonzero += 1;
        }
    }
    assert!(nonzero >= 5, "the cases must find trips");
    for (query, args) in [
        ("region=Prague", vec!["--region", "Prague"]),
        (
            "bbox=14.2,49.9,14.8,50.2&by=destination&top=3",
            vec!["--bbox", PRAGUE, "--by", "destination", "--top", "3"],
        ),
        (
            "bucket_minutes=15&cell_deg=0.05",
            vec!["--bucket-minutes", "15", "--cell-deg", "0.05"],
        ),
    ] {
        let api = get_json(&s, &format!("/api/groups?{query}"));
        let mut cli_args = vec!["groups"];
        cli_args.extend_from_slice(&args);
        assert_eq!(api, cli_json(&w, &db, &cli_args), "groups {query}");
        assert!(
            !api["groups"].as_array().unwrap().is_empty(),
            "groups {query}"
        );
    }
}

#[test]
fn every_class_of_bad_input_is_a_400_that_says_what() {
    let db = fresh_db();
    let w = Work::new();
    assert!(tripload(&w, &db, &["db", "migrate"]).status.success());
    let s = serve(&w, &db);
    for (path, says) in [
        ("/api/weekly", "missing region"),
        ("/api/weekly?bbox=1,2,3", "four numbers"),
        ("/api/weekly?bbox=a,b,c,d", "four numbers"),
        ("/api/weekly?bbox=15,50,14,51", "MINLON <= MAXLON"),
        ("/api/weekly?bbox=14,91,15,92", "latitudes"),
        ("/api/weekly?region=Prague&by=sideways", "by="),
        ("/api/weekly?region=Prague&from=2018-13-01", "YYYY-MM-DD"),
        ("/api/weekly?region=Prague&to=yesterday", "YYYY-MM-DD"),
        ("/api/weekly?region=Prague&from=2018-5-1", "YYYY-MM-DD"),
        ("/api/cells?to=%2B2018-05-01", "YYYY-MM-DD"),
        (
            "/api/weekly?region=Prague&from=2018-06-01&to=2018-05-01",
            "after",
        ),
        ("/api/weekly?region=Prague&bbox=1,2,3,4", "not both"),
        ("/api/weekly?region=Prague&colour=red", "unknown parameter"),
        ("/api/weekly?region=A&region=B", "twice"),
        ("/api/groups?top=0", "top="),
        ("/api/groups?bucket_minutes=2000", "bucket_minutes="),
        ("/api/groups?cell_deg=-1", "cell_deg="),
        ("/api/files?limit=x", "limit="),
        ("/api/cells?by=both", "by="),
        ("/api/cells?from=2018-02-30", "YYYY-MM-DD"),
        ("/api/events?after=abc", "event id"),
        ("/api/events?catch_up=-1", "catch_up="),
    ] {
        let (code, body) = get(&s, path);
        assert_eq!(code, 400, "{path}: {body}");
        let v: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(msg.contains(says), "{path}: {msg}");
    }
    let (code, body) = get(&s, "/api/nothing");
    assert_eq!(code, 404, "{body}");
}

#[test]
fn files_cells_health_metrics_openapi_and_dashboard() {
    let db = fresh_db();
    let w = Work::new();
    loaded(&w, &db);
    let s = serve(&w, &db);
    let files = get_json(&s, "/api/files?limit=5");
    let f = &files["files"][0];
    assert_eq!(f["file"], "sample.csv");
    assert_eq!(f["status"], "committed");
    assert_eq!(f["rows_loaded"], 100);
    assert_eq!(f["rows_rejected"], 0);
    assert!(f["content_hash"].as_str().unwrap().starts_with("xxh3-128:"));

    // Cells: trips per origin cell add up to every trip; a window narrows them.
    let cells = get_json(&s, "/api/cells?by=origin");
    let sum = |v: &Value| -> i64 {
        v["cells"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c[2].as_i64().unwrap())
            .sum()
    };
    assert_eq!(sum(&cells), 100);
    assert_eq!(cells["cell_deg"], 0.01);
    assert_eq!(sum(&get_json(&s, "/api/cells?by=destination")), 100);
    let week = cli_json(
        &w,
        &db,
        &[
            "weekly",
            "--bbox",
            "-180,-90,180,90",
            "--from",
            "2018-05-21",
            "--to",
            "2018-05-27",
        ],
    );
    let windowed = get_json(&s, "/api/cells?by=origin&from=2018-05-21&to=2018-05-27");
    assert_eq!(sum(&windowed), week["total_trips"].as_i64().unwrap());
    assert!(sum(&windowed) < 100 && sum(&windowed) > 0);
    // The cell of the first sample trip (Prague, 14.497 50.001).
    assert!(cells["cells"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c[0] == 1449 && c[1] == 5000));

    assert_eq!(get_json(&s, "/healthz")["status"], "ok");

    let (code, metrics) = get(&s, "/metrics");
    assert_eq!(code, 200, "{metrics}");
    for line in [
        "tripload_files{status=\"committed\"} 1",
        "tripload_rows_loaded 100",
        "tripload_rows_rejected 0",
        "tripload_load_duration_seconds_count 1",
        "tripload_load_duration_seconds_bucket{le=\"+Inf\"} 1",
        "# EOF",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing:\n{metrics}"
        );
    }
    assert!(metrics.contains("tripload_last_commit_timestamp_seconds "));

    let doc = get_json(&s, "/api/openapi.json");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for p in [
        "/api/weekly",
        "/api/groups",
        "/api/files",
        "/api/cells",
        "/api/events",
        "/api/landing/{name}",
        "/api/ingest",
        "/healthz",
        "/metrics",
    ] {
        assert!(doc["paths"].get(p).is_some(), "{p} not documented");
    }

    let (code, page) = get(&s, "/");
    assert_eq!(code, 200);
    assert!(
        page.contains("/assets/dashboard.js") && page.contains("<canvas"),
        "{page}"
    );
    let (code, js) = get(&s, "/assets/dashboard.js");
    assert_eq!(code, 200);
    assert!(js.contains("EventSource"));
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no external assets"
    );
    assert_eq!(get(&s, "/assets/../Cargo.toml").0, 404);
}

/// Reads SSE events (id, JSON data) from a stream into a channel.
fn sse(s: &Server, query: &str, last_id: Option<i64>) -> std::sync::mpsc::Receiver<(i64, Value)> {
    let mut req = agent().get(&format!("{}/api/events{query}", s.base));
    if let Some(id) = last_id {
        req = req.set("Last-Event-ID", &id.to_string());
    }
    let resp = req.call().expect("event stream");
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = BufReader::new(resp.into_reader());
    std::thread::spawn(move || {
        let mut id = None;
        for line in reader.lines().map_while(Result::ok) {
            if let Some(v) = line.strip_prefix("id: ").or(line.strip_prefix("id:")) {
                id = v.trim().parse::<i64>().ok();
            } else if let Some(d) = line.strip_prefix("data: ").or(line.strip_prefix("data:")) {
                let v: Value = serde_json::from_str(d).unwrap();
                if tx.send((id.take().expect("id before data"), v)).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

#[test]
fn event_stream_delivers_a_load_in_order_and_resumes_after_last_event_id() {
    let db = fresh_db();
    let w = Work::new();
    assert!(tripload(&w, &db, &["db", "migrate"]).status.success());
    let s = serve(&w, &db);
    let live = sse(&s, "?catch_up=0", None);
    std::thread::sleep(Duration::from_millis(500));
    let mut watcher = tripload_cmd(&w, &db, &["watch", "landing", "--quiet"])
        .env("TRIPLOAD_PROGRESS_EVERY_MS", "50")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    std::fs::write(
        w.path("landing/.e.csv"),
        tripload::gen::trips_csv(400_000, 9),
    )
    .unwrap();
    std::fs::rename(w.path("landing/.e.csv"), w.path("landing/e.csv")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut got: Vec<(i64, Value)> = Vec::new();
    while !got.iter().any(|(_, v)| v["event"] == "committed") {
        let e = live
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("events before the deadline");
        got.push(e);
    }
    unsafe { libc::kill(watcher.id() as i32, libc::SIGTERM) };
    let _ = watcher.wait();
    let kinds: Vec<&str> = got
        .iter()
        .map(|(_, v)| v["event"].as_str().unwrap())
        .collect();
    assert_eq!(&kinds[..2], &["claimed", "started"], "{kinds:?}");
    assert!(
        kinds[2..kinds.len() - 1].iter().all(|k| *k == "progress") && kinds.len() > 3,
        "{kinds:?}"
    );
    assert_eq!(kinds.last(), Some(&"committed"));
    let (last_id, committed) = got.last().unwrap();
    assert_eq!(committed["rows"], 400_000);
    assert_eq!(committed["file"], "e.csv");
    // ids are the table's, increasing, and equal to the payload's id.
    assert!(got.windows(2).all(|p| p[0].0 < p[1].0));
    assert!(got.iter().all(|(id, v)| v["id"].as_i64() == Some(*id)));
    assert_eq!(
        db.count("SELECT max(id) FROM ingestion_events WHERE kind = 'committed'"),
        *last_id
    );

    // A client that saw up to `started` reconnects and gets the rest, in order.
    let started_id = got[1].0;
    let resumed = sse(&s, "", Some(started_id));
    let mut again = Vec::new();
    while again.len() < got.len() - 2 {
        again.push(
            resumed
                .recv_timeout(Duration::from_secs(30))
                .expect("resumed events"),
        );
    }
    assert_eq!(again, got[2..].to_vec());
    // Without Last-Event-ID: the last `catch_up` events.
    let recent = sse(&s, "?catch_up=2", None);
    let a = recent.recv_timeout(Duration::from_secs(30)).unwrap();
    let b = recent.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(b.0, *last_id);
    assert!(a.0 < b.0);
}

#[test]
fn watch_serve_loads_serves_and_stops_on_sigterm() {
    let db = fresh_db();
    let w = Work::new();
    let mut s = spawn_listening(
        tripload_cmd(&w, &db, &["watch", "landing", "--serve", "127.0.0.1:0"]),
        "watching ",
    );
    let addr = s.base.trim_start_matches("http://").to_string();
    // The watcher has migrated the schema: the event stream can start.
    let live = sse(&s, "?catch_up=0", None);
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(
        w.path("landing/.ws.csv"),
        tripload::gen::trips_csv(5_000, 4),
    )
    .unwrap();
    std::fs::rename(w.path("landing/.ws.csv"), w.path("landing/ws.csv")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let committed = loop {
        let (id, e) = live
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the committed event before the deadline");
        assert_eq!(e["file"], "ws.csv", "{e}");
        if e["event"] == "committed" {
            break (id, e);
        }
    };
    assert_eq!(committed.1["rows"], 5_000);
    assert!(w.exists("processed/ws.csv"));

    let files = get_json(&s, "/api/files");
    let f = &files["files"][0];
    assert_eq!(f["file"], "ws.csv", "{files}");
    assert_eq!(f["status"], "committed");
    assert_eq!(f["rows_loaded"], 5_000);
    assert_eq!(get_json(&s, "/healthz")["status"], "ok");

    // SIGTERM stops the watcher and the server (the open event stream
    // included), exit 0, nothing listens any more.
    unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "still running 30 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "{addr} still accepts connections"
    );
    assert!(
        matches!(
            live.recv_timeout(Duration::from_secs(5)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
        ),
        "the event stream did not end"
    );
}

/// Headless Chromium driven over WebDriver (Debian's chromium-driver).
struct Browser {
    driver: Child,
    url: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = agent().delete(&self.url).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// A WebDriver command's `value`.
fn webdriver(req: ureq::Request, body: Value) -> Value {
    let resp = req
        .set("Content-Type", "application/json")
        .send_string(&body.to_string());
    let (code, text) = match resp {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("webdriver: {e}"),
    };
    assert_eq!(code, 200, "webdriver: {text}");
    serde_json::from_str::<Value>(&text).unwrap()["value"].clone()
}

impl Browser {
    fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = std::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is needed: apt-get install -y chromium chromium-driver");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while agent().get(&format!("{base}/status")).call().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = serde_json::json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"]}}}});
        let mut b = Browser {
            driver,
            url: String::new(),
        };
        let v = webdriver(agent().post(&format!("{base}/session")), caps);
        b.url = format!("{base}/session/{}", v["sessionId"].as_str().unwrap());
        b
    }

    fn goto(&self, url: &str) {
        webdriver(
            agent().post(&format!("{}/url", self.url)),
            serde_json::json!({ "url": url }),
        );
    }

    /// Runs `script` (a function body) until it returns something other
    /// than null, and returns that.
    fn wait_for(&self, script: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v = webdriver(
                agent().post(&format!("{}/execute/sync", self.url)),
                serde_json::json!({ "script": script, "args": [] }),
            );
            if !v.is_null() {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for: {script}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Once the committed files are shown: the highlighted rows' files, and the
/// note naming the file (null while the note is hidden).
const FOCUS_STATE: &str = "
    if (document.querySelectorAll('#files tbody tr').length < 2) return null;
    const note = document.getElementById('focus-note');
    return {
        focused: [...document.querySelectorAll('tr.focus')].map((r) => r.dataset.file),
        note: note.hidden ? null : document.getElementById('focus-name').textContent,
    };";

#[test]
fn the_dashboard_highlights_the_file_a_link_names() {
    let db = fresh_db();
    let w = Work::new();
    loaded(&w, &db);
    let name = "o d&<x>.csv";
    w.land(name, &tripload::gen::trips_csv(10, 5));
    let out = tripload(&w, &db, &["load", "landing", "--quiet"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s = serve(&w, &db);
    let b = Browser::start();
    // As a mailed report links it: the name percent-encoded.
    b.goto(&format!("{}/#file=o%20d%26%3Cx%3E.csv", s.base));
    // Its rows (committed files, and recent outcomes once the event stream
    // has caught up) and only those are highlighted.
    let only = |st: &Value, file: &str| {
        let f = st["focused"].as_array().unwrap();
        !f.is_empty() && f.iter().all(|x| x == file)
    };
    let st = b.wait_for(FOCUS_STATE);
    assert!(only(&st, name), "{st}");
    assert_eq!(st["note"], name);
    // Another file, by changing the fragment.
    webdriver(
        agent().post(&format!("{}/execute/sync", b.url)),
        serde_json::json!({ "script": "location.hash = 'file=sample.csv'", "args": [] }),
    );
    let st = b.wait_for(&format!(
        "return document.getElementById('focus-name').textContent === 'sample.csv' ? (() => {{ {FOCUS_STATE} }})() : null;"
    ));
    assert!(only(&st, "sample.csv"), "{st}");
    // Without a fragment nothing is highlighted.
    b.goto(&format!("{}/", s.base));
    let st = b.wait_for(FOCUS_STATE);
    assert_eq!(st["focused"], serde_json::json!([]), "{st}");
    assert!(st["note"].is_null(), "{st}");
}

#[test]
fn a_token_is_required_when_configured_and_non_loopback_needs_one() {
    let db = fresh_db();
    let w = Work::new();
    loaded(&w, &db);
    // Refused before listening: a non-loopback address without a token.
    let out = tripload(&w, &db, &["serve", "--listen", "0.0.0.0:0"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("without a token"), "{}", stderr(&out));
    let out = tripload(
        &w,
        &db,
        &["serve", "--listen", "127.0.0.1:0", "--token", " "],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    let s = serve_with(&w, &db, &[], &[("TRIPLOAD_SERVE_TOKEN", "s3cret-token")]);
    let (code, body) = get(&s, "/api/weekly?region=Prague");
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("token"));
    let url = format!("{}/api/weekly?region=Prague", s.base);
    assert_eq!(
        call(agent().get(&url).set("Authorization", "Bearer wrong")).0,
        401
    );
    let (code, body) = call(
        agent()
            .get(&url)
            .set("Authorization", "Bearer s3cret-token"),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        get(&s, "/api/weekly?region=Prague&token=s3cret-token").0,
        200
    );
    assert_eq!(get(&s, "/metrics").0, 401);
    // The page and the health check need no token; the page holds no data.
    assert_eq!(get(&s, "/").0, 200);
    assert_eq!(get(&s, "/healthz").0, 200);
}

#[test]
fn uploads_need_the_flag_and_the_token_and_land_complete() {
    let db = fresh_db();
    let w = Work::new();
    assert!(tripload(&w, &db, &["db", "migrate"]).status.success());
    let put = |s: &Server, name: &str, body: &[u8], token: Option<&str>| {
        let mut req = agent().put(&format!("{}/api/landing/{name}", s.base));
        if let Some(t) = token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        match req.send_bytes(body) {
            Ok(r) => (r.status(), r.into_string().unwrap()),
            Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap()),
            // The server answered (413) and closed before the body was all sent.
            Err(e) => (0, e.to_string()),
        }
    };
    {
        let off = serve(&w, &db);
        assert_eq!(put(&off, "a.csv", &sample(), None).0, 403);
        assert_eq!(
            call(agent().post(&format!("{}/api/ingest", off.base))).0,
            403
        );
    }
    let s = serve_with(
        &w,
        &db,
        &["--allow-upload", "--max-upload-mib", "1"],
        &[("TRIPLOAD_SERVE_TOKEN", "tok")],
    );
    assert_eq!(put(&s, "a.csv", &sample(), None).0, 401);
    assert!(!w.exists("landing/a.csv"));
    for bad in [".hidden.csv", "x.part", "a%2Fb.csv", "..", "%2E%2E%2Fetc"] {
        let (code, body) = put(&s, bad, b"x", Some("tok"));
        assert!(code == 400 || code == 404, "{bad}: {code} {body}");
    }
    let (code, body) = put(&s, "big.csv", &vec![b'x'; (1 << 20) + 1], Some("tok"));
    assert!(
        code == 413 || (code == 0 && body.contains("Broken pipe")),
        "{code} {body}"
    );
    assert!(!w.exists("landing/big.csv"));
    let (code, body) = put(&s, "empty.csv", b"", Some("tok"));
    assert_eq!(code, 400, "an empty body lands nothing: {body}");
    assert!(body.contains("empty"), "{body}");
    assert!(!w.exists("landing/empty.csv"));
    let (code, body) = put(&s, "a.csv", &sample(), Some("tok"));
    assert_eq!(code, 202, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["id"], tripload::ingest::map::hash_bytes(&sample()));
    assert_eq!(std::fs::read(w.path("landing/a.csv")).unwrap(), sample());
    assert_eq!(
        put(&s, "a.csv", b"other", Some("tok")).0,
        409,
        "never replaces"
    );
    // Nothing but the file itself is left in landing (no temporary names).
    let names: Vec<String> = std::fs::read_dir(w.path("landing"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["a.csv".to_string()]);
    // A symlink in landing is never written through.
    std::os::unix::fs::symlink(w.path("target.csv"), w.path("landing/link.csv")).unwrap();
    assert_eq!(put(&s, "link.csv", b"x", Some("tok")).0, 409);
    assert!(!w.exists("target.csv"));
    std::fs::remove_file(w.path("landing/link.csv")).unwrap();

    let ingest = format!("{}/api/ingest", s.base);
    assert_eq!(call(agent().post(&ingest)).0, 401);
    let (code, body) = call(agent().post(&ingest).set("Authorization", "Bearer tok"));
    assert_eq!(code, 202, "{body}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while db.count("SELECT count(*) FROM load_files WHERE committed_at IS NOT NULL") == 0 {
        assert!(Instant::now() < deadline, "the upload was not loaded");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(db.trips(), 100);
}

#[test]
fn a_read_only_role_is_enough_and_slow_queries_answer_503() {
    let db = fresh_db();
    let w = Work::new();
    loaded(&w, &db);
    let role = format!("ro_{}", db.name);
    for sql in [
        format!("CREATE ROLE {role} NOLOGIN"),
        format!("GRANT CONNECT ON DATABASE {} TO {role}", db.name),
        format!("GRANT USAGE ON SCHEMA public TO {role}"),
        format!("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"),
        format!("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO {role}"),
    ] {
        db.query(&sql);
    }
    // The test cluster lets only its own user in (pg_hba): the server's
    // sessions take the read-only role at connection start, so every query
    // runs with that role's privileges alone.
    let url = format!("{} options='-c role={role}'", db.conninfo);
    let s = serve_with(&w, &db, &[], &[("DATABASE_URL", url.as_str())]);
    let cli = cli_json(&w, &db, &["weekly", "--region", "Prague"]);
    assert_eq!(get_json(&s, "/api/weekly?region=Prague"), cli);
    let bbox = get_json(&s, &format!("/api/weekly?bbox={PRAGUE}&by=both"));
    assert!(bbox["total_trips"].as_i64().unwrap() > 0);
    get_json(&s, "/api/groups?region=Turin");
    get_json(&s, "/api/files");
    get_json(&s, "/api/cells");
    assert!(get(&s, "/metrics").0 == 200);
    let events = sse(&s, "?catch_up=1", None);
    assert_eq!(
        events.recv_timeout(Duration::from_secs(30)).unwrap().1["event"],
        "committed"
    );
    drop(s);

    // A statement timeout: the query is cancelled and answered 503, not hung.
    db.query(
        "CREATE OR REPLACE FUNCTION weekly_trips_region(p_region text, p_from date DEFAULT NULL, p_to date DEFAULT NULL)
         RETURNS TABLE(week date, trips bigint) LANGUAGE sql STABLE AS
         $$ SELECT NULL::date, count(*) FROM (SELECT pg_sleep(5)) s $$",
    );
    let s = serve_with(&w, &db, &["--statement-timeout", "0.3"], &[]);
    let t = Instant::now();
    let (code, body) = get(&s, "/api/weekly?region=Prague");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("statement timeout"), "{body}");
    assert!(t.elapsed() < Duration::from_secs(4));
}
