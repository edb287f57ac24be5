//! Benchmark: the distribution column of `trips` on Citus, by `file_id` (the
//! layout `tripload db migrate` makes: each file's `COPY` on one shard, files
//! spread over the workers) against a per-row key (the hash of `datetime`:
//! one file spread over every shard and worker, committed with two-phase
//! commit on each). Not a timed test; skipped, loudly, when Citus is not
//! installed.
//!
//! One cluster (tests/common/citus.rs: a coordinator and two workers, 8
//! shards) with two databases: `trips` as migrated ("file"), and
//! `trips_row`, migrated the same and then `trips` re-distributed by
//! `datetime` with `alter_distributed_table` (partitions included), the
//! partition-making function `tripload_trips_partitions` replaced in that
//! database only so new partitions follow the same column. The rollups stay
//! by `file_id`, co-located with each other (they are per-file aggregates).
//! Why `datetime`: every row has one, it has as many values as trips (a
//! second's resolution over the data's span), so its hash spreads a file
//! evenly over all shards whatever its content; `region_id` and
//! `datasource_id` have a handful of values each, and a cell key would need
//! a column `trips` does not have.
//!
//! The variants run alternately (file, row, row, file, ...), each run on
//! emptied tables with file ids restarted and 2018's weekly partitions made
//! beforehand (the generated year), so both load the same bytes into the
//! same shape. Autovacuum is off on every node and each load is followed by
//! an untimed `VACUUM ANALYZE`, so that no run's aftermath (autovacuum of
//! its rows) lands in the next run's figures. Results: docs/benchmarks.md.

mod common;
use common::citus::{skip_without_citus, tripload_cmd, CitusCluster, DBNAME, USER};
use common::{stderr, stdout};
use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

const ROW_DB: &str = "trips_row";
/// The box of the README's examples (Prague's centre).
const BBOX: &str = "14.37,50.0,14.52,50.13";
/// Runs of each query (the median is reported).
const QUERY_RUNS: usize = 5;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Key {
    File,
    Row,
}

impl Key {
    fn name(self) -> &'static str {
        match self {
            Key::File => "file",
            Key::Row => "row",
        }
    }

    fn db(self) -> &'static str {
        match self {
            Key::File => DBNAME,
            Key::Row => ROW_DB,
        }
    }

    fn index(self) -> usize {
        match self {
            Key::File => 0,
            Key::Row => 1,
        }
    }
}

fn conninfo(cluster: &CitusCluster, node: usize, db: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user={USER} password={} dbname={db}",
        cluster.nodes[node].port, cluster.password
    )
}

/// One plaintext session to one database of one node, kept open.
struct Session {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl Session {
    fn open(cluster: &CitusCluster, node: usize, db: &str) -> Session {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let info = format!("{} sslmode=disable", conninfo(cluster, node, db));
        let client = rt.block_on(async {
            let (c, conn) = tokio_postgres::connect(&info, tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("connect to {db} on node {node}: {e}"));
            tokio::spawn(conn);
            c
        });
        Session { rt, client }
    }

