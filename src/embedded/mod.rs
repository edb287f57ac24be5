//! Embedded PostgreSQL, used when the user has not given `DATABASE_URL`.
//!
//! This module owns everything about running a local server from the
//! PostgreSQL binaries installed on the machine: finding them, choosing the
//! unprivileged OS user they run as when we are root (initdb, pg_ctl and
//! postgres all refuse root), where the cluster and its Unix socket live,
//! `initdb`, starting (detached through `pg_ctl` for the CLI's persistent
//! cluster, or as a child that dies with this process for tests), readiness
//! checks and stopping. Creating databases and extensions is the caller's job.
//!
//! Submodules: [`access`] decides who may connect (socket only by default,
//! TCP with a password on request) and what environment the server gets;
//! [`fsafe`] checks and changes directories without following symlinks;
//! [`timescale`] detects an installed TimescaleDB, which the server then
//! preloads.

mod access;
mod fsafe;
pub mod timescale;

use std::ffi::{CString, OsStr};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// The database superuser role initdb creates; every connection uses it.
const SUPERUSER: &str = "tripload";
/// How long a server may take to accept connections before we give up.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// `sun_path` is 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;
/// Where clusters go when the requested directory is unreachable for the
/// server user; /var/tmp survives reboots, unlike /tmp.
const FALLBACK_ROOT: &str = "/var/tmp/tripload-pg";
/// Ephemeral clusters relocated to FALLBACK_ROOT are only removable after
/// their owning process has died, so a later start sweeps old ones.
const EPHEMERAL_PREFIX: &str = "eph-";
/// Socket directories for clusters whose path is too long for `sun_path`.
const SOCKET_FALLBACK_PREFIX: &str = "tripload-sock-";
const STALE_EPHEMERAL_AGE: Duration = Duration::from_secs(10 * 60);
/// Attempts at starting a server when the failure looks transient (the
/// free port we picked got taken, or children of a killed postmaster still
/// hold its shared memory).
const START_ATTEMPTS: u32 = 5;
const LOG_FILE: &str = "server.log";
const PID_FILE: &str = "postmaster.pid";
const TAIL_LINES: usize = 30;
/// The accounts the server may run as when we are root, in order of preference.
const SERVER_USERS: [&str; 2] = ["postgres", "nobody"];

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
            fallback_root: PathBuf::from(FALLBACK_ROOT),
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
        let log_path = layout.data_dir.join(LOG_FILE);
        let mut attempt = 0;
        loop {
            attempt += 1;
            // Keep the port of the last run when it is free, so connection
            // strings handed out before a restart keep working.
            let port_file = layout.data_dir.join(PORT_FILE);
            let port = match fsafe::read_to_string_nofollow(&port_file)
                .ok()
                .and_then(|s| s.trim().parse::<u16>().ok())
            {
                // A socket lock left by a killed server would refuse the port.
                Some(p)
                    if attempt == 1
                        && !layout
                            .socket_dir
                            .join(format!(".s.PGSQL.{p}.lock"))
                            .exists()
                        && TcpListener::bind(("127.0.0.1", p)).is_ok() =>
                {
                    p
                }
                _ => free_port()?,
            };
            let log_start = file_len(&log_path);
            match pg_ctl_start(&bindir, &layout, port, opts.tcp, &log_path) {
                Ok(()) => {
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
                            port_file.display()
                        );
                    }
                    let emb = layout.embedded(port, opts.tcp);
                    wait_persistent_ready(&layout, &emb, &log_path)?;
                    tracing::info!(
                        data_dir = %layout.data_dir.display(),
                        port,
                        tcp = opts.tcp,
                        "embedded PostgreSQL server started"
                    );
                    return finish_start(emb);
                }
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
            // The relocated directory is derived from the requested path, so
            // it can hold a cluster from an earlier run that must not leak
            // into this one.
            if let Ok(Some(pf)) = read_pidfile(&layout.data_dir) {
                if liveness(pf.pid) == Liveness::Postgres {
                    return Err(EmbeddedError::InUse {
                        data_dir: layout.data_dir.clone(),
                    });
                }
            }
            match fs::remove_dir_all(&layout.data_dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(io_err("remove", &layout.data_dir, source)),
            }
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
            let socket = socket_path(&emb.socket_dir, port);
            let deadline = Instant::now() + READY_TIMEOUT;
            let exit_status = loop {
                match child.exit.try_recv() {
                    Ok(status) => break describe_exit(status),
                    Err(mpsc::TryRecvError::Disconnected) => break "exited".to_owned(),
                    Err(mpsc::TryRecvError::Empty) => {}
                }
                if probe(&socket) == Probe::Accepting {
                    return finish_start(emb);
                }
                if Instant::now() >= deadline {
                    // It would die with us anyway; don't leave it half-started.
                    signal(child.pid, libc::SIGQUIT);
                    return Err(EmbeddedError::StartTimeout {
                        data_dir: layout.data_dir.clone(),
                        socket,
                        secs: READY_TIMEOUT.as_secs(),
                        log_tail: log_tail(&log_path, log_start),
                        log_path,
                    });
                }
                thread::sleep(Duration::from_millis(50));
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

    /// Stop a persistent server (`pg_ctl stop -m fast -w`); Ok(false) if it
    /// was not running.
    pub fn stop(dir: &Path) -> Result<bool, EmbeddedError> {
        Embedded::stop_with(dir, &Options::default())
    }

    /// [`Embedded::stop`] for a cluster started with `opts`.
    pub fn stop_with(dir: &Path, opts: &Options) -> Result<bool, EmbeddedError> {
        let layout = resolve_layout(dir, Mode::Persistent, &opts.fallback_root)?;
        if !is_cluster(&layout.data_dir) {
            return Ok(false);
        }
        adopt_data_dir(&layout)?;
        let _lock = DirLock::acquire(&layout.data_dir)?;
        stop_server(&layout)
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

/// Last step of every start: a server listening on TCP gets its password
/// (generated on first use) before it is handed out.
fn finish_start(emb: Embedded) -> Result<Embedded, EmbeddedError> {
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
    let bindir = bindir_for_cluster(&layout.data_dir, find_bindir()?);
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

/// Directory holding `initdb` and `postgres`: `pg_config --bindir`, then
/// `$PATH`, then the highest `/usr/lib/postgresql/*/bin`.
pub fn find_bindir() -> Result<PathBuf, EmbeddedError> {
    let mut searched = Vec::new();
    if let Ok(out) = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    {
        if out.status.success() {
            let dir = PathBuf::from(OsStr::from_bytes(out.stdout.trim_ascii()));
            if has_server_binaries(&dir) {
                return Ok(dir);
            }
            searched.push(format!("{} (pg_config --bindir)", dir.display()));
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if !dir.as_os_str().is_empty() && has_server_binaries(&dir) {
                return Ok(dir);
            }
        }
        searched.push("$PATH".to_owned());
    }
    let mut versioned: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry
                .file_name()
                .to_str()?
                .split('.')
                .map(|part| part.parse::<u32>().ok())
                .collect::<Option<Vec<u32>>>()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versioned.sort();
    if let Some((_, dir)) = versioned
        .into_iter()
        .rev()
        .find(|(_, dir)| has_server_binaries(dir))
    {
        return Ok(dir);
    }
    searched.push("/usr/lib/postgresql/*/bin".to_owned());
    Err(EmbeddedError::BinariesNotFound {
        searched: searched.join(", "),
    })
}

fn has_server_binaries(dir: &Path) -> bool {
    is_executable(&dir.join("initdb")) && is_executable(&dir.join("postgres"))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
}

/// A cluster initialised by another major version needs that version's
/// binaries; prefer Debian's side-by-side install of it when present.
fn bindir_for_cluster(data_dir: &Path, default: PathBuf) -> PathBuf {
    let Ok(cluster_version) = fs::read_to_string(data_dir.join("PG_VERSION")) else {
        return default;
    };
    let cluster_version = cluster_version.trim();
    if server_major_version(&default).as_deref() == Some(cluster_version) {
        return default;
    }
    let candidate = Path::new("/usr/lib/postgresql")
        .join(cluster_version)
        .join("bin");
    if has_server_binaries(&candidate) {
        candidate
    } else {
        default
    }
}

/// "15" from `postgres (PostgreSQL) 15.8 (Debian ...)`; "9.6" for pre-10.
fn server_major_version(bindir: &Path) -> Option<String> {
    let out = Command::new(bindir.join("postgres"))
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split(") ").nth(1)?.split_whitespace().next()?;
    let mut parts = version.split('.');
    let major = parts.next()?;
    if major.parse::<u32>().ok()? >= 10 {
        Some(major.to_owned())
    } else {
        Some(format!("{major}.{}", parts.next()?))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Persistent,
    Ephemeral,
}

/// The unprivileged OS account the server runs as when we are root.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RunAs {
    name: String,
    uid: u32,
    gid: u32,
}

/// Where a cluster lives, which may differ from the directory asked for.
#[derive(Debug)]
struct Layout {
    data_dir: PathBuf,
    /// The socket directory; when `socket_in_tmp`, only a name prefix until
    /// prepare_socket_dir makes a fresh private directory from it.
    socket_dir: PathBuf,
    /// data_dir/run would exceed `sun_path`: the socket goes in a fresh
    /// mkdtemp directory under /tmp instead.
    socket_in_tmp: bool,
    run_as: Option<RunAs>,
    /// data_dir is under the fallback root instead of the requested path.
    relocated: bool,
}

impl Layout {
    fn embedded(&self, port: u16, tcp: bool) -> Embedded {
        Embedded {
            data_dir: self.data_dir.clone(),
            socket_dir: self.socket_dir.clone(),
            port,
            user: SUPERUSER.to_owned(),
            tcp_password_file: tcp.then(|| access::password_file(&self.data_dir)),
        }
    }
}

/// Pure function of the requested path and the file system, so that
/// ensure_running and stop find the same cluster. The fallback location is
/// only ever used as root, and only under a root-owned `fallback_root`
/// that nobody else can write to.
fn resolve_layout(dir: &Path, mode: Mode, fallback_root: &Path) -> Result<Layout, EmbeddedError> {
    let requested = absolute_path(dir)?;
    let run_as = server_user()?;
    let hash = path_hash(&requested);
    let fallback = fallback_root.join(match mode {
        Mode::Persistent => hash.clone(),
        Mode::Ephemeral => format!("{EPHEMERAL_PREFIX}{hash}"),
    });
    let blocker = run_as
        .as_ref()
        .and_then(|user| blocking_ancestor(&requested, user).map(|dir| (user, dir)));
    let relocated = match &blocker {
        Some(_) => {
            ensure_fallback_root(fallback_root)?;
            true
        }
        // Once relocated, a persistent cluster stays put even if the
        // requested path becomes reachable later, so its data is not
        // silently left behind.
        None => {
            run_as.is_some()
                && mode == Mode::Persistent
                && !is_cluster(&requested)
                && fallback_root_is_safe(fallback_root)
                && is_cluster(&fallback)
        }
    };
    let data_dir = if relocated {
        let reason = match &blocker {
            Some((user, dir)) => format!(
                "{} is not traversable by the `{}` user the server runs as",
                dir.display(),
                user.name
            ),
            None => "it was created there earlier".to_owned(),
        };
        // Say it loudly once, when the cluster is created there; quietly after.
        if is_cluster(&fallback) {
            tracing::info!(
                "the embedded PostgreSQL cluster for {} lives in {} because {reason}",
                requested.display(),
                fallback.display(),
            );
        } else {
            tracing::warn!(
                "the embedded PostgreSQL cluster for {} will live in {} because {reason}",
                requested.display(),
                fallback.display(),
            );
        }
        fallback
    } else {
        requested
    };
    let in_data_dir = data_dir.join("run");
    let socket_in_tmp = socket_path(&in_data_dir, u16::MAX).as_os_str().len() > MAX_SOCKET_PATH;
    let socket_dir = if socket_in_tmp {
        PathBuf::from(format!("/tmp/{SOCKET_FALLBACK_PREFIX}"))
    } else {
        in_data_dir
    };
    Ok(Layout {
        data_dir,
        socket_dir,
        socket_in_tmp,
        run_as,
        relocated,
    })
}

/// Creates the fallback root (root-owned, 0755) if missing, and refuses one
/// that someone else could have prepared: it must be a real directory owned
/// by root and writable by no one else.
fn ensure_fallback_root(root: &Path) -> Result<(), EmbeddedError> {
    match fs::create_dir(root) {
        Ok(()) => fsafe::set_dir_owner_mode(root, None, 0o755)
            .map_err(|e| io_err("set permissions on", root, e))?,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            create_dir_tree(root)?;
        }
        Err(e) => return Err(io_err("create directory", root, e)),
    }
    match fsafe::dir_problem(root, &[0], false) {
        Ok(None) => Ok(()),
        Ok(Some(reason)) => Err(EmbeddedError::UnsafeDir {
            path: root.to_path_buf(),
            reason,
            hint: "another user may have created it to take over the server; remove it \
                   (after checking what it holds) so that tripload creates it again, or choose \
                   a --pg-dir that the server's user can reach"
                .to_owned(),
        }),
        Err(e) => Err(io_err("inspect", root, e)),
    }
}

fn fallback_root_is_safe(root: &Path) -> bool {
    match fsafe::dir_problem(root, &[0], false) {
        Ok(None) => true,
        Ok(Some(reason)) => {
            tracing::warn!("ignoring {}: {reason}", root.display());
            false
        }
        Err(_) => false,
    }
}

/// Refuses a data directory we did not make or that another user could
/// have prepared: it must be a real directory owned by us or the server's
/// user (or, under the root-owned fallback root, by any account the server
/// may have run as) and not writable by group or others. An empty one of
/// ours just gets mode 0700.
fn adopt_data_dir(layout: &Layout) -> Result<(), EmbeddedError> {
    let dir = &layout.data_dir;
    let mut owners = vec![fsafe::euid()];
    if let Some(user) = &layout.run_as {
        owners.push(user.uid);
        if layout.relocated {
            owners.extend(
                SERVER_USERS
                    .iter()
                    .filter_map(|name| lookup_user(name).ok().flatten())
                    .map(|u| u.uid),
            );
        }
    }
    let meta = fs::symlink_metadata(dir).map_err(|e| io_err("inspect", dir, e))?;
    if meta.is_dir() && meta.uid() == fsafe::euid() && meta.mode() & 0o022 != 0 && is_empty_dir(dir)
    {
        fsafe::set_dir_owner_mode(dir, None, 0o700)
            .map_err(|e| io_err("set permissions on", dir, e))?;
    }
    match fsafe::dir_problem(dir, &owners, false) {
        Ok(None) => Ok(()),
        Ok(Some(reason)) => Err(EmbeddedError::UnsafeDir {
            path: dir.clone(),
            reason,
            hint: "tripload only adopts a cluster directory that it created; if this one is \
                   yours, fix its owner and mode (chown, chmod go-w), otherwise remove it or \
                   choose another --pg-dir"
                .to_owned(),
        }),
        Err(e) => Err(io_err("inspect", dir, e)),
    }
}

fn socket_path(socket_dir: &Path, port: u16) -> PathBuf {
    socket_dir.join(format!(".s.PGSQL.{port}"))
}

/// Absolute, with `.`/`..` folded and the existing prefix canonicalised, so
/// that different spellings of one directory map to one cluster (and hash).
fn absolute_path(dir: &Path) -> Result<PathBuf, EmbeddedError> {
    let abs = std::path::absolute(dir).map_err(|e| io_err("resolve the path", dir, e))?;
    let mut lexical = PathBuf::new();
    for component in abs.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                lexical.pop();
            }
            other => lexical.push(other),
        }
    }
    let mut existing = lexical.as_path();
    let mut missing = Vec::new();
    loop {
        if let Ok(mut canonical) = existing.canonicalize() {
            for part in missing.iter().rev() {
                canonical.push(part);
            }
            return Ok(canonical);
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name);
                existing = parent;
            }
            _ => return Ok(lexical),
        }
    }
}

