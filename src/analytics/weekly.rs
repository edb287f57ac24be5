//! `tripload weekly`: per-week trip counts and the weekly average for a
//! region or a bounding box, through the SQL functions over the rollups
//! (`sql/functions/weekly.sql`), printed as a table, JSON or CSV.

use crate::analytics::regions::{self, QueryError};
use crate::db::{self, query_err};

/// The area asked about.
#[derive(Debug, Clone)]
pub enum Area {
    Region(String),
    /// min_lon, min_lat, max_lon, max_lat
    BBox([f64; 4]),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum By {
    Origin,
    Destination,
    Both,
}

impl By {
    pub fn as_str(self) -> &'static str {
        match self {
            By::Origin => "origin",
            By::Destination => "destination",
            By::Both => "both",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

/// Parses `MINLON,MINLAT,MAXLON,MAXLAT`.
pub fn parse_bbox(s: &str) -> Result<[f64; 4], String> {
    let v: Vec<f64> = s
        .split(',')
        .map(|p| p.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{s:?}: expected four numbers MINLON,MINLAT,MAXLON,MAXLAT"))?;
    let [a, b, c, d] = v[..] else {
        return Err(format!(
            "{s:?}: expected four numbers MINLON,MINLAT,MAXLON,MAXLAT"
        ));
    };
    if !(v.iter().all(|x| x.is_finite()) && a <= c && b <= d) {
        return Err(format!("{s:?}: need MINLON <= MAXLON and MINLAT <= MAXLAT"));
    }
    if !((-180.0..=180.0).contains(&a)
        && (-180.0..=180.0).contains(&c)
        && (-90.0..=90.0).contains(&b)
        && (-90.0..=90.0).contains(&d))
    {
        return Err(format!(
            "{s:?}: longitudes must be in [-180, 180], latitudes in [-90, 90]"
        ));
    }
    Ok([a, b, c, d])
}

/// Per-week counts for the area (a region must have trips).
pub async fn weeks(
    conninfo: &str,
    area: &Area,
    by: By,
    from: Option<chrono::NaiveDate>,
    to: Option<chrono::NaiveDate>,
) -> Result<Vec<(chrono::NaiveDate, i64)>, QueryError> {
    let client = db::connect(conninfo).await?;
    if let Area::Region(name) = area {
        regions::require(&client, name).await?;
    }
    Ok(weeks_on(&client, area, by, from, to).await?)
}

/// Per-week counts for the area, on an open connection (`tripload serve`).
pub async fn weeks_on(
    client: &tokio_postgres::Client,
    area: &Area,
    by: By,
    from: Option<chrono::NaiveDate>,
    to: Option<chrono::NaiveDate>,
) -> Result<Vec<(chrono::NaiveDate, i64)>, crate::db::DbError> {
    let rows = match area {
        Area::Region(name) => {
            client
                .query(
                    "SELECT week, trips FROM weekly_trips_region($1, $2, $3)",
                    &[name, &from, &to],
                )
                .await
        }
        Area::BBox([a, b, c, d]) => {
            client
                .query(
                    "SELECT week, trips FROM weekly_trips_bbox($1, $2, $3, $4, $5, $6, $7)",
                    &[a, b, c, d, &by.as_str(), &from, &to],
                )
                .await
        }
    }
    .map_err(query_err("computing weekly trips"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

fn describe(area: &Area, by: By) -> String {
    match area {
        Area::Region(r) => format!("region {r}"),
        Area::BBox([a, b, c, d]) => format!("bbox {a},{b},{c},{d} by {}", by.as_str()),
    }
}

fn total_and_average(weeks: &[(chrono::NaiveDate, i64)]) -> (i64, f64) {
    let total: i64 = weeks.iter().map(|w| w.1).sum();
    let avg = if weeks.is_empty() {
        0.0
    } else {
        total as f64 / weeks.len() as f64
    };
    (total, avg)
}

/// The JSON answer: what `--format json` prints and `GET /api/weekly` returns.
pub fn json(area: &Area, by: By, weeks: &[(chrono::NaiveDate, i64)]) -> serde_json::Value {
    let (total, avg) = total_and_average(weeks);
    serde_json::json!({
        "area": describe(area, by),
        "weeks": weeks.iter().map(|(w, n)| serde_json::json!({"week": w.to_string(), "trips": n})).collect::<Vec<_>>(),
        "total_trips": total,
        "week_count": weeks.len(),
        "weekly_average": avg,
    })
}

/// Renders the result.
pub fn render(area: &Area, by: By, weeks: &[(chrono::NaiveDate, i64)], format: Format) -> String {
    let (total, avg) = total_and_average(weeks);
    let what = describe(area, by);
    match format {
        Format::Table => {
            let mut s = format!("{what}\nweek (Monday)  trips\n");
            for (w, n) in weeks {
                s.push_str(&format!("{w}  {n:>11}\n"));
            }
            s.push_str(&format!(
                "weekly average: {avg:.3} trips over {} weeks ({total} trips)\n",
                weeks.len()
            ));
            s
        }
        Format::Csv => {
            let mut s = String::from("week,trips\n");
            for (w, n) in weeks {
                s.push_str(&format!("{w},{n}\n"));
            }
            s
        }
        Format::Json => json(area, by, weeks).to_string() + "\n",
    }
}
