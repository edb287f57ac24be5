//! Command-line syntax (clap), checked once into configurations that drive the
//! work, and the mapping of outcomes to exit codes.

use crate::db::Target;
use crate::ingest::load::{LoadConfig, SetupError};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

pub const EXIT_OK: u8 = 0;
pub const EXIT_FILES_FAILED: u8 = 1;
pub const EXIT_SETUP: u8 = 2;
/// `watch` stopped by a second SIGINT/SIGTERM: files in flight were rolled
/// back and returned to landing.
pub const EXIT_ABORTED: u8 = 130;

const EXIT_CODES: &str = "\
Exit codes:
  0  every file loaded (or was already loaded)
  1  at least one file failed (moved to failed/ with <file>.error.txt) or was left in place after a database error
  2  usage or configuration error, or the database could not be reached/prepared; no file was touched
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
    Load(LoadArgs),
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
    Watch(WatchArgs),
    /// Manage the database: migrate the schema, start/stop the embedded server.
    #[command(subcommand)]
    Db(DbCommand),
    /// Show how ingestion goes: the latest state of recent files, or with
    /// --follow every event live (LISTEN/NOTIFY on channel `tripload_events`).
    Status(StatusArgs),
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
    Weekly(WeeklyArgs),
    /// Trip groups, largest first: trips with the same region, origin cell,
    /// destination cell and time-of-day bucket.
    ///
    /// Cells are a lon/lat grid: cell (ix, iy) = (floor(lon / CELL), floor(lat /
    /// CELL)), printed as their south-west corner; the default 0.01° is about
    /// 1.1 km north-south and 0.7 km east-west at 50°N. Time of day is in UTC,
    /// in buckets of --bucket-minutes from midnight. Computed from the raw trips
    /// (a full scan, or the trips of one region / box): seconds on 100M rows.
    Groups(GroupsArgs),
    /// Generate a realistic synthetic trip CSV (for tests and benchmarks).
    Gen(GenArgs),
    /// Serve the HTTP API (weekly, groups, files, cells, live events, metrics)
    /// and the dashboard at http://127.0.0.1:8080/.
    Serve(crate::serve::args::ServeArgs),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("area").required(true).args(["region", "bbox"])))]
pub struct WeeklyArgs {
    /// Region name (the region column).
    #[arg(long)]
    pub region: Option<String>,
    /// Bounding box MINLON,MINLAT,MAXLON,MAXLAT (WGS84, edges inclusive).
    #[arg(long, value_parser = crate::analytics::weekly::parse_bbox, allow_hyphen_values = true)]
    pub bbox: Option<[f64; 4]>,
    /// Which end of the trip must lie in a bounding box.
    #[arg(long, value_enum, default_value_t = crate::analytics::weekly::By::Origin)]
    pub by: crate::analytics::weekly::By,
    /// First day of the window (its week is included), YYYY-MM-DD.
    #[arg(long)]
    pub from: Option<chrono::NaiveDate>,
    /// Last day of the window (its week is included), YYYY-MM-DD.
    #[arg(long)]
    pub to: Option<chrono::NaiveDate>,
    #[arg(long, value_enum, default_value_t = crate::analytics::weekly::Format::Table)]
    pub format: crate::analytics::weekly::Format,
}

#[derive(Debug, Args)]
pub struct GroupsArgs {
    /// Only trips of this region.
    #[arg(long)]
    pub region: Option<String>,
    /// Only trips in this bounding box MINLON,MINLAT,MAXLON,MAXLAT (see --by).
    #[arg(long, value_parser = crate::analytics::weekly::parse_bbox, allow_hyphen_values = true)]
    pub bbox: Option<[f64; 4]>,
    /// Which end of the trip must lie in --bbox.
    #[arg(long, value_enum, default_value_t = crate::analytics::weekly::By::Origin)]
    pub by: crate::analytics::weekly::By,
    /// Grid cell size in degrees [default: the database grid, 0.01].
    #[arg(long, value_parser = parse_cell_deg)]
    pub cell_deg: Option<f64>,
    /// Time-of-day bucket in minutes (1 to 1440).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(i32).range(1..=1440))]
    pub bucket_minutes: i32,
    /// How many groups to list.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i32).range(1..))]
    pub top: i32,
    #[arg(long, value_enum, default_value_t = crate::analytics::weekly::Format::Table)]
    pub format: crate::analytics::weekly::Format,
}

