//! Whether TimescaleDB is installed for the PostgreSQL binaries the embedded
//! server runs from: its control file in `<sharedir>/extension` and its
//! library in `<pkglibdir>` (both from that installation's `pg_config`).
//! When it is, the server preloads it, so that migrations choose the
//! hypertable layout.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The `-c` settings that preload TimescaleDB (telemetry off).
pub(super) const PRELOAD_SETTINGS: [&str; 2] = [
    "shared_preload_libraries=timescaledb",
    "timescaledb.telemetry_level=off",
];

/// The installed TimescaleDB's default version (e.g. "2.28.3"), or None
/// when it is not installed for the server in `bindir`.
pub fn installed_version(bindir: &Path) -> Option<String> {
    let sharedir = pg_config(bindir, "--sharedir")?;
    let pkglibdir = pg_config(bindir, "--pkglibdir")?;
    if !pkglibdir.join("timescaledb.so").is_file() {
        return None;
    }
    let control =
        std::fs::read_to_string(sharedir.join("extension").join("timescaledb.control")).ok()?;
    Some(default_version(&control).unwrap_or_else(|| "unknown version".to_owned()))
}

/// `pg_config` of this installation: the one next to the server binaries,
/// else the one on PATH if it describes the same binaries.
fn pg_config(bindir: &Path, flag: &str) -> Option<PathBuf> {
    let beside = bindir.join("pg_config");
    let program = if beside.is_file() {
        beside
    } else {
        let path_bindir = run("pg_config".as_ref(), "--bindir")?;
        if path_bindir.canonicalize().ok()? != bindir.canonicalize().ok()? {
            return None;
        }
        PathBuf::from("pg_config")
    };
    run(&program, flag)
}

fn run(program: &Path, flag: &str) -> Option<PathBuf> {
    let out = Command::new(program)
        .arg(flag)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| PathBuf::from(OsStr::from_bytes(out.stdout.trim_ascii())))
}

/// `default_version = '2.28.3'` from a control file.
fn default_version(control: &str) -> Option<String> {
    control.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == "default_version")
            .then(|| value.trim().trim_matches('\'').to_owned())
            .filter(|v| !v.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_version_is_read_from_the_control_file() {
        let control = "# timescaledb extension\ncomment = 'x'\ndefault_version = '2.28.3'\nmodule_pathname = '$libdir/timescaledb-2.28.3'\n";
        assert_eq!(default_version(control).as_deref(), Some("2.28.3"));
        assert_eq!(default_version("comment = 'x'\n"), None);
    }

    #[test]
    fn detection_matches_the_installed_files() {
        let bindir = super::super::find_bindir().unwrap();
        let sharedir = pg_config(&bindir, "--sharedir").unwrap();
        let control = sharedir.join("extension/timescaledb.control");
        assert_eq!(installed_version(&bindir).is_some(), control.is_file());
    }
}
