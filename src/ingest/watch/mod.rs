//! `tripload watch`: load files as they land, without polling for them.
//!
//! ```text
//! inotify + one scan ─▶ queue (ready / quiet period) ─▶ claim (rename into
//!   processing/) ─▶ load_one (the same transaction as `tripload load`)
//!   ─▶ settle: committed/rejected ─▶ processed/ or failed/
//!              environment's fault ─▶ back to landing, claiming paused
//!                                     (quarantined after N in a row)
//!   ─▶ report (mail per file or digest)
//! upkeep, in the background: prune old events; retention (`--retain`)
//! ```
//!
//! [`queue`] decides when a file is complete, [`claim`] takes it so that no
//! other watcher does, [`attempts`] counts its environment failures. This
//! file holds the loop that ties them together.

mod attempts;
mod claim;
mod queue;

use crate::db::{self, Target};
use crate::ingest::context::LoadContext;
use crate::ingest::loader::{load_one, prune_events, Loader, Role, Settings, SetupError};
use crate::lifecycle::retain::OlderThan;
use crate::notify::events::{Event, Kind, Publisher};
use crate::notify::report::{FileReport, Progress, Status};
use attempts::{quarantine, Attempts};
use claim::{claim, release, release_stale, set_aside, Claimed};
use notify::{RecursiveMode, Watcher};
use queue::{Queue, Refusal};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinSet;
use tokio::time::{Instant, Interval};

#[derive(Debug, Clone)]
pub struct WatchConfig {
    pub target: Target,
    pub landing: PathBuf,
    pub quiet_period: Duration,
    pub settings: Settings,
    /// Zero: a report per file; otherwise one digest per period.
    pub report_every: Duration,
    /// Environment failures in a row after which a file is quarantined.
    pub max_attempts: u32,
    /// Retention policy: the trips older than this are dropped at start and
    /// then every `retain_every`.
    pub retain: Option<OlderThan>,
    pub retain_every: Duration,
}

/// Exit code of a watcher aborted by a second SIGINT/SIGTERM: files in
/// flight were rolled back and returned to landing.
pub use crate::exit::EXIT_ABORTED;

/// How often `watch` prunes events past their retention.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Files claimed and loading: (path in processing/, original name). A second
/// signal moves them back to landing from the signal handler's side.
type InFlight = Arc<Mutex<HashSet<(PathBuf, String)>>>;

/// Runs until SIGINT/SIGTERM. A first signal stops claiming and lets the files
/// in flight finish, then stores the last events; a second returns them to
/// landing and exits at once with [`EXIT_ABORTED`] (the database
/// rolls back their open transactions).
pub async fn run(cfg: WatchConfig) -> Result<(), SetupError> {
    let dirs = Dirs::create(&cfg.landing)?;
    let (loader, client) = Loader::build(&cfg.target, &cfg.settings, dirs.role(&cfg)).await?;
    let ctx = Arc::clone(&loader.ctx);
    let attempts = Attempts::start(&ctx.conninfo, client, cfg.max_attempts).await;
    release_stale(&dirs.processing, &dirs.landing, &ctx.events);
    let (_watcher, mut rx) = watch_dir(&dirs.landing)?;
    let mut w = Watch::new(cfg, dirs, ctx, attempts);
    w.progress.line(&format!(
        "watching {} (quiet period {:?}, {} job(s)); Ctrl-C to stop",
        w.dirs.landing.display(),
        w.cfg.quiet_period,
        w.cfg.settings.jobs
    ));
    let refused = w.queue.rescan(&w.dirs.landing);
    w.refused(refused);
    let mut signals = Signals::install()?;
    let mut prune_every = interval(PRUNE_EVERY);
    let mut retain_every = interval(w.cfg.retain_every);

    loop {
        w.claim_ready();
        if w.stopping && w.in_flight.is_empty() {
            break;
        }
        let next_check = w.next_check();
        tokio::select! {
            Some(res) = rx.recv() => w.on_notify(res),
            _ = sleep_until(next_check) => w.queue.promote(w.cfg.quiet_period),
            Some(done) = w.in_flight.join_next(), if !w.in_flight.is_empty() => {
                if let Ok((claimed, report)) = done {
                    w.settle(claimed, report).await;
                }
            },
            Some(_) = w.mails.join_next(), if !w.mails.is_empty() => {},
            Some(_) = w.upkeep.join_next(), if !w.upkeep.is_empty() => {},
            _ = prune_every.tick() => w.prune_events(),
            _ = retain_every.tick(), if w.cfg.retain.is_some() => w.retain(),
            _ = sleep_until(w.digest_due) => w.send_digest(),
            _ = signals.next() => w.stopping = signal(w.stopping, &w.in_flight_paths, &w.dirs.landing),
        }
    }
    w.finish(&loader).await;
    Ok(())
}

