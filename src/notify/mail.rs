//! Emailed ingestion reports (lettre over SMTP): one per run for `load`, one
//! per file for `watch`. The report is also written beside the archived file
//! (`<file>.report.txt`), and a mail server that is down or refuses us is
//! logged and retried, never failing or blocking a load.

use crate::notify::mail_html::{first_rejects, Meta, SHOWN_REJECTS};
use crate::notify::report::{rejected, FileReport, Status};
use lettre::message::{header::ContentType, Mailbox, MultiPart, SinglePart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::time::Duration;

/// Where reports go.
#[derive(Debug, Clone)]
pub struct MailConfig {
    /// `smtp://user:pass@host:port` or `smtps://…` (see [`MailConfig::tls`]).
    pub smtp_url: String,
    pub to: Vec<String>,
    pub from: String,
    /// `--smtp-allow-plaintext`: a password may cross the network unencrypted.
    pub allow_plaintext: bool,
    /// `--dashboard-url`: the dashboard's base URL (checked, without a
    /// trailing `/`); each file in a report links to `URL/#file=NAME`.
    pub dashboard_url: Option<String>,
}

/// How the mail transport is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailTls {
    /// `smtps://`: TLS from the first byte.
    Wrapper,
    /// STARTTLS, or no mail is sent.
    Required,
    /// STARTTLS when the server offers it, plaintext otherwise.
    Opportunistic,
    /// Never.
    None,
}

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("invalid report address {0:?}: {1}")]
    Address(String, String),
    #[error("invalid SMTP URL (expected smtp://user:pass@host:port or smtps://…): {0}")]
    Url(String),
    #[error("building the message: {0}")]
    Build(String),
    #[error("sending through {server}: {reason}")]
    Send { server: String, reason: String },
    #[error("the SMTP URL for {server} carries a password but {tls}: the password would cross the network unencrypted\n  hint: use smtps://… (TLS from the start), or smtp://… without ?tls= or with ?tls=required (STARTTLS required, the default with a password); only on a trusted network, add --smtp-allow-plaintext (TRIPLOAD_SMTP_ALLOW_PLAINTEXT=1)")]
    PlaintextPassword { server: String, tls: &'static str },
}

impl MailConfig {
    /// Checks addresses and URL up front, so a typo is a usage error, not a
    /// lost report.
    pub fn check(&self) -> Result<(), MailError> {
        for a in self.to.iter().chain([&self.from]) {
            a.parse::<Mailbox>()
                .map_err(|e| MailError::Address(a.clone(), e.to_string()))?;
        }
        self.transport().map(|_| ())
    }

    /// The URL's password (percent-encoded as written), if any.
    fn password(&self) -> Option<&str> {
        let rest = self.smtp_url.split_once("://")?.1;
        let authority = rest.split(['/', '?']).next().unwrap_or(rest);
        let userinfo = authority.rsplit_once('@')?.0;
        userinfo
            .split_once(':')
            .map(|(_, p)| p)
            .filter(|p| !p.is_empty())
    }

    /// The `tls` query parameter, if given.
    fn tls_param(&self) -> Option<&str> {
        let query = self.smtp_url.split_once('?')?.1;
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .filter(|(k, _)| *k == "tls")
            .map(|(_, v)| v)
            .next_back()
    }

    /// The encryption in use: `smtps://` wraps; `smtp://` takes `?tls=`
    /// (`required`, `opportunistic`, `none`) and otherwise requires STARTTLS
    /// when the URL carries a password, and uses it when offered when not.
    /// A password with `opportunistic` or `none` is refused unless
    /// `--smtp-allow-plaintext` is given.
    pub fn tls(&self) -> Result<MailTls, MailError> {
        let scheme = self.smtp_url.split("://").next().unwrap_or("");
        let tls = match (scheme, self.tls_param()) {
            ("smtps", _) => MailTls::Wrapper,
            ("smtp", Some("required")) => MailTls::Required,
            ("smtp", Some("opportunistic")) => MailTls::Opportunistic,
            ("smtp", Some("none")) => MailTls::None,
            ("smtp", None) if self.password().is_some() => MailTls::Required,
            ("smtp", None) => MailTls::Opportunistic,
            _ => {
                return Err(MailError::Url(format!(
                    "{}: the scheme must be smtp or smtps, and tls one of required, opportunistic, none",
                    self.server()
                )))
            }
        };
        let weak = match tls {
            MailTls::Opportunistic => Some("STARTTLS is only opportunistic (?tls=opportunistic)"),
            MailTls::None => Some("TLS is off (?tls=none)"),
            _ => None,
        };
        match weak {
            Some(why) if self.password().is_some() && !self.allow_plaintext => {
                Err(MailError::PlaintextPassword {
                    server: self.server(),
                    tls: why,
                })
            }
            _ => Ok(tls),
        }
    }

