//! Dimension dictionaries: region and datasource names to the smallint ids
//! stored in `trips`, and the rules that keep a failed file from filling them.
//!
//! Workers look names up on every row, so the common case is a read-locked map
//! hit in the process-wide [`DimStore`]; a miss goes to its [`Registry`],
//! which for a real load registers the name in its own autocommitted
//! statement outside the file's transaction, so concurrent files never wait
//! on each other's names.
//!
//! Since a registered name outlives its file's transaction, it is recorded as
//! *pending* (`registered_by` = the file's ledger id) until a file that uses
//! it commits ([`Dims::commit`], in that file's transaction). Pending names
//! belong to files that did not commit and are deleted by [`reclaim`] when no
//! load is in flight anywhere (every file holds a shared lock that
//! [`reclaim`] takes exclusively, without waiting); new ids are the smallest
//! free ones, so deleted ids are reused. Processes notice a reclaim through a
//! generation counter and reload their map before their next file. A file
//! may register at most `--max-new-names` names; over that it fails as the
//! file's fault ([`DimError::TooManyNew`]).

use crate::db::{self, query_err, DbError, Fault};
use crate::kernel::encode::Dictionary;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI16, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use tokio_postgres::error::SqlState;
use tokio_postgres::Transaction;

/// Advisory lock class of the dictionaries: key 0 is held shared by every
/// loading file and exclusively by [`reclaim`]; key 1 serializes the
/// allocation of new ids (in `tripload_dim_name`, sql/functions/dimensions.sql).
pub const LOCK_CLASS: i32 = 29811;

/// Default of `--max-new-names`.
pub const MAX_NEW_NAMES: u64 = 1000;

/// Ids are 1..=32767 (`smallint`).
const MAX_ID: usize = i16::MAX as usize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    Region,
    Datasource,
}

