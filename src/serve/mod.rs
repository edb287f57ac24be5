//! `tripload serve`: the HTTP API (weekly, groups, files, cells, events as
//! Server-Sent Events, metrics, OpenAPI), uploads into the landing directory,
//! and the dashboard, in one axum server.
//!
//! ```text
//! request ─▶ auth (bearer token) ─▶ handler ─▶ query permit (semaphore)
//!        ─▶ pooled connection (statement_timeout, read-only) ─▶ same JSON as the CLI
//! ```
//!
//! Secure by default: loopback unless asked; a non-loopback address needs a
//! token or an explicit `--no-auth`; uploads are off unless `--allow-upload`.

pub mod api;
pub mod dashboard;
pub mod error;
pub mod metrics;
pub mod openapi;
pub mod pool;
pub mod sse;
pub mod upload;

use crate::db::Target;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::Router;
use error::ApiError;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A checked server configuration.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub target: Target,
    pub listen: SocketAddr,
    /// Bearer token every request but `/`, its assets and `/healthz` must carry.
    pub token: Option<String>,
    pub allow_upload: bool,
    pub statement_timeout: Duration,
    /// Queries (and pooled connections) at the same time.
    pub max_queries: usize,
    /// Event streams open at the same time (each holds a connection).
    pub max_streams: usize,
    pub landing: PathBuf,
    pub max_upload_bytes: u64,
    /// Settings of the loads `POST /api/ingest` starts.
    pub load: crate::ingest::loader::Settings,
    /// Runs in a watcher's process (`watch --serve`), which does the loading.
    pub beside_watch: bool,
}

/// Errors that stop the server before it listens (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("refusing to listen on {0} (not a loopback address) without a token: set --token or TRIPLOAD_SERVE_TOKEN, or pass --no-auth to serve without authentication")]
    NeedsToken(SocketAddr),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Checks the listen address against the authentication settings.
pub fn check_listen(
    addr: SocketAddr,
    token: Option<&str>,
    no_auth: bool,
) -> Result<(), ServeError> {
    if addr.ip().is_loopback() || token.is_some() || no_auth {
        Ok(())
    } else {
        Err(ServeError::NeedsToken(addr))
    }
}

/// What every handler shares.
pub struct AppState {
    pub cfg: ServeConfig,
    pub conninfo: String,
    pub pool: pool::Pool,
    pub queries: tokio::sync::Semaphore,
    pub streams: Arc<tokio::sync::Semaphore>,
    /// Held while a `POST /api/ingest` load runs.
    pub ingesting: Arc<tokio::sync::Mutex<()>>,
}

pub type Shared = Arc<AppState>;

impl AppState {
    /// A pooled connection, once one of the bounded query permits is free
    /// (503 when none frees up within the statement timeout).
    pub async fn client(&self) -> Result<pool::Guard<'_>, ApiError> {
        let permit = tokio::time::timeout(self.cfg.statement_timeout, self.queries.acquire())
            .await
            .map_err(|_| ApiError::Busy("too many queries at once; try again".into()))?
            .map_err(|_| ApiError::Busy("server shutting down".into()))?;
        let conn = self.pool.get().await?;
        Ok(pool::Guard {
            conn,
            _permit: permit,
        })
    }
}

/// Connects, then serves until SIGINT/SIGTERM.
pub async fn run(cfg: ServeConfig) -> Result<(), ServeError> {
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: cfg.listen,
            source,
        })?;
    serve_on(cfg, listener, shutdown_signal()).await
}

