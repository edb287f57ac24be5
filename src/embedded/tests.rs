//! The embedded server's own tests: real clusters started and stopped,
//! persistent and throwaway, and the refusals that keep them safe.

use super::layout::{
    absolute_path, is_empty_dir, is_temp_socket_dir, path_hash, resolve_layout, Mode,
    FALLBACK_ROOT, SOCKET_FALLBACK_PREFIX,
};
use super::pidfile::{liveness, read_pidfile, Liveness};
use super::serverlog::LOG_FILE;
use super::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

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
    assert_eq!(psql(&emb, "show wal_level"), "replica");
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
    let layout = resolve_layout(tmp.path(), Mode::Persistent, Path::new(FALLBACK_ROOT)).unwrap();
    assert!(!layout.relocated);
    assert_eq!(layout.data_dir, tmp.path().canonicalize().unwrap());
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
