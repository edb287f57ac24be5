//! Starting, finding and stopping the CLI's persistent server: a detached
//! `pg_ctl start` that outlives this process, serialised by a lock on the
//! data directory; recovery from a killed server (a stale lock file, orphaned
//! backends still holding its shared memory, a port taken meanwhile); and
//! `pg_ctl stop`.

use super::command::{run_captured, server_command, shell_quote};
use super::init::{self, prepare_cluster};
use super::layout::{
    adopt_data_dir, create_dir_tree, is_cluster, is_temp_socket_dir, resolve_layout, socket_path,
    Layout, Mode, SOCKET_FALLBACK_PREFIX,
};
use super::pidfile::{liveness, read_pidfile, shmem_in_use, Liveness, PidFile, PID_FILE};
use super::probe::{probe, Probe};
use super::serverlog::{file_len, log_tail, read_log_from, LOG_FILE};
use super::{access, bindir, fsafe, io_err, Embedded, EmbeddedError, Options, SUPERUSER};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::net::TcpListener;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

/// How long a server may take to accept connections before we give up.
pub(super) const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts at starting a server when the failure looks transient (the
/// free port we picked got taken, or children of a killed postmaster still
/// hold its shared memory).
pub(super) const START_ATTEMPTS: u32 = 5;
/// The port of the last persistent start, reused when free.
const PORT_FILE: &str = "tripload.port";
/// Age past which a socket directory (or a throwaway cluster) of a server
/// that is gone may be removed.
pub(super) const STALE_AGE: Duration = Duration::from_secs(10 * 60);

/// See [`Embedded::ensure_running_with`].
pub(super) fn ensure_running(dir: &Path, opts: &Options) -> Result<Embedded, EmbeddedError> {
    let mut layout = resolve_layout(dir, Mode::Persistent, &opts.fallback_root)?;
    create_dir_tree(&layout.data_dir)?;
    adopt_data_dir(&layout)?;
    // Serialises concurrent tripload processes (and test threads) so only
    // one runs initdb / pg_ctl start for a cluster at a time.
    let _lock = DirLock::acquire(&layout.data_dir)?;
    sweep_stale_sockets(&layout);

    if let Some(running) = running_server(&layout)? {
        let managed = access::hba_is_managed(&layout.data_dir);
        if managed && (running.tcp_password_file.is_some() || !opts.tcp) {
            return finish_start(running);
        }
        tracing::warn!(
            data_dir = %layout.data_dir.display(),
            "restarting the embedded PostgreSQL server to apply {}",
            if managed { "--pg-tcp" } else { "tripload's access rules" }
        );
        stop_server(&layout)?;
    }
    let bindir = prepare_cluster(&mut layout, Mode::Persistent)?;
    start_detached(&bindir, &layout, opts.tcp)
}

/// `pg_ctl start`, retried on a failure that looks transient, then waits
/// until the server accepts connections.
fn start_detached(bindir: &Path, layout: &Layout, tcp: bool) -> Result<Embedded, EmbeddedError> {
    let log_path = layout.data_dir.join(LOG_FILE);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let port = port_for_start(layout, attempt)?;
        let log_start = file_len(&log_path);
        match pg_ctl_start(bindir, layout, port, tcp, &log_path) {
            Ok(()) => return started(layout, port, tcp, &log_path),
            Err(e) => {
                let recent = read_log_from(&log_path, log_start);
                if attempt < START_ATTEMPTS && is_transient_start_failure(&recent) {
                    tracing::debug!(attempt, "retrying PostgreSQL start: {recent}");
                    thread::sleep(Duration::from_millis(500));
                    continue;
                }
                return Err(e);
            }
        }
    }
}

/// The port of the last run when it is free (so connection strings handed
/// out before a restart keep working), else a free one.
fn port_for_start(layout: &Layout, attempt: u32) -> Result<u16, EmbeddedError> {
    let last = fsafe::read_to_string_nofollow(&layout.data_dir.join(PORT_FILE))
        .ok()
        .and_then(|s| s.trim().parse::<u16>().ok());
    match last {
        // A socket lock left by a killed server would refuse the port.
        Some(p)
            if attempt == 1
                && !layout
                    .socket_dir
                    .join(format!(".s.PGSQL.{p}.lock"))
                    .exists()
                && TcpListener::bind(("127.0.0.1", p)).is_ok() =>
        {
            Ok(p)
        }
        _ => free_port(),
    }
}

/// After `pg_ctl start` succeeded: records the port, confirms the socket
/// answers, and hands the server out.
fn started(
    layout: &Layout,
    port: u16,
    tcp: bool,
    log_path: &Path,
) -> Result<Embedded, EmbeddedError> {
    let owner = layout.run_as.as_ref().map(|u| (u.uid, u.gid));
    if let Err(e) = fsafe::replace_file(
        &layout.data_dir,
        PORT_FILE,
        port.to_string().as_bytes(),
        0o644,
        owner,
    ) {
        tracing::debug!(
            "could not record the port in {}: {e}",
            layout.data_dir.join(PORT_FILE).display()
        );
    }
    let emb = layout.embedded(port, tcp);
    wait_persistent_ready(layout, &emb, log_path)?;
    tracing::info!(
        data_dir = %layout.data_dir.display(),
        port,
        tcp,
        "embedded PostgreSQL server started"
    );
    finish_start(emb)
}

