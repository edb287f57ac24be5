//! Loading one file: open it once (no links), run its transaction
//! ([`transaction`]), archive it (`processed/` or `failed/`, with its
//! rejects and `<file>.error.txt`), and say how it went (report and events).
//!
//! ```text
//! open ─▶ transaction (claim → stream trips → verify → rollups → COMMIT)
//!      ─▶ archive ─▶ report + final event
//! ```

use crate::ingest::archive;
pub use crate::ingest::context::LoadContext;
use crate::ingest::map;
use crate::ingest::outcome::{Abort, Cause, Committed, Failure};
use crate::ingest::transaction;
use crate::notify::events::{Event, Kind};
use crate::notify::report::{FailedAt, FileProgress, FileReport, Status};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Loads one file end to end and says how it went; never panics on input.
/// `name` is the file's own name (a claimed file sits under another one); it
/// names the archived file, the ledger row and the events.
///
/// The file is opened once ([`map::Opened`]): a path that is not a regular
/// file is refused without being opened, and the file moved afterwards is
/// the one that was read, or nothing.
pub async fn load_file(
    ctx: &LoadContext,
    path: &Path,
    name: &str,
    progress: &Arc<FileProgress>,
) -> FileReport {
    let start = Instant::now();
    let mut report = FileReport {
        // Named as the user knows it, even while claimed under another name.
        path: path.with_file_name(name),
        size: 0,
        status: Status::Loaded,
        rows_loaded: 0,
        rows_rejected: 0,
        blank_lines: 0,
        header_lines: 0,
        seconds: 0.0,
        now_at: Some(path.to_path_buf()),
        rejects_file: None,
        failed_at: FailedAt::default(),
    };
    let opened = match map::Opened::open(path) {
        Ok(o) => Arc::new(o),
        Err(e) => {
            progress.finish();
            report.status = match e {
                map::MapError::NotRegular { .. } => Status::Refused {
                    reason: e.to_string(),
                },
                // Gone, or unreadable for now: not the content's fault.
                _ => Status::Error {
                    reason: e.to_string(),
                },
            };
            ctx.events.publish(final_event(&report, name));
            return report;
        }
    };
    let size = opened.identity.size;
    report.size = size;
    let mut ev = Event::new(Kind::Started, name);
    ev.size_bytes = Some(size);
    ctx.events.publish(ev);
    let result = transaction::run(ctx, &opened, path, name, progress, start).await;
    progress.finish();
    report.seconds = start.elapsed().as_secs_f64();
    let mut mover = Mover {
        path,
        id: opened.id,
        name,
        replaced: None,
    };
    match result {
        Ok(c) => archive_committed(ctx, &mut mover, c, &mut report),
        Err(f) => archive_failed(ctx, &mut mover, f, &mut report),
    }
    if mover.replaced.is_some() {
        report.now_at = None;
    }
    let mut ev = final_event(&report, name);
    if let Some(note) = mover.replaced {
        ev.reason = Some(match ev.reason.take() {
            Some(r) => format!("{r}; {note}"),
            None => note,
        });
    }
    ctx.events.publish(ev);
    report
}

/// Moves the file that was read (and only it) into a directory.
struct Mover<'a> {
    path: &'a Path,
    id: map::FileId,
    name: &'a str,
    /// Set when the path no longer names the file that was read.
    replaced: Option<String>,
}

impl Mover<'_> {
    fn to(&mut self, dir: &Path) -> Result<PathBuf, archive::MoveError> {
        archive::move_read_file_into_as(self.path, self.id, dir, self.name).inspect_err(|e| {
            if let archive::MoveError::Replaced { .. } = e {
                self.replaced = Some(e.to_string());
            }
        })
    }
}

/// A committed file goes to `processed/` with its rejects beside it.
fn archive_committed(ctx: &LoadContext, mover: &mut Mover, c: Committed, report: &mut FileReport) {
    let path = mover.path;
    report.rows_loaded = c.rows;
    report.rows_rejected = c.rejected;
    report.blank_lines = c.lines.blank;
    report.header_lines = c.lines.header;
    match mover.to(&ctx.processed_dir_for(path)) {
        Ok(dest) => {
            report.rejects_file = c.rejects.place_beside(&dest).unwrap_or_else(|e| {
                tracing::error!("{}: could not place the rejects file: {e}", path.display());
                None
            });
            report.now_at = Some(dest);
        }
        Err(e) => {
            // The data is committed; only the move failed. Rerunning skips it
            // as already loaded, so nothing is lost or duplicated.
            tracing::error!(
                "{}: committed, but could not move it to processed/: {e}",
                path.display()
            );
            report.rejects_file = c.rejects.place_beside(path).ok().flatten();
        }
    }
}

