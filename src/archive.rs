//! Where files go after their transaction ends: `processed/` after a commit,
//! `failed/` after a rollback, with the rejects file (and for failures a short
//! `<file>.error.txt`) beside them. Nothing is overwritten: a name already
//! taken gets a numeric suffix.

use crate::encode::Reject;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

/// A free path for `name` in `dir`: `name`, else `stem.1.ext`, `stem.2.ext`, …
pub fn free_path(dir: &Path, name: &str) -> PathBuf {
    let first = dir.join(name);
    if !first.exists() {
        return first;
    }
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    (1..)
        .map(|n| dir.join(format!("{stem}.{n}{ext}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

/// Moves `file` into `dir` (created if needed); across filesystems it copies,
/// syncs, then removes the original. Returns the new path.
pub fn move_into(file: &Path, dir: &Path) -> std::io::Result<PathBuf> {
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("unnamed");
    move_into_as(file, dir, name)
}

/// Like [`move_into`], under another name (a claimed file gets its own back).
pub fn move_into_as(file: &Path, dir: &Path, name: &str) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let dest = free_path(dir, name);
    match std::fs::rename(file, &dest) {
        Ok(()) => Ok(dest),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            std::fs::copy(file, &dest)?;
            File::open(&dest)?.sync_all()?;
            std::fs::remove_file(file)?;
            Ok(dest)
        }
        Err(e) => Err(e),
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
}
