//! How a file's transaction ends, typed: it committed ([`Committed`]), or it
//! did not ([`Failure`]) because of the file ([`Abort::File`]: it goes to
//! `failed/`), because of the environment ([`Abort::Env`]: database, disk;
//! it stays to be retried), or because its content is already loaded
//! ([`Abort::Duplicate`]). Server errors are classified by their SQLSTATE
//! ([`db::fault`]), never by their message text.

use crate::analytics::points_writer::WriteError;
use crate::db::dims::DimError;
use crate::db::ledger;
use crate::db::{self, DbError, Fault};
use crate::ingest::archive::RejectWriter;
use crate::kernel::rollup::Rollup;

/// Why a file did not commit.
#[derive(Debug)]
pub enum Abort {
    /// The file's fault: it goes to `failed/`.
    File(String),
    /// Not the file's fault (database, disk): it stays where it is.
    Env(String),
    Duplicate(Box<ledger::LoadedFile>),
}

impl Abort {
    /// The file's fault or the environment's, as [`Fault`] says.
    pub fn of(fault: Fault, msg: String) -> Abort {
        match fault {
            Fault::Data => Abort::File(msg),
            Fault::Environment => Abort::Env(msg),
        }
    }
}

impl From<DbError> for Abort {
    fn from(e: DbError) -> Self {
        Abort::of(e.fault(), e.one_line())
    }
}

impl From<DimError> for Abort {
    fn from(e: DimError) -> Self {
        Abort::of(e.fault(), e.to_string())
    }
}

impl From<WriteError> for Abort {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Db { what, source } => classify(source, what),
            other => Abort::Env(other.to_string()),
        }
    }
}

/// A server error is the file's fault or not by its SQLSTATE alone (see
/// [`db::fault`]); the message carries the server's text, the SQLSTATE and
/// what to do.
pub fn classify(e: tokio_postgres::Error, what: &str) -> Abort {
    Abort::of(db::fault(&e), db::explain(what, &e))
}

pub struct Committed {
    pub rows: u64,
    /// Rejected physical lines.
    pub rejected: u64,
    pub lines: Lines,
    pub rejects: RejectWriter,
    pub rollup: Option<Rollup>,
}

/// How the lines of a parsed file add up: `rows + rejected + blank + header`
/// is every physical line of the file.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lines {
    pub rejected: u64,
    pub blank: u64,
    pub header: u64,
}

pub struct Failure {
    pub abort: Abort,
    /// Rejected physical lines found before it stopped.
    pub rejected: u64,
    /// The rejects file so far, to place beside the failed file.
    pub rejects: Option<Box<RejectWriter>>,
}

impl Failure {
    /// A failure before any line was parsed.
    pub fn new(abort: Abort) -> Failure {
        Failure {
            abort,
            rejected: 0,
            rejects: None,
        }
    }

    /// A failure after the whole file was parsed (`done`), keeping its rejects.
    pub fn after(abort: Abort, done: Committed) -> Failure {
        Failure {
            abort,
            rejected: done.rejected,
            rejects: Some(Box::new(done.rejects)),
        }
    }
}