/// FNV-1a: unlike std's DefaultHasher it is stable across Rust releases,
/// which matters because the hash names a persistent directory.
fn path_hash(path: &Path) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in path.as_os_str().as_bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// The first existing ancestor of `path` (excluding `path`, which we chown)
/// that `user` cannot search. Missing components are created 0755 by us.
fn blocking_ancestor(path: &Path, user: &RunAs) -> Option<PathBuf> {
    let mut chain: Vec<&Path> = path.ancestors().skip(1).collect();
    chain.reverse();
    for dir in chain {
        let Ok(meta) = fs::metadata(dir) else { break };
        let search_bit = if meta.uid() == user.uid {
            0o100
        } else if meta.gid() == user.gid {
            0o010
        } else {
            0o001
        };
        if meta.mode() & search_bit == 0 {
            return Some(dir.to_path_buf());
        }
    }
    None
}

fn server_user() -> Result<Option<RunAs>, EmbeddedError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    for name in SERVER_USERS {
        match lookup_user(name) {
            Ok(Some(user)) if user.uid != 0 => return Ok(Some(user)),
            Ok(_) => {}
            Err(source) => {
                return Err(EmbeddedError::UserLookup {
                    name: name.to_owned(),
                    source,
                })
            }
        }
    }
    Err(EmbeddedError::NoServerUser)
}

