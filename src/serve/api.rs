//! The query endpoints: `/api/weekly` and `/api/groups` (the same JSON the
//! CLI prints with `--format json`, through the same functions), `/api/files`
//! (the ledger), `/api/cells` (trip density per grid cell for the map) and
//! `/healthz`. Parameters are checked here; anything wrong is a 400 that says
//! what.

use crate::analytics::groups::{self, Query as GroupsQuery};
use crate::analytics::weekly::{self, Area, By};
use crate::db::query_err;
use crate::serve::error::ApiError;
use crate::serve::Shared;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use serde_json::Value;
use std::collections::HashMap;

/// Query parameters, each given at most once, all of them known.
pub struct Params(HashMap<String, String>);

impl Params {
    /// Checks names against `known` (plus `token`, taken by the auth layer).
    pub fn parse(
        q: Result<Query<Vec<(String, String)>>, QueryRejection>,
        known: &[&str],
    ) -> Result<Params, ApiError> {
        let Query(pairs) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
        let mut map = HashMap::new();
        for (k, v) in pairs {
            if k == "token" {
                continue;
            }
            if !known.contains(&k.as_str()) {
                return Err(ApiError::BadRequest(format!(
                    "unknown parameter {k:?}; this endpoint takes {}",
                    known.join(", ")
                )));
            }
            if map.insert(k.clone(), v).is_some() {
                return Err(ApiError::BadRequest(format!("parameter {k:?} given twice")));
            }
        }
        Ok(Params(map))
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    fn bbox(&self) -> Result<Option<[f64; 4]>, ApiError> {
        self.get("bbox")
            .map(|b| weekly::parse_bbox(b).map_err(|e| ApiError::BadRequest(format!("bbox {e}"))))
            .transpose()
    }

    fn by(&self, allowed: &[By]) -> Result<By, ApiError> {
        let Some(s) = self.get("by") else {
            return Ok(By::Origin);
        };
        allowed
            .iter()
            .copied()
            .find(|b| b.as_str() == s)
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "by={s:?}: expected one of {}",
                    allowed
                        .iter()
                        .map(|b| b.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
    }

    /// A date exactly `YYYY-MM-DD` (OpenAPI's `format: date`; chrono alone
    /// would also take `2018-5-1` or `+2018-05-01`).
    fn date(&self, k: &str) -> Result<Option<chrono::NaiveDate>, ApiError> {
        self.get(k)
            .map(|s| {
                full_date(s).ok_or_else(|| {
                    ApiError::BadRequest(format!("{k}={s:?}: expected a date YYYY-MM-DD"))
                })
            })
            .transpose()
    }

    fn window(&self) -> Result<(Option<chrono::NaiveDate>, Option<chrono::NaiveDate>), ApiError> {
        let (from, to) = (self.date("from")?, self.date("to")?);
        if let (Some(f), Some(t)) = (from, to) {
            if f > t {
                return Err(ApiError::BadRequest(format!("from={f} is after to={t}")));
            }
        }
        Ok((from, to))
    }

    fn int(&self, k: &str, default: i64, min: i64, max: i64) -> Result<i64, ApiError> {
        let Some(s) = self.get(k) else {
            return Ok(default);
        };
        match s.parse::<i64>() {
            Ok(v) if (min..=max).contains(&v) => Ok(v),
            _ => Err(ApiError::BadRequest(format!(
                "{k}={s:?}: expected a whole number from {min} to {max}"
            ))),
        }
    }

    fn region(&self) -> Result<Option<String>, ApiError> {
        match self.get("region") {
            None => Ok(None),
            Some(r) if r.is_empty() || r.chars().count() > 1000 || r.contains('\0') => Err(
                ApiError::BadRequest(format!("region={r:?}: expected a region name")),
            ),
            Some(r) => Ok(Some(r.to_string())),
        }
    }
}

/// `YYYY-MM-DD`, four-digit year, two-digit month and day, a real date.
fn full_date(s: &str) -> Option<chrono::NaiveDate> {
    let b = s.as_bytes();
    let shape = b.len() == 10
        && b.iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        });
    shape
        .then(|| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok())
        .flatten()
}

