//! Opening an input file: once, without following links, and only if it is
//! a regular file; its identity (device, inode, size, mtime), its content
//! hash, and a read-only memory map — all from that one descriptor, so the
//! bytes hashed, the bytes loaded and the file moved afterwards are the same
//! file whatever happens at its path meanwhile.
//!
//! The hash is computed with buffered reads rather than through the map so
//! that it does not make the whole file resident in this process; the map is
//! then read once, front to back, and pages are released behind the workers.

use crate::kernel::hash::ContentHash;
use memmap2::{Advice, Mmap, UncheckedAdvice};
use std::fs::File;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: the file changed while it was being loaded (size or modification time differ); nothing from it was committed — load it again once the writer is done")]
    Changed { path: PathBuf },
    /// A symlink, FIFO, device, socket or directory: never opened for reading.
    #[error("{path}: refused: it is a {kind}, not a regular file (only regular files are read; links are not followed)")]
    NotRegular { path: PathBuf, kind: &'static str },
}

/// Size and modification time: enough to notice a writer still at work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub size: u64,
    pub modified: Option<SystemTime>,
}

impl Identity {
    /// The identity that `m` describes.
    pub fn of(m: &std::fs::Metadata) -> Identity {
        Identity {
            size: m.len(),
            modified: m.modified().ok(),
        }
    }
}

/// What `path` itself is (links not followed): its identity if it is a
/// regular file, [`MapError::NotRegular`] otherwise.
pub fn identity(path: &Path) -> Result<Identity, MapError> {
    let m = std::fs::symlink_metadata(path).map_err(|source| MapError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    regular(path, &m)?;
    Ok(Identity::of(&m))
}

/// The kind of a non-regular file, for messages.
pub fn kind_name(t: std::fs::FileType) -> &'static str {
    if t.is_symlink() {
        "symbolic link"
    } else if t.is_dir() {
        "directory"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_char_device() {
        "character device"
    } else {
        "special file"
    }
}

fn regular(path: &Path, m: &std::fs::Metadata) -> Result<(), MapError> {
    if m.file_type().is_file() {
        Ok(())
    } else {
        Err(MapError::NotRegular {
            path: path.to_path_buf(),
            kind: kind_name(m.file_type()),
        })
    }
}

/// Device and inode: which file a path or descriptor stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub fn of(m: &std::fs::Metadata) -> FileId {
        FileId {
            dev: m.dev(),
            ino: m.ino(),
        }
    }
}

/// True when `path` (not following links) still names the file `id`.
pub fn same_file(path: &Path, id: FileId) -> bool {
    std::fs::symlink_metadata(path)
        .map(|m| FileId::of(&m) == id)
        .unwrap_or(false)
}

/// A regular file opened once for reading.
pub struct Opened {
    file: File,
    path: PathBuf,
    pub id: FileId,
    pub identity: Identity,
}

impl Opened {
    /// Opens `path` if, and only if, it is a regular file: checked with
    /// `lstat` before opening (so a FIFO or device is never opened), opened
    /// with `O_NOFOLLOW | O_NONBLOCK` (a link swapped in meanwhile fails, a
    /// FIFO cannot block), then checked again with `fstat` to be the same
    /// regular file. Non-blocking mode is cleared before any read.
    pub fn open(path: &Path) -> Result<Opened, MapError> {
        let io = |source| MapError::Io {
            path: path.to_path_buf(),
            source,
        };
        let before = std::fs::symlink_metadata(path).map_err(io)?;
        regular(path, &before)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                // O_NOFOLLOW on a link: it was swapped in after the lstat.
                Some(libc::ELOOP) => MapError::NotRegular {
                    path: path.to_path_buf(),
                    kind: "symbolic link",
                },
                _ => io(e),
            })?;
        let m = file.metadata().map_err(io)?;
        regular(path, &m)?;
        if FileId::of(&m) != FileId::of(&before) {
            return Err(MapError::Changed {
                path: path.to_path_buf(),
            });
        }
        clear_nonblocking(&file).map_err(io)?;
        Ok(Opened {
            file,
            path: path.to_path_buf(),
            id: FileId::of(&m),
            identity: Identity::of(&m),
        })
    }

    /// Size and mtime of the open file now (a writer of this very inode
    /// shows here, whatever happened at its path).
    pub fn identity_now(&self) -> Result<Identity, MapError> {
        let m = self.file.metadata().map_err(|source| MapError::Io {
            path: self.path.clone(),
            source,
        })?;
        Ok(Identity {
            size: m.len(),
            modified: m.modified().ok(),
        })
    }

    /// Content hash: xxh3-128 as 32 hex digits, prefixed with the algorithm.
    pub fn content_hash(&self) -> Result<String, MapError> {
        let io = |source| MapError::Io {
            path: self.path.clone(),
            source,
        };
        let mut h = ContentHash::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut offset = 0u64;
        loop {
            let n =
                std::os::unix::fs::FileExt::read_at(&self.file, &mut buf, offset).map_err(io)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            offset += n as u64;
        }
        Ok(h.finish())
    }

    /// A read-only map of the open file.
    pub fn map(&self) -> Result<Mapped, MapError> {
        let io = |source| MapError::Io {
            path: self.path.clone(),
            source,
        };
        if self.file.metadata().map_err(io)?.len() == 0 {
            return Ok(Mapped { map: None });
        }
        // SAFETY: the map is read-only; a concurrent writer truncating the file
        // could fault, which is why watch mode only picks up finished files and
        // the loader re-checks size and mtime before committing.
        let map = unsafe { Mmap::map(&self.file) }.map_err(io)?;
        // Best effort: sequential read-ahead.
        let _ = map.advise(Advice::Sequential);
        Ok(Mapped { map: Some(map) })
    }
}

