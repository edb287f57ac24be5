//! The in-order stage of one file, on a blocking thread: the file's chunks go
//! to the kernel on the rayon pool ([`ordered`]), and their results come back
//! in file order — rejects numbered and written, trips queued for the COPY
//! ([`backlog`]), cell points spilled and handed to the writer segment by
//! segment, rollup partials merged.
//!
//! ```text
//! chunks ─▶ rayon: encode_chunk ─▶ in order ─┬▶ rejects file
//!                                            ├▶ backlog ─▶ COPY (stream)
//!                                            └▶ cell points spill ─▶ writer
//! ```

use crate::analytics::points::{self, Spill};
use crate::db::dims::{DimError, Dims};
use crate::ingest::archive::RejectWriter;
use crate::ingest::backlog;
use crate::ingest::map::Mapped;
use crate::ingest::ordered;
use crate::ingest::outcome::{Abort, Committed, Failure, Lines};
use crate::kernel::chunk::Chunker;
use crate::kernel::encode::encode_chunk;
use crate::kernel::parse::Header;
use crate::kernel::rollup::Rollup;
use bytes::Bytes;
use std::sync::Arc;

/// What the in-order stage needs for one file.
pub struct EncodeStage {
    pub mapped: Arc<Mapped>,
    pub header: Arc<Header>,
    pub dims: Arc<Dims>,
    pub rejects: RejectWriter,
    pub max_rejects: u64,
    pub chunk_bytes: usize,
    pub depth: usize,
    pub file_id: i32,
    pub label: String,
    pub grid: Option<crate::kernel::grid::Grid>,
    /// Encoded trips with the input bytes and rows they stand for.
    pub out: backlog::Sender<(u64, u64)>,
    /// Where full segments of cell points go, and their size in input bytes.
    pub segments: Option<(tokio::sync::mpsc::Sender<Spill>, usize)>,
}

/// Why a file stops being loaded while its parse goes on or ends.
enum Verdict {
    /// More bad lines than `--max-rejects`: parsing goes on to list them all.
    TooManyRejects,
    /// A record that fails the file ([`crate::kernel::record::RecordError`]): parsing stops.
    Broken(crate::kernel::record::RecordError),
}

/// The failure reason for a file that parsed to a [`Verdict`].
fn verdict_reason(
    label: &str,
    verdict: &Verdict,
    rejects: &RejectWriter,
    max_rejects: u64,
) -> String {
    let listed = rejects.listed_note();
    match verdict {
        Verdict::TooManyRejects => format!(
            "{label}: {} bad lines, more than --max-rejects {max_rejects}; the first: {}; {listed}; the file was rolled back",
            rejects.lines,
            rejects.first.as_deref().unwrap_or("?"),
        ),
        Verdict::Broken(e) => {
            let before = if rejects.lines > 0 {
                format!(" ({} bad lines before it; {listed})", rejects.lines)
            } else {
                String::new()
            };
            format!("{label}: {e}; the file cannot be read past it and nothing from it was loaded{before}")
        }
    }
}