impl Dim {
    pub fn table(self) -> &'static str {
        match self {
            Dim::Region => "regions",
            Dim::Datasource => "datasources",
        }
    }
    fn noun(self) -> &'static str {
        match self {
            Dim::Region => "region",
            Dim::Datasource => "datasource",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum DimError {
    #[error("could not register {dim} {} in the database: {message}", db::clip(&format!("{name:?}")))]
    Resolve {
        dim: &'static str,
        name: String,
        /// The server's message with its SQLSTATE, and what to do.
        message: String,
        /// The server's SQLSTATE (None: no server error, e.g. a lost connection).
        code: Option<SqlState>,
    },
    #[error("the {0} dictionary is full: all 32767 ids are taken by names of committed files; this file needs a new one")]
    Full(&'static str),
    #[error("more than --max-new-names {limit} names new to the database in this file (the next was {dim} {}): a file brings a handful of new regions and datasources; if these are real, raise --max-new-names", db::clip(&format!("{name:?}")))]
    TooManyNew {
        limit: u64,
        dim: &'static str,
        name: String,
    },
}

impl DimError {
    /// Whose fault it is: a name the server refuses (SQLSTATE class 22, e.g.
    /// a NUL byte), too many new names or a full dictionary are the file's;
    /// a lost connection is not.
    pub fn fault(&self) -> Fault {
        match self {
            DimError::Resolve { code, .. } => db::fault_of_code(code.as_ref()),
            DimError::Full(_) | DimError::TooManyNew { .. } => Fault::Data,
        }
    }
}

/// Where the ids live: turns a name into its id, registering it for `file`
/// when `register` is true and the name is new. `Ok(None)`: not known and
/// not registered. The flag says whether this call registered it.
pub trait Registry: Send + Sync {
    fn resolve(
        &self,
        dim: Dim,
        name: &str,
        file: i32,
        register: bool,
    ) -> Result<Option<(i16, bool)>, DimError>;
}

/// Every name of both dimensions this process knows, shared by its files.
pub struct DimStore {
    maps: [RwLock<HashMap<String, i16>>; 2],
    registry: Box<dyn Registry>,
    /// The dictionary generation the maps reflect (None: not loaded yet).
    generation: tokio::sync::Mutex<Option<i64>>,
    max_new: u64,
}

/// One file's view of the dictionaries: counts the names it registers (at
/// most `max_new`) and remembers every id it uses, to keep them at COMMIT.
pub struct Dims {
    store: Arc<DimStore>,
    file_id: i32,
    registered: AtomicU64,
    used: [Vec<AtomicU64>; 2],
}

impl DimStore {
    pub fn new(registry: Box<dyn Registry>, max_new: u64) -> Self {
        DimStore {
            maps: Default::default(),
            registry,
            generation: tokio::sync::Mutex::new(None),
            max_new,
        }
    }

    /// Starts `file_id`'s use of the dictionaries inside its transaction:
    /// takes the shared lock that keeps [`reclaim`] away until COMMIT or
    /// rollback, then reloads the names if a reclaim happened since they were
    /// read.
    pub async fn begin_file(
        self: &Arc<Self>,
        tx: &Transaction<'_>,
        file_id: i32,
    ) -> Result<Arc<Dims>, DbError> {
        tx.execute("SELECT pg_advisory_xact_lock_shared($1, 0)", &[&LOCK_CLASS])
            .await
            .map_err(query_err("locking the dimension dictionaries"))?;
        // A statement of its own: its snapshot follows the lock.
        let now: i64 = tx
            .query_one("SELECT generation FROM tripload_dim_generation", &[])
            .await
            .map_err(query_err("reading the dictionary generation"))?
            .get(0);
        let mut seen = self.generation.lock().await;
        if *seen != Some(now) {
            for dim in [Dim::Region, Dim::Datasource] {
                let rows = tx
                    .query(&format!("SELECT name, id FROM {}", dim.table()), &[])
                    .await
                    .map_err(query_err("reading dimension names"))?;
                let fresh: HashMap<String, i16> =
                    rows.iter().map(|r| (r.get(0), r.get(1))).collect();
                if let Ok(mut m) = self.maps[dim as usize].write() {
                    *m = fresh;
                }
            }
            *seen = Some(now);
        }
        Ok(Arc::new(Dims::for_file(Arc::clone(self), file_id)))
    }

    fn lookup(&self, file: &Dims, dim: Dim, name: &str) -> Result<i16, DimError> {
        let map = &self.maps[dim as usize];
        if let Some(&id) = map.read().ok().as_ref().and_then(|m| m.get(name)) {
            return Ok(id);
        }
        let err = |message: &str| DimError::Resolve {
            dim: dim.noun(),
            name: name.to_string(),
            message: message.to_string(),
            code: None,
        };
        // Hold the write lock while resolving so one name is resolved once.
        let mut m = map
            .write()
            .map_err(|_| err("dictionary lock poisoned by a panicked worker"))?;
        if let Some(&id) = m.get(name) {
            return Ok(id);
        }
        // Reserve one of the file's new names before asking; give it back
        // when the name turns out to be known.
        let may_register = file.registered.fetch_add(1, Ordering::SeqCst) < self.max_new;
        let resolved = self.registry.resolve(dim, name, file.file_id, may_register);
        let (id, registered) = match resolved {
            Ok(Some(found)) => found,
            Ok(None) => {
                file.registered.fetch_sub(1, Ordering::SeqCst);
                return Err(DimError::TooManyNew {
                    limit: self.max_new,
                    dim: dim.noun(),
                    name: name.to_string(),
                });
            }
            Err(e) => {
                file.registered.fetch_sub(1, Ordering::SeqCst);
                return Err(e);
            }
        };
        if !registered {
            file.registered.fetch_sub(1, Ordering::SeqCst);
        }
        m.insert(name.to_string(), id);
        Ok(id)
    }

    /// Every name known so far with its id.
    pub fn snapshot(&self, dim: Dim) -> Vec<(String, i16)> {
        self.maps[dim as usize]
            .read()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default()
    }
}

impl Dims {
    fn for_file(store: Arc<DimStore>, file_id: i32) -> Self {
        let words = MAX_ID / 64 + 1;
        let bits = || (0..words).map(|_| AtomicU64::new(0)).collect();
        Dims {
            store,
            file_id,
            registered: AtomicU64::new(0),
            used: [bits(), bits()],
        }
    }

    /// A dictionary that numbers names in order of first sight, for benches and
    /// tests that encode without a database.
    pub fn in_memory() -> Self {
        Self::in_memory_capped(u64::MAX)
    }

    /// [`Dims::in_memory`] that registers at most `max_new` names.
    pub fn in_memory_capped(max_new: u64) -> Self {
        let store = DimStore::new(Box::new(Counter::default()), max_new);
        Dims::for_file(Arc::new(store), 0)
    }

    /// Names this file registered (new to the database).
    pub fn registered(&self) -> u64 {
        self.registered.load(Ordering::SeqCst)
    }

    fn lookup(&self, dim: Dim, name: &str) -> Result<i16, DimError> {
        let id = self.store.lookup(self, dim, name)?;
        if let Some(word) = self.used[dim as usize].get(id as usize / 64) {
            word.fetch_or(1 << (id as usize % 64), Ordering::Relaxed);
        }
        Ok(id)
    }

    /// The ids this file used.
    pub fn used(&self, dim: Dim) -> Vec<i16> {
        let mut ids = Vec::new();
        for (w, word) in self.used[dim as usize].iter().enumerate() {
            let mut bits = word.load(Ordering::Relaxed);
            while bits != 0 {
                let b = bits.trailing_zeros() as usize;
                ids.push((w * 64 + b) as i16);
                bits &= bits - 1;
            }
        }
        ids
    }

    /// In the file's transaction, just before COMMIT: the pending names it
    /// used become permanent (in id order, so two committing files cannot
    /// deadlock; a file waits only for another's COMMIT of the same new name).
    /// A file that used no pending name writes nothing: on Citus a write to
    /// the (reference) dimension tables is serialized across loaders until
    /// COMMIT, so the common file only reads them.
    pub async fn commit(&self, tx: &Transaction<'_>) -> Result<(), DbError> {
        for dim in [Dim::Region, Dim::Datasource] {
            let ids = self.used(dim);
            let t = dim.table();
            if ids.is_empty() || !any_pending(tx, t, &ids).await? {
                continue;
            }
            tx.execute(
                &format!(
                    "UPDATE {t} SET registered_by = NULL WHERE id IN (
                         SELECT id FROM {t} WHERE id = ANY($1) AND registered_by IS NOT NULL
                         ORDER BY id FOR UPDATE)"
                ),
                &[&ids],
            )
            .await
            .map_err(query_err(format!("keeping the file's new {t}")))?;
        }
        Ok(())
    }
}

/// Whether any of `ids` in dimension table `t` is still pending.
async fn any_pending(tx: &Transaction<'_>, t: &str, ids: &[i16]) -> Result<bool, DbError> {
    let row = tx
        .query_one(
            &format!("SELECT EXISTS (SELECT 1 FROM {t} WHERE id = ANY($1) AND registered_by IS NOT NULL)"),
            &[&ids],
        )
        .await
        .map_err(query_err(format!("reading the file's pending {t}")))?;
    Ok(row.get(0))
}

impl Dictionary<DimError> for Dims {
    fn region_id(&self, name: &str) -> Result<i16, DimError> {
        self.lookup(Dim::Region, name)
    }
    fn datasource_id(&self, name: &str) -> Result<i16, DimError> {
        self.lookup(Dim::Datasource, name)
    }
}

/// Ids in order of first sight, per dimension (no database).
#[derive(Default)]
struct Counter {
    next: [AtomicI16; 2],
}

impl Registry for Counter {
    fn resolve(
        &self,
        dim: Dim,
        _name: &str,
        _file: i32,
        register: bool,
    ) -> Result<Option<(i16, bool)>, DimError> {
        if !register {
            return Ok(None);
        }
        let id = self.next[dim as usize].fetch_add(1, Ordering::Relaxed) + 1;
        if id <= 0 {
            return Err(DimError::Full(dim.table()));
        }
        Ok(Some((id, true)))
    }
}

/// Registers names through a connection of its own (autocommit), via
/// `tripload_dim_name` (sql/functions/dimensions.sql): the smallest free id, recorded as pending
/// for the registering file.
pub struct DbRegistry {
    client: std::sync::Mutex<Arc<tokio_postgres::Client>>,
    conninfo: String,
    handle: tokio::runtime::Handle,
}

impl DbRegistry {
    pub async fn connect(conninfo: &str) -> Result<Self, DbError> {
        Ok(DbRegistry {
            client: std::sync::Mutex::new(Arc::new(db::connect(conninfo).await?)),
            conninfo: conninfo.to_string(),
            handle: tokio::runtime::Handle::current(),
        })
    }

    fn client(&self) -> Result<Arc<tokio_postgres::Client>, String> {
        let mut guard = self
            .client
            .lock()
            .map_err(|_| "dimension connection lock poisoned".to_string())?;
        if guard.is_closed() {
            // The database went away and came back (a long-running watcher).
            let fresh = self
                .handle
                .block_on(db::connect(&self.conninfo))
                .map_err(|e| e.to_string())?;
            *guard = Arc::new(fresh);
        }
        Ok(Arc::clone(&guard))
    }
}

impl Registry for DbRegistry {
    fn resolve(
        &self,
        dim: Dim,
        name: &str,
        file: i32,
        register: bool,
    ) -> Result<Option<(i16, bool)>, DimError> {
        let t = dim.table();
        let client = self.client().map_err(|message| DimError::Resolve {
            dim: dim.noun(),
            name: name.to_string(),
            message,
            code: None,
        })?;
        let row = self
            .handle
            .block_on(async {
                client
                    .query_opt(
                        "SELECT id, inserted FROM tripload_dim_name($1, $2, $3, $4)",
                        &[&t, &name, &file, &register],
                    )
                    .await
            })
            .map_err(|e| DimError::Resolve {
                dim: dim.noun(),
                name: name.to_string(),
                message: format!("{} ({})", db::error_text(&e), db::advice(&e)),
                code: e.code().cloned(),
            })?;
        let Some(row) = row else {
            return Ok(None);
        };
        match row.get::<_, Option<i16>>(0) {
            Some(id) => Ok(Some((id, row.get(1)))),
            None => Err(DimError::Full(t)),
        }
    }
}

/// The dictionaries for a load, registering new names through a dedicated
/// autocommit connection; the names are read before each file.
pub async fn from_database(conninfo: &str, max_new: u64) -> Result<DimStore, DbError> {
    let registry = DbRegistry::connect(conninfo).await?;
    Ok(DimStore::new(Box::new(registry), max_new))
}

/// Deletes the pending names (those of files that did not commit), if no
/// file is loading anywhere right now; `tries` attempts 50 ms apart. Returns
/// how many names were deleted.
pub async fn reclaim(conninfo: &str, tries: u32) -> Result<u64, DbError> {
    let mut client = db::connect(conninfo).await?;
    for attempt in 0..tries.max(1) {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let tx = client
            .transaction()
            .await
            .map_err(query_err("starting to reclaim names"))?;
        let idle: bool = tx
            .query_one("SELECT pg_try_advisory_xact_lock($1, 0)", &[&LOCK_CLASS])
            .await
            .map_err(query_err("locking the dimension dictionaries"))?
            .get(0);
        if !idle {
            continue;
        }
        let mut deleted = 0;
        for dim in [Dim::Region, Dim::Datasource] {
            deleted += tx
                .execute(
                    &format!(
                        "DELETE FROM {} WHERE registered_by IS NOT NULL",
                        dim.table()
                    ),
                    &[],
                )
                .await
                .map_err(query_err("deleting names of files that did not commit"))?;
        }
        if deleted > 0 {
            tx.execute(
                "UPDATE tripload_dim_generation SET generation = generation + 1",
                &[],
            )
            .await
            .map_err(query_err("recording the reclaimed names"))?;
        }
        tx.commit()
            .await
            .map_err(query_err("committing the reclaimed names"))?;
        if deleted > 0 {
            tracing::info!("deleted {deleted} name(s) registered by files that did not commit");
        }
        return Ok(deleted);
    }
    tracing::debug!("names of failed files are kept for now: other files are loading");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_memory_assigns_stable_ids_per_dimension() {
        let d = Dims::in_memory();
        assert_eq!(d.region_id("Prague").unwrap(), 1);
        assert_eq!(d.region_id("Turin").unwrap(), 2);
        assert_eq!(d.region_id("Prague").unwrap(), 1);
        assert_eq!(d.datasource_id("cheap_mobile").unwrap(), 1);
        assert_eq!(d.used(Dim::Region), vec![1, 2]);
    }

    #[test]
    fn a_file_registers_at_most_its_cap_of_new_names() {
        let d = Dims::in_memory_capped(2);
        d.region_id("a").unwrap();
        d.datasource_id("b").unwrap();
        // Known names stay free of charge.
        assert_eq!(d.region_id("a").unwrap(), 1);
        let e = d.region_id("c").unwrap_err();
        assert!(matches!(e, DimError::TooManyNew { limit: 2, .. }), "{e}");
        assert_eq!(e.fault(), Fault::Data);
        assert!(e.to_string().contains("--max-new-names 2"), "{e}");
        assert_eq!(d.registered(), 2);
    }

    #[test]
    fn refused_names_are_the_files_fault_and_lost_connections_are_not() {
        let refused = DimError::Resolve {
            dim: "region",
            name: "a\0b".into(),
            message: "ERROR: invalid byte sequence [SQLSTATE 22021]".into(),
            code: Some(SqlState::CHARACTER_NOT_IN_REPERTOIRE),
        };
        assert_eq!(refused.fault(), Fault::Data);
        // The name is shown escaped.
        assert!(refused.to_string().contains("a\\0b"), "{refused}");
        let lost = DimError::Resolve {
            dim: "regions",
            name: "a".into(),
            message: "connection closed".into(),
            code: None,
        };
        assert_eq!(lost.fault(), Fault::Environment);
        let disk = DimError::Resolve {
            dim: "regions",
            name: "a".into(),
            message: "could not extend file".into(),
            code: Some(SqlState::DISK_FULL),
        };
        assert_eq!(disk.fault(), Fault::Environment);
    }
}
