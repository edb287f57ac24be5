//! Replacing a loaded file by a corrected one: the new file loads and the
//! old one is unloaded ([`crate::lifecycle::unload::unload_in`]) in the new
//! file's transaction, just before its COMMIT ([`unload_in`] is that step),
//! so a reader sees the old file's trips or the new file's, never both and
//! never neither. If the new file fails, nothing happens to the old one.
//!
//! Which file is replaced ([`Policy`]):
//! - `load --replace OLD`: OLD named as for `tripload unload` (path, hash,
//!   name or id), found before the load starts;
//! - `--replace-versions` (`load` and `watch`): a file named
//!   `<stem>.v<N>.<ext>` (N ≥ 2) replaces the committed file of the same
//!   logical name with the highest lower version: `<stem>.v<M>.<ext>`
//!   (M < N) or `<stem>.<ext>` (version 1). With none committed, it just
//!   loads.

use crate::db::query_err;
use crate::lifecycle::unload::{unload_in as unload_file, Removed};
use crate::lifecycle::{who, LifecycleError};
use crate::notify::events::Kind;
use std::sync::Mutex;
use tokio_postgres::Transaction;

/// Which committed file a new file replaces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Policy {
    /// None.
    #[default]
    None,
    /// This one (`load --replace`): its id and content hash, checked again
    /// in the transaction.
    File { file_id: i32, content_hash: String },
    /// By the version in the name (`--replace-versions`).
    Versions,
}

/// The version a name carries: (`<stem>.<ext>` without the version, N) for
/// `<stem>.v<N>.<ext>` with N ≥ 2; `None` for an unversioned name.
pub fn versioned(name: &str) -> Option<(String, u32)> {
    let (rest, ext) = match name.rsplit_once('.') {
        Some((r, e)) if !r.is_empty() => (r, Some(e)),
        _ => (name, None),
    };
    let (stem, v) = rest.rsplit_once(".v")?;
    if stem.is_empty() || v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u32 = v.parse().ok()?;
    if n < 2 {
        return None;
    }
    let logical = match ext {
        Some(e) => format!("{stem}.{e}"),
        None => stem.to_string(),
    };
    Some((logical, n))
}

/// The version of `candidate` if it is a version of `logical` (1 for the
/// logical name itself).
fn version_of(logical: &str, candidate: &str) -> Option<u32> {
    if candidate == logical {
        return Some(1);
    }
    let (l, n) = versioned(candidate)?;
    (l == logical).then_some(n)
}

/// Replacements made by this process's loads: (new file's name, new file
/// id, what went). Taken by the command that prints the summary.
static DONE: Mutex<Vec<(String, i32, Removed)>> = Mutex::new(Vec::new());

/// The replacements recorded so far (emptied).
pub fn take_done() -> Vec<(String, i32, Removed)> {
    DONE.lock()
        .map(|mut d| std::mem::take(&mut *d))
        .unwrap_or_default()
}

/// The step of a file's transaction (just before its ledger counts and
/// COMMIT) that unloads the file it replaces, if any (see [`Policy`]).
pub async fn unload_in(
    tx: &Transaction<'_>,
    policy: &Policy,
    new_name: &str,
    new_file_id: i32,
) -> Result<(), LifecycleError> {
    let old: Vec<i32> = match policy {
        Policy::None => return Ok(()),
        Policy::File {
            file_id,
            content_hash,
        } => {
            let same = tx
                .query_opt(
                    "SELECT 1 FROM load_files WHERE file_id = $1 AND content_hash = $2",
                    &[file_id, content_hash],
                )
                .await
                .map_err(query_err("finding the file to replace"))?;
            if same.is_none() {
                return Err(LifecycleError::Gone(*file_id));
            }
            vec![*file_id]
        }
        Policy::Versions => match older_version(tx, new_name).await? {
            Some(ids) => ids,
            None => return Ok(()),
        },
    };
    let by = who(tx).await?;
    for id in old {
        if id == new_file_id {
            continue;
        }
        let how = format!("replaced by {new_name} (file id {new_file_id})");
        let r = unload_file(tx, id, &how, &by, Kind::Replaced).await?;
        tracing::info!("{new_name}: replaces {r}");
        if let Ok(mut d) = DONE.lock() {
            d.push((new_name.to_string(), new_file_id, r));
        }
    }
    Ok(())
}

/// The committed files of the highest version below `new_name`'s.
async fn older_version(
    tx: &Transaction<'_>,
    new_name: &str,
) -> Result<Option<Vec<i32>>, LifecycleError> {
    let Some((logical, n)) = versioned(new_name) else {
        return Ok(None);
    };
    let (stem, ext) = match logical.rsplit_once('.') {
        Some((s, e)) => (s.to_string(), format!(".{e}")),
        None => (logical.clone(), String::new()),
    };
    let like = format!(
        "{}.v%{}",
        stem.replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_"),
        ext.replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    );
    let rows = tx
        .query(
            "SELECT file_id, file_name FROM load_files
             WHERE committed_at IS NOT NULL AND (file_name = $1 OR file_name LIKE $2)",
            &[&logical, &like],
        )
        .await
        .map_err(query_err("finding the older version to replace"))?;
    let best = rows
        .iter()
        .filter_map(|r| {
            let name: String = r.get(1);
            version_of(&logical, &name)
                .filter(|&v| v < n)
                .map(|v| (v, r.get::<_, i32>(0)))
        })
        .fold(None::<(u32, Vec<i32>)>, |acc, (v, id)| match acc {
            Some((bv, mut ids)) if bv == v => {
                ids.push(id);
                Some((bv, ids))
            }
            Some((bv, ids)) if bv > v => Some((bv, ids)),
            _ => Some((v, vec![id])),
        });
    Ok(best.map(|(_, ids)| ids))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_names() {
        assert_eq!(
            versioned("trips-2018-05.v2.csv"),
            Some(("trips-2018-05.csv".into(), 2))
        );
        assert_eq!(
            versioned("trips-2018-05.v12.csv"),
            Some(("trips-2018-05.csv".into(), 12))
        );
        // The version comes before an extension.
        assert_eq!(versioned("trips.v3"), None);
        assert_eq!(versioned("trips-2018-05.csv"), None);
        assert_eq!(versioned("trips.v1.csv"), None);
        assert_eq!(versioned("trips.vx.csv"), None);
        assert_eq!(versioned(".v2.csv"), None);
        assert_eq!(version_of("a.csv", "a.csv"), Some(1));
        assert_eq!(version_of("a.csv", "a.v3.csv"), Some(3));
        assert_eq!(version_of("a.csv", "b.v3.csv"), None);
    }
}