fn lookup_user(name: &str) -> io::Result<Option<RunAs>> {
    let c_name = CString::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut buf: Vec<libc::c_char> = vec![0; 1024];
    loop {
        // SAFETY: passwd is plain old data; getpwnam_r fills it in.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: all pointers are valid for the duration of the call and
        // buf.len() is the true size of buf.
        let rc = unsafe {
            libc::getpwnam_r(
                c_name.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        match rc {
            0 if result.is_null() => return Ok(None),
            0 => {
                return Ok(Some(RunAs {
                    name: name.to_owned(),
                    uid: pwd.pw_uid,
                    gid: pwd.pw_gid,
                }))
            }
            libc::ERANGE if buf.len() < (1 << 20) => buf.resize(buf.len() * 2, 0),
            // POSIX lets these mean "no such user".
            libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => return Ok(None),
            errno => return Err(io::Error::from_raw_os_error(errno)),
        }
    }
}

fn io_err(action: &'static str, path: &Path, source: io::Error) -> EmbeddedError {
    EmbeddedError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// create_dir_all, but components we create get 0755 regardless of umask so
/// that the server user can traverse them (changed through a descriptor, so
/// a symlink swapped in is never followed).
fn create_dir_tree(dir: &Path) -> Result<(), EmbeddedError> {
    let mut missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|p| fs::symlink_metadata(p).is_err())
        .collect();
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(|e| io_err("create directory", dir, e))?;
    missing.reverse();
    for created in missing {
        fsafe::set_dir_owner_mode(created, None, 0o755)
            .map_err(|e| io_err("set permissions on", created, e))?;
    }
    if !fs::metadata(dir).is_ok_and(|m| m.is_dir()) {
        return Err(io_err(
            "use as a directory",
            dir,
            io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        ));
    }
    Ok(())
}

/// The server insists on owning its data directory (mode 0700/0750). An
/// existing cluster may belong to another account (e.g. `nobody` before a
/// `postgres` user was created), hence the recursive variant. Neither
/// follows symlinks.
fn take_ownership(
    data_dir: &Path,
    run_as: Option<&RunAs>,
    existing_cluster: bool,
) -> Result<(), EmbeddedError> {
    let Some(user) = run_as else {
        return Ok(());
    };
    let meta = fs::symlink_metadata(data_dir).map_err(|e| io_err("inspect", data_dir, e))?;
    if meta.uid() == user.uid && meta.gid() == user.gid {
        return Ok(());
    }
    if existing_cluster {
        tracing::info!(
            "changing ownership of {} to `{}` so the server can run as that user",
            data_dir.display(),
            user.name
        );
        fsafe::chown_tree(data_dir, user.uid, user.gid)
            .map_err(|e| io_err("change the owner of", data_dir, e))
    } else {
        fsafe::set_dir_owner_mode(data_dir, Some((user.uid, user.gid)), 0o700)
            .map_err(|e| io_err("change the owner of", data_dir, e))
    }
}

/// Makes the socket directory and returns it: mode 0700, owned by the
/// server's user, so only that user and root can reach the socket. Inside
/// the data directory it is `run/` (the server's user could have replaced it,
/// so it is checked and changed without following symlinks); when that path
/// is too long, a fresh mkdtemp directory under /tmp, never a predictable one.
fn prepare_socket_dir(layout: &Layout) -> Result<PathBuf, EmbeddedError> {
    let owner = layout.run_as.as_ref().map(|u| (u.uid, u.gid));
    let dir = if layout.socket_in_tmp {
        fsafe::make_temp_dir(&layout.socket_dir)
            .map_err(|e| io_err("create a directory named", &layout.socket_dir, e))?
    } else {
        let dir = layout.socket_dir.clone();
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("create directory", &dir, e)),
        }
        let mut owners = vec![fsafe::euid()];
        owners.extend(owner.map(|(uid, _)| uid));
        match fsafe::dir_problem(&dir, &owners, false) {
            Ok(None) => {}
            Ok(Some(reason)) => {
                return Err(EmbeddedError::UnsafeDir {
                    path: dir,
                    reason,
                    hint: "this is where the server's socket goes; remove it and retry".to_owned(),
                })
            }
            Err(e) => return Err(io_err("inspect", &dir, e)),
        }
        dir
    };
    fsafe::set_dir_owner_mode(&dir, owner, 0o700)
        .map_err(|e| io_err("set the owner and mode of", &dir, e))?;
    Ok(dir)
}

