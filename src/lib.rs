//! tripload: bulk-load vehicle trip CSV files into PostgreSQL/PostGIS over
//! binary COPY, one transaction per file, with load-time rollups that answer
//! weekly averages for a region or a bounding box.
//!
//! Folders by domain; dependencies point one way (`tests/layering.rs`
//! checks it):
//!
//! ```text
//! cmd ─▶ serve ─▶ ingest ─▶ lifecycle ─▶ analytics ─▶ notify ─▶ db ─▶ embedded ─▶ kernel
//! ```
//!
//! - [`cmd`]: the command line, one file per subcommand.
//! - [`kernel`]: the pure core — chunk, record, parse, encode, grid, rollup
//!   partials (bytes in, values out) — is its own crate, `crates/kernel`
//!   (`tripload-kernel`), so the compiler keeps it free of I/O and of this
//!   crate; re-exported here as `tripload::kernel`.
//! - [`ingest`]: discover → map → loader → copy (one file: transaction =
//!   claim → stream → verify → rollups → commit) → archive; `load` and
//!   `watch` drive it.
//! - [`analytics`]: the rollups and cell points written at load time,
//!   compaction, and the `weekly` / `groups` answers.
//! - [`notify`]: status events, progress and summaries, mail, the files
//!   written beside a file, `status`.
//! - [`db`]: connecting (TLS), migrations, ledger, dimension dictionaries,
//!   COPY feeding.
//! - [`serve`]: the HTTP API, live events and dashboard (`tripload serve`).
//! - [`lifecycle`]: unload, replace and retain files' trips with the rollups exact.
//! - [`embedded`]: the local PostgreSQL cluster tripload starts when no
//!   database URL is given.
//! - [`gen`]: synthetic trip files for tests and benchmarks.

pub mod analytics;
pub mod cmd;
pub mod db;
pub mod embedded;
pub mod exit;
pub mod gen;
pub mod ingest;
pub mod lifecycle;
pub mod notify;
pub mod pgtext;
pub mod serve;

pub use tripload_kernel as kernel;
