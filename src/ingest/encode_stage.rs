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
use crate::ingest::outcome::{Abort, Cause, Committed, Failure, Lines};
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

/// The failure of a file that parsed to a [`Verdict`], at the line (and
/// column) of the first bad line, or of the record that broke the framing.
fn verdict_cause(
    label: &str,
    verdict: &Verdict,
    rejects: &RejectWriter,
    max_rejects: u64,
) -> Cause {
    let listed = rejects.listed_note();
    match verdict {
        Verdict::TooManyRejects => {
            let cause = Cause::new(format!(
                "{label}: {} bad lines, more than --max-rejects {max_rejects}; the first: {}; {listed}; the file was rolled back",
                rejects.lines,
                rejects.first.as_deref().unwrap_or("?"),
            ));
            match &rejects.first_at {
                Some((line, column)) => cause.at(*line, column.clone()),
                None => cause,
            }
        }
        Verdict::Broken(e) => {
            let before = if rejects.lines > 0 {
                format!(" ({} bad lines before it; {listed})", rejects.lines)
            } else {
                String::new()
            };
            let (line, column) = e.position();
            Cause::new(format!(
                "{label}: {e}; the file cannot be read past it and nothing from it was loaded{before}"
            ))
            .at(line, column.map(|c| c.to_string()))
        }
    }
}

/// Runs on a blocking thread: chunks go to the rayon pool, results come back
/// in order; rejects are numbered and written, buffers go to the COPY task.
/// A file over `--max-rejects` stops its COPY (the backlog is cancelled) but
/// is parsed to the end, so its rejects file lists every bad line; a record
/// that breaks the framing stops the parse there.
pub fn encode_stage(s: EncodeStage) -> Result<Committed, Failure> {
    let mut state = match InOrder::new(s) {
        Ok(state) => state,
        Err(f) => return Err(*f),
    };
    let work = state.work();
    let mapped = Arc::clone(&state.mapped);
    let chunks = Chunker::new(mapped.bytes(), state.data_start, state.chunk_bytes)
        .max_record_bytes(state.max_record_bytes);
    ordered::run(chunks, state.depth, work, |range, result| {
        state.take(range, result)
    });
    state.finish()
}

/// The in-order stage's state while the chunks of one file come back.
struct InOrder {
    mapped: Arc<Mapped>,
    header: Arc<Header>,
    dims: Arc<Dims>,
    rejects: RejectWriter,
    max_rejects: u64,
    chunk_bytes: usize,
    depth: usize,
    file_id: i32,
    label: String,
    grid: Option<crate::kernel::grid::Grid>,
    data_start: usize,
    max_record_bytes: usize,
    /// Where the encoded trips go; `None` once the COPY was stopped.
    out: Option<backlog::Sender<(u64, u64)>>,
    segments: Option<(tokio::sync::mpsc::Sender<Spill>, usize)>,
    file_bytes: usize,
    /// Input bytes per segment of cell points (`None`: the whole file).
    segment_bytes: Option<usize>,
    consumed: usize,
    segment_at: usize,
    rollup: Option<Rollup>,
    points: Option<Spill>,
    line_base: u64,
    lines: Lines,
    rows: u64,
    abort: Option<Abort>,
    verdict: Option<Verdict>,
    /// The COPY side stopped taking trips (it reports why).
    stopped: bool,
    /// Set once the file is over --max-rejects: its remaining chunks are
    /// parsed without registering their names.
    failing: Arc<std::sync::atomic::AtomicBool>,
}

