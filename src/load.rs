//! The `load` run: find the files, prepare the database once (migrations,
//! dimension dictionaries), load up to `--jobs` files at a time, summarize.
//! One file's failure is reported and the run goes on.

use crate::copy::{load_file, LoadContext};
use crate::db::{self, Target};
use crate::dims::{Dim, DimError, Dims, Resolver};
use crate::report::{FileReport, Progress};
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
    pub mail: Option<crate::mail::MailConfig>,
}

/// Errors that stop the run before any file is touched (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Discover(#[from] crate::discover::DiscoverError),
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
/// this only works through the session's autogroup; see [`crate::session`].
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
    Ok((conninfo, client))
}

/// Dictionaries preloaded from the database, registering new names through a
/// dedicated autocommit connection.
pub async fn database_dims(client: &Client, conninfo: &str) -> Result<Dims, db::DbError> {
    let mut known = Vec::new();
    for dim in [Dim::Region, Dim::Datasource] {
        let rows = client
            .query(&format!("SELECT name, id FROM {}", dim.table()), &[])
            .await
            .map_err(db::query_err("reading dimension names"))?;
        known.extend(
            rows.iter()
                .map(|r| (dim, r.get::<_, String>(0), r.get::<_, i16>(1))),
        );
    }
    let dim_client = std::sync::Mutex::new(Arc::new(db::connect(conninfo).await?));
    let conninfo = conninfo.to_string();
    let handle = tokio::runtime::Handle::current();
    let resolver: Resolver = Box::new(move |dim, name| {
        let t = dim.table();
        // The SELECT covers a name a concurrent loader inserted first; its
        // snapshot may predate that commit, hence the retry.
        let sql = format!(
            "WITH ins AS (INSERT INTO {t} (name) VALUES ($1) ON CONFLICT (name) DO NOTHING RETURNING id)
             SELECT id FROM ins UNION ALL SELECT id FROM {t} WHERE name = $1"
        );
        let err = |reason: String| DimError::Resolve {
            dim: t,
            name: name.to_string(),
            reason,
        };
        for _ in 0..5 {
            let Ok(mut guard) = dim_client.lock() else {
                return Err(err("dimension connection lock poisoned".into()));
            };
            if guard.is_closed() {
                // The database went away and came back (a long-running watcher).
                let fresh = handle
                    .block_on(db::connect(&conninfo))
                    .map_err(|e| err(e.to_string()))?;
                *guard = Arc::new(fresh);
            }
            let c = Arc::clone(&guard);
            drop(guard);
            let rows = handle
                .block_on(async { c.query(&sql, &[&name]).await })
                .map_err(|e| {
                    if e.to_string().contains("maximum value") {
                        return DimError::Full(t);
                    }
                    err(e.to_string())
                })?;
            if let Some(r) = rows.first() {
                return Ok(r.get(0));
            }
        }
        Err(err("the name was neither inserted nor found".into()))
    });
    Ok(Dims::new(known, resolver))
}

/// Loads every file; returns one report per file.
pub async fn run(cfg: LoadConfig) -> Result<Vec<FileReport>, SetupError> {
    let files = crate::discover::discover(&cfg.paths)?;
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
    crate::points_writer::sweep(&mut client).await?;
    set_threads(cfg.settings.threads, cfg.settings.nice, &conninfo);
    let dims = Arc::new(database_dims(&client, &conninfo).await?);
    let (events, events_task) =
        crate::events::Publisher::spawn(conninfo.clone(), db::connect(&conninfo).await?);
    let ctx = Arc::new(LoadContext {
        conninfo,
        dims,
        max_rejects: cfg.settings.max_rejects,
        chunk_bytes: cfg.settings.chunk_bytes,
        points_segment_bytes: cfg.settings.points_segment_bytes,
        backlog_bytes: cfg.settings.backlog_bytes,
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
                let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
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
    // Small files' rollups merged before the process ends (the background
    // compactor only merges what is worth it while files keep coming).
    if ctx.grid.is_some() {
        match crate::compact::compact(
            &ctx.conninfo,
            crate::compact::Policy::All,
            crate::compact::Wait::Yes,
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
    drop(ctx);
    let _ = events_task.await;
    if let Some(mail) = &cfg.settings.mail {
        crate::mail::deliver(mail, &reports).await;
    }
    Ok(reports)
}

pub fn one_line(r: &FileReport) -> String {
    use crate::report::Status;
    let name = r.path.display();
    match &r.status {
        Status::Loaded => format!(
            "{name}: loaded {} rows ({} rejected) in {:.2} s, {:.0} rows/s",
            r.rows_loaded,
            r.rows_rejected,
            r.seconds,
            r.rows_per_second()
        ),
        Status::AlreadyLoaded { file_name, .. } => {
            format!("{name}: already loaded (same content as {file_name}); skipped")
        }
        Status::Failed { reason } => format!("{name}: FAILED: {reason}"),
        Status::Error { reason } => format!("{name}: ERROR (left in place, retry later): {reason}"),
    }
}

pub fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into())
}