/// See [`Embedded::stop_with`].
pub(super) fn stop(dir: &Path, opts: &Options) -> Result<bool, EmbeddedError> {
    let layout = resolve_layout(dir, Mode::Persistent, &opts.fallback_root)?;
    if !is_cluster(&layout.data_dir) {
        return Ok(false);
    }
    adopt_data_dir(&layout)?;
    let _lock = DirLock::acquire(&layout.data_dir)?;
    stop_server(&layout)
}

/// Last step of every start: a server listening on TCP gets its password
/// (generated on first use) before it is handed out.
pub(super) fn finish_start(emb: Embedded) -> Result<Embedded, EmbeddedError> {
    if emb.tcp_password_file.is_some() {
        let password = access::ensure_password(&emb.data_dir)?;
        access::set_role_password(&emb.conninfo("postgres"), &password)?;
    }
    Ok(emb)
}

/// `pg_ctl stop -m fast -w` for the server running from the layout's data
/// directory (the caller holds its lock); Ok(false) if none runs. Removes
/// its socket directory when that was a temporary one under /tmp.
fn stop_server(layout: &Layout) -> Result<bool, EmbeddedError> {
    let Some(pf) = read_pidfile(&layout.data_dir)? else {
        return Ok(false);
    };
    if liveness(pf.pid) != Liveness::Postgres {
        return Ok(false);
    }
    let bindir = bindir::bindir_for_cluster(&layout.data_dir, bindir::find_bindir()?);
    let mut cmd = server_command(
        &bindir.join("pg_ctl"),
        layout.run_as.as_ref(),
        &layout.data_dir,
    );
    cmd.arg("stop")
        .arg("-D")
        .arg(&layout.data_dir)
        .args(["-m", "fast", "-w", "-t"])
        .arg(READY_TIMEOUT.as_secs().to_string());
    let hint = format!(
        "check {} for why the server did not stop",
        layout.data_dir.join(LOG_FILE).display()
    );
    match run_captured(cmd, layout.run_as.as_ref(), &hint) {
        Ok(_) => {}
        // It may have gone away on its own between our check and pg_ctl.
        Err(_) if liveness(pf.pid) != Liveness::Postgres => {}
        Err(e) => return Err(e),
    }
    if let Some(dir) = pf.socket_dir.filter(|d| is_temp_socket_dir(d)) {
        let _ = fs::remove_dir(dir);
    }
    Ok(true)
}

/// An exclusive flock on the data directory itself, released on drop. The
/// fd is close-on-exec, so servers we start never inherit the lock.
struct DirLock {
    _file: File,
}

impl DirLock {
    fn acquire(dir: &Path) -> Result<DirLock, EmbeddedError> {
        let file = File::open(dir).map_err(|e| io_err("open", dir, e))?;
        loop {
            // SAFETY: the fd is valid for as long as `file` lives.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(DirLock { _file: file });
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(io_err("lock", dir, err));
            }
        }
    }
}

/// Bind port 0 and release it; the small race until postgres binds it is
/// covered by retrying on "Address already in use".
pub(super) fn free_port() -> Result<u16, EmbeddedError> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).map_err(EmbeddedError::NoFreePort)?;
    let port = listener
        .local_addr()
        .map_err(EmbeddedError::NoFreePort)?
        .port();
    Ok(port)
}

pub(super) fn is_transient_start_failure(log: &str) -> bool {
    log.contains("Address already in use") || log.contains("is still in use")
}

fn pg_ctl_start(
    bindir: &Path,
    layout: &Layout,
    port: u16,
    tcp: bool,
    log_path: &Path,
) -> Result<(), EmbeddedError> {
    let run_as = layout.run_as.as_ref();
    // pg_ctl pastes -o into a `sh -c` command line.
    let options = init::server_settings(bindir, port, &layout.socket_dir, tcp, Mode::Persistent)
        .iter()
        .map(|setting| format!("-c {}", shell_quote(OsStr::new(setting))))
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = server_command(&bindir.join("pg_ctl"), run_as, &layout.data_dir);
    cmd.arg("start")
        .arg("-D")
        .arg(&layout.data_dir)
        .arg("-w")
        .arg("-t")
        .arg(READY_TIMEOUT.as_secs().to_string())
        .arg("-l")
        .arg(log_path)
        .arg("-o")
        .arg(options)
        // Recent pg_ctl puts the postmaster in a session of its own; older
        // ones do not, and then a Ctrl-C at the terminal would reach it too
        // and be taken as a fast-shutdown request.
        .process_group(0);
    let log_start = file_len(log_path);
    run_captured(
        cmd,
        run_as,
        "fix the problem the server log shows, then retry",
    )
    .map_err(|mut e| {
        if let EmbeddedError::CommandFailed { log_tail: tail, .. } = &mut e {
            *tail = format!(
                "\nlast lines of {}:\n{}",
                log_path.display(),
                log_tail(log_path, log_start)
            );
        }
        e
    })?;
    Ok(())
}

