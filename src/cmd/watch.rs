//! `tripload watch`: load the files that land in a directory as they arrive,
//! until SIGINT/SIGTERM.

use super::load::LoadOptions;
use super::{setup_error, EXIT_OK};
use crate::db::Target;
use crate::lifecycle::retain::OlderThan;
use clap::Args;
use std::path::PathBuf;

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
    /// Retention policy: drop the trips older than this interval ('90 days',
    /// '6 months') or date (YYYY-MM-DD), with the rollups kept exact, at
    /// start and then every --retain-every seconds (as `tripload db retain
    /// --older-than`; the cut-off is rounded down to a Monday 00:00 UTC).
    #[arg(long, env = "TRIPLOAD_RETAIN", value_name = "AGE", value_parser = OlderThan::parse)]
    pub retain: Option<OlderThan>,
    /// Seconds between two runs of the --retain policy.
    #[arg(long, env = "TRIPLOAD_RETAIN_EVERY", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub retain_every: u64,
    #[command(flatten)]
    pub server: crate::cmd::serve::ServerOptions,
    #[command(flatten)]
    pub opts: LoadOptions,
}

pub async fn run(args: WatchArgs, target: Target) -> u8 {
    if !args.quiet_period.is_finite() || args.quiet_period < 0.0 {
        return setup_error("--quiet-period must be a number of seconds, not negative");
    }
    let settings = match args.opts.settings() {
        Ok(s) => s,
        Err(e) => return setup_error(e),
    };
    let beside = match crate::cmd::serve::start_beside_watch(
        args.serve,
        args.server,
        &target,
        &args.landing,
        &settings,
    )
    .await
    {
        Ok(b) => b,
        Err(e) => return setup_error(e),
    };
    let cfg = crate::ingest::watch::WatchConfig {
        target,
        landing: args.landing,
        quiet_period: std::time::Duration::from_secs_f64(args.quiet_period),
        report_every: std::time::Duration::from_secs(args.report_every),
        max_attempts: args.max_attempts,
        retain: args.retain,
        retain_every: std::time::Duration::from_secs(args.retain_every),
        settings,
    };
    let result = crate::ingest::watch::run(cfg).await;
    if let Some(b) = beside {
        b.stop().await;
    }
    match result {
        Ok(()) => EXIT_OK,
        Err(e) => setup_error(e),
    }
}
