//! The schema: numbered migrations (`sql/migrations/`), each applied once and
//! recorded in `tripload_schema`, then the functions (`sql/functions/`),
//! replaced on every migrate so that they follow the binary. `load`,
//! `watch` and `db` commands migrate ([`migrate`]); the read-only commands
//! (`status`, `weekly`, `groups`) only check ([`open_for_reading`]) and work
//! with SELECT on the tables and EXECUTE on the functions.

use crate::db::layout::TimeLayout;
use crate::db::{connect, describe, query_err, DbError, Target};
use tokio_postgres::{Client, GenericClient};

/// One schema version. Its name is recorded with it: a database whose
/// record differs was created by another build (see [`SchemaError::Foreign`]).
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    sql: &'static str,
}

/// Every migration, in order: version n is `MIGRATIONS[n - 1]`.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "core",
        sql: include_str!("../../sql/migrations/001_core.sql"),
    },
    Migration {
        version: TIME_LAYOUT_VERSION,
        name: "time layout",
        sql: include_str!("../../sql/migrations/002_time_layout.sql"),
    },
    Migration {
        version: 3,
        name: "ingestion events",
        sql: include_str!("../../sql/migrations/003_events.sql"),
    },
    Migration {
        version: 4,
        name: "rollups",
        sql: include_str!("../../sql/migrations/004_rollups.sql"),
    },
    Migration {
        version: 5,
        name: "cell points",
        sql: include_str!("../../sql/migrations/005_cell_points.sql"),
    },
    Migration {
        version: 6,
        name: "lifecycle: unload, replace, retain",
        sql: include_str!("../../sql/migrations/006_lifecycle.sql"),
    },
    Migration {
        version: 7,
        name: "citus: distributed tables",
        sql: include_str!("../../sql/migrations/007_citus.sql"),
    },
    Migration {
        version: 8,
        name: "citus: time partitions of trips",
        sql: include_str!("../../sql/migrations/008_citus_time_partitions.sql"),
    },
    Migration {
        version: 9,
        name: "citus: dimensions as reference tables",
        sql: include_str!("../../sql/migrations/009_citus_reference_dimensions.sql"),
    },
];

/// The migration that applies the [`TimeLayout`].
const TIME_LAYOUT_VERSION: i32 = 2;

/// The functions, in the order they are created (a SQL function's body
/// must name functions that exist).
const FUNCTIONS: &[(&str, &str)] = &[
    ("settings", include_str!("../../sql/functions/settings.sql")),
    (
        "dimensions",
        include_str!("../../sql/functions/dimensions.sql"),
    ),
    (
        "cell points",
        include_str!("../../sql/functions/cell_points.sql"),
    ),
    ("weekly", include_str!("../../sql/functions/weekly.sql")),
    ("groups", include_str!("../../sql/functions/groups.sql")),
    ("chunks", include_str!("../../sql/functions/chunks.sql")),
];

/// The schema version this build creates.
pub fn latest() -> i32 {
    MIGRATIONS.len() as i32
}

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("the database at {target} has no tripload schema\n  hint: run `tripload db migrate` (as a role that may create tables) to create it")]
    Missing { target: String },
    #[error("the database at {target} has schema version {have}; this tripload needs version {want}\n  hint: run `tripload db migrate` (as a role that may alter the tables) to upgrade it")]
    Behind {
        target: String,
        have: i32,
        want: i32,
    },
    #[error("the database at {target} has schema version {have}, newer than this tripload's {want}\n  hint: use the tripload build that created it, or a newer one")]
    Newer {
        target: String,
        have: i32,
        want: i32,
    },
    #[error("the database at {target} was created by a pre-release build of tripload (its schema version {version} is {found:?}, this build's is {expected:?})\n  hint: recreate the database (dropdb/createdb, or a new --pg-dir) and load the files again")]
    Foreign {
        target: String,
        version: i32,
        found: String,
        expected: String,
    },
}

/// What `tripload_schema` says, compared with [`MIGRATIONS`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// No `tripload_schema` table.
    Absent,
    /// Versions 1..=have applied, all of them this build's.
    At { have: i32 },
    /// A recorded version is not this build's (another name, or a gap).
    Foreign {
        version: i32,
        found: String,
        expected: String,
    },
}

/// Compares the recorded `(version, name)` rows, in version order, with
/// [`MIGRATIONS`]: they must be its first versions; versions past the
/// last one are a newer build's.
fn compare(recorded: &[(i32, String)]) -> State {
    for (i, (version, found)) in recorded.iter().enumerate() {
        let expected = i as i32 + 1;
        let ours = MIGRATIONS.get(i);
        if *version != expected {
            return State::Foreign {
                version: expected,
                found: "missing".into(),
                expected: ours.map_or("", |m| m.name).into(),
            };
        }
        if let Some(m) = ours.filter(|m| m.name != found) {
            return State::Foreign {
                version: *version,
                found: found.clone(),
                expected: m.name.into(),
            };
        }
    }
    State::At {
        have: recorded.len() as i32,
    }
}