fn parse_cell_deg(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 180.0 => Ok(v),
        _ => Err(format!(
            "{s:?}: expected a cell size in degrees, greater than 0 and at most 180 (e.g. 0.01)"
        )),
    }
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Keep printing events as they happen until Ctrl-C.
    #[arg(long, short)]
    pub follow: bool,
    /// One JSON object per line (the event payload schema, see README).
    #[arg(long)]
    pub json: bool,
    /// Recent files (or, with --follow, past events) to show first.
    #[arg(long, default_value_t = 20)]
    pub limit: i64,
    /// With --follow: exit after this many new events (for scripts and tests).
    #[arg(long, requires = "follow")]
    pub max_events: Option<u64>,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Files or directories to load (directories: every file in them, skipping
    /// *.part, *.tmp and dotfiles).
    #[arg(default_value = "data/landing")]
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub opts: LoadOptions,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The landing directory to watch; processing/, processed/ and failed/ are
    /// created beside it.
    #[arg(default_value = "data/landing")]
    pub landing: PathBuf,
    /// Seconds a file written in place must keep its size and mtime before it
    /// is taken (files renamed into the directory are taken at once).
    #[arg(long, env = "TRIPLOAD_QUIET_PERIOD", default_value_t = 2.0)]
    pub quiet_period: f64,
    /// Mail one digest of the files finished in each period of this many
    /// seconds instead of one report per file (0: one per file).
    #[arg(long, env = "TRIPLOAD_REPORT_EVERY", default_value_t = 0)]
    pub report_every: u64,
    /// A file whose load fails this many times in a row for reasons that are
    /// not its content (while the database is reachable) is quarantined:
    /// moved to failed/ with the history of its attempts in <file>.error.txt.
    #[arg(long, env = "TRIPLOAD_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,
    /// Also serve the HTTP API and dashboard on this address, in this process
    /// (options as for `tripload serve`).
    #[arg(long, value_name = "ADDR")]
    pub serve: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub server: crate::serve::args::ServerOptions,
    #[command(flatten)]
    pub opts: LoadOptions,
}

