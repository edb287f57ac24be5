//! Loading one file: one connection, one transaction — ledger claim, binary
//! COPY of every encoded chunk in file order, ledger counts, COMMIT — then the
//! file is archived. Any failure before COMMIT rolls the whole file back.

use crate::analytics::points::{self, Spill};
use crate::analytics::points_writer::{self, WriteError, Writer};
use crate::analytics::rollup::Rollup;
use crate::db::dims::{DimError, DimStore, Dims};
use crate::db::ledger;
use crate::db::{self, DbError, Fault};
use crate::ingest::archive::{self, RejectWriter};
use crate::ingest::backlog;
use crate::ingest::map::{self, Mapped};
use crate::ingest::ordered;
use crate::kernel::chunk::Chunker;
use crate::kernel::encode::{encode_chunk, COPY_COLUMNS, COPY_HEADER, COPY_TRAILER};
use crate::kernel::parse::{self, Header};
use crate::notify::events::{Event, Kind, Publisher};
use crate::notify::report::{FileProgress, FileReport, Status};
use bytes::Bytes;
use futures_util::SinkExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// What every file load of a run shares.
pub struct LoadContext {
    pub conninfo: String,
    pub dims: Arc<DimStore>,
    /// Rejected lines tolerated per file (`--max-rejects`).
    pub max_rejects: u64,
    /// A longer record fails the file (`--max-record-bytes`).
    pub max_record_bytes: usize,
    pub chunk_bytes: usize,
    /// Chunks in flight per file (bounds memory).
    pub depth: usize,
    pub processed_dir: Option<PathBuf>,
    pub failed_dir: Option<PathBuf>,
    pub loaded_by: String,
    pub events: Publisher,
    /// Maintain the rollups (grid read from the database) in each file's transaction.
    pub grid: Option<crate::analytics::rollup::Grid>,
    /// Input bytes per segment of cell points (see [`points_writer`]).
    pub points_segment_bytes: usize,
    /// Bytes of encoded trips that may wait on disk (see [`backlog`]).
    pub backlog_bytes: u64,
    /// The committed file a new file replaces (`load --replace`), unloaded
    /// in the new file's transaction.
    pub replace: crate::lifecycle::replace::Policy,
}

impl LoadContext {
    /// `processed/` or `failed/` beside the directory the file was found in,
    /// unless configured.
    fn dest(&self, file: &Path, configured: &Option<PathBuf>, default: &str) -> PathBuf {
        if let Some(d) = configured {
            return d.clone();
        }
        let dir = file.parent().unwrap_or(Path::new("."));
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        match dir.canonicalize().ok().as_deref().and_then(Path::parent) {
            Some(parent) => parent.join(default),
            None => dir.join(default),
        }
    }
    pub fn processed_dir_for(&self, file: &Path) -> PathBuf {
        self.dest(file, &self.processed_dir, "processed")
    }
    pub fn failed_dir_for(&self, file: &Path) -> PathBuf {
        self.dest(file, &self.failed_dir, "failed")
    }
}

/// Why a file did not commit.
#[derive(Debug)]
enum Abort {
    /// The file's fault: it goes to `failed/`.
    File(String),
    /// Not the file's fault (database, disk): it stays where it is.
    Env(String),
    Duplicate(Box<ledger::LoadedFile>),
}

impl Abort {
    /// The file's fault or the environment's, as [`Fault`] says.
    fn of(fault: Fault, msg: String) -> Abort {
        match fault {
            Fault::Data => Abort::File(msg),
            Fault::Environment => Abort::Env(msg),
        }
    }
}

impl From<DbError> for Abort {
    fn from(e: DbError) -> Self {
        Abort::of(e.fault(), e.one_line())
    }
}

impl From<DimError> for Abort {
    fn from(e: DimError) -> Self {
        Abort::of(e.fault(), e.to_string())
    }
}

