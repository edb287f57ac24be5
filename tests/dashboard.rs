//! The dashboard in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`, which `scripts/setup.sh` installs in test mode), driven
//! over WebDriver: while a real `tripload load` runs, the page shows the
//! file's progress bar and then its committed row count; a region picked in
//! the form, and a box dragged on the map, show the weekly average the CLI
//! prints; a screenshot is saved
//! (to `$TRIPLOAD_SCREENSHOT` when set: that is how docs/dashboard.png is
//! made).
//!
//! Chromium missing is a failure, not a skip: CI's setup installs it.

mod common;
use common::serve::serve;
use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::FutureExt;
use serde_json::{json, Value};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// A chromedriver listening on a free loopback port (killed when dropped).
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local address").port()
}

/// Starts chromedriver and waits until it says it is ready.
fn chromedriver(log: &Path) -> Driver {
    for bin in [CHROMEDRIVER, CHROMIUM] {
        assert!(
            Path::new(bin).exists(),
            "{bin} is missing: install Debian's chromium and chromium-driver \
             (TRIPLOAD_SETUP_TESTS=1 scripts/setup.sh, as ./test.sh does)"
        );
    }
    let port = free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .arg(format!("--log-path={}", log.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = agent.get(&format!("{}/status", driver.url)).call() {
            let v: Value =
                serde_json::from_str(&r.into_string().unwrap_or_default()).unwrap_or_default();
            if v["value"]["ready"] == true {
                return driver;
            }
        }
        assert!(
            Instant::now() < deadline,
            "chromedriver did not get ready: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A headless Chromium session; runs as root in CI, hence `--no-sandbox`.
async fn browser(driver: &Driver, profile: &Path) -> Client {
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--window-size=1280,1800",
                "--hide-scrollbars",
                format!("--user-data-dir={}", profile.display()),
            ],
        },
    });
    let serde_json::Value::Object(caps) = caps else {
        unreachable!()
    };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("open a Chromium session")
}

