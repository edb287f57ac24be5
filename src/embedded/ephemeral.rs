//! Throwaway clusters for tests and benches (feature `test-support`, not in
//! the production binary): initdb into a fresh directory without fsync, and
//! `postgres` run as a child that dies with this process.

use super::command::{command_line, describe_exit, server_command};
use super::init::{prepare_cluster, server_settings};
use super::layout::{
    adopt_data_dir, create_dir_tree, fallback_root_is_safe, resolve_layout, socket_path, Layout,
    Mode,
};
use super::lifecycle::{
    finish_start, free_port, is_older_than, is_transient_start_failure, list_dir, running_server,
    sweep_stale_sockets, READY_TIMEOUT, STALE_AGE, START_ATTEMPTS,
};
use super::pidfile::{liveness, read_pidfile, Liveness};
use super::probe::{probe, Probe};
use super::serverlog::{file_len, log_tail, read_log_from, LOG_FILE};
use super::{io_err, Embedded, EmbeddedError, Options};
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Names of throwaway clusters relocated under the fallback root: they are
/// only removable after their owning process has died, so a later start
/// sweeps old ones.
use super::layout::EPHEMERAL_DIR_PREFIX as DIR_PREFIX;

impl Embedded {
    /// Ephemeral mode for tests with default options: see
    /// [`Embedded::start_ephemeral_with`].
    pub fn start_ephemeral(dir: &Path) -> Result<Embedded, EmbeddedError> {
        Embedded::start_ephemeral_with(dir, &Options::default())
    }

    /// Ephemeral mode for tests: initdb into `dir` (a fresh temp dir) and run
    /// `postgres` as a child process that dies when this process exits.
    pub fn start_ephemeral_with(dir: &Path, opts: &Options) -> Result<Embedded, EmbeddedError> {
        let mut layout = resolve_layout(dir, Mode::Ephemeral, &opts.fallback_root)?;
        sweep_stale_ephemeral(&layout, &opts.fallback_root);
        if layout.relocated {
            clear_relocated(&layout)?;
        }
        create_dir_tree(&layout.data_dir)?;
        adopt_data_dir(&layout)?;
        // Also clears a stale lock file that would make postgres refuse.
        if running_server(&layout)?.is_some() {
            return Err(EmbeddedError::InUse {
                data_dir: layout.data_dir.clone(),
            });
        }
        let bindir = prepare_cluster(&mut layout, Mode::Ephemeral)?;
        let log_path = layout.data_dir.join(LOG_FILE);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port()?;
            let log_start = file_len(&log_path);
            let child = spawn_supervised_postgres(&bindir, &layout, port, opts.tcp, &log_path)?;
            let emb = layout.embedded(port, opts.tcp);
            let Some(exit_status) = wait_ready(&child, &emb, &layout, &log_path, log_start)? else {
                return finish_start(emb);
            };
            let recent = read_log_from(&log_path, log_start);
            if attempt < START_ATTEMPTS && is_transient_start_failure(&recent) {
                tracing::debug!(attempt, "retrying PostgreSQL start: {recent}");
                continue;
            }
            return Err(EmbeddedError::ServerExited {
                data_dir: layout.data_dir.clone(),
                status: exit_status,
                log_tail: log_tail(&log_path, log_start),
                log_path,
            });
        }
    }
}

/// The relocated directory is derived from the requested path, so it can
/// hold a cluster from an earlier run that must not leak into this one.
fn clear_relocated(layout: &Layout) -> Result<(), EmbeddedError> {
    if let Ok(Some(pf)) = read_pidfile(&layout.data_dir) {
        if liveness(pf.pid) == Liveness::Postgres {
            return Err(EmbeddedError::InUse {
                data_dir: layout.data_dir.clone(),
            });
        }
    }
    match fs::remove_dir_all(&layout.data_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(io_err("remove", &layout.data_dir, source)),
    }
}

