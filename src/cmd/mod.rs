//! The command line: one file per subcommand, each holding its arguments
//! (clap) and its `run`, which checks them into the configuration that drives
//! the work and maps the outcome to an exit code.
//!
//! ```text
//! main ─▶ Cli::parse ─▶ cmd::run ─▶ load | watch | status | weekly | groups | db | gen
//!                                    │      │       └──── analytics / notify ───┘
//!                                    └──────┴─▶ ingest (the file's transaction)
//! ```
//! This module holds the top-level [`Cli`], the [`Command`] enum, the
//! options every subcommand shares ([`DbArgs`]) and the exit codes.

pub mod db;
pub mod gen;
pub mod groups;
pub mod load;
pub mod serve;
pub mod status;
pub mod unload;
pub mod watch;
pub mod weekly;

use crate::db::Target;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

pub use crate::exit::{EXIT_ABORTED, EXIT_FILES_FAILED, EXIT_LOADING, EXIT_OK, EXIT_SETUP};

const EXIT_CODES: &str = "\
Exit codes:
  0  every file loaded (or was already loaded)
  1  at least one file failed (moved to failed/ with <file>.error.txt) or was left in place after a database error
  2  usage or configuration error (e.g. a region without trips), or the database could not be reached/prepared (status, weekly, groups: the schema is missing or behind, run `tripload db migrate`); no file was touched
     (unload, load --replace: the file named is not loaded; close names are listed)
  3  unload, load --replace: the file named is still loading (not committed yet); nothing was changed
  130  watch: aborted by a second SIGINT/SIGTERM (files in flight rolled back and returned to landing)

Database: with DATABASE_URL (or --database-url) set, tripload uses that database. Without it, it runs an embedded PostgreSQL cluster in data/pg (--pg-dir), initialised and started on first use and left running (stop it with `tripload db stop`).";

/// Bulk-load vehicle trip CSV files into PostgreSQL/PostGIS, one transaction per file.
///
/// Each file is memory-mapped, split at record boundaries, parsed and validated
/// in parallel, and streamed with binary COPY into the `trips` table in a single
/// transaction together with its ledger row: a file is loaded completely and
/// exactly once, or not at all. Bad rows are written to <file>.rejects.csv with
/// their line number, column and reason.
#[derive(Debug, Parser)]
#[command(name = "tripload", version, after_help = EXIT_CODES, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct DbArgs {
    /// PostgreSQL connection string (postgresql://user:pass@host:port/db or
    /// 'host=... dbname=...'); unset means the embedded database.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// Directory of the embedded PostgreSQL cluster (used when no DATABASE_URL).
    #[arg(
        long,
        env = "TRIPLOAD_PG_DIR",
        default_value = "data/pg",
        global = true
    )]
    pub pg_dir: PathBuf,
    /// Embedded database: also listen on TCP 127.0.0.1 (password only; it is
    /// generated and kept in <pg-dir>/tripload-tcp.pgpass, mode 0600; see
    /// `tripload db url --tcp`). Without it, only the Unix socket, which only
    /// the user running tripload can reach.
    #[arg(long, env = "TRIPLOAD_PG_TCP", global = true)]
    pub pg_tcp: bool,
}

