//! A small pool of database connections for the API (deadpool), each opened
//! with the project's own connect (TLS rules of `db::pgtls`) and set to
//! read-only transactions with the server-side statement timeout.

use crate::db::{self, query_err, DbError};
use crate::serve::error::ApiError;
use std::time::Duration;

pub struct Manager {
    conninfo: String,
    statement_timeout: Duration,
}

impl deadpool::managed::Manager for Manager {
    type Type = tokio_postgres::Client;
    type Error = DbError;

    async fn create(&self) -> Result<tokio_postgres::Client, DbError> {
        let client = db::connect(&self.conninfo).await?;
        let ms = self.statement_timeout.as_millis().max(1);
        client
            .batch_execute(&format!(
                "SET statement_timeout = {ms}; SET default_transaction_read_only = on; \
                 SET application_name = 'tripload serve'"
            ))
            .await
            .map_err(query_err("preparing the API connection"))?;
        Ok(client)
    }

    async fn recycle(
        &self,
        client: &mut tokio_postgres::Client,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<DbError> {
        if client.is_closed() {
            return Err(deadpool::managed::RecycleError::Message(
                "connection closed".into(),
            ));
        }
        Ok(())
    }
}

/// The pool; its size bounds the connections the API holds.
pub struct Pool {
    inner: deadpool::managed::Pool<Manager>,
    wait: Duration,
}

/// A pooled connection with its query permit.
pub struct Guard<'a> {
    pub conn: deadpool::managed::Object<Manager>,
    pub _permit: tokio::sync::SemaphorePermit<'a>,
}

impl std::ops::Deref for Guard<'_> {
    type Target = tokio_postgres::Client;
    fn deref(&self) -> &tokio_postgres::Client {
        &self.conn
    }
}

impl Pool {
    pub fn new(conninfo: &str, statement_timeout: Duration, size: usize) -> Pool {
        let mgr = Manager {
            conninfo: conninfo.to_string(),
            statement_timeout,
        };
        // Building fails only without a runtime, which is given here.
        let inner = deadpool::managed::Pool::builder(mgr)
            .max_size(size.max(1))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .unwrap_or_else(|e| unreachable!("pool with a runtime: {e}"));
        Pool {
            inner,
            wait: statement_timeout,
        }
    }

    /// A connection (503 when none is free in time or the database is away).
    pub async fn get(&self) -> Result<deadpool::managed::Object<Manager>, ApiError> {
        use deadpool::managed::PoolError;
        let timeouts = deadpool::managed::Timeouts {
            wait: Some(self.wait),
            create: Some(self.wait),
            recycle: Some(self.wait),
        };
        match self.inner.timeout_get(&timeouts).await {
            Ok(c) => Ok(c),
            Err(PoolError::Backend(e)) => Err(ApiError::Db(e)),
            Err(PoolError::Timeout(_)) => Err(ApiError::Busy(
                "no database connection free in time; try again".into(),
            )),
            Err(e) => Err(ApiError::Busy(format!("database pool: {e}"))),
        }
    }
}
