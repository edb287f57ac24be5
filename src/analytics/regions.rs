//! The regions a query may name: those with loaded trips (rows in
//! `rollup_region_source`). A region outside them is an error that lists
//! them, not an answer of zeros.

use crate::db::{query_err, DbError};
use tokio_postgres::Client;

/// Known regions listed in an error, at most.
pub const LISTED: usize = 20;

/// An error of `weekly` or `groups`.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("unknown region {name:?}: no trips of it are loaded\n  hint: {}", known_list(.known))]
    UnknownRegion { name: String, known: Vec<String> },
    #[error(transparent)]
    Db(#[from] DbError),
}

/// "known regions (3): A, B, C", the first [`LISTED`] and how many more.
fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        return "no region has trips yet: load some files first".into();
    }
    let mut s = format!(
        "known regions ({}): {}",
        known.len(),
        known
            .iter()
            .take(LISTED)
            .map(|r| format!("{r:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if known.len() > LISTED {
        s.push_str(&format!(" and {} more", known.len() - LISTED));
    }
    s
}

/// Ok when `name` is a region with trips; else [`QueryError::UnknownRegion`].
pub async fn require(client: &Client, name: &str) -> Result<(), QueryError> {
    let known: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM regions g JOIN rollup_region_source s ON s.region_id = g.id
                            WHERE g.name = $1)",
            &[&name],
        )
        .await
        .map_err(query_err("looking up the region"))?
        .get(0);
    if known {
        return Ok(());
    }
    Err(QueryError::UnknownRegion {
        name: name.to_owned(),
        known: with_trips(client).await?,
    })
}

/// The regions that have trips, by name.
pub async fn with_trips(client: &Client) -> Result<Vec<String>, DbError> {
    Ok(client
        .query(
            "SELECT g.name FROM regions g
             WHERE g.id IN (SELECT region_id FROM rollup_region_source)
             ORDER BY g.name",
            &[],
        )
        .await
        .map_err(query_err("listing the regions"))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_of_known_regions_is_bounded() {
        let few: Vec<String> = ["Hamburg", "Prague"].map(String::from).to_vec();
        assert_eq!(
            known_list(&few),
            "known regions (2): \"Hamburg\", \"Prague\""
        );
        let many: Vec<String> = (0..25).map(|i| format!("r{i:02}")).collect();
        let s = known_list(&many);
        assert!(s.starts_with("known regions (25): \"r00\", "), "{s}");
        assert!(s.ends_with("\"r19\" and 5 more"), "{s}");
        assert!(!s.contains("r20"), "{s}");
        assert!(known_list(&[]).contains("no region has trips"));
    }
}
