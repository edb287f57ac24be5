//! Who may connect to the embedded server and what it inherits.
//!
//! - The Unix socket lives in a 0700 directory owned by the server's OS
//!   user, and `pg_hba.conf` admits on it only the OS user running tripload
//!   (peer authentication mapped to the database user `tripload`).
//! - TCP is off unless asked for (`--pg-tcp`); then the server listens on
//!   127.0.0.1 only and `pg_hba.conf` requires a SCRAM password. The
//!   password is generated once, kept in a 0600 pgpass-format file in the
//!   data directory, and only its SCRAM verifier is sent to the server.
//! - initdb, pg_ctl and postgres run with an emptied environment (PATH, HOME,
//!   USER/LOGNAME and TZ only), so no secret of ours reaches them.
//!
//! `pg_hba.conf` and `pg_ident.conf` are rewritten before every start.

use super::fsafe;
use super::{EmbeddedError, RunAs, SUPERUSER};
use rand::distributions::{Alphanumeric, DistString};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// First line of the pg_hba.conf we write; a running server whose file
/// lacks it was configured by something else (e.g. an older tripload that
/// used `trust`) and is restarted with ours.
pub(super) const HBA_MARKER: &str = "# pg_hba.conf written by tripload";
/// The pgpass-format file holding the TCP password (mode 0600).
pub(super) const PASSWORD_FILE: &str = "tripload-tcp.pgpass";
/// The ident map naming who may log in over the socket.
const IDENT_MAP: &str = "tripload_owner";
const SAFE_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Empties the environment of a server-side command and sets only what the
/// PostgreSQL tools need.
pub(super) fn clean_env(cmd: &mut Command, home: &Path, user: Option<&str>) {
    cmd.env_clear().env("PATH", SAFE_PATH).env("HOME", home);
    if let Some(name) = user {
        cmd.env("USER", name).env("LOGNAME", name);
    }
    if let Some(tz) = std::env::var_os("TZ") {
        cmd.env("TZ", tz);
    }
}

/// pg_hba.conf: the socket for the owner only, TCP (if listening) by
/// password only, nothing else.
pub(super) fn hba_conf(owner: Option<&str>) -> String {
    let local = match owner {
        Some(_) => format!("local   all   {SUPERUSER}   peer map={IDENT_MAP}"),
        // A uid without a name cannot be matched by peer authentication;
        // the socket directory (0700) is then the only gate.
        None => format!("local   all   {SUPERUSER}   trust"),
    };
    format!(
        "{HBA_MARKER} at every start of this embedded cluster; edits are lost.\n\
         # Unix socket (its directory is private to the server's OS user): only the\n\
         # OS user who runs tripload, as database user {SUPERUSER}.\n\
         {local}\n\
         # TCP, only when started with --pg-tcp (127.0.0.1): password (SCRAM) only.\n\
         host    all   {SUPERUSER}   127.0.0.1/32   scram-sha-256\n"
    )
}

/// pg_ident.conf mapping the owner's OS user name to the database user.
pub(super) fn ident_conf(owner: Option<&str>) -> String {
    let mut text =
        "# pg_ident.conf written by tripload at every start; edits are lost.\n".to_owned();
    if let Some(name) = owner {
        text.push_str(&format!("{IDENT_MAP}   {name}   {SUPERUSER}\n"));
    }
    text
}

/// The OS user who runs tripload and may use the socket.
pub(super) fn owner_name() -> Option<String> {
    fsafe::user_name(fsafe::euid()).filter(|name| !name.chars().any(char::is_whitespace))
}

/// Writes pg_hba.conf and pg_ident.conf into the data directory, owned by
/// the server's OS user, replacing (never following) whatever is there.
pub(super) fn write_auth_files(
    data_dir: &Path,
    run_as: Option<&RunAs>,
) -> Result<(), EmbeddedError> {
    let owner = owner_name();
    let chown = run_as.map(|u| (u.uid, u.gid));
    for (name, text) in [
        ("pg_hba.conf", hba_conf(owner.as_deref())),
        ("pg_ident.conf", ident_conf(owner.as_deref())),
    ] {
        fsafe::replace_file(data_dir, name, text.as_bytes(), 0o600, chown)
            .map_err(|e| super::io_err("write", &data_dir.join(name), e))?;
    }
    Ok(())
}

