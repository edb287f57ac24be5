//! The loader: what `load` and `watch` build the same way before the first
//! file — the checked [`Settings`], the prepared database (migrations,
//! leftovers swept), the parser thread pool, the dimension
//! dictionaries, the event publisher and the grid — held in one
//! [`LoadContext`] that every file's transaction shares.
//!
//! ```text
//! Settings ─▶ Loader::build: prepare ─▶ sweep ─▶ threads ─▶ dims ─▶ events ─▶ grid
//!          ─▶ load_one(file) ─▶ copy::load_file (the file's transaction)
//!          ─▶ Loader::finish: last events stored
//! ```

use crate::db::dims::DimStore;
use crate::db::{self, Target};
use crate::ingest::context::LoadContext;
use crate::ingest::copy::load_file;
use crate::notify::events::{hostname, Publisher};
use crate::notify::report::{FileReport, Progress};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_postgres::Client;

/// How files are loaded; shared by `load` and `watch`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub jobs: usize,
    pub max_rejects: u64,
    /// Names new to the database a file may register (`--max-new-names`).
    pub max_new_names: u64,
    pub max_record_bytes: usize,
    pub chunk_bytes: usize,
    pub points_segment_bytes: usize,
    pub backlog_bytes: u64,
    pub processed_dir: Option<PathBuf>,
    pub failed_dir: Option<PathBuf>,
    pub chunk_interval: String,
    pub threads: Option<usize>,
    pub quiet: bool,
    /// Time between two `progress` events of a file (`--progress-every-ms`).
    pub progress_every: std::time::Duration,
    pub mail: Option<crate::notify::mail::MailConfig>,
    /// Days `ingestion_events` keeps (0: for ever); pruned by the loader.
    pub events_retention_days: u32,
    /// Which committed file a loaded file replaces (see [`crate::lifecycle::replace`]).
    pub replace: crate::lifecycle::replace::Policy,
}

/// Errors that stop the run before any file is touched (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Discover(#[from] crate::ingest::discover::DiscoverError),
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error("{0}")]
    Io(String),
}

/// A loader ready for files: the shared context of their transactions and
/// the task that stores the published events.
pub struct Loader {
    pub ctx: Arc<LoadContext>,
    events_task: tokio::task::JoinHandle<()>,
}

/// Where a loader's files go, and what it calls itself in the ledger.
pub struct Role {
    /// `loaded_by` label, e.g. "tripload watch" (pid and host are added).
    pub label: String,
    /// `processed/`; `None`: beside each file's directory.
    pub processed_dir: Option<PathBuf>,
    /// `failed/`; `None`: beside each file's directory.
    pub failed_dir: Option<PathBuf>,
    /// Maintain the rollups (`load --no-rollups` turns them off, to measure
    /// what they cost).
    pub rollups: bool,
}

impl Loader {
    /// Prepares the database and everything a file's transaction needs;
    /// also returns the connection that prepared the database (free for the
    /// caller).
    pub async fn build(
        target: &Target,
        settings: &Settings,
        role: Role,
    ) -> Result<(Loader, Client), SetupError> {
        let (conninfo, mut client) = db::prepare(target, &settings.chunk_interval).await?;
        crate::analytics::points_writer::sweep(&mut client).await?;
        set_threads(settings.threads, &conninfo);
        let dims = Arc::new(database_dims(&conninfo, settings.max_new_names).await?);
        let (events, events_task) =
            Publisher::spawn(conninfo.clone(), db::connect(&conninfo).await?);
        let grid = grid(&client, role.rollups).await?;
        let time_slots = db::layout::TimeSlots::of(&client).await?;
        let ctx = Arc::new(LoadContext {
            conninfo,
            dims,
            max_rejects: settings.max_rejects,
            max_record_bytes: settings.max_record_bytes,
            chunk_bytes: settings.chunk_bytes,
            points_segment_bytes: settings.points_segment_bytes,
            backlog_bytes: settings.backlog_bytes,
            replace: settings.replace.clone(),
            depth: (rayon::current_num_threads() * 2).max(4),
            processed_dir: role.processed_dir,
            failed_dir: role.failed_dir,
            loaded_by: format!(
                "{} pid {} on {}",
                role.label,
                std::process::id(),
                hostname()
            ),
            events,
            grid,
            time_slots,
        });
        Ok((Loader { ctx, events_task }, client))
    }

    /// Lets the events published so far reach the store (within
    /// [`FLUSH_WITHIN`]).
    pub async fn flush(&self) {
        if !self.ctx.events.flush(FLUSH_WITHIN).await {
            tracing::warn!("some ingestion events could not be stored before exiting");
        }
    }

    /// Stores the last events and waits (within [`FLUSH_WITHIN`]) for the
    /// publisher to end, once the files are done and no other copy of the
    /// context is left.
    pub async fn finish(self) {
        self.flush().await;
        let Loader { ctx, events_task } = self;
        drop(ctx);
        let _ = tokio::time::timeout(FLUSH_WITHIN, events_task).await;
    }
}

/// Loads one file with its own progress line and events.
pub async fn load_one(
    ctx: &LoadContext,
    progress: &Progress,
    path: &Path,
    name: &str,
) -> FileReport {
    let size = std::fs::symlink_metadata(path)
        .map(|m| m.len())
        .unwrap_or(0);
    let fp = Arc::new(progress.file(name, size).with_events(ctx.events.clone()));
    load_file(ctx, path, name, &fp).await
}

/// The grid of the rollups, or `None` when they are turned off.
async fn grid(
    client: &Client,
    rollups: bool,
) -> Result<Option<crate::kernel::grid::Grid>, db::DbError> {
    if !rollups {
        tracing::warn!("--no-rollups: weekly and bounding-box answers will not count these files");
        return Ok(None);
    }
    Ok(Some(db::grid(client).await?))
}

/// Sizes the rayon pool once per process (see `--threads`).
pub fn set_threads(threads: Option<usize>, conninfo: &str) {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let threads = threads.unwrap_or(if db::is_local(conninfo) {
        cores.saturating_sub(1).max(1)
    } else {
        cores
    });
    // Only the first build in a process takes effect.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();
    tracing::info!("{} parser thread(s)", rayon::current_num_threads());
}

/// The dictionaries of a run (names read before each file), registering new
/// names through a dedicated autocommit connection, at most `max_new_names`
/// per file.
pub async fn database_dims(conninfo: &str, max_new_names: u64) -> Result<DimStore, db::DbError> {
    crate::db::dims::from_database(conninfo, max_new_names).await
}

/// How long a finishing run waits for its last events to be stored.
pub const FLUSH_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Drops events past the retention period; a failure is logged, never fatal.
pub async fn prune_events(client: &Client, days: u32) {
    match crate::notify::events::prune(client, days).await {
        Ok(0) => {}
        Ok(n) => tracing::info!("pruned {n} ingestion events older than {days} days"),
        Err(e) => tracing::warn!("{e}"),
    }
}