impl From<WriteError> for Abort {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Db { what, source } => classify(source, what),
            other => Abort::Env(other.to_string()),
        }
    }
}

/// A server error is the file's fault or not by its SQLSTATE alone (see
/// [`db::fault`]); the message carries the server's text, the SQLSTATE and
/// what to do.
fn classify(e: tokio_postgres::Error, what: &str) -> Abort {
    Abort::of(db::fault(&e), db::explain(what, &e))
}

struct Committed {
    rows: u64,
    /// Rejected physical lines.
    rejected: u64,
    lines: Lines,
    rejects: RejectWriter,
    rollup: Option<Rollup>,
}

async fn copy_text(
    tx: &tokio_postgres::Transaction<'_>,
    target: &str,
    rows: String,
) -> Result<(), Abort> {
    if rows.is_empty() {
        return Ok(());
    }
    let sink = tx
        .copy_in::<_, Bytes>(&format!("COPY {target} FROM STDIN"))
        .await
        .map_err(|e| classify(e, "COPY rollups"))?;
    let mut sink = Box::pin(sink);
    sink.send(Bytes::from(rows))
        .await
        .map_err(|e| classify(e, "COPY rollups"))?;
    sink.as_mut()
        .finish()
        .await
        .map_err(|e| classify(e, "COPY rollups"))?;
    Ok(())
}

/// Sends every buffer from `brx` into the COPY until the producer is done;
/// stops at the first error and returns it (closing `brx`, so the producer
/// stops too).
pub(crate) async fn forward(
    sink: &mut std::pin::Pin<Box<tokio_postgres::CopyInSink<Bytes>>>,
    mut brx: tokio::sync::mpsc::Receiver<Bytes>,
) -> Option<tokio_postgres::Error> {
    while let Some(buf) = brx.recv().await {
        if let Err(e) = sink.send(buf).await {
            return Some(e);
        }
    }
    None
}

/// Writes a file's rollups in its transaction (after its trips).
async fn write_rollups(
    tx: &tokio_postgres::Transaction<'_>,
    file_id: i32,
    r: Rollup,
) -> Result<(), Abort> {
    copy_text(
        tx,
        "rollup_region_week (file_id, region_id, week, trips)",
        r.region_week_rows(file_id),
    )
    .await?;
    copy_text(
        tx,
        "rollup_region_source (file_id, region_id, datasource_id, trips, last_at)",
        r.region_source_rows(file_id),
    )
    .await?;
    copy_text(
        tx,
        "rollup_cell_week (file_id, side, ix, iy, weeks, trips)",
        r.cell_week_rows(file_id),
    )
    .await
}

