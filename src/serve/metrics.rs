//! `GET /metrics`: Prometheus text format (prometheus-client), read from the
//! database at each scrape: files by status (committed from the ledger, the
//! other outcomes from `ingestion_events` within its retention), rows loaded
//! and rejected, bytes, the load duration histogram, stored events, files
//! waiting in the landing directory, the last commit time, open event streams.

use crate::db::query_err;
use crate::serve::error::ApiError;
use crate::serve::Shared;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Upper bounds (seconds) of the load duration buckets.
pub const DURATION_BUCKETS: [f64; 11] = [
    0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// A histogram whose buckets were counted by the database.
#[derive(Debug)]
struct CountedHistogram {
    sum: f64,
    count: u64,
    /// (upper bound, observations in this bucket alone), +Inf last.
    buckets: Vec<(f64, u64)>,
}

impl EncodeMetric for CountedHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<Vec<(String, String)>>(self.sum, self.count, &self.buckets, None)
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Per-bucket counts from cumulative ones (`le` counts, then the total).
fn per_bucket(cumulative: &[i64], total: i64) -> Vec<(f64, u64)> {
    let mut out = Vec::with_capacity(cumulative.len() + 1);
    let mut prev = 0i64;
    for (bound, c) in DURATION_BUCKETS.iter().zip(cumulative) {
        out.push((*bound, (c - prev).max(0) as u64));
        prev = *c;
    }
    out.push((f64::INFINITY, (total - prev).max(0) as u64));
    out
}

fn ledger_sql() -> String {
    let buckets: Vec<String> = DURATION_BUCKETS
        .iter()
        .map(|b| format!("count(*) FILTER (WHERE load_seconds <= {b})"))
        .collect();
    format!(
        "SELECT count(*), coalesce(sum(rows_loaded), 0)::bigint, coalesce(sum(rows_rejected), 0)::bigint,
                coalesce(sum(size_bytes), 0)::bigint, coalesce(sum(load_seconds), 0)::float8,
                coalesce(extract(epoch FROM max(committed_at)), 0)::float8,
                ARRAY[{}]::bigint[]
         FROM load_files WHERE committed_at IS NOT NULL",
        buckets.join(", ")
    )
}

/// Regular files waiting in the landing directory (not temporary names).
fn landing_files(dir: &std::path::Path) -> i64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            !(n.starts_with('.') || n.ends_with(".part") || n.ends_with(".tmp"))
        })
        .count() as i64
}

fn gauge(registry: &mut Registry, name: &str, help: &str, v: i64) {
    let g: Gauge = Gauge::default();
    g.set(v);
    registry.register(name, help, g);
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<Shared>) -> Result<impl IntoResponse, ApiError> {
    let counts = read_counts(&state).await?;
    let mut registry = Registry::default();
    register_files(&mut registry, &counts);
    register_process(&mut registry, &state, counts.events_stored);
    let mut body = String::new();
    prometheus_client::encoding::text::encode(&mut body, &registry)
        .map_err(|e| ApiError::Internal(format!("encoding metrics: {e}")))?;
    Ok((
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    ))
}

/// What the metrics are made of, read in one borrowed connection.
struct Counts {
    /// The ledger's totals ([`ledger_sql`]).
    ledger: tokio_postgres::Row,
    /// Files by event kind (failed, skipped, …).
    kinds: Vec<(String, i64)>,
    events_stored: i64,
}

async fn read_counts(state: &Shared) -> Result<Counts, ApiError> {
    let client = state.client().await?;
    let ledger = client
        .query_one(&ledger_sql(), &[])
        .await
        .map_err(query_err("reading the ledger for metrics"))?;
    let kinds = client
        .query(
            "SELECT kind, count(*) FROM ingestion_events
             WHERE kind IN ('failed', 'skipped', 'refused', 'quarantined', 'released')
             GROUP BY kind",
            &[],
        )
        .await
        .map_err(query_err("reading ingestion events for metrics"))?
        .iter()
        .map(|k| (k.get(0), k.get(1)))
        .collect();
    let events_stored = client
        .query_one("SELECT count(*) FROM ingestion_events", &[])
        .await
        .map_err(query_err("reading ingestion events for metrics"))?
        .get(0);
    Ok(Counts {
        ledger,
        kinds,
        events_stored,
    })
}

/// Files by outcome, rows, bytes, the last commit and the load durations.
fn register_files(registry: &mut Registry, c: &Counts) {
    let l = &c.ledger;
    let files = Family::<Vec<(String, String)>, Gauge>::default();
    files
        .get_or_create(&vec![("status".into(), "committed".into())])
        .set(l.get(0));
    for (kind, n) in &c.kinds {
        files
            .get_or_create(&vec![("status".into(), kind.clone())])
            .set(*n);
    }
    registry.register(
        "tripload_files",
        "Files by outcome: committed from the ledger, others from ingestion_events (within its retention)",
        files,
    );
    gauge(
        registry,
        "tripload_rows_loaded",
        "Rows loaded by committed files",
        l.get(1),
    );
    gauge(
        registry,
        "tripload_rows_rejected",
        "Rows rejected in committed files",
        l.get(2),
    );
    gauge(
        registry,
        "tripload_bytes_loaded",
        "Bytes of committed files",
        l.get(3),
    );
    let last: Gauge<f64, AtomicU64> = Gauge::default();
    last.set(l.get(5));
    registry.register(
        "tripload_last_commit_timestamp_seconds",
        "Unix time of the last committed file (0: none)",
        last,
    );
    let total: i64 = l.get(0);
    let cumulative: Vec<i64> = l.get(6);
    registry.register(
        "tripload_load_duration_seconds",
        "Load time of committed files",
        CountedHistogram {
            sum: l.get(4),
            count: total.max(0) as u64,
            buckets: per_bucket(&cumulative, total),
        },
    );
}

/// The events backlog, the landing directory and this server's streams.
fn register_process(registry: &mut Registry, state: &Shared, events_stored: i64) {
    gauge(
        registry,
        "tripload_events_stored",
        "Rows in ingestion_events",
        events_stored,
    );
    gauge(
        registry,
        "tripload_landing_files",
        "Files waiting in the landing directory",
        landing_files(&state.cfg.landing),
    );
    gauge(
        registry,
        "tripload_serve_event_streams",
        "Event streams open now",
        (state.cfg.max_streams.max(1) - state.streams.available_permits()) as i64,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cumulative_counts_become_per_bucket() {
        let cum = [0, 1, 1, 3, 3, 3, 3, 3, 3, 3, 4];
        let b = per_bucket(&cum, 6);
        assert_eq!(b.len(), DURATION_BUCKETS.len() + 1);
        assert_eq!(b[1], (0.5, 1));
        assert_eq!(b[3], (2.0, 2));
        assert_eq!(b[10], (600.0, 1));
        assert_eq!(b[11].1, 2);
        assert!(b[11].0.is_infinite());
    }
}