    fn batch(&self, sql: &str) {
        self.rt
            .block_on(self.client.batch_execute(sql))
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    fn query(&self, sql: &str) -> Vec<tokio_postgres::Row> {
        self.rt
            .block_on(self.client.query(sql, &[]))
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
    }

    fn count(&self, sql: &str) -> i64 {
        self.query(sql)[0].get(0)
    }
}

fn run(cluster: &CitusCluster, dir: &Path, key: Key, args: &[&str]) -> Output {
    tripload_cmd(cluster, dir, args)
        .env("DATABASE_URL", conninfo(cluster, 0, key.db()))
        .output()
        .expect("run tripload")
}

fn run_ok(cluster: &CitusCluster, dir: &Path, key: Key, args: &[&str]) -> Output {
    let out = run(cluster, dir, key, args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{} {args:?}: {}",
        key.name(),
        stderr(&out)
    );
    out
}

/// The second database on every node, Citus and PostGIS in it, the workers
/// added (as tests/common/citus.rs forms `trips`).
fn form_row_database(cluster: &CitusCluster) {
    for node in 0..cluster.nodes.len() {
        Session::open(cluster, node, "postgres").batch(&format!("CREATE DATABASE {ROW_DB}"));
        Session::open(cluster, node, ROW_DB)
            .batch("CREATE EXTENSION citus; CREATE EXTENSION postgis;");
    }
    let c = Session::open(cluster, 0, ROW_DB);
    c.batch(&format!(
        "SELECT citus_set_coordinator_host('127.0.0.1', {})",
        cluster.nodes[0].port
    ));
    for node in &cluster.nodes[1..] {
        c.batch(&format!(
            "SELECT citus_add_node('127.0.0.1', {})",
            node.port
        ));
    }
}

/// `trips` (and its partitions) re-distributed by `datetime` in its own
/// co-location group, and `tripload_trips_partitions` replaced (in this
/// database only) by the migration's own definition with the column
/// changed, so that the partitions it makes follow.
fn distribute_by_row(c: &Session) {
    c.batch(
        "SELECT alter_distributed_table('trips', distribution_column := 'datetime',
                                        colocate_with := 'none')",
    );
    let def: String = c
        .query("SELECT pg_get_functiondef('tripload_trips_partitions(integer[])'::regprocedure)")
        [0]
    .get(0);
    let by_file = "quote_ident(m.partition_name), 'file_id'";
    assert_eq!(
        def.matches(by_file).count(),
        1,
        "migration 008's function no longer distributes partitions as expected:\n{def}"
    );
    c.batch(&def.replace(by_file, "quote_ident(m.partition_name), 'datetime'"));
}

/// The distribution column of each distributed table (partitions of trips
/// counted together).
fn distribution(c: &Session) -> Vec<(String, String, i64)> {
    c.query(
        "SELECT CASE WHEN table_name::text LIKE 'trips\\_p%' THEN 'trips partitions'
                     ELSE table_name::text END, distribution_column, count(*)
         FROM citus_tables WHERE citus_table_type = 'distributed' GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// Empties what a load writes and restarts the file ids.
fn reset(c: &Session) {
    c.batch(
        "TRUNCATE trips, rollup_region_week, rollup_region_source, rollup_cell_week, rollup_cell_points;
         TRUNCATE load_files, rollup_uncompacted, cell_points_pending, load_files_removed,
                  ingestion_events, load_attempts RESTART IDENTITY;",
    );
}

// ---- CPU seconds and connections per node

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// (ppid, own utime+stime, reaped children's cutime+cstime) in ticks.
fn stat_of(pid: u32) -> Option<(u32, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
    // After "(comm) ": state ppid ... utime(12th) stime cutime cstime.
    let n = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok());
    Some((n(1)? as u32, n(11)? + n(12)?, n(13)? + n(14)?))
}

/// CPU seconds of each server: its postmaster, the backends it has reaped
/// and those still running.
fn servers_cpu(pids: &[u32]) -> Vec<f64> {
    let mut ticks: Vec<u64> = pids
        .iter()
        .map(|&p| stat_of(p).map_or(0, |(_, own, reaped)| own + reaped))
        .collect();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Some((ppid, own, reaped)) = stat_of(pid) else {
            continue;
        };
        if let Some(i) = pids.iter().position(|&p| p == ppid) {
            ticks[i] += own + reaped;
        }
    }
    ticks
        .iter()
        .map(|&t| t as f64 / ticks_per_second())
        .collect()
}

fn postmaster_pids(cluster: &CitusCluster) -> Vec<u32> {
    cluster
        .nodes
        .iter()
        .map(|n| {
            let pid =
                std::fs::read_to_string(n.data_dir.join("postmaster.pid")).expect("postmaster.pid");
            pid.lines()
                .next()
                .and_then(|l| l.trim().parse().ok())
                .expect("the postmaster's pid")
        })
        .collect()
}

/// CPU seconds of this process's reaped children (the tripload processes).
fn children_cpu() -> f64 {
    // SAFETY: getrusage writes into the struct given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

/// The most Citus connections from the coordinator, and prepared
/// transactions, seen on each worker while a load ran (sampled every 100 ms).
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<[(i64, i64); 2]>,
}

impl Sampler {
    fn start(cluster: &CitusCluster, key: Key) -> Sampler {
        let infos: Vec<String> = (1..=2)
            .map(|w| format!("{} sslmode=disable", conninfo(cluster, w, key.db())))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let sessions: Vec<Session> = infos
                .iter()
                .map(|info| {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime");
                    let client = rt.block_on(async {
                        let (c, conn) = tokio_postgres::connect(info, tokio_postgres::NoTls)
                            .await
                            .expect("connect to a worker");
                        tokio::spawn(conn);
                        c
                    });
                    Session { rt, client }
                })
                .collect();
            let mut most = [(0i64, 0i64); 2];
            while !flag.load(Ordering::Relaxed) {
                for (w, s) in sessions.iter().enumerate() {
                    let r = &s.query(
                        "SELECT (SELECT count(*) FROM pg_stat_activity
                                 WHERE datname = current_database()
                                   AND application_name LIKE 'citus_internal%'),
                                (SELECT count(*) FROM pg_prepared_xacts
                                 WHERE database = current_database())",
                    )[0];
                    most[w].0 = most[w].0.max(r.get(0));
                    most[w].1 = most[w].1.max(r.get(1));
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            most
        });
        Sampler { stop, thread }
    }