async fn state(client: &impl GenericClient) -> Result<State, DbError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('tripload_schema') IS NOT NULL", &[])
        .await
        .map_err(query_err("looking for the schema version table"))?
        .get(0);
    if !exists {
        return Ok(State::Absent);
    }
    let recorded: Vec<(i32, String)> = client
        .query(
            "SELECT version, name FROM tripload_schema ORDER BY version",
            &[],
        )
        .await
        .map_err(query_err("reading the schema version"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    Ok(compare(&recorded))
}

/// Connects for a read-only command: the schema must be this build's (or
/// newer), else the error says to run `tripload db migrate`. Creates
/// nothing in the database. Returns the connection string.
pub async fn open_for_reading(target: &Target) -> Result<String, DbError> {
    let conninfo = target.resolve().await?;
    let client = connect(&conninfo).await?;
    let target = describe(&conninfo);
    let want = latest();
    match state(&client).await? {
        State::Absent | State::At { have: 0 } => Err(SchemaError::Missing { target }.into()),
        State::At { have } if have < want => Err(SchemaError::Behind { target, have, want }.into()),
        State::At { .. } => Ok(conninfo),
        State::Foreign {
            version,
            found,
            expected,
        } => Err(SchemaError::Foreign {
            target,
            version,
            found,
            expected,
        }
        .into()),
    }
}

/// Applies pending migrations and (re)creates the functions, in one
/// transaction; safe to run concurrently from several loaders.
/// `chunk_interval` (e.g. "7 days") is used when a hypertable or the Citus
/// time partitions are created.
pub async fn migrate(client: &mut Client, chunk_interval: &str) -> Result<TimeLayout, DbError> {
    require_postgis(client).await?;
    let target = "the database".to_string();
    let tx = client
        .transaction()
        .await
        .map_err(query_err("starting the migration transaction"))?;
    tx.batch_execute(
        "SELECT pg_advisory_xact_lock(hashtext('tripload-migrate'));
         CREATE TABLE IF NOT EXISTS tripload_schema (
             version    integer PRIMARY KEY,
             name       text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now());",
    )
    .await
    .map_err(query_err("creating the schema version table"))?;
    let want = latest();
    let have = match state(&tx).await? {
        State::At { have } if have > want => {
            return Err(SchemaError::Newer { target, have, want }.into())
        }
        State::At { have } => have,
        State::Absent => 0,
        State::Foreign {
            version,
            found,
            expected,
        } => {
            return Err(SchemaError::Foreign {
                target,
                version,
                found,
                expected,
            }
            .into())
        }
    };
    if have < want {
        crate::db::layout::hand_chunk_interval(&tx, chunk_interval).await?;
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > have) {
        if m.version == TIME_LAYOUT_VERSION {
            TimeLayout::choose(&tx)
                .await?
                .hand_to_migration(&tx)
                .await?;
        }
        tx.batch_execute(m.sql).await.map_err(query_err(format!(
            "applying migration {} ({})",
            m.version, m.name
        )))?;
        tx.execute(
            "INSERT INTO tripload_schema (version, name) VALUES ($1, $2)",
            &[&m.version, &m.name],
        )
        .await
        .map_err(query_err(format!("recording migration {}", m.version)))?;
    }
    for (name, sql) in FUNCTIONS {
        tx.batch_execute(sql)
            .await
            .map_err(query_err(format!("creating the {name} functions")))?;
    }
    let layout = TimeLayout::recorded(&tx)
        .await?
        .unwrap_or(TimeLayout::PlainBrin);
    tx.commit()
        .await
        .map_err(query_err("committing migrations"))?;
    Ok(layout)
}

/// PostGIS must be installed on the server (migration 1 creates it).
async fn require_postgis(client: &Client) -> Result<(), DbError> {
    let postgis: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'postgis')",
            &[],
        )
        .await
        .map_err(query_err("checking for PostGIS"))?
        .get(0);
    if postgis {
        return Ok(());
    }
    let major: String = client
        .query_one("SELECT current_setting('server_version_num')", &[])
        .await
        .map_err(query_err("reading the server version"))?
        .get(0);
    Err(DbError::NoPostgis {
        target: "the database".into(),
        major: major.get(..2).unwrap_or("15").to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_consecutive_from_one() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1, "{}", m.name);
        }
    }

    #[test]
    fn a_record_of_another_build_is_told_from_an_older_one() {
        let ours = |n: usize| -> Vec<(i32, String)> {
            MIGRATIONS[..n]
                .iter()
                .map(|m| (m.version, m.name.to_string()))
                .collect()
        };
        assert_eq!(compare(&[]), State::At { have: 0 });
        assert_eq!(compare(&ours(2)), State::At { have: 2 });
        assert_eq!(
            compare(&ours(MIGRATIONS.len())),
            State::At { have: latest() }
        );
        let mut newer = ours(MIGRATIONS.len());
        newer.push((latest() + 1, "later".into()));
        assert_eq!(compare(&newer), State::At { have: latest() + 1 });
        // The pre-release record: version 2 named by its layout, a gap at 5.
        let old = vec![
            (1, "core".to_string()),
            (2, "time layout: timescaledb hypertable".to_string()),
            (3, "ingestion events".to_string()),
        ];
        assert!(matches!(compare(&old), State::Foreign { version: 2, .. }));
        let gap = vec![(1, "core".to_string()), (3, "ingestion events".to_string())];
        assert!(matches!(compare(&gap), State::Foreign { version: 2, .. }));
    }

    #[test]
    fn every_migration_and_function_file_is_compiled_in() {
        let dir = |d: &str| -> Vec<String> {
            let mut names: Vec<String> =
                std::fs::read_dir(format!("{}/sql/{d}", env!("CARGO_MANIFEST_DIR")))
                    .unwrap()
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect();
            names.sort();
            names
        };
        let migrations = dir("migrations");
        assert_eq!(migrations.len(), MIGRATIONS.len());
        for (file, m) in migrations.iter().zip(MIGRATIONS) {
            assert!(file.starts_with(&format!("{:03}_", m.version)), "{file}");
        }
        assert_eq!(dir("functions").len(), FUNCTIONS.len());
    }
}
