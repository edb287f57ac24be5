//! Scheduling of a load against a database on this machine: the work runs in
//! a session of its own, whose autogroup gets the `--nice` value.
//!
//! Why: Linux autogroup scheduling (`/proc/sys/kernel/sched_autogroup_enabled`,
//! on by default in Debian's kernels) first shares the CPU fairly between
//! sessions and applies per-thread nice values only within one. The server's
//! backends live in the postmaster's session (`pg_ctl` starts it in its own),
//! tripload in the user's shell's, so nicing tripload's threads did not lower
//! them against the server at all: with rollups the file's COPY backend got
//! 55-80% of a core and waited in the run queue 2.6 s of a 23 s load (15M
//! rows, this machine, docs/benchmarks.md). An autogroup of our own at nice 10
//! gives the server's backends the CPU first, as `--nice` always meant.
//!
//! The process the user started stays in the foreground: it runs the same
//! command line again as a child in a new session, forwards SIGINT, SIGTERM,
//! SIGHUP and SIGQUIT to it (so Ctrl-C and a service manager's stop behave as
//! before) and exits with its status. The child is killed when its parent
//! dies (`PR_SET_PDEATHSIG`), so `kill -9` of the loader still stops the load.
//! Ctrl-Z stops only the supervising process; the load goes on.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitCode};

/// Set in the child's environment: it does the work instead of supervising.
const CHILD_ENV: &str = "TRIPLOAD_OWN_SESSION";

const FORWARDED: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// Called before any other thread exists, with the load's `--nice` and
/// whether its database runs on this machine. Returns the exit code to end
/// with when this process only supervised a child that did the work; `None`
/// to do the work here (already in a session of our own, nothing to lower,
/// or no autogroups).
pub fn enter(nice: i32, local: bool) -> Option<ExitCode> {
    if nice <= 0 || !local || !autogroups_enabled() {
        return None;
    }
    // SAFETY: plain syscalls without pointers.
    let leader = unsafe { libc::getsid(0) == libc::getpid() };
    if std::env::var_os(CHILD_ENV).is_some() || leader {
        set_autogroup_nice(nice);
        return None;
    }
    match supervise(std::env::args_os().skip(1).collect()) {
        Ok(code) => Some(code),
        Err(e) => {
            tracing::warn!(
                "cannot start the load in a session of its own ({e}); it runs here, sharing the CPU evenly with the local server"
            );
            None
        }
    }
}

fn autogroups_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/sched_autogroup_enabled")
        .is_ok_and(|s| s.trim() == "1")
}

/// Sets this session's autogroup nice value. The kernel lets an unprivileged
/// process raise it at most every 100 ms, machine-wide (EAGAIN): loads started
/// together take turns.
fn set_autogroup_nice(nice: i32) {
    let value = nice.to_string();
    let mut last = None;
    for _ in 0..40 {
        match std::fs::write("/proc/self/autogroup", &value) {
            Ok(()) => {
                tracing::debug!("autogroup nice {nice}: the local database's COPY comes first");
                return;
            }
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                last = Some(e);
                std::thread::sleep(std::time::Duration::from_millis(30));
            }
            Err(e) => {
                last = Some(e);
                break;
            }
        }
    }
    if let Some(e) = last {
        tracing::warn!("cannot lower this load's autogroup priority to nice {nice}: {e}");
    }
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set before sigaddset reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in FORWARDED {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Runs `args` as a child in a new session and waits for it, forwarding the
/// signals a user or service manager sends to stop a load.
fn supervise(args: Vec<OsString>) -> io::Result<ExitCode> {
    let exe = std::env::current_exe()?;
    let set = signal_set();
    // Blocked here, taken by sigwait below, unblocked in the child.
    // SAFETY: valid set pointers; no other thread exists yet.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    // SAFETY: no arguments.
    let parent = unsafe { libc::getpid() };
    let mut cmd = Command::new(exe);
    cmd.args(args).env(CHILD_ENV, "1");
    // SAFETY: only async-signal-safe syscalls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) < 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before the line above took effect.
            if libc::getppid() != parent {
                return Err(io::Error::other("the supervising process exited"));
            }
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            // SAFETY: as above.
            unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
            return Err(e);
        }
    };
    let pid = child.id() as libc::pid_t;
    std::thread::spawn(move || loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: valid pointers; the set is blocked in every thread of
        // this process (threads inherit the mask).
        if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
            // SAFETY: a signal to our own child.
            unsafe { libc::kill(pid, sig) };
        }
    });
    let status = child.wait()?;
    Ok(match (status.code(), status.signal()) {
        (Some(c), _) => ExitCode::from(c.clamp(0, 255) as u8),
        (None, Some(s)) => ExitCode::from((128 + s).clamp(0, 255) as u8),
        (None, None) => ExitCode::FAILURE,
    })
}