pub const WEEKLY_PARAMS: &[&str] = &["region", "bbox", "by", "from", "to"];

/// The checked arguments of `/api/weekly`.
pub fn weekly_args(
    p: &Params,
) -> Result<
    (
        Area,
        By,
        Option<chrono::NaiveDate>,
        Option<chrono::NaiveDate>,
    ),
    ApiError,
> {
    let area = match (p.region()?, p.bbox()?) {
        (Some(r), None) => Area::Region(r),
        (None, Some(b)) => Area::BBox(b),
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest("give region or bbox, not both".into()))
        }
        (None, None) => {
            return Err(ApiError::BadRequest(
                "missing region=NAME or bbox=MINLON,MINLAT,MAXLON,MAXLAT".into(),
            ))
        }
    };
    let by = p.by(&[By::Origin, By::Destination, By::Both])?;
    let (from, to) = p.window()?;
    Ok((area, by, from, to))
}

/// A region without trips is a 400 naming the known ones, as the CLI's
/// exit code 2.
async fn require_region(client: &tokio_postgres::Client, name: &str) -> Result<(), ApiError> {
    use crate::analytics::regions::{require, QueryError};
    match require(client, name).await {
        Ok(()) => Ok(()),
        Err(e @ QueryError::UnknownRegion { .. }) => Err(ApiError::BadRequest(e.to_string())),
        Err(QueryError::Db(d)) => Err(ApiError::Db(d)),
    }
}

/// `GET /api/weekly`: what `tripload weekly --format json` prints.
pub async fn weekly(
    State(state): State<Shared>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let p = Params::parse(q, WEEKLY_PARAMS)?;
    let (area, by, from, to) = weekly_args(&p)?;
    let client = state.client().await?;
    if let weekly::Area::Region(name) = &area {
        require_region(&client, name).await?;
    }
    let weeks = weekly::weeks_on(&client, &area, by, from, to).await?;
    Ok(Json(weekly::json(&area, by, &weeks)))
}

pub const GROUPS_PARAMS: &[&str] = &["region", "bbox", "by", "cell_deg", "bucket_minutes", "top"];

/// Largest `top` the API answers (the CLI has no limit).
pub const MAX_TOP: i64 = 10_000;

/// The checked arguments of `/api/groups`.
pub fn groups_args(p: &Params) -> Result<GroupsQuery, ApiError> {
    let cell_deg = p
        .get("cell_deg")
        .map(|s| match s.trim().parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 && v <= 180.0 => Ok(v),
            _ => Err(ApiError::BadRequest(format!(
                "cell_deg={s:?}: expected a cell size in degrees, greater than 0 and at most 180"
            ))),
        })
        .transpose()?;
    Ok(GroupsQuery {
        region: p.region()?,
        bbox: p.bbox()?,
        by: p.by(&[By::Origin, By::Destination, By::Both])?,
        cell_deg,
        bucket_minutes: p.int("bucket_minutes", 60, 1, 1440)? as i32,
        top: p.int("top", 20, 1, MAX_TOP)? as i32,
    })
}

/// `GET /api/groups`: what `tripload groups --format json` prints.
pub async fn groups(
    State(state): State<Shared>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let p = Params::parse(q, GROUPS_PARAMS)?;
    let query = groups_args(&p)?;
    let client = state.client().await?;
    if let Some(name) = &query.region {
        require_region(&client, name).await?;
    }
    let (cell, found) = groups::groups_on(&client, &query).await?;
    Ok(Json(groups::json(&query, cell, &found)))
}