struct Failure {
    abort: Abort,
    rejected: u64,
    rejects: Option<Box<RejectWriter>>,
}

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
    let result = load_in_transaction(ctx, &opened, path, name, progress, start).await;
    progress.finish();
    report.seconds = start.elapsed().as_secs_f64();
    // Set when the path no longer names the file that was read.
    let mut replaced: Option<String> = None;
    let mut move_to = |dir: &Path| {
        archive::move_read_file_into_as(path, opened.id, dir, name).inspect_err(|e| {
            if let archive::MoveError::Replaced { .. } = e {
                replaced = Some(e.to_string());
            }
        })
    };
    match result {
        Ok(c) => {
            report.rows_loaded = c.rows;
            report.rows_rejected = c.rejected;
            report.blank_lines = c.lines.blank;
            report.header_lines = c.lines.header;
            match move_to(&ctx.processed_dir_for(path)) {
                Ok(dest) => {
                    report.rejects_file = c.rejects.place_beside(&dest).unwrap_or_else(|e| {
                        tracing::error!(
                            "{}: could not place the rejects file: {e}",
                            path.display()
                        );
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
        Err(Failure {
            abort: Abort::Duplicate(prev),
            ..
        }) => {
            report.status = Status::AlreadyLoaded {
                file_name: prev.file_name,
                committed_at: prev.committed_at,
            };
            if let Ok(dest) = move_to(&ctx.processed_dir_for(path)) {
                report.now_at = Some(dest);
            }
        }
        Err(Failure {
            abort: Abort::File(reason),
            rejected,
            rejects,
        }) => {
            report.rows_rejected = rejected;
            report.status = Status::Failed {
                reason: reason.clone(),
            };
            match move_to(&ctx.failed_dir_for(path)) {
                Ok(dest) => {
                    let text = format!(
                        "file: {}\nfailed: {}\nreason: {reason}\nnothing from this file was committed (the transaction was rolled back).\n{}",
                        crate::kernel::excerpt::quoted(&path.display().to_string()),
                        chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC"),
                        if rejected > 0 {
                            "the bad lines are listed in the .rejects.csv file beside this one.\nfix them (or raise --max-rejects) and move the file back to the landing directory.\n"
                        } else {
                            "fix the file and move it back to the landing directory.\n"
                        }
                    );
                    if let Err(e) = archive::write_error(&dest, &text) {
                        tracing::error!("{}: could not write the error file: {e}", dest.display());
                    }
                    if let Some(rw) = rejects {
                        report.rejects_file = rw.place_beside(&dest).ok().flatten();
                    }
                    report.now_at = Some(dest);
                }
                Err(e) => tracing::error!("{}: could not move it to failed/: {e}", path.display()),
            }
        }
        Err(Failure {
            abort: Abort::Env(reason),
            ..
        }) => {
            report.status = Status::Error { reason };
        }
    }
    if replaced.is_some() {
        report.now_at = None;
    }
    let mut ev = final_event(&report, name);
    if let Some(note) = replaced {
        ev.reason = Some(match ev.reason.take() {
            Some(r) => format!("{r}; {note}"),
            None => note,
        });
    }
    ctx.events.publish(ev);
    report
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

/// [`load_inner`], then, if the file did not commit, the deletion of the cell
/// points its second connection wrote (after both of its connections are
/// closed: the cleanup waits for their lock).
async fn load_in_transaction(
    ctx: &LoadContext,
    opened: &Arc<map::Opened>,
    path: &Path,
    name: &str,
    progress: &Arc<FileProgress>,
    start: Instant,
) -> Result<Committed, Failure> {
    let mut left = LeftBehind::default();
    let result = load_inner(ctx, opened, path, name, progress, start, &mut left).await;
    if let (Err(_), Some(file_id)) = (&result, left.points_of) {
        points_writer::cleanup(&ctx.conninfo, file_id).await;
    }
    // Names the failed file registered go (once no other file is loading).
    if let (Err(_), Some(dims)) = (&result, left.dims_of) {
        if dims.registered() > 0 {
            if let Err(e) = crate::db::dims::reclaim(&ctx.conninfo, 20).await {
                tracing::warn!(
                    "{name}: could not delete the names it registered: {}",
                    e.one_line()
                );
            }
        }
    }
    result
}

/// What a file that does not commit may leave behind for cleanup: the file id
/// whose cell points the second connection wrote, and the dictionary through
/// which it registered new names.
#[derive(Default)]
struct LeftBehind {
    points_of: Option<i32>,
    dims_of: Option<Arc<Dims>>,
}

async fn load_inner(
    ctx: &LoadContext,
    opened: &Arc<map::Opened>,
    path: &Path,
    name: &str,
    progress: &Arc<FileProgress>,
    start: Instant,
    left: &mut LeftBehind,
) -> Result<Committed, Failure> {
    let fail = |abort| Failure {
        abort,
        rejected: 0,
        rejects: None,
    };
    let file_err = |e: &dyn std::fmt::Display| fail(Abort::File(e.to_string()));
    let before = opened.identity;
    let o = Arc::clone(opened);
    let hash = tokio::task::spawn_blocking(move || o.content_hash())
        .await
        .map_err(|e| fail(Abort::Env(format!("hashing task failed: {e}"))))?
        .map_err(|e| file_err(&e))?;
    let mut client = db::connect(&ctx.conninfo)
        .await
        .map_err(|e| fail(e.into()))?;
    if let Some(prev) = ledger::find(&client, &hash)
        .await
        .map_err(|e| fail(e.into()))?
    {
        return Err(fail(Abort::Duplicate(Box::new(prev))));
    }
    let o = Arc::clone(opened);
    let mapped = tokio::task::spawn_blocking(move || o.map())
        .await
        .map_err(|e| fail(Abort::Env(format!("mapping task failed: {e}"))))?
        .map_err(|e| file_err(&e))?;
    let mapped = Arc::new(mapped);
    let mut header = parse::parse_header(mapped.bytes())
        .map_err(|e| file_err(&format_args!("{}: {e}", path.display())))?;
    header.max_record_bytes = ctx.max_record_bytes;
    if !header.ignored.is_empty() {
        tracing::warn!(
            "{}: ignoring extra column(s): {}",
            path.display(),
            crate::kernel::excerpt::excerpt(
                header.ignored.join(", ").as_bytes(),
                crate::kernel::excerpt::MESSAGE_BYTES
            )
        );
    }
    let header = Arc::new(header);

    let tx = client
        .transaction()
        .await
        .map_err(|e| fail(classify(e, "starting the transaction")))?;
    let Some(file_id) = ledger::claim(&tx, &hash, name, before.size, &ctx.loaded_by)
        .await
        .map_err(|e| fail(e.into()))?
    else {
        drop(tx);
        let prev = ledger::find(&client, &hash)
            .await
            .map_err(|e| fail(e.into()))?;
        return Err(fail(match prev {
            Some(prev) => Abort::Duplicate(Box::new(prev)),
            None => Abort::Env("the ledger reported a concurrent load of the same content that then vanished; retry".into()),
        }));
    };

    // Held until COMMIT or rollback: cell points cleanup waits for it.
    tx.execute(
        "SELECT pg_advisory_xact_lock_shared($1, $2)",
        &[&points_writer::LOCK_CLASS, &file_id],
    )
    .await
    .map_err(|e| fail(classify(e, "locking the file's cell points")))?;
    let file_dims = ctx
        .dims
        .begin_file(&tx, file_id)
        .await
        .map_err(|e| fail(e.into()))?;
    left.dims_of = Some(Arc::clone(&file_dims));
    let mut writer = match ctx.grid {
        Some(_) => {
            left.points_of = Some(file_id);
            Some(
                Writer::start(&ctx.conninfo, file_id)
                    .await
                    .map_err(|e| fail(e.into()))?,
            )
        }
        None => None,
    };
    let sink = tx
        .copy_in::<_, Bytes>(&format!(
            "COPY trips ({COPY_COLUMNS}) FROM STDIN (FORMAT binary)"
        ))
        .await
        .map_err(|e| fail(classify(e, "starting COPY")))?;
    let mut sink = Box::pin(sink);
    sink.send(Bytes::from_static(COPY_HEADER))
        .await
        .map_err(|e| fail(classify(e, "COPY")))?;

    // Encoded chunks flow from the in-order stage (a blocking thread feeding
    // the rayon pool) through the backlog to a reader thread, then to this
    // task through a small bounded channel. With cell points to write the
    // backlog may spill to disk, so that parsing (and then the cell points)
    // need not wait for the trips' COPY; see [`backlog`].
    let disk = if writer.is_some() {
        ctx.backlog_bytes
    } else {
        0
    };
    // A few chunks' worth in memory, as the bounded channel it replaces;
    // packed on disk.
    let (qtx, qrx) = backlog::channel_with::<(u64, u64)>(
        4 * ctx.chunk_bytes,
        disk,
        std::env::temp_dir(),
        Some(Box::new(PackedTrips { file_id })),
    );
    let (btx, brx) = tokio::sync::mpsc::channel::<Bytes>(2);
    let reader = {
        let progress = Arc::clone(progress);
        let label = name.to_string();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            // Progress counts what reaches the COPY, not what was parsed.
            while let Some((buf, (bytes, rows))) = qrx.recv()? {
                progress.advance(bytes, rows);
                if btx.blocking_send(buf).is_err() {
                    break;
                }
            }
            tracing::debug!("{label}: backlog peak {} bytes on disk", qrx.peak_on_disk());
            Ok(())
        })
    };
    let stage = {
        let mapped = Arc::clone(&mapped);
        let header = Arc::clone(&header);
        let dims = Arc::clone(&file_dims);
        let rejects = RejectWriter::new(&ctx.processed_dir_for(path), name, path);
        let (max_rejects, chunk_bytes, depth) = (ctx.max_rejects, ctx.chunk_bytes, ctx.depth);
        let grid = ctx.grid;
        let label = name.to_string();
        let segments = writer
            .as_ref()
            .and_then(Writer::segments)
            .map(|tx| (tx, ctx.points_segment_bytes.max(1)));
        tokio::task::spawn_blocking(move || {
            encode_stage(EncodeStage {
                mapped,
                header,
                dims,
                rejects,
                max_rejects,
                chunk_bytes,
                depth,
                file_id,
                label,
                grid,
                out: qtx,
                segments,
            })
        })
    };
    let copy_error = forward(&mut sink, brx).await;
    let stage = stage
        .await
        .map_err(|e| fail(Abort::Env(format!("encoding task failed: {e}"))))?;
    // A reader that failed stopped the stage early, without an error of its own.
    let reader_error = match reader.await {
        Err(e) => Some(format!("the backlog reader failed: {e}")),
        Ok(Err(e)) => Some(format!(
            "cannot read back the encoded trips queued in {}: {e}",
            std::env::temp_dir().display()
        )),
        Ok(Ok(())) => None,
    };
    let mut done = match (stage, copy_error) {
        (Err(mut f), _) => {
            // The stage only saw that its segments were no longer taken.
            if let Some(e) = writer.as_mut() {
                if let Some(e) = e.failure().await {
                    f.abort = e.into();
                }
            }
            return Err(f);
        }
        (Ok(_), Some(e)) => return Err(fail(classify(e, "COPY"))),
        (Ok(s), None) => s,
    };
    let fail_with = |abort, done: Committed| Failure {
        abort,
        rejected: done.rejected,
        rejects: Some(Box::new(done.rejects)),
    };
    if let Some(msg) = reader_error {
        return Err(fail_with(Abort::Env(msg), done));
    }
    if let Err(e) = sink.send(Bytes::from_static(COPY_TRAILER)).await {
        return Err(fail_with(classify(e, "COPY"), done));
    }
    let copied = match sink.as_mut().finish().await {
        Ok(n) => n,
        Err(e) => return Err(fail_with(classify(e, "finishing COPY"), done)),
    };
    if copied != done.rows {
        return Err(fail_with(
            Abort::Env(format!(
                "the server stored {copied} rows but {} were sent; rolled back",
                done.rows
            )),
            done,
        ));
    }
    match opened.identity_now() {
        Ok(now) if now == before => {}
        _ => {
            let msg = map::MapError::Changed {
                path: path.to_path_buf(),
            }
            .to_string();
            return Err(fail_with(Abort::File(msg), done));
        }
    }
    let trips_done = Instant::now();
    // The writer counted the trips by cell and week from its sorted points.
    let mut cells = None;
    if let Some(w) = writer.take() {
        match w.finish().await {
            Ok(c) => cells = Some(c),
            Err(e) => return Err(fail_with(e.into(), done)),
        }
        if let Err(e) = tx
            .execute(
                "DELETE FROM cell_points_pending WHERE file_id = $1",
                &[&file_id],
            )
            .await
        {
            return Err(fail_with(
                classify(e, "recording the file's cell points"),
                done,
            ));
        }
    }
    let points_done = Instant::now();
    if let Some(mut r) = done.rollup.take() {
        if let Some(c) = cells {
            r.cell_week = c;
        }
        if let Err(abort) = write_rollups(&tx, file_id, r).await {
            return Err(fail_with(abort, done));
        }
        if done.rows < crate::analytics::compact::SMALL_FILE_TRIPS {
            if let Err(e) = tx
                .execute(
                    "INSERT INTO rollup_uncompacted (file_id) VALUES ($1)",
                    &[&file_id],
                )
                .await
            {
                return Err(fail_with(
                    classify(e, "listing the file for compaction"),
                    done,
                ));
            }
        }
    }
    tracing::debug!(
        "{name}: trips copied in {:.2} s, last cell points in {:.2} s, rollups in {:.2} s",
        (trips_done - start).as_secs_f64(),
        (points_done - trips_done).as_secs_f64(),
        points_done.elapsed().as_secs_f64()
    );
    // The file this one replaces goes in this transaction (lifecycle::replace).
    if let Err(e) = crate::lifecycle::replace::unload_in(&tx, &ctx.replace, name, file_id).await {
        return Err(fail_with(Abort::of(e.fault(), e.to_string()), done));
    }
    if let Err(e) = file_dims.commit(&tx).await {
        return Err(fail_with(e.into(), done));
    }
    let seconds = start.elapsed().as_secs_f64();
    if let Err(e) = ledger::finish(&tx, file_id, done.rows, done.rejected, seconds).await {
        return Err(fail_with(e.into(), done));
    }
    if let Err(e) = tx.commit().await {
        return Err(fail_with(classify(e, "COMMIT"), done));
    }
    if ctx.grid.is_some() && done.rows < crate::analytics::compact::SMALL_FILE_TRIPS {
        crate::analytics::compact::after_commit(&ctx.conninfo);
    }
    done.rows = copied;
    Ok(done)
}

struct EncodeStage {
    mapped: Arc<Mapped>,
    header: Arc<Header>,
    dims: Arc<Dims>,
    rejects: RejectWriter,
    max_rejects: u64,
    chunk_bytes: usize,
    depth: usize,
    file_id: i32,
    label: String,
    grid: Option<crate::analytics::rollup::Grid>,
    /// Encoded trips with the input bytes and rows they stand for.
    out: backlog::Sender<(u64, u64)>,
    /// Where full segments of cell points go, and their size in input bytes.
    segments: Option<(tokio::sync::mpsc::Sender<Spill>, usize)>,
}

/// Encoded trips of one file as they wait on disk: only the bytes that vary
/// from row to row ([`crate::kernel::encode::pack_tuples`]).
struct PackedTrips {
    file_id: i32,
}

impl backlog::DiskForm for PackedTrips {
    fn pack(&self, buf: &[u8], out: &mut Vec<u8>) {
        crate::kernel::encode::pack_tuples(buf, out);
    }
    fn unpack(&self, packed: &[u8], out: &mut Vec<u8>) {
        crate::kernel::encode::unpack_tuples(packed, self.file_id, out);
    }
}

/// How the lines of a parsed file add up: `rows + rejected + blank + header`
/// is every physical line of the file.
#[derive(Debug, Clone, Copy, Default)]
struct Lines {
    rejected: u64,
    blank: u64,
    header: u64,
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
fn encode_stage(s: EncodeStage) -> Result<Committed, Failure> {
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
    let spill_for = |consumed: usize, grid: crate::analytics::rollup::Grid| {
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
            let dict: &dyn crate::kernel::encode::Dictionary =
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
                    // The writer stopped; load_inner reports why.
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
