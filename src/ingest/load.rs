//! The `load` run: find the files, build the [`Loader`] once, load up to
//! `--jobs` files at a time, summarize.
//! One file's failure is reported and the run goes on.

use crate::db::Target;
use crate::ingest::context::LoadContext;
use crate::ingest::loader::{load_one, prune_events, Loader, Role, Settings, SetupError};
use crate::notify::report::{FileReport, Progress};
use futures_util::StreamExt;
use std::path::PathBuf;
use std::sync::Arc;

/// A checked load configuration (built from the command line).
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub target: Target,
    pub paths: Vec<PathBuf>,
    pub settings: Settings,
    /// Maintain the rollups (`--no-rollups` turns them off, to measure
    /// what they cost).
    pub rollups: bool,
}

/// Loads every file; returns one report per file.
pub async fn run(cfg: LoadConfig) -> Result<Vec<FileReport>, SetupError> {
    let files = crate::ingest::discover::discover(&cfg.paths)?;
    let progress = Arc::new(Progress::new(
        cfg.settings.quiet,
        cfg.settings.progress_every,
    ));
    if files.is_empty() {
        progress.line(&format!(
            "no files to load in {}",
            cfg.paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        return Ok(Vec::new());
    }
    let role = Role {
        label: format!("tripload {}", env!("CARGO_PKG_VERSION")),
        processed_dir: cfg.settings.processed_dir.clone(),
        failed_dir: cfg.settings.failed_dir.clone(),
        rollups: cfg.rollups,
    };
    let (loader, client) = Loader::build(&cfg.target, &cfg.settings, role).await?;
    prune_events(&client, cfg.settings.events_retention_days).await;
    let ctx = Arc::clone(&loader.ctx);
    let reports = futures_util::stream::iter(files)
        .map(|path| {
            let ctx = Arc::clone(&ctx);
            let progress = Arc::clone(&progress);
            async move {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let report = load_one(&ctx, &progress, &path, &name).await;
                progress.line(&one_line(&report));
                report
            }
        })
        .buffered(cfg.settings.jobs.max(1))
        .collect::<Vec<_>>()
        .await;
    after_the_files(&ctx).await;
    drop(ctx);
    loader.finish().await;
    if let Some(mail) = &cfg.settings.mail {
        crate::notify::mail::deliver(mail, &reports).await;
    }
    Ok(reports)
}

/// Deletes the names of this run's failed files that could not go while
/// others loaded, and merges the small files' rollups before the process
/// ends (the background compactor only merges what is worth it while files
/// keep coming).
async fn after_the_files(ctx: &LoadContext) {
    if let Err(e) = crate::db::dims::reclaim(&ctx.conninfo, 1).await {
        tracing::warn!(
            "could not delete the names of failed files: {}",
            e.one_line()
        );
    }
    if ctx.grid.is_some() {
        match crate::analytics::compact::compact(
            &ctx.conninfo,
            crate::analytics::compact::Policy::All,
            crate::analytics::compact::Wait::Yes,
        )
        .await
        {
            Ok(Some(c)) if c.files > 0 => tracing::info!("{c}"),
            Ok(_) => {}
            Err(e) => tracing::warn!(
                "compaction failed (the next load or `tripload db compact` retries): {e}"
            ),
        }
    }
}

pub fn one_line(r: &FileReport) -> String {
    use crate::notify::report::Status;
    let name = r.path.display();
    match &r.status {
        Status::Loaded => format!(
            "{name}: loaded {} rows ({} lines rejected, {} blank) in {:.2} s, {:.0} rows/s",
            r.rows_loaded,
            r.rows_rejected,
            r.blank_lines,
            r.seconds,
            r.rows_per_second()
        ),
        Status::AlreadyLoaded { file_name, .. } => {
            format!("{name}: already loaded (same content as {file_name}); skipped")
        }
        Status::Failed { reason } => format!("{name}: FAILED: {reason}"),
        Status::Error { reason } => format!("{name}: ERROR (left in place, retry later): {reason}"),
        Status::Refused { reason } => {
            format!("{name}: REFUSED (left in place, not read): {reason}")
        }
    }
}
