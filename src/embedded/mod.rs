//! Embedded PostgreSQL, used when the user has not given `DATABASE_URL`: a
//! local server run from the PostgreSQL binaries installed on the machine.
//! Creating databases and extensions is the caller's job.
//!
//! This file is the public surface ([`Embedded`], [`Options`],
//! [`EmbeddedError`]); the parts, in the order a start uses them:
//!
//! - `bindir`: finding the server binaries (and those an existing cluster
//!   needs);
//! - `users`: the OS account the server runs as (an unprivileged one when
//!   we are root) and handing it the data directory;
//! - `layout`: where the cluster and its socket live, and the directory
//!   checks; [`fsafe`] does them without following symlinks;
//! - `init`: `initdb` and the settings the server starts with; [`access`]
//!   writes who may connect (socket only by default, TCP with a password on
//!   request) and the environment the server gets; [`timescale`] detects an
//!   installed TimescaleDB, which the server then preloads;
//! - `lifecycle`: start (detached, through `pg_ctl`), stop, and recovery
//!   from a killed server, using `pidfile` (what `postmaster.pid` says,
//!   whether its process lives), `probe` (readiness over the socket),
//!   `command` (running the tools) and `serverlog`;
//! - `ephemeral` (tests and benches only, feature `test-support`):
//!   throwaway clusters that die with the process.

mod access;
mod bindir;
mod command;
#[cfg(any(test, feature = "test-support"))]
mod ephemeral;
mod fsafe;
mod init;
mod layout;
mod lifecycle;
mod pidfile;
mod probe;
mod serverlog;
#[cfg(test)]
mod tests;
pub mod timescale;
mod users;

pub use bindir::find_bindir;
use std::io;
use std::path::{Path, PathBuf};
use users::RunAs;

/// The database superuser role initdb creates; every connection uses it.
const SUPERUSER: &str = "tripload";

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "PostgreSQL server binaries (initdb and postgres) not found; looked in {searched}\n  \
         hint: install PostgreSQL server binaries (e.g. `apt-get install -y postgresql-15`) \
         or set DATABASE_URL to use an existing server"
    )]
    BinariesNotFound { searched: String },

    #[error(
        "running as root, but neither a `postgres` nor a `nobody` user exists to run the \
         embedded PostgreSQL server (it refuses to run as root)\n  \
         hint: create one (e.g. `useradd --system postgres`) or set DATABASE_URL"
    )]
    NoServerUser,

    #[error("could not look up OS user `{name}`: {source}")]
    UserLookup {
        name: String,
        #[source]
        source: io::Error,
    },

    #[error("could not {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "{} exists and is not empty, but is not a PostgreSQL data directory (no PG_VERSION)\n  \
         hint: point tripload at an empty or new directory, or remove this one \
         (an interrupted initdb can leave such a directory behind)",
        path.display()
    )]
    NotADataDir { path: PathBuf },

    #[error("could not run `{command}`: {source}\n  hint: {hint}")]
    Spawn {
        command: String,
        hint: String,
        #[source]
        source: io::Error,
    },

    #[error("`{command}` failed ({status}):\n{output}{log_tail}\n  hint: {hint}")]
    CommandFailed {
        command: String,
        status: String,
        /// stdout and stderr of the command, trimmed.
        output: String,
        /// "\nlast lines of <server.log>:\n..." or empty.
        log_tail: String,
        hint: String,
    },

    #[error("could not reserve a free TCP port on 127.0.0.1: {0}")]
    NoFreePort(#[source] io::Error),

    #[error(
        "PostgreSQL server for {} did not accept connections on {} within {secs} s; \
         last lines of {}:\n{log_tail}\n  \
         hint: fix the problem the log shows, or stop the server (`pg_ctl stop -D {}`) and retry",
        data_dir.display(), socket.display(), log_path.display(), data_dir.display()
    )]
    StartTimeout {
        data_dir: PathBuf,
        socket: PathBuf,
        secs: u64,
        log_path: PathBuf,
        log_tail: String,
    },

    #[error(
        "PostgreSQL server for {} exited during startup ({status}); last lines of {}:\n{log_tail}",
        data_dir.display(), log_path.display()
    )]
    ServerExited {
        data_dir: PathBuf,
        status: String,
        log_path: PathBuf,
        log_tail: String,
    },

    #[error(
        "{} is already in use by a running PostgreSQL server\n  \
         hint: stop that server or pick another directory",
        data_dir.display()
    )]
    InUse { data_dir: PathBuf },

    #[error(
        "the PostgreSQL server for {} (pid {pid}) is gone, but its backends still hold its \
         shared memory after {secs} s\n  \
         hint: wait for them to finish or kill them (see `ps -ef | grep postgres:`), then retry",
        data_dir.display()
    )]
    OrphanedBackends {
        data_dir: PathBuf,
        pid: i32,
        secs: u64,
    },

    #[error(
        "could not parse {}: {reason}\n  \
         hint: if no PostgreSQL server is running from this directory, delete that file",
        path.display()
    )]
    BadPidFile { path: PathBuf, reason: String },

    #[error("refusing to use {} for the embedded PostgreSQL server: {reason}\n  hint: {hint}", path.display())]
    UnsafeDir {
        path: PathBuf,
        reason: String,
        hint: String,
    },

    #[error(
        "refusing to use the TCP password file {}: {reason}\n  \
         hint: remove it (a new password is generated) or fix it (mode 0600, owned by you)",
        path.display()
    )]
    Password { path: PathBuf, reason: String },

    #[error("could not set the password for TCP connections: {reason}")]
    SetPassword { reason: String },
}