fn is_temp_socket_dir(dir: &Path) -> bool {
    dir.parent() == Some(Path::new("/tmp"))
        && dir
            .file_name()
            .is_some_and(|n| n.as_bytes().starts_with(SOCKET_FALLBACK_PREFIX.as_bytes()))
}

/// initdb a new cluster or adopt an existing one, write its access rules,
/// and create its socket directory; returns the binaries to run it with.
fn prepare_cluster(layout: &mut Layout, mode: Mode) -> Result<PathBuf, EmbeddedError> {
    let run_as = layout.run_as.as_ref();
    let bindir = find_bindir()?;
    let bindir = if is_cluster(&layout.data_dir) {
        take_ownership(&layout.data_dir, run_as, true)?;
        bindir_for_cluster(&layout.data_dir, bindir)
    } else {
        // Never chown or initdb over a directory holding something else.
        if !is_empty_dir(&layout.data_dir) {
            return Err(EmbeddedError::NotADataDir {
                path: layout.data_dir.clone(),
            });
        }
        take_ownership(&layout.data_dir, run_as, false)?;
        // Skipping fsync makes initdb several times faster; only worth the
        // risk for throwaway clusters.
        initdb(&bindir, layout, mode == Mode::Ephemeral)?;
        bindir
    };
    access::write_auth_files(&layout.data_dir, run_as)?;
    layout.socket_dir = prepare_socket_dir(layout)?;
    Ok(bindir)
}

fn is_cluster(data_dir: &Path) -> bool {
    data_dir.join("PG_VERSION").is_file()
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

/// Base command for initdb / pg_ctl / postgres, dropping to `run_as`, with
/// an emptied environment (see [`access::clean_env`]).
fn server_command(program: &Path, run_as: Option<&RunAs>, home: &Path) -> Command {
    let mut cmd = Command::new(program);
    // Our cwd may be unreadable for the server user (e.g. under /root), and
    // the PostgreSQL tools resolve paths relative to it.
    cmd.current_dir("/").stdin(Stdio::null());
    match run_as {
        Some(user) => {
            cmd.uid(user.uid).gid(user.gid);
            access::clean_env(&mut cmd, home, Some(&user.name));
        }
        None => access::clean_env(&mut cmd, home, access::owner_name().as_deref()),
    }
    cmd
}

fn command_line(cmd: &Command, run_as: Option<&RunAs>) -> String {
    let mut line = shell_quote(cmd.get_program());
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&shell_quote(arg));
    }
    if let Some(user) = run_as {
        line.push_str(&format!(" (as user {})", user.name));
    }
    line
}

fn shell_quote(arg: &OsStr) -> String {
    let text = arg.to_string_lossy();
    let plain = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./=:,@%+".contains(&b));
    if plain {
        text.into_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// Run to completion; a non-zero exit becomes CommandFailed with its output.
fn run_captured(
    mut cmd: Command,
    run_as: Option<&RunAs>,
    hint: &str,
) -> Result<Output, EmbeddedError> {
    let command = command_line(&cmd, run_as);
    let out = cmd.output().map_err(|source| EmbeddedError::Spawn {
        command: command.clone(),
        hint: "check that the PostgreSQL binaries are intact and executable".to_owned(),
        source,
    })?;
    if out.status.success() {
        return Ok(out);
    }
    let mut output = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !stdout.trim().is_empty() {
        if !output.is_empty() {
            output.push('\n');
        }
        output.push_str(stdout.trim());
    }
    Err(EmbeddedError::CommandFailed {
        command,
        status: describe_exit(Ok(out.status)),
        output,
        log_tail: String::new(),
        hint: hint.to_owned(),
    })
}

fn describe_exit(status: io::Result<ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(e) => format!("could not wait for it: {e}"),
    }
}

fn initdb(bindir: &Path, layout: &Layout, no_sync: bool) -> Result<(), EmbeddedError> {
    let run_as = layout.run_as.as_ref();
    let attempt = |locale: &str| {
        let mut cmd = server_command(&bindir.join("initdb"), run_as, &layout.data_dir);
        // pg_hba.conf is replaced by ours before every start; these
        // methods only matter if that never happens.
        cmd.arg("-D").arg(&layout.data_dir).args([
            "-U",
            SUPERUSER,
            "--auth-local=peer",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            locale,
        ]);
        if no_sync {
            cmd.arg("--no-sync");
        }
        let hint = match run_as {
            Some(user) => format!(
                "check that {} is writable by the `{}` user and the disk is not full",
                layout.data_dir.display(),
                user.name
            ),
            None => format!(
                "check that {} is writable and the disk is not full",
                layout.data_dir.display()
            ),
        };
        run_captured(cmd, run_as, &hint)
    };
    match attempt("--locale=C.UTF-8") {
        Ok(_) => Ok(()),
        // C.UTF-8 is missing from some libcs; the plain C locale always works.
        Err(EmbeddedError::CommandFailed { output, .. })
            if output.contains("invalid locale") && is_empty_dir(&layout.data_dir) =>
        {
            attempt("--no-locale").map(drop)
        }
        Err(EmbeddedError::CommandFailed { output, .. })
            if output.contains("exists but is not empty") =>
        {
            Err(EmbeddedError::NotADataDir {
                path: layout.data_dir.clone(),
            })
        }
        Err(e) => Err(e),
    }
}

fn is_empty_dir(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none())
}

