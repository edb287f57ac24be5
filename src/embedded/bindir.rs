//! Finding the PostgreSQL server binaries: `pg_config --bindir`, `$PATH`,
//! then Debian's `/usr/lib/postgresql/<version>/bin`; and, for an existing
//! cluster, the binaries of the major version that created it.

use super::EmbeddedError;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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

pub(super) fn has_server_binaries(dir: &Path) -> bool {
    is_executable(&dir.join("initdb")) && is_executable(&dir.join("postgres"))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
}

/// A cluster initialised by another major version needs that version's
/// binaries; prefer Debian's side-by-side install of it when present.
pub(super) fn bindir_for_cluster(data_dir: &Path, default: PathBuf) -> PathBuf {
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