    fn finish(self) -> [(i64, i64); 2] {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("sampler")
    }
}

// ---- one run of one variant

/// What one run of a variant measured.
struct Figures {
    /// (a) one file, --jobs 2: rows/s
    one_file: f64,
    /// (c) CPU seconds for (a): tripload, coordinator, worker 1, worker 2
    cpu: [f64; 4],
    /// (b) CPU seconds, as for (a)
    cpu_b: [f64; 4],
    /// (a), (b): the share of the trips on worker 1, worker 2
    share: [f64; 2],
    share_b: [f64; 2],
    /// (a) and (b): most coordinator connections / prepared transactions on a worker
    conns: [(i64, i64); 2],
    /// (b) four files, --jobs 4: rows/s
    four_files: f64,
    /// (d) query medians, ms: (name, after (a), after (b))
    queries: Vec<(&'static str, f64, f64)>,
    /// (e) unload of the 2M-row file, of one 500k-row (compacted) file: s, or why not
    unload: Vec<Result<f64, String>>,
    /// answers, to compare the variants: (query, result)
    answers: Vec<(String, String)>,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Copies `sources` into a fresh landing directory `in`.
fn land(dir: &Path, sources: &[std::path::PathBuf]) {
    let _ = std::fs::remove_dir_all(dir.join("in"));
    let _ = std::fs::remove_dir_all(dir.join("processed"));
    std::fs::create_dir_all(dir.join("in")).expect("mkdir");
    for s in sources {
        std::fs::copy(s, dir.join("in").join(s.file_name().expect("name"))).expect("copy");
    }
}

/// The share of `trips`' rows on each worker (counted on every shard).
fn worker_shares(cluster: &CitusCluster, c: &Session) -> [f64; 2] {
    let mut rows = [0f64; 2];
    for r in c.query(
        "SELECT s.nodeport, sum(r.result::int8)::float8
         FROM run_command_on_shards('trips', $$SELECT count(*) FROM %s$$) r
         JOIN citus_shards s ON s.shardid = r.shardid
         GROUP BY 1",
    ) {
        let (port, n): (i32, f64) = (r.get(0), r.get(1));
        if let Some(w) = (1..=2).find(|&w| cluster.nodes[w].port as i32 == port) {
            rows[w - 1] += n;
        }
    }
    let total = rows[0] + rows[1];
    rows.map(|b| if total > 0.0 { b / total } else { 0.0 })
}

/// Times the queries on what is loaded (median of [`QUERY_RUNS`], ms) and
/// records their answers.
fn queries(
    cluster: &CitusCluster,
    dir: &Path,
    key: Key,
    c: &Session,
    state: &str,
    answers: &mut Vec<(String, String)>,
) -> Vec<(&'static str, f64)> {
    let prague: i16 = c.query("SELECT id FROM regions WHERE name = 'Prague'")[0].get(0);
    let file_id: i32 = c.query("SELECT min(file_id) FROM load_files")[0].get(0);
    let cli: [(&'static str, Vec<&str>); 3] = [
        (
            "`weekly --region Prague` (rollups; process)",
            vec!["weekly", "--region", "Prague", "--format", "csv"],
        ),
        (
            "`weekly --bbox …` by origin (rollups; process)",
            vec!["weekly", "--bbox", BBOX, "--format", "csv"],
        ),
        (
            "`weekly --bbox … --by both` (reads trips; process)",
            vec!["weekly", "--bbox", BBOX, "--by", "both", "--format", "csv"],
        ),
    ];
    let sql: [(&'static str, String); 3] = [
        (
            "trips of one file: `count(*) WHERE file_id = X`",
            format!("SELECT count(*) FROM trips WHERE file_id = {file_id}"),
        ),
        (
            "trips of a week with origin in the box (brute force)",
            format!(
                "SELECT count(*) FROM trips
                 WHERE datetime >= '2018-03-05 00:00+00' AND datetime < '2018-03-12 00:00+00'
                   AND origin && ST_MakeEnvelope({BBOX}, 4326)"
            ),
        ),
        (
            "Prague's trips per week, all trips (brute force)",
            format!(
                "SELECT sum(n)::int8 FROM (SELECT date_trunc('week', datetime), count(*) n
                 FROM trips WHERE region_id = {prague} GROUP BY 1) w"
            ),
        ),
    ];
    let mut out = Vec::new();
    for (name, args) in &cli {
        let mut ms = Vec::new();
        let mut answer = String::new();
        for _ in 0..QUERY_RUNS {
            let t = Instant::now();
            let o = run_ok(cluster, dir, key, args);
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            answer = stdout(&o);
        }
        answers.push((format!("{state}: {name}"), answer));
        out.push((*name, median(&mut ms)));
    }
    for (name, q) in &sql {
        let mut ms = Vec::new();
        let mut answer = 0;
        for _ in 0..QUERY_RUNS {
            let t = Instant::now();
            answer = c.count(q);
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        answers.push((format!("{state}: {name}"), answer.to_string()));
        out.push((*name, median(&mut ms)));
    }
    out
}

/// `tripload unload --file-id 1`: seconds, or the error.
fn unload_first(cluster: &CitusCluster, dir: &Path, key: Key, c: &Session) -> Result<f64, String> {
    let before = c.count("SELECT count(*) FROM trips");
    let held = c.count("SELECT count(*) FROM trips WHERE file_id = 1");
    let t = Instant::now();
    let out = run(cluster, dir, key, &["unload", "--file-id", "1"]);
    let secs = t.elapsed().as_secs_f64();
    if out.status.code() != Some(0) {
        return Err(stderr(&out).trim().to_string());
    }
    assert_eq!(c.count("SELECT count(*) FROM trips"), before - held);
    Ok(secs)
}

/// One measured `tripload load` of `sources` with `--jobs jobs`.
struct Load {
    rows_per_s: f64,
    /// CPU seconds: tripload, coordinator, worker 1, worker 2
    cpu: [f64; 4],
    /// the share of the trips on worker 1, worker 2
    share: [f64; 2],
    /// most coordinator connections / prepared transactions on each worker
    conns: [(i64, i64); 2],
}

#[allow(clippy::too_many_arguments)]
fn measured_load(
    cluster: &CitusCluster,
    dir: &Path,
    key: Key,
    c: &Session,
    pids: &[u32],
    jobs: &str,
    sources: &[std::path::PathBuf],
    rows: u64,
) -> Load {
    reset(c);
    land(dir, sources);
    let sampler = Sampler::start(cluster, key);
    let (client0, servers0) = (children_cpu(), servers_cpu(pids));
    let t = Instant::now();
    run_ok(cluster, dir, key, &["load", "-q", "--jobs", jobs, "in"]);
    let secs = t.elapsed().as_secs_f64();
    let (client1, servers1) = (children_cpu(), servers_cpu(pids));
    let conns = sampler.finish();
    assert_eq!(c.count("SELECT count(*) FROM trips"), rows as i64);
    // What autovacuum would do later (it is off in the bench, so that no
    // run's aftermath lands in the next run's figures), done now, untimed.
    c.batch(SETTLE);
    Load {
        rows_per_s: rows as f64 / secs,
        cpu: [
            client1 - client0,
            servers1[0] - servers0[0],
            servers1[1] - servers0[1],
            servers1[2] - servers0[2],
        ],
        share: worker_shares(cluster, c),
        conns,
    }
}

const SETTLE: &str = "VACUUM ANALYZE trips, rollup_region_week, rollup_region_source,
                      rollup_cell_week, rollup_cell_points, load_files";

fn one_run(
    cluster: &CitusCluster,
    dir: &Path,
    key: Key,
    big: &[std::path::PathBuf],
    small: &[std::path::PathBuf],
    rows: u64,
) -> Figures {
    let c = Session::open(cluster, 0, key.db());
    let pids = postmaster_pids(cluster);

    // (a) one file with --jobs 2, (c) CPU per node, (d), (e).
    let a = measured_load(cluster, dir, key, &c, &pids, "2", big, rows);
    let mut answers = Vec::new();
    let after_a = queries(cluster, dir, key, &c, "1 file", &mut answers);
    let unload_a = unload_first(cluster, dir, key, &c);

    // (b) four files with --jobs 4, (d), (e).
    let b = measured_load(cluster, dir, key, &c, &pids, "4", small, rows);
    let after_b = queries(cluster, dir, key, &c, "4 files", &mut answers);
    let unload_b = unload_first(cluster, dir, key, &c);
    // Nothing left for the other variant's run to meet.
    reset(&c);
    c.batch(SETTLE);

    Figures {
        one_file: a.rows_per_s,
        cpu: a.cpu,
        cpu_b: b.cpu,
        share: a.share,
        share_b: b.share,
        conns: [0, 1].map(|w| {
            (
                a.conns[w].0.max(b.conns[w].0),
                a.conns[w].1.max(b.conns[w].1),
            )
        }),
        four_files: b.rows_per_s,
        queries: after_a
            .iter()
            .zip(&after_b)
            .map(|(a, b)| (a.0, a.1, b.1))
            .collect(),
        unload: vec![unload_a, unload_b],
        answers,
    }
}

// ---- the report

fn list(v: &[f64], digits: usize) -> String {
    v.iter()
        .map(|x| format!("{x:.digits$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One table row: the metric, each variant's runs and median, row/file.
fn line(metric: &str, file: &[f64], row: &[f64], digits: usize) -> String {
    let (mf, mr) = (median(&mut file.to_vec()), median(&mut row.to_vec()));
    let ratio = if mf > 0.0 {
        format!("{:.2}", mr / mf)
    } else {
        "—".into()
    };
    format!(
        "| {metric} | {} (median {mf:.digits$}) | {} (median {mr:.digits$}) | {ratio} |",
        list(file, digits),
        list(row, digits),
    )
}

fn report(runs: &[(Key, Figures)], rows: u64) -> String {
    let of = |k: Key, get: &dyn Fn(&Figures) -> f64| -> Vec<f64> {
        runs.iter()
            .filter(|r| r.0 == k)
            .map(|r| get(&r.1))
            .collect()
    };
    let both = |metric: &str, get: &dyn Fn(&Figures) -> f64, digits: usize| {
        line(metric, &of(Key::File, get), &of(Key::Row, get), digits)
    };
    let order: Vec<&str> = runs.iter().map(|r| r.0.name()).collect();
    let mut t = vec![
        format!("runs in order: {}", order.join(", ")),
        String::new(),
        "| measure | by file (`file_id`) | by row (hash of `datetime`) | row/file |".into(),
        "|---|---|---|---:|".into(),
        both(
            &format!("(a) 1 file of {rows} rows, `--jobs 2`: k rows/s"),
            &|f: &Figures| f.one_file / 1e3,
            0,
        ),
        both(
            &format!("(b) 4 files of {} rows, `--jobs 4`: k rows/s", rows / 4),
            &|f: &Figures| f.four_files / 1e3,
            0,
        ),
        both("(c) CPU s for (a): tripload", &|f: &Figures| f.cpu[0], 2),
        both("(c) CPU s for (a): coordinator", &|f: &Figures| f.cpu[1], 2),
        both("(c) CPU s for (a): worker 1", &|f: &Figures| f.cpu[2], 2),
        both("(c) CPU s for (a): worker 2", &|f: &Figures| f.cpu[3], 2),
        both(
            "(c) CPU s for (a): the three servers",
            &|f: &Figures| f.cpu[1] + f.cpu[2] + f.cpu[3],
            2,
        ),
        both(
            "(a) share of the file's trips on worker 1",
            &|f: &Figures| f.share[0],
            2,
        ),
        both("(b) CPU s: tripload", &|f: &Figures| f.cpu_b[0], 2),
        both("(b) CPU s: coordinator", &|f: &Figures| f.cpu_b[1], 2),
        both("(b) CPU s: worker 1", &|f: &Figures| f.cpu_b[2], 2),
        both("(b) CPU s: worker 2", &|f: &Figures| f.cpu_b[3], 2),
        both(
            "(b) CPU s: the three servers",
            &|f: &Figures| f.cpu_b[1] + f.cpu_b[2] + f.cpu_b[3],
            2,
        ),
        both(
            "(b) share of the trips on worker 1",
            &|f: &Figures| f.share_b[0],
            2,
        ),
    ];
    let names: Vec<&'static str> = runs[0].1.queries.iter().map(|q| q.0).collect();
    for (i, name) in names.iter().enumerate() {
        t.push(both(
            &format!("(d) {name}, 1 file: ms"),
            &|f: &Figures| f.queries[i].1,
            1,
        ));
        t.push(both(
            &format!("(d) {name}, 4 files: ms"),
            &|f: &Figures| f.queries[i].2,
            1,
        ));
    }
    let unloaded = [
        format!("the file of (a), {rows} rows"),
        format!("a file of (b), {} rows (compacted)", rows / 4),
    ];
    for (i, what) in unloaded.iter().enumerate() {
        let ok = |k: Key| -> Vec<f64> {
            runs.iter()
                .filter(|r| r.0 == k)
                .filter_map(|r| r.1.unload[i].as_ref().ok().copied())
                .collect()
        };
        let (f, r) = (ok(Key::File), ok(Key::Row));
        if !f.is_empty() && !r.is_empty() {
            t.push(line(&format!("(e) `unload` of {what}: s"), &f, &r, 2));
        }
        for (k, fig) in runs {
            if let Err(e) = &fig.unload[i] {
                t.push(format!(
                    "(e) `unload` of {what}, {}: FAILED: {}",
                    k.name(),
                    e.replace('\n', " ")
                ));
            }
        }
    }
    for w in 0..2 {
        t.push(both(
            &format!("most coordinator connections on worker {}", w + 1),
            &|f: &Figures| f.conns[w].0 as f64,
            0,
        ));
        t.push(both(
            &format!("most prepared transactions seen on worker {}", w + 1),
            &|f: &Figures| f.conns[w].1 as f64,
            0,
        ));
    }
    t.join("\n")
}

/// The two variants alternately (file, row, row, file, ...), `TRIPLOAD_BENCH_ROUNDS`
/// runs of each (default 2); `TRIPLOAD_BENCH_ROWS` rows (default 2,000,000) in
/// (a) one file, (b) four files.
///
/// `cargo test --release --test citus_distribution -- --ignored --nocapture`
#[test]
#[ignore = "benchmark; run with --ignored --nocapture"]
fn bench_distribution_by_file_against_by_row() {
    if skip_without_citus("bench_distribution_by_file_against_by_row") {
        return;
    }
    let env = |name: &str, default: u64| -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let rows = env("TRIPLOAD_BENCH_ROWS", 2_000_000) / 4 * 4;
    let rounds = env("TRIPLOAD_BENCH_ROUNDS", 2) as usize;
    let cluster = CitusCluster::start();
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path();

    form_row_database(&cluster);
    // No autovacuum: what one run leaves for it would run during the next
    // (the other variant's) run; each load is settled by hand instead.
    for node in 0..cluster.nodes.len() {
        let s = Session::open(&cluster, node, "postgres");
        s.batch("ALTER SYSTEM SET autovacuum = off");
        s.batch("SELECT pg_reload_conf()");
    }
    run_ok(&cluster, dir, Key::File, &["db", "migrate"]);
    run_ok(&cluster, dir, Key::Row, &["db", "migrate"]);
    let sessions = [
        Session::open(&cluster, 0, Key::File.db()),
        Session::open(&cluster, 0, Key::Row.db()),
    ];
    distribute_by_row(&sessions[Key::Row.index()]);
    for s in &sessions {
        // 2018, the generated year: no load makes a partition.
        s.batch(
            "SELECT tripload_trips_partitions(ARRAY(SELECT generate_series(17532, 17532 + 365)))",
        );
    }
    let layouts: Vec<_> = sessions.iter().map(distribution).collect();
    for (k, layout) in [Key::File, Key::Row].iter().zip(&layouts) {
        println!("{}: {layout:?}", k.name());
        let column = if *k == Key::File {
            "file_id"
        } else {
            "datetime"
        };
        for (table, col, n) in layout {
            let want = if table.starts_with("trips") {
                column
            } else {
                "file_id"
            };
            assert_eq!(col, want, "{} {table}", k.name());
            if table == "trips partitions" {
                assert!(*n >= 53, "{n} partitions");
            }
        }
    }

    let big = vec![dir.join("src/big/big.csv")];
    let small: Vec<_> = (0..4)
        .map(|i| dir.join(format!("src/small/s{i}.csv")))
        .collect();
    std::fs::create_dir_all(dir.join("src/big")).expect("mkdir");
    std::fs::create_dir_all(dir.join("src/small")).expect("mkdir");
    std::fs::write(&big[0], tripload::gen::trips_csv(rows, 90)).expect("write");
    for (i, p) in small.iter().enumerate() {
        std::fs::write(p, tripload::gen::trips_csv(rows / 4, 91 + i as u64)).expect("write");
    }

    let mut runs: Vec<(Key, Figures)> = Vec::new();
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [Key::File, Key::Row]
        } else {
            [Key::Row, Key::File]
        };
        for key in order {
            let f = one_run(&cluster, dir, key, &big, &small, rows);
            println!(
                "round {round}, {}: 1 file {:.0} rows/s, 4 files {:.0} rows/s, CPU (a) {:.2?} (b) {:.2?}, worker shares (a) {:.2?} (b) {:.2?}, unload {:?}",
                key.name(),
                f.one_file,
                f.four_files,
                f.cpu,
                f.cpu_b,
                f.share,
                f.share_b,
                f.unload
            );
            runs.push((key, f));
        }
    }

    println!("\n{}", report(&runs, rows));
    // Both variants answer every query alike.
    let first = |k: Key| &runs.iter().find(|r| r.0 == k).expect("a run").1.answers;
    for (a, b) in first(Key::File).iter().zip(first(Key::Row)) {
        assert_eq!(a, b, "the variants answer differently");
    }
    // By file one shard holds the file; by row both workers hold a part.
    for (k, f) in &runs {
        let spread = f.share[0] > 0.3 && f.share[1] > 0.3;
        assert_eq!(spread, *k == Key::Row, "{}: shares {:?}", k.name(), f.share);
    }
}