/// `-c` settings for the server. No TCP unless `tcp` (then 127.0.0.1 only,
/// passwords stored as SCRAM). fsync stays on for the persistent cluster
/// because it holds the user's data; wal_level=minimal lets COPY into a table
/// created in the same transaction skip WAL. TimescaleDB is preloaded when
/// installed.
fn server_settings(
    bindir: &Path,
    port: u16,
    socket_dir: &Path,
    tcp: bool,
    mode: Mode,
) -> Vec<String> {
    let mut settings = vec![
        format!("listen_addresses={}", if tcp { "127.0.0.1" } else { "" }),
        format!("port={port}"),
        format!("unix_socket_directories={}", socket_dir.display()),
        "unix_socket_permissions=0700".to_owned(),
        "password_encryption=scram-sha-256".to_owned(),
        "max_connections=100".to_owned(),
        "shared_buffers=512MB".to_owned(),
        "max_wal_size=8GB".to_owned(),
        "checkpoint_timeout=30min".to_owned(),
        "wal_level=minimal".to_owned(),
        "max_wal_senders=0".to_owned(),
        "wal_compression=on".to_owned(),
        "maintenance_work_mem=512MB".to_owned(),
    ];
    if timescale::installed_version(bindir).is_some() {
        settings.extend(timescale::PRELOAD_SETTINGS.map(str::to_owned));
    }
    if mode == Mode::Ephemeral {
        settings.push("fsync=off".to_owned());
        settings.push("synchronous_commit=off".to_owned());
    }
    settings
}

/// The port of the last persistent start, reused when free.
const PORT_FILE: &str = "tripload.port";

/// Bind port 0 and release it; the small race until postgres binds it is
/// covered by retrying on "Address already in use".
fn free_port() -> Result<u16, EmbeddedError> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).map_err(EmbeddedError::NoFreePort)?;
    let port = listener
        .local_addr()
        .map_err(EmbeddedError::NoFreePort)?
        .port();
    Ok(port)
}

