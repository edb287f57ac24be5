//! A new cluster: `initdb` (superuser `tripload`, UTF-8), ownership handed
//! to the server's user, tripload's access rules written, the socket
//! directory made; and the settings every start passes to the server.

use super::command::{run_captured, server_command};
use super::layout::{is_cluster, is_empty_dir, prepare_socket_dir, Layout, Mode};
use super::{access, bindir, timescale, users, EmbeddedError, SUPERUSER};
use std::path::{Path, PathBuf};

/// initdb a new cluster or adopt an existing one, write its access rules,
/// and create its socket directory; returns the binaries to run it with.
pub(super) fn prepare_cluster(layout: &mut Layout, mode: Mode) -> Result<PathBuf, EmbeddedError> {
    let run_as = layout.run_as.as_ref();
    let bindir = bindir::find_bindir()?;
    let bindir = if is_cluster(&layout.data_dir) {
        users::take_ownership(&layout.data_dir, run_as, true)?;
        bindir::bindir_for_cluster(&layout.data_dir, bindir)
    } else {
        // Never chown or initdb over a directory holding something else.
        if !is_empty_dir(&layout.data_dir) {
            return Err(EmbeddedError::NotADataDir {
                path: layout.data_dir.clone(),
            });
        }
        users::take_ownership(&layout.data_dir, run_as, false)?;
        // Skipping fsync makes initdb several times faster; only worth the
        // risk for throwaway clusters.
        initdb(&bindir, layout, !mode.durable())?;
        bindir
    };
    access::write_auth_files(&layout.data_dir, run_as)?;
    layout.socket_dir = prepare_socket_dir(layout)?;
    Ok(bindir)
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

/// `-c` settings for the server. No TCP unless `tcp` (then 127.0.0.1 only,
/// passwords stored as SCRAM). The WAL level is PostgreSQL's default,
/// `replica`, as on a production server, so what a load costs here is what it
/// costs there. fsync stays on for the persistent cluster because it holds
/// the user's data. TimescaleDB is preloaded when installed.
pub(super) fn server_settings(
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
        "wal_compression=on".to_owned(),
        "maintenance_work_mem=512MB".to_owned(),
    ];
    if timescale::installed_version(bindir).is_some() {
        settings.extend(timescale::PRELOAD_SETTINGS.map(str::to_owned));
    }
    if !mode.durable() {
        settings.push("fsync=off".to_owned());
        settings.push("synchronous_commit=off".to_owned());
    }
    settings
}
