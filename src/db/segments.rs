//! Schema upkeep before migrating: the per-segment cell points tables older
//! loaders created are moved into `rollup_cell_points` and dropped.

use crate::db::{query_err, DbError};
use tokio_postgres::Client;

/// The columns of `rollup_cell_points` (the same list as
/// `crate::analytics::points::COPY_COLUMNS`; a test there keeps them equal).
pub const CELL_POINTS_COLUMNS: &str =
    "file_id, side, ix, iy, weeks, ends, lons, lats_sorted, lat_pos";

/// Children of `rollup_cell_points` moved and dropped per transaction.
const ABSORB_BATCH: i64 = 200;

/// Moves the rows of the per-segment child tables that older loaders created
/// (`rollup_cell_points_<file>_<n>`, inheriting from `rollup_cell_points`)
/// into the table itself and drops them, [`ABSORB_BATCH`] per transaction:
/// dropping a child locks it, its index and its TOAST table until COMMIT, so
/// thousands of them in one transaction would exhaust the lock table.
/// Serialized with migrations by their lock. Returns the tables dropped.
pub async fn absorb_segment_tables(client: &mut Client) -> Result<u64, DbError> {
    let mut dropped = 0;
    loop {
        let tx = client
            .transaction()
            .await
            .map_err(query_err("starting to move old cell points tables"))?;
        let n: i64 = tx
            .query_one(
                "WITH lock AS (SELECT pg_advisory_xact_lock(hashtext('tripload-migrate')))
                 SELECT count(*) FROM lock, pg_inherits
                  WHERE to_regclass('rollup_cell_points') IS NOT NULL
                    AND inhparent = to_regclass('rollup_cell_points')",
                &[],
            )
            .await
            .map_err(query_err("counting old cell points tables"))?
            .get(0);
        if n == 0 {
            return Ok(dropped);
        }
        tx.batch_execute(&format!(
            "DO $$
             DECLARE child regclass;
             BEGIN
                 FOR child IN SELECT inhrelid::regclass FROM pg_inherits
                              WHERE inhparent = 'rollup_cell_points'::regclass
                              ORDER BY inhrelid LIMIT {ABSORB_BATCH} LOOP
                     EXECUTE format('INSERT INTO rollup_cell_points ({cols}) SELECT {cols} FROM ONLY %s', child);
                     EXECUTE format('DROP TABLE %s', child);
                 END LOOP;
             END $$;",
            cols = CELL_POINTS_COLUMNS
        ))
        .await
        .map_err(query_err("moving old cell points tables into rollup_cell_points"))?;
        tx.commit()
            .await
            .map_err(query_err("committing the move of old cell points tables"))?;
        dropped += n.min(ABSORB_BATCH) as u64;
        tracing::info!("moved {dropped} per-segment cell points tables into rollup_cell_points");
    }
}