/// Serves on a bound listener until `shutdown` completes (used by
/// `watch --serve`, which shares its shutdown with the watcher).
pub async fn serve_on(
    cfg: ServeConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    // Alone, the server never migrates: a schema missing or behind is an
    // error saying to run `tripload db migrate`. Beside a watcher, the
    // watcher migrates.
    let conninfo = if cfg.beside_watch {
        cfg.target.resolve().await?
    } else {
        crate::db::schema::open_for_reading(&cfg.target).await?
    };
    let pool = pool::Pool::new(&conninfo, cfg.statement_timeout, cfg.max_queries);
    // Fail at start, not at the first request, when the database is away.
    drop(pool.get().await.map_err(|e| match e {
        ApiError::Db(d) => ServeError::Db(d),
        other => ServeError::Io(std::io::Error::other(other.to_string())),
    })?);
    let state = Arc::new(AppState {
        queries: tokio::sync::Semaphore::new(cfg.max_queries.max(1)),
        streams: Arc::new(tokio::sync::Semaphore::new(cfg.max_streams.max(1))),
        ingesting: Arc::new(tokio::sync::Mutex::new(())),
        conninfo,
        pool,
        cfg,
    });
    let addr = listener.local_addr()?;
    eprintln!(
        "tripload serve: listening on http://{addr}/ ({}{})",
        if state.cfg.token.is_some() {
            "bearer token required"
        } else {
            "no authentication"
        },
        if state.cfg.allow_upload {
            ", uploads allowed"
        } else {
            ""
        }
    );
    let (stopping_tx, stopping) = tokio::sync::oneshot::channel::<()>();
    let graceful = axum::serve(listener, router(state))
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stopping_tx.send(());
        })
        .into_future();
    // Event streams never end by themselves: after the signal, requests
    // get a few seconds to finish, then the server stops.
    tokio::select! {
        r = graceful => r?,
        _ = async {
            if stopping.await.is_ok() {
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {}
    }
    Ok(())
}

/// How long requests in progress may go on after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// The routes: the query API under a timeout, the event stream and uploads
/// without one (they last as long as the client wants), auth on all of them.
pub fn router(state: Shared) -> Router {
    let limit = state.cfg.statement_timeout + Duration::from_secs(5);
    let queries = Router::new()
        .route("/api/weekly", get(api::weekly))
        .route("/api/groups", get(api::groups))
        .route("/api/files", get(api::files))
        .route("/api/cells", get(api::cells))
        .route("/metrics", get(metrics::metrics))
        .route("/api/openapi.json", get(openapi::document))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            limit,
        ));
    let long = Router::new()
        .route("/api/events", get(sse::events))
        .route("/api/landing/{name}", put(upload::put_landing))
        .route("/api/ingest", post(upload::ingest))
        .layer(axum::extract::DefaultBodyLimit::disable());
    let protected = queries
        .merge(long)
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            require_token,
        ));
    Router::new()
        .route("/", get(dashboard::index))
        .route("/assets/{name}", get(dashboard::asset))
        .route("/healthz", get(api::healthz))
        .merge(protected)
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .with_state(state)
}

/// Rejects requests without the configured bearer token (header
/// `Authorization: Bearer T`, or `?token=T` for the browser's EventSource,
/// which cannot set headers).
async fn require_token(
    State(state): State<Shared>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(expected) = state.cfg.token.as_deref() else {
        return Ok(next.run(req).await);
    };
    let header = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let query = req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .map(|t| {
                percent_encoding::percent_decode_str(t)
                    .decode_utf8_lossy()
                    .into_owned()
            })
    });
    match header.or(query) {
        Some(t) if same(t.as_bytes(), expected.as_bytes()) => Ok(next.run(req).await),
        Some(_) => Err(ApiError::Unauthorized("wrong token".into())),
        None => Err(ApiError::Unauthorized(
            "this server requires a token: send `Authorization: Bearer <token>`".into(),
        )),
    }
}

/// Compares in time independent of where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_loopback_needs_a_token_or_no_auth() {
        let lo: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let lo6: SocketAddr = "[::1]:8080".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        assert!(check_listen(lo, None, false).is_ok());
        assert!(check_listen(lo6, None, false).is_ok());
        assert!(matches!(
            check_listen(any, None, false),
            Err(ServeError::NeedsToken(_))
        ));
        assert!(check_listen(any, Some("t"), false).is_ok());
        assert!(check_listen(any, None, true).is_ok());
    }

    #[test]
    fn token_comparison() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }
}
