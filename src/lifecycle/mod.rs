//! The data lifecycle: removing one loaded file ([`unload`]), loading a
//! corrected file in place of an old one in one transaction ([`replace`]),
//! and dropping trips older than a cut-off ([`retain`]) — each with the
//! rollups kept exactly equal to what the remaining trips give.
//!
//! This module owns what the three share: finding a loaded file from what a
//! person types (a path, a content hash, a file name or a file id), the
//! errors and exit codes, who did it, and the events, which are written in
//! the operation's own transaction (an event says what committed).

pub mod replace;
pub mod retain;
mod subtract;
pub mod unload;

use crate::db::{query_err, DbError};
use crate::notify::events::{Event, Kind, CHANNEL};
use tokio_postgres::{Client, Transaction};

pub use crate::exit::EXIT_LOADING;

/// Why a lifecycle operation did not happen (nothing was changed).
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Row(#[from] crate::analytics::points::RowError),
    /// The rollups do not hold what the file's trips say they should: the
    /// operation is refused rather than leaving them wrong.
    #[error("the rollups do not match the trips ({0}); nothing was changed")]
    Inconsistent(String),
    #[error("file id {0} is no longer in the ledger (unloaded or replaced meanwhile); nothing was changed")]
    Gone(i32),
    #[error("{0}")]
    Usage(String),
}

impl LifecycleError {
    /// The server's SQLSTATE, for an error the server raised.
    pub fn code(&self) -> Option<&tokio_postgres::error::SqlState> {
        match self {
            LifecycleError::Db(e) => e.code(),
            _ => None,
        }
    }

    /// Whose fault, for a load that replaces a file: the database's
    /// SQLSTATE for a server error, otherwise not the new file's content.
    pub fn fault(&self) -> crate::db::Fault {
        match self {
            LifecycleError::Db(e) => e.fault(),
            _ => crate::db::Fault::Environment,
        }
    }
}

/// How a person names a loaded file.
#[derive(Debug, Clone)]
pub enum FileSpec {
    Id(i32),
    /// A path to the file's bytes, a content hash, or a file name.
    Text(String),
}

/// A committed file, as the ledger has it.
#[derive(Debug, Clone)]
pub struct LedgerFile {
    pub file_id: i32,
    pub content_hash: String,
    pub file_name: String,
    pub rows_loaded: i64,
    pub committed_at: String,
}

/// Why a file could not be found.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{what} is not a loaded file{}", close_list(.close))]
    Unknown { what: String, close: Vec<String> },
    #[error("{name:?} names {} loaded files; say which with --file-id:\n{}", .candidates.len(), candidates_list(.candidates))]
    Ambiguous {
        name: String,
        candidates: Vec<LedgerFile>,
    },
    #[error("{what} is still loading (its transaction has not committed): run this again once it has, or pass --wait")]
    Loading { what: String },
    #[error("cannot read {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error(transparent)]
    Db(#[from] DbError),
}

fn close_list(close: &[String]) -> String {
    if close.is_empty() {
        " (the ledger has no file with a similar name)".into()
    } else {
        format!("; close names in the ledger: {}", close.join(", "))
    }
}

