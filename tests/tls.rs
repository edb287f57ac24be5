//! TLS to PostgreSQL: a real server with `ssl = on` and a pg_hba.conf that
//! rejects unencrypted TCP connections; tripload connects with
//! `sslmode=require` and with the default `prefer`, and is turned away with
//! `sslmode=disable` (which shows the rule is real).

mod common;
use common::*;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

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
