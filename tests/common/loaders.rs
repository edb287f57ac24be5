//! Helpers for the tests of several loaders at once (tests/loaders.rs on
//! one server, tests/citus_loaders.rs on a Citus cluster): files whose
//! region and datasource names are new to the database, the rollups
//! checked against brute force in SQL that runs on either, and waiting for
//! a child process with a deadline.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// `csv` (a header and trips as `tripload::gen` writes them) with every
/// region renamed `<region>-<suffix>` and every datasource
/// `<datasource>_<suffix>`: the same trips under names no other file uses.
pub fn with_new_names(csv: &[u8], suffix: &str) -> Vec<u8> {
    let text = std::str::from_utf8(csv).expect("generated CSV is UTF-8");
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    let mut lines = text.lines();
    if let Some(header) = lines.next() {
        out.push_str(header);
        out.push('\n');
    }
    for line in lines {
        let (region, rest) = line.split_once(',').expect("a region field");
        let (middle, source) = rest.rsplit_once(',').expect("a datasource field");
        out.push_str(&format!("{region}-{suffix},{middle},{source}_{suffix}\n"));
    }
    out.into_bytes()
}

/// Each rollup as the trips give it (brute force) and as the rollup holds
/// it (summed over files and compacted rows): (what, from trips, from the
/// rollup). Valid once no file is in flight.
const ROLLUPS: [(&str, &str, &str); 3] = [
    (
        "rollup_region_week",
        "SELECT region_id, date_trunc('week', datetime AT TIME ZONE 'UTC')::date, count(*)::bigint
         FROM trips GROUP BY 1, 2",
        "SELECT region_id, week, sum(trips)::bigint FROM rollup_region_week GROUP BY 1, 2",
    ),
    (
        "rollup_region_source",
        "SELECT region_id, datasource_id, count(*)::bigint, max(datetime) FROM trips GROUP BY 1, 2",
        "SELECT region_id, datasource_id, sum(trips)::bigint, max(last_at)
         FROM rollup_region_source GROUP BY 1, 2",
    ),
    (
        "rollup_cell_week",
        "SELECT s.side, floor(ST_X(s.p) / 0.01)::int, floor(ST_Y(s.p) / 0.01)::int,
                date_trunc('week', t.datetime AT TIME ZONE 'UTC')::date - date '1970-01-01', count(*)::bigint
         FROM trips t, LATERAL (VALUES ('o'::\"char\", t.origin), ('d'::\"char\", t.destination)) AS s(side, p)
         GROUP BY 1, 2, 3, 4",
        "SELECT side, ix, iy, w, sum(n)::bigint
         FROM rollup_cell_week, unnest(weeks, trips) AS u(w, n) GROUP BY 1, 2, 3, 4",
    ),
];

/// (what, SQL counting the rows one side has and the other has not), both
/// ways for each rollup: every count must be 0.
pub fn rollup_mismatch_queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (what, trips, rollup) in ROLLUPS {
        out.push((
            format!("{what}: rows the trips give and the rollup lacks"),
            format!("SELECT count(*) FROM (({trips}) EXCEPT ALL ({rollup})) d"),
        ));
        out.push((
            format!("{what}: rows the rollup has and the trips do not give"),
            format!("SELECT count(*) FROM (({rollup}) EXCEPT ALL ({trips})) d"),
        ));
    }
    out
}

/// The child's exit status, or `None` if it is still running after `limit`.
pub fn exit_within(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What the server's sessions wait for (to explain a blocked loader).
pub const WAITING: &str = "SELECT coalesce(string_agg(format('pid %s %s/%s: %s', pid, wait_event_type, wait_event, left(query, 120)), E'\\n'), 'nothing')
     FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()
       AND wait_event_type IN ('Lock', 'IPC', 'Extension')";
