//! tripload: bulk-load vehicle trip CSV files into PostgreSQL/PostGIS over
//! binary COPY, one transaction per file, with load-time rollups that answer
//! weekly averages for a region or a bounding box.
//!
//! Folders by domain; dependencies point one way
//! (`cli` → `ingest`/`analytics`/`notify` → `db` → `kernel`):
//!
//! - [`kernel`]: the pure core — chunk, record, parse, encode (bytes in, values out).
//! - [`ingest`]: discover → map → kernel → backlog → copy (the file's
//!   transaction) → archive; `load` and `watch` drive it.
//! - [`analytics`]: rollups and cell points built at load time, compaction,
//!   and the `weekly` / `groups` answers.
//! - [`notify`]: status events, progress and summaries, mail, `status`.
//! - [`db`]: connecting (TLS), migrations, ledger, dimension dictionaries.
//! - [`serve`]: the HTTP API, live events and dashboard (`tripload serve`).
//! - [`embedded`]: the local PostgreSQL cluster tripload starts when no
//!   database URL is given.

pub mod analytics;
pub mod cli;
pub mod db;
pub mod embedded;
pub mod gen;
pub mod ingest;
pub mod kernel;
pub mod notify;
pub mod serve;
