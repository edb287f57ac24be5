//! Files written beside a loaded or failed file to say what happened to it
//! (`<file>.error.txt`, `<file>.report.txt`, the rejects file), never more
//! readable than the file itself, never through a symlink.

use std::fs::File;
use std::path::{Path, PathBuf};

/// Permission bits for a file written about `input`: its own, less any
/// execute bits, so nothing tripload writes is more readable than what it
/// read (0600 when the input cannot be examined).
pub fn mode_like(input: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(input)
        .map(|m| m.permissions().mode() & 0o666)
        .unwrap_or(0o600)
}

/// `<archived file name>.<suffix>` in the same directory.
pub fn sidecar(archived: &Path, suffix: &str) -> PathBuf {
    let mut name = archived.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    archived.with_file_name(name)
}

/// Creates (or truncates) `path` with permission bits `mode`, not following
/// a symlink there.
pub(crate) fn create_sidecar_file(path: &Path, mode: u32) -> std::io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    Ok(f)
}

/// Writes `<archived>.<suffix>` with `text`, no more readable than `archived`.
pub fn write_sidecar(archived: &Path, suffix: &str, text: &str) -> std::io::Result<PathBuf> {
    use std::io::Write;
    let p = sidecar(archived, suffix);
    let mut f = create_sidecar_file(&p, mode_like(archived))?;
    f.write_all(text.as_bytes())?;
    Ok(p)
}

/// Writes `<file>.error.txt` beside a failed file.
pub fn write_error(archived: &Path, text: &str) -> std::io::Result<PathBuf> {
    write_sidecar(archived, "error.txt", text)
}
