//! `tripload watch`: load files as they land, without polling for them.
//!
//! Discovery is by filesystem notifications (inotify) plus one scan at start.
//! A file is taken only when complete: a name that was renamed into the
//! landing directory is ready at once (writers copy to `*.part`/dotfiles, then
//! rename); any other file must keep its size and mtime for the quiet period.
//! A ready file is claimed by an atomic rename into `processing/` under a name
//! carrying this host and pid, so several watchers (here or on other machines
//! sharing the directory) never take the same file; claims of dead processes
//! on this host are released at start. Each claimed file goes through the
//! same one-transaction load as `tripload load`.

use crate::db::{self, Target};
use crate::ingest::discover::is_ignored;
use crate::ingest::loader::{load_one, prune_events, Loader, Role, Settings, SetupError};
use crate::ingest::map::{identity, FileId, Identity};
use crate::notify::events::hostname;
use crate::notify::events::{Event, Kind, Publisher};
use crate::notify::report::{FileReport, Progress, Status};
use notify::{EventKind, RecursiveMode, Watcher};
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;

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
}

const CLAIM_SEP: &str = "~";

/// `processing/<host>~<pid>~<seq>~<name>`. The sequence number keeps two
/// files of the same name apart when one lands again while the first is
/// still loading: without it the second claim would replace the first.
fn claim_name(name: &str) -> String {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        "{}{CLAIM_SEP}{}{CLAIM_SEP}{seq}{CLAIM_SEP}{name}",
        hostname(),
        std::process::id()
    )
}

/// (host, pid, original name) of a claimed file name; also reads the
/// `<host>~<pid>~<name>` claims of earlier versions.
fn parse_claim(claimed: &str) -> Option<(&str, u32, &str)> {
    let mut it = claimed.splitn(3, CLAIM_SEP);
    let host = it.next()?;
    let pid = it.next()?.parse().ok()?;
    let rest = it.next()?;
    match rest.split_once(CLAIM_SEP) {
        Some((seq, name)) if !seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit()) => {
            Some((host, pid, name))
        }
        _ => Some((host, pid, rest)),
    }
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Moves claims left by dead processes of this host back to landing (at
/// start-up, before this process claims anything).
fn release_stale(processing: &Path, landing: &Path, events: &Publisher) {
    let Ok(rd) = std::fs::read_dir(processing) else {
        return;
    };
    let host = hostname();
    for e in rd.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((h, pid, orig)) = parse_claim(&name) else {
            continue;
        };
        // Our own pid counts as gone: this runs before we claim anything, so
        // such a claim is from an earlier process that had the same pid — the
        // rule in a container, where the watcher is always pid 1.
        if h == host && (pid == std::process::id() || !alive(pid)) {
            match crate::ingest::archive::move_into_as(&e.path(), landing, orig) {
                Ok(_) => {
                    let mut ev = Event::new(Kind::Released, orig);
                    ev.reason = Some(format!("claimed by process {pid}, which is gone"));
                    events.publish(ev);
                    tracing::warn!("released {orig}: its loader (pid {pid}) died");
                }
                Err(err) => tracing::error!("cannot release {}: {err}", e.path().display()),
            }
        }
    }
}

/// An entry of the landing directory that is not a regular file.
#[derive(Debug, Clone, PartialEq)]
struct Refusal {
    path: PathBuf,
    kind: &'static str,
}

impl Refusal {
    fn event(&self) -> Event {
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut ev = Event::new(Kind::Refused, &name);
        ev.reason = Some(
            crate::ingest::map::MapError::NotRegular {
                path: self.path.clone(),
                kind: self.kind,
            }
            .to_string(),
        );
        ev
    }
}

/// Files seen in landing and not yet claimed.
#[derive(Default)]
struct Queue {
    /// Written in place: taken once unchanged for the quiet period.
    pending: HashMap<PathBuf, (Option<Identity>, Instant)>,
    /// Ready to claim, in order.
    ready: VecDeque<PathBuf>,
    /// Entries refused so far (each is reported once per run).
    refused: HashSet<(PathBuf, FileId)>,
}

