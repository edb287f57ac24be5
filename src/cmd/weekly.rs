//! `tripload weekly`: per-week trip counts and the weekly average for a
//! region or a bounding box, answered from the load-time rollups.

use super::{setup_error, EXIT_OK, EXIT_SETUP};
use crate::db::Target;
use clap::Args;

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("area").required(true).args(["region", "bbox"])))]
pub struct WeeklyArgs {
    /// Region name (the region column).
    #[arg(long)]
    pub region: Option<String>,
    /// Bounding box MINLON,MINLAT,MAXLON,MAXLAT (WGS84, edges inclusive).
    #[arg(long, value_parser = crate::analytics::weekly::parse_bbox, allow_hyphen_values = true)]
    pub bbox: Option<[f64; 4]>,
    /// Which end of the trip must lie in a bounding box.
    #[arg(long, value_enum, default_value_t = crate::analytics::weekly::By::Origin)]
    pub by: crate::analytics::weekly::By,
    /// First day of the window (its week is included), YYYY-MM-DD.
    #[arg(long)]
    pub from: Option<chrono::NaiveDate>,
    /// Last day of the window (its week is included), YYYY-MM-DD.
    #[arg(long)]
    pub to: Option<chrono::NaiveDate>,
    #[arg(long, value_enum, default_value_t = crate::analytics::weekly::Format::Table)]
    pub format: crate::analytics::weekly::Format,
}

pub async fn run(args: WeeklyArgs, target: Target) -> u8 {
    let area = match (args.region, args.bbox) {
        (Some(r), _) => crate::analytics::weekly::Area::Region(r),
        (None, Some(b)) => crate::analytics::weekly::Area::BBox(b),
        (None, None) => return EXIT_SETUP,
    };
    let result = async {
        let conninfo = crate::db::schema::open_for_reading(&target).await?;
        crate::analytics::weekly::weeks(&conninfo, &area, args.by, args.from, args.to).await
    }
    .await;
    match result {
        Ok(weeks) => {
            print!(
                "{}",
                crate::analytics::weekly::render(&area, args.by, &weeks, args.format)
            );
            EXIT_OK
        }
        Err(e) => setup_error(e),
    }
}
