//! The landing directory's queue: files seen and not yet claimed.
//!
//! A name renamed into landing is ready at once (writers copy to a dotfile
//! or `*.part`, then rename); a file written in place waits until its size
//! and mtime stay the same for the quiet period. Anything that is not a
//! regular file (a link, a FIFO, a directory) is refused, once per run.

use crate::ingest::discover::is_ignored;
use crate::ingest::map::{identity, FileId, Identity};
use crate::notify::events::{Event, Kind};
use notify::EventKind;
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;

/// An entry of the landing directory that is not a regular file.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Refusal {
    pub(super) path: PathBuf,
    pub(super) kind: &'static str,
}

impl Refusal {
    pub(super) fn event(&self) -> Event {
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
pub(super) struct Queue {
    /// Written in place: taken once unchanged for the quiet period.
    pending: HashMap<PathBuf, (Option<Identity>, Instant)>,
    /// Ready to claim, in order.
    pub(super) ready: VecDeque<PathBuf>,
    /// Entries refused so far (each is reported once per run).
    refused: HashSet<(PathBuf, FileId)>,
}

impl Queue {
    /// Takes one notification; returns the entries it made us refuse. A
    /// notification flagged for rescan (the kernel's queue overflowed, so
    /// events were lost) lists the directory again.
    pub(super) fn on_notify(&mut self, ev: notify::Event, landing: &Path) -> Vec<Refusal> {
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
                    .insert(p, (Some(Identity::of(&m)), Instant::now()));
            }
        }
        refused
    }

    /// Lists landing (at start, and whenever notifications were lost): every
    /// regular file not yet known waits for the quiet period; anything else
    /// is refused.
    pub(super) fn rescan(&mut self, landing: &Path) -> Vec<Refusal> {
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
                self.pending.insert(p, (Some(Identity::of(&m)), now));
            }
        }
        refused
    }

    pub(super) fn refuse(&mut self, p: PathBuf, m: &std::fs::Metadata) -> Option<Refusal> {
        self.pending.remove(&p);
        self.ready.retain(|r| r != &p);
        let kind = crate::ingest::map::kind_name(m.file_type());
        self.refused
            .insert((p.clone(), FileId::of(m)))
            .then_some(Refusal { path: p, kind })
    }

    /// When the next pending file may be ready.
    pub(super) fn next_check(&self, quiet: Duration) -> Option<Instant> {
        self.pending.values().map(|(_, seen)| *seen + quiet).min()
    }

    /// Moves pending files unchanged for the quiet period to `ready`.
    pub(super) fn promote(&mut self, quiet: Duration) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::map::mkfifo;

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