/// How the embedded server is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Also listen on 127.0.0.1 (same port as the socket), password (SCRAM)
    /// only; the password is in [`Embedded::tcp_password_file`]. Off by
    /// default: only the Unix socket, reachable by the owner alone.
    pub tcp: bool,
    /// Where a cluster goes when, as root, the server's OS user cannot reach
    /// the requested directory. Must be a directory owned by root and not
    /// writable by group or others (created so if missing).
    pub fallback_root: PathBuf,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            tcp: false,
            fallback_root: PathBuf::from(layout::FALLBACK_ROOT),
        }
    }
}

/// A running embedded server and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Embedded {
    pub data_dir: PathBuf,
    /// The Unix socket's directory (mode 0700, owned by the server's user).
    pub socket_dir: PathBuf,
    /// Names the socket (`.s.PGSQL.<port>`), and the TCP port when listening.
    pub port: u16,
    /// The database superuser role, always "tripload".
    pub user: String,
    /// Set when the server also listens on 127.0.0.1:`port`: the 0600
    /// pgpass-format file holding the password.
    pub tcp_password_file: Option<PathBuf>,
}

impl Embedded {
    /// Persistent mode (the CLI's default database) with default options:
    /// see [`Embedded::ensure_running_with`].
    pub fn ensure_running(dir: &Path) -> Result<Embedded, EmbeddedError> {
        Embedded::ensure_running_with(dir, &Options::default())
    }

    /// Persistent mode: initdb `dir` on first use, start a detached server
    /// unless one already runs from it, and wait until it accepts
    /// connections. The server outlives this process. A running server whose
    /// access rules are not ours (started by an older tripload), or that
    /// does not listen on TCP although `opts.tcp` asks for it, is restarted.
    pub fn ensure_running_with(dir: &Path, opts: &Options) -> Result<Embedded, EmbeddedError> {
        lifecycle::ensure_running(dir, opts)
    }

    /// Stop a persistent server (`pg_ctl stop -m fast -w`); Ok(false) if it
    /// was not running.
    pub fn stop(dir: &Path) -> Result<bool, EmbeddedError> {
        Embedded::stop_with(dir, &Options::default())
    }

    /// [`Embedded::stop`] for a cluster started with `opts`.
    pub fn stop_with(dir: &Path, opts: &Options) -> Result<bool, EmbeddedError> {
        lifecycle::stop(dir, opts)
    }

    /// libpq key/value connection string for `dbname` on this server, over
    /// its Unix socket (no password needed, none included).
    pub fn conninfo(&self, dbname: &str) -> String {
        format!(
            "host={} port={} user={} dbname={}",
            conninfo_value(&self.socket_dir.to_string_lossy()),
            self.port,
            conninfo_value(&self.user),
            conninfo_value(dbname)
        )
    }

    /// libpq URL for `dbname` over TCP when the server listens there; the
    /// password stays in its file, referenced with `passfile=`.
    pub fn tcp_url(&self, dbname: &str) -> Option<String> {
        let passfile = self.tcp_password_file.as_ref()?;
        Some(format!(
            "postgresql://{}@127.0.0.1:{}/{}?passfile={}",
            url_encode(&self.user),
            self.port,
            url_encode(dbname),
            url_encode(&passfile.to_string_lossy())
        ))
    }

    /// The TCP password, read from its file (for clients that cannot read a
    /// passfile). Never print or log it.
    pub fn tcp_password(&self) -> Result<Option<String>, EmbeddedError> {
        match &self.tcp_password_file {
            Some(_) => access::ensure_password(&self.data_dir).map(Some),
            None => Ok(None),
        }
    }
}

/// Percent-encoding for a URL component: everything but unreserved bytes.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn io_err(action: &'static str, path: &Path, source: io::Error) -> EmbeddedError {
    EmbeddedError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// libpq quoting: single quotes, with backslash escaping `'` and `\`.
fn conninfo_value(value: &str) -> String {
    let plain = !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\');
    if plain {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\\', r"\\").replace('\'', r"\'"))
    }
}
