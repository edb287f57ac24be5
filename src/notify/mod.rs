//! Telling people what happens: status events (table + NOTIFY), live progress
//! and summaries on the terminal, mailed reports, and `status`.

pub mod events;
pub mod mail;
pub mod report;
pub mod status;