impl InOrder {
    fn new(s: EncodeStage) -> Result<InOrder, Box<Failure>> {
        let file_bytes = s.mapped.bytes().len();
        let segment_bytes = s.segments.as_ref().map(|(_, seg)| *seg);
        let mut state = InOrder {
            data_start: s.header.data_start,
            max_record_bytes: s.header.max_record_bytes,
            line_base: s.header.lines_before_data,
            lines: Lines {
                header: s.header.lines_before_data,
                ..Lines::default()
            },
            mapped: s.mapped,
            header: s.header,
            dims: s.dims,
            rejects: s.rejects,
            max_rejects: s.max_rejects,
            chunk_bytes: s.chunk_bytes,
            depth: s.depth,
            file_id: s.file_id,
            label: s.label,
            grid: s.grid,
            out: Some(s.out),
            segments: s.segments,
            file_bytes,
            segment_bytes,
            consumed: 0,
            segment_at: 0,
            rollup: s.grid.map(|_| Rollup::default()),
            points: None,
            rows: 0,
            abort: None,
            verdict: None,
            stopped: false,
            failing: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        };
        if let Some(g) = state.grid {
            match state.spill_for(0, g) {
                Ok(p) => state.points = Some(p),
                Err(e) => {
                    return Err(Box::new(Failure {
                        abort: spill_err(e),
                        rejected: 0,
                        rejects: Some(Box::new(state.rejects)),
                    }))
                }
            }
        }
        Ok(state)
    }

