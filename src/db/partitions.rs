//! The time partitions of `trips` on the Citus layout (migration 8,
//! `sql/migrations/008_citus_time_partitions.sql`): whether `trips` has
//! them, creating the ones a file's days need, and listing the ones wholly
//! before a retention cut-off.
//!
//! Partitions are made before a file's transaction, in a short transaction
//! of their own, by `tripload_trips_partitions` (Citus's
//! `create_time_partitions`; idempotent, creators take turns on advisory
//! lock (29813, 1)). A loader holds lock [`LOADING`] shared for its
//! session from before it makes its partitions to the end of its file;
//! retention takes it exclusively before dropping partitions, so a
//! partition a file needs cannot go between its creation and the file's
//! COPY.

use crate::db::{query_err, DbError};
use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;

/// The advisory lock (class, id) that loading files hold shared and
/// retention exclusively before it drops partitions.
pub const LOADING: (i32, i32) = (29813, 0);

/// The partition interval when `trips` has time partitions (the Citus
/// layout), else `None`.
pub async fn interval(client: &impl GenericClient) -> Result<Option<String>, DbError> {
    Ok(client
        .query_opt(
            "SELECT value FROM tripload_settings WHERE key = 'partition_interval'",
            &[],
        )
        .await
        .map_err(query_err("reading the partition interval of trips"))?
        .map(|r| r.get(0)))
}

/// Holds [`LOADING`] shared for the rest of the session (the file's
/// connection, closed after its transaction).
pub async fn hold_for_loading(client: &impl GenericClient) -> Result<(), DbError> {
    client
        .execute(
            "SELECT pg_advisory_lock_shared($1, $2)",
            &[&LOADING.0, &LOADING.1],
        )
        .await
        .map_err(query_err("taking the loading lock on the time partitions"))?;
    Ok(())
}

/// Creates the missing partitions that hold `days` (days since 1970-01-01,
/// UTC) in a transaction of its own (the statement's); returns how many
/// were created.
pub async fn ensure(client: &impl GenericClient, days: &[i32]) -> Result<i32, DbError> {
    Ok(client
        .query_one("SELECT tripload_trips_partitions($1)", &[&days])
        .await
        .map_err(query_err("creating the time partitions of trips"))?
        .get(0))
}

/// A partition of `trips` and its range `[from, to)`.
#[derive(Debug, Clone)]
pub struct Partition {
    pub name: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// The partitions that end at or before `cut` (their rows are all older).
pub async fn before(
    client: &impl GenericClient,
    cut: DateTime<Utc>,
) -> Result<Vec<Partition>, DbError> {
    Ok(client
        .query(
            "SELECT partition::text, lo, hi FROM tripload_trips_partition_ranges()
             WHERE hi <= $1 ORDER BY lo",
            &[&cut],
        )
        .await
        .map_err(query_err("listing the time partitions before the cut-off"))?
        .iter()
        .map(|r| Partition {
            name: r.get(0),
            from: r.get(1),
            to: r.get(2),
        })
        .collect())
}
