//! Shared test harness: one throwaway PostgreSQL+PostGIS cluster per test
//! binary (started with the crate's own embedded module, dies with the
//! process), a fresh database per test, a temp working directory per test, and
//! the real `tripload` binary.
//!
//! The cluster is reached over its Unix socket; it also listens on
//! 127.0.0.1 with the generated password (the `--pg-tcp` path) for the tests
//! that need TCP. When TimescaleDB is installed the cluster preloads it and
//! the template database has the extension, so every test database gets the
//! hypertable layout, unless `TRIPLOAD_TEST_LAYOUT=plain`: then the template
//! has no TimescaleDB and every test database sets `tripload.time_layout =
//! 'plain'` (see [`test_layout`]). Which layout ran is printed once per test
//! binary.
#![allow(dead_code)]

pub mod citus;
pub mod loaders;
pub mod serve;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use tripload::embedded::Embedded;

struct Cluster {
    emb: Embedded,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

async fn client(conninfo: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {conninfo}: {e}"));
    tokio::spawn(conn);
    c
}

/// Removes the data directories of earlier test clusters whose server is
/// gone (each test binary keeps its cluster's directory, ~1.3 GB, past its
/// exit): a directory without a live postmaster pid is stale, unless it is
/// minutes old (another test binary may be starting its server in it).
fn sweep_stale_clusters() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().starts_with("tripload-test-pg") {
            continue;
        }
        let pid = std::fs::read_to_string(e.path().join("postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()));
        // kill(pid, 0) probes without signalling.
        let alive = pid.is_some_and(|p| unsafe { libc::kill(p, 0) } == 0);
        let recent = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_none_or(|age| age < std::time::Duration::from_secs(600));
        if !alive && !recent {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| {
        sweep_stale_clusters();
        let dir = tempfile::Builder::new()
            .prefix("tripload-test-pg")
            .tempdir()
            .expect("tempdir")
            .keep();
        let opts = tripload::embedded::Options {
            tcp: true,
            ..Default::default()
        };
        let emb = Embedded::start_ephemeral_with(&dir, &opts)
            .unwrap_or_else(|e| panic!("start test cluster: {e}"));
        let admin = emb.conninfo("postgres");
        block_on(async {
            let c = client(&admin).await;
            c.batch_execute("CREATE DATABASE tpl")
                .await
                .expect("create template db");
        });
        block_on(async {
            let c = client(&emb.conninfo("tpl")).await;
            c.batch_execute("CREATE EXTENSION postgis")
                .await
                .expect("postgis must be installed (apt-get install -y postgresql-15-postgis-3)");
            let layout = if test_layout() == "plain" {
                "plain table (TRIPLOAD_TEST_LAYOUT=plain)".to_owned()
            } else {
                use_timescaledb(&c).await
            };
            // Straight to stderr, past the test harness's output capture.
            let line = format!("tripload tests: time layout = {layout}\n");
            let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
        });
        block_on(async {
            // TimescaleDB's scheduler stays connected to a database with the
            // extension, and CREATE DATABASE ... TEMPLATE needs it alone.
            let c = client(&admin).await;
            c.batch_execute(
                "ALTER DATABASE tpl WITH ALLOW_CONNECTIONS false;
                 SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'tpl';",
            )
            .await
            .expect("close the template database");
        });
        Cluster { emb }
    })
}

/// The time layout the test databases get: "plain" when
/// `TRIPLOAD_TEST_LAYOUT=plain`, else "auto" (the hypertable when
/// TimescaleDB is installed, as in production).
pub fn test_layout() -> &'static str {
    match std::env::var("TRIPLOAD_TEST_LAYOUT").as_deref() {
        Ok("plain") => "plain",
        Ok("") | Ok("auto") | Err(_) => "auto",
        Ok(other) => panic!("TRIPLOAD_TEST_LAYOUT={other:?}: use plain or auto"),
    }
}

/// Creates TimescaleDB in the template database when the server preloads
/// it, so that migrations choose the hypertable layout; says which layout
/// the tests get.
async fn use_timescaledb(c: &tokio_postgres::Client) -> String {
    let row = c
        .query_one(
            "SELECT (SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'),
                    current_setting('shared_preload_libraries') LIKE '%timescaledb%'",
            &[],
        )
        .await
        .expect("check for TimescaleDB");
    let (version, preloaded): (Option<String>, bool) = (row.get(0), row.get(1));
    match version {
        Some(v) if preloaded => {
            c.batch_execute("CREATE EXTENSION timescaledb")
                .await
                .unwrap_or_else(|e| panic!("create extension timescaledb {v}: {e:?}"));
            format!("hypertable (TimescaleDB {v})")
        }
        Some(v) => panic!("TimescaleDB {v} is installed but the test cluster does not preload it"),
        None => "plain table (TimescaleDB not installed)".to_owned(),
    }
}

/// The test cluster's data directory, TCP port (on 127.0.0.1, password
/// only: see [`cluster_password`]) and superuser.
pub fn cluster_info() -> (PathBuf, u16, String) {
    let e = &cluster().emb;
    (e.data_dir.clone(), e.port, e.user.clone())
}

/// The test cluster itself (socket directory, password file, ...).
pub fn cluster_embedded() -> &'static Embedded {
    &cluster().emb
}