fn clear_nonblocking(f: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = f.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Content hash of the regular file at `path` (see [`Opened::content_hash`]).
pub fn content_hash(path: &Path) -> Result<String, MapError> {
    Opened::open(path)?.content_hash()
}

/// Hash of in-memory bytes, the same value [`content_hash`] gives for a file.
pub fn hash_bytes(bytes: &[u8]) -> String {
    crate::kernel::hash::of(bytes)
}

/// A read-only map of a whole file (an empty file maps to an empty slice).
pub struct Mapped {
    map: Option<Mmap>,
}

impl Mapped {
    /// Maps the regular file at `path` (see [`Opened::open`]).
    pub fn open(path: &Path) -> Result<Mapped, MapError> {
        Opened::open(path)?.map()
    }

    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    /// Drops the pages of `range` from this process (they stay in the page
    /// cache): keeps resident memory bounded by the chunks in flight.
    pub fn release(&self, range: std::ops::Range<usize>) {
        let Some(map) = &self.map else { return };
        let page = 4096;
        let start = range.start.div_ceil(page) * page;
        let end = range.end / page * page;
        if end > start {
            // SAFETY: the map is a read-only file mapping; after DONTNEED a
            // later access re-reads the file, so no bytes we still read change.
            let _ = unsafe {
                map.unchecked_advise_range(UncheckedAdvice::DontNeed, start, end - start)
            };
        }
    }
}

/// Makes a named pipe at `p`, for tests of inputs that are not regular files.
#[cfg(test)]
pub(crate) fn mkfifo(p: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_file_is_hashed_and_mapped_from_one_descriptor() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.csv");
        std::fs::write(&p, b"hello").unwrap();
        let o = Opened::open(&p).unwrap();
        // Replaced at its path: the open file is still the one read.
        std::fs::write(d.path().join("b"), b"other bytes").unwrap();
        std::fs::rename(d.path().join("b"), &p).unwrap();
        assert_eq!(o.content_hash().unwrap(), hash_bytes(b"hello"));
        assert_eq!(o.map().unwrap().bytes(), b"hello");
        assert!(!same_file(&p, o.id));
    }

    #[test]
    fn links_fifos_and_directories_are_refused_without_being_opened() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("target.csv");
        std::fs::write(&target, b"secret").unwrap();
        let link = d.path().join("link.csv");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let fifo = d.path().join("fifo.csv");
        mkfifo(&fifo);
        let dir = d.path().join("dir.csv");
        std::fs::create_dir(&dir).unwrap();
        for (p, kind) in [
            (&link, "symbolic link"),
            (&fifo, "FIFO"),
            (&dir, "directory"),
        ] {
            // A FIFO opened for reading would block here with no writer.
            match Opened::open(p) {
                Err(MapError::NotRegular { kind: k, .. }) => assert_eq!(k, kind),
                Err(e) => panic!("{}: {e}", p.display()),
                Ok(_) => panic!("{} was opened", p.display()),
            }
            assert!(matches!(identity(p), Err(MapError::NotRegular { .. })));
        }
        assert!(matches!(
            content_hash(&link),
            Err(MapError::NotRegular { .. })
        ));
    }
}