/// The landing directory and `processing/` beside it.
struct Dirs {
    landing: PathBuf,
    processing: PathBuf,
}

impl Dirs {
    fn create(landing: &Path) -> Result<Dirs, SetupError> {
        std::fs::create_dir_all(landing).map_err(|e| {
            SetupError::Io(format!(
                "cannot create the landing directory {}: {e}",
                landing.display()
            ))
        })?;
        let landing = landing.canonicalize().unwrap_or(landing.to_path_buf());
        let processing = Dirs::base(&landing).join("processing");
        std::fs::create_dir_all(&processing)
            .map_err(|e| SetupError::Io(format!("cannot create {}: {e}", processing.display())))?;
        Ok(Dirs {
            landing,
            processing,
        })
    }

    fn base(landing: &Path) -> PathBuf {
        landing.parent().unwrap_or(Path::new(".")).to_path_buf()
    }

    /// processed/ and failed/ beside landing unless configured elsewhere.
    fn role(&self, cfg: &WatchConfig) -> Role {
        let base = Dirs::base(&self.landing);
        let s = &cfg.settings;
        Role {
            label: "tripload watch".into(),
            processed_dir: Some(s.processed_dir.clone().unwrap_or(base.join("processed"))),
            failed_dir: Some(s.failed_dir.clone().unwrap_or(base.join("failed"))),
            rollups: true,
        }
    }
}

type DirEvents = UnboundedReceiver<notify::Result<notify::Event>>;

/// Starts the filesystem notifications of `landing` (not recursive).
fn watch_dir(landing: &Path) -> Result<(notify::RecommendedWatcher, DirEvents), SetupError> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let cannot =
        |e: notify::Error| SetupError::Io(format!("cannot watch {}: {e}", landing.display()));
    let mut watcher = notify::recommended_watcher(move |res| {
        let _ = tx.send(res);
    })
    .map_err(cannot)?;
    watcher
        .watch(landing, RecursiveMode::NonRecursive)
        .map_err(cannot)?;
    Ok((watcher, rx))
}

fn interval(every: Duration) -> Interval {
    let mut i = tokio::time::interval(every.max(Duration::from_millis(100)));
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    i
}

/// Sleeps until `t`, or for ever when there is nothing to wait for.
async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// SIGTERM and SIGINT, either of which stops the watcher.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, SetupError> {
        use tokio::signal::unix::{signal, SignalKind};
        let cannot =
            |what: &str, e: std::io::Error| SetupError::Io(format!("cannot handle {what}: {e}"));
        Ok(Signals {
            term: signal(SignalKind::terminate()).map_err(|e| cannot("SIGTERM", e))?,
            int: signal(SignalKind::interrupt()).map_err(|e| cannot("SIGINT", e))?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {},
            _ = self.int.recv() => {},
        }
    }
}

/// The watcher's state between two turns of its loop.
struct Watch {
    cfg: WatchConfig,
    dirs: Dirs,
    ctx: Arc<LoadContext>,
    events: Publisher,
    progress: Arc<Progress>,
    attempts: Attempts,
    queue: Queue,
    in_flight: JoinSet<(Claimed, FileReport)>,
    in_flight_paths: InFlight,
    /// Claiming is paused until then after an environment failure.
    paused_until: Instant,
    backoff: Duration,
    stopping: bool,
    /// Reports go out in the background: a slow mail server never holds a file.
    mails: JoinSet<()>,
    digest: Vec<FileReport>,
    digest_due: Option<Instant>,
    /// Event pruning and retention, one of each at a time.
    upkeep: JoinSet<()>,
    retaining: Arc<std::sync::atomic::AtomicBool>,
}

