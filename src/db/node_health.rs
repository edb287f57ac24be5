//! Whether the whole database answers: on a Citus coordinator, every worker
//! too (a file whose shard is on a stopped worker fails as in an outage of
//! the database, and is no more to blame); elsewhere, the server alone.

use crate::db::layout::citus_created;
use crate::db::{query_err, DbError};
use tokio_postgres::GenericClient;

/// True when every node of the database answers `client`'s server (always
/// on a database without Citus). A worker that cannot be reached makes it
/// false; the caller bounds the wait (Citus waits up to
/// `citus.node_connection_timeout` for a silent host).
pub async fn all_nodes_answer(client: &impl GenericClient) -> Result<bool, DbError> {
    if !citus_created(client).await? {
        return Ok(true);
    }
    Ok(client
        .query_one(
            "SELECT coalesce(bool_and(success), true) FROM run_command_on_workers('SELECT 1')",
            &[],
        )
        .await
        .map_err(query_err("asking the Citus workers whether they answer"))?
        .get(0))
}
