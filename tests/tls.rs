//! TLS to PostgreSQL: a real server with `ssl = on` and a pg_hba.conf that
//! rejects unencrypted TCP connections; tripload connects with
//! `sslmode=require` and with the default `prefer`, and is turned away with
//! `sslmode=disable` (which shows the rule is real). Certificates signed by a
//! test CA (made with openssl) check `verify-ca`, `verify-full`,
//! `sslrootcert`, and X.509 v1 certificates (CA-signed, and self-signed as
//! Citus makes them: `pg_stat_ssl` shows prefer/require encrypted).

mod common;
use common::*;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The tests change the one server's certificate and pg_hba.conf.
static SERVER: Mutex<()> = Mutex::new(());

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed CA in `dir`: `<name>.crt`, `<name>.key`.
fn make_ca(dir: &Path, name: &str) -> PathBuf {
    let (crt, key) = (format!("{name}.crt"), format!("{name}.key"));
    let subj = format!("/CN={name}");
    openssl(
        dir,
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", &subj,
            "-keyout", &key, "-out", &crt,
        ],
    );
    dir.join(crt)
}

/// A server certificate for CN=localhost signed by `ca`: X.509 v3 with
/// subjectAltName DNS:localhost when `san`, else v1 (no extensions at all).
fn make_server_cert(dir: &Path, ca: &str, name: &str, san: bool) -> (PathBuf, PathBuf) {
    let (crt, key, csr) = (
        format!("{name}.crt"),
        format!("{name}.key"),
        format!("{name}.csr"),
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            &key,
            "-out",
            &csr,
        ],
    );
    let (ca_crt, ca_key) = (format!("{ca}.crt"), format!("{ca}.key"));
    let mut args = vec![
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca_crt,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        &crt,
    ];
    if san {
        std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost\n").unwrap();
        args.extend(["-extfile", "san.ext"]);
    }
    openssl(dir, &args);
    (dir.join(crt), dir.join(key))
}

