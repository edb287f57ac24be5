//! The HTML part of the emailed report, in the dashboard's visual language
//! (its colours, font and card layout) but built for mail clients: tables for
//! layout, inline styles only, no scripts, images or external resources.
//! Every value that comes from outside (file names, reasons, paths, rejected
//! lines) is HTML-escaped; links to the dashboard percent-encode the name.
//! Also what both parts of a report count and show: rejected lines split by
//! outcome, the report's [`Meta`], the first rejects of a file.

use crate::notify::report::{rejected, FileReport, Status};

/// What a report says besides the files: who loaded them, when, and where
/// the dashboard is.
#[derive(Debug, Clone)]
pub struct Meta {
    pub host: String,
    /// `YYYY-MM-DD HH:MM:SS UTC`.
    pub at: String,
    pub dashboard_url: Option<String>,
}

/// Characters kept as they are in a `#file=` fragment; everything else is
/// percent-encoded (what JavaScript's `decodeURIComponent` undoes).
const FRAGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

impl Meta {
    /// `URL/#file=NAME` (the dashboard highlights that file).
    pub fn file_link(&self, name: &str) -> Option<String> {
        self.dashboard_url.as_ref().map(|u| {
            format!(
                "{u}/#file={}",
                percent_encoding::utf8_percent_encode(name, FRAGMENT)
            )
        })
    }
}

