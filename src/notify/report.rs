//! Telling people how a run goes: a live bar per file on a terminal, periodic
//! log lines otherwise, and the summary table at the end.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How one file ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    /// Committed; moved to `processed/`.
    Loaded,
    /// The same content was committed before; nothing loaded.
    AlreadyLoaded {
        file_name: String,
        committed_at: String,
    },
    /// Rolled back because of the file; moved to `failed/`.
    Failed { reason: String },
    /// Rolled back because of the database or the machine; left in place to retry.
    Error { reason: String },
    /// Not a regular file (a link, FIFO, device…): never opened, left in place.
    Refused { reason: String },
}

/// The outcome of one file, for the summary, the exit code and (later) reports.
#[derive(Debug, Clone)]
pub struct FileReport {
    pub path: PathBuf,
    pub size: u64,
    pub status: Status,
    pub rows_loaded: u64,
    /// Rejected physical lines (a record over 3 lines counts 3).
    pub rows_rejected: u64,
    /// Blank lines skipped, and lines up to and including the header: with
    /// the two counts above, every physical line of a committed file.
    pub blank_lines: u64,
    pub header_lines: u64,
    pub seconds: f64,
    /// Where the file is now (archived path, or where it was left).
    pub now_at: Option<PathBuf>,
    pub rejects_file: Option<PathBuf>,
    /// Where a failure points (all absent for a loaded file, or unknown).
    pub failed_at: FailedAt,
}

#[cfg(test)]
impl FileReport {
    /// A report of `path` with `status` and nothing loaded, for tests.
    pub(crate) fn for_test(path: &str, status: Status) -> FileReport {
        FileReport {
            path: PathBuf::from(path),
            size: 1,
            status,
            rows_loaded: 0,
            rows_rejected: 0,
            blank_lines: 0,
            header_lines: 0,
            seconds: 1.0,
            now_at: None,
            rejects_file: None,
            failed_at: Default::default(),
        }
    }
}

/// Where a file's failure points, as fields: the physical line and column
/// (a field's name, or a character position for a framing error) in the
/// file, and the server's SQLSTATE for an error the database raised.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailedAt {
    pub line: Option<u64>,
    pub column: Option<String>,
    pub sqlstate: Option<String>,
}

