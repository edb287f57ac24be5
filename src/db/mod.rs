//! Database access: which database to use, connecting with errors that say
//! what to do; the schema ([`schema`]: migrations and functions in `sql/`),
//! the time layout of `trips` ([`layout`]; its Citus time partitions:
//! [`partitions`]), [`ledger`] (which file is loaded), [`node_health`]
//! (whether every node answers), [`dims`] (the dimension dictionaries), [`copy_in`] (feeding a
//! COPY), [`pgtls`] (TLS).

pub mod chunks;
pub mod copy_in;
pub mod dims;
pub mod layout;
pub mod ledger;
pub mod node_health;
pub mod partitions;
pub mod pgtls;
pub mod schema;

pub use crate::pgtext::{clip, error_text};

pub use layout::TimeLayout;
pub use schema::migrate;

use crate::embedded::Embedded;
use std::path::{Path, PathBuf};
use tokio_postgres::Client;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot connect to PostgreSQL at {target}: {reason}\n  hint: {hint}")]
    Connect {
        target: String,
        reason: String,
        hint: String,
    },
    #[error("invalid database connection string: {0}\n  hint: use e.g. postgresql://user:password@host:5432/dbname or 'host=/path/to/socket user=me dbname=trips'")]
    BadUrl(String),
    #[error("invalid TLS settings in the database connection string: {0}\n  hint: see sslmode and sslrootcert in the README's TLS section")]
    Tls(#[from] crate::db::pgtls::SpecError),
    #[error("PostGIS is not installed on the PostgreSQL server at {target}\n  hint: install it on the server, e.g. `apt-get install -y postgresql-{major}-postgis-3`, then run the command again")]
    NoPostgis { target: String, major: String },
    #[error("{context}: {}\n  hint: {}", error_text(.source), advice(.source))]
    Query {
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(transparent)]
    Embedded(#[from] crate::embedded::EmbeddedError),
    #[error(transparent)]
    Schema(#[from] schema::SchemaError),
    #[error(transparent)]
    Layout(#[from] layout::LayoutError),
}

impl DbError {
    /// The error on one line (what was done, the server's message with its
    /// SQLSTATE, what to do), for reports and events.
    pub fn one_line(&self) -> String {
        match self {
            DbError::Query { context, source } => explain(context, source),
            other => other.to_string().replace("\n  hint: ", " — hint: "),
        }
    }

    /// The server's SQLSTATE, for an error the server raised.
    pub fn code(&self) -> Option<&tokio_postgres::error::SqlState> {
        match self {
            DbError::Query { source, .. } => source.code(),
            _ => None,
        }
    }

    /// Whose fault this error is (see [`Fault`]).
    pub fn fault(&self) -> Fault {
        match self {
            DbError::Query { source, .. } => fault(source),
            _ => Fault::Environment,
        }
    }
}

pub fn query_err(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> DbError {
    let context = context.into();
    move |source| DbError::Query { context, source }
}

/// Who caused a database error, decided from its SQLSTATE alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The data sent (a file's content): retrying the same bytes fails the
    /// same way, so the file goes to `failed/`.
    Data,
    /// The server, the network or the configuration: the same file may load
    /// once that is fixed, so it is retried.
    Environment,
}

/// SQLSTATE classes the data causes: 22 data exception (e.g. 22021 invalid
/// byte sequence, 22P05 untranslatable character, 22003 numeric value out
/// of range), 23 integrity constraint violation, 54 program limit exceeded
/// (e.g. 54000 row or value too big). Everything else — 08 connection
/// exception, 53 insufficient resources (disk full, out of memory), 57
/// operator intervention, 58 system error, 40 serialization failure or
/// deadlock, 28 authorization, 42 schema or privilege, XX internal — and
/// errors without a SQLSTATE (connection lost) are the environment's.
pub const DATA_CLASSES: [&str; 3] = ["22", "23", "54"];

/// [`Fault`] of a SQLSTATE (None: no server error, e.g. a lost connection).
pub fn fault_of_code(code: Option<&tokio_postgres::error::SqlState>) -> Fault {
    match code {
        Some(c) if DATA_CLASSES.iter().any(|class| c.code().starts_with(class)) => Fault::Data,
        _ => Fault::Environment,
    }
}

/// [`Fault`] of a tokio-postgres error.
pub fn fault(e: &tokio_postgres::Error) -> Fault {
    fault_of_code(e.code())
}

/// What to do about an error, from its SQLSTATE class.
pub fn advice(e: &tokio_postgres::Error) -> &'static str {
    let Some(code) = e.code() else {
        return if e.is_closed() {
            "the connection to the server was lost: check that it is running and reachable; the work is retried"
        } else {
            "check that the server is running and reachable (host and port in DATABASE_URL); the work is retried"
        };
    };
    let code = code.code();
    match code.get(..2).unwrap_or("") {
        "22" | "23" | "54" => {
            "the file's data caused it: fix the file and move it back to the landing directory"
        }
        "08" => "the connection to the server failed: check that it is running and reachable; the work is retried",
        "53" => "the server is out of resources (disk space, memory or connections): free some; the work is retried",
        "57" => "the server was shut down or the statement was cancelled by an operator: the work is retried when it is back",
        "58" => "the server hit an I/O or system error: see its log; the work is retried",
        "40" => "a conflict with a concurrent transaction: the work is retried",
        "28" => "check the user and password in DATABASE_URL (and the server's pg_hba.conf)",
        "3D" => "create the database first (createdb NAME), or point DATABASE_URL at an existing one",
        "42" if code == "42501" => {
            "the database user lacks a privilege: grant it, or use the database's owner"
        }
        "42" => "the schema is not what this tripload expects: run `tripload db migrate`",
        _ => "see the server's log for details",
    }
}

/// One line for a failed statement: what was being done, the server's
/// message with its SQLSTATE, and what to do.
pub fn explain(what: &str, e: &tokio_postgres::Error) -> String {
    format!("{what}: {} ({})", error_text(e), advice(e))
}

/// The database a command works on.
#[derive(Debug, Clone)]
pub enum Target {
    /// `DATABASE_URL` / `--database-url`: a libpq URL or key/value string.
    Url(String),
    /// The embedded cluster in `dir` (default `data/pg`); `tcp`: also
    /// listening on 127.0.0.1 with a password (`--pg-tcp`).
    Embedded { dir: PathBuf, tcp: bool },
}

/// Name of the database the embedded cluster serves trips from.
pub const EMBEDDED_DB: &str = "tripload";

impl Target {
    /// Connection string for this target, starting the embedded server (and
    /// creating its database) when needed. Blocking: call from a blocking context.
    pub async fn resolve(&self) -> Result<String, DbError> {
        match self {
            Target::Url(u) => Ok(u.clone()),
            Target::Embedded { dir, tcp } => {
                Ok(start_embedded(dir, *tcp).await?.conninfo(EMBEDDED_DB))
            }
        }
    }

    pub fn embedded_dir(&self) -> Option<&Path> {
        match self {
            Target::Embedded { dir, .. } => Some(dir),
            Target::Url(_) => None,
        }
    }
}

/// Starts the embedded server in `dir` unless it runs (see
/// [`Embedded::ensure_running_with`]) and creates its database.
pub async fn start_embedded(dir: &Path, tcp: bool) -> Result<Embedded, DbError> {
    let opts = crate::embedded::Options {
        tcp,
        ..Default::default()
    };
    let dir = dir.to_path_buf();
    let emb = tokio::task::spawn_blocking(move || Embedded::ensure_running_with(&dir, &opts))
        .await
        .map_err(|e| DbError::BadUrl(format!("embedded start task failed: {e}")))??;
    let admin = connect(&emb.conninfo("postgres")).await?;
    let exists = admin
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[&EMBEDDED_DB],
        )
        .await
        .map_err(query_err("checking for the tripload database"))?
        .is_some();
    if !exists {
        admin
            .batch_execute(&format!("CREATE DATABASE {EMBEDDED_DB}"))
            .await
            .map_err(query_err("creating the tripload database"))?;
    }
    Ok(emb)
}

/// `host:port/db` of a connection string, never the password.
pub fn describe(conninfo: &str) -> String {
    let Some(cfg) = parse_config(conninfo) else {
        return "<unparseable connection string>".into();
    };
    let hosts: Vec<String> = cfg
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(s) => s.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .collect();
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{}:{}/{} (user {})",
        if hosts.is_empty() {
            "localhost".to_string()
        } else {
            hosts.join(",")
        },
        port,
        cfg.get_dbname().unwrap_or("<default>"),
        cfg.get_user().unwrap_or("<default>")
    )
}

