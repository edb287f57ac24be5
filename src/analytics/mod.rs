//! Analytics: the rollups maintained at load time and the questions they answer.
//!
//! ```text
//! encode ─▶ rollup partials (region/week, cell/week) ─┐
//!        ─▶ points (exact coordinates per cell/week) ──┴▶ rollup tables
//!                     compact merges small files' rows ─▶ weekly, groups
//! ```

pub mod compact;
pub mod groups;
pub mod points;
pub mod points_writer;
pub mod regions;
pub mod rollup;
pub mod weekly;
