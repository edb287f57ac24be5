//! Where a cluster lives: the requested directory, or (as root, when the
//! server's user cannot reach it) a directory under a root-owned fallback
//! root; where its Unix socket goes; and the checks that refuse a directory
//! someone else could have prepared. Nothing here follows a symlink.

use super::users::{self, RunAs, SERVER_USERS};
use super::{access, fsafe, io_err, Embedded, EmbeddedError, SUPERUSER};
use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

/// `sun_path` is 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;
/// Where clusters go when the requested directory is unreachable for the
/// server user; /var/tmp survives reboots, unlike /tmp.
pub(super) const FALLBACK_ROOT: &str = "/var/tmp/tripload-pg";
/// Socket directories for clusters whose path is too long for `sun_path`.
pub(super) const SOCKET_FALLBACK_PREFIX: &str = "tripload-sock-";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// The CLI's cluster: kept, fsync on, started detached.
    Persistent,
    /// A throwaway cluster for tests and benches (see `ephemeral`).
    #[cfg(any(test, feature = "test-support"))]
    Ephemeral,
}

impl Mode {
    /// Whether the cluster holds data worth an fsync.
    pub(super) fn durable(self) -> bool {
        matches!(self, Mode::Persistent)
    }

    /// The cluster's directory name under the fallback root.
    fn fallback_name(self, hash: &str) -> String {
        match self {
            Mode::Persistent => hash.to_owned(),
            #[cfg(any(test, feature = "test-support"))]
            Mode::Ephemeral => format!("{}{hash}", EPHEMERAL_DIR_PREFIX),
        }
    }
}

/// Where a cluster lives, which may differ from the directory asked for.
#[derive(Debug)]
pub(super) struct Layout {
    pub(super) data_dir: PathBuf,
    /// The socket directory; when `socket_in_tmp`, only a name prefix until
    /// prepare_socket_dir makes a fresh private directory from it.
    pub(super) socket_dir: PathBuf,
    /// data_dir/run would exceed `sun_path`: the socket goes in a fresh
    /// mkdtemp directory under /tmp instead.
    pub(super) socket_in_tmp: bool,
    pub(super) run_as: Option<RunAs>,
    /// data_dir is under the fallback root instead of the requested path.
    pub(super) relocated: bool,
}

impl Layout {
    pub(super) fn embedded(&self, port: u16, tcp: bool) -> Embedded {
        Embedded {
            data_dir: self.data_dir.clone(),
            socket_dir: self.socket_dir.clone(),
            port,
            user: SUPERUSER.to_owned(),
            tcp_password_file: tcp.then(|| access::password_file(&self.data_dir)),
        }
    }
}

/// Pure function of the requested path and the file system, so that
/// ensure_running and stop find the same cluster. The fallback location is
/// only ever used as root, and only under a root-owned `fallback_root`
/// that nobody else can write to.
pub(super) fn resolve_layout(
    dir: &Path,
    mode: Mode,
    fallback_root: &Path,
) -> Result<Layout, EmbeddedError> {
    let requested = absolute_path(dir)?;
    let run_as = users::server_user()?;
    let fallback = fallback_root.join(mode.fallback_name(&path_hash(&requested)));
    let blocker = run_as
        .as_ref()
        .and_then(|user| blocking_ancestor(&requested, user).map(|dir| (user, dir)));
    let relocated = match &blocker {
        Some(_) => {
            ensure_fallback_root(fallback_root)?;
            true
        }
        // Once relocated, a persistent cluster stays put even if the
        // requested path becomes reachable later, so its data is not
        // silently left behind.
        None => {
            run_as.is_some()
                && mode == Mode::Persistent
                && !is_cluster(&requested)
                && fallback_root_is_safe(fallback_root)
                && is_cluster(&fallback)
        }
    };
    let data_dir = if relocated {
        announce_relocation(&requested, &fallback, blocker);
        fallback
    } else {
        requested
    };
    let (socket_dir, socket_in_tmp) = socket_dir_for(&data_dir);
    Ok(Layout {
        data_dir,
        socket_dir,
        socket_in_tmp,
        run_as,
        relocated,
    })
}

/// Says where a relocated cluster lives and why: loudly once, when the
/// cluster is created there; quietly after.
fn announce_relocation(requested: &Path, fallback: &Path, blocker: Option<(&RunAs, PathBuf)>) {
    let reason = match blocker {
        Some((user, dir)) => format!(
            "{} is not traversable by the `{}` user the server runs as",
            dir.display(),
            user.name
        ),
        None => "it was created there earlier".to_owned(),
    };
    if is_cluster(fallback) {
        tracing::info!(
            "the embedded PostgreSQL cluster for {} lives in {} because {reason}",
            requested.display(),
            fallback.display(),
        );
    } else {
        tracing::warn!(
            "the embedded PostgreSQL cluster for {} will live in {} because {reason}",
            requested.display(),
            fallback.display(),
        );
    }
}