/// Makes the server present this certificate (reloaded at once).
fn serve_cert(db: &TestDb, crt: &Path, key: &Path) {
    let (data_dir, _, _) = cluster_info();
    let meta = std::fs::metadata(&data_dir).unwrap();
    let (to_crt, to_key) = (data_dir.join("server.crt"), data_dir.join("server.key"));
    std::fs::copy(crt, &to_crt).unwrap();
    std::fs::copy(key, &to_key).unwrap();
    for f in [&to_crt, &to_key] {
        std::os::unix::fs::chown(f, Some(meta.uid()), Some(meta.gid())).unwrap();
    }
    std::fs::set_permissions(&to_key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    db.query("SELECT pg_reload_conf()");
    std::thread::sleep(std::time::Duration::from_millis(500));
}

fn enable_tls(db: &TestDb) -> (u16, String) {
    let (data_dir, port, user) = cluster_info();
    let meta = std::fs::metadata(&data_dir).unwrap();
    let (crt, key) = (data_dir.join("server.crt"), data_dir.join("server.key"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .expect("openssl (Debian package openssl)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [&crt, &key] {
        std::os::unix::fs::chown(f, Some(meta.uid()), Some(meta.gid())).unwrap();
    }
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    // First match wins: TCP must be encrypted.
    let hba = data_dir.join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("hostnossl all all 127.0.0.1/32 reject\nhostssl all all 127.0.0.1/32 scram-sha-256\n{old}"),
    )
    .unwrap();
    db.query("ALTER SYSTEM SET ssl = on");
    db.query("SELECT pg_reload_conf()");
    for _ in 0..100 {
        let on: String = db.query("SHOW ssl")[0].get(0);
        if on == "on" {
            return (port, user);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!(
        "ssl did not turn on (see the server log in {})",
        data_dir.display()
    );
}

#[test]
fn loads_over_tls_and_unencrypted_tcp_is_refused() {
    let _server = SERVER.lock().unwrap_or_else(|e| e.into_inner());
    let db = fresh_db();
    let (port, user) = enable_tls(&db);
    let password = cluster_password();
    let url = |mode: &str| {
        format!(
            "host=127.0.0.1 port={port} user={user} password={password} dbname={} {mode}",
            db.name
        )
    };
    let w = Work::new();
    let run = |mode: &str, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tripload"))
            .current_dir(w.dir.path())
            .env("DATABASE_URL", url(mode))
            .env_remove("TRIPLOAD_PG_DIR")
            .args(args)
            .output()
            .unwrap()
    };

    // Without TLS the server says no: exit 2, nothing moved.
    w.land("trips.csv", &sample());
    let out = run("sslmode=disable", &["load", "landing"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("no encryption"), "{}", stderr(&out));
    assert!(w.exists("landing/trips.csv"));

    // sslmode=require: encrypted, loads.
    let out = run("sslmode=require", &["load", "landing"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(db.trips(), 100);

    // The default (prefer) encrypts when offered: status and weekly work too.
    let out = run("", &["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("trips.csv"), "{}", stdout(&out));
    let out = run("", &["weekly", "--region", "Turin", "--format", "csv"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn verifies_the_server_certificate_as_libpq_does() {
    let _server = SERVER.lock().unwrap_or_else(|e| e.into_inner());
    let db = fresh_db();
    // A second database that also takes unencrypted TCP (first match wins).
    let open_db = fresh_db();
    let (port, user) = enable_tls(&db);
    let (data_dir, _, _) = cluster_info();
    let hba = data_dir.join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!(
            "host {} all 127.0.0.1/32 scram-sha-256\n{old}",
            open_db.name
        ),
    )
    .unwrap();
    db.query("SELECT pg_reload_conf()");

    let certs = tempfile::tempdir().unwrap();
    let ca = make_ca(certs.path(), "ca");
    let other_ca = make_ca(certs.path(), "other-ca");
    let (crt, key) = make_server_cert(certs.path(), "ca", "server", true);
    let (v1_crt, v1_key) = make_server_cert(certs.path(), "ca", "server-v1", false);
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&v1_crt)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("Version: 1 (0x0)"),
        "openssl made no v1 certificate"
    );
    serve_cert(&db, &crt, &key);

    let w = Work::new();
    // No ~/.postgresql/root.crt from the machine.
    let home = tempfile::tempdir().unwrap();
    let run = |conninfo: String| {
        Command::new(env!("CARGO_BIN_EXE_tripload"))
            .current_dir(w.dir.path())
            .env("DATABASE_URL", conninfo)
            .env("HOME", home.path())
            .env_remove("TRIPLOAD_PG_DIR")
            .args(["db", "migrate"])
            .output()
            .unwrap()
    };
    let password = cluster_password();
    let kv = |host: &str, dbname: &str, tls: String| {
        format!("host={host} port={port} user={user} password={password} dbname={dbname} {tls}")
    };
    let root = |mode: &str, ca: &Path| format!("sslmode={mode} sslrootcert='{}'", ca.display());

    // The chain and the name check out.
    let out = run(kv("localhost", &db.name, root("verify-full", &ca)));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let url = format!(
        "postgresql://{user}:{password}@localhost:{port}/{}?sslmode=verify-full&sslrootcert={}",
        db.name,
        ca.display()
    );
    let out = run(url);
    assert_eq!(out.status.code(), Some(0), "URL form: {}", stderr(&out));

    // 127.0.0.1 is not a name in the certificate: verify-full refuses,
    // verify-ca (chain only) connects.
    let out = run(kv("127.0.0.1", &db.name, root("verify-full", &ca)));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("does not name the host"), "{err}");
    assert!(err.contains("verify-ca"), "{err}");
    let out = run(kv("127.0.0.1", &db.name, root("verify-ca", &ca)));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // The wrong root: refused, saying which root was used.
    for mode in ["verify-ca", "verify-full", "require"] {
        let out = run(kv("localhost", &db.name, root(mode, &other_ca)));
        assert_eq!(out.status.code(), Some(2), "{mode}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("does not chain to a root"), "{mode}: {err}");
        assert!(err.contains("other-ca.crt"), "{mode}: {err}");
    }
    // No sslrootcert: the system's roots, which do not hold the test CA.
    let out = run(kv("localhost", &db.name, "sslmode=verify-full".into()));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("system's roots"), "{}", stderr(&out));

    // prefer: a failed TLS handshake falls back to an unencrypted session,
    // which the open database takes and the TLS-only one refuses.
    let out = run(kv("localhost", &open_db.name, root("prefer", &other_ca)));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = run(kv("localhost", &db.name, root("prefer", &other_ca)));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("without TLS"), "{}", stderr(&out));

    // An X.509 v1 certificate: require encrypts without verifying, as libpq
    // does (the TLS-only database takes it); prefer too.
    serve_cert(&db, &v1_crt, &v1_key);
    let out = run(kv("127.0.0.1", &db.name, "sslmode=require".into()));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = run(kv("127.0.0.1", &db.name, "sslmode=prefer".into()));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Verification needs v3: a clear refusal, then prefer's fallback.
    let out = run(kv("localhost", &db.name, root("verify-ca", &ca)));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("v3"), "{}", stderr(&out));
    let out = run(kv("localhost", &open_db.name, root("prefer", &ca)));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// A self-signed X.509 v1 certificate (no extensions), as Citus generates
/// when it turns TLS on: `<name>.crt`, `<name>.key`.
fn make_self_signed_v1(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (crt, key, csr) = (
        format!("{name}.crt"),
        format!("{name}.key"),
        format!("{name}.csr"),
    );
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            &key,
            "-out",
            &csr,
        ],
    );
    openssl(
        dir,
        &[
            "x509", "-req", "-in", &csr, "-signkey", &key, "-days", "2", "-out", &crt,
        ],
    );
    (dir.join(crt), dir.join(key))
}

/// Whether the session tripload's own connect opens is encrypted, from the
/// server's side (`pg_stat_ssl`); Err is the connect error, one line.
fn session_encrypted(conninfo: &str) -> Result<bool, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = tripload::db::connect(conninfo)
            .await
            .map_err(|e| e.one_line())?;
        let row = c
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(row.get(0))
    })
}

#[test]
fn a_self_signed_v1_certificate_encrypts_at_prefer_and_require_and_is_refused_by_verify() {
    let _server = SERVER.lock().unwrap_or_else(|e| e.into_inner());
    // libpq reads ~/.postgresql/root.crt at prefer/require too: none here.
    // (Every test of this binary holds SERVER, so nothing reads HOME meanwhile.)
    let home = tempfile::tempdir().unwrap();
    std::env::set_var("HOME", home.path());
    let db = fresh_db();
    // A second database that also takes unencrypted TCP (first match wins).
    let open_db = fresh_db();
    let (port, user) = enable_tls(&db);
    let (data_dir, _, _) = cluster_info();
    let hba = data_dir.join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!(
            "host {} all 127.0.0.1/32 scram-sha-256\n{old}",
            open_db.name
        ),
    )
    .unwrap();
    let certs = tempfile::tempdir().unwrap();
    let (crt, key) = make_self_signed_v1(certs.path(), "citus-like");
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&crt)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.contains("Version: 1 (0x0)"), "not v1: {text}");
    assert!(
        text.contains("Issuer: CN = localhost") && text.contains("Subject: CN = localhost"),
        "not self-signed: {text}"
    );
    serve_cert(&db, &crt, &key);

    let password = cluster_password();
    let kv = |dbname: &str, tls: &str| {
        format!("host=127.0.0.1 port={port} user={user} password={password} dbname={dbname} {tls}")
    };
    // prefer (the default) and require: encrypted, nothing verified — on
    // the database that would also take plaintext, too (no fallback).
    for tls in ["", "sslmode=prefer", "sslmode=require"] {
        for dbname in [&db.name, &open_db.name] {
            assert_eq!(
                session_encrypted(&kv(dbname, tls)),
                Ok(true),
                "{tls:?} on {dbname}"
            );
        }
    }
    // disable: plaintext, which only the open database takes.
    assert_eq!(
        session_encrypted(&kv(&open_db.name, "sslmode=disable")),
        Ok(false)
    );
    assert!(session_encrypted(&kv(&db.name, "sslmode=disable")).is_err());
    // verify-*: refused with the reason, even with the certificate itself as
    // the root (verification needs v3).
    for mode in ["verify-ca", "verify-full"] {
        let tls = format!("sslmode={mode} sslrootcert='{}'", crt.display());
        let err = session_encrypted(&kv(&db.name, &tls)).unwrap_err();
        assert!(err.contains("TLS handshake failed"), "{mode}: {err}");
        assert!(err.contains("v3"), "{mode}: {err}");
        assert!(err.contains("sslmode=require"), "{mode}: {err}");
    }

    // The real binary with the default sslmode loads over it.
    let w = Work::new();
    w.land("trips.csv", &sample());
    let out = Command::new(env!("CARGO_BIN_EXE_tripload"))
        .current_dir(w.dir.path())
        .env("DATABASE_URL", kv(&db.name, ""))
        .env_remove("TRIPLOAD_PG_DIR")
        .args(["load", "landing"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(db.trips(), 100);
    // verify-full through the binary: exit 2 and the clear refusal.
    let out = Command::new(env!("CARGO_BIN_EXE_tripload"))
        .current_dir(w.dir.path())
        .env(
            "DATABASE_URL",
            kv(
                &db.name,
                &format!("sslmode=verify-full sslrootcert='{}'", crt.display()),
            ),
        )
        .env_remove("TRIPLOAD_PG_DIR")
        .args(["status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("v3"), "{}", stderr(&out));
}