    /// What the rayon pool runs on each chunk.
    fn work(
        &self,
    ) -> impl Fn(std::ops::Range<usize>) -> Result<crate::kernel::encode::Encoded, DimError>
           + Send
           + Sync
           + 'static {
        let mapped = Arc::clone(&self.mapped);
        let header = Arc::clone(&self.header);
        let failing = Arc::clone(&self.failing);
        let dims = Arc::clone(&self.dims);
        let (file_id, grid) = (self.file_id, self.grid);
        move |r: std::ops::Range<usize>| -> Result<crate::kernel::encode::Encoded, DimError> {
            let dict: &dyn crate::kernel::encode::Dictionary<DimError> =
                if failing.load(std::sync::atomic::Ordering::Relaxed) {
                    &crate::kernel::encode::NoDictionary
                } else {
                    &*dims
                };
            encode_chunk(&mapped.bytes()[r], &header, file_id, dict, grid.as_ref())
        }
    }

    /// The spill for the cell points of the next segment (from `consumed`).
    fn spill_for(
        &self,
        consumed: usize,
        grid: crate::kernel::grid::Grid,
    ) -> std::io::Result<Spill> {
        let bytes = match self.segment_bytes {
            Some(seg) => (self.file_bytes - consumed.min(self.file_bytes)).min(seg),
            None => self.file_bytes,
        };
        Spill::new(
            bytes as u64,
            points::PARTITION_BYTES,
            &std::env::temp_dir(),
            grid,
        )
    }

    /// Takes the next chunk's result, in file order; false stops the parse.
    fn take(
        &mut self,
        range: std::ops::Range<usize>,
        result: Result<crate::kernel::encode::Encoded, DimError>,
    ) -> bool {
        let enc = match result {
            Ok(enc) => enc,
            Err(e) => {
                self.abort = Some(e.into());
                return false;
            }
        };
        if !self.write_rejects(&enc) {
            return false;
        }
        if let Some(fatal) = enc.fatal {
            self.verdict = Some(Verdict::Broken(fatal.shifted(self.line_base)));
            return false;
        }
        self.line_base += enc.lines;
        self.lines.rejected += enc.rejected_lines;
        self.lines.blank += enc.blank_lines;
        self.check_reject_limit();
        if self.verdict.is_some() {
            self.mapped.release(range);
            return true;
        }
        if !self.keep_points(&enc) {
            return false;
        }
        if let Some(r) = self.rollup.as_mut() {
            // The chunk's points went to the spill; the writer counts them.
            r.merge_counts(enc.rollup);
        }
        self.consumed += enc.bytes;
        self.segment_at += enc.bytes;
        if !self.next_segment() {
            return false;
        }
        self.rows += enc.rows;
        if !self.queue_trips(Bytes::from(enc.tuples), enc.bytes as u64, enc.rows) {
            return false;
        }
        self.mapped.release(range);
        true
    }

    /// Writes the chunk's rejects at their file lines.
    fn write_rejects(&mut self, enc: &crate::kernel::encode::Encoded) -> bool {
        for r in &enc.rejects {
            if let Err(e) = self.rejects.write(self.line_base + r.line, r) {
                self.abort = Some(Abort::env(format!("cannot write the rejects file: {e}")));
                return false;
            }
        }
        true
    }

    /// Over `--max-rejects`: the COPY stops now; the parse goes on to list
    /// every bad line.
    fn check_reject_limit(&mut self) {
        if self.verdict.is_none() && self.rejects.lines > self.max_rejects {
            self.verdict = Some(Verdict::TooManyRejects);
            self.failing
                .store(true, std::sync::atomic::Ordering::Relaxed);
            if let Some(out) = self.out.take() {
                out.cancel();
            }
            self.segments = None;
            self.points = None;
        }
    }

    /// Spills the chunk's cell points.
    fn keep_points(&mut self, enc: &crate::kernel::encode::Encoded) -> bool {
        if let Some(p) = self.points.as_mut() {
            if let Err(e) = p.push(&enc.rollup.pending) {
                self.abort = Some(Abort::env(format!(
                    "cannot spill the cell points to {}: {e}",
                    std::env::temp_dir().display()
                )));
                return false;
            }
        }
        true
    }

    /// Hands a full segment of cell points to the writer and starts the next.
    fn next_segment(&mut self) -> bool {
        let (Some((stx, seg)), Some(g)) = (&self.segments, self.grid) else {
            return true;
        };
        if self.points.is_none() || self.segment_at < *seg || self.consumed >= self.file_bytes {
            return true;
        }
        self.segment_at = 0;
        let fresh = match self.spill_for(self.consumed, g) {
            Ok(s) => s,
            Err(e) => {
                self.abort = Some(spill_err(e));
                return false;
            }
        };
        let Some(full) = self.points.replace(fresh) else {
            return true;
        };
        if stx.blocking_send(full).is_err() {
            // The writer stopped; the transaction reports why.
            self.abort = Some(Abort::env("the cell points writer stopped"));
            return false;
        }
        true
    }

    /// Queues the chunk's encoded trips for the COPY.
    fn queue_trips(&mut self, tuples: Bytes, bytes: u64, rows: u64) -> bool {
        let Some(tx) = self.out.as_ref() else {
            return false;
        };
        match tx.send(tuples, (bytes, rows)) {
            Ok(true) => true,
            // The COPY side stopped; it reports why.
            Ok(false) => {
                self.stopped = true;
                false
            }
            Err(e) => {
                self.abort = Some(Abort::env(format!(
                    "cannot queue encoded trips in {} (set TMPDIR to a writable directory with room for about the file's size, or --backlog-mib 0): {e}",
                    std::env::temp_dir().display()
                )));
                false
            }
        }
    }

    /// Parsing is done: the last segment of cell points goes to the writer
    /// now, while the trips may still be queued for the COPY; then the file
    /// is parsed ([`Committed`]) or failed.
    fn finish(mut self) -> Result<Committed, Failure> {
        if self.abort.is_none() && self.verdict.is_none() && !self.stopped {
            if let (Some((stx, _)), Some(p)) = (&self.segments, self.points.take()) {
                if stx.blocking_send(p).is_err() {
                    self.abort = Some(Abort::env("the cell points writer stopped"));
                }
            }
        }
        let (label, max_rejects) = (&self.label, self.max_rejects);
        let rejects = &self.rejects;
        let abort = self.abort.take().or_else(|| {
            self.verdict
                .take()
                .map(|v| Abort::File(verdict_cause(label, &v, rejects, max_rejects)))
        });
        let rejected = self.rejects.lines;
        match abort {
            Some(abort) => {
                // The file fails: its backlog is not worth copying first.
                if let Some(out) = self.out.take() {
                    out.cancel();
                }
                Err(Failure {
                    abort,
                    rejected,
                    rejects: Some(Box::new(self.rejects)),
                })
            }
            None => {
                debug_assert_eq!(self.lines.rejected, rejected);
                Ok(Committed {
                    rows: self.rows,
                    rejected,
                    lines: self.lines,
                    rejects: self.rejects,
                    rollup: self.rollup,
                })
            }
        }
    }
}

/// The abort for temporary files of cell points that cannot be created.
fn spill_err(e: std::io::Error) -> Abort {
    Abort::env(format!(
        "cannot create temporary files for the cell points in {} (set TMPDIR to a writable directory with room for about half the file's size): {e}",
        std::env::temp_dir().display()
    ))
}
