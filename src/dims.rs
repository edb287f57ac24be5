//! Dimension dictionaries: region and datasource names to the smallint ids
//! stored in `trips`.
//!
//! Workers look names up on every row, so the common case is a read-locked map
//! hit; a miss (a new name, a handful per file) goes to a resolver, which for a
//! real load inserts the name in its own autocommitted statement outside the
//! file's transaction: concurrent files then never wait on each other's names,
//! and a name left behind by a failed file is harmless.

use crate::encode::Dictionary;
use std::collections::HashMap;
use std::sync::RwLock;

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
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum DimError {
    #[error("could not register {dim} {name:?} in the database: {reason}")]
    Resolve {
        dim: &'static str,
        name: String,
        reason: String,
    },
    #[error("more than 32767 distinct {0}: the smallint dimension is full")]
    Full(&'static str),
}

/// Turns a new name into its id (and registers it where the ids live).
pub type Resolver = Box<dyn Fn(Dim, &str) -> Result<i16, DimError> + Send + Sync>;

pub struct Dims {
    maps: [RwLock<HashMap<String, i16>>; 2],
    resolver: Resolver,
}

impl Dims {
    /// `known` preloads names already in the database.
    pub fn new(known: Vec<(Dim, String, i16)>, resolver: Resolver) -> Self {
        let dims = Dims {
            maps: Default::default(),
            resolver,
        };
        for (dim, name, id) in known {
            if let Ok(mut m) = dims.maps[dim as usize].write() {
                m.insert(name, id);
            }
        }
        dims
    }

    /// A dictionary that numbers names in order of first sight, for benches and
    /// tests that encode without a database.
    pub fn in_memory() -> Self {
        let counters = [
            std::sync::atomic::AtomicI16::new(1),
            std::sync::atomic::AtomicI16::new(1),
        ];
        Dims::new(
            Vec::new(),
            Box::new(move |dim, _name| {
                let id = counters[dim as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if id <= 0 {
                    return Err(DimError::Full(dim.table()));
                }
                Ok(id)
            }),
        )
    }

    fn lookup(&self, dim: Dim, name: &str) -> Result<i16, DimError> {
        let map = &self.maps[dim as usize];
        if let Some(&id) = map.read().ok().as_ref().and_then(|m| m.get(name)) {
            return Ok(id);
        }
        // Hold the write lock while resolving so one name is resolved once.
        let mut m = map.write().map_err(|_| DimError::Resolve {
            dim: dim.table(),
            name: name.to_string(),
            reason: "dictionary lock poisoned by a panicked worker".into(),
        })?;
        if let Some(&id) = m.get(name) {
            return Ok(id);
        }
        let id = (self.resolver)(dim, name)?;
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

impl Dictionary for Dims {
    fn region_id(&self, name: &str) -> Result<i16, DimError> {
        self.lookup(Dim::Region, name)
    }
    fn datasource_id(&self, name: &str) -> Result<i16, DimError> {
        self.lookup(Dim::Datasource, name)
    }
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
    }
}
