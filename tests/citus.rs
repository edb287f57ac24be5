//! Loading into a Citus cluster (a coordinator and two workers, see
//! tests/common/citus.rs) with the real binary. Skipped, loudly, when Citus
//! is not installed.

mod common;
use common::citus::{
    brute_weeks, groups_brute, groups_from_cli, prepared, skip_without_citus, tripload,
    weeks_from_csv, CitusCluster, HeldShard, Weeks,
};
use common::{questions, sample, stderr};
use std::path::Path;
use std::process::Command;

fn land(dir: &Path, name: &str, content: &[u8]) {
    std::fs::create_dir_all(dir.join("landing")).unwrap();
    std::fs::write(dir.join("landing").join(name), content).unwrap();
}

/// Trips held by each worker: the rows of its shards of `trips`.
fn trips_per_worker(cluster: &CitusCluster) -> Vec<i64> {
    (1..=2)
        .map(|w| {
            let port = cluster.nodes[w].port as i32;
            let shards: Vec<i64> = cluster
                .query(
                    0,
                    &format!(
                        "SELECT shardid FROM citus_shards WHERE table_name = 'trips'::regclass AND nodeport = {port}"
                    ),
                )
                .iter()
                .map(|r| r.get(0))
                .collect();
            assert!(!shards.is_empty(), "worker {w} holds no shard of trips");
            shards
                .iter()
                .map(|id| cluster.count(w, &format!("SELECT count(*) FROM trips_{id}")))
                .sum()
        })
        .collect()
}