/// Waits until the child accepts connections (`None`) or exits (how it
/// exited); past [`READY_TIMEOUT`] it is stopped and that is the error.
fn wait_ready(
    child: &Supervised,
    emb: &Embedded,
    layout: &Layout,
    log_path: &Path,
    log_start: u64,
) -> Result<Option<String>, EmbeddedError> {
    let socket = socket_path(&emb.socket_dir, emb.port);
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match child.exit.try_recv() {
            Ok(status) => return Ok(Some(describe_exit(status))),
            Err(mpsc::TryRecvError::Disconnected) => return Ok(Some("exited".to_owned())),
            Err(mpsc::TryRecvError::Empty) => {}
        }
        if probe(&socket) == Probe::Accepting {
            return Ok(None);
        }
        if Instant::now() >= deadline {
            // It would die with us anyway; don't leave it half-started.
            signal(child.pid, libc::SIGQUIT);
            return Err(EmbeddedError::StartTimeout {
                data_dir: layout.data_dir.clone(),
                socket,
                secs: READY_TIMEOUT.as_secs(),
                log_tail: log_tail(log_path, log_start),
                log_path: log_path.to_path_buf(),
            });
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// A postgres child and the channel its supervising thread reports its exit on.
struct Supervised {
    pid: u32,
    exit: mpsc::Receiver<io::Result<ExitStatus>>,
}

/// Start `postgres` so that it dies with this process. PR_SET_PDEATHSIG
/// fires when the *thread* that forked the child exits, not the process, so
/// the fork happens on a dedicated thread that then blocks in wait() for as
/// long as the child lives (and reaps it, so no zombie is left).
fn spawn_supervised_postgres(
    bindir: &Path,
    layout: &Layout,
    port: u16,
    tcp: bool,
    log_path: &Path,
) -> Result<Supervised, EmbeddedError> {
    let cmd = postgres_command(bindir, layout, port, tcp, log_path)?;
    let command = command_line(&cmd, layout.run_as.as_ref());
    spawn_on_own_thread(cmd, command)
}

/// `postgres` with the settings of a throwaway cluster, its output appended
/// to the log, and a death signal that fires when this process goes.
fn postgres_command(
    bindir: &Path,
    layout: &Layout,
    port: u16,
    tcp: bool,
    log_path: &Path,
) -> Result<Command, EmbeddedError> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(log_path)
        .map_err(|e| io_err("open", log_path, e))?;
    let log_err = log.try_clone().map_err(|e| io_err("open", log_path, e))?;
    let mut cmd = server_command(
        &bindir.join("postgres"),
        layout.run_as.as_ref(),
        &layout.data_dir,
    );
    cmd.arg("-D").arg(&layout.data_dir);
    for setting in server_settings(bindir, port, &layout.socket_dir, tcp, Mode::Ephemeral) {
        cmd.arg("-c").arg(setting);
    }
    cmd.stdout(log).stderr(log_err);
    let parent = std::process::id();
    // SAFETY: between fork and exec the closure only makes async-signal-safe
    // system calls (prctl, getppid, _exit) and allocates nothing. std runs it
    // after setuid, which matters because a credential change would clear
    // the death signal again.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGQUIT as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // If we died before prctl took effect the signal never comes.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// Spawns `cmd` from a thread that lives as long as the child and reports
/// its exit.
fn spawn_on_own_thread(mut cmd: Command, command: String) -> Result<Supervised, EmbeddedError> {
    let (pid_tx, pid_rx) = mpsc::channel::<io::Result<u32>>();
    let (exit_tx, exit_rx) = mpsc::channel();
    thread::Builder::new()
        .name("tripload-pg-child".to_owned())
        .spawn(move || match cmd.spawn() {
            Err(e) => {
                let _ = pid_tx.send(Err(e));
            }
            Ok(mut child) => {
                let _ = pid_tx.send(Ok(child.id()));
                let _ = exit_tx.send(child.wait());
            }
        })
        .map_err(|source| EmbeddedError::Spawn {
            command: command.clone(),
            hint: "the system may be out of threads or memory".to_owned(),
            source,
        })?;
    let pid = pid_rx
        .recv()
        .unwrap_or_else(|_| Err(io::Error::other("supervisor thread died")))
        .map_err(|source| EmbeddedError::Spawn {
            command,
            hint: "check that the PostgreSQL binaries are intact and executable".to_owned(),
            source,
        })?;
    Ok(Supervised { pid, exit: exit_rx })
}

fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        if pid > 0 {
            // SAFETY: pid > 0 addresses exactly one process.
            unsafe { libc::kill(pid, sig) };
        }
    }
}

/// Ephemeral clusters relocated under the fallback root outlive the test
/// process that made them. Remove those whose server is gone and that are
/// old enough not to be in the middle of initdb (only under a fallback root
/// that nobody else can write to).
fn sweep_stale_ephemeral(layout: &Layout, fallback_root: &Path) {
    sweep_stale_sockets(layout);
    if layout.run_as.is_none() || !fallback_root_is_safe(fallback_root) {
        return;
    }
    for entry in list_dir(fallback_root, DIR_PREFIX) {
        let path = entry.path();
        if path == layout.data_dir || !is_older_than(&entry, STALE_AGE) {
            continue;
        }
        let live =
            matches!(read_pidfile(&path), Ok(Some(pf)) if liveness(pf.pid) == Liveness::Postgres);
        if !live {
            if let Err(e) = fs::remove_dir_all(&path) {
                tracing::debug!("could not remove stale {}: {e}", path.display());
            }
        }
    }
}