/// pg_ctl -w has already waited for the "ready" status; this confirms that
/// the socket we hand out actually answers.
fn wait_persistent_ready(
    layout: &Layout,
    emb: &Embedded,
    log_path: &Path,
) -> Result<(), EmbeddedError> {
    let socket = socket_path(&emb.socket_dir, emb.port);
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if probe(&socket) == Probe::Accepting {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(EmbeddedError::StartTimeout {
                data_dir: layout.data_dir.clone(),
                socket,
                secs: READY_TIMEOUT.as_secs(),
                log_path: log_path.to_path_buf(),
                log_tail: log_tail(log_path, 0),
            });
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// The server already running from this cluster, if any, once it accepts
/// connections. Clears a lock file left by a dead postmaster whose pid now
/// names something postgres itself would mistake for a live server.
pub(super) fn running_server(layout: &Layout) -> Result<Option<Embedded>, EmbeddedError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let pid_path = layout.data_dir.join(PID_FILE);
    let server_uid = layout
        .run_as
        .as_ref()
        .map(|u| u.uid)
        // SAFETY: geteuid cannot fail.
        .unwrap_or_else(|| unsafe { libc::geteuid() });
    loop {
        let Some(pf) = read_pidfile(&layout.data_dir)? else {
            return Ok(None);
        };
        let state = liveness(pf.pid);
        // After a kill -9 of the postmaster its backends can keep running
        // (a long query only notices at its next wait). postgres refuses to
        // start while they hold the old shared memory, so wait them out
        // rather than burn start attempts.
        let orphans = state != Liveness::Postgres && shmem_in_use(pf.shmem_id, server_uid);
        match state {
            Liveness::Postgres => {
                if let Some(emb) = accepting(layout, &pf) {
                    return Ok(Some(emb));
                }
            }
            _ if orphans => {}
            // postgres itself clears a lock file whose pid no longer exists.
            Liveness::Gone => return Ok(None),
            // But not one whose pid is an unreaped zombie (an init that does
            // not reap, as in some containers) or was recycled after a reboot.
            Liveness::Zombie | Liveness::Other => {
                tracing::warn!(
                    "removing stale {} (pid {} is no longer a PostgreSQL server)",
                    pid_path.display(),
                    pf.pid
                );
                fs::remove_file(&pid_path).map_err(|e| io_err("remove", &pid_path, e))?;
                return Ok(None);
            }
        }
        if Instant::now() >= deadline {
            return Err(not_ready(layout, &pf, orphans));
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The server the lock file names, when its socket accepts connections.
fn accepting(layout: &Layout, pf: &PidFile) -> Option<Embedded> {
    let (Some(port), Some(socket_dir)) = (pf.port, &pf.socket_dir) else {
        return None;
    };
    (probe(&socket_path(socket_dir, port)) == Probe::Accepting).then(|| Embedded {
        data_dir: layout.data_dir.clone(),
        socket_dir: socket_dir.clone(),
        port,
        user: SUPERUSER.to_owned(),
        tcp_password_file: pf
            .listen
            .is_some()
            .then(|| access::password_file(&layout.data_dir)),
    })
}

/// Why a server found running never became usable within [`READY_TIMEOUT`].
fn not_ready(layout: &Layout, pf: &PidFile, orphans: bool) -> EmbeddedError {
    if orphans {
        return EmbeddedError::OrphanedBackends {
            data_dir: layout.data_dir.clone(),
            pid: pf.pid,
            secs: READY_TIMEOUT.as_secs(),
        };
    }
    let socket = match (pf.port, &pf.socket_dir) {
        (Some(port), Some(dir)) => socket_path(dir, port),
        _ => layout.socket_dir.clone(),
    };
    let log_path = layout.data_dir.join(LOG_FILE);
    EmbeddedError::StartTimeout {
        data_dir: layout.data_dir.clone(),
        socket,
        secs: READY_TIMEOUT.as_secs(),
        log_tail: log_tail(&log_path, 0),
        log_path,
    }
}

/// Socket directories under /tmp (ours or the server user's) left by servers
/// that are gone: a running server keeps its socket and lock file in there,
/// and remove_dir only removes empty directories.
pub(super) fn sweep_stale_sockets(layout: &Layout) {
    let mut owners = vec![fsafe::euid()];
    owners.extend(layout.run_as.as_ref().map(|u| u.uid));
    for entry in list_dir(Path::new("/tmp"), SOCKET_FALLBACK_PREFIX) {
        let ours = entry
            .path()
            .symlink_metadata()
            .is_ok_and(|m| m.is_dir() && owners.contains(&m.uid()));
        if ours && is_older_than(&entry, STALE_AGE) {
            let _ = fs::remove_dir(entry.path());
        }
    }
}

pub(super) fn list_dir(dir: &Path, prefix: &str) -> Vec<fs::DirEntry> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().as_bytes().starts_with(prefix.as_bytes()))
        .collect()
}

pub(super) fn is_older_than(entry: &fs::DirEntry, age: Duration) -> bool {
    entry
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|elapsed| elapsed > age)
}