#[test]
fn files_load_into_the_workers_exactly_once_and_queries_equal_brute_force() {
    if skip_without_citus("files_load_into_the_workers_exactly_once_and_queries_equal_brute_force")
    {
        return;
    }
    let cluster = CitusCluster::start();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();

    // The schema: trips and the rollups distributed by file_id, co-located.
    let out = tripload(&cluster, dir, &["db", "migrate"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let layout: String = cluster.query(
        0,
        "SELECT value FROM tripload_settings WHERE key = 'time_layout'",
    )[0]
    .get(0);
    assert_eq!(layout, "citus");
    let distributed: Vec<(String, String, i32)> = cluster
        .query(
            0,
            "SELECT table_name::text, distribution_column, colocation_id FROM citus_tables
             WHERE citus_table_type = 'distributed' ORDER BY 1",
        )
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let names: Vec<&str> = distributed.iter().map(|d| d.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "rollup_cell_points",
            "rollup_cell_week",
            "rollup_region_source",
            "rollup_region_week",
            "trips"
        ]
    );
    assert!(distributed
        .iter()
        .all(|d| d.1 == "file_id" && d.2 == distributed[0].2));
    // The dimensions are reference tables: a copy on every worker.
    let reference: Vec<String> = cluster
        .query(
            0,
            "SELECT table_name::text FROM citus_tables
             WHERE citus_table_type = 'reference' ORDER BY 1",
        )
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(reference, ["datasources", "regions"]);

    // Six files (the sample and generated ones), two at a time.
    let mut total = 0;
    land(dir, "sample.csv", &sample());
    total += 100;
    for seed in 1..=5u64 {
        land(
            dir,
            &format!("g{seed}.csv"),
            &tripload::gen::trips_csv(4_000, seed),
        );
        total += 4_000;
    }
    let out = tripload(&cluster, dir, &["load", "--jobs", "2", "landing"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(cluster.count(0, "SELECT count(*) FROM trips"), total);
    assert_eq!(cluster.count(0, "SELECT count(*) FROM load_files"), 6);
    // The workers hold the trips, both of them some; each file on one shard.
    let per_worker = trips_per_worker(&cluster);
    assert_eq!(per_worker.iter().sum::<i64>(), total, "{per_worker:?}");
    assert!(per_worker.iter().all(|&n| n > 0), "{per_worker:?}");
    assert_eq!(
        cluster.count(
            0,
            "SELECT count(*) FROM (SELECT file_id FROM trips GROUP BY file_id
             HAVING count(DISTINCT get_shard_id_for_distribution_column('trips', file_id)) > 1) x"
        ),
        0
    );
    assert_eq!(prepared(&cluster), 0);
    // tripload's sessions are encrypted with the self-signed X.509 v1
    // certificate Citus made, at the default sslmode (prefer), as libpq's.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ssl: bool = rt.block_on(async {
        let c = tripload::db::connect(&cluster.conninfo(0)).await.unwrap();
        c.query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
    });
    assert!(
        ssl,
        "tripload's session to the coordinator is not encrypted"
    );

    // weekly (region, and a box by origin, destination and both) and groups
    // equal brute force over the distributed trips.
    for region in ["Turin", "Prague", "Hamburg"] {
        let got = weeks_from_csv(&tripload(
            &cluster,
            dir,
            &["weekly", "--region", region, "--format", "csv"],
        ));
        let want = brute_weeks(&cluster, &format!("r.name = '{region}'"));
        let nonzero: Weeks = got.iter().copied().filter(|w| w.1 > 0).collect();
        assert_eq!(nonzero, want, "{region}");
        assert!(!want.is_empty(), "{region} has trips");
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
            &cluster,
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
        let nonzero: Weeks = got.iter().copied().filter(|w| w.1 > 0).collect();
        let want = brute_weeks(&cluster, &cond);
        assert_eq!(nonzero, want, "bbox by {by}");
        assert!(!want.is_empty(), "the box holds trips by {by}");
    }
    assert_eq!(groups_from_cli(&cluster, dir), groups_brute(&cluster));
    // Every worker holds every name, as the coordinator has them.
    let names = "SELECT string_agg(name || '=' || id, ',' ORDER BY id) FROM regions";
    let want: String = cluster.query(0, names)[0].get(0);
    for w in 1..=2 {
        let port = cluster.nodes[w].port;
        let shard: i64 = cluster.query(
            0,
            &format!("SELECT shardid FROM citus_shards WHERE table_name = 'regions'::regclass AND nodeport = {port}"),
        )[0]
        .get(0);
        let got: String =
            cluster.query(w, &names.replace("regions", &format!("regions_{shard}")))[0].get(0);
        assert_eq!(got, want, "worker {w}");
    }
    assert_questions_equal_brute_force(&cluster);

    // The same bytes again: skipped, nothing added anywhere.
    land(dir, "again.csv", &tripload::gen::trips_csv(4_000, 3));
    let out = tripload(&cluster, dir, &["load", "landing"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("already loaded"), "{}", stderr(&out));
    assert_eq!(trips_per_worker(&cluster).iter().sum::<i64>(), total);
    assert_eq!(cluster.count(0, "SELECT count(*) FROM load_files"), 6);
}

/// sql/examples/questions.sql, which reads the rollups, answers as a
/// brute-force query over the distributed trips.
fn assert_questions_equal_brute_force(cluster: &CitusCluster) {
    let q = questions();
    assert_eq!(q.len(), 2);
    // 1. The latest datasource of the two regions with the most trips.
    let got = cluster.query(0, &q[0]);
    assert_eq!(got.len(), 1);
    let (source, region, at): (String, String, chrono::DateTime<chrono::Utc>) =
        (got[0].get(0), got[0].get(1), got[0].get(2));
    let want = cluster.query(
        0,
        "WITH top AS (SELECT region_id FROM trips GROUP BY region_id
                      ORDER BY count(*) DESC, region_id LIMIT 2)
         SELECT max(t.datetime) FROM trips t JOIN top USING (region_id)",
    );
    assert_eq!(at, want[0].get::<_, chrono::DateTime<chrono::Utc>>(0));
    let at_that_time = format!(
        "SELECT count(*) FROM trips_named WHERE region = '{region}' AND datasource = '{source}'
         AND datetime = '{}'",
        at.to_rfc3339()
    );
    assert!(
        cluster.count(0, &at_that_time) > 0,
        "{region} {source} {at}"
    );
    // 2. The regions cheap_mobile appeared in.
    let got: Vec<String> = cluster.query(0, &q[1]).iter().map(|r| r.get(0)).collect();
    let want: Vec<String> = cluster
        .query(
            0,
            "SELECT DISTINCT region FROM trips_named WHERE datasource = 'cheap_mobile' ORDER BY 1",
        )
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(got, want);
    assert!(!want.is_empty());
}

