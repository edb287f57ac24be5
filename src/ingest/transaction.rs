//! One file's transaction, as named steps:
//!
//! ```text
//! hash ─▶ not a duplicate ─▶ map + header ─▶ [Citus: time partitions]
//!      ─▶ BEGIN ─▶ claim (ledger row)
//!      ─▶ begin file (lock, dimensions, cell points writer)
//!      ─▶ stream trips (COPY, counts verified) ─▶ file unchanged
//!      ─▶ cell points ─▶ rollups ─▶ names, ledger counts ─▶ COMMIT
//! ```
//! Any failure before COMMIT rolls the whole file back; what it left outside
//! the transaction (cell points written by the second connection, names it
//! registered) is cleaned up after.

use crate::analytics::points_writer::{self, Writer};
use crate::analytics::rollup;
use crate::db::dims::Dims;
use crate::db::ledger;
use crate::db::{self};
use crate::ingest::context::LoadContext;
use crate::ingest::map::{self, Mapped};
use crate::ingest::outcome::{classify, Abort, Cause, Committed, Failure};
use crate::ingest::stream::{self, Input};
use crate::kernel::parse::{self, Header};
use crate::kernel::rollup::{CellWeeks, Rollup};
use crate::notify::report::FileProgress;
use bytes::Bytes;
use futures_util::SinkExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tokio_postgres::{Client, Transaction};

