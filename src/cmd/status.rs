//! `tripload status`: the latest state of recent files, or with `--follow`
//! every ingestion event live.

use super::{setup_error, EXIT_OK};
use crate::db::Target;
use clap::Args;

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

pub async fn run(args: StatusArgs, target: Target) -> u8 {
    let result = async {
        let conninfo = crate::db::schema::open_for_reading(&target).await?;
        if args.follow {
            crate::notify::status::follow(&conninfo, args.limit, args.json, args.max_events).await
        } else {
            crate::notify::status::show(&conninfo, args.limit, args.json).await
        }
    }
    .await;
    match result {
        Ok(()) => EXIT_OK,
        Err(e) => setup_error(e),
    }
}
