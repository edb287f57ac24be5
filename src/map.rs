//! Opening an input file: its identity (size, mtime), its content hash, and a
//! read-only memory map of it.
//!
//! The hash is computed with buffered reads rather than through the map so
//! that it does not make the whole file resident in this process; the map is
//! then read once, front to back, and pages are released behind the workers.

use memmap2::{Advice, Mmap, UncheckedAdvice};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;
use xxhash_rust::xxh3::Xxh3;

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
}

/// Size and modification time: enough to notice a writer still at work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub size: u64,
    pub modified: Option<SystemTime>,
}

pub fn identity(path: &Path) -> Result<Identity, MapError> {
    let m = std::fs::metadata(path).map_err(|source| MapError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Identity {
        size: m.len(),
        modified: m.modified().ok(),
    })
}

/// Content hash: xxh3-128 as 32 hex digits, prefixed with the algorithm.
pub fn content_hash(path: &Path) -> Result<String, MapError> {
    let io = |source| MapError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = File::open(path).map_err(io)?;
    let mut h = Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("xxh3-128:{:032x}", h.digest128()))
}

/// Hash of in-memory bytes, the same value [`content_hash`] gives for a file.
pub fn hash_bytes(bytes: &[u8]) -> String {
    format!("xxh3-128:{:032x}", xxhash_rust::xxh3::xxh3_128(bytes))
}

/// A read-only map of a whole file (an empty file maps to an empty slice).
pub struct Mapped {
    map: Option<Mmap>,
}

impl Mapped {
    pub fn open(path: &Path) -> Result<Mapped, MapError> {
        let io = |source| MapError::Io {
            path: path.to_path_buf(),
            source,
        };
        let f = File::open(path).map_err(io)?;
        if f.metadata().map_err(io)?.len() == 0 {
            return Ok(Mapped { map: None });
        }
        // SAFETY: the map is read-only; a concurrent writer truncating the file
        // could fault, which is why watch mode only picks up finished files and
        // the loader re-checks size and mtime before committing.
        let map = unsafe { Mmap::map(&f) }.map_err(io)?;
        // Best effort: sequential read-ahead.
        let _ = map.advise(Advice::Sequential);
        Ok(Mapped { map: Some(map) })
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