/// True when the server runs on this machine (unix socket or loopback), so
/// it competes with the parser threads for the same cores.
pub fn is_local(conninfo: &str) -> bool {
    let Some(cfg) = parse_config(conninfo) else {
        return false;
    };
    cfg.get_hosts().iter().all(|h| match h {
        tokio_postgres::config::Host::Unix(_) => true,
        tokio_postgres::config::Host::Tcp(s) => {
            matches!(s.as_str(), "localhost" | "127.0.0.1" | "::1")
        }
    })
}

/// The tokio-postgres view of a connection string (TLS settings taken out).
fn parse_config(conninfo: &str) -> Option<tokio_postgres::Config> {
    let spec = crate::db::pgtls::ConnSpec::parse(conninfo).ok()?;
    spec.rest.parse().ok()
}

/// A connection and the task-less half that must be polled to drive it.
pub type Connection = tokio_postgres::Connection<
    tokio_postgres::Socket,
    <Tls as tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>>::Stream,
>;
pub use crate::db::pgtls::Tls;

/// Connects and drives the connection on the runtime.
pub async fn connect(conninfo: &str) -> Result<Client, DbError> {
    let (client, connection) = open(conninfo).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("database connection closed: {}", error_text(&e));
        }
    });
    Ok(client)
}

/// Connects with libpq's `sslmode` rules (see [`crate::db::pgtls`]): `prefer`
/// falls back to an unencrypted session when TLS fails or the server turns
/// the TLS session away, `allow` tries TLS when the server turns the
/// unencrypted one away; the other modes make one attempt.
pub async fn open(conninfo: &str) -> Result<(Client, Connection), DbError> {
    use crate::db::pgtls::{ConnSpec, SslMode};
    use tokio_postgres::config::SslMode as Wire;
    let spec = ConnSpec::parse(conninfo)?;
    let mut cfg: tokio_postgres::Config = spec
        .rest
        .parse()
        .map_err(|e: tokio_postgres::Error| DbError::BadUrl(error_text(&e)))?;
    let (first, second) = match spec.mode {
        SslMode::Disable => (Wire::Disable, None),
        SslMode::Allow => (Wire::Disable, Some(Wire::Require)),
        SslMode::Prefer => (Wire::Prefer, Some(Wire::Disable)),
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => (Wire::Require, None),
    };
    let roots = spec.roots();
    let tls = || Tls::new(roots.as_ref(), spec.mode == SslMode::VerifyFull);
    let attempt = tls()?;
    let first_err = match cfg.ssl_mode(first).connect(attempt.clone()).await {
        Ok(c) => return Ok(c),
        Err(e) => e,
    };
    let retry = match spec.mode {
        SslMode::Prefer => handshake_started(&attempt),
        SslMode::Allow => first_err.as_db_error().is_some(),
        _ => false,
    };
    let has_password = cfg.get_password().is_some();
    let mode_err = |e: &tokio_postgres::Error, attempt: &Tls| {
        connect_error(conninfo, &spec, has_password, e, attempt)
    };
    match second.filter(|_| retry) {
        None => Err(mode_err(&first_err, &attempt)),
        Some(second) => {
            let again = tls()?;
            match cfg.ssl_mode(second).connect(again.clone()).await {
                Ok(c) => {
                    tracing::debug!(
                        "sslmode={}: first attempt failed ({}); connected on the second",
                        spec.mode.name(),
                        error_text(&first_err)
                    );
                    Ok(c)
                }
                Err(e) => {
                    let first = mode_err(&first_err, &attempt);
                    let DbError::Connect {
                        target,
                        reason,
                        hint,
                    } = mode_err(&e, &again)
                    else {
                        return Err(first);
                    };
                    let (first_reason, first_hint) = match first {
                        DbError::Connect { reason, hint, .. } => (reason, hint),
                        other => (other.to_string(), String::new()),
                    };
                    // The server's own answer to the first attempt says more
                    // than the refusal of the second.
                    let hint = if first_err.code().is_some() {
                        first_hint
                    } else {
                        hint
                    };
                    Err(DbError::Connect {
                        target,
                        reason: format!(
                            "{first_reason}; then, {}: {reason}",
                            match second {
                                Wire::Disable => "without TLS",
                                _ => "with TLS",
                            }
                        ),
                        hint,
                    })
                }
            }
        }
    }
}