impl Watch {
    fn new(cfg: WatchConfig, dirs: Dirs, ctx: Arc<LoadContext>, attempts: Attempts) -> Watch {
        let progress = Arc::new(Progress::new(
            cfg.settings.quiet,
            cfg.settings.progress_every,
        ));
        Watch {
            events: ctx.events.clone(),
            cfg,
            dirs,
            ctx,
            progress,
            attempts,
            queue: Queue::default(),
            in_flight: JoinSet::new(),
            in_flight_paths: InFlight::default(),
            paused_until: Instant::now(),
            backoff: Duration::ZERO,
            stopping: false,
            mails: JoinSet::new(),
            digest: Vec::new(),
            digest_due: None,
            upkeep: JoinSet::new(),
            retaining: Default::default(),
        }
    }

    /// Claims what is ready, up to `--jobs` files in flight, and starts
    /// loading each.
    fn claim_ready(&mut self) {
        while !self.stopping
            && self.in_flight.len() < self.cfg.settings.jobs
            && Instant::now() >= self.paused_until
        {
            let Some(path) = self.queue.ready.pop_front() else {
                break;
            };
            let Some(claimed) = claim(&path, &self.dirs.processing, &mut self.queue, &self.events)
            else {
                continue;
            };
            let mut ev = Event::new(Kind::Claimed, &claimed.name);
            ev.size_bytes = std::fs::symlink_metadata(&claimed.path)
                .map(|m| m.len())
                .ok();
            self.events.publish(ev);
            if let Ok(mut s) = self.in_flight_paths.lock() {
                s.insert((claimed.path.clone(), claimed.name.clone()));
            }
            let (ctx, progress) = (Arc::clone(&self.ctx), Arc::clone(&self.progress));
            self.in_flight.spawn(async move {
                let report = load_one(&ctx, &progress, &claimed.path, &claimed.name).await;
                (claimed, report)
            });
        }
    }

    /// When the loop must wake without a notification: a pending file's quiet
    /// period ends, or claiming resumes after a pause.
    fn next_check(&self) -> Option<Instant> {
        let resume = (Instant::now() < self.paused_until && !self.queue.ready.is_empty())
            .then_some(self.paused_until);
        self.queue
            .next_check(self.cfg.quiet_period)
            .into_iter()
            .chain(resume)
            .min()
    }

    fn on_notify(&mut self, res: notify::Result<notify::Event>) {
        let refused = match res {
            Ok(ev) => self.queue.on_notify(ev, &self.dirs.landing),
            Err(e) => {
                // Whatever was lost, a listing finds it.
                tracing::error!("watch error: {e}; scanning the directory again");
                self.queue.rescan(&self.dirs.landing)
            }
        };
        self.refused(refused);
    }

    fn refused(&self, refused: Vec<Refusal>) {
        for r in refused {
            tracing::warn!(
                "{}: refused: a {}, not a regular file",
                r.path.display(),
                r.kind
            );
            self.events.publish(r.event());
        }
    }

    /// A file's load ended: where it goes next, then its line and report.
    async fn settle(&mut self, claimed: Claimed, mut report: FileReport) {
        if let Ok(mut s) = self.in_flight_paths.lock() {
            s.remove(&(claimed.path.clone(), claimed.name.clone()));
        }
        match report.status.clone() {
            Status::Error { reason } => {
                self.environment_failed(&claimed, &mut report, &reason)
                    .await
            }
            Status::Refused { reason } => {
                // Swapped for a link or the like after it was claimed.
                set_aside(&claimed, &self.ctx.failed_dir_for(&claimed.path), &reason);
                self.backoff = Duration::ZERO;
            }
            _ => {
                self.attempts.forget(&claimed.key).await;
                self.backoff = Duration::ZERO;
            }
        }
        self.progress.line(&crate::ingest::load::one_line(&report));
        self.report(report);
    }

