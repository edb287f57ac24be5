//! The Citus layout past the first load (a coordinator and two workers, see
//! tests/common/citus.rs), with the real binary: `trips`'s time partitions
//! (each file makes the ones its rows need before its transaction), `unload`,
//! `load --replace` and `db retain` with the rollups exact over the
//! distributed trips, retention dropping whole partitions, and `watch`
//! riding out a stopped worker. Skipped, loudly, when Citus is not
//! installed.

mod common;
use chrono::{DateTime, NaiveDate};
use common::citus::{
    brute_weeks, groups_brute, groups_from_cli, prepared, skip_without_citus, tripload,
    tripload_cmd, weeks_from_csv, CitusCluster, HeldShard,
};
use common::{ok, stderr, stdout};
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// Writes `name` into `dir/landing` whole (a dotfile renamed into place).
fn land(dir: &Path, name: &str, content: &[u8]) {
    std::fs::create_dir_all(dir.join("landing")).unwrap();
    let tmp = dir.join("landing").join(format!(".{name}.tmp"));
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, dir.join("landing").join(name)).unwrap();
}

const HEADER: &str = "region,origin_coord,destination_coord,datetime,datasource\n";

/// `rows` trips at random times from `from` (00:00 UTC) over `days` days,
/// around the cities of the generator; deterministic for a seed.
fn csv_between(rows: u64, seed: u64, from: &str, days: u64) -> Vec<u8> {
    let start = NaiveDate::parse_from_str(from, "%Y-%m-%d")
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let regions = tripload::gen::REGIONS;
    let sources = tripload::gen::DATASOURCES;
    let mut out = String::from(HEADER);
    for _ in 0..rows {
        let (name, lon, lat) = regions[(next() % regions.len() as u64) as usize];
        let mut near = |c: f64| c + (next() % 20_000) as f64 / 100_000.0 - 0.1;
        let (ox, oy, dx, dy) = (near(lon), near(lat), near(lon), near(lat));
        let t = start + (next() % (days * 86_400)) as i64;
        let at = DateTime::from_timestamp(t, 0).unwrap();
        let source = sources[(next() % sources.len() as u64) as usize];
        writeln!(
            out,
            "{name},POINT ({ox} {oy}),POINT ({dx} {dy}),{},{source}",
            at.format("%Y-%m-%d %H:%M:%S")
        )
        .unwrap();
    }
    out.into_bytes()
}

/// One trip in Prague at each of `times` (as written in the file).
fn csv_at(times: &[&str]) -> Vec<u8> {
    let mut out = String::from(HEADER);
    for (i, t) in times.iter().enumerate() {
        let d = i as f64 * 0.001;
        writeln!(
            out,
            "Prague,POINT ({} 50.05),POINT (14.45 {}),{t},funny_car",
            14.41 + d,
            50.06 + d
        )
        .unwrap();
    }
    out.into_bytes()
}

