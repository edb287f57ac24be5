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
    File(Cause),
    /// Not the file's fault (database, disk): it stays where it is.
    Env(Cause),
    Duplicate(Box<ledger::LoadedFile>),
}

/// What stopped a file, as fields: the one-line message (what was done,
/// why, what to do), and where known the place in the file and the server's
/// SQLSTATE. Reports, the `<file>.error.txt` and events carry the fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cause {
    pub message: String,
    /// Physical line of the file (1-based).
    pub line: Option<u64>,
    /// The field's name (`origin_coord`), or for a framing error the
    /// character position in the line (`17`).
    pub column: Option<String>,
    /// The server's SQLSTATE, for an error the database raised.
    pub sqlstate: Option<String>,
}

impl Cause {
    pub fn new(message: impl Into<String>) -> Cause {
        Cause {
            message: message.into(),
            ..Cause::default()
        }
    }

    /// At `line` (and `column`) of the file.
    pub fn at(mut self, line: u64, column: Option<String>) -> Cause {
        self.line = Some(line);
        self.column = column;
        self
    }

    /// Raised by the server with this SQLSTATE.
    pub fn sqlstate(mut self, code: Option<&tokio_postgres::error::SqlState>) -> Cause {
        self.sqlstate = code.map(|c| c.code().to_string());
        self
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<String> for Cause {
    fn from(message: String) -> Cause {
        Cause::new(message)
    }
}

impl From<&str> for Cause {
    fn from(message: &str) -> Cause {
        Cause::new(message)
    }
}

impl Abort {
    /// The file's fault or the environment's, as [`Fault`] says.
    pub fn of(fault: Fault, cause: Cause) -> Abort {
        match fault {
            Fault::Data => Abort::File(cause),
            Fault::Environment => Abort::Env(cause),
        }
    }

    /// The file's fault.
    pub fn file(cause: impl Into<Cause>) -> Abort {
        Abort::File(cause.into())
    }

    /// The environment's fault.
    pub fn env(cause: impl Into<Cause>) -> Abort {
        Abort::Env(cause.into())
    }
}

impl From<DbError> for Abort {
    fn from(e: DbError) -> Self {
        Abort::of(e.fault(), Cause::new(e.one_line()).sqlstate(e.code()))
    }
}

impl From<DimError> for Abort {
    fn from(e: DimError) -> Self {
        let code = match &e {
            DimError::Resolve { code, .. } => code.clone(),
            _ => None,
        };
        Abort::of(e.fault(), Cause::new(e.to_string()).sqlstate(code.as_ref()))
    }
}

impl From<WriteError> for Abort {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Db { what, source } => classify(source, what),
            other => Abort::env(other.to_string()),
        }
    }
}

/// A server error is the file's fault or not by its SQLSTATE alone (see
/// [`db::fault`]); the message carries the server's text, the SQLSTATE and
/// what to do.
pub fn classify(e: tokio_postgres::Error, what: &str) -> Abort {
    Abort::of(
        db::fault(&e),
        Cause::new(db::explain(what, &e)).sqlstate(e.code()),
    )
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
