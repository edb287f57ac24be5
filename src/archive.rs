//! Where files go after their transaction ends: `processed/` after a commit,
//! `failed/` after a rollback, with the rejects file (and for failures a short
//! `<file>.error.txt`) beside them. Nothing is overwritten: a name already
//! taken gets a numeric suffix. A file that was read is moved only while its
//! path still names that same file (device and inode): whatever replaced it
//! meanwhile stays where it is.

use crate::encode::Reject;
use std::fs::File;
use std::io::BufWriter;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Moves `file` into `dir` (created if needed); across filesystems it copies,
/// syncs, then removes the original. Returns the new path.
pub fn move_into(file: &Path, dir: &Path) -> std::io::Result<PathBuf> {
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("unnamed");
    move_into_as(file, dir, name)
}

/// Why the file that was read was not moved.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error("{path} no longer names the file that was read (it was replaced or removed during the load); what is there now was not moved")]
    Replaced { path: PathBuf },
    #[error("{path}: cannot move it to {dir}: {source}")]
    Io {
        path: PathBuf,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// [`move_into_as`] for the file that was read through the descriptor
/// identified by `id`: refused when `file` now names another file. (A swap
/// between this check and the rename itself remains possible, in a window of
/// two system calls.)
pub fn move_read_file_into_as(
    file: &Path,
    id: crate::map::FileId,
    dir: &Path,
    name: &str,
) -> Result<PathBuf, MoveError> {
    if !crate::map::same_file(file, id) {
        return Err(MoveError::Replaced {
            path: file.to_path_buf(),
        });
    }
    move_into_as(file, dir, name).map_err(|source| MoveError::Io {
        path: file.to_path_buf(),
        dir: dir.to_path_buf(),
        source,
    })
}

/// Like [`move_into`], under another name (a claimed file gets its own back).
/// Never replaces a file already in `dir`: a taken name gets a `.N` suffix,
/// and the name is taken atomically (rename without replace, or a
/// create-new copy across filesystems), so two processes archiving files of
/// the same name at the same moment both keep theirs.
pub fn move_into_as(file: &Path, dir: &Path, name: &str) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    for n in 0u64.. {
        let dest = if n == 0 {
            dir.join(name)
        } else {
            dir.join(format!("{stem}.{n}{ext}"))
        };
        match rename_noreplace(file, &dest) {
            Ok(()) => return Ok(dest),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                let mut out = match std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&dest)
                {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(e),
                };
                let mut src = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                    .open(file)?;
                std::io::copy(&mut src, &mut out)?;
                out.sync_all()?;
                std::fs::remove_file(file)?;
                return Ok(dest);
            }
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("no free name"))
}

/// `rename` that fails with `AlreadyExists` instead of replacing `to`.
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in path"))
    };
    let (f, t) = (c(from)?, c(to)?);
    // SAFETY: both are valid NUL-terminated paths; AT_FDCWD resolves them
    // like rename(2) does.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        // A filesystem without RENAME_NOREPLACE: check, then rename (the
        // small race is the best such a filesystem allows).
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::ENOTSUP) => {
            if to.exists() {
                Err(std::io::ErrorKind::AlreadyExists.into())
            } else {
                std::fs::rename(from, to)
            }
        }
        _ => Err(e),
    }
}

/// Writes rejects as CSV (`file,line,column,reason,raw`) while the file loads;
/// created lazily so clean files leave no empty rejects file.
pub struct RejectWriter {
    tmp_path: PathBuf,
    file_label: String,
    // Boxed: the csv writer is large and this travels inside results.
    out: Option<Box<csv::Writer<BufWriter<File>>>>,
    pub count: u64,
}

impl RejectWriter {
    /// `work_dir` holds the file until it is placed beside the archived input.
    pub fn new(work_dir: &Path, name: &str) -> Self {
        RejectWriter {
            tmp_path: work_dir.join(format!(".{name}.{}.rejects.tmp", std::process::id())),
            file_label: name.to_string(),
            out: None,
            count: 0,
        }
    }

    pub fn write(&mut self, line: u64, r: &Reject) -> std::io::Result<()> {
        if self.out.is_none() {
            if let Some(parent) = self.tmp_path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let mut w = csv::Writer::from_writer(BufWriter::new(File::create(&self.tmp_path)?));
            w.write_record(["file", "line", "column", "reason", "raw"])?;
            self.out = Some(Box::new(w));
        }
        if let Some(w) = self.out.as_mut() {
            let column = r.fault.column.map(|c| c.name()).unwrap_or("");
            w.write_record([
                self.file_label.as_str(),
                &line.to_string(),
                column,
                &r.fault.error.to_string(),
                &String::from_utf8_lossy(&r.raw),
            ])?;
        }
        self.count += 1;
        Ok(())
    }

    /// Moves the rejects next to `archived` as `<name>.rejects.csv`.
    pub fn place_beside(mut self, archived: &Path) -> std::io::Result<Option<PathBuf>> {
        let Some(mut w) = self.out.take() else {
            return Ok(None);
        };
        w.flush()?;
        drop(w);
        let dest = sidecar(archived, "rejects.csv");
        std::fs::rename(&self.tmp_path, &dest).or_else(|_| {
            std::fs::copy(&self.tmp_path, &dest)?;
            std::fs::remove_file(&self.tmp_path)
        })?;
        Ok(Some(dest))
    }
}

impl Drop for RejectWriter {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp_path);
        }
    }
}

/// `<archived file name>.<suffix>` in the same directory.
pub fn sidecar(archived: &Path, suffix: &str) -> PathBuf {
    let mut name = archived.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    archived.with_file_name(name)
}

/// Writes `<file>.error.txt` beside a failed file.
pub fn write_error(archived: &Path, text: &str) -> std::io::Result<PathBuf> {
    let p = sidecar(archived, "error.txt");
    std::fs::write(&p, text)?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_without_overwriting() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("processed");
        for content in ["one", "two"] {
            let f = d.path().join("trips.csv");
            std::fs::write(&f, content).unwrap();
            move_into(&f, &dest).unwrap();
            assert!(!f.exists());
        }
        assert_eq!(
            std::fs::read_to_string(dest.join("trips.csv")).unwrap(),
            "one"
        );
        assert_eq!(
            std::fs::read_to_string(dest.join("trips.1.csv")).unwrap(),
            "two"
        );
    }

    #[test]
    fn concurrent_moves_of_the_same_name_keep_every_file() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("processed");
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let (src, dest) = (d.path().join(format!("in{t}")), dest.clone());
                std::thread::spawn(move || {
                    std::fs::create_dir_all(&src).unwrap();
                    for i in 0..25 {
                        let f = src.join("trips.csv");
                        std::fs::write(&f, format!("{t}-{i}")).unwrap();
                        move_into(&f, &dest).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut seen: Vec<String> = std::fs::read_dir(&dest)
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect();
        seen.sort();
        let mut expect: Vec<String> = (0..8)
            .flat_map(|t| (0..25).map(move |i| format!("{t}-{i}")))
            .collect();
        expect.sort();
        assert_eq!(seen, expect, "every file kept, none overwritten");
    }
}
