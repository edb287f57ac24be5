//! The `tripload` binary: parse the command line once, run, map the outcome
//! to an exit code (see `tripload --help`).

fn main() -> std::process::ExitCode {
    tripload::cli::main()
}