/// The password for TCP connections to the test cluster.
pub fn cluster_password() -> String {
    cluster()
        .emb
        .tcp_password()
        .expect("read the test cluster's password")
        .expect("the test cluster listens on TCP")
}

/// A fresh database (PostGIS preinstalled) for one test.
pub struct TestDb {
    pub conninfo: String,
    pub name: String,
}

pub fn fresh_db() -> TestDb {
    let cl = cluster();
    let name = format!(
        "t{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    );
    block_on(async {
        let c = client(&cl.emb.conninfo("postgres")).await;
        // CREATE DATABASE … TEMPLATE fails (55006) while any session is
        // connected to the template: a terminated backend may still be
        // exiting, or TimescaleDB's scheduler may have started again, so
        // close them and try again for a while before giving up.
        let mut tries = 0;
        loop {
            match c
                .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE tpl"))
                .await
            {
                Ok(()) => break,
                Err(e)
                    if tries < 100
                        && e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE) =>
                {
                    tries += 1;
                    // TimescaleDB's scheduler may have come back to it.
                    let _ = c
                        .batch_execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'tpl'")
                        .await;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => panic!("create test db: {e:?}"),
            }
        }
        if test_layout() == "plain" {
            c.batch_execute(&format!(
                "ALTER DATABASE {name} SET tripload.time_layout = 'plain'"
            ))
            .await
            .expect("ask for the plain layout");
        }
    });
    TestDb {
        conninfo: cl.emb.conninfo(&name),
        name,
    }
}

impl TestDb {
    /// Runs a query and returns all rows.
    pub fn query(&self, sql: &str) -> Vec<tokio_postgres::Row> {
        block_on(async {
            let c = client(&self.conninfo).await;
            c.query(sql, &[])
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        })
    }

    /// Runs statements separated by semicolons (no results).
    pub fn batch(&self, sql: &str) {
        block_on(async {
            let c = client(&self.conninfo).await;
            c.batch_execute(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        })
    }

    pub fn count(&self, sql: &str) -> i64 {
        self.query(sql)[0].get(0)
    }

    pub fn trips(&self) -> i64 {
        self.count("SELECT count(*) FROM trips")
    }
}

/// One connection kept open until dropped, e.g. to hold a session-level
/// advisory lock the way a live loader does.
pub struct Session {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl TestDb {
    pub fn session(&self) -> Session {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let client = rt.block_on(client(&self.conninfo));
        Session { rt, client }
    }
}

impl Session {
    pub fn query(&self, sql: &str) -> Vec<tokio_postgres::Row> {
        self.rt.block_on(async {
            self.client
                .query(sql, &[])
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
        })
    }
}

/// Holds every COPY into `trips` at its first row until dropped (or
/// [`HeldCopy::release`]): a row trigger takes a shared advisory lock that
/// this connection keeps exclusively. Lets a test act while a load is
/// mid-COPY whatever the machine's speed. Migrates `db` first.
pub struct HeldCopy {
    session: Session,
}

const HOLD_KEY: i64 = 4_242_424;

pub fn hold_trips_copy(db: &TestDb, w: &Work) -> HeldCopy {
    let out = tripload(w, db, &["db", "migrate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    db.query(&format!(
        "CREATE FUNCTION test_hold_trips() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_advisory_xact_lock_shared({HOLD_KEY}); RETURN NEW; END $$"
    ));
    db.query(
        "CREATE TRIGGER test_hold BEFORE INSERT ON trips \
         FOR EACH ROW EXECUTE FUNCTION test_hold_trips()",
    );
    let session = db.session();
    session.query(&format!("SELECT pg_advisory_lock({HOLD_KEY})"));
    HeldCopy { session }
}

impl HeldCopy {
    /// True once a COPY waits on the hold.
    pub fn holding(&self, db: &TestDb) -> bool {
        db.count(&format!(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
             AND objid = {HOLD_KEY}"
        )) > 0
    }

    /// Lets the COPY go on, and drops the trigger.
    pub fn release(self, db: &TestDb) {
        self.session
            .query(&format!("SELECT pg_advisory_unlock({HOLD_KEY})"));
        db.query("DROP TRIGGER test_hold ON trips");
    }
}

/// A temp working directory with `landing/`.
pub struct Work {
    pub dir: tempfile::TempDir,
}

impl Work {
    pub fn new() -> Work {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("landing")).expect("landing");
        Work { dir }
    }
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    /// Writes `landing/<name>` and returns its path.
    pub fn land(&self, name: &str, content: &[u8]) -> PathBuf {
        let p = self.path("landing").join(name);
        std::fs::write(&p, content).expect("write landing file");
        p
    }
    pub fn exists(&self, rel: &str) -> bool {
        self.path(rel).exists()
    }
    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }
}

/// Runs the real binary in `work` against `db`.
pub fn tripload(work: &Work, db: &TestDb, args: &[&str]) -> Output {
    tripload_cmd(work, db, args).output().expect("run tripload")
}

pub fn tripload_cmd(work: &Work, db: &TestDb, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tripload"));
    cmd.current_dir(work.dir.path())
        .env("DATABASE_URL", &db.conninfo)
        .env_remove("TRIPLOAD_PG_DIR")
        .args(args);
    cmd
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn sample() -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("data/trips-sample.csv"))
        .expect("sample")
}

