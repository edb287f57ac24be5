//! Emailed ingestion reports (lettre over SMTP): one per run for `load`, one
//! per file for `watch`. The report is also written beside the archived file
//! (`<file>.report.txt`), and a mail server that is down or refuses us is
//! logged and retried, never failing or blocking a load.

use crate::report::{FileReport, Status};
use lettre::message::{header::ContentType, Mailbox, MultiPart, SinglePart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::time::Duration;

/// Where reports go.
#[derive(Debug, Clone)]
pub struct MailConfig {
    /// `smtp://user:pass@host:port` (STARTTLS when offered) or `smtps://…`.
    pub smtp_url: String,
    pub to: Vec<String>,
    pub from: String,
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

    fn transport(&self) -> Result<AsyncSmtpTransport<Tokio1Executor>, MailError> {
        // Plain smtp:// upgrades with STARTTLS when the server offers it.
        let url = if self.smtp_url.starts_with("smtp://") && !self.smtp_url.contains("tls=") {
            let sep = if self.smtp_url.contains('?') {
                '&'
            } else {
                '?'
            };
            format!("{}{sep}tls=opportunistic", self.smtp_url)
        } else {
            self.smtp_url.clone()
        };
        AsyncSmtpTransport::<Tokio1Executor>::from_url(&url)
            .map(|b| b.timeout(Some(Duration::from_secs(20))).build())
            .map_err(|e| MailError::Url(e.to_string()))
    }

    /// Host and port without credentials, for messages.
    fn server(&self) -> String {
        let rest = self.smtp_url.split("://").nth(1).unwrap_or("");
        let host = rest.rsplit('@').next().unwrap_or(rest);
        host.split(['/', '?']).next().unwrap_or(host).to_string()
    }
}

/// `[tripload] 3 files loaded, 1 failed`.
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
    let files = |n: usize| if n == 1 { "file" } else { "files" };
    let mut s = format!("[tripload] {loaded} {} loaded", files(loaded));
    if failed > 0 {
        s.push_str(&format!(", {failed} failed"));
    }
    if skipped > 0 {
        s.push_str(&format!(", {skipped} already loaded"));
    }
    let rejected: u64 = reports.iter().map(|r| r.rows_rejected).sum();
    if rejected > 0 {
        s.push_str(&format!(", {rejected} lines rejected"));
    }
    s
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
    }
}

/// The first few rejects (line, column, reason) from the rejects file.
fn first_rejects(r: &FileReport, n: usize) -> Vec<(String, String, String)> {
    let Some(path) = &r.rejects_file else {
        return Vec::new();
    };
    let Ok(mut rdr) = csv::Reader::from_path(path) else {
        return Vec::new();
    };
    rdr.records()
        .filter_map(|r| r.ok())
        .take(n)
        .map(|rec| {
            (
                rec.get(1).unwrap_or("").to_string(),
                rec.get(2).unwrap_or("").to_string(),
                rec.get(3).unwrap_or("").to_string(),
            )
        })
        .collect()
}

const SHOWN_REJECTS: usize = 5;

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

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn html(reports: &[FileReport]) -> String {
    let mut h = format!(
        "<html><body><h2>{}</h2><table border=\"1\" cellpadding=\"4\" cellspacing=\"0\">\
         <tr><th>file</th><th>status</th><th>rows loaded</th><th>lines rejected</th><th>seconds</th><th>rows/s</th></tr>",
        esc(&subject(reports))
    );
    for r in reports {
        let name = r
            .path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        h.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2}</td><td>{:.0}</td></tr>",
            esc(&name),
            esc(&status_text(r)),
            r.rows_loaded,
            r.rows_rejected,
            r.seconds,
            r.rows_per_second()
        ));
    }
    h.push_str("</table>");
    for r in reports.iter().filter(|r| r.rows_rejected > 0) {
        let name = r
            .path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        h.push_str(&format!("<h3>Rejects in {}</h3><ul>", esc(&name)));
        for (line, col, reason) in first_rejects(r, SHOWN_REJECTS) {
            h.push_str(&format!(
                "<li>line {}{}: {}</li>",
                esc(&line),
                if col.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", esc(&col))
                },
                esc(&reason)
            ));
        }
        h.push_str("</ul>");
        if let Some(p) = &r.rejects_file {
            h.push_str(&format!(
                "<p>All rejects: {}</p>",
                esc(&p.display().to_string())
            ));
        }
    }
    h.push_str("</body></html>");
    h
}

/// Plain-text body for a set of files.
pub fn text(reports: &[FileReport]) -> String {
    let mut s = format!("{}\n\n", subject(reports));
    for r in reports {
        s.push_str(&file_text(r));
        s.push('\n');
    }
    s
}

/// Writes `<archived file>.report.txt` for each file (where it now is).
pub fn write_beside(reports: &[FileReport]) {
    for r in reports {
        let Some(at) = &r.now_at else { continue };
        let text = format!("{}\n\n{}", subject(std::slice::from_ref(r)), file_text(r));
        if let Err(e) = crate::archive::write_sidecar(at, "report.txt", &text) {
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
    let mut b = Message::builder().from(from).subject(subject(reports));
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
                    .body(text(reports)),
            )
            .singlepart(
                SinglePart::builder()
                    .header(ContentType::TEXT_HTML)
                    .body(html(reports)),
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
                    reason: e.to_string(),
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

    fn report(status: Status) -> FileReport {
        FileReport {
            path: "x/a.csv".into(),
            size: 1,
            status,
            rows_loaded: 10,
            rows_rejected: 0,
            blank_lines: 0,
            header_lines: 0,
            seconds: 1.0,
            now_at: None,
            rejects_file: None,
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
    fn server_hides_credentials() {
        let c = MailConfig {
            smtp_url: "smtp://bob:secret@mail.example:2525".into(),
            to: vec!["ops@example.com".into()],
            from: "tripload@example.com".into(),
        };
        assert_eq!(c.server(), "mail.example:2525");
        assert!(c.check().is_ok());
    }
}
