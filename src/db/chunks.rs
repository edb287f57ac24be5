//! The TimescaleDB chunks of `trips` on the hypertable layout: creating the
//! ones a file's days need, before its transaction, through
//! `tripload_trips_chunks` (`sql/functions/chunks.sql`, TimescaleDB's
//! `_timescaledb_functions.create_chunk`; idempotent, creators take turns
//! on advisory lock (29813, 1)). A chunk created by a COPY instead keeps
//! TimescaleDB's lock on `trips` to the end of that file's transaction,
//! and every other loader needing a new chunk waits for it.

use crate::db::{query_err, DbError};
use tokio_postgres::GenericClient;

/// Whether the server's TimescaleDB offers its chunk API (every license
/// but `apache`, whose build has no `create_chunk`).
pub async fn api_available(client: &impl GenericClient) -> Result<bool, DbError> {
    let license: Option<String> = client
        .query_one("SELECT current_setting('timescaledb.license', true)", &[])
        .await
        .map_err(query_err("reading TimescaleDB's license"))?
        .get(0);
    Ok(license.as_deref() != Some("apache"))
}

/// Creates the missing chunks that hold `days` (days since 1970-01-01,
/// UTC) in a transaction of its own (the statement's); returns how many
/// were created.
pub async fn ensure(client: &impl GenericClient, days: &[i32]) -> Result<i32, DbError> {
    Ok(client
        .query_one("SELECT tripload_trips_chunks($1)", &[&days])
        .await
        .map_err(query_err("creating the TimescaleDB chunks of trips"))?
        .get(0))
}