/// The first few rejects (line, column, reason) from the rejects file.
pub fn first_rejects(r: &FileReport, n: usize) -> Vec<(String, String, String)> {
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

pub const SHOWN_REJECTS: usize = 5;

/// The dashboard's palette (src/serve/assets/dashboard.css).
const INK: &str = "#1f2328";
const MUTED: &str = "#57606a";
const LINE: &str = "#d0d7de";
const BG: &str = "#f6f8fa";
const HEAD: &str = "#24292f";
const LINK: &str = "#0969da";
const FONT: &str = "system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif";

/// How a status looks: its word, text colour and background tint.
pub struct Look {
    pub word: &'static str,
    pub fg: &'static str,
    pub bg: &'static str,
}

/// Loaded green, already loaded amber, failed red, error (retried) orange,
/// refused purple.
pub fn look(s: &Status) -> Look {
    let (word, fg, bg) = match s {
        Status::Loaded => ("loaded", "#1a7f37", "#dafbe1"),
        Status::AlreadyLoaded { .. } => ("already loaded", "#9a6700", "#fff8c5"),
        Status::Failed { .. } => ("failed", "#cf222e", "#ffebe9"),
        Status::Error { .. } => ("error, will retry", "#bc4c00", "#fff1e5"),
        Status::Refused { .. } => ("refused", "#8250df", "#fbefff"),
    };
    Look { word, fg, bg }
}

/// The order of the statuses in the totals row.
const ORDER: [&str; 5] = [
    "loaded",
    "already loaded",
    "failed",
    "error, will retry",
    "refused",
];

/// `s` safe in HTML text and in quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn name_of(r: &FileReport) -> String {
    r.path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Why a file was not loaded (or whose content it repeats).
fn detail(s: &Status) -> Option<String> {
    match s {
        Status::Loaded => None,
        Status::AlreadyLoaded {
            file_name,
            committed_at,
        } => Some(format!(
            "same content as {file_name}, committed {committed_at}; nothing loaded"
        )),
        Status::Failed { reason } => Some(format!("moved to failed/: {reason}")),
        Status::Error { reason } => Some(format!(
            "a database or machine problem, left in place to retry: {reason}"
        )),
        Status::Refused { reason } => Some(reason.clone()),
    }
}

fn th(label: &str, right: bool) -> String {
    format!(
        "<th style=\"text-align:{};padding:6px 8px;background:{BG};border-bottom:1px solid {LINE};font-weight:600;white-space:nowrap\">{label}</th>",
        if right { "right" } else { "left" }
    )
}

fn num(v: impl std::fmt::Display, style: &str) -> String {
    format!("<td style=\"text-align:right;padding:6px 8px;white-space:nowrap;{style}\">{v}</td>")
}

fn pill(l: &Look) -> String {
    format!(
        "<span style=\"display:inline-block;padding:1px 8px;border-radius:10px;background:{};color:{};font-weight:600;font-size:12px;white-space:nowrap\">{}</span>",
        l.bg, l.fg, l.word
    )
}

/// The file's name, a link to it on the dashboard when one is configured.
fn file_cell(name: &str, meta: &Meta) -> String {
    match meta.file_link(name) {
        Some(href) => format!(
            "<a href=\"{}\" style=\"color:{LINK};text-decoration:none;font-weight:600\">{}</a>",
            esc(&href),
            esc(name)
        ),
        None => format!("<strong>{}</strong>", esc(name)),
    }
}

/// One file: its row, and a row with the reason when it was not loaded.
fn file_rows(r: &FileReport, meta: &Meta) -> String {
    let l = look(&r.status);
    let name = name_of(r);
    let cell = "padding:6px 8px;border-top:1px solid #eaeef2";
    let rejected_style = if r.rows_rejected > 0 {
        format!("{cell};color:{};font-weight:600", l.fg)
    } else {
        cell.to_string()
    };
    let mut h = format!(
        "<tr data-status=\"{word}\"><td style=\"{cell};border-left:4px solid {fg}\">{file}</td><td style=\"{cell}\">{pill}</td>{loaded}{rej}{secs}{rate}</tr>",
        word = l.word,
        fg = l.fg,
        file = file_cell(&name, meta),
        pill = pill(&l),
        loaded = num(r.rows_loaded, cell),
        rej = num(r.rows_rejected, &rejected_style),
        secs = num(format!("{:.2}", r.seconds), cell),
        rate = num(format!("{:.0}", r.rows_per_second()), cell),
    );
    if let Some(d) = detail(&r.status) {
        h.push_str(&format!(
            "<tr><td colspan=\"6\" style=\"padding:0 8px 8px 12px;border-left:4px solid {};color:{};font-size:13px\">{}</td></tr>",
            l.fg,
            l.fg,
            esc(&d)
        ));
    }
    h
}

/// The totals of the committed files, and apart from them the lines
/// rejected in files that were rolled back.
fn total_rows(reports: &[FileReport]) -> String {
    let rej = rejected(reports);
    let loaded: u64 = reports
        .iter()
        .filter(|r| r.status == Status::Loaded)
        .map(|r| r.rows_loaded)
        .sum();
    let summary: Vec<String> = ORDER
        .iter()
        .filter_map(|word| {
            let of_kind = || reports.iter().filter(|r| look(&r.status).word == *word);
            let fg = look(&of_kind().next()?.status).fg;
            Some(format!(
                "<span style=\"color:{fg}\">{} {word}</span>",
                of_kind().count()
            ))
        })
        .collect();
    let cell = format!("padding:8px;border-top:2px solid {LINE};background:{BG};font-weight:600");
    let files = if reports.len() == 1 { "file" } else { "files" };
    let mut h = format!(
        "<tr data-row=\"total\"><td style=\"{cell}\">Total, {n} {files}</td><td style=\"{cell};font-size:12px\">{summary}</td>{loaded}{rej}<td style=\"{cell}\"></td><td style=\"{cell}\"></td></tr>",
        n = reports.len(),
        summary = summary.join(" &middot; "),
        loaded = num(loaded, &cell),
        rej = num(rej.committed, &cell),
    );
    if rej.rolled_back > 0 {
        let c = format!("padding:4px 8px 8px;background:{BG};color:#cf222e;font-size:13px");
        h.push_str(&format!(
            "<tr data-row=\"rolled-back\"><td colspan=\"3\" style=\"{c}\">Lines rejected in files that were rolled back (not in the total)</td>{}<td colspan=\"2\" style=\"{c}\"></td></tr>",
            num(rej.rolled_back, &format!("{c};font-weight:600"))
        ));
    }
    h
}

/// The first rejected lines of each file that has any.
fn rejects_sections(reports: &[FileReport]) -> String {
    let mut h = String::new();
    for r in reports.iter().filter(|r| r.rows_rejected > 0) {
        let l = look(&r.status);
        let note = if r.status == Status::Loaded {
            ""
        } else {
            " (rolled back with the file)"
        };
        h.push_str(&format!(
            "<h3 style=\"font-size:14px;margin:18px 0 6px\">Rejected lines in {}<span style=\"color:{};font-weight:400\">{note}</span></h3>",
            esc(&name_of(r)),
            l.fg
        ));
        h.push_str(&format!(
            "<table cellpadding=\"0\" cellspacing=\"0\" style=\"border-collapse:collapse;font-size:13px;width:100%\"><tr>{}{}{}</tr>",
            th("line", true),
            th("column", false),
            th("why", false)
        ));
        let cell = "padding:4px 8px;border-top:1px solid #eaeef2;vertical-align:top";
        for (line, col, reason) in first_rejects(r, SHOWN_REJECTS) {
            h.push_str(&format!(
                "<tr><td style=\"{cell};text-align:right\">{}</td><td style=\"{cell};font-family:ui-monospace,Menlo,Consolas,monospace\">{}</td><td style=\"{cell}\">{}</td></tr>",
                esc(&line),
                esc(&col),
                esc(&reason)
            ));
        }
        h.push_str("</table>");
        if let Some(p) = &r.rejects_file {
            h.push_str(&format!(
                "<p style=\"margin:6px 0 0;color:{MUTED};font-size:12px\">All {} rejected lines: <code>{}</code></p>",
                r.rows_rejected,
                esc(&p.display().to_string())
            ));
        }
    }
    h
}

/// The whole HTML document.
pub fn render(subject: &str, reports: &[FileReport], meta: &Meta) -> String {
    let title = subject.strip_prefix("[tripload] ").unwrap_or(subject);
    let dashboard = meta
        .dashboard_url
        .as_deref()
        .map(|u| {
            format!(
                "<a href=\"{}/\" style=\"color:#ffffff;font-size:13px\">Open the dashboard</a>",
                esc(u)
            )
        })
        .unwrap_or_default();
    let mut h = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{subject}</title></head>\
<body style=\"margin:0;padding:0;background:{BG};color:{INK};font-family:{FONT};font-size:14px;line-height:1.4\">\
<table role=\"presentation\" width=\"100%\" cellpadding=\"0\" cellspacing=\"0\" style=\"background:{BG}\"><tr><td style=\"padding:16px\">\
<table role=\"presentation\" width=\"100%\" cellpadding=\"0\" cellspacing=\"0\" style=\"max-width:980px;border-collapse:separate\">\
<tr><td style=\"background:{HEAD};color:#ffffff;padding:10px 16px;border-radius:6px 6px 0 0\">\
<table role=\"presentation\" width=\"100%\" cellpadding=\"0\" cellspacing=\"0\"><tr><td style=\"color:#ffffff\"><span style=\"font-size:18px;font-weight:600\">tripload</span> <span style=\"color:#d0d7de\">ingestion report</span></td><td style=\"text-align:right\">{dashboard}</td></tr></table></td></tr>\
<tr><td style=\"background:#ffffff;border:1px solid {LINE};border-top:0;border-radius:0 0 6px 6px;padding:14px 16px\">\
<h2 style=\"font-size:16px;margin:0 0 4px\">{title}</h2>\
<p style=\"margin:0 0 12px;color:{MUTED}\">Loader <strong style=\"color:{INK}\" data-field=\"host\">{host}</strong> &middot; <span data-field=\"at\">{at}</span></p>\
<table cellpadding=\"0\" cellspacing=\"0\" width=\"100%\" style=\"border-collapse:collapse;font-variant-numeric:tabular-nums\"><tr>{h1}{h2}{h3}{h4}{h5}{h6}</tr>",
        subject = esc(subject),
        title = esc(title),
        host = esc(&meta.host),
        at = esc(&meta.at),
        h1 = th("file", false),
        h2 = th("status", false),
        h3 = th("rows loaded", true),
        h4 = th("lines rejected", true),
        h5 = th("seconds", true),
        h6 = th("rows/s", true),
    );
    for r in reports {
        h.push_str(&file_rows(r, meta));
    }
    h.push_str(&total_rows(reports));
    h.push_str("</table>");
    h.push_str(&rejects_sections(reports));
    h.push_str(&format!(
        "</td></tr><tr><td style=\"padding:8px 16px;color:{MUTED};font-size:12px\">Sent by tripload on {}.</td></tr></table></td></tr></table></body></html>",
        esc(&meta.host)
    ));
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_text_and_attributes() {
        assert_eq!(
            esc("<script>alert('x&y')</script>\""),
            "&lt;script&gt;alert(&#39;x&amp;y&#39;)&lt;/script&gt;&quot;"
        );
    }

    fn report(name: &str, status: Status) -> FileReport {
        FileReport::for_test(name, status)
    }

    #[test]
    fn each_file_row_has_its_status_colour_and_reason() {
        let rs = [
            report("l.csv", Status::Loaded),
            report(
                "a.csv",
                Status::AlreadyLoaded {
                    file_name: "l.csv".into(),
                    committed_at: "then".into(),
                },
            ),
            report(
                "f.csv",
                Status::Failed {
                    reason: "bad <b>".into(),
                },
            ),
            report(
                "e.csv",
                Status::Error {
                    reason: "db away".into(),
                },
            ),
            report(
                "r.csv",
                Status::Refused {
                    reason: "a link".into(),
                },
            ),
        ];
        let meta = Meta {
            host: "h<1>".into(),
            at: "now".into(),
            dashboard_url: None,
        };
        let h = render("[tripload] s", &rs, &meta);
        for r in &rs {
            let name = r.path.display().to_string();
            let at = h.find(&format!("<strong>{name}</strong>")).unwrap();
            let row = &h[h[..at].rfind("<tr").unwrap()..at];
            assert!(row.contains(&format!("data-status=\"{}\"", look(&r.status).word)));
            assert!(row.contains(look(&r.status).fg), "{name}: {row}");
        }
        assert!(h.contains("bad &lt;b&gt;") && h.contains("db away") && h.contains("a link"));
        assert!(h.contains("h&lt;1&gt;") && !h.contains("<1>"));
        assert!(h.contains(
            "1 loaded</span> &middot; <span style=\"color:#9a6700\">1 already loaded</span>"
        ));
    }

    #[test]
    fn every_status_has_its_own_colour() {
        let all = [
            Status::Loaded,
            Status::AlreadyLoaded {
                file_name: "a".into(),
                committed_at: "b".into(),
            },
            Status::Failed { reason: "r".into() },
            Status::Error { reason: "r".into() },
            Status::Refused { reason: "r".into() },
        ];
        let mut colours: Vec<&str> = all.iter().map(|s| look(s).fg).collect();
        colours.sort();
        colours.dedup();
        assert_eq!(colours.len(), all.len());
    }
}
