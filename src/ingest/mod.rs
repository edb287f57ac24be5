//! Ingestion: from a path on disk to a committed (or rolled back) file.
//!
//! ```text
//! discover ─▶ map (open once, no links) ─▶ kernel on the rayon pool (ordered)
//!          ─▶ backlog ─▶ copy (one transaction: claim, COPY, rollups, COMMIT)
//!          ─▶ archive (processed/ or failed/)
//! ```
//! [`load`] runs it over the files named on the command line, [`watch`] over
//! the files that land in a directory.

pub mod archive;
pub mod backlog;
pub mod copy;
pub mod discover;
pub mod load;
pub mod loader;
pub mod map;
pub mod ordered;
pub mod session;
pub mod watch;
