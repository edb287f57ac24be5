//! What every file's load in a run shares ([`LoadContext`]): settings,
//! the dimension dictionaries, the event publisher, the grid, where files
//! go afterwards. Built once by [`crate::ingest::loader::Loader::build`].

use crate::db::dims::DimStore;
use crate::notify::events::Publisher;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What every file load of a run shares.
pub struct LoadContext {
    pub conninfo: String,
    pub dims: Arc<DimStore>,
    /// Rejected lines tolerated per file (`--max-rejects`).
    pub max_rejects: u64,
    /// A longer record fails the file (`--max-record-bytes`).
    pub max_record_bytes: usize,
    pub chunk_bytes: usize,
    /// Chunks in flight per file (bounds memory).
    pub depth: usize,
    pub processed_dir: Option<PathBuf>,
    pub failed_dir: Option<PathBuf>,
    pub loaded_by: String,
    pub events: Publisher,
    /// Maintain the rollups (grid read from the database) in each file's transaction.
    pub grid: Option<crate::kernel::grid::Grid>,
    /// Input bytes per segment of cell points (see `analytics::points_writer`).
    pub points_segment_bytes: usize,
    /// Bytes of encoded trips that may wait on disk (see `ingest::backlog`).
    pub backlog_bytes: u64,
    /// The committed file a new file replaces (`load --replace`), unloaded
    /// in the new file's transaction.
    pub replace: crate::lifecycle::replace::Policy,
    /// The time slots of `trips` (Citus partitions, TimescaleDB chunks)
    /// each file makes before its transaction (`ingest::partitions`).
    pub time_slots: crate::db::layout::TimeSlots,
}

impl LoadContext {
    /// `processed/` or `failed/` beside the directory the file was found in,
    /// unless configured.
    fn dest(&self, file: &Path, configured: &Option<PathBuf>, default: &str) -> PathBuf {
        if let Some(d) = configured {
            return d.clone();
        }
        let dir = file.parent().unwrap_or(Path::new("."));
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        match dir.canonicalize().ok().as_deref().and_then(Path::parent) {
            Some(parent) => parent.join(default),
            None => dir.join(default),
        }
    }
    pub fn processed_dir_for(&self, file: &Path) -> PathBuf {
        self.dest(file, &self.processed_dir, "processed")
    }
    pub fn failed_dir_for(&self, file: &Path) -> PathBuf {
        self.dest(file, &self.failed_dir, "failed")
    }
}
