//! Analytics: the rollups maintained at load time and the questions they answer.
//!
//! ```text
//! kernel::encode ─▶ kernel::rollup partials (region/week, region/source) ─┐
//!                ─▶ points (exact coordinates per cell/week, spilled)    │
//!                   ─▶ points_writer (second connection, cell counts) ───┴▶ rollup
//!                      (COPY rows in the file's transaction) ─▶ rollup tables
//!                compact merges small files' rows ─▶ weekly, groups
//! ```
//! The pure maths (grid, week, partials, merge) is in [`crate::kernel`];
//! what writes and reads the tables is here.

pub mod compact;
pub mod groups;
pub mod points;
pub mod points_writer;
pub mod regions;
pub mod rollup;
pub mod weekly;