/// [`load_inner`], then, if the file did not commit, the deletion of the cell
/// points its second connection wrote (after both of its connections are
/// closed: the cleanup waits for their lock).
pub async fn run(
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
    let before = opened.identity;
    let hash = content_hash(opened).await?;
    let mut client = db::connect(&ctx.conninfo)
        .await
        .map_err(|e| Failure::new(e.into()))?;
    refuse_duplicate(&client, &hash).await?;
    let (mapped, header) = map_with_header(ctx, opened, path).await?;
    if ctx.time_slots != crate::db::layout::TimeSlots::None {
        crate::ingest::partitions::prepare(&client, ctx.time_slots, &mapped, &header, name)
            .await
            .map_err(Failure::new)?;
    }
    let tx = client
        .transaction()
        .await
        .map_err(|e| Failure::new(classify(e, "starting the transaction")))?;
    let Some(file_id) = ledger::claim(&tx, &hash, name, before.size, &ctx.loaded_by)
        .await
        .map_err(|e| Failure::new(e.into()))?
    else {
        drop(tx);
        return Err(claimed_by_another(&client, &hash).await);
    };
    let (file_dims, mut writer) = begin_file(ctx, &tx, file_id, left).await?;
    let input = Input {
        mapped: &mapped,
        header: &header,
        dims: &file_dims,
        path,
        name,
        file_id,
        progress,
    };
    let (mut done, copied) = stream::copy_trips(ctx, &tx, input, &mut writer).await?;
    if let Err(abort) = unchanged(opened, before, path) {
        return Err(Failure::after(abort, done));
    }
    let trips_done = Instant::now();
    let cells = match write_cell_points(&tx, file_id, writer.take()).await {
        Ok(c) => c,
        Err(abort) => return Err(Failure::after(abort, done)),
    };
    let points_done = Instant::now();
    if let Some(r) = done.rollup.take() {
        if let Err(abort) = write_file_rollups(&tx, file_id, r, cells, done.rows).await {
            return Err(Failure::after(abort, done));
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
        let cause = Cause::new(e.to_string()).sqlstate(e.code());
        return Err(Failure::after(Abort::of(e.fault(), cause), done));
    }
    if let Err(abort) = commit(ctx, tx, &file_dims, file_id, &done, start).await {
        return Err(Failure::after(abort, done));
    }
    done.rows = copied;
    Ok(done)
}

/// The content hash that identifies the file in the ledger.
async fn content_hash(opened: &Arc<map::Opened>) -> Result<String, Failure> {
    let o = Arc::clone(opened);
    tokio::task::spawn_blocking(move || o.content_hash())
        .await
        .map_err(|e| Failure::new(Abort::env(format!("hashing task failed: {e}"))))?
        .map_err(|e| Failure::new(Abort::file(e.to_string())))
}

/// Fails as a duplicate when the same content was committed before.
async fn refuse_duplicate(client: &Client, hash: &str) -> Result<(), Failure> {
    match ledger::find(client, hash)
        .await
        .map_err(|e| Failure::new(e.into()))?
    {
        Some(prev) => Err(Failure::new(Abort::Duplicate(Box::new(prev)))),
        None => Ok(()),
    }
}

/// Why the ledger would not let this transaction claim the content: another
/// one committed it meanwhile (a duplicate), or vanished (retry).
async fn claimed_by_another(client: &Client, hash: &str) -> Failure {
    match ledger::find(client, hash).await {
        Err(e) => Failure::new(e.into()),
        Ok(Some(prev)) => Failure::new(Abort::Duplicate(Box::new(prev))),
        Ok(None) => Failure::new(Abort::env(
            "the ledger reported a concurrent load of the same content that then vanished; retry",
        )),
    }
}

/// Maps the file and reads its header (extra columns are named and ignored).
async fn map_with_header(
    ctx: &LoadContext,
    opened: &Arc<map::Opened>,
    path: &Path,
) -> Result<(Arc<Mapped>, Arc<Header>), Failure> {
    let file_err = |e: &dyn std::fmt::Display| Failure::new(Abort::file(e.to_string()));
    let o = Arc::clone(opened);
    let mapped = tokio::task::spawn_blocking(move || o.map())
        .await
        .map_err(|e| Failure::new(Abort::env(format!("mapping task failed: {e}"))))?
        .map_err(|e| file_err(&e))?;
    let mapped = Arc::new(mapped);
    let mut header = parse::parse_header(mapped.bytes()).map_err(|e| {
        let cause = Cause::new(format!("{}: {e}", path.display()));
        Failure::new(Abort::File(match e {
            parse::HeaderError::Malformed { line, .. } => cause.at(line, None),
            _ => cause,
        }))
    })?;
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
    Ok((mapped, Arc::new(header)))
}

/// The file's lock (held until COMMIT or rollback: the cell points cleanup
/// waits for it), its view of the dimension dictionaries, and, with rollups,
/// the second connection that writes its cell points.
async fn begin_file(
    ctx: &LoadContext,
    tx: &Transaction<'_>,
    file_id: i32,
    left: &mut LeftBehind,
) -> Result<(Arc<Dims>, Option<Writer>), Failure> {
    tx.execute(
        "SELECT pg_advisory_xact_lock_shared($1, $2)",
        &[&points_writer::LOCK_CLASS, &file_id],
    )
    .await
    .map_err(|e| Failure::new(classify(e, "locking the file's cell points")))?;
    let file_dims = ctx
        .dims
        .begin_file(tx, file_id)
        .await
        .map_err(|e| Failure::new(e.into()))?;
    left.dims_of = Some(Arc::clone(&file_dims));
    let writer = match ctx.grid {
        Some(_) => {
            left.points_of = Some(file_id);
            Some(
                Writer::start(&ctx.conninfo, file_id)
                    .await
                    .map_err(|e| Failure::new(e.into()))?,
            )
        }
        None => None,
    };
    Ok((file_dims, writer))
}

/// Fails the file when its path no longer names the file that was read, or
/// it changed while it was read.
fn unchanged(opened: &map::Opened, before: map::Identity, path: &Path) -> Result<(), Abort> {
    match opened.identity_now() {
        Ok(now) if now == before => Ok(()),
        _ => Err(Abort::file(
            map::MapError::Changed {
                path: path.to_path_buf(),
            }
            .to_string(),
        )),
    }
}

/// Waits for the last cell points and records them in the transaction; the
/// writer counted the trips by cell and week from its sorted points.
async fn write_cell_points(
    tx: &Transaction<'_>,
    file_id: i32,
    writer: Option<Writer>,
) -> Result<Option<CellWeeks>, Abort> {
    let Some(w) = writer else {
        return Ok(None);
    };
    let cells = w.finish().await?;
    tx.execute(
        "DELETE FROM cell_points_pending WHERE file_id = $1",
        &[&file_id],
    )
    .await
    .map_err(|e| classify(e, "recording the file's cell points"))?;
    Ok(Some(cells))
}

/// Writes the file's rollups (with the writer's cell counts) and lists a
/// small file for compaction.
async fn write_file_rollups(
    tx: &Transaction<'_>,
    file_id: i32,
    mut r: Rollup,
    cells: Option<CellWeeks>,
    rows: u64,
) -> Result<(), Abort> {
    if let Some(c) = cells {
        r.cell_week = c;
    }
    write_rollups(tx, file_id, r).await?;
    if rows < crate::analytics::compact::SMALL_FILE_TRIPS {
        tx.execute(
            "INSERT INTO rollup_uncompacted (file_id) VALUES ($1)",
            &[&file_id],
        )
        .await
        .map_err(|e| classify(e, "listing the file for compaction"))?;
    }
    Ok(())
}

/// Commits the names the file brought, its ledger counts and the
/// transaction; then wakes the compactor for a small file.
async fn commit(
    ctx: &LoadContext,
    tx: Transaction<'_>,
    file_dims: &Dims,
    file_id: i32,
    done: &Committed,
    start: Instant,
) -> Result<(), Abort> {
    file_dims.commit(&tx).await?;
    let seconds = start.elapsed().as_secs_f64();
    ledger::finish(&tx, file_id, done.rows, done.rejected, seconds).await?;
    tx.commit().await.map_err(|e| classify(e, "COMMIT"))?;
    if ctx.grid.is_some() && done.rows < crate::analytics::compact::SMALL_FILE_TRIPS {
        crate::analytics::compact::after_commit(&ctx.conninfo);
    }
    Ok(())
}

/// COPYs text rows into `target` (nothing when there are none).
async fn copy_text(tx: &Transaction<'_>, target: &str, rows: String) -> Result<(), Abort> {
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

/// Writes a file's rollups in its transaction (after its trips).
async fn write_rollups(tx: &Transaction<'_>, file_id: i32, r: Rollup) -> Result<(), Abort> {
    copy_text(
        tx,
        "rollup_region_week (file_id, region_id, week, trips)",
        rollup::region_week_rows(&r, file_id),
    )
    .await?;
    copy_text(
        tx,
        "rollup_region_source (file_id, region_id, datasource_id, trips, last_at)",
        rollup::region_source_rows(&r, file_id),
    )
    .await?;
    copy_text(
        tx,
        "rollup_cell_week (file_id, side, ix, iy, weeks, trips)",
        rollup::rollup_cell_week_rows(&r, file_id),
    )
    .await
}
