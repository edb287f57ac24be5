//! Telling people what happens: status events (table + NOTIFY), live progress
//! and summaries on the terminal, mailed reports, the files written beside
//! a loaded or failed file, and `status`.

pub mod events;
pub mod mail;
pub mod mail_html;
pub mod report;
pub mod sidecar;
pub mod status;