#[test]
fn a_file_over_the_reject_limit_rolls_back_on_every_node() {
    if skip_without_citus("a_file_over_the_reject_limit_rolls_back_on_every_node") {
        return;
    }
    let cluster = CitusCluster::start();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    land(dir, "good.csv", &sample());
    let out = tripload(&cluster, dir, &["load", "landing"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let before = trips_per_worker(&cluster);
    let rollups = |c: &CitusCluster| {
        c.count(
            0,
            "SELECT (SELECT count(*) FROM rollup_region_week) + (SELECT count(*) FROM rollup_cell_week)
                  + (SELECT count(*) FROM rollup_region_source) + (SELECT count(*) FROM rollup_cell_points)",
        )
    };
    let rollup_rows = rollups(&cluster);

    // 50,000 good rows stream to a worker before the bad ones at the end.
    let mut bad = tripload::gen::trips_csv(50_000, 7);
    for _ in 0..3 {
        bad.extend_from_slice(
            b"Turin,POINT (x 45),POINT (7.6 45.1),2018-05-01 10:00:00,cheap_mobile\n",
        );
    }
    land(dir, "bad.csv", &bad);
    let out = tripload(&cluster, dir, &["load", "landing"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("rolled back"), "{}", stderr(&out));
    assert!(dir.join("failed/bad.csv").exists());
    assert_eq!(trips_per_worker(&cluster), before);
    assert_eq!(rollups(&cluster), rollup_rows);
    assert_eq!(cluster.count(0, "SELECT count(*) FROM load_files"), 1);
    assert_eq!(prepared(&cluster), 0);
}

#[test]
fn a_coordinator_and_two_workers_form_a_cluster() {
    if skip_without_citus("a_coordinator_and_two_workers_form_a_cluster") {
        return;
    }
    let cluster = CitusCluster::start();
    assert_eq!(
        cluster.count(0, "SELECT count(*) FROM citus_get_active_worker_nodes()"),
        2
    );
    for i in 0..3 {
        assert_eq!(
            cluster.count(
                i,
                "SELECT count(*) FROM pg_extension WHERE extname IN ('citus', 'postgis')"
            ),
            2
        );
    }
}

#[test]
fn a_worker_stopped_mid_load_rolls_the_file_back_everywhere_and_it_loads_once_back() {
    if skip_without_citus(
        "a_worker_stopped_mid_load_rolls_the_file_back_everywhere_and_it_loads_once_back",
    ) {
        return;
    }
    let mut cluster = CitusCluster::start();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    land(dir, "first.csv", &sample());
    let out = tripload(&cluster, dir, &["load", "landing"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // The next file gets file_id 2: hold its shard of trips on its worker
    // (a lock its COPY waits for), so that the load is mid-COPY, its ledger
    // row written on the coordinator, when that worker stops.
    // The time partitions of 2018 (big.csv's year) made now: the file's own
    // would wait for the lock below before its transaction.
    cluster.batch(
        0,
        "SELECT tripload_trips_partitions(ARRAY(SELECT generate_series(17532, 17532 + 365)))",
    );
    let holder = HeldShard::take(&cluster, 2);
    let (worker, other) = (holder.worker, holder.other);
    land(dir, "big.csv", &tripload::gen::trips_csv(20_000, 9));
    let load = Command::new(env!("CARGO_BIN_EXE_tripload"))
        .current_dir(dir)
        .env("DATABASE_URL", cluster.conninfo(0))
        .env_remove("TRIPLOAD_PG_DIR")
        .args(["load", "landing"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !holder.waited_for(&cluster) {
        assert!(
            std::time::Instant::now() < deadline,
            "the COPY never reached the worker"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(cluster.count(0, "SELECT count(*) FROM load_files"), 1);
    cluster.stop(worker);
    drop(holder);
    let out = load.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    // Left in landing for the next run; nothing of it anywhere.
    assert!(dir.join("landing/big.csv").exists(), "{}", stderr(&out));
    assert_eq!(cluster.count(0, "SELECT count(*) FROM load_files"), 1);
    assert_eq!(
        cluster.count(0, "SELECT count(*) FROM pg_prepared_xacts"),
        0
    );
    assert_eq!(
        cluster.count(other, "SELECT count(*) FROM pg_prepared_xacts"),
        0
    );

    // The worker is back: nothing of the file there either (no prepared
    // transaction left for recovery), and the file loads.
    cluster.restart(worker);
    cluster.batch(0, "SELECT recover_prepared_transactions()");
    assert_eq!(prepared(&cluster), 0);
    assert_eq!(trips_per_worker(&cluster).iter().sum::<i64>(), 100);
    let out = tripload(&cluster, dir, &["load", "landing"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(trips_per_worker(&cluster).iter().sum::<i64>(), 20_100);
    assert_eq!(cluster.count(0, "SELECT count(*) FROM trips"), 20_100);
    assert_eq!(cluster.count(0, "SELECT count(*) FROM load_files"), 2);
    assert_eq!(prepared(&cluster), 0);
}