/// `GET /api/files?limit=N`: the most recent files of the ledger, newest first.
pub async fn files(
    State(state): State<Shared>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let p = Params::parse(q, &["limit"])?;
    let limit = p.int("limit", 50, 1, 1000)?;
    let client = state.client().await?;
    let rows = client
        .query(
            "SELECT file_id, file_name, content_hash, size_bytes, rows_loaded, rows_rejected,
                    load_seconds, to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
                    to_char(committed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), loaded_by
             FROM load_files WHERE committed_at IS NOT NULL
             ORDER BY file_id DESC LIMIT $1",
            &[&limit],
        )
        .await
        .map_err(query_err("reading the ledger"))?;
    let files: Vec<Value> = rows
        .iter()
        .map(|r| {
            let name: String = r.get(1);
            let loaded: i64 = r.get(4);
            let rejected: i64 = r.get(5);
            let seconds: Option<f64> = r.get(6);
            serde_json::json!({
                "file_id": r.get::<_, i32>(0),
                "file": name,
                "content_hash": r.get::<_, String>(2),
                "status": "committed",
                "size_bytes": r.get::<_, i64>(3),
                "rows_loaded": loaded,
                "rows_rejected": rejected,
                "seconds": seconds,
                "rows_per_second": seconds.filter(|s| *s > 0.0).map(|s| (loaded as f64 / s).round()),
                "started_at": r.get::<_, Option<String>>(7),
                "committed_at": r.get::<_, Option<String>>(8),
                "loaded_by": r.get::<_, String>(9),
                "rejects_file": (rejected > 0).then(|| format!("processed/{name}.rejects.csv")),
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "files": files })))
}

/// `GET /api/cells?by=origin|destination&from=&to=`: trips per grid cell
/// (origins or destinations) in the window, from the cell/week rollup.
pub async fn cells(
    State(state): State<Shared>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let p = Params::parse(q, &["by", "from", "to"])?;
    let by = p.by(&[By::Origin, By::Destination])?;
    let (from, to) = p.window()?;
    let side = if by == By::Origin { "o" } else { "d" };
    let client = state.client().await?;
    let grid = crate::db::grid(&client).await?;
    let rows = client
        .query(
            "SELECT ix, iy, sum(u.n)::bigint
             FROM rollup_cell_week r, unnest(r.weeks, r.trips) AS u(w, n)
             WHERE r.side = $1::text::\"char\"
               AND ($2::date IS NULL OR u.w >= date_trunc('week', $2::date)::date - date '1970-01-01')
               AND ($3::date IS NULL OR u.w <= $3::date - date '1970-01-01')
             GROUP BY ix, iy HAVING sum(u.n) > 0",
            &[&side, &from, &to],
        )
        .await
        .map_err(query_err("reading the cell rollup"))?;
    let cells: Vec<[i64; 3]> = rows
        .iter()
        .map(|r| {
            [
                r.get::<_, i32>(0) as i64,
                r.get::<_, i32>(1) as i64,
                r.get(2),
            ]
        })
        .collect();
    Ok(Json(serde_json::json!({
        "cell_deg": grid.deg,
        "by": by.as_str(),
        "from": from.map(|d| d.to_string()),
        "to": to.map(|d| d.to_string()),
        "cells": cells,
    })))
}

/// `GET /healthz`: 200 when the database answers, 503 when not.
pub async fn healthz(State(state): State<Shared>) -> Result<Json<Value>, ApiError> {
    let client = state.client().await?;
    client
        .simple_query("SELECT 1")
        .await
        .map_err(query_err("checking the database"))?;
    Ok(Json(serde_json::json!({ "status": "ok" })))
}

#[cfg(test)]
mod tests {
    use super::full_date;

    #[test]
    fn dates_are_exactly_yyyy_mm_dd() {
        assert_eq!(
            full_date("2018-05-01"),
            chrono::NaiveDate::from_ymd_opt(2018, 5, 1)
        );
        for bad in [
            "2018-5-1",
            "+2018-05-01",
            "2018-02-30",
            "20180501",
            " 2018-05-01",
            "2018-05-01 ",
        ] {
            assert_eq!(full_date(bad), None, "{bad}");
        }
    }
}