/// The socket directory for a cluster in `data_dir`: its `run/`, or when
/// that path is too long for `sun_path`, a name prefix under /tmp (true).
fn socket_dir_for(data_dir: &Path) -> (PathBuf, bool) {
    let in_data_dir = data_dir.join("run");
    if socket_path(&in_data_dir, u16::MAX).as_os_str().len() > MAX_SOCKET_PATH {
        (
            PathBuf::from(format!("/tmp/{SOCKET_FALLBACK_PREFIX}")),
            true,
        )
    } else {
        (in_data_dir, false)
    }
}

/// Creates the fallback root (root-owned, 0755) if missing, and refuses one
/// that someone else could have prepared: it must be a real directory owned
/// by root and writable by no one else.
fn ensure_fallback_root(root: &Path) -> Result<(), EmbeddedError> {
    match fs::create_dir(root) {
        Ok(()) => fsafe::set_dir_owner_mode(root, None, 0o755)
            .map_err(|e| io_err("set permissions on", root, e))?,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            create_dir_tree(root)?;
        }
        Err(e) => return Err(io_err("create directory", root, e)),
    }
    match fsafe::dir_problem(root, &[0], false) {
        Ok(None) => Ok(()),
        Ok(Some(reason)) => Err(EmbeddedError::UnsafeDir {
            path: root.to_path_buf(),
            reason,
            hint: "another user may have created it to take over the server; remove it \
                   (after checking what it holds) so that tripload creates it again, or choose \
                   a --pg-dir that the server's user can reach"
                .to_owned(),
        }),
        Err(e) => Err(io_err("inspect", root, e)),
    }
}

pub(super) fn fallback_root_is_safe(root: &Path) -> bool {
    match fsafe::dir_problem(root, &[0], false) {
        Ok(None) => true,
        Ok(Some(reason)) => {
            tracing::warn!("ignoring {}: {reason}", root.display());
            false
        }
        Err(_) => false,
    }
}

/// Refuses a data directory we did not make or that another user could
/// have prepared: it must be a real directory owned by us or the server's
/// user (or, under the root-owned fallback root, by any account the server
/// may have run as) and not writable by group or others. An empty one of
/// ours just gets mode 0700.
pub(super) fn adopt_data_dir(layout: &Layout) -> Result<(), EmbeddedError> {
    let dir = &layout.data_dir;
    let mut owners = vec![fsafe::euid()];
    if let Some(user) = &layout.run_as {
        owners.push(user.uid);
        if layout.relocated {
            owners.extend(
                SERVER_USERS
                    .iter()
                    .filter_map(|name| users::lookup_user(name).ok().flatten())
                    .map(|u| u.uid),
            );
        }
    }
    let meta = fs::symlink_metadata(dir).map_err(|e| io_err("inspect", dir, e))?;
    if meta.is_dir() && meta.uid() == fsafe::euid() && meta.mode() & 0o022 != 0 && is_empty_dir(dir)
    {
        fsafe::set_dir_owner_mode(dir, None, 0o700)
            .map_err(|e| io_err("set permissions on", dir, e))?;
    }
    match fsafe::dir_problem(dir, &owners, false) {
        Ok(None) => Ok(()),
        Ok(Some(reason)) => Err(EmbeddedError::UnsafeDir {
            path: dir.clone(),
            reason,
            hint: "tripload only adopts a cluster directory that it created; if this one is \
                   yours, fix its owner and mode (chown, chmod go-w), otherwise remove it or \
                   choose another --pg-dir"
                .to_owned(),
        }),
        Err(e) => Err(io_err("inspect", dir, e)),
    }
}

pub(super) fn socket_path(socket_dir: &Path, port: u16) -> PathBuf {
    socket_dir.join(format!(".s.PGSQL.{port}"))
}

/// Absolute, with `.`/`..` folded and the existing prefix canonicalised, so
/// that different spellings of one directory map to one cluster (and hash).
pub(super) fn absolute_path(dir: &Path) -> Result<PathBuf, EmbeddedError> {
    let abs = std::path::absolute(dir).map_err(|e| io_err("resolve the path", dir, e))?;
    let mut lexical = PathBuf::new();
    for component in abs.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                lexical.pop();
            }
            other => lexical.push(other),
        }
    }
    let mut existing = lexical.as_path();
    let mut missing = Vec::new();
    loop {
        if let Ok(mut canonical) = existing.canonicalize() {
            for part in missing.iter().rev() {
                canonical.push(part);
            }
            return Ok(canonical);
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name);
                existing = parent;
            }
            _ => return Ok(lexical),
        }
    }
}

