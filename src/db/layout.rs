//! The time layout of `trips`: how the table is organised by `datetime`.
//!
//! This is the one place that knows the layouts. A new database gets the
//! first usable layout of [`TimeLayout::PREFERENCE`] (or the one its
//! `tripload.time_layout` setting names); migration 2
//! (`sql/migrations/002_time_layout.sql`) applies it and records it in
//! `tripload_settings`, and it never changes afterwards. COPY, the rollups
//! and the query functions read and write `trips` the same way in every
//! layout. Adding a layout is a variant here with its probe in
//! [`TimeLayout::usability`], and its branch in migration 2. The Citus
//! layout also distributes the tables (migration 7,
//! `sql/migrations/007_citus.sql`) and partitions `trips` by time
//! (migration 8). Each file makes the time slots its rows need (Citus
//! partitions, TimescaleDB chunks: [`TimeSlots`]) before its transaction.

use crate::db::{chunks, partitions, query_err, DbError};
use tokio_postgres::GenericClient;

/// How `trips` is laid out in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeLayout {
    /// A TimescaleDB hypertable on `datetime` (chunk exclusion by time).
    Hypertable,
    /// A plain table with a BRIN index on `datetime`.
    PlainBrin,
    /// A Citus distributed table (by `file_id`, co-located with the rollups;
    /// `sql/migrations/007_citus.sql`), range-partitioned on `datetime` by
    /// Citus's time partitions (`008_citus_time_partitions.sql`), with a
    /// BRIN index on `datetime` in every shard.
    Citus,
}

/// The server setting that names the layout for a new database, e.g.
/// `ALTER DATABASE trips SET tripload.time_layout = 'plain'` before the
/// first `tripload db migrate`; unset, the first usable layout is chosen.
/// Migration 2 reads the chosen layout from it (set for its transaction).
pub const SETTING: &str = "tripload.time_layout";

/// Whether a layout can be used in a database, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Usability {
    Usable,
    Unusable(String),
}

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{SETTING} is set to {0:?}, which is not a time layout\n  hint: use one of {names}", names = TimeLayout::names())]
    Unknown(String),
    #[error("{SETTING} asks for the {} layout, which this database cannot use: {reason}\n  hint: make it usable, or unset {SETTING}", .layout.name())]
    Unusable { layout: TimeLayout, reason: String },
}

impl TimeLayout {
    /// The layouts in the order a new database gets them.
    /// Citus first: a database where it is created asked for it (and
    /// TimescaleDB cannot share a database with it).
    pub const PREFERENCE: [TimeLayout; 3] = [
        TimeLayout::Citus,
        TimeLayout::Hypertable,
        TimeLayout::PlainBrin,
    ];

    /// The name recorded in `tripload_settings` and accepted by [`SETTING`].
    pub fn name(self) -> &'static str {
        match self {
            TimeLayout::Hypertable => "timescaledb",
            TimeLayout::PlainBrin => "plain",
            TimeLayout::Citus => "citus",
        }
    }

    pub fn from_name(name: &str) -> Option<TimeLayout> {
        Self::PREFERENCE.into_iter().find(|l| l.name() == name)
    }

    fn names() -> String {
        Self::PREFERENCE
            .map(|l| format!("'{}'", l.name()))
            .join(", ")
    }

    /// Whether this layout can be used in the database `client` is on.
    pub async fn usability(self, client: &impl GenericClient) -> Result<Usability, DbError> {
        match self {
            TimeLayout::PlainBrin => Ok(Usability::Usable),
            TimeLayout::Hypertable => timescaledb_usability(client).await,
            TimeLayout::Citus => citus_usability(client).await,
        }
    }

    /// The layout for a new database: the one [`SETTING`] names, else the
    /// first usable one.
    pub async fn choose(client: &impl GenericClient) -> Result<TimeLayout, DbError> {
        let asked: Option<String> = client
            .query_one("SELECT nullif(current_setting($1, true), '')", &[&SETTING])
            .await
            .map_err(query_err("reading the time layout setting"))?
            .get(0);
        if let Some(name) = asked {
            let layout =
                TimeLayout::from_name(name.trim()).ok_or(LayoutError::Unknown(name.clone()))?;
            return match layout.usability(client).await? {
                Usability::Usable => Ok(layout),
                Usability::Unusable(reason) => Err(LayoutError::Unusable { layout, reason }.into()),
            };
        }
        for layout in Self::PREFERENCE {
            match layout.usability(client).await? {
                Usability::Usable => return Ok(layout),
                Usability::Unusable(reason) => {
                    tracing::debug!("time layout {} not used: {reason}", layout.name())
                }
            }
        }
        Ok(TimeLayout::PlainBrin)
    }

    /// Passes this layout to migration 2, for the rest of the transaction
    /// `client` is in (the chunk interval: [`hand_chunk_interval`]).
    pub async fn hand_to_migration(self, client: &impl GenericClient) -> Result<(), DbError> {
        client
            .execute("SELECT set_config($1, $2, true)", &[&SETTING, &self.name()])
            .await
            .map_err(query_err("passing the time layout to its migration"))?;
        Ok(())
    }

    /// The layout migration 2 recorded (None before it ran).
    pub async fn recorded(client: &impl GenericClient) -> Result<Option<TimeLayout>, DbError> {
        let name: Option<String> = client
            .query_opt(
                "SELECT value FROM tripload_settings WHERE key = 'time_layout'",
                &[],
            )
            .await
            .map_err(query_err("reading the time layout"))?
            .map(|r| r.get(0));
        Ok(name.as_deref().and_then(TimeLayout::from_name))
    }
}