    /// `text` with the URL's password (raw and decoded) masked.
    fn redact(&self, text: &str) -> String {
        let Some(p) = self.password() else {
            return text.to_string();
        };
        let decoded = percent_decode(p);
        let mut out = text.replace(p, "***");
        if !decoded.is_empty() {
            out = out.replace(&decoded, "***");
        }
        out
    }

    fn transport(&self) -> Result<AsyncSmtpTransport<Tokio1Executor>, MailError> {
        let tls = self.tls()?;
        // lettre knows `required` and `opportunistic`; no parameter is no TLS.
        let base = match self.smtp_url.split_once('?') {
            Some((base, query)) => {
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|kv| !kv.starts_with("tls="))
                    .collect();
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
            None => self.smtp_url.clone(),
        };
        let param = match tls {
            MailTls::Required => Some("tls=required"),
            MailTls::Opportunistic => Some("tls=opportunistic"),
            MailTls::Wrapper | MailTls::None => None,
        };
        let url = match param {
            Some(p) if base.contains('?') => format!("{base}&{p}"),
            Some(p) => format!("{base}?{p}"),
            None => base,
        };
        AsyncSmtpTransport::<Tokio1Executor>::from_url(&url)
            .map(|b| b.timeout(Some(Duration::from_secs(20))).build())
            .map_err(|e| MailError::Url(self.redact(&e.to_string())))
    }

    /// Host and port without credentials, for messages.
    fn server(&self) -> String {
        let rest = self.smtp_url.split("://").nth(1).unwrap_or("");
        let host = rest.rsplit('@').next().unwrap_or(rest);
        host.split(['/', '?']).next().unwrap_or(host).to_string()
    }
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// An error with its causes (lettre puts the TLS reason in a cause).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn lines(n: u64) -> String {
    format!("{n} {}", if n == 1 { "line" } else { "lines" })
}

/// `[tripload] 3 files loaded (2 lines rejected), 1 failed (7 lines
/// rejected)`: each rejected count belongs to its group of files.
pub fn subject(reports: &[FileReport]) -> String {
    let loaded = reports
        .iter()
        .filter(|r| r.status == Status::Loaded)
        .count();
    let skipped = reports
        .iter()
        .filter(|r| matches!(r.status, Status::AlreadyLoaded { .. }))
        .count();
    let failed = reports.len() - loaded - skipped;
    let rej = rejected(reports);
    let files = |n: usize| if n == 1 { "file" } else { "files" };
    let mut s = format!("[tripload] {loaded} {} loaded", files(loaded));
    if rej.committed > 0 {
        s.push_str(&format!(" ({} rejected)", lines(rej.committed)));
    }
    if failed > 0 {
        s.push_str(&format!(", {failed} failed"));
        if rej.rolled_back > 0 {
            s.push_str(&format!(" ({} rejected)", lines(rej.rolled_back)));
        }
    }
    if skipped > 0 {
        s.push_str(&format!(", {skipped} already loaded"));
    }
    s
}

/// This host, now, and the configured dashboard.
fn meta_now(cfg: &MailConfig) -> Meta {
    Meta {
        host: crate::notify::events::hostname(),
        at: chrono::Utc::now()
            .format("%Y-%m-%d %H:%M:%S UTC")
            .to_string(),
        dashboard_url: cfg.dashboard_url.clone(),
    }
}

/// The dashboard URL as given to `--dashboard-url`, checked: `http(s)://`,
/// no spaces, control characters or fragment; without a trailing `/`.
pub fn check_dashboard_url(url: &str) -> Result<String, String> {
    let u = url.trim().trim_end_matches('/');
    let rest = u
        .strip_prefix("http://")
        .or_else(|| u.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !u.chars().any(|c| c.is_whitespace() || c.is_control() || c == '#') => {
            Ok(u.to_string())
        }
        _ => Err(format!(
            "--dashboard-url {url:?}: expected the dashboard's address, e.g. http://tripload.example:8080 (http or https, no #fragment)"
        )),
    }
}

fn status_text(r: &FileReport) -> String {
    match &r.status {
        Status::Loaded => "loaded".into(),
        Status::AlreadyLoaded {
            file_name,
            committed_at,
        } => {
            format!("already loaded (same content as {file_name}, committed {committed_at})")
        }
        Status::Failed { reason } => format!("FAILED: {reason}"),
        Status::Error { reason } => format!("NOT LOADED (database problem, will retry): {reason}"),
        Status::Refused { reason } => format!("REFUSED: {reason}"),
    }
}

