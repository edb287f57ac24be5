//! The `tripload` binary: parse the command line once, run, map the outcome
//! to an exit code (see `tripload --help`).

use clap::Parser;

fn main() -> std::process::ExitCode {
    tripload::cmd::run(tripload::cmd::Cli::parse())
}