/// Whether the cluster's pg_hba.conf is the one we write.
pub(super) fn hba_is_managed(data_dir: &Path) -> bool {
    fsafe::read_to_string_nofollow(&data_dir.join("pg_hba.conf"))
        .is_ok_and(|text| text.starts_with(HBA_MARKER))
}

pub(super) fn password_file(data_dir: &Path) -> PathBuf {
    data_dir.join(PASSWORD_FILE)
}

/// The TCP password: read from the password file, or generated (32 random
/// letters and digits) and stored there on first use.
pub(super) fn ensure_password(data_dir: &Path) -> Result<String, EmbeddedError> {
    let path = password_file(data_dir);
    match fsafe::read_private_file(&path) {
        Ok(Ok(text)) => parse_pgpass(&text).ok_or_else(|| EmbeddedError::Password {
            path: path.clone(),
            reason: "it does not hold a `host:port:db:user:password` line for tripload".to_owned(),
        }),
        Ok(Err(reason)) => Err(EmbeddedError::Password { path, reason }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let password = Alphanumeric.sample_string(&mut rand::rngs::OsRng, 32);
            fsafe::create_private_file(&path, pgpass(&password).as_bytes())
                .map_err(|e| super::io_err("create", &path, e))?;
            Ok(password)
        }
        Err(e) => Err(EmbeddedError::Password {
            path,
            reason: e.to_string(),
        }),
    }
}

/// pgpass lines for the loopback addresses, any port and database.
fn pgpass(password: &str) -> String {
    format!("127.0.0.1:*:*:{SUPERUSER}:{password}\nlocalhost:*:*:{SUPERUSER}:{password}\n")
}

fn parse_pgpass(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.splitn(5, ':').collect();
        (fields.len() == 5 && fields[3] == SUPERUSER && !fields[4].is_empty())
            .then(|| fields[4].to_owned())
    })
}

/// Stores the password's SCRAM verifier (never the password) in the role,
/// over the Unix socket.
pub(super) fn set_role_password(conninfo: &str, password: &str) -> Result<(), EmbeddedError> {
    let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
    let sql = format!("SET log_statement = 'none'; ALTER ROLE {SUPERUSER} PASSWORD '{verifier}'");
    let failed = |what: &str, e: tokio_postgres::Error| EmbeddedError::SetPassword {
        reason: format!("{what}: {}", crate::pgtext::error_text(&e)),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| EmbeddedError::SetPassword {
            reason: format!("could not start a runtime: {e}"),
        })?;
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls)
            .await
            .map_err(|e| failed("connecting over the Unix socket", e))?;
        let driver = tokio::spawn(connection);
        let result = client
            .batch_execute(&sql)
            .await
            .map_err(|e| failed("ALTER ROLE", e));
        drop(client);
        let _ = driver.await;
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hba_has_no_trust_on_tcp_and_peer_on_the_socket() {
        let text = hba_conf(Some("root"));
        assert!(text.starts_with(HBA_MARKER));
        let rules: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
            .collect();
        assert_eq!(rules.len(), 2, "{text}");
        assert!(rules[0].starts_with("local") && rules[0].contains("peer map="));
        assert!(rules[1].starts_with("host") && rules[1].contains("127.0.0.1/32"));
        assert!(rules[1].ends_with("scram-sha-256"));
        assert!(!hba_conf(None)
            .lines()
            .any(|l| l.starts_with("host") && l.contains("trust")));
        assert!(ident_conf(Some("root")).contains("tripload_owner   root   tripload"));
    }

    #[test]
    fn pgpass_round_trips() {
        assert_eq!(parse_pgpass(&pgpass("abc123")).as_deref(), Some("abc123"));
        assert_eq!(parse_pgpass("127.0.0.1:*:*:someone:x\n"), None);
    }

    #[test]
    fn password_is_generated_once_and_kept_private() {
        let tmp = tempfile::tempdir().unwrap();
        let first = ensure_password(tmp.path()).unwrap();
        assert_eq!(first.len(), 32);
        assert_eq!(ensure_password(tmp.path()).unwrap(), first);
        let meta = std::fs::metadata(password_file(tmp.path())).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
            0o600
        );
        std::fs::set_permissions(
            password_file(tmp.path()),
            std::os::unix::fs::PermissionsExt::from_mode(0o640),
        )
        .unwrap();
        let err = ensure_password(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("group or others"), "{err}");
        assert!(!err.contains(&first), "{err}");
    }
}