impl Queue {
    /// Takes one notification; returns the entries it made us refuse. A
    /// notification flagged for rescan (the kernel's queue overflowed, so
    /// events were lost) lists the directory again.
    fn on_notify(&mut self, ev: notify::Event, landing: &Path) -> Vec<Refusal> {
        if ev.need_rescan() {
            tracing::warn!(
                "{}: notifications were lost (queue overflow); scanning the directory again",
                landing.display()
            );
            return self.rescan(landing);
        }
        let renamed_in = matches!(
            ev.kind,
            EventKind::Modify(notify::event::ModifyKind::Name(
                notify::event::RenameMode::To | notify::event::RenameMode::Both
            ))
        );
        let mut refused = Vec::new();
        for p in ev.paths {
            if p.parent() != Some(landing) || is_ignored(&p) {
                continue;
            }
            // Not following links: what the name itself is.
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue; // gone
            };
            if !m.file_type().is_file() {
                refused.extend(self.refuse(p, &m));
            } else if renamed_in {
                self.pending.remove(&p);
                if !self.ready.contains(&p) {
                    self.ready.push_back(p);
                }
            } else if !self.ready.contains(&p) {
                self.pending
                    .insert(p, (Some(identity_of(&m)), Instant::now()));
            }
        }
        refused
    }

    /// Lists landing (at start, and whenever notifications were lost): every
    /// regular file not yet known waits for the quiet period; anything else
    /// is refused.
    fn rescan(&mut self, landing: &Path) -> Vec<Refusal> {
        let Ok(rd) = std::fs::read_dir(landing) else {
            tracing::error!("cannot list {}", landing.display());
            return Vec::new();
        };
        let now = Instant::now();
        let mut paths: Vec<PathBuf> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| !is_ignored(p))
            .collect();
        paths.sort();
        let mut refused = Vec::new();
        for p in paths {
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if !m.file_type().is_file() {
                refused.extend(self.refuse(p, &m));
            } else if !self.ready.contains(&p) && !self.pending.contains_key(&p) {
                self.pending.insert(p, (Some(identity_of(&m)), now));
            }
        }
        refused
    }

    fn refuse(&mut self, p: PathBuf, m: &std::fs::Metadata) -> Option<Refusal> {
        self.pending.remove(&p);
        self.ready.retain(|r| r != &p);
        let kind = crate::ingest::map::kind_name(m.file_type());
        self.refused
            .insert((p.clone(), FileId::of(m)))
            .then_some(Refusal { path: p, kind })
    }

    /// When the next pending file may be ready.
    fn next_check(&self, quiet: Duration) -> Option<Instant> {
        self.pending.values().map(|(_, seen)| *seen + quiet).min()
    }

    /// Moves pending files unchanged for the quiet period to `ready`.
    fn promote(&mut self, quiet: Duration) {
        let now = Instant::now();
        let due: Vec<PathBuf> = self
            .pending
            .iter()
            .filter(|(_, (_, seen))| *seen + quiet <= now)
            .map(|(p, _)| p.clone())
            .collect();
        for p in due {
            let before = self.pending.remove(&p).and_then(|(id, _)| id);
            match identity(&p) {
                Err(_) => {} // gone, or no longer a regular file (refused when claimed)
                Ok(id) if Some(id) == before => self.ready.push_back(p),
                Ok(id) => {
                    self.pending.insert(p, (Some(id), now));
                }
            }
        }
    }
}

fn identity_of(m: &std::fs::Metadata) -> Identity {
    Identity {
        size: m.len(),
        modified: m.modified().ok(),
    }
}

/// Which file a claim holds: its device and inode, and the key its failed
/// attempts are counted under (device, inode, size, mtime).
#[derive(Debug, Clone)]
struct Claimed {
    path: PathBuf,
    name: String,
    id: FileId,
    key: String,
}

fn attempt_key(m: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!(
        "{}:{}:{}:{}.{:09}",
        m.dev(),
        m.ino(),
        m.len(),
        m.mtime(),
        m.mtime_nsec()
    )
}

