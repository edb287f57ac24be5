//! `tripload status`: the state of recent files, and with `--follow` the live
//! event stream (LISTEN on the events channel; no polling), after catching up
//! from the event table.

use crate::db::{self, query_err, DbError};
use crate::notify::events::Event;
use crate::notify::subscribe::{Past, Subscription};

/// One line for a person.
pub fn human(e: &Event) -> String {
    let mut s = format!("{}  {:<9}  {}", e.at, e.event.as_str(), e.file);
    let mut parts = Vec::new();
    if let (Some(done), Some(size)) = (e.bytes_done, e.size_bytes) {
        parts.push(format!("{:.0}%", 100.0 * done as f64 / size.max(1) as f64));
    } else if let Some(size) = e.size_bytes {
        parts.push(format!("{size} bytes"));
    }
    if let Some(r) = e.rows {
        parts.push(format!("{r} rows"));
    }
    if let Some(r) = e.rows_rejected {
        parts.push(format!("{r} rejected"));
    }
    if let Some(t) = e.seconds {
        parts.push(format!("{t:.2} s"));
    }
    if let Some(r) = &e.reason {
        parts.push(r.clone());
    }
    if !parts.is_empty() {
        s.push_str("  ");
        s.push_str(&parts.join(", "));
    }
    s
}

fn print(e: &Event, json: bool) {
    if json {
        if let Ok(s) = serde_json::to_string(e) {
            println!("{s}");
        }
    } else {
        println!("{}", human(e));
    }
}

/// The latest event of each file active among the events with an id above
/// `$2`, most recent first, at most `$1` files. [`show`] passes the id
/// [`window`] events below the newest, so the query reads a range of the
/// primary key from its end and costs the same on a table of a thousand
/// events or a hundred million. A file with an event inside the window shows
/// its true latest state (its later events have later ids).
pub const RECENT_SQL: &str = "SELECT payload FROM (
         SELECT DISTINCT ON (file_name) id, (payload || jsonb_build_object('id', id))::text AS payload
         FROM ingestion_events
         WHERE id > $2
         ORDER BY file_name, id DESC) latest
     ORDER BY id DESC LIMIT $1";

/// Events looked at by [`show`] for `limit` files.
pub fn window(limit: i64) -> i64 {
    limit.saturating_mul(100).max(10_000)
}

/// Prints the latest state of the `limit` most recently active files.
pub async fn show(conninfo: &str, limit: i64, json: bool) -> Result<(), DbError> {
    let client = db::connect(conninfo).await?;
    // Known to the planner as a value (not a subquery), so it picks the
    // primary key's range for any table size.
    let newest: i64 = client
        .query_one("SELECT coalesce(max(id), 0) FROM ingestion_events", &[])
        .await
        .map_err(query_err("reading recent events"))?
        .get(0);
    let rows = client
        .query(RECENT_SQL, &[&limit, &(newest - window(limit))])
        .await
        .map_err(query_err("reading recent events"))?;
    if rows.is_empty() && !json {
        println!("no ingestion events yet");
    }
    for r in rows.iter().rev() {
        if let Ok(e) = serde_json::from_str::<Event>(r.get::<_, &str>(0)) {
            print(&e, json);
        }
    }
    let totals = client
        .query_one(
            "SELECT count(*), coalesce(sum(rows_loaded), 0)::bigint, coalesce(sum(rows_rejected), 0)::bigint FROM load_files",
            &[],
        )
        .await
        .map_err(query_err("reading the ledger"))?;
    if !json {
        println!(
            "ledger: {} files committed, {} rows loaded, {} rows rejected",
            totals.get::<_, i64>(0),
            totals.get::<_, i64>(1),
            totals.get::<_, i64>(2)
        );
    }
    Ok(())
}

/// Prints the last `catch_up` events, then every new one as it happens,
/// until Ctrl-C / SIGTERM (or `max_events` events when given, for scripts).
pub async fn follow(
    conninfo: &str,
    catch_up: i64,
    json: bool,
    max_events: Option<u64>,
) -> Result<(), DbError> {
    let mut sub = Subscription::open(conninfo).await?;
    let mut printed = 0u64;
    for (_, payload) in sub.past(Past::Last(catch_up)).await? {
        if let Ok(e) = serde_json::from_str::<Event>(&payload) {
            print(&e, json);
        }
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    loop {
        let payload = tokio::select! {
            p = sub.live.recv() => match p { Some(p) => p, None => break },
            _ = tokio::signal::ctrl_c() => break,
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => break,
        };
        let Ok(e) = serde_json::from_str::<Event>(&payload) else {
            continue;
        };
        if !sub.is_new(e.id) {
            continue;
        }
        print(&e, json);
        printed += 1;
        if max_events.is_some_and(|m| printed >= m) {
            break;
        }
    }
    Ok(())
}