/// Options shared by `load` and `watch`.
#[derive(Debug, Args)]
pub struct LoadOptions {
    /// Files loaded at the same time, each on its own connection and transaction.
    #[arg(long, short = 'j', env = "TRIPLOAD_JOBS", default_value_t = 2)]
    pub jobs: usize,
    /// Bad lines tolerated per file (a rejected record spanning 3 lines
    /// counts 3). Within the limit, good rows commit and bad ones go to
    /// <file>.rejects.csv; over it, the file is rolled back, moved to
    /// failed/, and its rejects file still lists every bad line.
    #[arg(long, env = "TRIPLOAD_MAX_REJECTS", default_value_t = 0)]
    pub max_rejects: u64,
    /// Region and datasource names new to the database that one file may
    /// bring. Over it the file fails (to failed/) and the names it brought are
    /// deleted: ids are smallints, so names are a scarce resource.
    #[arg(long, env = "TRIPLOAD_MAX_NEW_NAMES", default_value_t = crate::db::dims::MAX_NEW_NAMES)]
    pub max_new_names: u64,
    /// Longest record (bytes, quoted newlines included) before the file is
    /// failed as unreadable: a longer record is almost always a stray quote
    /// that swallowed the lines after it. The error names the line and
    /// column where the open quote began.
    #[arg(long, env = "TRIPLOAD_MAX_RECORD_BYTES", default_value_t = crate::kernel::record::DEFAULT_MAX_RECORD_BYTES as u64, value_parser = clap::value_parser!(u64).range(64..=(1 << 30)))]
    pub max_record_bytes: u64,
    /// Where loaded files go (default: processed/ beside the file's directory).
    #[arg(long, env = "TRIPLOAD_PROCESSED_DIR")]
    pub processed_dir: Option<PathBuf>,
    /// Where failed files go (default: failed/ beside the file's directory).
    #[arg(long, env = "TRIPLOAD_FAILED_DIR")]
    pub failed_dir: Option<PathBuf>,
    /// Chunk size in MiB: the unit of parallel parsing and of COPY writes.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub chunk_mib: u64,
    /// Cell points are written by a second connection, one segment of this
    /// many MiB of input at a time (the temporary spill in $TMPDIR holds about
    /// half a segment's size). Each segment is its own set of rows, so
    /// smaller segments make bounding-box queries slower (~2x at 256).
    #[arg(long, default_value_t = crate::analytics::points_writer::SEGMENT_MIB, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub points_segment_mib: u64,
    /// MiB of encoded trips that may wait in a temporary file in $TMPDIR
    /// when parsing runs ahead of the database (about 0.8 MiB per MiB of
    /// input), so that a file's cell points are written while its trips are
    /// still being copied. 0 keeps the queue in memory only: parsing then
    /// waits for the COPY and the cell points come after it (slower).
    #[arg(long, env = "TRIPLOAD_BACKLOG_MIB", default_value_t = crate::ingest::backlog::DISK_MIB)]
    pub backlog_mib: u64,
    /// TimescaleDB chunk interval, used when the hypertable is first created.
    #[arg(long, env = "TRIPLOAD_CHUNK_INTERVAL", default_value = "7 days")]
    pub chunk_interval: String,
    /// Parser threads (default: all cores when the database is remote, one
    /// core fewer when it runs on this machine, leaving a core to its COPY).
    #[arg(long, env = "TRIPLOAD_THREADS")]
    pub threads: Option<usize>,
    /// CPU priority (nice value, 0-19) of tripload when the database runs on
    /// this machine: the server's COPY of the trips is what a load waits for,
    /// and parsing and the cell points run ahead of it. 0 keeps normal
    /// priority. Ignored for a remote database. Where the kernel groups
    /// processes by session (autogroups, the Linux default) the load runs as
    /// a child in a session of its own with this nice value; signals to
    /// tripload are passed on to it.
    #[arg(long, env = "TRIPLOAD_NICE", default_value_t = 10, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub nice: i32,
    /// No progress output; only the summary table and errors.
    #[arg(long, short)]
    pub quiet: bool,
    /// Email ingestion reports through this server: smtps://user:pass@host:port
    /// (TLS), or smtp://user:pass@host:port (STARTTLS required when the URL
    /// has a password, used when offered when not; ?tls=required,
    /// opportunistic or none to choose). `load` sends one report per run,
    /// `watch` one per file.
    #[arg(long, env = "TRIPLOAD_SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,
    /// Let an SMTP URL with a password use ?tls=none or ?tls=opportunistic
    /// (the password may then cross the network unencrypted). Without it such
    /// a URL is a usage error: a password needs smtps:// or STARTTLS.
    #[arg(long, env = "TRIPLOAD_SMTP_ALLOW_PLAINTEXT")]
    pub smtp_allow_plaintext: bool,
    /// Report recipients (repeat the flag, or comma-separate).
    #[arg(long, env = "TRIPLOAD_REPORT_TO", value_delimiter = ',')]
    pub report_to: Vec<String>,
    /// Report sender address.
    #[arg(
        long,
        env = "TRIPLOAD_REPORT_FROM",
        default_value = "tripload@localhost"
    )]
    pub report_from: String,
    /// Days of ingestion_events to keep (0: keep all). Older events are
    /// deleted by `load` at start and by `watch` at start and every hour.
    #[arg(long, env = "TRIPLOAD_EVENTS_RETENTION_DAYS", default_value_t = 30)]
    pub events_retention_days: u32,
}