/// Every point of rollup_cell_points with its week, whatever file (or
/// compaction, file_id 0) wrote it: (side, ix, iy, week, x, y).
pub const POINTS: &str = "SELECT p.side, p.ix, p.iy, u.w AS week, q.x, q.y
    FROM rollup_cell_points p, unnest(p.weeks, p.ends) WITH ORDINALITY AS u(w, e, k),
         generate_series(coalesce(p.ends[u.k - 1], 0) + 1, u.e) AS i,
         LATERAL (SELECT cell_point_coord(substring(p.lons FROM (i - 1) * 8 + 1 FOR 8)) AS x,
                         cell_point_coord(substring(p.lats_sorted FROM get_byte(p.lat_pos, i - 1) * 8 + 1 FOR 8)) AS y) q";

/// Rollups summed over files, in a canonical order.
pub fn rollup_state(db: &TestDb) -> Vec<String> {
    db.query(
        &"SELECT 'rw ' || g.name || ' ' || week || ' ' || sum(trips) FROM rollup_region_week r JOIN regions g ON g.id = r.region_id GROUP BY g.name, week
         UNION ALL
         SELECT 'rs ' || g.name || ' ' || d.name || ' ' || sum(trips) || ' ' || max(last_at) FROM rollup_region_source r
           JOIN regions g ON g.id = r.region_id JOIN datasources d ON d.id = r.datasource_id GROUP BY g.name, d.name
         UNION ALL
         SELECT 'cw ' || side::text || ' ' || ix || ' ' || iy || ' ' || w || ' ' || sum(n) FROM rollup_cell_week, unnest(weeks, trips) AS u(w, n) GROUP BY side, ix, iy, w
         UNION ALL
         SELECT 'cp ' || side::text || ' ' || ix || ' ' || iy || ' ' || week || ' ' || string_agg(x::text || ':' || y::text, ',' ORDER BY x, y)
           FROM ({POINTS}) p GROUP BY side, ix, iy, week
         ORDER BY 1".replace("{POINTS}", POINTS),
    )
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Makes a named pipe at `p` (an input that is not a regular file).
pub fn mkfifo(p: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

/// Whether `db` has the hypertable (TimescaleDB) layout.
pub fn hypertable(db: &TestDb) -> bool {
    db.count(
        "SELECT count(*) FROM tripload_settings WHERE key = 'time_layout' AND value = 'timescaledb'",
    ) > 0
}

/// Asserts that a run of the binary exited 0, showing its output if not.
pub fn ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        stdout(out),
        stderr(out)
    );
}

/// The statements of sql/examples/questions.sql (the comments before each
/// one included), in order.
pub fn questions() -> Vec<String> {
    let sql = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/examples/questions.sql"),
    )
    .expect("questions.sql");
    sql.split(';')
        .filter(|s| {
            s.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with("--"))
        })
        .map(str::to_string)
        .collect()
}

pub const HEADER: &str = "region,origin_coord,destination_coord,datetime,datasource";
