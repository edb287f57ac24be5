//! The process's exit codes, one list for every command (documented in
//! `tripload --help` and the README).

/// Every file loaded (or was already loaded); a query answered; an
/// operation done.
pub const EXIT_OK: u8 = 0;
/// At least one file failed, was refused or was left in place after a
/// database error; an operation rolled back.
pub const EXIT_FILES_FAILED: u8 = 1;
/// Usage or configuration error, unknown region or file, schema missing or
/// behind, database unreachable: nothing was changed.
pub const EXIT_SETUP: u8 = 2;
/// `unload`, `load --replace`: the file named is still loading.
pub const EXIT_LOADING: u8 = 3;
/// `watch` stopped by a second SIGINT/SIGTERM: files in flight were rolled
/// back and returned to landing.
pub const EXIT_ABORTED: u8 = 130;