fn handshake_started(tls: &Tls) -> bool {
    tls.seen.lock().map(|s| s.started).unwrap_or(false)
}

/// The connect error with a hint chosen from what failed: the server's
/// SQLSTATE, the TLS handshake's error, or the socket's.
fn connect_error(
    conninfo: &str,
    spec: &crate::db::pgtls::ConnSpec,
    has_password: bool,
    e: &tokio_postgres::Error,
    tls: &Tls,
) -> DbError {
    use rustls::CertificateError as C;
    let mut reason = error_text(e);
    let handshake = tls
        .seen
        .lock()
        .map(|s| (s.started, s.error.clone()))
        .unwrap_or_default();
    let roots = match spec.roots() {
        Some(crate::db::pgtls::Roots::File(p)) => format!("sslrootcert {}", p.display()),
        Some(crate::db::pgtls::Roots::System) => "the system's roots".into(),
        None => "no root".into(),
    };
    let hint: String = if let Some(code) = e.code() {
        match code.code() {
            "28P01" => "check the user and password in DATABASE_URL".into(),
            "28000" => "the server's pg_hba.conf does not let this user in from here (or not without TLS: see sslmode)".into(),
            "3D000" => "create the database first (createdb NAME), or point DATABASE_URL at an existing one".into(),
            "53300" => "the server has no free connection slots: lower --jobs, or raise max_connections on the server".into(),
            "57P03" => "the server is starting up or shutting down: try again in a moment".into(),
            _ => advice(e).into(),
        }
    } else if let Some(t) = handshake.1 {
        reason = format!("TLS handshake failed: {t}");
        match t {
            rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => format!(
                "the server's certificate does not chain to a root in {roots}: set sslrootcert to the CA certificate that signed it"
            ),
            rustls::Error::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => format!(
                "the server's certificate does not name the host you connected to: connect by a name the certificate holds, or use sslmode=verify-ca (checks the chain to {roots} but not the name)"
            ),
            rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. }) => "the server's certificate is outside its validity period: renew it (or check this machine's clock)".into(),
            rustls::Error::InvalidCertificate(_) => format!(
                "the server's certificate cannot be verified against {roots} (verification needs X.509 v3 certificates with a subjectAltName); sslmode=require encrypts without verifying"
            ),
            _ => "the TLS handshake with the server failed: check ssl settings on the server, or use sslmode=disable on a trusted network".into(),
        }
    } else if handshake.0 {
        "the TLS handshake with the server failed: check ssl settings on the server".into()
    } else if io_cause(e) {
        "is the server running and reachable? check host and port in DATABASE_URL, or unset DATABASE_URL to use the embedded database".into()
    } else if spec.mode.needs_tls() {
        format!(
            "sslmode={} needs TLS, and the server did not offer it: turn ssl on in the server's configuration, or use sslmode=prefer",
            spec.mode.name()
        )
    } else if !has_password {
        "the server asks for a password: put it in DATABASE_URL".into()
    } else {
        "is the server running and reachable? check host and port in DATABASE_URL".into()
    };
    DbError::Connect {
        target: describe(conninfo),
        reason,
        hint,
    }
}

