//! `tripload db`: migrate the schema, start/stop the embedded server, print
//! its URL, build the optional spatial indexes, compact the rollups.

use super::{print_dry_run, EXIT_FILES_FAILED, EXIT_OK, EXIT_SETUP};
use crate::db::Target;
use crate::lifecycle::retain::{self, OlderThan};
use clap::Subcommand;
use std::time::Instant;

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Create or upgrade the schema (also done automatically before a load).
    Migrate {
        /// TimescaleDB chunk interval for a new hypertable.
        #[arg(long, default_value = "7 days")]
        chunk_interval: String,
    },
    /// Start the embedded PostgreSQL server (initialising it on first use).
    Start,
    /// Stop the embedded PostgreSQL server.
    Stop,
    /// Print the connection string of the database in use (for psql). For
    /// the embedded database: its Unix socket, no password needed.
    Url {
        /// Embedded database: print a TCP URL instead (the server must listen
        /// there, see --pg-tcp); it names the password file (passfile=),
        /// never the password.
        #[arg(long)]
        tcp: bool,
    },
    /// Build optional indexes on trips. Each one slows every later load
    /// (its upkeep runs for every row COPY writes): build one only for what
    /// it speeds up.
    #[command(group(clap::ArgGroup::new("which").required(true).multiple(true).args(["spatial", "by_file"])))]
    Index {
        /// GiST indexes on origin and destination, for ad-hoc spatial SQL
        /// (`weekly` and `groups` do not need them).
        #[arg(long)]
        spatial: bool,
        /// A BRIN index on file_id, so that `unload` and `load --replace`
        /// find a file's trips without scanning the weeks it spans (worth it
        /// where files are unloaded or replaced often).
        #[arg(long)]
        by_file: bool,
    },
    /// Merge the rollup rows of small files (loaded since the last
    /// compaction) into compacted rows; loads and watch do this by themselves.
    Compact,
    /// Drop the trips older than a cut-off, rollups kept exact. The cut-off
    /// is rounded down to the Monday (00:00 UTC) that starts its week.
    Retain {
        /// A date (YYYY-MM-DD) or an interval back from now ('90 days', '6 months').
        #[arg(long, value_parser = OlderThan::parse)]
        older_than: OlderThan,
        /// Say what would be dropped; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

pub async fn run(cmd: DbCommand, target: Target) -> u8 {
    if let DbCommand::Retain {
        older_than,
        dry_run,
    } = &cmd
    {
        return match crate::db::prepare(&target, "7 days").await {
            Ok((conninfo, _)) => retain(&conninfo, older_than, *dry_run).await,
            Err(e) => {
                eprintln!("error: {e}");
                EXIT_SETUP
            }
        };
    }
    match db_command(cmd, target).await {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("error: {e:#}");
            EXIT_SETUP
        }
    }
}

/// `tripload db retain`: prints what went (or with `dry_run` what would);
/// returns the exit code.
async fn retain(conninfo: &str, older: &OlderThan, dry_run: bool) -> u8 {
    let start = Instant::now();
    let mut client = match crate::db::connect(conninfo).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_SETUP;
        }
    };
    let cut = match retain::cutoff(&client, older).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_SETUP;
        }
    };
    if dry_run {
        return print_dry_run(retain::plan(&client, &cut).await);
    }
    match retain::retain(&mut client, &cut, &older.text()).await {
        Ok(r) => {
            println!(
                "retained the trips from {cut} on: dropped {} trips ({} whole {}), deleted {} and cut {} rollup rows, in {:.2} s",
                r.trips,
                r.chunks,
                r.whole,
                r.rollup_rows_deleted,
                r.rollup_rows_cut,
                start.elapsed().as_secs_f64()
            );
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: retention before {}: {e}", cut.at.format("%Y-%m-%d"));
            EXIT_FILES_FAILED
        }
    }
}

/// `db index --spatial`.
const SPATIAL_INDEXES: &str =
    "CREATE INDEX IF NOT EXISTS trips_origin_gist ON trips USING gist (origin);
     CREATE INDEX IF NOT EXISTS trips_destination_gist ON trips USING gist (destination);
     ANALYZE trips;";

/// `db index --by-file`: COPY appends a file's rows together, so each range
/// of 128 pages holds one or a few file ids. autosummarize: ranges filled by
/// COPY are summarized by autovacuum soon after, not only at the next VACUUM
/// (an unsummarized range is read by every lookup). On a hypertable the
/// index is created on every chunk.
const BY_FILE_INDEX: &str =
    "CREATE INDEX IF NOT EXISTS trips_file_brin ON trips USING brin (file_id) WITH (autosummarize = on)";

async fn db_command(cmd: DbCommand, target: Target) -> anyhow::Result<()> {
    match cmd {
        DbCommand::Migrate { chunk_interval } => {
            let (conninfo, _) = crate::db::prepare(&target, &chunk_interval).await?;
            println!("schema is up to date at {}", crate::db::describe(&conninfo));
        }
        DbCommand::Start => {
            let conninfo = target.resolve().await?;
            println!("{conninfo}");
        }
        DbCommand::Stop => {
            let Some(dir) = target.embedded_dir() else {
                anyhow::bail!("DATABASE_URL is set: tripload only stops its own embedded server");
            };
            let dir = dir.to_path_buf();
            let stopped =
                tokio::task::spawn_blocking(move || crate::embedded::Embedded::stop(&dir))
                    .await??;
            println!("{}", if stopped { "stopped" } else { "not running" });
        }
        DbCommand::Index { spatial, by_file } => {
            let (conninfo, _) = crate::db::prepare(&target, "7 days").await?;
            let client = crate::db::connect(&conninfo).await?;
            for (wanted, sql, what) in [
                (
                    spatial,
                    SPATIAL_INDEXES,
                    "spatial indexes on trips(origin) and trips(destination)",
                ),
                (by_file, BY_FILE_INDEX, "BRIN index on trips(file_id)"),
            ] {
                if wanted {
                    let start = Instant::now();
                    client.batch_execute(sql).await?;
                    println!("{what} ready in {:.1} s", start.elapsed().as_secs_f64());
                }
            }
        }
        DbCommand::Compact => {
            let (conninfo, _) = crate::db::prepare(&target, "7 days").await?;
            let start = std::time::Instant::now();
            let c = crate::analytics::compact::compact(
                &conninfo,
                crate::analytics::compact::Policy::All,
                crate::analytics::compact::Wait::Yes,
            )
            .await?
            .unwrap_or_default();
            println!("{c} in {:.1} s", start.elapsed().as_secs_f64());
        }
        DbCommand::Retain { .. } => anyhow::bail!("db retain is run by its own arm"),
        DbCommand::Url { tcp: false } => {
            let conninfo = target.resolve().await?;
            println!("{conninfo}");
        }
        DbCommand::Url { tcp: true } => {
            let Target::Embedded { dir, tcp } = &target else {
                anyhow::bail!("--tcp is for the embedded database; DATABASE_URL is set");
            };
            let emb = crate::db::start_embedded(dir, *tcp).await?;
            let Some(url) = emb.tcp_url(crate::db::EMBEDDED_DB) else {
                anyhow::bail!(
                    "the embedded server does not listen on TCP; start it with --pg-tcp \
                     (or TRIPLOAD_PG_TCP=1), e.g. `tripload db start --pg-tcp`"
                );
            };
            println!("{url}");
        }
    }
    Ok(())
}
