//! `tripload unload`: remove one loaded file — its trips, rollups and cell
//! points (also once compacted) and its ledger row — in one transaction.

use super::{print_dry_run, EXIT_FILES_FAILED, EXIT_LOADING, EXIT_OK, EXIT_SETUP};
use crate::db::Target;
use crate::lifecycle::{self, resolve, unload::plan, FileSpec, ResolveError};
use clap::Args;
use std::time::Instant;

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
        (Some(id), _) => FileSpec::Id(id),
        (None, Some(f)) => FileSpec::Text(f),
        (None, None) => return EXIT_SETUP,
    };
    match crate::db::prepare(&target, "7 days").await {
        Ok((conninfo, _)) => unload(&conninfo, spec, args.dry_run, args.wait).await,
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_SETUP
        }
    }
}

/// `tripload unload`: resolves `spec`, unloads it (or with `dry_run` says
/// what would go), prints the outcome; returns the exit code.
async fn unload(conninfo: &str, spec: FileSpec, dry_run: bool, wait: bool) -> u8 {
    let start = Instant::now();
    let mut client = match crate::db::connect(conninfo).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_SETUP;
        }
    };
    let file = match resolve(&mut client, &spec, wait).await {
        Ok(f) => f,
        Err(e @ ResolveError::Loading { .. }) => {
            eprintln!("error: {e}");
            return EXIT_LOADING;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_SETUP;
        }
    };
    if dry_run {
        return print_dry_run(plan(&client, &file).await);
    }
    match lifecycle::unload::unload(&mut client, file.file_id).await {
        Ok(r) => {
            println!(
                "unloaded {r} in {:.2} s; the same bytes can be loaded again",
                start.elapsed().as_secs_f64()
            );
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: unloading {}: {e}", file.file_name);
            EXIT_FILES_FAILED
        }
    }
}