/// A duplicate goes to `processed/`; a file at fault to `failed/` with its
/// error file and rejects; a file the environment failed stays in place.
fn archive_failed(ctx: &LoadContext, mover: &mut Mover, f: Failure, report: &mut FileReport) {
    let path = mover.path;
    match f.abort {
        Abort::Duplicate(prev) => {
            report.status = Status::AlreadyLoaded {
                file_name: prev.file_name,
                committed_at: prev.committed_at,
            };
            if let Ok(dest) = mover.to(&ctx.processed_dir_for(path)) {
                report.now_at = Some(dest);
            }
        }
        Abort::File(cause) => {
            report.rows_rejected = f.rejected;
            report.failed_at = failed_at(&cause);
            report.status = Status::Failed {
                reason: cause.message.clone(),
            };
            match mover.to(&ctx.failed_dir_for(path)) {
                Ok(dest) => {
                    write_error_file(path, &dest, &cause, f.rejected);
                    if let Some(rw) = f.rejects {
                        report.rejects_file = rw.place_beside(&dest).ok().flatten();
                    }
                    report.now_at = Some(dest);
                }
                Err(e) => tracing::error!("{}: could not move it to failed/: {e}", path.display()),
            }
        }
        Abort::Env(cause) => {
            report.failed_at = failed_at(&cause);
            report.status = Status::Error {
                reason: cause.message,
            };
        }
    }
}

fn failed_at(c: &Cause) -> FailedAt {
    FailedAt {
        line: c.line,
        column: c.column.clone(),
        sqlstate: c.sqlstate.clone(),
    }
}

/// `<file>.error.txt` beside a failed file: why, where, and what to do.
fn write_error_file(path: &Path, dest: &Path, cause: &Cause, rejected: u64) {
    let mut text = format!(
        "file: {}\nfailed: {}\nreason: {}\n",
        crate::kernel::excerpt::quoted(&path.display().to_string()),
        chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC"),
        cause.message
    );
    if let Some(line) = cause.line {
        text.push_str(&format!("line: {line}\n"));
    }
    if let Some(column) = &cause.column {
        text.push_str(&format!("column: {column}\n"));
    }
    if let Some(code) = &cause.sqlstate {
        text.push_str(&format!("sqlstate: {code}\n"));
    }
    text.push_str("nothing from this file was committed (the transaction was rolled back).\n");
    text.push_str(if rejected > 0 {
        "the bad lines are listed in the .rejects.csv file beside this one.\nfix them (or raise --max-rejects) and move the file back to the landing directory.\n"
    } else {
        "fix the file and move it back to the landing directory.\n"
    });
    if let Err(e) = archive::write_error(dest, &text) {
        tracing::error!("{}: could not write the error file: {e}", dest.display());
    }
}

/// The event that tells how a file ended.
pub fn final_event(r: &FileReport, name: &str) -> Event {
    let kind = match r.status {
        Status::Loaded => Kind::Committed,
        Status::AlreadyLoaded { .. } => Kind::Skipped,
        Status::Failed { .. } | Status::Error { .. } => Kind::Failed,
        Status::Refused { .. } => Kind::Refused,
    };
    let mut e = Event::new(kind, name);
    e.size_bytes = Some(r.size);
    e.rows = Some(r.rows_loaded);
    e.rows_rejected = Some(r.rows_rejected);
    e.seconds = Some(r.seconds);
    e.line = r.failed_at.line;
    e.column = r.failed_at.column.clone();
    e.sqlstate = r.failed_at.sqlstate.clone();
    e.reason = match &r.status {
        Status::Failed { reason } | Status::Error { reason } | Status::Refused { reason } => {
            Some(reason.clone())
        }
        Status::AlreadyLoaded {
            file_name,
            committed_at,
        } => Some(format!(
            "same content as {file_name}, committed {committed_at}"
        )),
        Status::Loaded => None,
    };
    e
}