/// The time slots of `trips` (Citus partitions, TimescaleDB chunks) that a
/// file makes for its rows before its transaction, in a short transaction
/// of their own, so that no DDL runs inside a file's transaction (see
/// `ingest::partitions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSlots {
    /// Nothing to make: a plain table, or TimescaleDB under its `apache`
    /// license (no chunk API: each COPY makes the chunks its rows need).
    None,
    /// Citus time partitions ([`crate::db::partitions`]).
    Partitions,
    /// TimescaleDB chunks ([`crate::db::chunks`]).
    Chunks,
}

impl TimeSlots {
    /// The slots of the database `client` is on (migrated).
    pub async fn of(client: &impl GenericClient) -> Result<TimeSlots, DbError> {
        Ok(match TimeLayout::recorded(client).await? {
            Some(TimeLayout::Citus) if partitions::interval(client).await?.is_some() => {
                TimeSlots::Partitions
            }
            Some(TimeLayout::Hypertable) if chunks::api_available(client).await? => {
                TimeSlots::Chunks
            }
            Some(TimeLayout::Hypertable) => {
                tracing::warn!("TimescaleDB runs under its apache license, which has no chunk API: a file that needs a new chunk creates it in its transaction and holds up the other loaders that need one until it commits");
                TimeSlots::None
            }
            _ => TimeSlots::None,
        })
    }

    /// Creates the missing slots that hold `days` (days since 1970-01-01,
    /// UTC), committed before it returns; returns how many were created.
    pub async fn make(self, client: &impl GenericClient, days: &[i32]) -> Result<i32, DbError> {
        match self {
            TimeSlots::None => Ok(0),
            TimeSlots::Partitions => partitions::ensure(client, days).await,
            TimeSlots::Chunks => chunks::ensure(client, days).await,
        }
    }

    /// What one slot is called in messages.
    pub fn noun(self) -> &'static str {
        match self {
            TimeSlots::None => "time slots",
            TimeSlots::Partitions => "time partitions",
            TimeSlots::Chunks => "chunks",
        }
    }
}

/// Checks `--chunk-interval` on the server and passes it to the migrations
/// (2: the hypertable's chunks; 8: the Citus time partitions), for the rest
/// of the transaction `client` is in.
pub async fn hand_chunk_interval(
    client: &impl GenericClient,
    chunk_interval: &str,
) -> Result<(), DbError> {
    let interval: String = client
        .query_one("SELECT $1::text::interval::text", &[&chunk_interval])
        .await
        .map_err(query_err(format!(
            "checking --chunk-interval {chunk_interval:?} (use a PostgreSQL interval such as '7 days')"
        )))?
        .get(0);
    client
        .execute(
            "SELECT set_config('tripload.chunk_interval', $1, true)",
            &[&interval],
        )
        .await
        .map_err(query_err("passing the chunk interval to the migrations"))?;
    Ok(())
}

/// TimescaleDB is usable when it is already created in this database, or
/// available and preloaded (it cannot work without shared_preload_libraries).
async fn timescaledb_usability(client: &impl GenericClient) -> Result<Usability, DbError> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'),
                    EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'),
                    current_setting('shared_preload_libraries') LIKE '%timescaledb%'",
            &[],
        )
        .await
        .map_err(query_err("checking for TimescaleDB"))?;
    let (created, available, preloaded): (bool, bool, bool) = (row.get(0), row.get(1), row.get(2));
    Ok(if created || (available && preloaded) {
        Usability::Usable
    } else if available {
        tracing::warn!("timescaledb is installed but not in shared_preload_libraries: using a plain table with a BRIN index");
        Usability::Unusable(
            "TimescaleDB is installed but not in the server's shared_preload_libraries".into(),
        )
    } else {
        Usability::Unusable("TimescaleDB is not installed on the server".into())
    })
}

/// Whether the citus extension is created in the database `client` is on.
pub async fn citus_created(client: &impl GenericClient) -> Result<bool, DbError> {
    Ok(client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')",
            &[],
        )
        .await
        .map_err(query_err("checking for Citus"))?
        .get(0))
}

/// Citus is usable when it is created in this database and this node is
/// the coordinator (a worker's tables are shards, not loaded directly).
async fn citus_usability(client: &impl GenericClient) -> Result<Usability, DbError> {
    if !citus_created(client).await? {
        return Ok(Usability::Unusable(
            "the citus extension is not created in this database (CREATE EXTENSION citus)".into(),
        ));
    }
    let coordinator: bool = client
        .query_one("SELECT citus_is_coordinator()", &[])
        .await
        .map_err(query_err(
            "asking Citus whether this node is the coordinator",
        ))?
        .get(0);
    Ok(if coordinator {
        Usability::Usable
    } else {
        Usability::Unusable("this is a Citus worker: point DATABASE_URL at the coordinator".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_the_ones_migration_2_knows() {
        let sql = include_str!("../../sql/migrations/002_time_layout.sql");
        for layout in TimeLayout::PREFERENCE {
            assert_eq!(TimeLayout::from_name(layout.name()), Some(layout));
            assert!(
                sql.contains(&format!("WHEN '{}' THEN", layout.name())),
                "migration 2 has no branch for {}",
                layout.name()
            );
        }
        assert_eq!(TimeLayout::from_name("citus"), Some(TimeLayout::Citus));
        assert_eq!(TimeLayout::from_name("distributed"), None);
    }
}
