//! `GET /api/openapi.json`: the OpenAPI 3 description of every endpoint,
//! generated with utoipa from the declarations below (the handlers are in
//! `api`, `sse`, `metrics` and `upload`).
#![allow(dead_code)]

use axum::Json;
use utoipa::{OpenApi, ToSchema};

/// `{"error": "what is wrong"}`
#[derive(ToSchema)]
pub struct ErrorDoc {
    pub error: String,
}

#[derive(ToSchema)]
pub struct WeekDoc {
    /// Monday of the ISO week, YYYY-MM-DD.
    pub week: String,
    pub trips: i64,
}

/// Exactly what `tripload weekly --format json` prints.
#[derive(ToSchema)]
pub struct WeeklyDoc {
    /// `region NAME` or `bbox MINLON,MINLAT,MAXLON,MAXLAT by BY`.
    pub area: String,
    pub weeks: Vec<WeekDoc>,
    pub total_trips: i64,
    pub week_count: i64,
    pub weekly_average: f64,
}

#[derive(ToSchema)]
pub struct GroupDoc {
    pub trips: i64,
    pub region: String,
    pub origin_cell: Vec<i32>,
    pub destination_cell: Vec<i32>,
    pub origin_corner: Vec<f64>,
    pub destination_corner: Vec<f64>,
    /// HH:MM (UTC)
    pub bucket_start: String,
    pub first_at: String,
    pub last_at: String,
    pub datasources: Vec<String>,
}

/// Exactly what `tripload groups --format json` prints.
#[derive(ToSchema)]
pub struct GroupsDoc {
    pub cell_deg: f64,
    pub bucket_minutes: i32,
    pub groups: Vec<GroupDoc>,
}

#[derive(ToSchema)]
pub struct FileDoc {
    pub file_id: i32,
    pub file: String,
    pub content_hash: String,
    pub status: String,
    pub size_bytes: i64,
    pub rows_loaded: i64,
    pub rows_rejected: i64,
    pub seconds: Option<f64>,
    pub rows_per_second: Option<f64>,
    pub started_at: Option<String>,
    pub committed_at: Option<String>,
    pub loaded_by: String,
    /// Where the rejects file is by default (beside the processed file).
    pub rejects_file: Option<String>,
}

#[derive(ToSchema)]
pub struct FilesDoc {
    pub files: Vec<FileDoc>,
}

/// Trips per grid cell: each cell is `[ix, iy, trips]`, its south-west
/// corner at `(ix * cell_deg, iy * cell_deg)`.
#[derive(ToSchema)]
pub struct CellsDoc {
    pub cell_deg: f64,
    pub by: String,
    pub from: Option<String>,
    pub to: Option<String>,
    pub cells: Vec<Vec<i64>>,
}

/// Which end of a trip places it in a bounding box.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum ByDoc {
    Origin,
    Destination,
    Both,
}

/// Which end of a trip counts in a cell.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum SideDoc {
    Origin,
    Destination,
}

/// A CSV file's bytes, as they are.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct CsvDoc(Vec<u8>);

#[derive(ToSchema)]
pub struct HealthDoc {
    pub status: String,
}

#[derive(ToSchema)]
pub struct UploadDoc {
    /// The name in the landing directory.
    pub file: String,
    /// Content hash (the ledger's key, `xxh3-128:...`).
    pub id: String,
    pub size_bytes: u64,
}

#[derive(ToSchema)]
pub struct IngestDoc {
    pub started: bool,
    pub landing: String,
}

#[utoipa::path(get, path = "/api/weekly", tag = "analytics",
    description = "Per-week trip counts and the weekly average for a region or a bounding box (one of them).",
    params(
        ("region" = Option<String>, Query, description = "Region name (one of region and bbox)", min_length = 1, max_length = 1000, example = "Prague"),
        ("bbox" = Option<String>, Query, description = "MINLON,MINLAT,MAXLON,MAXLAT (WGS84, edges inclusive; MIN <= MAX)", pattern = r"^\s*[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?\s*(,\s*[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?\s*){3}$", example = "14.2,49.9,14.8,50.2"),
        ("by" = Option<ByDoc>, Query, description = "origin (default), destination or both"),
        ("from" = Option<chrono::NaiveDate>, Query, description = "First day of the window, YYYY-MM-DD"),
        ("to" = Option<chrono::NaiveDate>, Query, description = "Last day of the window, YYYY-MM-DD (not before from)"),
    ),
    responses(
        (status = 200, body = WeeklyDoc),
        (status = 400, body = ErrorDoc, description = "Bad input"),
        (status = 401, body = ErrorDoc, description = "Token required"),
        (status = 503, body = ErrorDoc, description = "Statement timeout, busy, or database away"),
    ))]
fn weekly() {}

