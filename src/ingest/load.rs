//! The `load` run: find the files, prepare the database once (migrations,
//! dimension dictionaries), load up to `--jobs` files at a time, summarize.
//! One file's failure is reported and the run goes on.

use crate::db::dims::DimStore;
use crate::db::{self, Target};
use crate::ingest::copy::{load_file, LoadContext};
use crate::notify::report::{FileReport, Progress};
use futures_util::StreamExt;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_postgres::Client;

/// A checked load configuration (built from the command line).
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub target: Target,
    pub paths: Vec<PathBuf>,
    pub settings: Settings,
}

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
    /// Nice value for this process's threads when the database is local.
    pub nice: i32,
    pub quiet: bool,
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

/// Sizes the rayon pool once per process (see `--threads`) and, when the
/// database runs on this machine, lowers this process's CPU priority (see
/// `--nice`).
pub fn set_threads(threads: Option<usize>, nice: i32, conninfo: &str) {
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
    if nice > 0 && db::is_local(conninfo) {
        lower_priority(nice);
    }
}

/// Sets the nice value of every thread of this process; threads started
/// later inherit it from the thread that starts them.
///
/// Why: with the database on this machine, a load waits for the server's
/// COPY of the trips (one backend, a core's worth of work), while the parser
/// and the cell points run ahead of it through the backlog and can use what
/// CPU is left. At equal priority they take turns with that backend and
/// delay it (15M rows with all rollups: 35.7 / 40.2 s at nice 10 against
/// 38.0 / 41.9 s at 0, runs alternated). Against the server's own session
/// this only works through the session's autogroup; see [`crate::ingest::session`].
fn lower_priority(nice: i32) {
    let tasks = match std::fs::read_dir("/proc/self/task") {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!("cannot list this process's threads to lower their priority: {e}");
            return;
        }
    };
    for task in tasks.flatten() {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<libc::id_t>().ok())
        else {
            continue;
        };
        // On Linux PRIO_PROCESS with a thread id sets that thread alone.
        // Raising one's own nice value needs no privilege.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) };
        if rc != 0 {
            tracing::warn!(
                "cannot lower the priority of thread {tid}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    tracing::debug!("nice {nice}: the local database's COPY comes first");
}

/// Connects, migrates, and returns the connection string.
pub async fn prepare(
    target: &Target,
    chunk_interval: &str,
) -> Result<(String, Client), db::DbError> {
    let conninfo = target.resolve().await?;
    let mut client = db::connect(&conninfo).await?;
    let layout = db::migrate(&mut client, chunk_interval).await?;
    tracing::debug!("schema ready ({layout:?}) at {}", db::describe(&conninfo));
    // Names left by files that did not commit (a crash, an outage).
    crate::db::dims::reclaim(&conninfo, 1).await?;
    Ok((conninfo, client))
}

/// The dictionaries of a run (names read before each file), registering new
/// names through a dedicated autocommit connection, at most `max_new_names`
/// per file.
pub async fn database_dims(conninfo: &str, max_new_names: u64) -> Result<DimStore, db::DbError> {
    crate::db::dims::from_database(conninfo, max_new_names).await
}

/// Loads every file; returns one report per file.
pub async fn run(cfg: LoadConfig) -> Result<Vec<FileReport>, SetupError> {
    let files = crate::ingest::discover::discover(&cfg.paths)?;
    let progress = Arc::new(Progress::new(cfg.settings.quiet));
    if files.is_empty() {
        progress.line(&format!(
            "no files to load in {}",
            cfg.paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        return Ok(Vec::new());
    }
    let (conninfo, mut client) = prepare(&cfg.target, &cfg.settings.chunk_interval).await?;
    crate::analytics::points_writer::sweep(&mut client).await?;
    prune_events(&client, cfg.settings.events_retention_days).await;
    set_threads(cfg.settings.threads, cfg.settings.nice, &conninfo);
    let dims = Arc::new(database_dims(&conninfo, cfg.settings.max_new_names).await?);
    let (events, events_task) =
        crate::notify::events::Publisher::spawn(conninfo.clone(), db::connect(&conninfo).await?);
    let ctx = Arc::new(LoadContext {
        conninfo,
        dims,
        max_rejects: cfg.settings.max_rejects,
        max_record_bytes: cfg.settings.max_record_bytes,
        chunk_bytes: cfg.settings.chunk_bytes,
        points_segment_bytes: cfg.settings.points_segment_bytes,
        backlog_bytes: cfg.settings.backlog_bytes,
        replace: cfg.settings.replace.clone(),
        depth: (rayon::current_num_threads() * 2).max(4),
        processed_dir: cfg.settings.processed_dir.clone(),
        failed_dir: cfg.settings.failed_dir.clone(),
        loaded_by: format!(
            "tripload {} pid {} on {}",
            env!("CARGO_PKG_VERSION"),
            std::process::id(),
            hostname()
        ),
        events,
        grid: if std::env::var_os("TRIPLOAD_BENCH_NO_ROLLUPS").is_some() {
            // Only for measuring what the rollups cost (benches/rollup-cost.sh):
            // the files loaded this way are missing from every weekly answer.
            tracing::warn!("TRIPLOAD_BENCH_NO_ROLLUPS is set: not maintaining the rollups; weekly and bounding-box answers will not count these files");
            None
        } else {
            Some(db::grid(&client).await?)
        },
    });
    let reports = futures_util::stream::iter(files)
        .map(|path| {
            let ctx = Arc::clone(&ctx);
            let progress = Arc::clone(&progress);
            async move {
                let size = std::fs::symlink_metadata(&path)
                    .map(|m| m.len())
                    .unwrap_or(0);
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let fp = Arc::new(progress.file(&name, size).with_events(ctx.events.clone()));
                let report = load_file(&ctx, &path, &name, &fp).await;
                progress.line(&one_line(&report));
                report
            }
        })
        .buffered(cfg.settings.jobs.max(1))
        .collect::<Vec<_>>()
        .await;
    // Names of this run's failed files that could not go while others loaded.
    if let Err(e) = crate::db::dims::reclaim(&ctx.conninfo, 1).await {
        tracing::warn!(
            "could not delete the names of failed files: {}",
            e.one_line()
        );
    }
    // Small files' rollups merged before the process ends (the background
    // compactor only merges what is worth it while files keep coming).
    if ctx.grid.is_some() {
        match crate::analytics::compact::compact(
            &ctx.conninfo,
            crate::analytics::compact::Policy::All,
            crate::analytics::compact::Wait::Yes,
        )
        .await
        {
            Ok(Some(c)) if c.files > 0 => tracing::info!("{c}"),
            Ok(_) => {}
            Err(e) => tracing::warn!(
                "compaction failed (the next load or `tripload db compact` retries): {e}"
            ),
        }
    }
    // Let the last events reach the store before the process ends.
    if !ctx.events.flush(FLUSH_WITHIN).await {
        tracing::warn!("some ingestion events could not be stored before exiting");
    }
    drop(ctx);
    let _ = tokio::time::timeout(FLUSH_WITHIN, events_task).await;
    if let Some(mail) = &cfg.settings.mail {
        crate::notify::mail::deliver(mail, &reports).await;
    }
    Ok(reports)
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

pub fn one_line(r: &FileReport) -> String {
    use crate::notify::report::Status;
    let name = r.path.display();
    match &r.status {
        Status::Loaded => format!(
            "{name}: loaded {} rows ({} lines rejected, {} blank) in {:.2} s, {:.0} rows/s",
            r.rows_loaded,
            r.rows_rejected,
            r.blank_lines,
            r.seconds,
            r.rows_per_second()
        ),
        Status::AlreadyLoaded { file_name, .. } => {
            format!("{name}: already loaded (same content as {file_name}); skipped")
        }
        Status::Failed { reason } => format!("{name}: FAILED: {reason}"),
        Status::Error { reason } => format!("{name}: ERROR (left in place, retry later): {reason}"),
        Status::Refused { reason } => {
            format!("{name}: REFUSED (left in place, not read): {reason}")
        }
    }
}

pub fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into())
}
