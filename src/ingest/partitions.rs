//! The time slots a file needs (Citus partitions, TimescaleDB chunks:
//! [`TimeSlots`]), made before its transaction.
//!
//! ```text
//! [Citus: loading lock (shared, the file's session)] ─▶ days: one pass
//! over the mapped file on the rayon pool, datetime field only
//! (kernel::days) ─▶ tripload_trips_partitions(days) or
//! tripload_trips_chunks(days): missing slots created, own transaction
//! ─▶ BEGIN (the file's transaction)
//! ```
//! A COPY into `trips` never meets a missing partition (no row is lost or
//! rejected for it) nor creates a chunk, and no DDL runs inside a file's
//! transaction, where it would wait for every other file's transaction and
//! its own COPY (Citus), or hold up every other loader that needs a new
//! chunk until the file commits (TimescaleDB). A plain table has no slots:
//! nothing happens.

use crate::db::layout::TimeSlots;
use crate::db::partitions;
use crate::ingest::map::Mapped;
use crate::ingest::outcome::{Abort, Cause};
use crate::kernel::chunk::Chunker;
use crate::kernel::days::days_in_chunk;
use crate::kernel::parse::Header;
use rayon::prelude::*;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;
use tokio_postgres::Client;

/// Bytes per chunk of the days pass.
const PASS_CHUNK: usize = 8 << 20;

/// Makes the time slots the file's rows need (see the module doc), on the
/// file's connection before its transaction. Any failure is the
/// environment's: the file is retried.
pub async fn prepare(
    client: &Client,
    slots: TimeSlots,
    mapped: &Arc<Mapped>,
    header: &Arc<Header>,
    name: &str,
) -> Result<(), Abort> {
    let env = |e: crate::db::DbError| Abort::Env(Cause::new(e.one_line()).sqlstate(e.code()));
    // Citus retention drops partitions only under this lock. TimescaleDB's
    // `drop_chunks` takes none: a chunk it drops before the COPY is made
    // again by the COPY.
    if slots == TimeSlots::Partitions {
        partitions::hold_for_loading(client).await.map_err(env)?;
    }
    let start = Instant::now();
    let (m, h) = (Arc::clone(mapped), Arc::clone(header));
    let days = tokio::task::spawn_blocking(move || days_of_file(&m, &h))
        .await
        .map_err(|e| Abort::env(format!("{}: the days pass failed: {e}", slots.noun())))?;
    let scanned = start.elapsed();
    let made = slots.make(client, &days).await.map_err(env)?;
    tracing::debug!(
        "{name}: {} days, read in {:.2} s; {made} {} created in {:.2} s",
        days.len(),
        scanned.as_secs_f64(),
        slots.noun(),
        (start.elapsed() - scanned).as_secs_f64()
    );
    Ok(())
}

/// The days (since 1970-01-01, UTC) the file's rows fall on, ascending; the
/// pages read are released as each chunk is done.
pub fn days_of_file(mapped: &Mapped, header: &Header) -> Vec<i32> {
    let bytes = mapped.bytes();
    let chunks: Vec<_> = Chunker::new(bytes, header.data_start, PASS_CHUNK)
        .max_record_bytes(header.max_record_bytes)
        .collect();
    chunks
        .into_par_iter()
        .map(|r| {
            let days = days_in_chunk(&bytes[r.clone()], header);
            mapped.release(r);
            days
        })
        .reduce(BTreeSet::new, |mut a, mut b| {
            if a.len() < b.len() {
                std::mem::swap(&mut a, &mut b);
            }
            a.extend(b);
            a
        })
        .into_iter()
        .collect()
}