/// The time partitions of trips: (name, from, to) as UTC text, by start.
fn partitions(cluster: &CitusCluster) -> Vec<(String, String, String)> {
    cluster
        .query(
            0,
            "SELECT partition::text, to_char(lo AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI'),
                    to_char(hi AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI')
             FROM tripload_trips_partition_ranges() ORDER BY lo",
        )
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// The Mondays (UTC) of the weeks that hold trips, by brute force.
fn weeks_with_trips(cluster: &CitusCluster) -> Vec<String> {
    cluster
        .query(
            0,
            "SELECT DISTINCT to_char(date_trunc('week', datetime AT TIME ZONE 'UTC'), 'YYYY-MM-DD HH24:MI')
             FROM trips ORDER BY 1",
        )
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// `weekly` (by region, and by a box by origin, destination and both),
/// `groups` and every rollup's total equal brute force over the
/// distributed trips; no prepared transaction is left. `when` names the
/// step in failures.
fn exact(cluster: &CitusCluster, dir: &Path, when: &str) {
    let trips = cluster.count(0, "SELECT count(*) FROM trips");
    for region in ["Prague", "Turin", "Hamburg"] {
        let got = weeks_from_csv(&tripload(
            cluster,
            dir,
            &["weekly", "--region", region, "--format", "csv"],
        ));
        let want = brute_weeks(cluster, &format!("r.name = '{region}'"));
        assert_eq!(got, want, "{when}: weekly {region}");
    }
    let b = [14.40, 50.02, 14.47, 50.10];
    let in_box = |col: &str| {
        format!(
            "ST_X(t.{col}) BETWEEN {} AND {} AND ST_Y(t.{col}) BETWEEN {} AND {}",
            b[0], b[2], b[1], b[3]
        )
    };
    for by in ["origin", "destination", "both"] {
        let cond = match by {
            "both" => format!("{} AND {}", in_box("origin"), in_box("destination")),
            col => in_box(col),
        };
        let got = weeks_from_csv(&tripload(
            cluster,
            dir,
            &[
                "weekly",
                "--bbox",
                "14.40,50.02,14.47,50.10",
                "--by",
                by,
                "--format",
                "csv",
            ],
        ));
        assert_eq!(got, brute_weeks(cluster, &cond), "{when}: bbox by {by}");
    }
    assert_eq!(
        groups_from_cli(cluster, dir),
        groups_brute(cluster),
        "{when}: groups"
    );
    let totals = &cluster.query(
        0,
        "SELECT (SELECT coalesce(sum(trips), 0)::int8 FROM rollup_region_week),
                (SELECT coalesce(sum(trips), 0)::int8 FROM rollup_region_source),
                (SELECT coalesce(sum(n), 0)::int8 FROM rollup_cell_week, unnest(trips) n WHERE side = 'o'),
                (SELECT coalesce(sum(length(lons) / 8), 0)::int8 FROM rollup_cell_points
                 WHERE side = 'd' AND file_id NOT IN (SELECT file_id FROM cell_points_pending))",
    )[0];
    for (i, table) in [
        "rollup_region_week",
        "rollup_region_source",
        "rollup_cell_week",
        "rollup_cell_points",
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(totals.get::<_, i64>(i), trips, "{when}: {table} total");
    }
    assert_eq!(prepared(cluster), 0, "{when}: prepared transactions");
}

#[test]
fn trips_is_partitioned_by_week_and_each_file_makes_the_partitions_its_rows_need() {
    if skip_without_citus(
        "trips_is_partitioned_by_week_and_each_file_makes_the_partitions_its_rows_need",
    ) {
        return;
    }
    let cluster = CitusCluster::start();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    ok(&tripload(&cluster, dir, &["db", "migrate"]));
    // A partitioned table, distributed by file_id with the rollups, with no
    // partition yet; weekly partitions (the default --chunk-interval).
    assert_eq!(
        cluster.count(
            0,
            "SELECT count(*) FROM pg_partitioned_table WHERE partrelid = 'trips'::regclass"
        ),
        1
    );
    assert_eq!(
        cluster.count(
            0,
            "SELECT count(*) FROM citus_tables t JOIN citus_tables r ON r.table_name = 'rollup_region_week'::regclass
             WHERE t.table_name = 'trips'::regclass AND t.distribution_column = 'file_id'
               AND t.colocation_id = r.colocation_id"
        ),
        1
    );
    let interval: String = cluster.query(
        0,
        "SELECT value FROM tripload_settings WHERE key = 'partition_interval'",
    )[0]
    .get(0);
    assert_eq!(interval, "7 days");
    assert!(partitions(&cluster).is_empty());

    // Rows in three months, on both sides of a Monday 00:00 UTC, one given
    // at +02:00 that is a day earlier in UTC.
    let a = csv_at(&[
        "2018-01-07 23:59:59",
        "2018-01-08 00:00:00",
        "2018-02-14 12:00:00",
        "2018-03-05 10:00:00",
        "2018-03-05 11:00:00",
        "2018-03-26 01:30:00+02:00",
        "2018-03-31 23:30:00",
    ]);
    land(dir, "a.csv", &a);
    ok(&tripload(&cluster, dir, &["load", "landing"]));
    assert_eq!(cluster.count(0, "SELECT count(*) FROM trips"), 7);
    let weeks = [
        "2018-01-01 00:00",
        "2018-01-08 00:00",
        "2018-02-12 00:00",
        "2018-03-05 00:00",
        "2018-03-19 00:00",
        "2018-03-26 00:00",
    ];
    assert_eq!(weeks_with_trips(&cluster), weeks);
    let made = partitions(&cluster);
    // One partition per week with trips, none for the weeks between.
    assert_eq!(made.iter().map(|p| p.1.as_str()).collect::<Vec<_>>(), weeks);
    for (name, from, to) in &made {
        // Monday to Monday, and every row of it inside.
        assert_eq!(
            cluster.count(
                0,
                &format!(
                    "SELECT count(*) FROM tripload_trips_partition_ranges()
                     WHERE partition = '{name}'::regclass
                       AND (hi - lo <> interval '7 days' OR extract(isodow FROM lo AT TIME ZONE 'UTC') <> 1)"
                )
            ),
            0,
            "{name} {from} {to}"
        );
        assert_eq!(
            cluster.count(
                0,
                &format!(
                    "SELECT count(*) FROM {name}
                     WHERE datetime < '{from}+00' OR datetime >= '{to}+00'"
                )
            ),
            0,
            "{name}"
        );
    }
    let in_partitions: i64 = made
        .iter()
        .map(|p| cluster.count(0, &format!("SELECT count(*) FROM {}", p.0)))
        .sum();
    assert_eq!(in_partitions, 7);
    // Each partition is distributed with trips (its shards on the workers).
    assert_eq!(
        cluster.count(
            0,
            "SELECT count(*) FROM pg_dist_partition t JOIN pg_dist_partition p
               ON p.logicalrelid = 'trips'::regclass AND t.colocationid = p.colocationid
             WHERE t.logicalrelid::text LIKE 'trips_p%'"
        ),
        made.len() as i64
    );

    // A second file spanning new months, with a row rejected for its
    // coordinates in a week of its own: new partitions, the old ones kept,
    // nothing lost.
    let mut b = csv_between(3_000, 5, "2018-06-01", 61);
    b.extend_from_slice(b"Turin,POINT (x 45),POINT (7.6 45.1),2017-12-20 10:00:00,cheap_mobile\n");
    land(dir, "b.csv", &b);
    let out = tripload(&cluster, dir, &["load", "--max-rejects", "1", "landing"]);
    ok(&out);
    assert_eq!(cluster.count(0, "SELECT count(*) FROM trips"), 3_007);
    let after = partitions(&cluster);
    assert!(made.iter().all(|p| after.contains(p)), "{after:?}");
    let mut want: Vec<String> = weeks_with_trips(&cluster);
    // The rejected row's week has a partition, empty.
    want.insert(0, "2017-12-18 00:00".into());
    assert_eq!(after.iter().map(|p| p.1.clone()).collect::<Vec<_>>(), want);
    assert_eq!(
        cluster.count(
            0,
            "SELECT count(*) FROM trips WHERE datetime < '2018-01-01+00'"
        ),
        0
    );
    assert!(after.len() > made.len() + 8, "{after:?}");

    // Two files at once in the same new weeks: each partition made once.
    land(dir, "c.csv", &csv_between(2_000, 6, "2018-10-01", 21));
    land(dir, "d.csv", &csv_between(2_000, 7, "2018-10-08", 21));
    ok(&tripload(
        &cluster,
        dir,
        &["load", "--jobs", "2", "landing"],
    ));
    assert_eq!(cluster.count(0, "SELECT count(*) FROM trips"), 7_007);
    let mut all: Vec<String> = weeks_with_trips(&cluster);
    all.insert(0, "2017-12-18 00:00".into());
    assert_eq!(
        partitions(&cluster)
            .iter()
            .map(|p| p.1.clone())
            .collect::<Vec<_>>(),
        all
    );
    assert_eq!(cluster.count(0, "SELECT count(*) FROM load_files"), 4);
    exact(&cluster, dir, "after four files");

    // The same bytes again: skipped, no partition made.
    let before = partitions(&cluster);
    land(dir, "again.csv", &b);
    let out = tripload(&cluster, dir, &["load", "--max-rejects", "1", "landing"]);
    ok(&out);
    assert!(stderr(&out).contains("already loaded"), "{}", stderr(&out));
    assert_eq!(partitions(&cluster), before);
    assert_eq!(cluster.count(0, "SELECT count(*) FROM trips"), 7_007);
}

#[test]
fn unload_replace_and_retain_keep_the_rollups_exact_and_retention_drops_whole_partitions() {
    if skip_without_citus(
        "unload_replace_and_retain_keep_the_rollups_exact_and_retention_drops_whole_partitions",
    ) {
        return;
    }
    let cluster = CitusCluster::start();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let a = csv_between(3_000, 1, "2018-01-01", 84);
    let b = csv_between(3_000, 2, "2018-02-01", 84);
    let c = csv_between(300, 3, "2018-03-01", 60);
    land(dir, "a.csv", &a);
    land(dir, "b.csv", &b);
    land(dir, "c.csv", &c);
    ok(&tripload(
        &cluster,
        dir,
        &["load", "--jobs", "2", "landing"],
    ));
    // Merged into the compacted rows (file_id 0): unload subtracts from them.
    ok(&tripload(&cluster, dir, &["db", "compact"]));
    assert_eq!(
        cluster.count(0, "SELECT count(*) FROM rollup_uncompacted"),
        0
    );
    assert!(
        cluster.count(
            0,
            "SELECT count(*) FROM rollup_cell_points WHERE file_id = 0"
        ) > 0
    );
    exact(&cluster, dir, "loaded and compacted");

    // unload: the dry run changes nothing, the unload only b's rows.
    let out = tripload(&cluster, dir, &["unload", "b.csv", "--dry-run"]);
    ok(&out);
    assert!(
        stdout(&out).contains("would unload b.csv"),
        "{}",
        stdout(&out)
    );
    assert_eq!(cluster.count(0, "SELECT count(*) FROM trips"), 6_300);
    let out = tripload(&cluster, dir, &["unload", "b.csv"]);
    ok(&out);
    assert!(stdout(&out).contains("unloaded b.csv"), "{}", stdout(&out));
    assert_eq!(cluster.count(0, "SELECT count(*) FROM trips"), 3_300);
    assert_eq!(
        cluster.count(
            0,
            "SELECT count(*) FROM load_files_removed WHERE file_name = 'b.csv'"
        ),
        1
    );
    exact(&cluster, dir, "after unload");

    // replace: a.csv by a2.csv in one transaction.
    land(dir, "a2.csv", &csv_between(2_500, 4, "2018-01-15", 70));
    ok(&tripload(
        &cluster,
        dir,
        &["load", "--replace", "a.csv", "landing/a2.csv"],
    ));
    assert_eq!(cluster.count(0, "SELECT count(*) FROM trips"), 2_800);
    assert_eq!(
        cluster.count(
            0,
            "SELECT count(*) FROM load_files WHERE file_name IN ('a.csv', 'a2.csv')"
        ),
        1
    );
    exact(&cluster, dir, "after replace");

    // retain: the dry run says what would go and changes nothing.
    let cut = "2018-02-12 00:00";
    let before = partitions(&cluster);
    let old: Vec<_> = before
        .iter()
        .filter(|p| p.2.as_str() <= cut)
        .cloned()
        .collect();
    assert!(old.len() >= 3, "{before:?}");
    let doomed = cluster.count(
        0,
        "SELECT count(*) FROM trips WHERE datetime < '2018-02-12+00'",
    );
    assert!(doomed > 0);
    let out = tripload(
        &cluster,
        dir,
        &["db", "retain", "--older-than", "2018-02-14", "--dry-run"],
    );
    ok(&out);
    assert!(
        stdout(&out).contains(&format!("{doomed} trips ({} whole partitions)", old.len())),
        "{}",
        stdout(&out)
    );
    assert_eq!(partitions(&cluster), before);
    assert_eq!(cluster.count(0, "SELECT count(*) FROM trips"), 2_800);

    // The whole partitions before the cut-off go; nothing is deleted row by
    // row (weekly partitions start on Mondays, as the cut-off does).
    let out = tripload(
        &cluster,
        dir,
        &["db", "retain", "--older-than", "2018-02-14"],
    );
    ok(&out);
    assert!(
        stdout(&out).contains(&format!(
            "dropped {doomed} trips ({} whole partitions)",
            old.len()
        )),
        "{}",
        stdout(&out)
    );
    let kept = partitions(&cluster);
    assert!(kept.iter().all(|p| p.1.as_str() >= cut), "{kept:?}");
    assert_eq!(kept.len(), before.len() - old.len());
    for p in &old {
        assert_eq!(
            cluster.count(
                0,
                &format!(
                    "SELECT count(*) FROM pg_class WHERE oid = to_regclass('{}')",
                    p.0
                )
            ),
            0,
            "{} still there",
            p.0
        );
    }
    assert_eq!(
        cluster.count(0, "SELECT count(*) FROM trips"),
        2_800 - doomed
    );
    assert_eq!(
        cluster.count(
            0,
            &format!(
                "SELECT count(*) FROM retention_runs WHERE chunks_dropped = {}",
                old.len()
            )
        ),
        1
    );
    exact(&cluster, dir, "after retain");

    // Old rows load again: their partitions are made anew.
    land(dir, "late.csv", &csv_between(500, 9, "2018-01-01", 28));
    ok(&tripload(&cluster, dir, &["load", "landing"]));
    assert_eq!(
        cluster.count(0, "SELECT count(*) FROM trips"),
        3_300 - doomed
    );
    assert!(partitions(&cluster)
        .iter()
        .any(|p| p.1 == "2018-01-01 00:00"));
    exact(&cluster, dir, "after a late file");
}

fn stop_watcher(mut child: Child) -> std::process::ExitStatus {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "the watcher did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn watch_loads_on_the_cluster_and_retries_a_file_whose_worker_stopped_until_it_is_back() {
    if skip_without_citus(
        "watch_loads_on_the_cluster_and_retries_a_file_whose_worker_stopped_until_it_is_back",
    ) {
        return;
    }
    let mut cluster = CitusCluster::start();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    std::fs::create_dir_all(dir.join("landing")).unwrap();
    // --max-attempts 2: failures while a worker is away must not count.
    let watcher = tripload_cmd(
        &cluster,
        dir,
        &[
            "watch",
            "landing",
            "--quiet-period",
            "0.5",
            "--quiet",
            "--max-attempts",
            "2",
        ],
    )
    .env("TRIPLOAD_LOG", "tripload=info")
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(dir.join("watch.log")).unwrap())
    .spawn()
    .expect("start the watcher");
    let log = dir.join("watch.log");
    let sessions = |c: &CitusCluster| -> String {
        c.query(
            0,
            "SELECT format('%s %s %s/%s %s', pid, state, wait_event_type, wait_event, left(query, 120))
             FROM pg_stat_activity WHERE datname = 'trips' AND pid <> pg_backend_pid()",
        )
        .iter()
        .map(|r| r.get::<_, String>(0) + "\n")
        .collect()
    };
    let wait_for = |what: &str, secs: u64, cond: &mut dyn FnMut() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !cond() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; the watcher said:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    land(dir, "first.csv", &csv_between(1_000, 1, "2018-01-01", 28));
    wait_for("first.csv", 120, &mut || {
        dir.join("processed/first.csv").exists()
    });
    assert_eq!(cluster.count(0, "SELECT count(*) FROM trips"), 1_000);

    // Each attempt claims a new file_id, whose shard may be on the other
    // worker (then it loads there at once). The next file gets file_id k,
    // and k, k + 1 and k + 2 have their shards on one worker: the first
    // attempt waits in its COPY (its shard of trips held on that worker,
    // its ledger row claimed) when the worker stops, and the next two fail
    // while it is away. The file's weeks have their partitions already.
    let k: i32 = cluster.query(
        0,
        "SELECT k FROM generate_series(2, 1000) k
         WHERE (SELECT count(DISTINCT nodeport) FROM citus_shards
                WHERE table_name = 'trips'::regclass
                  AND shardid IN (get_shard_id_for_distribution_column('trips', k),
                                  get_shard_id_for_distribution_column('trips', k + 1),
                                  get_shard_id_for_distribution_column('trips', k + 2))) = 1
         ORDER BY k LIMIT 1",
    )[0]
    .get(0);
    cluster.batch(
        0,
        &format!("ALTER TABLE load_files ALTER COLUMN file_id RESTART WITH {k}"),
    );
    let holder = HeldShard::take(&cluster, k);
    let (worker, other) = (holder.worker, holder.other);
    land(dir, "big.csv", &csv_between(20_000, 9, "2018-01-01", 28));
    wait_for("the COPY to reach the worker", 120, &mut || {
        holder.waited_for(&cluster)
    });
    assert!(dir.join("processing").read_dir().unwrap().count() == 1);
    cluster.stop(worker);
    drop(holder);

    // Released and retried with backoff while the worker is away, more
    // times than --max-attempts, and never quarantined.
    let released =
        "SELECT count(*) FROM ingestion_events WHERE kind = 'released' AND file_name = 'big.csv'";
    let deadline = Instant::now() + Duration::from_secs(120);
    while cluster.count(0, released) < 3 {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for three releases of big.csv; the watcher said:\n{}\nsessions on the coordinator:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            sessions(&cluster)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!dir.join("failed/big.csv").exists(), "quarantined");
    assert!(!dir.join("processed/big.csv").exists());
    assert_eq!(cluster.count(0, "SELECT count(*) FROM load_files"), 1);
    assert_eq!(
        cluster.count(0, "SELECT count(*) FROM pg_prepared_xacts"),
        0
    );
    assert_eq!(
        cluster.count(other, "SELECT count(*) FROM pg_prepared_xacts"),
        0
    );
    // The backoff doubles: the gaps between attempts grow.
    let at: Vec<f64> = cluster
        .query(
            0,
            "SELECT extract(epoch FROM at)::float8 FROM ingestion_events
             WHERE kind = 'released' AND file_name = 'big.csv' ORDER BY id",
        )
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(at[2] - at[1] > at[1] - at[0] + 0.5, "{at:?}");

    // The worker is back: nothing of the file anywhere, and it loads.
    cluster.restart(worker);
    wait_for("big.csv once the worker is back", 180, &mut || {
        dir.join("processed/big.csv").exists()
    });
    assert!(!dir.join("failed/big.csv").exists());
    assert_eq!(cluster.count(0, "SELECT count(*) FROM trips"), 21_000);
    assert_eq!(cluster.count(0, "SELECT count(*) FROM load_files"), 2);
    assert_eq!(cluster.count(0, "SELECT count(*) FROM load_attempts"), 0);
    // The watcher stopped first: a transaction of its own still committing
    // (compaction, events) holds a prepared transaction for a moment.
    let status = stop_watcher(watcher);
    assert!(status.success(), "{status:?}");
    cluster.batch(0, "SELECT recover_prepared_transactions()");
    assert_eq!(prepared(&cluster), 0);
    exact(&cluster, dir, "after the watcher");
}
