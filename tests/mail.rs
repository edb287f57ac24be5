//! Emailed reports against a real SMTP server (Debian's python3-aiosmtpd,
//! started by the test, storing mail in a Maildir), and a load that goes on
//! when the mail server is down.

mod common;
use common::*;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Smtp {
    child: Child,
    port: u16,
    maildir: tempfile::TempDir,
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python_with_aiosmtpd() -> PathBuf {
    for p in ["/usr/bin/python3", "python3"] {
        let ok = Command::new(p)
            .args(["-c", "import aiosmtpd"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            return PathBuf::from(p);
        }
    }
    panic!("aiosmtpd is needed for the mail tests: apt-get install -y python3-aiosmtpd (./test.sh does it)");
}

fn smtp() -> Smtp {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let maildir = tempfile::tempdir().unwrap();
    let child = Command::new(python_with_aiosmtpd())
        .args([
            "-m",
            "aiosmtpd",
            "-n",
            "-l",
            &format!("127.0.0.1:{port}"),
            "-c",
            "aiosmtpd.handlers.Mailbox",
        ])
        .arg(maildir.path().join("box"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start aiosmtpd");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "aiosmtpd did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Smtp {
        child,
        port,
        maildir,
    }
}

fn received(dir: &Path, n: usize) -> Vec<Vec<u8>> {
    let new = dir.join("box").join("new");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&new)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        if files.len() >= n {
            files.sort();
            return files.iter().map(|f| std::fs::read(f).unwrap()).collect();
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} mails, got {}",
            files.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn parts(raw: &[u8]) -> (mailparse::ParsedMail<'_>, String, String) {
    let m = mailparse::parse_mail(raw).unwrap();
    let mut text = String::new();
    let mut html = String::new();
    for p in &m.subparts {
        match p.ctype.mimetype.as_str() {
            "text/plain" => text = p.get_body().unwrap().replace("\r\n", "\n"),
            "text/html" => html = p.get_body().unwrap(),
            _ => {}
        }
    }
    (m, text, html)
}

#[test]
fn load_mails_one_report_per_run_with_the_figures() {
    let db = fresh_db();
    let w = Work::new();
    let server = smtp();
    w.land("a-sample.csv", &sample());
    let mut dirty = format!("{HEADER}\n").into_bytes();
    dirty.extend_from_slice(
        b"Turin,POINT (7.6 45.0),POINT (7.7 45.1),2018-05-21 02:54:04,baba_car\n",
    );
    dirty.extend_from_slice(
        b"Turin,POINT (7.6 95.0),POINT (7.7 45.1),2018-05-21 02:54:04,baba_car\n",
    );
    w.land("b-dirty.csv", &dirty);
    w.land("c-broken.csv", b"region,datetime\nx,y\n");
    // Over --max-rejects: rolled back; its name is HTML.
    let mut over = format!("{HEADER}\n").into_bytes();
    for _ in 0..3 {
        over.extend_from_slice(
            b"Turin,POINT (7.6 99.0),POINT (7.7 45.1),2018-05-21 02:54:04,baba_car\n",
        );
    }
    w.land(SCRIPT_NAME, &over);
    let url = format!("smtp://127.0.0.1:{}", server.port);
    let out = tripload(
        &w,
        &db,
        &[
            "load",
            "landing",
            "--max-rejects",
            "1",
            "--smtp-url",
            &url,
            "--report-to",
            "ops@example.com",
            "--report-from",
            "loader@example.com",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let mails = received(server.maildir.path(), 1);
    assert_eq!(mails.len(), 1, "one report per run");
    let (m, text, html) = parts(&mails[0]);
    use mailparse::MailHeaderMap;
    assert_eq!(
        m.headers.get_first_value("Subject").unwrap(),
        "[tripload] 2 files loaded (1 line rejected), 2 failed (3 lines rejected)",
        "the rolled-back file's lines are not counted with the loaded ones"
    );
    assert_eq!(
        m.headers.get_first_value("From").unwrap(),
        "loader@example.com"
    );
    assert_eq!(m.headers.get_first_value("To").unwrap(), "ops@example.com");
    assert!(m.ctype.mimetype.starts_with("multipart/alternative"));
    assert!(
        text.contains(
            "a-sample.csv\n  status:         loaded\n  rows loaded:    100\n  lines rejected: 0"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "b-dirty.csv\n  status:         loaded\n  rows loaded:    1\n  lines rejected: 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("line 3 [origin_coord]: latitude 95 is outside [-90, 90]"),
        "{text}"
    );
    assert!(text.contains("b-dirty.csv.rejects.csv"), "{text}");
    assert!(
        text.contains("c-broken.csv\n  status:         FAILED: ")
            && text.contains("missing required column(s)"),
        "{text}"
    );
    assert!(
        text.contains("total: 101 rows loaded, 1 line rejected in loaded files; 3 lines rejected in failed files"),
        "{text}"
    );
    assert!(text.contains(&format!("loader {}, ", host())), "{text}");

    // The HTML part: a row per file in its status colour, the totals of the
    // committed files, the rolled-back file's rejected lines apart.
    assert_eq!(
        cells(row(&html, "a-sample.csv"))[..4],
        ["a-sample.csv", "loaded", "100", "0"]
    );
    assert!(row(&html, "a-sample.csv").contains("#1a7f37"));
    assert_eq!(
        cells(row(&html, "b-dirty.csv"))[..4],
        ["b-dirty.csv", "loaded", "1", "1"]
    );
    assert!(row(&html, "c-broken.csv").contains("#cf222e"));
    assert_eq!(cells(row(&html, "c-broken.csv"))[1], "failed");
    assert_eq!(
        cells(row(&html, "data-row=\"total\""))[..5],
        ["Total, 4 files", "2 loaded · 2 failed", "101", "1", ""]
    );
    assert_eq!(
        cells(row(&html, "data-row=\"rolled-back\"")),
        [
            "Lines rejected in files that were rolled back (not in the total)",
            "3",
            ""
        ]
    );
    assert!(html.contains("latitude 95"), "{html}");
    assert!(html.contains("missing required column(s)"), "{html}");
    // Who loaded, and when.
    assert!(
        html.contains(&format!("data-field=\"host\">{}<", host())),
        "{html}"
    );
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    assert!(
        html.contains(&format!("data-field=\"at\">{today} ")),
        "{html}"
    );
    // Inline styles only (mail clients drop style sheets), nothing to run,
    // and the user's file name as text.
    assert!(
        !html.contains("<style") && !html.contains("<link"),
        "{html}"
    );
    assert!(!html.to_lowercase().contains("<script"), "{html}");
    assert!(html.contains(SCRIPT_HTML), "{html}");
    assert_eq!(
        cells(row(&html, SCRIPT_HTML))[..4],
        [SCRIPT_NAME, "failed", "0", "3"]
    );
    assert!(
        html.contains(&format!("Rejected lines in {SCRIPT_HTML}")),
        "{html}"
    );
    // No dashboard configured: no links.
    assert!(!html.contains("<a ") && !html.contains("#file="), "{html}");
    assert!(!text.contains("dashboard"), "{text}");
    // And on disk beside each archived file.
    assert!(w
        .read("processed/a-sample.csv.report.txt")
        .contains("rows loaded:    100"));
    assert!(w.read("failed/c-broken.csv.report.txt").contains("FAILED"));
}

/// A file name that is HTML, and how the report must show it.
const SCRIPT_NAME: &str = "d<script>alert(1)<.csv";
const SCRIPT_HTML: &str = "d&lt;script&gt;alert(1)&lt;.csv";

/// What the loader calls its host in reports.
fn host() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into())
}

/// The `<tr>…</tr>` of `html` that contains `needle`.
fn row<'a>(html: &'a str, needle: &str) -> &'a str {
    let at = html
        .find(needle)
        .unwrap_or_else(|| panic!("{needle} not in {html}"));
    let start = html[..at].rfind("<tr").expect("a row");
    let end = at + html[at..].find("</tr>").expect("row end");
    &html[start..end]
}

/// The text of each cell of a row (tags dropped, entities decoded).
fn cells(row: &str) -> Vec<String> {
    row.split("<td")
        .skip(1)
        .map(|c| {
            let inner = &c[c.find('>').unwrap() + 1..];
            let inner = inner.split("</td>").next().unwrap();
            let mut text = String::new();
            let mut in_tag = false;
            for ch in inner.chars() {
                match ch {
                    '<' => in_tag = true,
                    '>' => in_tag = false,
                    c if !in_tag => text.push(c),
                    _ => {}
                }
            }
            text.replace("&middot;", "·")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&amp;", "&")
        })
        .collect()
}

#[test]
fn the_html_report_links_each_file_to_the_dashboard_when_configured() {
    let db = fresh_db();
    let w = Work::new();
    let server = smtp();
    w.land("a-sample.csv", &sample());
    let url = format!("smtp://127.0.0.1:{}", server.port);
    let first = tripload(&w, &db, &["load", "landing", "--quiet"]);
    assert!(first.status.success(), "{}", stderr(&first));
    // Again under other names: already loaded; a link: refused; a name
    // that is HTML.
    w.land("again.csv", &sample());
    w.land(SCRIPT_NAME, &tripload::gen::trips_csv(10, 3));
    std::os::unix::fs::symlink(w.path("landing/again.csv"), w.path("landing/link.csv")).unwrap();
    let out = tripload_cmd(
        &w,
        &db,
        &[
            "load",
            "landing",
            "--quiet",
            "--smtp-url",
            &url,
            "--report-to",
            "ops@example.com",
        ],
    )
    .env("TRIPLOAD_DASHBOARD_URL", "http://dash.example:8080/")
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let mails = received(server.maildir.path(), 1);
    let (m, text, html) = parts(&mails[0]);
    use mailparse::MailHeaderMap;
    assert_eq!(
        m.headers.get_first_value("Subject").unwrap(),
        "[tripload] 1 file loaded, 1 failed, 1 already loaded"
    );
    assert!(
        html.contains("href=\"http://dash.example:8080/\""),
        "{html}"
    );
    let again = row(&html, "again.csv");
    assert!(
        again.contains("href=\"http://dash.example:8080/#file=again.csv\""),
        "{again}"
    );
    assert!(
        again.contains("#9a6700"),
        "already loaded is amber: {again}"
    );
    assert_eq!(cells(again)[..3], ["again.csv", "already loaded", "0"]);
    let link = row(&html, "link.csv");
    assert!(link.contains("#8250df"), "refused is purple: {link}");
    assert_eq!(cells(link)[1], "refused");
    // The name percent-encoded in the link, escaped in the text.
    let script = row(&html, SCRIPT_HTML);
    assert!(
        script.contains("href=\"http://dash.example:8080/#file=d%3Cscript%3Ealert%281%29%3C.csv\""),
        "{script}"
    );
    assert_eq!(cells(script)[..3], [SCRIPT_NAME, "loaded", "10"]);
    assert!(!html.to_lowercase().contains("<script"), "{html}");
    assert!(
        text.contains("  on the dashboard: http://dash.example:8080/#file=again.csv\n"),
        "{text}"
    );

    // A dashboard URL that is not one is a usage error.
    let out = tripload(
        &w,
        &db,
        &["load", "landing", "--dashboard-url", "dash.example:8080"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--dashboard-url"), "{}", stderr(&out));
}

#[test]
fn smtp_down_does_not_fail_the_load() {
    let db = fresh_db();
    let w = Work::new();
    w.land("a.csv", &sample());
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("smtp://user:pw@127.0.0.1:{port}");
    let out = tripload(
        &w,
        &db,
        &[
            "load",
            "landing",
            "--smtp-url",
            &url,
            "--report-to",
            "ops@example.com",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(db.trips(), 100);
    assert!(
        stderr(&out).contains("report email not sent"),
        "{}",
        stderr(&out)
    );
    assert!(
        !stderr(&out).contains("pw@"),
        "credentials leaked: {}",
        stderr(&out)
    );
    assert!(w
        .read("processed/a.csv.report.txt")
        .contains("rows loaded:    100"));
}

#[test]
fn watch_mails_one_report_per_file() {
    let db = fresh_db();
    let w = Work::new();
    let server = smtp();
    let url = format!("smtp://127.0.0.1:{}", server.port);
    let mut child = tripload_cmd(
        &w,
        &db,
        &[
            "watch",
            "landing",
            "--quiet",
            "--smtp-url",
            &url,
            "--report-to",
            "ops@example.com",
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    for (name, seed) in [("w1.csv", 1), ("w2.csv", 2)] {
        let tmp = w.path(&format!("landing/.{name}"));
        std::fs::write(&tmp, tripload::gen::trips_csv(1000, seed)).unwrap();
        std::fs::rename(&tmp, w.path(&format!("landing/{name}"))).unwrap();
    }
    let mails = received(server.maildir.path(), 2);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let mut subjects: Vec<String> = mails
        .iter()
        .map(|m| {
            use mailparse::MailHeaderMap;
            mailparse::parse_mail(m)
                .unwrap()
                .headers
                .get_first_value("Subject")
                .unwrap()
        })
        .collect();
    subjects.sort();
    assert_eq!(
        subjects,
        ["[tripload] 1 file loaded", "[tripload] 1 file loaded"]
    );
    let texts: String = mails.iter().map(|m| parts(m).1).collect();
    assert!(
        texts.contains("w1.csv\n  status:         loaded\n  rows loaded:    1000"),
        "{texts}"
    );
    assert!(
        texts.contains("w2.csv\n  status:         loaded\n  rows loaded:    1000"),
        "{texts}"
    );
}

#[test]
fn watch_can_mail_a_digest_per_period() {
    let db = fresh_db();
    let w = Work::new();
    let server = smtp();
    let url = format!("smtp://127.0.0.1:{}", server.port);
    let mut child = tripload_cmd(
        &w,
        &db,
        &[
            "watch",
            "landing",
            "--quiet",
            "--smtp-url",
            &url,
            "--report-to",
            "ops@example.com",
            "--report-every",
            "3",
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    for (name, seed) in [("d1.csv", 1), ("d2.csv", 2), ("d3.csv", 3)] {
        let tmp = w.path(&format!("landing/.{name}"));
        std::fs::write(&tmp, tripload::gen::trips_csv(1000, seed)).unwrap();
        std::fs::rename(&tmp, w.path(&format!("landing/{name}"))).unwrap();
    }
    let mails = received(server.maildir.path(), 1);
    std::thread::sleep(Duration::from_millis(500));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    assert_eq!(
        received(server.maildir.path(), 1).len(),
        1,
        "one digest, not one mail per file"
    );
    use mailparse::MailHeaderMap;
    let m = mailparse::parse_mail(&mails[0]).unwrap();
    assert_eq!(
        m.headers.get_first_value("Subject").unwrap(),
        "[tripload] 3 files loaded"
    );
}

#[test]
fn a_password_without_tls_is_a_usage_error_that_never_shows_it() {
    let db = fresh_db();
    let w = Work::new();
    w.land("a.csv", &sample());
    for tls in ["none", "opportunistic"] {
        let url = format!("smtp://loader:s3cret-pw@127.0.0.1:2525?tls={tls}");
        let out = tripload(
            &w,
            &db,
            &[
                "load",
                "landing",
                "--smtp-url",
                &url,
                "--report-to",
                "ops@example.com",
            ],
        );
        assert_eq!(out.status.code(), Some(2), "{tls}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("--smtp-allow-plaintext"), "{err}");
        assert!(err.contains("smtps://"), "{err}");
        assert!(!err.contains("s3cret"), "password shown: {err}");
        assert!(!stdout(&out).contains("s3cret"));
        // Refused before anything was loaded.
        assert!(w.exists("landing/a.csv"));
        assert_eq!(
            db.count("SELECT count(*) FROM pg_tables WHERE tablename = 'trips'"),
            0
        );
    }
}

#[test]
fn a_password_goes_only_over_tls_unless_plaintext_is_allowed() {
    let db = fresh_db();
    let w = Work::new();
    // aiosmtpd as started here offers no STARTTLS.
    let server = smtp();
    w.land("a.csv", &sample());
    let url = format!("smtp://loader:s3cret-pw@127.0.0.1:{}", server.port);
    let out = tripload(
        &w,
        &db,
        &[
            "load",
            "landing",
            "--smtp-url",
            &url,
            "--report-to",
            "ops@example.com",
        ],
    );
    // STARTTLS is required with a password: no mail, the load goes on.
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(db.trips(), 100);
    let err = stderr(&out);
    assert!(err.contains("report email not sent"), "{err}");
    assert!(!err.contains("s3cret"), "password shown: {err}");
    let new = server.maildir.path().join("box").join("new");
    assert_eq!(
        std::fs::read_dir(&new).map(|d| d.count()).unwrap_or(0),
        0,
        "a mail went out without TLS"
    );

    // The opt-out is accepted (this server has no AUTH, so nothing is sent).
    w.land(
        "b.csv",
        format!("{HEADER}\nTurin,POINT (7.6 45.0),POINT (7.7 45.1),2018-05-21 02:54:04,baba_car\n")
            .as_bytes(),
    );
    let url = format!("{url}?tls=none");
    let out = tripload(
        &w,
        &db,
        &[
            "load",
            "landing",
            "--smtp-url",
            &url,
            "--smtp-allow-plaintext",
            "--report-to",
            "ops@example.com",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("s3cret"), "{}", stderr(&out));
}
