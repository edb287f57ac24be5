//! Where files go after their transaction ends: `processed/` after a commit,
//! `failed/` after a rollback, with the rejects file (and for failures a short
//! `<file>.error.txt`) beside them. Nothing is overwritten: a name already
//! taken gets a numeric suffix. A file that was read is moved only while its
//! path still names that same file (device and inode): whatever replaced it
//! meanwhile stays where it is.

use crate::kernel::encode::Reject;
use crate::notify::sidecar::create_sidecar_file;
pub use crate::notify::sidecar::{mode_like, sidecar, write_error, write_sidecar};
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
    id: crate::ingest::map::FileId,
    dir: &Path,
    name: &str,
) -> Result<PathBuf, MoveError> {
    if !crate::ingest::map::same_file(file, id) {
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

/// Bytes the rejects file may take (`REJECTS_CAP_BYTES`); past it, bad lines
/// are still counted but no longer listed, and the file ends saying so.
pub const REJECTS_CAP_BYTES: u64 = 64 << 20;

/// Writes rejects as CSV (`file,line,column,reason,raw`) while the file loads;
/// created lazily so clean files leave no empty rejects file. The raw column
/// is an escaped excerpt ([`crate::kernel::excerpt`]) of the record's first
/// [`crate::kernel::encode::RAW_EXCERPT_BYTES`]; the file stops growing at `cap`
/// bytes. It is written under a unique temporary name and takes the input's
/// permissions (at most).
pub struct RejectWriter {
    work_dir: PathBuf,
    file_label: String,
    mode: u32,
    cap: u64,
    // Boxed: the csv writer is large and this travels inside results.
    out: Option<Box<csv::Writer<BufWriter<tempfile::NamedTempFile>>>>,
    /// Rejected records.
    pub count: u64,
    /// Rejected physical lines (what `--max-rejects` counts).
    pub lines: u64,
    /// Records written to the file (all of them unless the cap was reached).
    pub listed: u64,
    /// Bytes of the records written (about the file's size).
    written: u64,
    /// The first reject, as `line N: [column c: ]reason`.
    pub first: Option<String>,
    /// The first reject's line and column (the field's name).
    pub first_at: Option<(u64, Option<String>)>,
}

impl RejectWriter {
    /// `work_dir` holds the file until it is placed beside the archived
    /// input; `input` is the file being loaded (for its permissions).
    pub fn new(work_dir: &Path, name: &str, input: &Path) -> Self {
        RejectWriter {
            work_dir: work_dir.to_path_buf(),
            file_label: name.to_string(),
            mode: mode_like(input),
            cap: REJECTS_CAP_BYTES,
            out: None,
            count: 0,
            lines: 0,
            listed: 0,
            written: 0,
            first: None,
            first_at: None,
        }
    }

    /// The same with another size cap (tests).
    pub fn with_cap(mut self, cap: u64) -> Self {
        self.cap = cap;
        self
    }

    fn open(&mut self) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&self.work_dir)?;
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{}.", self.file_label))
            .suffix(".rejects.tmp")
            .permissions(std::fs::Permissions::from_mode(self.mode))
            .tempfile_in(&self.work_dir)?;
        // The umask may have narrowed it further; never wider than the input.
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(self.mode))?;
        let mut w = csv::Writer::from_writer(BufWriter::new(tmp));
        w.write_record(["file", "line", "column", "reason", "raw"])?;
        self.out = Some(Box::new(w));
        Ok(())
    }

    /// Records the reject of a record starting at physical `line`.
    pub fn write(&mut self, line: u64, r: &Reject) -> std::io::Result<()> {
        let column = r.fault.column.map(|c| c.name()).unwrap_or("");
        let reason = r.fault.error.to_string();
        if self.first.is_none() {
            let col = if column.is_empty() {
                String::new()
            } else {
                format!("column {column}: ")
            };
            self.first = Some(format!("line {line}: {col}{reason}"));
            self.first_at = Some((line, (!column.is_empty()).then(|| column.to_string())));
        }
        self.count += 1;
        self.lines += r.lines;
        if self.out.is_none() {
            self.open()?;
        }
        let Some(w) = self.out.as_mut() else {
            return Ok(());
        };
        if self.written >= self.cap {
            return Ok(());
        }
        let mut raw =
            crate::kernel::excerpt::excerpt(&r.raw, crate::kernel::encode::RAW_EXCERPT_BYTES);
        if r.raw_len > r.raw.len() && !raw.ends_with(" bytes in all]") {
            raw.push_str(&format!("…[{} bytes in all]", r.raw_len));
        }
        let line = line.to_string();
        w.write_record([self.file_label.as_str(), &line, column, &reason, &raw])?;
        self.listed += 1;
        // Quoting may add a few bytes; the cap is a size, not a byte count.
        self.written +=
            (self.file_label.len() + line.len() + column.len() + reason.len() + raw.len() + 8)
                as u64;
        Ok(())
    }

    /// Says how much of the rejects the file lists (for messages).
    pub fn listed_note(&self) -> String {
        if self.listed == self.count {
            "every one is listed in the rejects file".into()
        } else {
            format!(
                "the first {} are listed in the rejects file (it stops at {} MiB)",
                self.listed,
                self.cap >> 20
            )
        }
    }

    /// Moves the rejects next to `archived` as `<name>.rejects.csv`.
    pub fn place_beside(mut self, archived: &Path) -> std::io::Result<Option<PathBuf>> {
        let Some(mut w) = self.out.take() else {
            return Ok(None);
        };
        if self.listed < self.count {
            let note = format!(
                "the rejects file stopped at {} bytes: {} more rejected records ({} rejected lines in all) are not listed",
                self.cap,
                self.count - self.listed,
                self.lines
            );
            w.write_record([self.file_label.as_str(), "", "", &note, ""])?;
        }
        w.flush()?;
        let tmp = w
            .into_inner()
            .map_err(|e| std::io::Error::other(e.to_string()))?
            .into_inner()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let dest = sidecar(archived, "rejects.csv");
        if let Err(e) = tmp.persist(&dest) {
            // Another filesystem: copy (with the same permissions), then drop the temporary.
            let mut out = create_sidecar_file(&dest, self.mode)?;
            std::io::copy(&mut File::open(e.file.path())?, &mut out)?;
        }
        Ok(Some(dest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reject(line: u64, raw: &[u8]) -> Reject {
        Reject {
            line,
            lines: 1,
            fault: crate::kernel::parse::RowFault {
                column: Some(crate::kernel::parse::Column::Region),
                error: crate::kernel::parse::RowError::Empty,
            },
            raw: raw.to_vec(),
            raw_len: raw.len(),
        }
    }

    /// Past the cap, rejects are counted but not listed, and the file says so.
    #[test]
    fn the_rejects_file_stops_at_its_cap_and_says_so() {
        let d = tempfile::tempdir().unwrap();
        let input = d.path().join("in.csv");
        std::fs::write(&input, "x").unwrap();
        let mut w = RejectWriter::new(&d.path().join("work"), "in.csv", &input).with_cap(10_000);
        for line in 2..2002 {
            w.write(line, &reject(line, &[b'a'; 100])).unwrap();
        }
        assert_eq!((w.count, w.lines), (2000, 2000));
        assert!(w.listed < 100, "{}", w.listed);
        assert!(w.listed_note().contains(&format!("the first {}", w.listed)));
        let listed = w.listed;
        let dest = w.place_beside(&input).unwrap().unwrap();
        let text = std::fs::read_to_string(&dest).unwrap();
        assert!(text.len() < 12_000, "{}", text.len());
        let recs: Vec<_> = csv::Reader::from_reader(text.as_bytes())
            .records()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(recs.len() as u64, listed + 1);
        let note = &recs.last().unwrap()[3];
        assert!(
            note.contains(&format!("{} more rejected records", 2000 - listed)),
            "{note}"
        );
    }

    /// Two loads of files with the same name never share a temporary file,
    /// and what they write is no more readable than their input.
    #[test]
    fn temporary_rejects_are_unique_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let work = d.path().join("processed");
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        for (dir, mode) in [(&a, 0o600), (&b, 0o640)] {
            std::fs::create_dir(dir).unwrap();
            std::fs::write(dir.join("t.csv"), "x").unwrap();
            std::fs::set_permissions(dir.join("t.csv"), std::fs::Permissions::from_mode(mode))
                .unwrap();
        }
        let mut wa = RejectWriter::new(&work, "t.csv", &a.join("t.csv"));
        let mut wb = RejectWriter::new(&work, "t.csv", &b.join("t.csv"));
        wa.write(2, &reject(2, b"from a")).unwrap();
        wb.write(3, &reject(3, b"from b")).unwrap();
        let pa = wa.place_beside(&a.join("t.csv")).unwrap().unwrap();
        let pb = wb.place_beside(&b.join("t.csv")).unwrap().unwrap();
        let (ta, tb) = (
            std::fs::read_to_string(&pa).unwrap(),
            std::fs::read_to_string(&pb).unwrap(),
        );
        assert!(ta.contains("from a") && !ta.contains("from b"), "{ta}");
        assert!(tb.contains("from b") && !tb.contains("from a"), "{tb}");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&pa), 0o600);
        assert_eq!(mode(&pb) & !0o640, 0, "{:o}", mode(&pb));
        assert_eq!(
            std::fs::read_dir(&work).unwrap().count(),
            0,
            "no temporary left"
        );
        let e = write_error(&a.join("t.csv"), "why").unwrap();
        assert_eq!(mode(&e), 0o600);
    }

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
