//! `tripload groups`: trip groups — trips with the same region, origin cell,
//! destination cell and time-of-day bucket — largest first, through the SQL
//! function `trip_groups` (`sql/functions/groups.sql`), printed as a table, JSON or CSV.

use crate::analytics::regions::{self, QueryError};
use crate::analytics::weekly::{By, Format};
use crate::db::{self, query_err};

/// What to group and how.
#[derive(Debug, Clone)]
pub struct Query {
    pub region: Option<String>,
    pub bbox: Option<[f64; 4]>,
    pub by: By,
    /// Cell size in degrees; `None` = the database's grid.
    pub cell_deg: Option<f64>,
    pub bucket_minutes: i32,
    pub top: i32,
}

/// One group.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub region: String,
    pub origin_cell: (i32, i32),
    pub destination_cell: (i32, i32),
    pub bucket_start: chrono::NaiveTime,
    pub trips: i64,
    pub first_at: chrono::DateTime<chrono::Utc>,
    pub last_at: chrono::DateTime<chrono::Utc>,
    pub datasources: Vec<String>,
}

/// The groups and the cell size they were computed with.
pub async fn groups(conninfo: &str, q: &Query) -> Result<(f64, Vec<Group>), QueryError> {
    let client = db::connect(conninfo).await?;
    if let Some(region) = &q.region {
        regions::require(&client, region).await?;
    }
    Ok(groups_on(&client, q).await?)
}

/// The groups, on an open connection (`tripload serve`).
pub async fn groups_on(
    client: &tokio_postgres::Client,
    q: &Query,
) -> Result<(f64, Vec<Group>), crate::db::DbError> {
    let cell: f64 = match q.cell_deg {
        Some(c) => c,
        None => db::grid(client).await?.deg,
    };
    let [a, b, c, d] = match q.bbox {
        Some(bb) => bb.map(Some),
        None => [None; 4],
    };
    let rows = client
        .query(
            "SELECT region, origin_ix, origin_iy, destination_ix, destination_iy, bucket_start,
                    trips, first_at, last_at, datasources
             FROM trip_groups($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &q.region,
                &a,
                &b,
                &c,
                &d,
                &q.by.as_str(),
                &cell,
                &q.bucket_minutes,
                &q.top,
            ],
        )
        .await
        .map_err(query_err("computing trip groups"))?;
    let groups = rows
        .iter()
        .map(|r| Group {
            region: r.get(0),
            origin_cell: (r.get(1), r.get(2)),
            destination_cell: (r.get(3), r.get(4)),
            bucket_start: r.get(5),
            trips: r.get(6),
            first_at: r.get(7),
            last_at: r.get(8),
            datasources: r.get(9),
        })
        .collect();
    Ok((cell, groups))
}

/// South-west corner of a cell, as printed.
fn corner(cell: f64, (ix, iy): (i32, i32)) -> String {
    // Rounded to the cell size's decimals: the corner is ix * cell, and
    // 1449 * 0.01 prints as 14.490000000000002 otherwise.
    let decimals = (-cell.log10()).ceil().clamp(0.0, 12.0) as usize + 1;
    format!(
        "{:.*} {:.*}",
        decimals,
        ix as f64 * cell,
        decimals,
        iy as f64 * cell
    )
}

fn bucket(start: chrono::NaiveTime, minutes: i32) -> String {
    let end = start + chrono::Duration::minutes(minutes as i64);
    format!("{}-{}", start.format("%H:%M"), end.format("%H:%M"))
}

/// The JSON answer: what `--format json` prints and `GET /api/groups` returns.
pub fn json(q: &Query, cell: f64, groups: &[Group]) -> serde_json::Value {
    let ts = |t: &chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M:%S").to_string();
    serde_json::json!({
        "cell_deg": cell,
        "bucket_minutes": q.bucket_minutes,
        "groups": groups.iter().map(|g| serde_json::json!({
            "trips": g.trips,
            "region": g.region,
            "origin_cell": [g.origin_cell.0, g.origin_cell.1],
            "destination_cell": [g.destination_cell.0, g.destination_cell.1],
            "origin_corner": [g.origin_cell.0 as f64 * cell, g.origin_cell.1 as f64 * cell],
            "destination_corner": [g.destination_cell.0 as f64 * cell, g.destination_cell.1 as f64 * cell],
            "bucket_start": g.bucket_start.format("%H:%M").to_string(),
            "first_at": ts(&g.first_at),
            "last_at": ts(&g.last_at),
            "datasources": g.datasources,
        })).collect::<Vec<_>>(),
    })
}