/// Plain-text body for one file.
pub fn file_text(r: &FileReport) -> String {
    let name = r
        .path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let mut s = format!(
        "{name}\n  status:         {}\n  rows loaded:    {}\n  lines rejected: {}\n  duration:       {:.2} s\n  rows/s:         {:.0}\n",
        status_text(r),
        r.rows_loaded,
        r.rows_rejected,
        r.seconds,
        r.rows_per_second()
    );
    if let Some(p) = &r.now_at {
        s.push_str(&format!("  file now at:    {}\n", p.display()));
    }
    let rejects = first_rejects(r, SHOWN_REJECTS);
    if !rejects.is_empty() {
        s.push_str("  first rejects:\n");
        for (line, col, reason) in &rejects {
            let col = if col.is_empty() {
                String::new()
            } else {
                format!(" [{col}]")
            };
            s.push_str(&format!("    line {line}{col}: {reason}\n"));
        }
    }
    if let Some(p) = &r.rejects_file {
        s.push_str(&format!("  all rejects:    {}\n", p.display()));
    }
    s
}

/// Plain-text body for a set of files: who and when, each file, the totals.
pub fn text(reports: &[FileReport], meta: &Meta) -> String {
    let mut s = format!("{}\nloader {}, {}\n", subject(reports), meta.host, meta.at);
    if let Some(u) = &meta.dashboard_url {
        s.push_str(&format!("dashboard: {u}/\n"));
    }
    s.push('\n');
    for r in reports {
        s.push_str(&file_text(r));
        let name = r.path.file_name().map(|n| n.to_string_lossy());
        if let Some(link) = name.and_then(|n| meta.file_link(&n)) {
            s.push_str(&format!("  on the dashboard: {link}\n"));
        }
        s.push('\n');
    }
    let rej = rejected(reports);
    let loaded: u64 = reports
        .iter()
        .filter(|r| r.status == Status::Loaded)
        .map(|r| r.rows_loaded)
        .sum();
    s.push_str(&format!(
        "total: {loaded} rows loaded, {} rejected in loaded files",
        lines(rej.committed)
    ));
    if rej.rolled_back > 0 {
        s.push_str(&format!(
            "; {} rejected in failed files (rolled back with them)",
            lines(rej.rolled_back)
        ));
    }
    s.push('\n');
    s
}

/// Writes `<archived file>.report.txt` for each file (where it now is).
pub fn write_beside(reports: &[FileReport]) {
    for r in reports {
        let Some(at) = &r.now_at else { continue };
        let text = format!("{}\n\n{}", subject(std::slice::from_ref(r)), file_text(r));
        if let Err(e) = crate::notify::sidecar::write_sidecar(at, "report.txt", &text) {
            tracing::warn!("cannot write the report beside {}: {e}", at.display());
        }
    }
}

/// Builds the multipart message.
pub fn message(cfg: &MailConfig, reports: &[FileReport]) -> Result<Message, MailError> {
    let from: Mailbox = cfg
        .from
        .parse()
        .map_err(|e: lettre::address::AddressError| {
            MailError::Address(cfg.from.clone(), e.to_string())
        })?;
    let subject = subject(reports);
    let meta = meta_now(cfg);
    let mut b = Message::builder().from(from).subject(subject.clone());
    for to in &cfg.to {
        b = b.to(to.parse().map_err(|e: lettre::address::AddressError| {
            MailError::Address(to.clone(), e.to_string())
        })?);
    }
    b.multipart(
        MultiPart::alternative()
            .singlepart(
                SinglePart::builder()
                    .header(ContentType::TEXT_PLAIN)
                    .body(text(reports, &meta)),
            )
            .singlepart(
                SinglePart::builder()
                    .header(ContentType::TEXT_HTML)
                    .body(crate::notify::mail_html::render(&subject, reports, &meta)),
            ),
    )
    .map_err(|e| MailError::Build(e.to_string()))
}