fn is_transient_start_failure(log: &str) -> bool {
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
    let options = server_settings(bindir, port, &layout.socket_dir, tcp, Mode::Persistent)
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
fn running_server(layout: &Layout) -> Result<Option<Embedded>, EmbeddedError> {
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
                if let (Some(port), Some(socket_dir)) = (pf.port, &pf.socket_dir) {
                    if probe(&socket_path(socket_dir, port)) == Probe::Accepting {
                        return Ok(Some(Embedded {
                            data_dir: layout.data_dir.clone(),
                            socket_dir: socket_dir.clone(),
                            port,
                            user: SUPERUSER.to_owned(),
                            tcp_password_file: pf
                                .listen
                                .is_some()
                                .then(|| access::password_file(&layout.data_dir)),
                        }));
                    }
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
            if orphans {
                return Err(EmbeddedError::OrphanedBackends {
                    data_dir: layout.data_dir.clone(),
                    pid: pf.pid,
                    secs: READY_TIMEOUT.as_secs(),
                });
            }
            let socket = match (pf.port, &pf.socket_dir) {
                (Some(port), Some(dir)) => socket_path(dir, port),
                _ => layout.socket_dir.clone(),
            };
            let log_path = layout.data_dir.join(LOG_FILE);
            return Err(EmbeddedError::StartTimeout {
                data_dir: layout.data_dir.clone(),
                socket,
                secs: READY_TIMEOUT.as_secs(),
                log_tail: log_tail(&log_path, 0),
                log_path,
            });
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The parts of postmaster.pid we use (lines 1, 4, 5, 6 and 7).
#[derive(Debug, PartialEq, Eq)]
struct PidFile {
    pid: i32,
    port: Option<u16>,
    socket_dir: Option<PathBuf>,
    /// The first TCP listen address; None when the server has no TCP.
    listen: Option<String>,
    shmem_id: Option<i32>,
}

fn read_pidfile(data_dir: &Path) -> Result<Option<PidFile>, EmbeddedError> {
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
fn parse_pidfile(text: &str) -> Result<Option<PidFile>, String> {
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
enum Liveness {
    /// No such process.
    Gone,
    /// Dead but unreaped: kill(pid, 0) still succeeds, which would make
    /// postgres refuse the lock file forever if nobody reaps it.
    Zombie,
    /// The pid was recycled for an unrelated program (e.g. after a reboot).
    Other,
    Postgres,
}

fn liveness(pid: i32) -> Liveness {
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
fn shmem_in_use(shmem_id: Option<i32>, server_uid: u32) -> bool {
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

fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        if pid > 0 {
            // SAFETY: pid > 0 addresses exactly one process.
            unsafe { libc::kill(pid, sig) };
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    Accepting,
    /// Up, but refusing connections: starting up, shutting down or in
    /// recovery (SQLSTATE 57P03).
    NotYet,
    Unreachable,
}

/// Send a startup packet over the Unix socket and classify the first reply,
/// like pg_isready but without a subprocess per poll.
fn probe(socket: &Path) -> Probe {
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
    let run_as = layout.run_as.as_ref();
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(log_path)
        .map_err(|e| io_err("open", log_path, e))?;
    let log_err = log.try_clone().map_err(|e| io_err("open", log_path, e))?;
    let mut cmd = server_command(&bindir.join("postgres"), run_as, &layout.data_dir);
    cmd.arg("-D").arg(&layout.data_dir);
    for setting in server_settings(bindir, port, &layout.socket_dir, tcp, Mode::Ephemeral) {
        cmd.arg("-c").arg(setting);
    }
    cmd.stdout(log).stderr(log_err);
    let command = command_line(&cmd, run_as);
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

/// Ephemeral clusters relocated under the fallback root outlive the test
/// process that made them. Remove those whose server is gone and that are
/// old enough not to be in the middle of initdb (only under a fallback root
/// that nobody else can write to).
fn sweep_stale_ephemeral(layout: &Layout, fallback_root: &Path) {
    sweep_stale_sockets(layout);
    if layout.run_as.is_none() || !fallback_root_is_safe(fallback_root) {
        return;
    }
    for entry in list_dir(fallback_root, EPHEMERAL_PREFIX) {
        let path = entry.path();
        if path == layout.data_dir || !is_older_than(&entry, STALE_EPHEMERAL_AGE) {
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

/// Socket directories under /tmp (ours or the server user's) left by servers
/// that are gone: a running server keeps its socket and lock file in there,
/// and remove_dir only removes empty directories.
fn sweep_stale_sockets(layout: &Layout) {
    let mut owners = vec![fsafe::euid()];
    owners.extend(layout.run_as.as_ref().map(|u| u.uid));
    for entry in list_dir(Path::new("/tmp"), SOCKET_FALLBACK_PREFIX) {
        let ours = entry
            .path()
            .symlink_metadata()
            .is_ok_and(|m| m.is_dir() && owners.contains(&m.uid()));
        if ours && is_older_than(&entry, STALE_EPHEMERAL_AGE) {
            let _ = fs::remove_dir(entry.path());
        }
    }
}

fn list_dir(dir: &Path, prefix: &str) -> Vec<fs::DirEntry> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().as_bytes().starts_with(prefix.as_bytes()))
        .collect()
}

fn is_older_than(entry: &fs::DirEntry, age: Duration) -> bool {
    entry
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|elapsed| elapsed > age)
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The log written since byte `since` (at most the last 64 KiB of it).
fn read_log_from(path: &Path, since: u64) -> String {
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

fn log_tail(path: &Path, since: u64) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn psql(emb: &Embedded, sql: &str) -> String {
        let bindir = find_bindir().unwrap();
        let out = Command::new(bindir.join("psql"))
            .arg(emb.conninfo("postgres"))
            .args(["-X", "-tA", "-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Stops a persistent test server even when an assertion fails.
    struct StopOnDrop(PathBuf);

    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            let _ = Embedded::stop(&self.0);
        }
    }

    fn is_root() -> bool {
        // SAFETY: geteuid cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn find_bindir_finds_server_binaries() {
        let dir = find_bindir().unwrap();
        assert!(dir.join("initdb").is_file(), "{}", dir.display());
        assert!(dir.join("postgres").is_file(), "{}", dir.display());
    }

    #[test]
    fn ephemeral_server_answers_psql() {
        let tmp = tempfile::tempdir().unwrap();
        let emb = Embedded::start_ephemeral(tmp.path()).unwrap();
        assert_eq!(emb.user, "tripload");
        assert_eq!(psql(&emb, "select 1"), "1");
        assert_eq!(psql(&emb, "show fsync"), "off");
        assert_eq!(psql(&emb, "show wal_level"), "minimal");
        assert_eq!(psql(&emb, "select current_user"), "tripload");
    }

    #[test]
    fn ensure_running_is_idempotent_and_stop_stops() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pg");
        let _guard = StopOnDrop(dir.clone());
        // Concurrent first calls must not both initdb or start a server.
        let (first, second) = thread::scope(|scope| {
            let a = scope.spawn(|| Embedded::ensure_running(&dir).unwrap());
            let b = scope.spawn(|| Embedded::ensure_running(&dir).unwrap());
            (a.join().unwrap(), b.join().unwrap())
        });
        assert_eq!(first, second);
        let third = Embedded::ensure_running(&dir).unwrap();
        assert_eq!(first, third);
        assert_eq!(psql(&second, "select 1"), "1");
        assert_eq!(psql(&second, "show fsync"), "on");
        assert_eq!(psql(&second, "show shared_buffers"), "512MB");
        assert!(Embedded::stop(&dir).unwrap());
        assert!(!Embedded::stop(&dir).unwrap());
        if first.data_dir.starts_with(FALLBACK_ROOT) {
            fs::remove_dir_all(&first.data_dir).unwrap();
        }
    }

    #[test]
    fn ensure_running_recovers_from_killed_postmaster() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let _guard = StopOnDrop(dir.to_path_buf());
        let first = Embedded::ensure_running(dir).unwrap();
        let pid = read_pidfile(&first.data_dir).unwrap().unwrap().pid;
        // SAFETY: pid > 0 is the postmaster we just started.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while liveness(pid) == Liveness::Postgres && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        let second = Embedded::ensure_running(dir).unwrap();
        assert_eq!(psql(&second, "select 1"), "1");
        let new_pid = read_pidfile(&second.data_dir).unwrap().unwrap().pid;
        assert_ne!(pid, new_pid);
        assert!(Embedded::stop(dir).unwrap());
    }

    #[test]
    fn startup_failure_reports_the_server_log() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let _guard = StopOnDrop(dir.to_path_buf());
        let emb = Embedded::ensure_running(dir).unwrap();
        assert!(Embedded::stop(dir).unwrap());
        let conf = emb.data_dir.join("postgresql.conf");
        let mut text = fs::read_to_string(&conf).unwrap();
        text.push_str("\nshared_buffers = = oops\n");
        fs::write(&conf, text).unwrap();
        let err = Embedded::ensure_running(dir).unwrap_err();
        assert!(matches!(err, EmbeddedError::CommandFailed { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("pg_ctl"), "{msg}");
        assert!(msg.contains("server.log"), "{msg}");
        assert!(msg.contains("syntax error"), "{msg}");
    }

    #[test]
    fn refuses_a_non_empty_foreign_directory() {
        let tmp = tempfile::tempdir().unwrap();
        // Traversable, so the check applies to this very directory.
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(tmp.path().join("notes.txt"), "mine").unwrap();
        let err = Embedded::ensure_running(tmp.path()).unwrap_err();
        assert!(matches!(err, EmbeddedError::NotADataDir { .. }), "{err}");
        let err = Embedded::start_ephemeral(tmp.path()).unwrap_err();
        assert!(matches!(err, EmbeddedError::NotADataDir { .. }), "{err}");
        assert_eq!(
            fs::read_to_string(tmp.path().join("notes.txt")).unwrap(),
            "mine"
        );
    }

    #[test]
    fn long_paths_put_the_socket_in_a_fresh_private_dir_under_tmp() {
        let tmp = tempfile::tempdir().unwrap();
        // Traversable, so the cluster stays at the (long) requested path.
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let dir = tmp.path().join("d".repeat(60)).join("e".repeat(60));
        // Where an older tripload put the socket: anyone could create it
        // first. Plant a world-writable directory there.
        let hash = path_hash(&absolute_path(&dir).unwrap());
        let planted = PathBuf::from(format!("/tmp/{SOCKET_FALLBACK_PREFIX}{hash}"));
        let _ = fs::remove_dir_all(&planted);
        fs::create_dir(&planted).unwrap();
        fs::set_permissions(&planted, fs::Permissions::from_mode(0o777)).unwrap();
        if is_root() {
            std::os::unix::fs::chown(&planted, Some(65534), Some(65534)).unwrap();
        }
        let planted_owner = fs::metadata(&planted).unwrap().uid();

        let emb = Embedded::start_ephemeral(&dir).unwrap();
        assert_eq!(emb.data_dir, absolute_path(&dir).unwrap());
        assert_ne!(
            emb.socket_dir, planted,
            "a predictable directory was adopted"
        );
        assert!(
            is_temp_socket_dir(&emb.socket_dir),
            "{}",
            emb.socket_dir.display()
        );
        let meta = fs::symlink_metadata(&emb.socket_dir).unwrap();
        assert!(meta.is_dir());
        assert_eq!(meta.mode() & 0o777, 0o700);
        assert_eq!(psql(&emb, "select 1"), "1");
        // The planted directory was neither used nor changed.
        let meta = fs::symlink_metadata(&planted).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o777), (planted_owner, 0o777));
        assert!(is_empty_dir(&planted));
        fs::remove_dir(&planted).unwrap();
    }

    #[test]
    fn untraversable_parent_relocates_the_cluster() {
        if !is_root() {
            return;
        }
        // Like /root on a typical machine: the server user cannot reach a child.
        let tmp = tempfile::tempdir().unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o700)).unwrap();
        let dir = tmp.path().join("pg");
        let layout = resolve_layout(&dir, Mode::Persistent, Path::new(FALLBACK_ROOT)).unwrap();
        assert!(layout.relocated);
        assert_eq!(
            layout.data_dir,
            Path::new(FALLBACK_ROOT).join(path_hash(&absolute_path(&dir).unwrap()))
        );
        assert_eq!(layout.socket_dir, layout.data_dir.join("run"));

        let emb = Embedded::start_ephemeral(&dir).unwrap();
        assert!(emb.data_dir.starts_with(FALLBACK_ROOT));
        assert_eq!(psql(&emb, "select 1"), "1");
        assert!(!dir.exists());
    }

    #[test]
    fn traversable_tempdir_is_used_in_place() {
        let tmp = tempfile::tempdir().unwrap();
        let layout =
            resolve_layout(tmp.path(), Mode::Persistent, Path::new(FALLBACK_ROOT)).unwrap();
        assert!(!layout.relocated);
        assert_eq!(layout.data_dir, tmp.path().canonicalize().unwrap());
    }

    #[test]
    fn absolute_path_folds_dots_and_missing_parts() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        let messy = tmp.path().join("a/../b/./c");
        assert_eq!(absolute_path(&messy).unwrap(), base.join("b/c"));
    }

    #[test]
    fn path_hash_is_stable() {
        assert_eq!(path_hash(Path::new("")), "cbf29ce484222325");
        assert_eq!(path_hash(Path::new("a")), "af63dc4c8601ec8c");
    }

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

    #[test]
    fn conninfo_quotes_when_needed() {
        let emb = Embedded {
            data_dir: PathBuf::from("/d"),
            socket_dir: PathBuf::from("/my dir/it's"),
            port: 5433,
            user: "tripload".to_owned(),
            tcp_password_file: Some(PathBuf::from("/d/pass word")),
        };
        assert_eq!(
            emb.conninfo("trips"),
            r"host='/my dir/it\'s' port=5433 user=tripload dbname=trips"
        );
        assert_eq!(
            emb.tcp_url("trips").as_deref(),
            Some("postgresql://tripload@127.0.0.1:5433/trips?passfile=/d/pass%20word")
        );
    }

    #[test]
    fn sqlstate_is_extracted_from_error_fields() {
        let fields = b"SFATAL\0C57P03\0Mthe database system is starting up\0\0";
        assert_eq!(error_sqlstate(fields).as_deref(), Some("57P03"));
        assert_eq!(error_sqlstate(b"\0"), None);
    }

    #[test]
    fn shell_quote_escapes_single_quotes() {
        assert_eq!(shell_quote(OsStr::new("port=5")), "port=5");
        assert_eq!(shell_quote(OsStr::new("a b'c")), r"'a b'\''c'");
    }

    #[test]
    fn missing_cluster_stops_as_not_running() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(!Embedded::stop(&tmp.path().join("nothing-here")).unwrap());
    }

    /// psql without a password in its environment; (success, stdout+stderr).
    fn try_psql(conninfo: &str, sql: &str, password: Option<&str>) -> (bool, String) {
        let bindir = find_bindir().unwrap();
        let mut cmd = Command::new(bindir.join("psql"));
        cmd.arg(conninfo)
            .args(["-X", "-w", "-tA", "-c", sql])
            .env_remove("PGPASSWORD")
            .env_remove("PGPASSFILE")
            .env("PGCONNECT_TIMEOUT", "10");
        if let Some(pw) = password {
            cmd.env("PGPASSWORD", pw);
        }
        let out = cmd.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text.trim().to_owned())
    }

    /// A tempdir the server's user can traverse (so nothing is relocated).
    fn open_tempdir() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        tmp
    }

    fn owner_and_mode(path: &Path) -> (u32, u32) {
        let meta = fs::symlink_metadata(path).unwrap();
        (meta.uid(), meta.mode() & 0o7777)
    }

    #[test]
    fn no_tcp_by_default_and_only_our_access_rules() {
        let tmp = tempfile::tempdir().unwrap();
        let emb = Embedded::start_ephemeral(tmp.path()).unwrap();
        assert_eq!(emb.tcp_password_file, None);
        assert_eq!(emb.tcp_url("postgres"), None);
        assert_eq!(psql(&emb, "show listen_addresses"), "");
        assert!(std::net::TcpStream::connect(("127.0.0.1", emb.port)).is_err());
        assert_eq!(read_pidfile(&emb.data_dir).unwrap().unwrap().listen, None);
        assert!(access::hba_is_managed(&emb.data_dir));
        assert_eq!(
            psql(
                &emb,
                "select string_agg(type || ' ' || auth_method, ',' order by line_number) \
                 from pg_hba_file_rules"
            ),
            "local peer,host scram-sha-256"
        );
        assert_eq!(owner_and_mode(&emb.socket_dir).1, 0o700);
    }

    #[test]
    fn tcp_takes_only_the_generated_password() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = Options {
            tcp: true,
            ..Default::default()
        };
        let emb = Embedded::start_ephemeral_with(tmp.path(), &opts).unwrap();
        let passfile = emb.tcp_password_file.clone().unwrap();
        assert_eq!(owner_and_mode(&passfile), (fsafe::euid(), 0o600));
        let password = emb.tcp_password().unwrap().unwrap();
        assert_eq!(psql(&emb, "show listen_addresses"), "127.0.0.1");
        assert_eq!(psql(&emb, "show password_encryption"), "scram-sha-256");
        assert_eq!(
            psql(
                &emb,
                "select rolpassword like 'SCRAM-SHA-256$%' from pg_authid where rolname = 'tripload'"
            ),
            "t"
        );
        let url = emb.tcp_url("postgres").unwrap();
        assert!(!url.contains(&password));
        let (ok, out) = try_psql(&url, "select inet_server_addr()", None);
        assert!(ok, "{out}");
        assert_eq!(out, "127.0.0.1");
        let bare = format!(
            "host=127.0.0.1 port={} user=tripload dbname=postgres",
            emb.port
        );
        let (ok, out) = try_psql(&bare, "select 1", None);
        assert!(!ok && out.contains("no password supplied"), "{out}");
        let (ok, out) = try_psql(&bare, "select 1", Some("wrong"));
        assert!(
            !ok && out.contains("password authentication failed"),
            "{out}"
        );
        let (ok, out) = try_psql(&bare, "select 1", Some(&password));
        assert!(ok, "{out}");
        let log = fs::read_to_string(emb.data_dir.join(LOG_FILE)).unwrap();
        assert!(!log.contains(&password));
    }

    #[test]
    fn a_server_with_foreign_access_rules_is_restarted_with_ours() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let _guard = StopOnDrop(dir.to_path_buf());
        let first = Embedded::ensure_running(dir).unwrap();
        let pid = read_pidfile(&first.data_dir).unwrap().unwrap().pid;
        // What an older tripload wrote (and the server keeps using).
        let owner = fs::metadata(&first.data_dir).unwrap();
        fsafe::replace_file(
            &first.data_dir,
            "pg_hba.conf",
            b"local all all trust\nhost all all 127.0.0.1/32 trust\n",
            0o600,
            Some((owner.uid(), owner.gid())),
        )
        .unwrap();
        let second = Embedded::ensure_running(dir).unwrap();
        assert_ne!(read_pidfile(&second.data_dir).unwrap().unwrap().pid, pid);
        assert!(access::hba_is_managed(&second.data_dir));
        assert_eq!(psql(&second, "select 1"), "1");
        // With ours in place, a further call keeps the running server.
        let pid = read_pidfile(&second.data_dir).unwrap().unwrap().pid;
        Embedded::ensure_running(dir).unwrap();
        assert_eq!(read_pidfile(&second.data_dir).unwrap().unwrap().pid, pid);
        assert!(Embedded::stop(dir).unwrap());
    }

    #[test]
    fn refuses_a_socket_dir_replaced_by_a_symlink() {
        let tmp = open_tempdir();
        let dir = tmp.path().join("pg");
        let _guard = StopOnDrop(dir.clone());
        let emb = Embedded::ensure_running(&dir).unwrap();
        assert!(Embedded::stop(&dir).unwrap());
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o755)).unwrap();
        fs::remove_dir_all(&emb.socket_dir).unwrap();
        std::os::unix::fs::symlink(&outside, &emb.socket_dir).unwrap();
        let err = Embedded::ensure_running(&dir).unwrap_err();
        assert!(matches!(err, EmbeddedError::UnsafeDir { .. }), "{err}");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(owner_and_mode(&outside), (fsafe::euid(), 0o755));
    }

    #[test]
    fn refuses_a_requested_dir_owned_by_another_user() {
        if !is_root() {
            eprintln!("SKIPPED refuses_a_requested_dir_owned_by_another_user: needs root");
            return;
        }
        let tmp = open_tempdir();
        let dir = tmp.path().join("pg");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
        let err = Embedded::ensure_running(&dir).unwrap_err();
        assert!(matches!(err, EmbeddedError::UnsafeDir { .. }), "{err}");
        assert!(err.to_string().contains("belongs to uid 65534"), "{err}");
        let err = Embedded::start_ephemeral(&dir).unwrap_err();
        assert!(matches!(err, EmbeddedError::UnsafeDir { .. }), "{err}");
        assert_eq!(owner_and_mode(&dir), (65534, 0o755));
        assert!(is_empty_dir(&dir));
    }

    /// As root, with a requested directory the server's user cannot reach
    /// (so the cluster would be relocated) and a fallback root of our own.
    fn relocation_setup() -> (tempfile::TempDir, PathBuf, Options) {
        let tmp = open_tempdir();
        let private = tmp.path().join("private");
        fs::create_dir(&private).unwrap();
        fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
        let opts = Options {
            tcp: false,
            fallback_root: tmp.path().join("fallback"),
        };
        (tmp, private.join("pg"), opts)
    }

    #[test]
    fn refuses_a_fallback_root_that_someone_else_prepared() {
        if !is_root() {
            eprintln!("SKIPPED refuses_a_fallback_root_that_someone_else_prepared: needs root");
            return;
        }
        let (_tmp, requested, opts) = relocation_setup();
        let root = &opts.fallback_root;
        fs::create_dir(root).unwrap();
        fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(root, Some(65534), Some(65534)).unwrap();
        let err = Embedded::ensure_running_with(&requested, &opts).unwrap_err();
        assert!(matches!(err, EmbeddedError::UnsafeDir { .. }), "{err}");
        assert!(err.to_string().contains("belongs to uid 65534"), "{err}");
        let err = Embedded::start_ephemeral_with(&requested, &opts).unwrap_err();
        assert!(matches!(err, EmbeddedError::UnsafeDir { .. }), "{err}");
        assert_eq!(owner_and_mode(root), (65534, 0o755));
        assert!(is_empty_dir(root));
        // Root's, but writable by anyone: just as bad.
        std::os::unix::fs::chown(root, Some(0), Some(0)).unwrap();
        fs::set_permissions(root, fs::Permissions::from_mode(0o777)).unwrap();
        let err = Embedded::ensure_running_with(&requested, &opts).unwrap_err();
        assert!(
            err.to_string().contains("writable by group or others"),
            "{err}"
        );
        assert!(is_empty_dir(root));
    }

    #[test]
    fn refuses_a_symlinked_fallback_cluster_dir_and_leaves_its_target_alone() {
        if !is_root() {
            eprintln!(
                "SKIPPED refuses_a_symlinked_fallback_cluster_dir_and_leaves_its_target_alone: needs root"
            );
            return;
        }
        let (tmp, requested, opts) = relocation_setup();
        let root = &opts.fallback_root;
        fs::create_dir(root).unwrap();
        fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
        let target = tmp.path().join("elsewhere");
        fs::create_dir(&target).unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o755)).unwrap();
        let cluster = root.join(path_hash(&absolute_path(&requested).unwrap()));
        std::os::unix::fs::symlink(&target, &cluster).unwrap();
        let _guard = StopOnDrop(requested.clone());
        let err = Embedded::ensure_running_with(&requested, &opts).unwrap_err();
        assert!(matches!(err, EmbeddedError::UnsafeDir { .. }), "{err}");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(owner_and_mode(&target), (0, 0o755));
        assert!(is_empty_dir(&target));

        // Without the planted link the same call relocates the cluster there.
        fs::remove_file(&cluster).unwrap();
        let emb = Embedded::ensure_running_with(&requested, &opts).unwrap();
        assert_eq!(emb.data_dir, cluster);
        assert_eq!(psql(&emb, "select 1"), "1");
        assert!(Embedded::stop_with(&requested, &opts).unwrap());
    }
}