fn candidates_list(c: &[LedgerFile]) -> String {
    c.iter()
        .map(|f| {
            format!(
                "  --file-id {}  {} rows, committed {}, {}",
                f.file_id, f.rows_loaded, f.committed_at, f.content_hash
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// What a [`FileSpec::Text`] is: the bytes of a file on disk (when the path
/// names a regular file), a content hash, or a file name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    Hash(String),
    Name(String),
}

/// A content hash as the ledger writes it (`xxh3-128:` and 32 hex digits),
/// with or without the prefix.
fn as_hash(s: &str) -> Option<String> {
    let hex = s.strip_prefix("xxh3-128:").unwrap_or(s);
    (hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("xxh3-128:{}", hex.to_ascii_lowercase()))
}

fn key_of(text: &str) -> Result<Key, ResolveError> {
    let path = std::path::Path::new(text);
    // Never follows a symlink: only a regular file is hashed.
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file()) {
        return hash_file(path)
            .map(Key::Hash)
            .map_err(|e| ResolveError::Unreadable {
                path: text.to_string(),
                reason: e.to_string(),
            });
    }
    if let Some(h) = as_hash(text) {
        return Ok(Key::Hash(h));
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| text.to_string());
    Ok(Key::Name(name))
}

const LEDGER_COLUMNS: &str =
    "file_id, content_hash, file_name, rows_loaded, coalesce(committed_at::text, '')";

fn ledger_file(r: &tokio_postgres::Row) -> LedgerFile {
    LedgerFile {
        file_id: r.get(0),
        content_hash: r.get(1),
        file_name: r.get(2),
        rows_loaded: r.get(3),
        committed_at: r.get(4),
    }
}

/// Finds the committed file `spec` names. A file still loading is
/// [`ResolveError::Loading`]; with `wait`, this waits for its load to end
/// and answers from the ledger then.
pub async fn resolve(
    client: &mut Client,
    spec: &FileSpec,
    wait: bool,
) -> Result<LedgerFile, ResolveError> {
    let key = match spec {
        FileSpec::Id(_) => None,
        FileSpec::Text(t) => Some(key_of(t)?),
    };
    loop {
        let found = lookup(client, spec, key.as_ref()).await?;
        if let Some(f) = found {
            return Ok(f);
        }
        if !loading(client, spec, key.as_ref()).await? {
            return Err(unknown(client, spec, key.as_ref()).await?);
        }
        if !wait {
            return Err(ResolveError::Loading {
                what: describe(spec),
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

fn describe(spec: &FileSpec) -> String {
    match spec {
        FileSpec::Id(id) => format!("file id {id}"),
        FileSpec::Text(t) => format!("{t:?}"),
    }
}

async fn lookup(
    client: &Client,
    spec: &FileSpec,
    key: Option<&Key>,
) -> Result<Option<LedgerFile>, ResolveError> {
    let rows = match (spec, key) {
        (FileSpec::Id(id), _) => client
            .query(
                &format!("SELECT {LEDGER_COLUMNS} FROM load_files WHERE file_id = $1"),
                &[id],
            )
            .await
            .map_err(query_err("looking the file id up in the ledger"))?,
        (_, Some(Key::Hash(h))) => client
            .query(
                &format!("SELECT {LEDGER_COLUMNS} FROM load_files WHERE content_hash = $1"),
                &[h],
            )
            .await
            .map_err(query_err("looking the content hash up in the ledger"))?,
        (_, Some(Key::Name(n))) => client
            .query(
                &format!(
                    "SELECT {LEDGER_COLUMNS} FROM load_files WHERE file_name = $1 ORDER BY file_id"
                ),
                &[n],
            )
            .await
            .map_err(query_err("looking the file name up in the ledger"))?,
        (FileSpec::Text(_), None) => Vec::new(),
    };
    let mut files: Vec<LedgerFile> = rows.iter().map(ledger_file).collect();
    match files.len() {
        0 => Ok(None),
        1 => Ok(files.pop()),
        _ => Err(ResolveError::Ambiguous {
            name: match key {
                Some(Key::Name(n)) => n.clone(),
                _ => describe(spec),
            },
            candidates: files,
        }),
    }
}

/// Whether a load of the file is in flight (claimed in the ledger by a
/// transaction that has not ended). By content: the ledger's unique key
/// tells (an insert of the same hash waits for that transaction; here it
/// gives up after 200 ms). By file id:
/// the file's cell points are pending. By name: the latest event of that
/// name says it started and a loader holds a file lock.
async fn loading(
    client: &mut Client,
    spec: &FileSpec,
    key: Option<&Key>,
) -> Result<bool, ResolveError> {
    match (spec, key) {
        (FileSpec::Id(id), _) => Ok(client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM cell_points_pending WHERE file_id = $1)",
                &[id],
            )
            .await
            .map_err(query_err("looking for a load in flight"))?
            .get(0)),
        (_, Some(Key::Hash(h))) => {
            let tx = client
                .transaction()
                .await
                .map_err(query_err("looking for a load in flight"))?;
            tx.batch_execute("SET LOCAL lock_timeout = '200ms'")
                .await
                .map_err(query_err("looking for a load in flight"))?;
            // Rolled back whatever happens: only the wait matters.
            let probe = tx
                .execute(
                    "INSERT INTO load_files (content_hash, file_name, size_bytes, loaded_by)
                     VALUES ($1, '', 0, 'tripload: probe for a load in flight')
                     ON CONFLICT (content_hash) DO NOTHING",
                    &[h],
                )
                .await;
            drop(tx);
            match probe {
                Ok(_) => Ok(false),
                Err(e)
                    if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) =>
                {
                    Ok(true)
                }
                Err(e) => Err(query_err("looking for a load in flight")(e).into()),
            }
        }
        (_, Some(Key::Name(n))) => Ok(client
            .query_one(
                "SELECT coalesce((SELECT kind IN ('claimed', 'started', 'progress')
                                  FROM ingestion_events WHERE file_name = $1
                                  ORDER BY id DESC LIMIT 1), false)
                        AND EXISTS (SELECT 1 FROM pg_locks
                                    WHERE locktype = 'advisory' AND classid = $2::int::oid)",
                &[n, &crate::analytics::points_writer::LOCK_CLASS],
            )
            .await
            .map_err(query_err("looking for a load in flight"))?
            .get(0)),
        (FileSpec::Text(_), None) => Ok(false),
    }
}

/// The error for a file that is not in the ledger, with close names.
async fn unknown(
    client: &Client,
    spec: &FileSpec,
    key: Option<&Key>,
) -> Result<ResolveError, ResolveError> {
    let names: Vec<String> = client
        .query(
            "SELECT DISTINCT file_name FROM load_files ORDER BY 1 LIMIT 100000",
            &[],
        )
        .await
        .map_err(query_err("reading the ledger's file names"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let close = match key {
        Some(Key::Name(n)) => close_names(n, &names, 5),
        _ => Vec::new(),
    };
    Ok(ResolveError::Unknown {
        what: describe(spec),
        close,
    })
}

/// Edit distance (Levenshtein, by characters).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The names of `names` closest to `name` (at most `max`, nearest first):
/// within a third of the name's length in edits (at least 3), or sharing its
/// stem (the name without extension) as a prefix.
pub fn close_names(name: &str, names: &[String], max: usize) -> Vec<String> {
    let limit = (name.chars().count() / 3).max(3);
    let stem = name.split('.').next().unwrap_or(name);
    let mut scored: Vec<(usize, &String)> = names
        .iter()
        .filter_map(|n| {
            let d = edit_distance(name, n);
            (d <= limit || (stem.len() >= 4 && n.starts_with(stem))).then_some((d, n))
        })
        .collect();
    scored.sort();
    scored
        .into_iter()
        .take(max)
        .map(|(_, n)| n.clone())
        .collect()
}

/// Who does it, for the ledger history and the events: the OS user and host
/// of this process and the database role.
pub async fn who(client: &impl tokio_postgres::GenericClient) -> Result<String, DbError> {
    let role: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .map_err(query_err("reading the database role"))?
        .get(0);
    let os_user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| format!("uid {}", unsafe { libc::getuid() }));
    Ok(format!(
        "{os_user}@{} (database role {role})",
        crate::notify::events::hostname()
    ))
}

/// The advisory lock (class, key) that lifecycle operations take
/// exclusively for their transaction, one at a time: each rewrites
/// compacted rollup rows that another would read.
pub const LOCK: (i32, i32) = (29812, 0);

/// Takes, for `tx`, the lifecycle lock and the compaction lock shared:
/// no compaction runs meanwhile (it takes that lock exclusively), while
/// loads, which hold it shared too, go on.
pub async fn lock(tx: &Transaction<'_>) -> Result<(), DbError> {
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2), pg_advisory_xact_lock_shared($3, $4)",
        &[
            &LOCK.0,
            &LOCK.1,
            &crate::analytics::compact::LOCK.0,
            &crate::analytics::compact::LOCK.1,
        ],
    )
    .await
    .map_err(query_err("waiting for the lifecycle and compaction locks"))?;
    Ok(())
}

/// Records `e` in `ingestion_events` and NOTIFYs it, inside `tx`: the event
/// exists exactly when what it reports committed.
pub async fn record_event(tx: &Transaction<'_>, e: &Event) -> Result<(), DbError> {
    let payload = serde_json::to_string(e).unwrap_or_else(|_| "{}".into());
    tx.execute(
        &format!(
            "WITH e AS (INSERT INTO ingestion_events (kind, file_name, payload)
                        VALUES ($1, $2, $3::text::jsonb) RETURNING id, payload)
             SELECT pg_notify('{CHANNEL}', (payload || jsonb_build_object('id', id))::text) FROM e"
        ),
        &[&e.event.as_str(), &e.file, &payload],
    )
    .await
    .map_err(query_err("recording the event"))?;
    Ok(())
}

