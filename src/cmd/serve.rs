//! The `serve` subcommand's options and their check into a [`ServeConfig`].

use super::load::LoadOptions;
use super::{EXIT_OK, EXIT_SETUP};
use crate::db::Target;
use crate::serve::{ServeConfig, ServeError};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Options of `tripload serve` (and of the server `watch --serve` runs).
#[derive(Debug, clap::Args)]
pub struct ServerOptions {
    /// Bearer token required on every API request (`Authorization: Bearer T`).
    /// Prefer the environment variable: a command line is visible to other users.
    #[arg(long, env = "TRIPLOAD_SERVE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Serve without a token on a non-loopback address (only behind something
    /// that authenticates).
    #[arg(long)]
    pub no_auth: bool,
    /// Accept uploads into the landing directory (`PUT /api/landing/NAME`)
    /// and load requests (`POST /api/ingest`).
    #[arg(long, env = "TRIPLOAD_SERVE_ALLOW_UPLOAD")]
    pub allow_upload: bool,
    /// Largest upload, MiB.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub max_upload_mib: u64,
    /// Seconds a query may run before the database cancels it (answered 503).
    #[arg(long, default_value_t = 10.0)]
    pub statement_timeout: f64,
    /// Queries at the same time (each on one of as many pooled connections).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub max_queries: u64,
    /// Event streams (`/api/events` clients) at the same time; each holds a
    /// database connection.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub max_streams: u64,
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (loopback by default; any other address needs
    /// --token or --no-auth).
    #[arg(long, env = "TRIPLOAD_SERVE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The landing directory uploads go to and `POST /api/ingest` loads.
    #[arg(long, default_value = "data/landing")]
    pub landing: PathBuf,
    #[command(flatten)]
    pub server: ServerOptions,
    #[command(flatten)]
    pub opts: LoadOptions,
}

impl ServerOptions {
    /// The checked configuration (a message saying what is wrong otherwise).
    pub fn config(
        self,
        target: Target,
        listen: SocketAddr,
        landing: PathBuf,
        load: crate::ingest::loader::Settings,
    ) -> Result<ServeConfig, String> {
        let token = match self.token {
            Some(t) if t.trim().is_empty() => {
                return Err("the token is empty: set a real one or leave it unset".into())
            }
            Some(t) if t.chars().any(|c| c.is_control() || c == ' ') => {
                return Err("the token may not contain spaces or control characters".into())
            }
            t => t,
        };
        crate::serve::check_listen(listen, token.as_deref(), self.no_auth)
            .map_err(|e| e.to_string())?;
        if !(self.statement_timeout.is_finite()
            && self.statement_timeout >= 0.001
            && self.statement_timeout <= 86_400.0)
        {
            return Err(
                "--statement-timeout must be a number of seconds from 0.001 to 86400".into(),
            );
        }
        Ok(ServeConfig {
            target,
            listen,
            token,
            allow_upload: self.allow_upload,
            statement_timeout: std::time::Duration::from_secs_f64(self.statement_timeout),
            max_queries: self.max_queries as usize,
            max_streams: self.max_streams as usize,
            landing,
            max_upload_bytes: self.max_upload_mib << 20,
            // The server's own threads keep their priority.
            load: crate::ingest::loader::Settings {
                quiet: true,
                ..load
            },
            beside_watch: false,
        })
    }
}

/// Runs `tripload serve`; returns the exit code.
pub async fn run(args: ServeArgs, target: Target) -> u8 {
    let cfg = match args
        .opts
        .settings()
        .and_then(|load| args.server.config(target, args.listen, args.landing, load))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_SETUP;
        }
    };
    match crate::serve::run(cfg).await {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("error: {e}");
            if let ServeError::Db(_) = e {
                eprintln!("hint: the server needs a reachable database with the tripload schema (`tripload db migrate`)");
            }
            EXIT_SETUP
        }
    }
}

/// A server running in the watcher's process (`watch --serve ADDR`).
pub struct Beside {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
}

/// Starts the server for `watch --serve` (nothing without an address);
/// `POST /api/ingest` is refused there: the watcher loads the landing directory.
pub async fn start_beside_watch(
    addr: Option<SocketAddr>,
    server: ServerOptions,
    target: &Target,
    landing: &std::path::Path,
    load: &crate::ingest::loader::Settings,
) -> Result<Option<Beside>, String> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let mut cfg = server.config(target.clone(), addr, landing.to_path_buf(), load.clone())?;
    cfg.beside_watch = true;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(crate::serve::serve_on(cfg, listener, async {
        let _ = stopped.await;
    }));
    Ok(Some(Beside { stop, task }))
}

impl Beside {
    /// Stops the server (after the watcher has stopped).
    pub async fn stop(self) {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(Err(e)) => eprintln!("error: the HTTP server: {e}"),
            Err(e) => eprintln!("error: the HTTP server task: {e}"),
            Ok(Ok(())) => {}
        }
    }
}