impl FileReport {
    pub fn ok(&self) -> bool {
        matches!(self.status, Status::Loaded | Status::AlreadyLoaded { .. })
    }
    pub fn rows_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.rows_loaded as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// Run-wide progress output.
pub struct Progress {
    multi: Option<MultiProgress>,
    quiet: bool,
    /// Time between two `progress` events of a file.
    event_every: Duration,
}

impl Progress {
    /// Progress output (none when `quiet`), and a `progress` event per file
    /// every `event_every`.
    pub fn new(quiet: bool, event_every: Duration) -> Self {
        let multi = (!quiet && std::io::stderr().is_terminal())
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4)));
        Progress {
            multi,
            quiet,
            event_every,
        }
    }

    /// A message line that does not tear the bars.
    pub fn line(&self, msg: &str) {
        if self.quiet {
            return;
        }
        match &self.multi {
            Some(m) => {
                let _ = m.println(msg);
            }
            None => eprintln!("{msg}"),
        }
    }

    pub fn file(&self, name: &str, size: u64) -> FileProgress {
        let bar = self.multi.as_ref().map(|m| {
            let b = m.add(ProgressBar::new(size));
            b.set_style(
                ProgressStyle::with_template(
                    "{prefix:>24!} [{bar:30}] {bytes}/{total_bytes} {msg} ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_prefix(name.to_string());
            b
        });
        FileProgress {
            bar,
            log: !self.quiet && self.multi.is_none(),
            name: name.to_string(),
            size,
            bytes: AtomicU64::new(0),
            rows: AtomicU64::new(0),
            start: Instant::now(),
            last_log: Mutex::new(Instant::now()),
            events: crate::notify::events::Publisher::disabled(),
            event_every: self.event_every,
            last_event: Mutex::new(Instant::now()),
        }
    }
}

/// Progress of one file; updated from the in-order stage, once per chunk.
pub struct FileProgress {
    bar: Option<ProgressBar>,
    log: bool,
    name: String,
    size: u64,
    bytes: AtomicU64,
    rows: AtomicU64,
    start: Instant,
    last_log: Mutex<Instant>,
    events: crate::notify::events::Publisher,
    event_every: Duration,
    last_event: Mutex<Instant>,
}

const LOG_EVERY: Duration = Duration::from_secs(5);
/// Default time between two `progress` events of a file (`--progress-every-ms`).
pub const EVENT_EVERY_MS: u64 = 2000;

impl FileProgress {
    /// Also publish `progress` events for this file.
    pub fn with_events(mut self, events: crate::notify::events::Publisher) -> Self {
        self.events = events;
        self
    }

    pub fn advance(&self, bytes: u64, rows: u64) {
        let b = self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let r = self.rows.fetch_add(rows, Ordering::Relaxed) + rows;
        if let Ok(mut last) = self.last_event.lock() {
            if last.elapsed() >= self.event_every {
                *last = Instant::now();
                let mut e = crate::notify::events::Event::new(
                    crate::notify::events::Kind::Progress,
                    &self.name,
                );
                e.size_bytes = Some(self.size);
                e.bytes_done = Some(b);
                e.rows = Some(r);
                self.events.publish(e);
            }
        }
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        if let Some(bar) = &self.bar {
            bar.set_position(b);
            bar.set_message(format!("{r} rows, {:.0} rows/s", r as f64 / secs));
        } else if self.log {
            if let Ok(mut last) = self.last_log.lock() {
                if last.elapsed() >= LOG_EVERY {
                    *last = Instant::now();
                    eprintln!(
                        "{}: {:.0}% ({} of {} bytes), {} rows, {:.0} rows/s",
                        self.name,
                        100.0 * b as f64 / self.size.max(1) as f64,
                        b,
                        self.size,
                        r,
                        r as f64 / secs
                    );
                }
            }
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn status_word(s: &Status) -> &'static str {
    match s {
        Status::Loaded => "loaded",
        Status::AlreadyLoaded { .. } => "already loaded",
        Status::Failed { .. } => "FAILED",
        Status::Error { .. } => "ERROR",
        Status::Refused { .. } => "REFUSED",
    }
}

/// Lines rejected in a set of reports: in committed files (their good rows
/// are in the database), and in files rolled back with all their rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    pub committed: u64,
    pub rolled_back: u64,
}

pub fn rejected(reports: &[FileReport]) -> Rejected {
    let mut r = Rejected {
        committed: 0,
        rolled_back: 0,
    };
    for f in reports {
        match f.status {
            Status::Loaded => r.committed += f.rows_rejected,
            Status::AlreadyLoaded { .. } => {}
            Status::Failed { .. } | Status::Error { .. } | Status::Refused { .. } => {
                r.rolled_back += f.rows_rejected
            }
        }
    }
    r
}

/// The widest cell of each column.
fn column_widths<R: AsRef<[String]>>(rows: &[R]) -> Vec<usize> {
    let mut widths: Vec<usize> = Vec::new();
    for r in rows {
        for (j, c) in r.as_ref().iter().enumerate() {
            if widths.len() <= j {
                widths.push(0);
            }
            widths[j] = widths[j].max(c.chars().count());
        }
    }
    widths
}

/// Text table lines (each ending in a newline): columns two spaces apart,
/// padded to their widest cell, right-aligned where `right(column)`.
pub fn aligned<R: AsRef<[String]>>(rows: &[R], right: impl Fn(usize) -> bool) -> Vec<String> {
    let widths = column_widths(rows);
    rows.iter()
        .map(|r| {
            let cells: Vec<String> = r
                .as_ref()
                .iter()
                .enumerate()
                .map(|(j, c)| {
                    let w = widths[j];
                    if right(j) {
                        format!("{c:>w$}")
                    } else {
                        format!("{c:<w$}")
                    }
                })
                .collect();
            cells.join("  ").trim_end().to_string() + "\n"
        })
        .collect()
}

/// The end-of-run table: file, status, rows loaded, rejected, seconds,
/// rows/s, a total row, then what went wrong per file.
pub fn summary_table(reports: &[FileReport]) -> String {
    let mut rows: Vec<[String; 6]> = vec![[
        "file".into(),
        "status".into(),
        "rows loaded".into(),
        "lines rejected".into(),
        "seconds".into(),
        "rows/s".into(),
    ]];
    for r in reports {
        rows.push([
            r.path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            status_word(&r.status).into(),
            r.rows_loaded.to_string(),
            r.rows_rejected.to_string(),
            format!("{:.2}", r.seconds),
            format!("{:.0}", r.rows_per_second()),
        ]);
    }
    let total_rows: u64 = reports.iter().map(|r| r.rows_loaded).sum();
    // Lines rejected in committed files only: a failed file's rejected
    // lines went back with all its rows (said below the table).
    let rej = rejected(reports);
    let ok = reports.iter().filter(|r| r.ok()).count();
    rows.push([
        format!("total ({} files)", reports.len()),
        format!("{ok} ok, {} not", reports.len() - ok),
        total_rows.to_string(),
        rej.committed.to_string(),
        String::new(),
        String::new(),
    ]);
    let widths = column_widths(&rows);
    let mut out = String::new();
    for (i, line) in aligned(&rows, |j| j >= 2).into_iter().enumerate() {
        out.push_str(&line);
        if i == 0 || i == rows.len() - 2 {
            out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 10));
            out.push('\n');
        }
    }
    if rej.rolled_back > 0 {
        out.push_str(&format!(
            "the total counts rejected lines of loaded files; {} more were in failed files (rolled back with them)\n",
            rej.rolled_back
        ));
    }
    for r in reports {
        match &r.status {
            Status::Failed { reason } | Status::Error { reason } | Status::Refused { reason } => {
                out.push_str(&format!("{}: {reason}\n", r.path.display()));
            }
            Status::AlreadyLoaded {
                file_name,
                committed_at,
            } => out.push_str(&format!(
                "{}: same content as {file_name}, committed {committed_at}; nothing loaded\n",
                r.path.display()
            )),
            Status::Loaded => {}
        }
        if let Some(rej) = &r.rejects_file {
            out.push_str(&format!(
                "{}: {} rejected lines listed in {}\n",
                r.path.display(),
                r.rows_rejected,
                rej.display()
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(name: &str, status: Status, loaded: u64, rejected: u64) -> FileReport {
        FileReport {
            rows_loaded: loaded,
            rows_rejected: rejected,
            ..FileReport::for_test(name, status)
        }
    }

    #[test]
    fn the_total_counts_rejected_lines_of_loaded_files_only() {
        let table = summary_table(&[
            report("a.csv", Status::Loaded, 100, 2),
            report("b.csv", Status::Loaded, 50, 1),
            report(
                "c.csv",
                Status::Failed {
                    reason: "too many rejects".into(),
                },
                0,
                7,
            ),
        ]);
        let total = table
            .lines()
            .find(|l| l.starts_with("total"))
            .expect("a total row");
        let cells: Vec<&str> = total.split_whitespace().collect();
        assert_eq!(cells[cells.len() - 2..], ["150", "3"], "{table}");
        assert!(
            table.contains("7 more were in failed files (rolled back with them)"),
            "{table}"
        );
        let clean = summary_table(&[report("a.csv", Status::Loaded, 100, 2)]);
        assert!(!clean.contains("failed files"), "{clean}");
    }
}
