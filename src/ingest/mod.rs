//! Ingestion: from a path on disk to a committed (or rolled back) file.
//!
//! ```text
//! discover ─▶ map (open once, no links) ─▶ copy::load_file, per file:
//!     transaction: claim ─▶ stream (encode_stage: kernel on the rayon pool,
//!                  in order ─▶ backlog ─▶ COPY) ─▶ verify ─▶ rollups ─▶ COMMIT
//!     ─▶ outcome (committed / file's fault / environment's / duplicate)
//!     ─▶ archive (processed/ or failed/)
//! ```
//! [`loader`] builds what every file shares, the same way for [`load`] (the
//! files named on the command line) and [`watch`] (the files that land in a
//! directory).

pub mod archive;
pub mod backlog;
pub mod context;
pub mod copy;
pub mod discover;
pub mod encode_stage;
pub mod load;
pub mod loader;
pub mod map;
pub mod ordered;
pub mod outcome;
pub mod partitions;
pub mod stream;
pub mod transaction;
pub mod watch;
