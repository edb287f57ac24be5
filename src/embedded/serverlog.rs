//! The server's log (`server.log` in the data directory): what a failed
//! start wrote, quoted in its error.

use super::fsafe;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

pub(super) const LOG_FILE: &str = "server.log";
/// Lines of the log an error quotes.
const TAIL_LINES: usize = 30;

pub(super) fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The log written since byte `since` (at most the last 64 KiB of it).
pub(super) fn read_log_from(path: &Path, since: u64) -> String {
    const MAX_BYTES: u64 = 64 * 1024;
    let Ok(mut file) = fsafe::open_read_nofollow(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = since.max(len.saturating_sub(MAX_BYTES)).min(len);
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

pub(super) fn log_tail(path: &Path, since: u64) -> String {
    let text = read_log_from(path, since);
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return "  (nothing logged)".to_owned();
    }
    lines[lines.len().saturating_sub(TAIL_LINES)..]
        .iter()
        .map(|line| format!("  {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}