/// Environment failures of each file, counted towards quarantine.
///
/// A failure counts only while the database answers: during an outage every
/// file fails alike and none is to blame. The history is kept in
/// `load_attempts`, so it survives a restart of the watcher (a file that
/// failed twice before a restart is quarantined at its next failure), and
/// in memory.
struct Attempts {
    conninfo: String,
    client: Option<tokio_postgres::Client>,
    max: u32,
    /// Keys with a row in `load_attempts`.
    stored: HashSet<String>,
}

const ATTEMPTS_DB_WITHIN: Duration = Duration::from_secs(5);

impl Attempts {
    async fn start(conninfo: &str, client: tokio_postgres::Client, max: u32) -> Attempts {
        let stored = match client
            .query("SELECT file_key FROM load_attempts", &[])
            .await
        {
            Ok(rows) => rows.iter().map(|r| r.get::<_, String>(0)).collect(),
            Err(e) => {
                tracing::warn!("cannot read the attempt history: {}", db::error_text(&e));
                HashSet::new()
            }
        };
        Attempts {
            conninfo: conninfo.to_string(),
            client: Some(client),
            max,
            stored,
        }
    }

    async fn client(&mut self) -> Option<&tokio_postgres::Client> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = tokio::time::timeout(ATTEMPTS_DB_WITHIN, db::connect(&self.conninfo))
                .await
                .ok()
                .and_then(Result::ok);
        }
        self.client.as_ref()
    }

    /// Records a failure of `c`; returns the file's history of failures in a
    /// row (this one last) when it counts, `None` while the database is away.
    async fn failed(&mut self, c: &Claimed, reason: &str) -> Option<Vec<String>> {
        let line = format!(
            "{}  {}",
            chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC"),
            reason.replace(['\n', '\r'], " ")
        );
        let client = self.client().await?;
        let row = tokio::time::timeout(
            ATTEMPTS_DB_WITHIN,
            client.query_one(
                "INSERT INTO load_attempts (file_key, file_name, attempts)
                 VALUES ($1, $2, jsonb_build_array($3::text))
                 ON CONFLICT (file_key) DO UPDATE
                   SET attempts = load_attempts.attempts || jsonb_build_array($3::text),
                       file_name = EXCLUDED.file_name, updated_at = now()
                 RETURNING attempts::text",
                &[&c.key, &c.name, &line],
            ),
        )
        .await
        .ok()?
        .ok()?;
        self.stored.insert(c.key.clone());
        serde_json::from_str::<Vec<String>>(row.get::<_, &str>(0)).ok()
    }

    /// Whether `history` calls for quarantine.
    fn exhausted(&self, history: &[String]) -> bool {
        history.len() >= self.max as usize
    }

    /// Forgets the failures of a file that has left the queue.
    async fn forget(&mut self, key: &str) {
        if !self.stored.remove(key) {
            return;
        }
        let Some(client) = self.client().await else {
            return;
        };
        let _ = tokio::time::timeout(
            ATTEMPTS_DB_WITHIN,
            client.execute("DELETE FROM load_attempts WHERE file_key = $1", &[&key]),
        )
        .await;
    }
}

/// Moves a file that failed `history.len()` times in a row to `failed/`, with
/// the history in `<file>.error.txt`.
fn quarantine(c: &Claimed, failed_dir: &Path, history: &[String]) -> Result<PathBuf, String> {
    let dest = crate::ingest::archive::move_read_file_into_as(&c.path, c.id, failed_dir, &c.name)
        .map_err(|e| e.to_string())?;
    let mut text = format!(
        "file: {}\nquarantined: {}\nits load failed {} times in a row for reasons other than its content, while the database was reachable:\n",
        c.name,
        chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC"),
        history.len()
    );
    for h in history {
        text.push_str("  ");
        text.push_str(h);
        text.push('\n');
    }
    text.push_str("nothing from this file was committed. once the cause is fixed, move the file back to the landing directory.\n");
    if let Err(e) = crate::ingest::archive::write_error(&dest, &text) {
        tracing::error!("{}: could not write the error file: {e}", dest.display());
    }
    Ok(dest)
}

/// Exit code of a watcher aborted by a second SIGINT/SIGTERM: files in
/// flight were rolled back and returned to landing.
pub use crate::exit::EXIT_ABORTED;

