//! Readiness: a startup packet over the Unix socket, like `pg_isready`
//! without a subprocess per poll.

use super::SUPERUSER;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Probe {
    Accepting,
    /// Up, but refusing connections: starting up, shutting down or in
    /// recovery (SQLSTATE 57P03).
    NotYet,
    Unreachable,
}

/// Send a startup packet over the Unix socket and classify the first reply,
/// like pg_isready but without a subprocess per poll.
pub(super) fn probe(socket: &Path) -> Probe {
    let Ok(mut stream) = UnixStream::connect(socket) else {
        return Probe::Unreachable;
    };
    let timeout = Some(Duration::from_secs(5));
    if stream.set_read_timeout(timeout).is_err() || stream.set_write_timeout(timeout).is_err() {
        return Probe::Unreachable;
    }
    let mut body = 196_608u32.to_be_bytes().to_vec(); // protocol 3.0
    for (key, value) in [("user", SUPERUSER), ("database", "postgres")] {
        body.extend_from_slice(key.as_bytes());
        body.push(0);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let Ok(len) = u32::try_from(body.len() + 4) else {
        return Probe::Unreachable;
    };
    let mut packet = len.to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    if stream.write_all(&packet).is_err() {
        return Probe::Unreachable;
    }
    let mut tag = [0u8; 1];
    if stream.read_exact(&mut tag).is_err() {
        return Probe::Unreachable;
    }
    if tag[0] != b'E' {
        // Authentication request or similar: the server takes connections.
        // Terminate politely so the backend doesn't log an unexpected EOF.
        let _ = stream.write_all(&[b'X', 0, 0, 0, 4]);
        return Probe::Accepting;
    }
    let mut len_buf = [0u8; 4];
    if stream.read_exact(&mut len_buf).is_err() {
        return Probe::Unreachable;
    }
    let body_len = u32::from_be_bytes(len_buf).saturating_sub(4).min(8192) as usize;
    let mut fields = vec![0u8; body_len];
    if stream.read_exact(&mut fields).is_err() {
        return Probe::Unreachable;
    }
    // Any error other than "cannot connect now" (e.g. too many clients)
    // still means the server is up.
    if error_sqlstate(&fields).as_deref() == Some("57P03") {
        Probe::NotYet
    } else {
        Probe::Accepting
    }
}

fn error_sqlstate(fields: &[u8]) -> Option<String> {
    let mut rest = fields;
    while let Some((&code, tail)) = rest.split_first() {
        if code == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0)?;
        if code == b'C' {
            return Some(String::from_utf8_lossy(&tail[..end]).into_owned());
        }
        rest = &tail[end + 1..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstate_is_extracted_from_error_fields() {
        let fields = b"SFATAL\0C57P03\0Mthe database system is starting up\0\0";
        assert_eq!(error_sqlstate(fields).as_deref(), Some("57P03"));
        assert_eq!(error_sqlstate(b"\0"), None);
    }
}