/// An event of `kind` about `file` with `rows` trips and a reason.
pub fn event(kind: Kind, file: &str, rows: u64, seconds: f64, reason: String) -> Event {
    let mut e = Event::new(kind, file);
    e.rows = Some(rows);
    e.seconds = Some(seconds);
    e.reason = Some(reason);
    e
}

/// A `--dry-run`'s answer: what would go (exit 0), or why it cannot be
/// said (exit 1).
pub(crate) fn print_dry_run(plan: Result<String, impl std::fmt::Display>) -> u8 {
    match plan {
        Ok(text) => {
            println!("{text}");
            crate::exit::EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            crate::exit::EXIT_FILES_FAILED
        }
    }
}

/// The content hash of the regular file at `path`, opened without
/// following a link.
fn hash_file(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let mut h = crate::kernel::hash::ContentHash::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finish());
        }
        h.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("abc", "abc"), 0);
        assert_eq!(edit_distance("abc", "abd"), 1);
        assert_eq!(edit_distance("abc", "ab"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("é", "e"), 1);
    }

    #[test]
    fn close_names_are_near_ones_nearest_first() {
        let names: Vec<String> = [
            "trips-2018-05.csv",
            "trips-2018-06.csv",
            "other.csv",
            "trips-2018-05.v2.csv",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let c = close_names("trips-2018-5.csv", &names, 5);
        assert_eq!(c[0], "trips-2018-05.csv");
        assert!(!c.contains(&"other.csv".to_string()), "{c:?}");
        assert!(close_names("zzzzzzzzzzzz", &names, 5).is_empty());
    }

    #[test]
    fn hashes_are_told_from_names() {
        let h = "xxh3-128:0123456789abcdef0123456789ABCDEF";
        assert_eq!(
            as_hash(h).as_deref(),
            Some("xxh3-128:0123456789abcdef0123456789abcdef")
        );
        assert!(as_hash("0123456789abcdef0123456789abcdef").is_some());
        assert!(as_hash("trips.csv").is_none());
        assert_eq!(
            key_of("/nonexistent/dir/trips.csv").unwrap(),
            Key::Name("trips.csv".into())
        );
    }
}