/// Writes the reports to disk, then mails them with a few retries; failures
/// are logged, never returned to the load.
pub async fn deliver(cfg: &MailConfig, reports: &[FileReport]) -> bool {
    write_beside(reports);
    let msg = match message(cfg, reports) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!("report email not sent: {e}");
            return false;
        }
    };
    let transport = match cfg.transport() {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("report email not sent: {e}");
            return false;
        }
    };
    let mut wait = Duration::from_millis(500);
    for attempt in 1..=4 {
        match transport.send(msg.clone()).await {
            Ok(_) => return true,
            Err(e) => {
                let err = MailError::Send {
                    server: cfg.server(),
                    reason: cfg.redact(&error_chain(&e)),
                };
                if attempt == 4 {
                    tracing::error!("report email not sent after {attempt} attempts: {err}; the report is beside the archived file(s) as .report.txt");
                } else {
                    tracing::warn!(
                        "report email attempt {attempt} failed: {err}; retrying in {wait:?}"
                    );
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::report::Rejected;

    fn report(status: Status) -> FileReport {
        FileReport {
            rows_loaded: 10,
            ..FileReport::for_test("x/a.csv", status)
        }
    }

    #[test]
    fn subject_says_how_it_went() {
        let rs = vec![
            report(Status::Loaded),
            report(Status::Loaded),
            report(Status::Failed { reason: "x".into() }),
        ];
        assert_eq!(subject(&rs), "[tripload] 2 files loaded, 1 failed");
        assert_eq!(subject(&rs[..1]), "[tripload] 1 file loaded");
    }

    #[test]
    fn rejected_lines_of_failed_files_are_counted_apart() {
        let rejecting = |status, n| FileReport {
            rows_rejected: n,
            ..report(status)
        };
        let rs = vec![
            rejecting(Status::Loaded, 1),
            rejecting(Status::Loaded, 2),
            rejecting(Status::Failed { reason: "x".into() }, 7),
        ];
        assert_eq!(
            rejected(&rs),
            Rejected {
                committed: 3,
                rolled_back: 7
            }
        );
        assert_eq!(
            subject(&rs),
            "[tripload] 2 files loaded (3 lines rejected), 1 failed (7 lines rejected)"
        );
        assert_eq!(
            subject(&rs[2..]),
            "[tripload] 0 files loaded, 1 failed (7 lines rejected)"
        );
        assert_eq!(
            subject(&rs[..1]),
            "[tripload] 1 file loaded (1 line rejected)"
        );
    }

    #[test]
    fn dashboard_links_encode_the_name() {
        let meta = Meta {
            host: "h".into(),
            at: "t".into(),
            dashboard_url: Some(check_dashboard_url("https://dash.example:8080/").unwrap()),
        };
        assert_eq!(
            meta.file_link("a b<script>&#x.csv").unwrap(),
            "https://dash.example:8080/#file=a%20b%3Cscript%3E%26%23x.csv"
        );
        for bad in [
            "dash.example",
            "ftp://x",
            "http://",
            "http://a b",
            "http://x/#y",
        ] {
            assert!(check_dashboard_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn server_hides_credentials() {
        let c = MailConfig {
            smtp_url: "smtp://bob:secret@mail.example:2525".into(),
            to: vec!["ops@example.com".into()],
            from: "tripload@example.com".into(),
            allow_plaintext: false,
            dashboard_url: None,
        };
        assert_eq!(c.server(), "mail.example:2525");
        assert!(c.check().is_ok());
    }

    fn config(url: &str, allow_plaintext: bool) -> MailConfig {
        MailConfig {
            smtp_url: url.into(),
            to: vec!["ops@example.com".into()],
            from: "tripload@example.com".into(),
            allow_plaintext,
            dashboard_url: None,
        }
    }

    #[test]
    fn a_password_needs_tls_unless_plaintext_is_allowed() {
        let tls = |url: &str, allow| config(url, allow).tls();
        assert_eq!(tls("smtp://u:pw@h:25", false).unwrap(), MailTls::Required);
        assert_eq!(tls("smtps://u:pw@h", false).unwrap(), MailTls::Wrapper);
        assert_eq!(
            tls("smtp://u:pw@h?tls=required", false).unwrap(),
            MailTls::Required
        );
        assert_eq!(tls("smtp://h:25", false).unwrap(), MailTls::Opportunistic);
        assert_eq!(tls("smtp://u@h?tls=none", false).unwrap(), MailTls::None);
        for weak in [
            "smtp://u:s3cr%40t@h?tls=none",
            "smtp://u:s3cr%40t@h?tls=opportunistic",
        ] {
            let e = tls(weak, false).unwrap_err();
            assert!(matches!(e, MailError::PlaintextPassword { .. }), "{e}");
            let text = e.to_string();
            assert!(text.contains("--smtp-allow-plaintext"), "{text}");
            assert!(!text.contains("s3cr"), "password shown: {text}");
            assert!(config(weak, false).check().is_err());
            assert!(tls(weak, true).is_ok());
        }
        assert_eq!(
            config("smtp://u:s3cr%40t@h", false).redact("auth s3cr@t and s3cr%40t"),
            "auth *** and ***"
        );
    }
}