impl LoadOptions {
    /// The checked settings (a message saying what is wrong otherwise).
    pub fn settings(self) -> Result<crate::ingest::load::Settings, String> {
        if self.jobs == 0 || self.threads == Some(0) {
            return Err("--jobs and --threads must be at least 1".into());
        }
        let mail = self.mail()?;
        Ok(crate::ingest::load::Settings {
            jobs: self.jobs,
            max_rejects: self.max_rejects,
            max_new_names: self.max_new_names,
            max_record_bytes: self.max_record_bytes as usize,
            chunk_bytes: (self.chunk_mib as usize) << 20,
            points_segment_bytes: (self.points_segment_mib as usize) << 20,
            backlog_bytes: self.backlog_mib << 20,
            processed_dir: self.processed_dir,
            failed_dir: self.failed_dir,
            chunk_interval: self.chunk_interval,
            threads: self.threads,
            nice: self.nice,
            quiet: self.quiet,
            mail,
            events_retention_days: self.events_retention_days,
        })
    }

    /// The checked mail configuration, if reports are to be mailed.
    fn mail(&self) -> Result<Option<crate::notify::mail::MailConfig>, String> {
        let Some(url) = self.smtp_url.as_ref().filter(|u| !u.trim().is_empty()) else {
            return Ok(None);
        };
        if self.report_to.is_empty() {
            return Err(
                "--smtp-url is set but --report-to is not: say who gets the reports".into(),
            );
        }
        let cfg = crate::notify::mail::MailConfig {
            smtp_url: url.clone(),
            to: self.report_to.clone(),
            from: self.report_from.clone(),
            allow_plaintext: self.smtp_allow_plaintext,
        };
        cfg.check().map_err(|e| e.to_string())?;
        Ok(Some(cfg))
    }
}

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
    /// Build indexes after loading: --spatial adds GiST indexes on origin and
    /// destination for ad-hoc spatial SQL (they slow later loads: drop them
    /// before a large load).
    Index {
        #[arg(long, required = true)]
        spatial: bool,
    },
    /// Merge the rollup rows of small files (loaded since the last
    /// compaction) into compacted rows; loads and watch do this by themselves.
    Compact,
}

#[derive(Debug, Args)]
pub struct GenArgs {
    /// Number of trips.
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: u64,
    /// Random seed (same seed, same file).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Output file (`-` for stdout).
    #[arg(long, short)]
    pub out: PathBuf,
}

/// Entry point used by `main.rs`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let nice = match &cli.command {
        Command::Load(l) => Some(l.opts.nice),
        Command::Watch(w) => Some(w.opts.nice),
        _ => None,
    };
    if let Some(nice) = nice {
        let local = match cli.db.target() {
            Target::Embedded { .. } => true,
            Target::Url(u) => crate::db::is_local(&u),
        };
        if let Some(code) = crate::ingest::session::enter(nice, local) {
            return code;
        }
    }
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
    let code = runtime.block_on(run(cli));
    ExitCode::from(code)
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