/// FNV-1a: unlike std's DefaultHasher it is stable across Rust releases,
/// which matters because the hash names a persistent directory.
pub(super) fn path_hash(path: &Path) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in path.as_os_str().as_bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// The first existing ancestor of `path` (excluding `path`, which we chown)
/// that `user` cannot search. Missing components are created 0755 by us.
fn blocking_ancestor(path: &Path, user: &RunAs) -> Option<PathBuf> {
    let mut chain: Vec<&Path> = path.ancestors().skip(1).collect();
    chain.reverse();
    for dir in chain {
        let Ok(meta) = fs::metadata(dir) else { break };
        let search_bit = if meta.uid() == user.uid {
            0o100
        } else if meta.gid() == user.gid {
            0o010
        } else {
            0o001
        };
        if meta.mode() & search_bit == 0 {
            return Some(dir.to_path_buf());
        }
    }
    None
}

/// create_dir_all, but components we create get 0755 regardless of umask so
/// that the server user can traverse them (changed through a descriptor, so
/// a symlink swapped in is never followed).
pub(super) fn create_dir_tree(dir: &Path) -> Result<(), EmbeddedError> {
    let mut missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|p| fs::symlink_metadata(p).is_err())
        .collect();
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| io_err("create directory", dir, e))?;
    missing.reverse();
    for created in missing {
        fsafe::set_dir_owner_mode(created, None, 0o755)
            .map_err(|e| io_err("set permissions on", created, e))?;
    }
    if !fs::metadata(dir).is_ok_and(|m| m.is_dir()) {
        return Err(io_err(
            "use as a directory",
            dir,
            io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        ));
    }
    Ok(())
}

/// Makes the socket directory and returns it: mode 0700, owned by the
/// server's user, so only that user and root can reach the socket. Inside
/// the data directory it is `run/` (the server's user could have replaced it,
/// so it is checked and changed without following symlinks); when that path
/// is too long, a fresh mkdtemp directory under /tmp, never a predictable one.
pub(super) fn prepare_socket_dir(layout: &Layout) -> Result<PathBuf, EmbeddedError> {
    let owner = layout.run_as.as_ref().map(|u| (u.uid, u.gid));
    let dir = if layout.socket_in_tmp {
        fsafe::make_temp_dir(&layout.socket_dir)
            .map_err(|e| io_err("create a directory named", &layout.socket_dir, e))?
    } else {
        let dir = layout.socket_dir.clone();
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("create directory", &dir, e)),
        }
        let mut owners = vec![fsafe::euid()];
        owners.extend(owner.map(|(uid, _)| uid));
        match fsafe::dir_problem(&dir, &owners, false) {
            Ok(None) => {}
            Ok(Some(reason)) => {
                return Err(EmbeddedError::UnsafeDir {
                    path: dir,
                    reason,
                    hint: "this is where the server's socket goes; remove it and retry".to_owned(),
                })
            }
            Err(e) => return Err(io_err("inspect", &dir, e)),
        }
        dir
    };
    fsafe::set_dir_owner_mode(&dir, owner, 0o700)
        .map_err(|e| io_err("set the owner and mode of", &dir, e))?;
    Ok(dir)
}

pub(super) fn is_temp_socket_dir(dir: &Path) -> bool {
    dir.parent() == Some(Path::new("/tmp"))
        && dir
            .file_name()
            .is_some_and(|n| n.as_bytes().starts_with(SOCKET_FALLBACK_PREFIX.as_bytes()))
}

pub(super) fn is_cluster(data_dir: &Path) -> bool {
    data_dir.join("PG_VERSION").is_file()
}

pub(super) fn is_empty_dir(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none())
}

/// Name prefix of the throwaway clusters' directories (tests and benches).
#[cfg(any(test, feature = "test-support"))]
pub(super) const EPHEMERAL_DIR_PREFIX: &str = "eph-";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_path_folds_dots_and_missing_parts() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        let messy = tmp.path().join("a/../b/./c");
        assert_eq!(absolute_path(&messy).unwrap(), base.join("b/c"));
    }

    #[test]
    fn path_hash_is_stable() {
        assert_eq!(path_hash(Path::new("")), "cbf29ce484222325");
        assert_eq!(path_hash(Path::new("a")), "af63dc4c8601ec8c");
    }
}
