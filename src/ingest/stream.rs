//! Streaming a file's trips into its transaction: the binary COPY is opened,
//! the in-order stage ([`encode_stage`]) runs on a blocking thread, its
//! encoded chunks wait in the [`backlog`] (on disk when parsing runs ahead of
//! the database), a reader thread hands them to this task, which feeds the
//! COPY; then the COPY ends and the server's row count is checked.
//!
//! ```text
//! encode_stage ─▶ backlog (memory, then disk) ─▶ reader thread ─▶ COPY trips
//! ```

use crate::analytics::points_writer::Writer;
use crate::ingest::backlog;
use crate::ingest::context::LoadContext;
use crate::ingest::encode_stage::{encode_stage, EncodeStage};
use crate::ingest::map::Mapped;
use crate::ingest::outcome::{classify, Abort, Committed, Failure};
use crate::kernel::encode::{COPY_COLUMNS, COPY_HEADER, COPY_TRAILER};
use crate::kernel::parse::Header;
use crate::notify::report::FileProgress;
use bytes::Bytes;
use futures_util::SinkExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_postgres::{CopyInSink, Transaction};

type Sink = Pin<Box<CopyInSink<Bytes>>>;

/// The file being streamed.
pub struct Input<'a> {
    pub mapped: &'a Arc<Mapped>,
    pub header: &'a Arc<Header>,
    pub dims: &'a Arc<crate::db::dims::Dims>,
    pub path: &'a Path,
    pub name: &'a str,
    pub file_id: i32,
    pub progress: &'a Arc<FileProgress>,
}

/// Copies every trip of the file into `trips` in `tx` and checks that the
/// server stored as many rows as were sent. Returns what was parsed and the
/// rows the server counted.
pub async fn copy_trips(
    ctx: &LoadContext,
    tx: &Transaction<'_>,
    input: Input<'_>,
    writer: &mut Option<Writer>,
) -> Result<(Committed, u64), Failure> {
    let mut sink = start_copy(tx).await?;
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
    // A few chunks' worth in memory, the rest on disk.
    let (qtx, qrx) =
        backlog::channel::<(u64, u64)>(4 * ctx.chunk_bytes, disk, std::env::temp_dir());
    let (btx, brx) = tokio::sync::mpsc::channel::<Bytes>(2);
    let reader = spawn_reader(qrx, btx, input.progress, input.name);
    let stage = spawn_stage(ctx, &input, writer.as_ref(), qtx);
    let copy_error = crate::db::copy_in::forward(&mut sink, brx).await;
    let done = join(stage, reader, copy_error, writer).await?;
    end_copy(sink, done).await
}

/// Opens the binary COPY of the trips and sends its header.
async fn start_copy(tx: &Transaction<'_>) -> Result<Sink, Failure> {
    let sink = tx
        .copy_in::<_, Bytes>(&format!(
            "COPY trips ({COPY_COLUMNS}) FROM STDIN (FORMAT binary)"
        ))
        .await
        .map_err(|e| Failure::new(classify(e, "starting COPY")))?;
    let mut sink = Box::pin(sink);
    sink.send(Bytes::from_static(COPY_HEADER))
        .await
        .map_err(|e| Failure::new(classify(e, "COPY")))?;
    Ok(sink)
}

/// The thread that reads the backlog back and hands its buffers to the COPY.
fn spawn_reader(
    qrx: backlog::Receiver<(u64, u64)>,
    btx: tokio::sync::mpsc::Sender<Bytes>,
    progress: &Arc<FileProgress>,
    name: &str,
) -> JoinHandle<std::io::Result<()>> {
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
}

/// Starts the in-order stage of the file on a blocking thread.
fn spawn_stage(
    ctx: &LoadContext,
    input: &Input<'_>,
    writer: Option<&Writer>,
    out: backlog::Sender<(u64, u64)>,
) -> JoinHandle<Result<Committed, Failure>> {
    let stage = EncodeStage {
        mapped: Arc::clone(input.mapped),
        header: Arc::clone(input.header),
        dims: Arc::clone(input.dims),
        rejects: crate::ingest::archive::RejectWriter::new(
            &ctx.processed_dir_for(input.path),
            input.name,
            input.path,
        ),
        max_rejects: ctx.max_rejects,
        chunk_bytes: ctx.chunk_bytes,
        depth: ctx.depth,
        file_id: input.file_id,
        label: input.name.to_string(),
        grid: ctx.grid,
        out,
        segments: writer
            .and_then(Writer::segments)
            .map(|tx| (tx, ctx.points_segment_bytes.max(1))),
    };
    tokio::task::spawn_blocking(move || encode_stage(stage))
}

/// Waits for the stage and the reader; the first failure wins (a stage that
/// only saw its segments no longer taken reports the writer's failure).
async fn join(
    stage: JoinHandle<Result<Committed, Failure>>,
    reader: JoinHandle<std::io::Result<()>>,
    copy_error: Option<tokio_postgres::Error>,
    writer: &mut Option<Writer>,
) -> Result<Committed, Failure> {
    let stage = stage
        .await
        .map_err(|e| Failure::new(Abort::env(format!("encoding task failed: {e}"))))?;
    // A reader that failed stopped the stage early, without an error of its own.
    let reader_error = match reader.await {
        Err(e) => Some(format!("the backlog reader failed: {e}")),
        Ok(Err(e)) => Some(format!(
            "cannot read back the encoded trips queued in {}: {e}",
            std::env::temp_dir().display()
        )),
        Ok(Ok(())) => None,
    };
    let done = match (stage, copy_error) {
        (Err(mut f), _) => {
            // The stage only saw that its segments were no longer taken.
            if let Some(e) = writer.as_mut() {
                if let Some(e) = e.failure().await {
                    f.abort = e.into();
                }
            }
            return Err(f);
        }
        (Ok(_), Some(e)) => return Err(Failure::new(classify(e, "COPY"))),
        (Ok(s), None) => s,
    };
    match reader_error {
        Some(msg) => Err(Failure::after(Abort::env(msg), done)),
        None => Ok(done),
    }
}

/// Ends the COPY and checks the server's row count against the rows sent.
async fn end_copy(mut sink: Sink, done: Committed) -> Result<(Committed, u64), Failure> {
    if let Err(e) = sink.send(Bytes::from_static(COPY_TRAILER)).await {
        return Err(Failure::after(classify(e, "COPY"), done));
    }
    let copied = match sink.as_mut().finish().await {
        Ok(n) => n,
        Err(e) => return Err(Failure::after(classify(e, "finishing COPY"), done)),
    };
    if copied != done.rows {
        return Err(Failure::after(
            Abort::env(format!(
                "the server stored {copied} rows but {} were sent; rolled back",
                done.rows
            )),
            done,
        ));
    }
    Ok((done, copied))
}
