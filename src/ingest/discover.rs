//! Turns the paths named on the command line into the list of files to load.
//!
//! Directories are scanned one level deep; names a writer is still producing
//! (`*.part`, `*.tmp`, dotfiles) and tripload's own outputs (`*.rejects.csv`,
//! `*.error.txt`) are skipped, so pointing at a busy landing directory is safe.
//! Subdirectories are skipped; every other entry — symlinks, FIFOs, devices
//! included — is listed without being followed or opened, so that the loader
//! refuses it by name (only regular files are read).

use std::path::{Path, PathBuf};

/// True for names tripload must never pick up.
pub fn is_ignored(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return true;
    };
    name.starts_with('.')
        || name.ends_with(".part")
        || name.ends_with(".tmp")
        || name.ends_with(".rejects.csv")
        || name.ends_with(".error.txt")
        || name.ends_with(".report.txt")
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error("{path}: no such file or directory")]
    Missing { path: PathBuf },
    #[error("{path}: cannot read directory: {source}")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Files to load, in a stable order (sorted by name within each directory).
pub fn discover(paths: &[PathBuf]) -> Result<Vec<PathBuf>, DiscoverError> {
    let mut out = Vec::new();
    for p in paths {
        // A directory named on the command line is used even through a link
        // (the user chose it); anything else is listed as it is.
        let meta = std::fs::metadata(p)
            .or_else(|_| std::fs::symlink_metadata(p))
            .map_err(|_| DiscoverError::Missing { path: p.clone() })?;
        if meta.is_dir() {
            let rd = std::fs::read_dir(p).map_err(|source| DiscoverError::ReadDir {
                path: p.clone(),
                source,
            })?;
            let mut files: Vec<PathBuf> = rd
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().map(|t| !t.is_dir()).unwrap_or(false))
                .map(|e| e.path())
                .filter(|p| !is_ignored(p))
                .collect();
            files.sort();
            out.extend(files);
        } else {
            out.push(p.clone());
        }
    }
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_partial_hidden_and_own_outputs() {
        let dir = tempfile::tempdir().unwrap();
        for n in [
            "b.csv",
            "a.csv",
            ".hidden.csv",
            "c.csv.part",
            "a.csv.rejects.csv",
            "a.csv.error.txt",
        ] {
            std::fs::write(dir.path().join(n), "x").unwrap();
        }
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        // Listed (not followed), for the loader to refuse by name.
        std::os::unix::fs::symlink(dir.path().join("a.csv"), dir.path().join("l.csv")).unwrap();
        let files = discover(&[dir.path().to_path_buf()]).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["a.csv", "b.csv", "l.csv"]);
        let dangling = dir.path().join("dangling.csv");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        assert_eq!(
            discover(std::slice::from_ref(&dangling)).unwrap(),
            [dangling]
        );
        assert!(discover(&[dir.path().join("nope")]).is_err());
    }
}