impl DbArgs {
    pub fn target(&self) -> Target {
        match &self.database_url {
            Some(u) if !u.trim().is_empty() => Target::Url(u.clone()),
            _ => Target::Embedded {
                dir: self.pg_dir.clone(),
                tcp: self.pg_tcp,
            },
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load trip CSV files (or every file in the given directories) now.
    ///
    /// Loaded files move to processed/ and failed ones to failed/, both beside
    /// the directory the file was in (data/landing -> data/processed) unless
    /// --processed-dir/--failed-dir say otherwise.
    ///
    /// The analytics rollups are written in the same transaction. For a file
    /// over 48 MiB the exact coordinates they keep (cell points) are spilled
    /// to temporary files in $TMPDIR (default /tmp), about half the file's
    /// size, deleted when the file ends.
    #[command(after_help = EXIT_CODES)]
    Load(load::LoadArgs),
    /// Watch the landing directory and load files as they arrive (inotify; no polling).
    ///
    /// Writers should copy to a temporary name (*.part, *.tmp or a dotfile) and
    /// rename into the directory: such files are taken at once. Files written in
    /// place are taken once their size and mtime stay unchanged for
    /// --quiet-period seconds. Several watchers may share a directory: each file
    /// is claimed by an atomic rename into processing/. SIGINT/SIGTERM: stop
    /// taking files, finish those in flight, store the last events, exit 0; a
    /// second signal returns them to landing (their transactions roll back)
    /// and exits at once with code 130.
    #[command(after_help = EXIT_CODES)]
    Watch(watch::WatchArgs),
    /// Manage the database: migrate the schema, start/stop the embedded server.
    #[command(subcommand)]
    Db(db::DbCommand),
    /// Show how ingestion goes: the latest state of recent files, or with
    /// --follow every event live (LISTEN/NOTIFY on channel `tripload_events`).
    Status(status::StatusArgs),
    /// Per-week trip counts and the weekly average for a region or a bounding box.
    ///
    /// A trip is in the area when its origin (--by origin, default), its
    /// destination, or both lie in it; box edges are inclusive. Weeks are ISO
    /// weeks (Monday 00:00 UTC); the window defaults to the weeks that have data
    /// in the dataset, and weeks without matching trips count as zero.
    ///
    /// Answered from rollups maintained at load time, exactly: milliseconds for
    /// a region or a box by origin/destination. --by both scans the trips
    /// (seconds on 100M rows; `tripload db index --spatial` helps small boxes).
    Weekly(weekly::WeeklyArgs),
    /// Trip groups, largest first: trips with the same region, origin cell,
    /// destination cell and time-of-day bucket.
    ///
    /// Cells are a lon/lat grid: cell (ix, iy) = (floor(lon / CELL), floor(lat /
    /// CELL)), printed as their south-west corner; the default 0.01° is about
    /// 1.1 km north-south and 0.7 km east-west at 50°N. Time of day is in UTC,
    /// in buckets of --bucket-minutes from midnight. Computed from the raw trips
    /// (a full scan, or the trips of one region / box): seconds on 100M rows.
    Groups(groups::GroupsArgs),
    /// Generate a realistic synthetic trip CSV (for tests and benchmarks).
    Gen(gen::GenArgs),
    /// Remove one loaded file: its trips, its rollups (also once compacted)
    /// and its ledger row (kept in load_files_removed), in one transaction,
    /// so that the same bytes can be loaded again.
    ///
    /// FILE is the file itself (its content is hashed), its content hash, or
    /// the name it was loaded under; or give --file-id.
    #[command(after_help = EXIT_CODES)]
    Unload(unload::UnloadArgs),
    /// Serve the HTTP API (weekly, groups, files, cells, live events, metrics)
    /// and the dashboard at http://127.0.0.1:8080/.
    Serve(serve::ServeArgs),
}

/// Runs a parsed command line to its exit code (used by `main.rs`): logging,
/// the async runtime, the subcommand.
pub fn run(cli: Cli) -> ExitCode {
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_SETUP);
        }
    };
    ExitCode::from(runtime.block_on(dispatch(cli)))
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TRIPLOAD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// The subcommand's `run`.
async fn dispatch(cli: Cli) -> u8 {
    let target = cli.db.target();
    match cli.command {
        Command::Load(args) => load::run(args, target).await,
        Command::Watch(args) => watch::run(args, target).await,
        Command::Db(cmd) => db::run(cmd, target).await,
        Command::Status(args) => status::run(args, target).await,
        Command::Weekly(args) => weekly::run(args, target).await,
        Command::Groups(args) => groups::run(args, target).await,
        Command::Gen(args) => gen::run(args),
        Command::Unload(args) => unload::run(args, target).await,
        Command::Serve(args) => serve::run(args, target).await,
    }
}

/// Prints a usage or setup error and returns its exit code.
fn setup_error(e: impl std::fmt::Display) -> u8 {
    eprintln!("error: {e}");
    EXIT_SETUP
}

/// A `--dry-run`'s answer: what would go (exit 0), or why it cannot be
/// said (exit 1).
fn print_dry_run(plan: Result<String, impl std::fmt::Display>) -> u8 {
    match plan {
        Ok(text) => {
            println!("{text}");
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_FILES_FAILED
        }
    }
}