/// Runs `script` in the page until it returns something other than null
/// (that value), or fails after `secs` saying what it waited for.
async fn wait_for(c: &Client, what: &str, secs: u64, script: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let v = c.execute(script, vec![]).await.expect("run a script");
        if !v.is_null() {
            return v;
        }
        if Instant::now() > deadline {
            let error = c
                .execute(
                    "return document.getElementById('error').textContent",
                    vec![],
                )
                .await
                .unwrap_or_default();
            panic!("the page never showed {what} (page error: {error})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Records every state of the live-ingestion rows as the page changes them,
/// so that a progress row seen for a moment is not missed between polls.
const WATCH_INFLIGHT: &str = r#"
window.seenInflight = [];
const table = document.getElementById('inflight');
new MutationObserver(() => {
  for (const tr of table.tBodies[0].rows) {
    const bar = tr.querySelector('.bar');
    window.seenInflight.push({
      file: tr.dataset.file,
      state: tr.cells[1].textContent,
      pct: bar ? Number(bar.dataset.pct) : null,
      rows: tr.querySelector('.rows').textContent,
    });
  }
}).observe(table, { childList: true, subtree: true });
return true;
"#;

/// Where a longitude/latitude is on the map, in viewport pixels (from the
/// page's own projection).
const MAP_POINTS: &str = r#"
const canvas = document.getElementById('map');
canvas.scrollIntoView({ block: 'center' });
const p = projector(canvas), r = canvas.getBoundingClientRect();
return arguments[0].map(([lon, lat]) => [
  Math.round(r.left + (p.x(lon) * r.width) / canvas.width),
  Math.round(r.top + (p.y(lat) * r.height) / canvas.height),
]);
"#;

/// Drags a box on the map with the mouse, as a person would: the page asks
/// for that box's weekly counts (by origin) and shows the CLI's average.
async fn drag_a_box_around_prague(c: &Client, w: &Work, db: &TestDb) {
    use fantoccini::actions::{InputSource, MouseActions, PointerAction, MOUSE_BUTTON_LEFT};
    let points = c
        .execute(MAP_POINTS, vec![json!([[14.25, 49.95], [14.65, 50.15]])])
        .await
        .expect("project the box");
    let xy = |i: usize| {
        let p = &points[i];
        (p[0].as_f64().expect("x"), p[1].as_f64().expect("y"))
    };
    let ((x0, y0), (x1, y1)) = (xy(0), xy(1));
    assert!(
        x1 - x0 >= 4.0 && y0 - y1 >= 4.0,
        "the box is too small to drag: {points}"
    );
    let drag = MouseActions::new("mouse".into())
        .then(PointerAction::MoveTo {
            duration: None,
            x: x0,
            y: y0,
        })
        .then(PointerAction::Down {
            button: MOUSE_BUTTON_LEFT,
        })
        .then(PointerAction::MoveTo {
            duration: Some(Duration::from_millis(200)),
            x: x1,
            y: y1,
        })
        .then(PointerAction::Up {
            button: MOUSE_BUTTON_LEFT,
        });
    c.perform_actions(drag).await.expect("drag a box");
    let shown = wait_for(
        c,
        "the box's weekly average",
        20,
        r#"const a = document.getElementById('avg'), area = document.getElementById('area').textContent;
           return area.startsWith('bbox ') && map.box && a.dataset.value
             ? { area, box: map.box.join(','), value: a.dataset.value } : null"#,
    )
    .await;
    let bbox = shown["box"].as_str().expect("the box");
    let out = tripload(w, db, &["weekly", "--bbox", bbox, "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cli: Value = serde_json::from_str(&stdout(&out)).expect("weekly JSON");
    assert!(cli["total_trips"].as_i64().unwrap_or(0) > 100, "{cli}");
    assert_eq!(shown["area"], cli["area"], "{shown} vs {cli}");
    let page_avg: f64 = shown["value"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("not a number: {shown}"));
    assert_eq!(
        Some(page_avg),
        cli["weekly_average"].as_f64(),
        "{shown} vs {cli}"
    );
}

fn screenshot_path(w: &Work) -> PathBuf {
    match std::env::var("TRIPLOAD_SCREENSHOT") {
        Ok(p) if !p.is_empty() => Path::new(env!("CARGO_MANIFEST_DIR")).join(p),
        _ => w.path("dashboard.png"),
    }
}

const ROWS: u64 = 600_000;

#[test]
fn dashboard_shows_a_load_live_and_the_weekly_average_the_cli_prints() {
    let db = fresh_db();
    let w = Work::new();
    w.land("sample.csv", &sample());
    let out = tripload(&w, &db, &["load", "landing", "--quiet"]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::write(w.path("big.csv"), tripload::gen::trips_csv(ROWS, 25)).expect("write big.csv");
    let s = serve(&w, &db);
    let driver = chromedriver(&w.path("chromedriver.log"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let c = browser(&driver, &w.path("profile")).await;
        // The browser is closed whatever happens (no Chromium left behind).
        let result = AssertUnwindSafe(drive(&c, &s.base, &w, &db))
            .catch_unwind()
            .await;
        let _ = c.close().await;
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    });
}

async fn drive(c: &Client, base: &str, w: &Work, db: &TestDb) {
    c.goto(&format!("{base}/"))
        .await
        .expect("open the dashboard");
    wait_for(
        c,
        "the event stream connected",
        20,
        "return document.getElementById('conn').textContent === 'live' ? true : null",
    )
    .await;
    c.execute(WATCH_INFLIGHT, vec![]).await.expect("watch rows");

    // A real load, with progress events every 100 ms.
    let t = Instant::now();
    let out = tripload(
        w,
        db,
        &["load", "big.csv", "--progress-every-ms", "100", "--quiet"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let load_secs = t.elapsed().as_secs_f64();
    // The test harness's queries run their own runtime: off this one's thread.
    let progress_events = std::thread::scope(|t| {
        t.spawn(|| {
            db.count(
                "SELECT count(*) FROM ingestion_events WHERE kind = 'progress' AND file_name = 'big.csv'",
            )
        })
        .join()
        .expect("count progress events")
    });
    assert!(
        progress_events > 0,
        "the load ({load_secs:.1} s) sent no progress event"
    );

    // Its outcome: committed, with every row, and the live row gone.
    let committed = wait_for(
        c,
        "big.csv committed",
        30,
        r#"const tr = document.querySelector('#outcomes tbody tr[data-file="big.csv"]');
           return tr && tr.querySelector('.outcome').textContent === 'committed'
             ? { rows: tr.querySelector('.rows').textContent,
                 live: document.querySelectorAll('#inflight tbody tr[data-file="big.csv"]').length }
             : null"#,
    )
    .await;
    assert_eq!(
        committed["rows"].as_str().map(|r| r.replace(',', "")),
        Some(ROWS.to_string()),
        "{committed}"
    );
    assert_eq!(committed["live"], 0, "{committed}");

    // While it loaded, the page showed its row with a moving progress bar.
    let seen = c
        .execute("return window.seenInflight", vec![])
        .await
        .expect("read the recorded rows");
    let seen: Vec<&Value> = seen
        .as_array()
        .expect("a list")
        .iter()
        .filter(|r| r["file"] == "big.csv")
        .collect();
    let progress: Vec<f64> = seen
        .iter()
        .filter(|r| r["state"] == "progress")
        .filter_map(|r| r["pct"].as_f64())
        .collect();
    assert!(
        progress.iter().any(|p| *p > 0.0 && *p <= 100.0),
        "no progress bar for big.csv in {seen:?} ({progress_events} progress events in {load_secs:.1} s)"
    );
    assert!(
        progress.windows(2).all(|p| p[0] <= p[1]),
        "the bar went backwards: {progress:?}"
    );

    // A region picked in the form: the weekly average the CLI prints.
    c.find(Locator::Css("#mode"))
        .await
        .expect("#mode")
        .select_by_value("region")
        .await
        .expect("choose region");
    c.find(Locator::Css("#region"))
        .await
        .expect("#region")
        .send_keys("Prague")
        .await
        .expect("type a region");
    c.find(Locator::Css("#query button[type=submit]"))
        .await
        .expect("the Query button")
        .click()
        .await
        .expect("click Query");
    let shown = wait_for(
        c,
        "Prague's weekly average",
        20,
        r#"const a = document.getElementById('avg');
           return document.getElementById('area').textContent === 'region Prague' && a.dataset.value
             ? { value: a.dataset.value, text: a.textContent } : null"#,
    )
    .await;
    let out = tripload(w, db, &["weekly", "--region", "Prague", "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cli: Value = serde_json::from_str(&stdout(&out)).expect("weekly JSON");
    let cli_avg = cli["weekly_average"].as_f64().expect("weekly_average");
    assert!(cli["total_trips"].as_i64().unwrap_or(0) > 100, "{cli}");
    let page_avg: f64 = shown["value"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("not a number: {shown}"));
    assert_eq!(page_avg, cli_avg, "{shown} vs {cli}");
    assert_eq!(shown["text"], format!("{cli_avg:.3}"), "{shown}");
    // The groups table filled too.
    wait_for(
        c,
        "Prague's trip groups",
        20,
        "return document.querySelectorAll('#groups tbody tr').length > 0 ? true : null",
    )
    .await;

    drag_a_box_around_prague(c, w, db).await;
    c.find(Locator::Css("#zoom-box"))
        .await
        .expect("#zoom-box")
        .click()
        .await
        .expect("zoom to the box");
    c.execute("window.scrollTo(0, 0); return true", vec![])
        .await
        .expect("scroll to the top");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let png = c.screenshot().await.expect("screenshot");
    assert!(
        png.len() > 10_000 && png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG screenshot ({} bytes)",
        png.len()
    );
    let path = screenshot_path(w);
    std::fs::write(&path, &png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
