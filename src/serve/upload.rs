//! Ingestion over HTTP (only with `--allow-upload`): `PUT /api/landing/{name}`
//! streams the body to a temporary dotfile in the landing directory (which
//! loaders skip), hashing it on the way, and renames it into place only when
//! complete, never replacing a file; `POST /api/ingest` loads what is in the
//! landing directory now with the `load` code path.

use crate::serve::error::ApiError;
use crate::serve::Shared;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use futures_util::StreamExt;
use serde_json::Value;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

/// Longest accepted file name, in bytes.
const MAX_NAME: usize = 200;

/// Checks an upload name: letters, digits, `.`, `_`, `-`; no leading dot, no
/// `..`, and not a name loaders skip (`*.part`, `*.tmp`) or write
/// (`*.rejects.csv`, `*.error.txt`).
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!("file name must be 1 to {MAX_NAME} bytes"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{name:?}: character {c:?} not allowed (letters, digits, '.', '_', '-')"
        ));
    }
    if name.starts_with('.') || name.contains("..") {
        return Err(format!("{name:?}: no leading dot and no '..'"));
    }
    for skipped in [".part", ".tmp", ".rejects.csv", ".error.txt"] {
        if name.ends_with(skipped) {
            return Err(format!(
                "{name:?}: names ending in {skipped} are never loaded"
            ));
        }
    }
    Ok(())
}

fn uploads_allowed(state: &Shared) -> Result<(), ApiError> {
    if state.cfg.allow_upload {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "uploads are off: start the server with --allow-upload".into(),
        ))
    }
}

/// The landing directory, when it is a real directory (not a symlink).
fn landing_dir(state: &Shared) -> Result<PathBuf, ApiError> {
    let dir = state.cfg.landing.clone();
    match std::fs::symlink_metadata(&dir) {
        Ok(m) if m.is_dir() => Ok(dir),
        Ok(_) => Err(ApiError::Internal(format!(
            "the landing directory {} is not a directory (symlinks are not followed)",
            dir.display()
        ))),
        Err(e) => Err(ApiError::Internal(format!(
            "the landing directory {}: {e}",
            dir.display()
        ))),
    }
}

/// Removes the temporary file unless the upload completed.
struct Temp {
    path: PathBuf,
    keep: bool,
}

impl Drop for Temp {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// `PUT /api/landing/{name}`.
pub async fn put_landing(
    State(state): State<Shared>,
    Path(name): Path<String>,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    uploads_allowed(&state)?;
    check_name(&name).map_err(ApiError::BadRequest)?;
    let dir = landing_dir(&state)?;
    let dest = dir.join(&name);
    if std::fs::symlink_metadata(&dest).is_ok() {
        return Err(ApiError::Conflict(format!(
            "{name} is already waiting in the landing directory"
        )));
    }
    let mut temp = Temp {
        path: dir.join(format!(
            ".{name}.{}.{}.part",
            std::process::id(),
            rand::random::<u64>()
        )),
        keep: false,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&temp.path)
        .map_err(|e| ApiError::Internal(format!("creating {}: {e}", temp.path.display())))?;
    let limit = state.cfg.max_upload_bytes;
    let mut hasher = crate::kernel::hash::ContentHash::new();
    let mut size = 0u64;
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("upload interrupted: {e}")))?;
        size += chunk.len() as u64;
        if size > limit {
            return Err(ApiError::TooLarge(format!(
                "the upload is over the limit of {limit} bytes (--max-upload-mib)"
            )));
        }
        hasher.update(&chunk);
        tokio::task::block_in_place(|| file.write_all(&chunk))
            .map_err(|e| ApiError::Internal(format!("writing {}: {e}", temp.path.display())))?;
    }
    if size == 0 {
        return Err(ApiError::BadRequest(
            "the upload is empty: send the file's bytes as the request body".into(),
        ));
    }
    tokio::task::block_in_place(|| file.sync_all())
        .map_err(|e| ApiError::Internal(format!("writing {}: {e}", temp.path.display())))?;
    drop(file);
    // A hard link never replaces an existing name: rename without clobbering.
    match std::fs::hard_link(&temp.path, &dest) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(ApiError::Conflict(format!(
                "{name} is already waiting in the landing directory"
            )))
        }
        Err(e) => {
            return Err(ApiError::Internal(format!(
                "moving the upload into {}: {e}",
                dest.display()
            )))
        }
    }
    let _ = std::fs::remove_file(&temp.path);
    temp.keep = true;
    let id = hasher.finish();
    tracing::info!("received {name} ({size} bytes, {id})");
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "file": name, "id": id, "size_bytes": size })),
    ))
}

/// `POST /api/ingest`: loads the landing directory in the background
/// (progress and outcome on `/api/events`); one such load at a time.
pub async fn ingest(State(state): State<Shared>) -> Result<(StatusCode, Json<Value>), ApiError> {
    uploads_allowed(&state)?;
    if state.cfg.beside_watch {
        return Err(ApiError::Conflict(
            "the watcher in this process loads the landing directory as files arrive".into(),
        ));
    }
    let dir = landing_dir(&state)?;
    let guard = std::sync::Arc::clone(&state.ingesting)
        .try_lock_owned()
        .map_err(|_| ApiError::Conflict("a load started here is still running".into()))?;
    let cfg = crate::ingest::load::LoadConfig {
        target: state.cfg.target.clone(),
        paths: vec![dir.clone()],
        settings: state.cfg.load.clone(),
        rollups: true,
    };
    tokio::spawn(async move {
        let _guard = guard;
        match crate::ingest::load::run(cfg).await {
            Ok(reports) => tracing::info!("ingest over HTTP: {} file(s) done", reports.len()),
            Err(e) => tracing::warn!("ingest over HTTP failed: {e}"),
        }
    });
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "started": true, "landing": dir.display().to_string() })),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("trips-2024_01.csv").is_ok());
        for bad in [
            "",
            ".hidden",
            "a/b.csv",
            "..",
            "a..b",
            "x.part",
            "x.tmp",
            "a b.csv",
            "é.csv",
            "x.rejects.csv",
            "a\\b",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_name(&"a".repeat(MAX_NAME + 1)).is_err());
    }
}
