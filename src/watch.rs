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

use crate::copy::{load_file, LoadContext};
use crate::db::{self, Target};
use crate::discover::is_ignored;
use crate::events::{Event, Kind, Publisher};
use crate::load::{database_dims, hostname, prepare, SetupError};
use crate::map::{identity, Identity};
use crate::report::{FileReport, Progress, Status};
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
    pub settings: crate::load::Settings,
    /// Zero: a report per file; otherwise one digest per period.
    pub report_every: Duration,
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
            match crate::archive::move_into_as(&e.path(), landing, orig) {
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

/// Runs until SIGINT/SIGTERM. A first signal stops claiming and lets the files
/// in flight finish; a second returns them to landing and exits at once (the
/// database rolls back their open transactions).
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

    let (conninfo, mut client) = prepare(&cfg.target, &cfg.settings.chunk_interval).await?;
    crate::points_writer::sweep(&mut client).await?;
    crate::load::set_threads(cfg.settings.threads, cfg.settings.nice, &conninfo);
    let dims = Arc::new(database_dims(&client, &conninfo).await?);
    let (events, _events_task) = Publisher::spawn(conninfo.clone(), db::connect(&conninfo).await?);
    let ctx = Arc::new(LoadContext {
        conninfo: conninfo.clone(),
        dims,
        max_rejects: cfg.settings.max_rejects,
        max_record_bytes: cfg.settings.max_record_bytes,
        chunk_bytes: cfg.settings.chunk_bytes,
        points_segment_bytes: cfg.settings.points_segment_bytes,
        backlog_bytes: cfg.settings.backlog_bytes,
        depth: (rayon::current_num_threads() * 2).max(4),
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
        loaded_by: format!(
            "tripload watch pid {} on {}",
            std::process::id(),
            hostname()
        ),
        events: events.clone(),
        grid: Some(db::grid(&client).await?),
    });
    let progress = Arc::new(Progress::new(cfg.settings.quiet));
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

    let mut pending: HashMap<PathBuf, (Option<Identity>, Instant)> = HashMap::new();
    let mut ready: VecDeque<PathBuf> = VecDeque::new();
    let now = Instant::now();
    if let Ok(files) = crate::discover::discover(std::slice::from_ref(&landing)) {
        for f in files {
            pending.insert(f.clone(), (identity(&f).ok(), now));
        }
    }
    let in_flight_paths: Arc<Mutex<HashSet<(PathBuf, String)>>> = Default::default();
    let mut in_flight: JoinSet<(PathBuf, String, FileReport)> = JoinSet::new();
    let mut backoff = Duration::ZERO;
    let mut paused_until = Instant::now();
    let mut stopping = false;
    // Reports go out in the background: a slow mail server never holds a file.
    let mut mails: JoinSet<()> = JoinSet::new();
    let mut digest: Vec<FileReport> = Vec::new();
    let mut digest_due: Option<Instant> = None;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| SetupError::Io(format!("cannot handle SIGTERM: {e}")))?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| SetupError::Io(format!("cannot handle SIGINT: {e}")))?;

    loop {
        // Claim what is ready, up to --jobs at a time.
        while !stopping && in_flight.len() < cfg.settings.jobs && Instant::now() >= paused_until {
            let Some(path) = ready.pop_front() else { break };
            let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                continue;
            };
            let claimed = processing.join(claim_name(&name));
            if std::fs::rename(&path, &claimed).is_err() {
                continue; // another watcher took it, or it is gone
            }
            let mut ev = Event::new(Kind::Claimed, &name);
            ev.size_bytes = std::fs::metadata(&claimed).map(|m| m.len()).ok();
            events.publish(ev);
            if let Ok(mut s) = in_flight_paths.lock() {
                s.insert((claimed.clone(), name.clone()));
            }
            let (ctx, progress) = (Arc::clone(&ctx), Arc::clone(&progress));
            in_flight.spawn(async move {
                let size = std::fs::metadata(&claimed).map(|m| m.len()).unwrap_or(0);
                let fp = Arc::new(progress.file(&name, size).with_events(ctx.events.clone()));
                let report = load_file(&ctx, &claimed, &name, &fp).await;
                (claimed, name, report)
            });
        }
        if stopping && in_flight.is_empty() {
            break;
        }
        let next_check = pending
            .values()
            .map(|(_, seen)| *seen + cfg.quiet_period)
            .chain((Instant::now() < paused_until && !ready.is_empty()).then_some(paused_until))
            .min();
        tokio::select! {
            Some(res) = rx.recv() => match res {
                Ok(ev) => {
                    let renamed_in = matches!(
                        ev.kind,
                        EventKind::Modify(notify::event::ModifyKind::Name(
                            notify::event::RenameMode::To | notify::event::RenameMode::Both
                        ))
                    );
                    for p in ev.paths {
                        if p.parent() != Some(landing.as_path()) || is_ignored(&p) || !p.is_file() {
                            continue;
                        }
                        if renamed_in {
                            pending.remove(&p);
                            if !ready.contains(&p) {
                                ready.push_back(p);
                            }
                        } else if !ready.contains(&p) {
                            pending.insert(p.clone(), (identity(&p).ok(), Instant::now()));
                        }
                    }
                }
                Err(e) => tracing::error!("watch error: {e}"),
            },
            _ = async {
                match next_check {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {
                let now = Instant::now();
                let due: Vec<PathBuf> = pending
                    .iter()
                    .filter(|(_, (_, seen))| *seen + cfg.quiet_period <= now)
                    .map(|(p, _)| p.clone())
                    .collect();
                for p in due {
                    let before = pending.remove(&p).and_then(|(id, _)| id);
                    match identity(&p) {
                        Err(_) => {} // gone
                        Ok(id) if Some(id) == before => ready.push_back(p),
                        Ok(id) => {
                            pending.insert(p, (Some(id), now));
                        }
                    }
                }
            },
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                let Ok((claimed, name, report)) = done else { continue };
                if let Ok(mut s) = in_flight_paths.lock() {
                    s.remove(&(claimed.clone(), name.clone()));
                }
                progress.line(&crate::load::one_line(&report));
                if let Some(mail) = cfg.settings.mail.clone() {
                    if !matches!(report.status, Status::Error { .. }) {
                        if cfg.report_every.is_zero() {
                            let r = report.clone();
                            mails.spawn(async move {
                                crate::mail::deliver(&mail, std::slice::from_ref(&r)).await;
                            });
                        } else {
                            digest.push(report.clone());
                            digest_due.get_or_insert(Instant::now() + cfg.report_every);
                        }
                    }
                }
                if let Status::Error { reason } = &report.status {
                    // Not the file's fault: put it back and pause claiming.
                    if let Ok(back) = crate::archive::move_into_as(&claimed, &landing, &name) {
                        let mut ev = Event::new(Kind::Released, &name);
                        ev.reason = Some(reason.clone());
                        events.publish(ev);
                        ready.push_back(back);
                    }
                    backoff = (backoff * 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
                    paused_until = Instant::now() + backoff;
                    tracing::warn!("database problem; retrying {name} in {backoff:?}: {reason}");
                } else {
                    backoff = Duration::ZERO;
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
                    mails.spawn(async move { crate::mail::deliver(&mail, &batch).await; });
                }
            },
            _ = term.recv() => stopping = signal(stopping, &in_flight_paths, &landing),
            _ = int.recv() => stopping = signal(stopping, &in_flight_paths, &landing),
        }
    }
    drop(watcher);
    if let (Some(mail), false) = (cfg.settings.mail.clone(), digest.is_empty()) {
        mails.spawn(async move {
            crate::mail::deliver(&mail, &digest).await;
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

/// First signal: stop claiming. Second: return claimed files and exit now.
fn signal(stopping: bool, in_flight: &Mutex<HashSet<(PathBuf, String)>>, landing: &Path) -> bool {
    if !stopping {
        eprintln!("stopping: no new files are taken; waiting for the files in flight (signal again to abort them)");
        return true;
    }
    if let Ok(set) = in_flight.lock() {
        for (claimed, name) in set.iter() {
            let _ = crate::archive::move_into_as(claimed, landing, name);
        }
    }
    eprintln!("aborted: files in flight were rolled back and returned to the landing directory");
    std::process::exit(0)
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
}