/// True when the error comes from the socket (refused, unreachable, reset).
fn io_cause(e: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.downcast_ref::<std::io::Error>().is_some() {
            return true;
        }
        source = s.source();
    }
    false
}

/// The grid the rollups use (fixed when the schema was created).
pub async fn grid(client: &Client) -> Result<crate::kernel::grid::Grid, DbError> {
    let row = client
        .query_one(
            "SELECT coalesce(tripload_setting('grid_deg'), 0.01), coalesce(tripload_setting('tod_bucket_seconds'), 3600)",
            &[],
        )
        .await
        .map_err(query_err("reading the grid settings"))?;
    Ok(crate::kernel::grid::Grid {
        deg: row.get(0),
        bucket_secs: row.get::<_, f64>(1) as i64,
    })
}

/// Connects, migrates, and returns the connection string.
pub async fn prepare(target: &Target, chunk_interval: &str) -> Result<(String, Client), DbError> {
    let conninfo = target.resolve().await?;
    let mut client = connect(&conninfo).await?;
    let layout = migrate(&mut client, chunk_interval).await?;
    tracing::debug!("schema ready ({layout:?}) at {}", describe(&conninfo));
    // Names left by files that did not commit (a crash, an outage).
    dims::reclaim(&conninfo, 1).await?;
    Ok((conninfo, client))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::error::SqlState;

    #[test]
    fn data_faults_are_told_from_outages_by_sqlstate() {
        for data in [
            SqlState::CHARACTER_NOT_IN_REPERTOIRE, // 22021, e.g. a NUL byte
            SqlState::UNTRANSLATABLE_CHARACTER,    // 22P05
            SqlState::NUMERIC_VALUE_OUT_OF_RANGE,
            SqlState::UNIQUE_VIOLATION,
            SqlState::PROGRAM_LIMIT_EXCEEDED, // 54000
        ] {
            assert_eq!(fault_of_code(Some(&data)), Fault::Data, "{}", data.code());
        }
        for env in [
            SqlState::CONNECTION_FAILURE,
            SqlState::DISK_FULL,
            SqlState::OUT_OF_MEMORY,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::QUERY_CANCELED,
            SqlState::IO_ERROR,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::INVALID_PASSWORD,
            SqlState::INSUFFICIENT_PRIVILEGE,
            SqlState::UNDEFINED_TABLE,
        ] {
            assert_eq!(
                fault_of_code(Some(&env)),
                Fault::Environment,
                "{}",
                env.code()
            );
        }
        // No server answer at all (a lost connection).
        assert_eq!(fault_of_code(None), Fault::Environment);
    }

    #[test]
    fn server_text_is_escaped_and_capped() {
        assert_eq!(clip("a\0b\nc"), "a\\u{0}b\\nc");
        let long = "x".repeat(1000);
        assert_eq!(clip(&long).chars().count(), 301);
    }
}
