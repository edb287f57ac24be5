//! tripload: bulk-load vehicle trip CSV files into PostgreSQL/PostGIS over
//! binary COPY, one transaction per file.
//!
//! The pipeline, one module per stage:
//! [`discover`] → [`map`] → [`chunk`] → [`record`]/[`parse`] → [`encode`]
//! (on the rayon pool, in order via [`ordered`], with the [`rollup`]s and the
//! [`points`] of each chunk) → [`backlog`] → [`copy`] (one transaction, with
//! the [`ledger`]; the cell points through [`points_writer`]) → [`archive`] →
//! [`report`]; [`compact`] merges the rollups of small files. [`load`] runs it for many
//! files; [`session`] gives a local load its own, lower CPU priority;
//! [`db`] and [`embedded`] provide the database. The pure core
//! (`chunk`, `record`, `parse`, `encode`, `rollup`, `points`) takes bytes and returns values.

pub mod archive;
pub mod backlog;
pub mod chunk;
pub mod cli;
pub mod compact;
pub mod copy;
pub mod db;
pub mod dims;
pub mod discover;
pub mod embedded;
pub mod encode;
pub mod events;
pub mod excerpt;
pub mod gen;
pub mod groups;
pub mod ledger;
pub mod load;
pub mod mail;
pub mod map;
pub mod ordered;
pub mod parse;
pub mod pgtls;
pub mod points;
pub mod points_writer;
pub mod record;
pub mod report;
pub mod rollup;
pub mod session;
pub mod status;
pub mod watch;
pub mod weekly;
