//! What the server's lock file (`postmaster.pid`) says, and whether the
//! process it names is still a PostgreSQL server: how a start tells a
//! running server from a stale lock left by a killed one.

use super::{fsafe, io_err, EmbeddedError};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub(super) const PID_FILE: &str = "postmaster.pid";

/// The parts of postmaster.pid we use (lines 1, 4, 5, 6 and 7).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct PidFile {
    pub(super) pid: i32,
    pub(super) port: Option<u16>,
    pub(super) socket_dir: Option<PathBuf>,
    /// The first TCP listen address; None when the server has no TCP.
    pub(super) listen: Option<String>,
    pub(super) shmem_id: Option<i32>,
}

pub(super) fn read_pidfile(data_dir: &Path) -> Result<Option<PidFile>, EmbeddedError> {
    let path = data_dir.join(PID_FILE);
    match fsafe::read_to_string_nofollow(&path) {
        Ok(text) => {
            parse_pidfile(&text).map_err(|reason| EmbeddedError::BadPidFile { path, reason })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", &path, e)),
    }
}

/// postgres fills the file in stages, so later lines may still be missing.
pub(super) fn parse_pidfile(text: &str) -> Result<Option<PidFile>, String> {
    let lines: Vec<&str> = text.lines().collect();
    let Some(first) = lines.first().map(|l| l.trim()).filter(|l| !l.is_empty()) else {
        return Ok(None);
    };
    let pid = first
        .parse::<i32>()
        .map_err(|_| format!("line 1 is not a process id: {first:?}"))?;
    if pid <= 0 {
        return Err(format!("line 1 is not a process id: {first:?}"));
    }
    let port = lines.get(3).and_then(|l| l.trim().parse::<u16>().ok());
    let socket_dir = lines
        .get(4)
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .map(PathBuf::from);
    let listen = lines
        .get(5)
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .map(str::to_owned);
    let shmem_id = lines
        .get(6)
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|id| id.parse::<i32>().ok());
    Ok(Some(PidFile {
        pid,
        port,
        socket_dir,
        listen,
        shmem_id,
    }))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Liveness {
    /// No such process.
    Gone,
    /// Dead but unreaped: kill(pid, 0) still succeeds, which would make
    /// postgres refuse the lock file forever if nobody reaps it.
    Zombie,
    /// The pid was recycled for an unrelated program (e.g. after a reboot).
    Other,
    Postgres,
}

pub(super) fn liveness(pid: i32) -> Liveness {
    if pid <= 0 {
        return Liveness::Gone;
    }
    // SAFETY: signal 0 only checks for existence; pid > 0 so this never
    // addresses a process group.
    if unsafe { libc::kill(pid, 0) } != 0
        && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
    {
        return Liveness::Gone;
    }
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    if let Ok(stat) = fs::read_to_string(proc_dir.join("stat")) {
        // The state follows the parenthesised command name, which may itself
        // contain spaces or parentheses.
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next());
        if matches!(state, Some("Z") | Some("X")) {
            return Liveness::Zombie;
        }
    }
    match fs::read_to_string(proc_dir.join("comm")) {
        Ok(comm) if !matches!(comm.trim(), "postgres" | "postmaster") => Liveness::Other,
        _ => Liveness::Postgres,
    }
}

/// Whether processes are still attached to the SysV segment the postmaster
/// recorded: postgres's own guard against two servers sharing a data
/// directory, which we must honour before deleting its lock file.
pub(super) fn shmem_in_use(shmem_id: Option<i32>, server_uid: u32) -> bool {
    let Some(id) = shmem_id else {
        return false;
    };
    // SAFETY: shmid_ds is plain old data and shmctl(IPC_STAT) only writes it.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: `ds` is a valid, writable shmid_ds.
    if unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) } != 0 {
        // EINVAL/EIDRM: the segment is gone. Anything else: assume in use.
        return !matches!(
            io::Error::last_os_error().raw_os_error(),
            Some(libc::EINVAL) | Some(libc::EIDRM)
        );
    }
    // Segment ids restart at boot; one created by another user is not ours.
    ds.shm_perm.cuid == server_uid && ds.shm_nattch > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pidfile_parsing_tolerates_partial_files() {
        let full =
            "1234\n/data\n1700000000\n5433\n/data/run\n127.0.0.1\n  5433001     32769\nready   \n";
        assert_eq!(
            parse_pidfile(full).unwrap(),
            Some(PidFile {
                pid: 1234,
                port: Some(5433),
                socket_dir: Some(PathBuf::from("/data/run")),
                listen: Some("127.0.0.1".to_owned()),
                shmem_id: Some(32769),
            })
        );
        assert_eq!(
            parse_pidfile("1234\n/data\n1700000000\n5433\n\n").unwrap(),
            Some(PidFile {
                pid: 1234,
                port: Some(5433),
                socket_dir: None,
                listen: None,
                shmem_id: None,
            })
        );
        assert_eq!(parse_pidfile("").unwrap(), None);
        assert!(parse_pidfile("garbage\n").is_err());
        assert!(parse_pidfile("-1\n").is_err());
    }
}