#[utoipa::path(get, path = "/api/groups", tag = "analytics",
    description = "Trip groups (same region, origin cell, destination cell, time-of-day bucket), largest first.",
    params(
        ("region" = Option<String>, Query, description = "Only trips of this region", min_length = 1, max_length = 1000, example = "Prague"),
        ("bbox" = Option<String>, Query, description = "MINLON,MINLAT,MAXLON,MAXLAT (MIN <= MAX)", pattern = r"^\s*[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?\s*(,\s*[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?\s*){3}$", example = "14.2,49.9,14.8,50.2"),
        ("by" = Option<ByDoc>, Query, description = "origin (default), destination or both"),
        ("cell_deg" = Option<f64>, Query, description = "Cell size in degrees (default: the database grid)", exclusive_minimum = 0, maximum = 180),
        ("bucket_minutes" = Option<i32>, Query, description = "Time-of-day bucket, 1 to 1440 (default 60)", minimum = 1, maximum = 1440),
        ("top" = Option<i32>, Query, description = "Groups to list, 1 to 10000 (default 20)", minimum = 1, maximum = 10000),
    ),
    responses(
        (status = 200, body = GroupsDoc),
        (status = 400, body = ErrorDoc),
        (status = 401, body = ErrorDoc),
        (status = 503, body = ErrorDoc),
    ))]
fn groups() {}

#[utoipa::path(get, path = "/api/files", tag = "ingestion",
    description = "Committed files from the ledger, newest first.",
    params(("limit" = Option<i64>, Query, description = "1 to 1000 (default 50)", minimum = 1, maximum = 1000)),
    responses(
        (status = 200, body = FilesDoc),
        (status = 400, body = ErrorDoc),
        (status = 401, body = ErrorDoc),
        (status = 503, body = ErrorDoc),
    ))]
fn files() {}

#[utoipa::path(get, path = "/api/cells", tag = "analytics",
    description = "Trips per grid cell from the cell/week rollup (origins or destinations) in a window.",
    params(
        ("by" = Option<SideDoc>, Query, description = "origin (default) or destination"),
        ("from" = Option<chrono::NaiveDate>, Query, description = "YYYY-MM-DD"),
        ("to" = Option<chrono::NaiveDate>, Query, description = "YYYY-MM-DD (not before from)"),
    ),
    responses(
        (status = 200, body = CellsDoc),
        (status = 400, body = ErrorDoc),
        (status = 401, body = ErrorDoc),
        (status = 503, body = ErrorDoc),
    ))]
fn cells() {}

#[utoipa::path(get, path = "/api/events", tag = "ingestion",
    description = "Server-Sent Events: `id:` is the ingestion_events id, `data:` the v1 event payload. \
                   Resumes after the `Last-Event-ID` header (or `after`); otherwise starts with the last `catch_up` events.",
    params(
        ("catch_up" = Option<i64>, Query, description = "Past events sent first, 0 to 10000 (default 20)", minimum = 0, maximum = 10000),
        ("after" = Option<i64>, Query, description = "Resume after this event id (as Last-Event-ID)", minimum = 0),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id"),
    ),
    responses(
        (status = 200, content_type = "text/event-stream", body = String),
        (status = 400, body = ErrorDoc),
        (status = 401, body = ErrorDoc),
        (status = 503, body = ErrorDoc),
    ))]
fn events() {}

#[utoipa::path(put, path = "/api/landing/{name}", tag = "ingestion",
    description = "Streams the body into the landing directory under a temporary name and renames it into place when complete. Needs --allow-upload.",
    params(("name" = String, Path, description = "File name: letters, digits, '.', '_', '-'; no leading dot, no '..'; \
        not ending in .part, .tmp, .rejects.csv or .error.txt", pattern = r"^(?!.*\.\.)(?!.*\.(part|tmp|rejects\.csv|error\.txt)$)[A-Za-z0-9_-][A-Za-z0-9._-]*$", max_length = 200, example = "trips-2018-05.csv")),
    request_body(content = CsvDoc, content_type = "text/csv", description = "The file's bytes (not empty)"),
    responses(
        (status = 202, body = UploadDoc),
        (status = 400, body = ErrorDoc, description = "A name not allowed, or an empty body"),
        (status = 401, body = ErrorDoc),
        (status = 403, body = ErrorDoc, description = "Uploads are off"),
        (status = 404, description = "No file name in the path"),
        (status = 409, body = ErrorDoc, description = "A file of that name is waiting"),
        (status = 413, body = ErrorDoc, description = "Over the size limit"),
    ))]
fn landing() {}

#[utoipa::path(post, path = "/api/ingest", tag = "ingestion",
    description = "Loads what is in the landing directory now (in the background; follow /api/events). Needs --allow-upload.",
    responses(
        (status = 202, body = IngestDoc),
        (status = 401, body = ErrorDoc),
        (status = 403, body = ErrorDoc),
        (status = 409, body = ErrorDoc, description = "A load started here still runs"),
    ))]
fn ingest() {}

#[utoipa::path(get, path = "/healthz", tag = "operations",
    description = "Whether the database answers; needs no token.",
    security(()),
    responses((status = 200, body = HealthDoc), (status = 503, body = ErrorDoc)))]
fn healthz() {}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    description = "Prometheus / OpenMetrics text format.",
    responses((status = 200, content_type = "application/openmetrics-text", body = String),
              (status = 401, body = ErrorDoc), (status = 503, body = ErrorDoc)))]
fn metrics() {}

#[derive(OpenApi)]
#[openapi(
    info(title = "tripload", description = "Trip analytics and ingestion status over HTTP (`tripload serve`)."),
    paths(weekly, groups, files, cells, events, landing, ingest, healthz, metrics),
    components(schemas(ByDoc, SideDoc)),
    modifiers(&Bearer),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct Bearer;

impl utoipa::Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// `GET /api/openapi.json`.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
