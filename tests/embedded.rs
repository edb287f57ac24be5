//! The embedded database seen from outside: what the real binary's server
//! listens on, what it inherits, who can connect to it, and whether
//! TimescaleDB is in the loop when installed.

mod common;
use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A directory the server's OS user can traverse (as root it is `postgres`
/// or `nobody`), so the cluster stays where it was asked to be.
fn pg_parent() -> tempfile::TempDir {
    let tmp = tempfile::Builder::new()
        .prefix("tripload-embedded-test")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    tmp
}

/// The real binary on the embedded database in `pg_dir`, with the
/// environment a user might have: secrets that must not reach the server.
fn tripload_embedded(pg_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tripload"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("TRIPLOAD_PG_TCP")
        .env("TRIPLOAD_PG_DIR", pg_dir)
        .env(
            "TRIPLOAD_SMTP_URL",
            "smtp://mailer:smtp-s3cret@mail.example:587",
        )
        .env("PGPASSWORD", "pg-s3cret")
        .env("SOME_API_TOKEN", "token-s3cret")
        .output()
        .expect("run tripload")
}

/// Stops the cluster even when an assertion fails.
struct StopOnDrop(PathBuf);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = tripload_embedded(&self.0, &["db", "stop"]);
    }
}

fn pidfile_lines(pg_dir: &Path) -> Vec<String> {
    std::fs::read_to_string(pg_dir.join("postmaster.pid"))
        .expect("postmaster.pid")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// psql with no password in its environment: (success, stdout+stderr).
fn psql(
    conninfo: &str,
    sql: &str,
    as_uid: Option<u32>,
    extra_env: &[(&str, &str)],
) -> (bool, String) {
    let bindir = tripload::embedded::find_bindir().unwrap();
    let mut cmd = if let Some(uid) = as_uid {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg("--clear-groups")
            .arg(bindir.join("psql"));
        c
    } else {
        Command::new(bindir.join("psql"))
    };
    cmd.arg(conninfo)
        .args(["-X", "-w", "-tA", "-c", sql])
        .current_dir("/")
        .env_remove("PGPASSWORD")
        .env_remove("PGPASSFILE")
        .env("PGCONNECT_TIMEOUT", "10");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run psql (or setpriv)");
    let text = format!("{}{}", stdout(&out), stderr(&out));
    (out.status.success(), text.trim().to_owned())
}

#[test]
fn db_start_listens_on_the_socket_only_and_the_server_inherits_no_secrets() {
    let parent = pg_parent();
    let pg_dir = parent.path().join("pg");
    let _stop = StopOnDrop(pg_dir.clone());
    let out = tripload_embedded(&pg_dir, &["db", "start"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let lines = pidfile_lines(&pg_dir);
    let pid: i32 = lines[0].trim().parse().unwrap();
    let port: u16 = lines[3].trim().parse().unwrap();
    assert_eq!(lines[5].trim(), "", "the server listens on TCP: {lines:?}");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());

    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ).replace('\0', "\n");
    for secret in ["smtp-s3cret", "pg-s3cret", "token-s3cret"] {
        assert!(
            !environ.contains(secret),
            "{secret} reached the server:\n{environ}"
        );
    }
    for name in ["TRIPLOAD_", "DATABASE_URL", "PGPASSWORD", "SOME_API_TOKEN"] {
        assert!(
            !environ.contains(name),
            "{name} reached the server:\n{environ}"
        );
    }

    let url = tripload_embedded(&pg_dir, &["db", "url"]);
    assert!(url.status.success(), "{}", stderr(&url));
    let url = stdout(&url).trim().to_owned();
    assert!(url.starts_with("host=/"), "not the socket: {url}");
    let (ok, out) = psql(&url, "show listen_addresses", None, &[]);
    assert!(ok, "{out}");
    assert_eq!(out, "");

    // TimescaleDB is preloaded exactly when it is installed.
    let bindir = tripload::embedded::find_bindir().unwrap();
    let installed = tripload::embedded::timescale::installed_version(&bindir);
    let (ok, out) = psql(&url, "show shared_preload_libraries", None, &[]);
    assert!(ok, "{out}");
    assert_eq!(out.contains("timescaledb"), installed.is_some(), "{out}");
    if installed.is_some() {
        let (ok, out) = psql(&url, "show timescaledb.telemetry_level", None, &[]);
        assert!(ok, "{out}");
        assert_eq!(out, "off");
    }

    // `db url --tcp` without a TCP listener says how to get one.
    let tcp = tripload_embedded(&pg_dir, &["db", "url", "--tcp"]);
    assert!(!tcp.status.success());
    assert!(stderr(&tcp).contains("--pg-tcp"), "{}", stderr(&tcp));
    let stop = tripload_embedded(&pg_dir, &["db", "stop"]);
    assert_eq!(stdout(&stop).trim(), "stopped", "{}", stderr(&stop));
}

#[test]
fn pg_tcp_needs_the_generated_password_which_is_never_printed() {
    let parent = pg_parent();
    let pg_dir = parent.path().join("pg");
    let _stop = StopOnDrop(pg_dir.clone());
    let out = tripload_embedded(&pg_dir, &["db", "url", "--tcp", "--pg-tcp"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let url = stdout(&out).trim().to_owned();

    let passfile = pg_dir.join("tripload-tcp.pgpass");
    let meta = std::fs::symlink_metadata(&passfile).unwrap();
    assert!(meta.is_file());
    // SAFETY: geteuid cannot fail.
    assert_eq!(meta.uid(), unsafe { libc::geteuid() });
    assert_eq!(meta.mode() & 0o777, 0o600);
    let password = std::fs::read_to_string(&passfile)
        .unwrap()
        .lines()
        .next()
        .and_then(|l| l.rsplit(':').next())
        .unwrap()
        .to_owned();
    assert_eq!(password.len(), 32);
    assert!(!url.contains(&password) && !stderr(&out).contains(&password));
    assert!(
        url.starts_with("postgresql://tripload@127.0.0.1:") && url.contains("passfile="),
        "{url}"
    );

    let (ok, out) = psql(&url, "select inet_server_addr()", None, &[]);
    assert!(ok, "{out}");
    assert_eq!(out, "127.0.0.1");
    let port = pidfile_lines(&pg_dir)[3].trim().to_owned();
    let bare = format!("host=127.0.0.1 port={port} user=tripload dbname=tripload");
    let (ok, out) = psql(&bare, "select 1", None, &[]);
    assert!(!ok && out.contains("no password supplied"), "{out}");
    let (ok, out) = psql(&bare, "select 1", None, &[("PGPASSWORD", "guess")]);
    assert!(
        !ok && out.contains("password authentication failed"),
        "{out}"
    );

    // Later commands without --pg-tcp keep the running server as it is,
    // and the tripload binary itself still uses the socket.
    let socket = tripload_embedded(&pg_dir, &["db", "url"]);
    assert!(stdout(&socket).starts_with("host=/"), "{}", stdout(&socket));
    assert!(!stdout(&socket).contains(&password) && !stderr(&socket).contains(&password));
    let again = tripload_embedded(&pg_dir, &["db", "url", "--tcp"]);
    assert_eq!(stdout(&again).trim(), url, "{}", stderr(&again));
    let log = std::fs::read_to_string(pg_dir.join("server.log")).unwrap();
    assert!(!log.contains(&password));
}

/// Runs `f` with an OS user that is neither us nor the server's user.
fn other_user() -> u32 {
    let server_uid = std::fs::metadata(cluster_info().0).unwrap().uid();
    // nobody, unless the server itself runs as nobody: then an unnamed uid.
    if server_uid == 65534 {
        65533
    } else {
        65534
    }
}

#[test]
fn another_os_user_cannot_connect_to_the_embedded_server() {
    if !is_root() {
        eprintln!(
            "SKIPPED another_os_user_cannot_connect_to_the_embedded_server: needs root to run psql as another user"
        );
        return;
    }
    let emb = cluster_embedded();
    let other = other_user();
    let socket = emb.conninfo("postgres");
    let tcp = format!(
        "host=127.0.0.1 port={} user=tripload dbname=postgres",
        emb.port
    );

    // Controls: the owner gets in over the socket, and over TCP with the
    // password, so the refusals below are not a broken setup.
    let (ok, out) = psql(&socket, "select current_user", None, &[]);
    assert!(ok, "{out}");
    let password = cluster_password();
    let (ok, out) = psql(&tcp, "select 1", None, &[("PGPASSWORD", &password)]);
    assert!(ok, "{out}");

    let (ok, out) = psql(&socket, "select current_user", Some(other), &[]);
    assert!(!ok, "uid {other} connected over the socket: {out}");
    assert!(out.contains("Permission denied"), "{out}");
    let (ok, out) = psql(&tcp, "select current_user", Some(other), &[]);
    assert!(
        !ok,
        "uid {other} connected over TCP without the password: {out}"
    );
    assert!(out.contains("no password supplied"), "{out}");
    // Nor can it read the password.
    let passfile = emb.tcp_password_file.as_ref().unwrap();
    let read = Command::new("setpriv")
        .arg(format!("--reuid={other}"))
        .arg(format!("--regid={other}"))
        .arg("--clear-groups")
        .arg("cat")
        .arg(passfile)
        .output()
        .unwrap();
    assert!(
        !read.status.success(),
        "uid {other} read {}",
        passfile.display()
    );
}

#[test]
fn migrations_choose_the_hypertable_layout_when_timescaledb_is_installed() {
    let bindir = tripload::embedded::find_bindir().unwrap();
    let installed = tripload::embedded::timescale::installed_version(&bindir);
    let db = fresh_db();
    let w = Work::new();
    let out = tripload(&w, &db, &["db", "migrate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let layout: String =
        db.query("SELECT value FROM tripload_settings WHERE key = 'time_layout'")[0].get(0);
    eprintln!("layout: {layout} (TimescaleDB installed: {installed:?})");
    let hypertable = installed.is_some() && test_layout() != "plain";
    assert_eq!(layout == "timescaledb", hypertable, "{layout}");
    if hypertable {
        assert_eq!(
            db.count(
                "SELECT count(*) FROM timescaledb_information.hypertables \
                 WHERE hypertable_name = 'trips'"
            ),
            1
        );
    } else {
        assert_eq!(
            db.count("SELECT count(*) FROM pg_indexes WHERE indexname = 'trips_datetime_brin'"),
            1
        );
    }
}
