//! `tripload groups`: trip groups (region, origin cell, destination cell,
//! time-of-day bucket), largest first.

use super::{setup_error, EXIT_OK};
use crate::db::Target;
use clap::Args;

#[derive(Debug, Args)]
pub struct GroupsArgs {
    /// Only trips of this region.
    #[arg(long)]
    pub region: Option<String>,
    /// Only trips in this bounding box MINLON,MINLAT,MAXLON,MAXLAT (see --by).
    #[arg(long, value_parser = crate::analytics::weekly::parse_bbox, allow_hyphen_values = true)]
    pub bbox: Option<[f64; 4]>,
    /// Which end of the trip must lie in --bbox.
    #[arg(long, value_enum, default_value_t = crate::analytics::weekly::By::Origin)]
    pub by: crate::analytics::weekly::By,
    /// Grid cell size in degrees [default: the database grid, 0.01].
    #[arg(long, value_parser = parse_cell_deg)]
    pub cell_deg: Option<f64>,
    /// Time-of-day bucket in minutes (1 to 1440).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(i32).range(1..=1440))]
    pub bucket_minutes: i32,
    /// How many groups to list.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i32).range(1..))]
    pub top: i32,
    #[arg(long, value_enum, default_value_t = crate::analytics::weekly::Format::Table)]
    pub format: crate::analytics::weekly::Format,
}

fn parse_cell_deg(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 180.0 => Ok(v),
        _ => Err(format!(
            "{s:?}: expected a cell size in degrees, greater than 0 and at most 180 (e.g. 0.01)"
        )),
    }
}

pub async fn run(args: GroupsArgs, target: Target) -> u8 {
    let q = crate::analytics::groups::Query {
        region: args.region,
        bbox: args.bbox,
        by: args.by,
        cell_deg: args.cell_deg,
        bucket_minutes: args.bucket_minutes,
        top: args.top,
    };
    let result = async {
        let conninfo = crate::db::schema::open_for_reading(&target).await?;
        crate::analytics::groups::groups(&conninfo, &q).await
    }
    .await;
    match result {
        Ok((cell, groups)) => {
            print!(
                "{}",
                crate::analytics::groups::render(&q, cell, &groups, args.format)
            );
            EXIT_OK
        }
        Err(e) => setup_error(e),
    }
}