async fn run(cli: Cli) -> u8 {
    let target = cli.db.target();
    match cli.command {
        Command::Watch(w) => {
            if !w.quiet_period.is_finite() || w.quiet_period < 0.0 {
                eprintln!("error: --quiet-period must be a number of seconds, not negative");
                return EXIT_SETUP;
            }
            let settings = match w.opts.settings() {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return EXIT_SETUP;
                }
            };
            let beside = match crate::serve::args::start_beside_watch(
                w.serve, w.server, &target, &w.landing, &settings,
            )
            .await
            {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("error: {e}");
                    return EXIT_SETUP;
                }
            };
            let cfg = crate::ingest::watch::WatchConfig {
                target,
                landing: w.landing,
                quiet_period: std::time::Duration::from_secs_f64(w.quiet_period),
                report_every: std::time::Duration::from_secs(w.report_every),
                max_attempts: w.max_attempts,
                settings,
            };
            let result = crate::ingest::watch::run(cfg).await;
            if let Some(b) = beside {
                b.stop().await;
            }
            match result {
                Ok(()) => EXIT_OK,
                Err(e) => {
                    eprintln!("error: {e}");
                    EXIT_SETUP
                }
            }
        }
        Command::Load(l) => {
            let settings = match l.opts.settings() {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return EXIT_SETUP;
                }
            };
            let cfg = LoadConfig {
                target,
                paths: l.paths,
                settings,
            };
            match crate::ingest::load::run(cfg).await {
                Ok(reports) => {
                    if !reports.is_empty() {
                        print!("{}", crate::notify::report::summary_table(&reports));
                    }
                    if reports.iter().all(|r| r.ok()) {
                        EXIT_OK
                    } else {
                        EXIT_FILES_FAILED
                    }
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    if let SetupError::Db(_) = e {
                        eprintln!("no file was moved.");
                    }
                    EXIT_SETUP
                }
            }
        }
        Command::Db(cmd) => match db_command(cmd, target).await {
            Ok(()) => EXIT_OK,
            Err(e) => {
                eprintln!("error: {e:#}");
                EXIT_SETUP
            }
        },
        Command::Status(s) => {
            let result = async {
                let (conninfo, _) = crate::ingest::load::prepare(&target, "7 days").await?;
                if s.follow {
                    crate::notify::status::follow(&conninfo, s.limit, s.json, s.max_events).await
                } else {
                    crate::notify::status::show(&conninfo, s.limit, s.json).await
                }
            }
            .await;
            match result {
                Ok(()) => EXIT_OK,
                Err(e) => {
                    eprintln!("error: {e}");
                    EXIT_SETUP
                }
            }
        }
        Command::Weekly(wk) => {
            let area = match (wk.region, wk.bbox) {
                (Some(r), _) => crate::analytics::weekly::Area::Region(r),
                (None, Some(b)) => crate::analytics::weekly::Area::BBox(b),
                (None, None) => return EXIT_SETUP,
            };
            let result = async {
                let (conninfo, _) = crate::ingest::load::prepare(&target, "7 days").await?;
                crate::analytics::weekly::weeks(&conninfo, &area, wk.by, wk.from, wk.to).await
            }
            .await;
            match result {
                Ok(weeks) => {
                    print!(
                        "{}",
                        crate::analytics::weekly::render(&area, wk.by, &weeks, wk.format)
                    );
                    EXIT_OK
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    EXIT_SETUP
                }
            }
        }
        Command::Groups(gr) => {
            let q = crate::analytics::groups::Query {
                region: gr.region,
                bbox: gr.bbox,
                by: gr.by,
                cell_deg: gr.cell_deg,
                bucket_minutes: gr.bucket_minutes,
                top: gr.top,
            };
            let result = async {
                let (conninfo, _) = crate::ingest::load::prepare(&target, "7 days").await?;
                crate::analytics::groups::groups(&conninfo, &q).await
            }
            .await;
            match result {
                Ok((cell, groups)) => {
                    print!(
                        "{}",
                        crate::analytics::groups::render(&q, cell, &groups, gr.format)
                    );
                    EXIT_OK
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    EXIT_SETUP
                }
            }
        }
        Command::Serve(s) => crate::serve::args::run(s, target).await,
        Command::Gen(g) => {
            let result = if g.out.as_os_str() == "-" {
                crate::gen::write_trips(std::io::stdout().lock(), g.rows, g.seed)
            } else {
                std::fs::File::create(&g.out)
                    .and_then(|f| crate::gen::write_trips(f, g.rows, g.seed))
            };
            match result {
                Ok(()) => EXIT_OK,
                Err(e) => {
                    eprintln!("error: writing {}: {e}", g.out.display());
                    EXIT_SETUP
                }
            }
        }
    }
}

async fn db_command(cmd: DbCommand, target: Target) -> anyhow::Result<()> {
    match cmd {
        DbCommand::Migrate { chunk_interval } => {
            let (conninfo, _) = crate::ingest::load::prepare(&target, &chunk_interval).await?;
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
        DbCommand::Index { .. } => {
            let (conninfo, _) = crate::ingest::load::prepare(&target, "7 days").await?;
            let client = crate::db::connect(&conninfo).await?;
            let start = std::time::Instant::now();
            client
                .batch_execute(
                    "CREATE INDEX IF NOT EXISTS trips_origin_gist ON trips USING gist (origin);
                     CREATE INDEX IF NOT EXISTS trips_destination_gist ON trips USING gist (destination);
                     ANALYZE trips;",
                )
                .await?;
            println!(
                "spatial indexes on trips(origin) and trips(destination) ready in {:.1} s",
                start.elapsed().as_secs_f64()
            );
        }
        DbCommand::Compact => {
            let (conninfo, _) = crate::ingest::load::prepare(&target, "7 days").await?;
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