    /// Not the file's fault: back to landing with claiming paused (doubling
    /// up to a minute), or to `failed/` once it has failed `--max-attempts`
    /// times in a row while the database answered.
    async fn environment_failed(&mut self, c: &Claimed, report: &mut FileReport, reason: &str) {
        let history = self.attempts.failed(c, reason).await;
        let Some(h) = history.filter(|h| self.attempts.exhausted(h)) else {
            release(c, &self.dirs.landing, reason, &mut self.queue, &self.events);
            self.backoff =
                (self.backoff * 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
            self.paused_until = Instant::now() + self.backoff;
            tracing::warn!("retrying {} in {:?}: {reason}", c.name, self.backoff);
            return;
        };
        self.backoff = Duration::ZERO;
        match quarantine(c, &self.ctx.failed_dir_for(&c.path), &h) {
            Ok(dest) => {
                let mut ev = Event::new(Kind::Quarantined, &c.name);
                ev.reason = Some(format!(
                    "failed {} times in a row (last: {reason}); moved to {}",
                    h.len(),
                    dest.display()
                ));
                self.events.publish(ev);
                tracing::error!(
                    "quarantined {} after {} failed attempts: {reason}",
                    c.name,
                    h.len()
                );
                report.status = Status::Failed {
                    reason: format!(
                        "quarantined after {} failed attempts; last: {reason}",
                        h.len()
                    ),
                };
                report.now_at = Some(dest);
                self.attempts.forget(&c.key).await;
            }
            Err(e) => {
                tracing::error!("cannot quarantine {}: {e}", c.name);
                release(c, &self.dirs.landing, reason, &mut self.queue, &self.events);
            }
        }
    }

    /// Mails a finished file's report now, or adds it to the digest. A file
    /// that goes back to landing is not finished: no report.
    fn report(&mut self, report: FileReport) {
        let Some(mail) = self.cfg.settings.mail.clone() else {
            return;
        };
        if matches!(report.status, Status::Error { .. }) {
            return;
        }
        if self.cfg.report_every.is_zero() {
            self.mails.spawn(async move {
                crate::notify::mail::deliver(&mail, std::slice::from_ref(&report)).await;
            });
        } else {
            self.digest.push(report);
            self.digest_due
                .get_or_insert(Instant::now() + self.cfg.report_every);
        }
    }

    fn send_digest(&mut self) {
        self.digest_due = None;
        let batch = std::mem::take(&mut self.digest);
        if let (Some(mail), false) = (self.cfg.settings.mail.clone(), batch.is_empty()) {
            self.mails.spawn(async move {
                crate::notify::mail::deliver(&mail, &batch).await;
            });
        }
    }

    /// Deletes events past `--events-retention-days`, in the background.
    fn prune_events(&mut self) {
        let days = self.cfg.settings.events_retention_days;
        if days == 0 {
            return;
        }
        let conninfo = self.ctx.conninfo.clone();
        self.upkeep.spawn(async move {
            match db::connect(&conninfo).await {
                Ok(c) => prune_events(&c, days).await,
                Err(e) => tracing::warn!("cannot prune old events: {e}"),
            }
        });
    }

    /// Applies the `--retain` policy in the background, one run at a time.
    /// A failed run is logged and tried again at the next tick: loading goes on.
    fn retain(&mut self) {
        let Some(older) = self.cfg.retain.clone() else {
            return;
        };
        if self
            .retaining
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let (conninfo, busy) = (self.ctx.conninfo.clone(), Arc::clone(&self.retaining));
        let progress = Arc::clone(&self.progress);
        self.upkeep.spawn(async move {
            match crate::lifecycle::retain::apply(&conninfo, &older).await {
                Ok(Some(line)) => progress.line(&line),
                Ok(None) => {}
                Err(e) => tracing::error!(
                    "retention ({}) failed, tried again later: {e}",
                    older.text()
                ),
            }
            busy.store(false, std::sync::atomic::Ordering::Release);
        });
    }

    /// After the last file: the last events are stored and the reports go
    /// out, each within a bound.
    async fn finish(mut self, loader: &Loader) {
        self.upkeep.abort_all();
        loader.flush().await;
        self.send_digest();
        // Give queued reports a bounded time to go out (they are on disk anyway).
        let _ = tokio::time::timeout(Duration::from_secs(30), async {
            while self.mails.join_next().await.is_some() {}
        })
        .await;
        self.progress.line("watcher stopped");
    }
}

/// First signal: stop claiming. Second: return claimed files and exit now
/// with [`EXIT_ABORTED`].
fn signal(stopping: bool, in_flight: &Mutex<HashSet<(PathBuf, String)>>, landing: &Path) -> bool {
    if !stopping {
        eprintln!("stopping: no new files are taken; waiting for the files in flight (signal again to abort them)");
        return true;
    }
    if let Ok(set) = in_flight.lock() {
        for (claimed, name) in set.iter() {
            let _ = crate::ingest::archive::move_into_as(claimed, landing, name);
        }
    }
    eprintln!("aborted: files in flight were rolled back and returned to the landing directory");
    std::process::exit(i32::from(EXIT_ABORTED))
}