/// Runs on a blocking thread: chunks go to the rayon pool, results come back
/// in order; rejects are numbered and written, buffers go to the COPY task.
/// A file over `--max-rejects` stops its COPY (the backlog is cancelled) but
/// is parsed to the end, so its rejects file lists every bad line; a record
/// that breaks the framing stops the parse there.
pub fn encode_stage(s: EncodeStage) -> Result<Committed, Failure> {
    let EncodeStage {
        mapped,
        header,
        dims,
        mut rejects,
        max_rejects,
        chunk_bytes,
        depth,
        file_id,
        label,
        grid,
        out,
        segments,
    } = s;
    let mut out = Some(out);
    let mut segments = segments;
    let file_bytes = mapped.bytes().len();
    let segment_bytes = segments.as_ref().map(|(_, seg)| *seg);
    let spill_for = |consumed: usize, grid: crate::kernel::grid::Grid| {
        let bytes = match segment_bytes {
            Some(seg) => (file_bytes - consumed.min(file_bytes)).min(seg),
            None => file_bytes,
        };
        Spill::new(
            bytes as u64,
            points::PARTITION_BYTES,
            &std::env::temp_dir(),
            grid,
        )
    };
    let spill_err = |e: std::io::Error| {
        Abort::Env(format!(
            "cannot create temporary files for the cell points in {} (set TMPDIR to a writable directory with room for about half the file's size): {e}",
            std::env::temp_dir().display()
        ))
    };
    let (mut consumed, mut segment_at) = (0usize, 0usize);
    let mut rollup = grid.map(|_| Rollup::default());
    let mut points = match grid {
        None => None,
        Some(g) => match spill_for(0, g) {
            Ok(s) => Some(s),
            Err(e) => {
                return Err(Failure {
                    abort: spill_err(e),
                    rejected: 0,
                    rejects: Some(Box::new(rejects)),
                })
            }
        },
    };
    let mut line_base = header.lines_before_data;
    let mut lines = Lines {
        header: header.lines_before_data,
        ..Lines::default()
    };
    let mut rows = 0u64;
    let mut abort: Option<Abort> = None;
    let mut verdict: Option<Verdict> = None;
    let mut stopped = false;
    // Set once the file is over --max-rejects: its remaining chunks are
    // parsed without registering their names.
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let work = {
        let mapped = Arc::clone(&mapped);
        let header = Arc::clone(&header);
        let failing = Arc::clone(&failing);
        move |r: std::ops::Range<usize>| -> Result<crate::kernel::encode::Encoded, DimError> {
            let dict: &dyn crate::kernel::encode::Dictionary<crate::db::dims::DimError> =
                if failing.load(std::sync::atomic::Ordering::Relaxed) {
                    &crate::kernel::encode::NoDictionary
                } else {
                    &*dims
                };
            encode_chunk(&mapped.bytes()[r], &header, file_id, dict, grid.as_ref())
        }
    };
    let chunks = Chunker::new(mapped.bytes(), header.data_start, chunk_bytes)
        .max_record_bytes(header.max_record_bytes);
    ordered::run(chunks, depth, work, |range, result| {
        let enc = match result {
            Ok(enc) => enc,
            Err(e) => {
                abort = Some(e.into());
                return false;
            }
        };
        for r in &enc.rejects {
            if let Err(e) = rejects.write(line_base + r.line, r) {
                abort = Some(Abort::Env(format!("cannot write the rejects file: {e}")));
                return false;
            }
        }
        if let Some(fatal) = enc.fatal {
            verdict = Some(Verdict::Broken(fatal.shifted(line_base)));
            return false;
        }
        line_base += enc.lines;
        lines.rejected += enc.rejected_lines;
        lines.blank += enc.blank_lines;
        if verdict.is_none() && rejects.lines > max_rejects {
            // The COPY stops now; the parse goes on to list every bad line.
            verdict = Some(Verdict::TooManyRejects);
            failing.store(true, std::sync::atomic::Ordering::Relaxed);
            if let Some(out) = out.take() {
                out.cancel();
            }
            segments = None;
            points = None;
        }
        if verdict.is_some() {
            mapped.release(range);
            return true;
        }
        if let Some(p) = points.as_mut() {
            if let Err(e) = p.push(&enc.rollup.pending) {
                abort = Some(Abort::Env(format!(
                    "cannot spill the cell points to {}: {e}",
                    std::env::temp_dir().display()
                )));
                return false;
            }
        }
        if let Some(r) = rollup.as_mut() {
            // The chunk's points went to the spill; the writer counts them.
            r.merge_counts(enc.rollup);
        }
        consumed += enc.bytes;
        segment_at += enc.bytes;
        if let (Some((stx, seg)), Some(p), Some(g)) = (&segments, points.as_mut(), grid) {
            if segment_at >= *seg && consumed < file_bytes {
                segment_at = 0;
                let fresh = match spill_for(consumed, g) {
                    Ok(s) => s,
                    Err(e) => {
                        abort = Some(spill_err(e));
                        return false;
                    }
                };
                if stx.blocking_send(std::mem::replace(p, fresh)).is_err() {
                    // The writer stopped; the transaction reports why.
                    abort = Some(Abort::Env("the cell points writer stopped".into()));
                    return false;
                }
            }
        }
        rows += enc.rows;
        let Some(tx) = out.as_ref() else {
            return false;
        };
        match tx.send(Bytes::from(enc.tuples), (enc.bytes as u64, enc.rows)) {
            Ok(true) => {}
            // The COPY side stopped; it reports why.
            Ok(false) => {
                stopped = true;
                return false;
            }
            Err(e) => {
                abort = Some(Abort::Env(format!(
                    "cannot queue encoded trips in {} (set TMPDIR to a writable directory with room for about the file's size, or --backlog-mib 0): {e}",
                    std::env::temp_dir().display()
                )));
                return false;
            }
        }
        mapped.release(range);
        true
    });
    // Parsing is done: the last segment of cell points goes to the writer
    // now, while the trips may still be queued for the COPY.
    if abort.is_none() && verdict.is_none() && !stopped {
        if let (Some((stx, _)), Some(p)) = (&segments, points.take()) {
            if stx.blocking_send(p).is_err() {
                abort = Some(Abort::Env("the cell points writer stopped".into()));
            }
        }
    }
    let abort = abort.or_else(|| {
        verdict.map(|v| Abort::File(verdict_reason(&label, &v, &rejects, max_rejects)))
    });
    let rejected = rejects.lines;
    match abort {
        Some(abort) => {
            // The file fails: its backlog is not worth copying first.
            if let Some(out) = out.take() {
                out.cancel();
            }
            Err(Failure {
                abort,
                rejected,
                rejects: Some(Box::new(rejects)),
            })
        }
        None => {
            debug_assert_eq!(lines.rejected, rejected);
            Ok(Committed {
                rows,
                rejected,
                lines,
                rejects,
                rollup,
            })
        }
    }
}