/// Renders the groups.
pub fn render(q: &Query, cell: f64, groups: &[Group], format: Format) -> String {
    let ts = |t: &chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M:%S").to_string();
    match format {
        Format::Table => {
            let mut s = format!(
                "trip groups: cells of {cell}° (south-west corner lon lat), time of day in {} min buckets (UTC), top {}\n",
                q.bucket_minutes, q.top
            );
            let header = [
                "trips",
                "region",
                "origin cell",
                "destination cell",
                "time of day",
                "first",
                "last",
                "datasources",
            ];
            let body: Vec<[String; 8]> = groups
                .iter()
                .map(|g| {
                    [
                        g.trips.to_string(),
                        g.region.clone(),
                        corner(cell, g.origin_cell),
                        corner(cell, g.destination_cell),
                        bucket(g.bucket_start, q.bucket_minutes),
                        ts(&g.first_at),
                        ts(&g.last_at),
                        g.datasources.join(" "),
                    ]
                })
                .collect();
            let mut rows = vec![header.map(String::from)];
            rows.extend(body);
            for line in crate::notify::report::aligned(&rows, |j| j == 0) {
                s.push_str(&line);
            }
            if groups.is_empty() {
                s.push_str("(no trips match)\n");
            }
            s
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(Vec::new());
            let _ = w.write_record([
                "trips",
                "region",
                "origin_ix",
                "origin_iy",
                "destination_ix",
                "destination_iy",
                "bucket_start",
                "first_at",
                "last_at",
                "datasources",
            ]);
            for g in groups {
                // Writing to a Vec cannot fail.
                let _ = w.write_record([
                    g.trips.to_string(),
                    g.region.clone(),
                    g.origin_cell.0.to_string(),
                    g.origin_cell.1.to_string(),
                    g.destination_cell.0.to_string(),
                    g.destination_cell.1.to_string(),
                    g.bucket_start.format("%H:%M").to_string(),
                    ts(&g.first_at),
                    ts(&g.last_at),
                    g.datasources.join(" "),
                ]);
            }
            String::from_utf8_lossy(&w.into_inner().unwrap_or_default()).into_owned()
        }
        Format::Json => json(q, cell, groups).to_string() + "\n",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corners_print_at_the_cell_precision() {
        assert_eq!(corner(0.01, (1449, 5000)), "14.490 50.000");
        assert_eq!(corner(0.01, (-1, -1)), "-0.010 -0.010");
        assert_eq!(corner(1.0, (7, 45)), "7.0 45.0");
    }

    #[test]
    fn buckets_print_as_ranges() {
        let t = chrono::NaiveTime::from_hms_opt(23, 0, 0).unwrap();
        assert_eq!(bucket(t, 60), "23:00-00:00");
        let t = chrono::NaiveTime::from_hms_opt(9, 30, 0).unwrap();
        assert_eq!(bucket(t, 15), "09:30-09:45");
    }

    #[test]
    fn csv_quotes_when_needed() {
        let t = chrono::DateTime::from_timestamp(1_527_498_220, 0).unwrap();
        let g = Group {
            region: "Prague, CZ".into(),
            origin_cell: (1449, 5000),
            destination_cell: (1443, 5004),
            bucket_start: chrono::NaiveTime::from_hms_opt(9, 0, 0).unwrap(),
            trips: 3,
            first_at: t,
            last_at: t,
            datasources: vec!["funny_car".into()],
        };
        let q = Query {
            region: None,
            bbox: None,
            by: By::Origin,
            cell_deg: None,
            bucket_minutes: 60,
            top: 20,
        };
        let csv = render(&q, 0.01, &[g], Format::Csv);
        assert_eq!(
            csv.lines().nth(1),
            Some("3,\"Prague, CZ\",1449,5000,1443,5004,09:00,2018-05-28 09:03:40,2018-05-28 09:03:40,funny_car")
        );
    }
}