/// Runs until SIGINT/SIGTERM. A first signal stops claiming and lets the files
/// in flight finish, then stores the last events; a second returns them to
/// landing and exits at once with [`EXIT_ABORTED`] (the database
/// rolls back their open transactions).
pub async fn run(cfg: WatchConfig) -> Result<(), SetupError> {
    let landing = cfg.landing.clone();
    std::fs::create_dir_all(&landing).map_err(|e| {
        SetupError::Io(format!(
            "cannot create the landing directory {}: {e}",
            landing.display()
        ))
    })?;
    let landing = landing.canonicalize().unwrap_or(landing);
    let base = landing.parent().unwrap_or(Path::new(".")).to_path_buf();
    let processing = base.join("processing");
    std::fs::create_dir_all(&processing)
        .map_err(|e| SetupError::Io(format!("cannot create {}: {e}", processing.display())))?;

    let role = Role {
        label: "tripload watch".into(),
        processed_dir: Some(
            cfg.settings
                .processed_dir
                .clone()
                .unwrap_or_else(|| base.join("processed")),
        ),
        failed_dir: Some(
            cfg.settings
                .failed_dir
                .clone()
                .unwrap_or_else(|| base.join("failed")),
        ),
        rollups: true,
    };
    let (loader, client) = Loader::build(&cfg.target, &cfg.settings, role).await?;
    let ctx = Arc::clone(&loader.ctx);
    let conninfo = ctx.conninfo.clone();
    let events = ctx.events.clone();
    let mut attempts = Attempts::start(&conninfo, client, cfg.max_attempts).await;
    let progress = Arc::new(Progress::new(
        cfg.settings.quiet,
        cfg.settings.progress_every,
    ));
    release_stale(&processing, &landing, &events);

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<notify::Result<notify::Event>>();
    let mut watcher = notify::recommended_watcher(move |res| {
        let _ = tx.send(res);
    })
    .map_err(|e| SetupError::Io(format!("cannot watch {}: {e}", landing.display())))?;
    watcher
        .watch(&landing, RecursiveMode::NonRecursive)
        .map_err(|e| SetupError::Io(format!("cannot watch {}: {e}", landing.display())))?;
    progress.line(&format!(
        "watching {} (quiet period {:?}, {} job(s)); Ctrl-C to stop",
        landing.display(),
        cfg.quiet_period,
        cfg.settings.jobs
    ));

    let mut queue = Queue::default();
    for r in queue.rescan(&landing) {
        tracing::warn!(
            "{}: refused: a {}, not a regular file",
            r.path.display(),
            r.kind
        );
        events.publish(r.event());
    }
    let in_flight_paths: Arc<Mutex<HashSet<(PathBuf, String)>>> = Default::default();
    let mut in_flight: JoinSet<(Claimed, FileReport)> = JoinSet::new();
    let mut backoff = Duration::ZERO;
    let mut paused_until = Instant::now();
    let mut stopping = false;
    // Reports go out in the background: a slow mail server never holds a file.
    let mut mails: JoinSet<()> = JoinSet::new();
    let mut digest: Vec<FileReport> = Vec::new();
    let mut digest_due: Option<Instant> = None;
    // Retention: at start, then every hour, one pruning at a time.
    let mut prune_every = tokio::time::interval(PRUNE_EVERY);
    prune_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pruning: JoinSet<()> = JoinSet::new();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| SetupError::Io(format!("cannot handle SIGTERM: {e}")))?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| SetupError::Io(format!("cannot handle SIGINT: {e}")))?;

    loop {
        // Claim what is ready, up to --jobs at a time.
        while !stopping && in_flight.len() < cfg.settings.jobs && Instant::now() >= paused_until {
            let Some(path) = queue.ready.pop_front() else {
                break;
            };
            let Some(claim) = claim(&path, &processing, &mut queue, &events) else {
                continue;
            };
            let mut ev = Event::new(Kind::Claimed, &claim.name);
            ev.size_bytes = std::fs::symlink_metadata(&claim.path).map(|m| m.len()).ok();
            events.publish(ev);
            if let Ok(mut s) = in_flight_paths.lock() {
                s.insert((claim.path.clone(), claim.name.clone()));
            }
            let (ctx, progress) = (Arc::clone(&ctx), Arc::clone(&progress));
            in_flight.spawn(async move {
                let report = load_one(&ctx, &progress, &claim.path, &claim.name).await;
                (claim, report)
            });
        }
        if stopping && in_flight.is_empty() {
            break;
        }
        let next_check = queue
            .next_check(cfg.quiet_period)
            .into_iter()
            .chain(
                (Instant::now() < paused_until && !queue.ready.is_empty()).then_some(paused_until),
            )
            .min();
        tokio::select! {
            Some(res) = rx.recv() => {
                let refused = match res {
                    Ok(ev) => queue.on_notify(ev, &landing),
                    Err(e) => {
                        // Whatever was lost, a listing finds it.
                        tracing::error!("watch error: {e}; scanning the directory again");
                        queue.rescan(&landing)
                    }
                };
                for r in refused {
                    tracing::warn!("{}: refused: a {}, not a regular file", r.path.display(), r.kind);
                    events.publish(r.event());
                }
            },
            _ = async {
                match next_check {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => queue.promote(cfg.quiet_period),
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                let Ok((claimed, mut report)) = done else { continue };
                if let Ok(mut s) = in_flight_paths.lock() {
                    s.remove(&(claimed.path.clone(), claimed.name.clone()));
                }
                match report.status.clone() {
                    Status::Error { reason } => {
                        let history = attempts.failed(&claimed, &reason).await;
                        match history {
                            Some(h) if attempts.exhausted(&h) => {
                                match quarantine(&claimed, &ctx.failed_dir_for(&claimed.path), &h) {
                                    Ok(dest) => {
                                        let mut ev = Event::new(Kind::Quarantined, &claimed.name);
                                        ev.reason = Some(format!(
                                            "failed {} times in a row (last: {reason}); moved to {}",
                                            h.len(),
                                            dest.display()
                                        ));
                                        events.publish(ev);
                                        tracing::error!("quarantined {} after {} failed attempts: {reason}", claimed.name, h.len());
                                        report.status = Status::Failed {
                                            reason: format!("quarantined after {} failed attempts; last: {reason}", h.len()),
                                        };
                                        report.now_at = Some(dest);
                                        attempts.forget(&claimed.key).await;
                                    }
                                    Err(e) => {
                                        tracing::error!("cannot quarantine {}: {e}", claimed.name);
                                        release(&claimed, &landing, &reason, &mut queue, &events);
                                    }
                                }
                                backoff = Duration::ZERO;
                            }
                            _ => {
                                // Not the file's fault: put it back and pause claiming.
                                release(&claimed, &landing, &reason, &mut queue, &events);
                                backoff = (backoff * 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
                                paused_until = Instant::now() + backoff;
                                tracing::warn!("retrying {} in {backoff:?}: {reason}", claimed.name);
                            }
                        }
                    }
                    Status::Refused { reason } => {
                        // Swapped for a link or the like after it was claimed.
                        set_aside(&claimed, &ctx.failed_dir_for(&claimed.path), &reason);
                        backoff = Duration::ZERO;
                    }
                    _ => {
                        attempts.forget(&claimed.key).await;
                        backoff = Duration::ZERO;
                    }
                }
                progress.line(&crate::ingest::load::one_line(&report));
                if let Some(mail) = cfg.settings.mail.clone() {
                    if !matches!(report.status, Status::Error { .. }) {
                        if cfg.report_every.is_zero() {
                            mails.spawn(async move {
                                crate::notify::mail::deliver(&mail, std::slice::from_ref(&report)).await;
                            });
                        } else {
                            digest.push(report);
                            digest_due.get_or_insert(Instant::now() + cfg.report_every);
                        }
                    }
                }
            },
            // Sent reports are reaped as they finish.
            Some(_) = mails.join_next(), if !mails.is_empty() => {},
            Some(_) = pruning.join_next(), if !pruning.is_empty() => {},
            _ = prune_every.tick() => {
                if pruning.is_empty() && cfg.settings.events_retention_days > 0 {
                    let (conninfo, days) = (conninfo.clone(), cfg.settings.events_retention_days);
                    pruning.spawn(async move {
                        match db::connect(&conninfo).await {
                            Ok(c) => prune_events(&c, days).await,
                            Err(e) => tracing::warn!("cannot prune old events: {e}"),
                        }
                    });
                }
            },
            _ = async {
                match digest_due {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {
                digest_due = None;
                if let Some(mail) = cfg.settings.mail.clone() {
                    let batch = std::mem::take(&mut digest);
                    mails.spawn(async move { crate::notify::mail::deliver(&mail, &batch).await; });
                }
            },
            _ = term.recv() => stopping = signal(stopping, &in_flight_paths, &landing),
            _ = int.recv() => stopping = signal(stopping, &in_flight_paths, &landing),
        }
    }
    drop(watcher);
    pruning.abort_all();
    // The last events (the final ones of the files just finished) go to the
    // store before the process ends, within a bound.
    loader.flush().await;
    if let (Some(mail), false) = (cfg.settings.mail.clone(), digest.is_empty()) {
        mails.spawn(async move {
            crate::notify::mail::deliver(&mail, &digest).await;
        });
    }
    // Give queued reports a bounded time to go out (they are on disk anyway).
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while mails.join_next().await.is_some() {}
    })
    .await;
    progress.line("watcher stopped");
    Ok(())
}

/// How often `watch` prunes events past their retention.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Claims a ready file by renaming it into `processing/`; `None` when it is
/// gone, taken by another watcher, or not a regular file (then refused).
fn claim(path: &Path, processing: &Path, queue: &mut Queue, events: &Publisher) -> Option<Claimed> {
    let name = path.file_name()?.to_string_lossy().into_owned();
    let m = std::fs::symlink_metadata(path).ok()?;
    if !m.file_type().is_file() {
        if let Some(r) = queue.refuse(path.to_path_buf(), &m) {
            tracing::warn!(
                "{}: refused: a {}, not a regular file",
                r.path.display(),
                r.kind
            );
            events.publish(r.event());
        }
        return None;
    }
    let claimed = processing.join(claim_name(&name));
    if std::fs::rename(path, &claimed).is_err() {
        return None; // another watcher took it, or it is gone
    }
    // What was renamed (not what stood at the path before).
    let m = std::fs::symlink_metadata(&claimed).ok()?;
    Some(Claimed {
        path: claimed,
        name,
        id: FileId::of(&m),
        key: attempt_key(&m),
    })
}

/// Puts a claimed file back in landing for another try (event `released`).
fn release(c: &Claimed, landing: &Path, reason: &str, queue: &mut Queue, events: &Publisher) {
    match crate::ingest::archive::move_read_file_into_as(&c.path, c.id, landing, &c.name) {
        Ok(back) => {
            let mut ev = Event::new(Kind::Released, &c.name);
            ev.reason = Some(reason.to_string());
            events.publish(ev);
            queue.ready.push_back(back);
        }
        Err(e) => tracing::error!("cannot return {} to landing: {e}", c.name),
    }
}

/// Moves a claimed entry that turned out not to be a regular file into
/// `failed/` (renaming a link moves the link, never its target).
fn set_aside(c: &Claimed, failed_dir: &Path, reason: &str) {
    match crate::ingest::archive::move_into_as(&c.path, failed_dir, &c.name) {
        Ok(dest) => {
            let text = format!("file: {}\nrefused: {reason}\nit was not read.\n", c.name);
            if let Err(e) = crate::ingest::archive::write_error(&dest, &text) {
                tracing::error!("{}: could not write the error file: {e}", dest.display());
            }
        }
        Err(e) => tracing::error!("cannot move {} to failed/: {e}", c.path.display()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_of_the_same_name_differ_and_parse_back() {
        let (a, b) = (claim_name("trips~1.csv"), claim_name("trips~1.csv"));
        assert_ne!(a, b);
        for c in [&a, &b] {
            let (host, pid, name) = parse_claim(c).unwrap();
            assert_eq!(host, hostname());
            assert_eq!(pid, std::process::id());
            assert_eq!(name, "trips~1.csv");
        }
        // Claims written by earlier versions (no sequence number).
        assert_eq!(parse_claim("h~42~a.csv"), Some(("h", 42, "a.csv")));
        assert_eq!(parse_claim("h~42~7x~a.csv"), Some(("h", 42, "7x~a.csv")));
        assert_eq!(parse_claim("h~x~a.csv"), None);
    }

    #[test]
    fn start_up_releases_claims_of_dead_pids_and_of_our_own_pid() {
        let dir = tempfile::tempdir().unwrap();
        let (processing, landing) = (dir.path().join("processing"), dir.path().join("landing"));
        std::fs::create_dir_all(&processing).unwrap();
        std::fs::create_dir_all(&landing).unwrap();
        let dead = {
            let mut c = std::process::Command::new("true").spawn().unwrap();
            let pid = c.id();
            c.wait().unwrap();
            pid
        };
        let me = std::process::id();
        let host = hostname();
        // A live process of this host (pid 1 when not in a container of our
        // own; our parent otherwise) and another host's claim stay.
        let live = std::os::unix::process::parent_id();
        for name in [
            format!("{host}~{dead}~0~dead.csv"),
            format!("{host}~{me}~3~mine.csv"),
            format!("{host}~{live}~0~live.csv"),
            format!("elsewhere~{dead}~0~remote.csv"),
        ] {
            std::fs::write(processing.join(name), b"x").unwrap();
        }
        release_stale(&processing, &landing, &Publisher::disabled());
        let mut back: Vec<String> = std::fs::read_dir(&landing)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        back.sort();
        assert_eq!(back, ["dead.csv", "mine.csv"]);
        assert_eq!(std::fs::read_dir(&processing).unwrap().count(), 2);
    }

    fn mkfifo(p: &Path) {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn an_overflowed_notification_queue_rescans_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let landing = dir.path().join("landing");
        std::fs::create_dir(&landing).unwrap();
        let mut q = Queue::default();
        // Files that arrived while the kernel dropped their notifications.
        std::fs::write(landing.join("a.csv"), b"x").unwrap();
        std::fs::write(landing.join("b.csv"), b"y").unwrap();
        std::fs::write(landing.join("b.csv.part"), b"y").unwrap();
        std::os::unix::fs::symlink(landing.join("a.csv"), landing.join("l.csv")).unwrap();
        mkfifo(&landing.join("p.csv"));
        q.ready.push_back(landing.join("b.csv"));
        let overflow = notify::Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        let refused = q.on_notify(overflow.clone(), &landing);
        let mut pending: Vec<_> = q.pending.keys().cloned().collect();
        pending.sort();
        assert_eq!(
            pending,
            [landing.join("a.csv")],
            "new files wait; b is already ready"
        );
        assert_eq!(q.ready, [landing.join("b.csv")]);
        assert_eq!(
            refused,
            [
                Refusal {
                    path: landing.join("l.csv"),
                    kind: "symbolic link"
                },
                Refusal {
                    path: landing.join("p.csv"),
                    kind: "FIFO"
                },
            ]
        );
        // Refused once per run, not at every rescan.
        assert!(q.on_notify(overflow, &landing).is_empty());
    }

    #[test]
    fn a_link_renamed_into_landing_is_refused_not_queued() {
        let dir = tempfile::tempdir().unwrap();
        let landing = dir.path().join("landing");
        std::fs::create_dir(&landing).unwrap();
        let outside = dir.path().join("secret.csv");
        std::fs::write(&outside, b"x").unwrap();
        std::os::unix::fs::symlink(&outside, landing.join("l.csv")).unwrap();
        let mut q = Queue::default();
        let ev = notify::Event::new(EventKind::Modify(notify::event::ModifyKind::Name(
            notify::event::RenameMode::To,
        )))
        .add_path(landing.join("l.csv"));
        let refused = q.on_notify(ev, &landing);
        assert_eq!(refused.len(), 1);
        assert!(q.ready.is_empty() && q.pending.is_empty());
    }
}
