//! Claiming: a ready file is renamed into `processing/` under a name that
//! carries this host and pid, so several watchers (here or on other machines
//! sharing the directory) never take the same file; claims of dead processes
//! of this host go back to landing at start. A claimed file leaves
//! `processing/` for `processed/`, `failed/` or landing again.

use super::queue::Queue;
use crate::ingest::map::FileId;
use crate::notify::events::hostname;
use crate::notify::events::{Event, Kind, Publisher};
use std::path::{Path, PathBuf};

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
pub(super) fn release_stale(processing: &Path, landing: &Path, events: &Publisher) {
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

/// Which file a claim holds: its device and inode, and the key its failed
/// attempts are counted under (device, inode, size, mtime).
#[derive(Debug, Clone)]
pub(super) struct Claimed {
    pub(super) path: PathBuf,
    pub(super) name: String,
    pub(super) id: FileId,
    pub(super) key: String,
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

/// Claims a ready file by renaming it into `processing/`; `None` when it is
/// gone, taken by another watcher, or not a regular file (then refused).
pub(super) fn claim(
    path: &Path,
    processing: &Path,
    queue: &mut Queue,
    events: &Publisher,
) -> Option<Claimed> {
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
pub(super) fn release(
    c: &Claimed,
    landing: &Path,
    reason: &str,
    queue: &mut Queue,
    events: &Publisher,
) {
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
pub(super) fn set_aside(c: &Claimed, failed_dir: &Path, reason: &str) {
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
