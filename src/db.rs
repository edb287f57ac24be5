//! Database access: which database to use, connecting with errors that say
//! what to do, and the versioned, idempotent schema migrations in `sql/`.

use crate::embedded::Embedded;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

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
    #[error("PostGIS is not installed on the PostgreSQL server at {target}\n  hint: install it on the server, e.g. `apt-get install -y postgresql-{major}-postgis-3`, then run the command again")]
    NoPostgis { target: String, major: String },
    #[error("{context}: {source}")]
    Query {
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(transparent)]
    Embedded(#[from] crate::embedded::EmbeddedError),
}

pub fn query_err(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> DbError {
    let context = context.into();
    move |source| DbError::Query { context, source }
}

/// The database a command works on.
#[derive(Debug, Clone)]
pub enum Target {
    /// `DATABASE_URL` / `--database-url`: a libpq URL or key/value string.
    Url(String),
    /// The embedded cluster in this directory (default `data/pg`).
    Embedded(PathBuf),
}

/// Name of the database the embedded cluster serves trips from.
pub const EMBEDDED_DB: &str = "tripload";

impl Target {
    /// Connection string for this target, starting the embedded server (and
    /// creating its database) when needed. Blocking: call from a blocking context.
    pub async fn resolve(&self) -> Result<String, DbError> {
        match self {
            Target::Url(u) => Ok(u.clone()),
            Target::Embedded(dir) => {
                let dir = dir.clone();
                let emb = tokio::task::spawn_blocking(move || Embedded::ensure_running(&dir))
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
                Ok(emb.conninfo(EMBEDDED_DB))
            }
        }
    }

    pub fn embedded_dir(&self) -> Option<&Path> {
        match self {
            Target::Embedded(d) => Some(d),
            Target::Url(_) => None,
        }
    }
}

/// `host:port/db` of a connection string, never the password.
pub fn describe(conninfo: &str) -> String {
    let Ok(cfg) = conninfo.parse::<tokio_postgres::Config>() else {
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
    let Ok(cfg) = conninfo.parse::<tokio_postgres::Config>() else {
        return false;
    };
    cfg.get_hosts().iter().all(|h| match h {
        tokio_postgres::config::Host::Unix(_) => true,
        tokio_postgres::config::Host::Tcp(s) => {
            matches!(s.as_str(), "localhost" | "127.0.0.1" | "::1")
        }
    })
}

/// TLS for database connections. With `sslmode=prefer` (the default) the
/// session is encrypted when the server offers TLS and plain otherwise; with
/// `sslmode=require` it must be encrypted; `sslmode=disable` never tries.
/// As libpq does at these modes, the server's certificate is not verified
/// (encryption, not authentication of the server): `verify-ca` and
/// `verify-full` are not supported yet.
pub fn tls() -> Result<Tls, DbError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| DbError::BadUrl(format!("TLS setup: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
        .with_no_client_auth();
    Ok(Tls(MakeRustlsConnect::new(config)))
}

/// [`MakeRustlsConnect`] that accepts any host: a unix socket path or a
/// name that is not a DNS name would be refused as a TLS server name, and
/// since the certificate is not verified the name only goes into SNI.
#[derive(Clone)]
pub struct Tls(MakeRustlsConnect);

impl<S> tokio_postgres::tls::MakeTlsConnect<S> for Tls
where
    MakeRustlsConnect: tokio_postgres::tls::MakeTlsConnect<S>,
{
    type Stream = <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<S>>::Stream;
    type TlsConnect = <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<S>>::TlsConnect;
    type Error = <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<S>>::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Self::TlsConnect, Self::Error> {
        let name = if rustls::pki_types::ServerName::try_from(domain).is_ok() {
            domain
        } else {
            "localhost"
        };
        tokio_postgres::tls::MakeTlsConnect::<S>::make_tls_connect(&mut self.0, name)
    }
}

/// Accepts any server certificate but still checks the handshake signatures,
/// which is what libpq's `sslmode=require` does.
#[derive(Debug)]
struct EncryptOnly(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The server's own message for a database error ("db error" alone says
/// nothing), or the error with its causes (e.g. a TLS handshake failure).
pub fn error_text(e: &tokio_postgres::Error) -> String {
    if let Some(d) = e.as_db_error() {
        return format!("{}: {}", d.severity(), d.message());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Connects and drives the connection on the runtime.
pub async fn connect(conninfo: &str) -> Result<Client, DbError> {
    let cfg: tokio_postgres::Config = conninfo
        .parse()
        .map_err(|e: tokio_postgres::Error| DbError::BadUrl(e.to_string()))?;
    let (client, connection) = cfg.connect(tls()?).await.map_err(|e| {
        let reason = error_text(&e);
        let hint = if reason.contains("password") || reason.contains("authentication") {
            "check the user and password in DATABASE_URL"
        } else if reason.contains("does not exist") {
            "create the database first (createdb NAME), or point DATABASE_URL at an existing one"
        } else {
            "is the server running and reachable? check host and port in DATABASE_URL, or unset DATABASE_URL to use the embedded database"
        };
        DbError::Connect {
            target: describe(conninfo),
            reason,
            hint: hint.into(),
        }
    })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("database connection closed: {e}");
        }
    });
    Ok(client)
}

/// How `trips` is laid out in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeLayout {
    Hypertable,
    PlainBrin,
}

struct Migration {
    version: i32,
    name: &'static str,
    sql: &'static str,
}

const CORE: Migration = Migration {
    version: 1,
    name: "core",
    sql: include_str!("../sql/001_core.sql"),
};
/// Plain SQL migrations applied after the time layout, in order.
const LATER: &[Migration] = &[
    Migration {
        version: 3,
        name: "ingestion events",
        sql: include_str!("../sql/003_events.sql"),
    },
    Migration {
        version: 4,
        name: "rollups",
        sql: include_str!("../sql/004_rollups.sql"),
    },
    Migration {
        version: 6,
        name: "cell points",
        sql: include_str!("../sql/006_cell_points.sql"),
    },
    // Drops cell points of the older layout, then (re)creates and backfills.
    Migration {
        version: 7,
        name: "cell points with latitude positions",
        sql: concat!(
            include_str!("../sql/007_cell_points_lat_pos.sql"),
            include_str!("../sql/006_cell_points.sql")
        ),
    },
    Migration {
        version: 8,
        name: "cell points written beside the file's transaction",
        sql: include_str!("../sql/008_cell_points_pending.sql"),
    },
    Migration {
        version: 9,
        name: "cell points as order-preserving keys",
        sql: include_str!("../sql/009_cell_points_keys.sql"),
    },
    Migration {
        version: 12,
        name: "cell points in one table; compaction of small files",
        sql: include_str!("../sql/012_cell_points_one_table.sql"),
    },
];
/// Query functions: replaced on every migrate, so they follow the binary.
const FUNCTIONS: &str = include_str!("../sql/005_queries.sql");

/// The grid the rollups use (fixed when the schema was created).
pub async fn grid(client: &Client) -> Result<crate::rollup::Grid, DbError> {
    let row = client
        .query_one(
            "SELECT coalesce(tripload_setting('grid_deg'), 0.01), coalesce(tripload_setting('tod_bucket_seconds'), 3600)",
            &[],
        )
        .await
        .map_err(query_err("reading the grid settings"))?;
    Ok(crate::rollup::Grid {
        deg: row.get(0),
        bucket_secs: row.get::<_, f64>(1) as i64,
    })
}
const LAYOUT_TIMESCALE: &str = include_str!("../sql/002_time_layout_timescaledb.sql");
const LAYOUT_PLAIN: &str = include_str!("../sql/002_time_layout_plain.sql");

/// Applies pending migrations; safe to run concurrently from several loaders.
/// `chunk_interval` (e.g. "7 days") is used when the hypertable is created.
pub async fn migrate(client: &mut Client, chunk_interval: &str) -> Result<TimeLayout, DbError> {
    let target = "the database".to_string();
    let postgis: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'postgis')",
            &[],
        )
        .await
        .map_err(query_err("checking for PostGIS"))?
        .get(0);
    if !postgis {
        let major: String = client
            .query_one("SELECT current_setting('server_version_num')", &[])
            .await
            .map_err(query_err("reading the server version"))?
            .get(0);
        return Err(DbError::NoPostgis {
            target,
            major: major.get(..2).unwrap_or("15").to_string(),
        });
    }
    // Before the migration's one transaction, which could not lock them all.
    crate::points_writer::absorb_segment_tables(client).await?;
    let tx = client
        .transaction()
        .await
        .map_err(query_err("starting the migration transaction"))?;
    tx.batch_execute(
        "SELECT pg_advisory_xact_lock(hashtext('tripload-migrate'));
         CREATE TABLE IF NOT EXISTS tripload_schema (
             version    integer PRIMARY KEY,
             name       text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now());",
    )
    .await
    .map_err(query_err("creating the migrations table"))?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM tripload_schema", &[])
        .await
        .map_err(query_err("reading applied migrations"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !applied.contains(&CORE.version) {
        tx.batch_execute(CORE.sql)
            .await
            .map_err(query_err("applying migration 1 (core schema)"))?;
        tx.execute(
            "INSERT INTO tripload_schema (version, name) VALUES ($1, $2)",
            &[&CORE.version, &CORE.name],
        )
        .await
        .map_err(query_err("recording migration 1"))?;
    }
    let layout = if applied.contains(&2) {
        current_layout(&tx).await?
    } else {
        let layout = if timescale_usable(&tx).await? {
            TimeLayout::Hypertable
        } else {
            TimeLayout::PlainBrin
        };
        let sql = match layout {
            TimeLayout::Hypertable => {
                let interval: String = tx
                    .query_one("SELECT quote_literal($1::text::interval::text)", &[&chunk_interval])
                    .await
                    .map_err(query_err(format!(
                        "checking --chunk-interval {chunk_interval:?} (use a PostgreSQL interval such as '7 days')"
                    )))?
                    .get(0);
                LAYOUT_TIMESCALE.replace("{chunk_interval}", &interval)
            }
            TimeLayout::PlainBrin => LAYOUT_PLAIN.to_string(),
        };
        tx.batch_execute(&sql)
            .await
            .map_err(query_err("applying migration 2 (time layout)"))?;
        let name = match layout {
            TimeLayout::Hypertable => "time layout: timescaledb hypertable",
            TimeLayout::PlainBrin => "time layout: plain table + BRIN",
        };
        tx.execute(
            "INSERT INTO tripload_schema (version, name) VALUES (2, $1)",
            &[&name],
        )
        .await
        .map_err(query_err("recording migration 2"))?;
        layout
    };
    for m in LATER.iter().filter(|m| !applied.contains(&m.version)) {
        tx.batch_execute(m.sql).await.map_err(query_err(format!(
            "applying migration {} ({})",
            m.version, m.name
        )))?;
        tx.execute(
            "INSERT INTO tripload_schema (version, name) VALUES ($1, $2)",
            &[&m.version, &m.name],
        )
        .await
        .map_err(query_err(format!("recording migration {}", m.version)))?;
    }
    tx.batch_execute(FUNCTIONS)
        .await
        .map_err(query_err("creating the query functions"))?;
    tx.commit()
        .await
        .map_err(query_err("committing migrations"))?;
    Ok(layout)
}

/// TimescaleDB is used when it is already created in this database, or
/// available and preloaded (it cannot work without shared_preload_libraries).
async fn timescale_usable(tx: &tokio_postgres::Transaction<'_>) -> Result<bool, DbError> {
    let row = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'),
                    EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'),
                    current_setting('shared_preload_libraries') LIKE '%timescaledb%'",
            &[],
        )
        .await
        .map_err(query_err("checking for TimescaleDB"))?;
    let (created, available, preloaded): (bool, bool, bool) = (row.get(0), row.get(1), row.get(2));
    if available && !preloaded && !created {
        tracing::warn!("timescaledb is installed but not in shared_preload_libraries: using a plain table with a BRIN index");
    }
    Ok(created || (available && preloaded))
}

async fn current_layout(tx: &tokio_postgres::Transaction<'_>) -> Result<TimeLayout, DbError> {
    let name: String = tx
        .query_one("SELECT name FROM tripload_schema WHERE version = 2", &[])
        .await
        .map_err(query_err("reading the time layout"))?
        .get(0);
    Ok(if name.contains("hypertable") {
        TimeLayout::Hypertable
    } else {
        TimeLayout::PlainBrin
    })
}
