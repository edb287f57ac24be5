//! `tripload load`: load the files named on the command line now, print the
//! summary table, exit 1 if any failed. Also holds [`LoadOptions`], the
//! options `load` and `watch` share, and their check into
//! [`Settings`](crate::ingest::loader::Settings).

use super::{setup_error, EXIT_FILES_FAILED, EXIT_OK, EXIT_SETUP};
use crate::db::Target;
use crate::ingest::load::LoadConfig;
use crate::ingest::loader::SetupError;
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Files or directories to load (directories: every file in them, skipping
    /// *.part, *.tmp and dotfiles).
    #[arg(default_value = "data/landing")]
    pub paths: Vec<PathBuf>,
    /// Load the trips without maintaining the rollups and cell points, to
    /// measure what they cost (benches/compare.sh). Weekly and bounding-box
    /// answers then do not count these files.
    #[arg(long)]
    pub no_rollups: bool,
    /// Replace this loaded file (path, content hash, name, or `id:N` for a
    /// file id): the one file given loads and OLD is unloaded in the same
    /// transaction.
    #[arg(long, value_name = "OLD")]
    pub replace: Option<String>,
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
    /// No progress output; only the summary table and errors.
    #[arg(long, short)]
    pub quiet: bool,
    /// Milliseconds between two `progress` events of a file (published on
    /// `tripload_events`, shown by `status --follow`).
    #[arg(long, env = "TRIPLOAD_PROGRESS_EVERY_MS", default_value_t = crate::notify::report::EVENT_EVERY_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub progress_every_ms: u64,
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
    /// The dashboard's address as the report's readers reach it (e.g.
    /// https://tripload.example:8080): each file in a mailed report links to
    /// it on the dashboard (URL/#file=NAME).
    #[arg(long, env = "TRIPLOAD_DASHBOARD_URL", value_name = "URL")]
    pub dashboard_url: Option<String>,
    /// Days of ingestion_events to keep (0: keep all). Older events are
    /// deleted by `load` at start and by `watch` at start and every hour.
    #[arg(long, env = "TRIPLOAD_EVENTS_RETENTION_DAYS", default_value_t = 30)]
    pub events_retention_days: u32,
    /// A file named <stem>.v<N>.<ext> (N >= 2) replaces, in its own
    /// transaction, the loaded file of the highest lower version
    /// (<stem>.v<M>.<ext>, or <stem>.<ext> as version 1).
    #[arg(long, env = "TRIPLOAD_REPLACE_VERSIONS")]
    pub replace_versions: bool,
}

impl LoadOptions {
    /// The checked settings (a message saying what is wrong otherwise).
    pub(super) fn settings(self) -> Result<crate::ingest::loader::Settings, String> {
        if self.jobs == 0 || self.threads == Some(0) {
            return Err("--jobs and --threads must be at least 1".into());
        }
        if let Some(u) = self
            .dashboard_url
            .as_deref()
            .filter(|u| !u.trim().is_empty())
        {
            crate::notify::mail::check_dashboard_url(u)?;
        }
        let mail = self.mail()?;
        Ok(crate::ingest::loader::Settings {
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
            quiet: self.quiet,
            progress_every: std::time::Duration::from_millis(self.progress_every_ms),
            mail,
            events_retention_days: self.events_retention_days,
            replace: if self.replace_versions {
                crate::lifecycle::replace::Policy::Versions
            } else {
                crate::lifecycle::replace::Policy::None
            },
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
            dashboard_url: self
                .dashboard_url
                .as_deref()
                .filter(|u| !u.trim().is_empty())
                .map(crate::notify::mail::check_dashboard_url)
                .transpose()?,
        };
        cfg.check().map_err(|e| e.to_string())?;
        Ok(Some(cfg))
    }
}

pub async fn run(args: LoadArgs, target: Target) -> u8 {
    let mut settings = match args.opts.settings() {
        Ok(s) => s,
        Err(e) => return setup_error(e),
    };
    if let Some(old) = &args.replace {
        let interval = settings.chunk_interval.clone();
        match crate::lifecycle::replace::policy_for(&target, &args.paths, old, &interval).await {
            Ok(p) => settings.replace = p,
            Err(code) => return code,
        }
    }
    let cfg = LoadConfig {
        target,
        paths: args.paths,
        settings,
        rollups: !args.no_rollups,
    };
    match crate::ingest::load::run(cfg).await {
        Ok(reports) => {
            if !reports.is_empty() {
                print!("{}", crate::notify::report::summary_table(&reports));
            }
            crate::lifecycle::replace::print_done(&reports);
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
