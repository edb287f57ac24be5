//! `tripload gen`: write a realistic synthetic trip CSV (tests, benchmarks).

use super::{EXIT_OK, EXIT_SETUP};
use clap::Args;
use std::path::PathBuf;

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

pub fn run(args: GenArgs) -> u8 {
    let result = if args.out.as_os_str() == "-" {
        crate::gen::write_trips(std::io::stdout().lock(), args.rows, args.seed)
    } else {
        std::fs::File::create(&args.out)
            .and_then(|f| crate::gen::write_trips(f, args.rows, args.seed))
    };
    match result {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("error: writing {}: {e}", args.out.display());
            EXIT_SETUP
        }
    }
}
