//! `tripload unload`: remove one loaded file — its trips, rollups and cell
//! points (also once compacted) and its ledger row — in one transaction.

use super::EXIT_SETUP;
use crate::db::Target;
use clap::Args;

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["file", "file_id"])))]
pub struct UnloadArgs {
    /// The file: a path to its bytes, its content hash, or its file name.
    pub file: Option<String>,
    /// The file's id in the ledger (load_files.file_id).
    #[arg(long)]
    pub file_id: Option<i32>,
    /// Say what would be removed; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// If the file is still loading, wait for its load to end (instead of exit code 3).
    #[arg(long)]
    pub wait: bool,
}

pub async fn run(args: UnloadArgs, target: Target) -> u8 {
    let spec = match (args.file_id, args.file) {
        (Some(id), _) => crate::lifecycle::FileSpec::Id(id),
        (None, Some(f)) => crate::lifecycle::FileSpec::Text(f),
        (None, None) => return EXIT_SETUP,
    };
    match crate::db::prepare(&target, "7 days").await {
        Ok((conninfo, _)) => {
            crate::lifecycle::unload::command(&conninfo, spec, args.dry_run, args.wait).await
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_SETUP
        }
    }
}
