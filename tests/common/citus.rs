//! A throwaway Citus cluster for one test: a coordinator and two workers,
//! three initdb'd PostgreSQL 15 clusters in a private directory (mode 0700),
//! each listening on 127.0.0.1 only (SCRAM passwords for every connection,
//! local or TCP; no `trust`), preloading only Citus (TimescaleDB cannot share
//! a database with it), with PostGIS and Citus created in the database
//! `trips` on every node and the workers added to the coordinator. The nodes
//! reach each other with the password in a 0600 pgpass file (PGPASSFILE of
//! the servers). As root the servers run as the `postgres` OS user. The
//! servers die with the thread that started them (the test) and when the
//! cluster is dropped.
//!
//! [`citus_installed`] says whether Citus is installed for the PostgreSQL
//! the tests use; the tests skip loudly when it is not.

use super::{stderr, stdout};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BINDIR: &str = "/usr/lib/postgresql/15/bin";
pub const USER: &str = "tripload";
pub const DBNAME: &str = "trips";

/// Whether Citus is installed (its control file in the share dir).
pub fn citus_installed() -> bool {
    let share = Command::new(Path::new(BINDIR).join("pg_config"))
        .arg("--sharedir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    share.is_some_and(|s| s.join("extension/citus.control").is_file())
}

/// Prints the skip loudly (past the test harness's capture) and returns
/// true when Citus is not installed.
pub fn skip_without_citus(test: &str) -> bool {
    if citus_installed() {
        return false;
    }
    let line = format!("SKIPPED: citus not installed ({test} did not run)\n");
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    true
}

/// One node: its data directory, port and running server (None when stopped).
pub struct Node {
    pub name: &'static str,
    pub data_dir: PathBuf,
    pub port: u16,
    server: Option<Child>,
}

pub struct CitusCluster {
    pub dir: tempfile::TempDir,
    pub password: String,
    /// coordinator, worker1, worker2
    pub nodes: Vec<Node>,
    run_as: Option<(u32, u32)>,
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// The uid and gid of the `postgres` OS user when running as root.
fn server_user() -> Option<(u32, u32)> {
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("id postgres");
        assert!(
            out.status.success(),
            "no postgres OS user to run the servers as"
        );
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    Some((id("-u"), id("-g")))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

impl CitusCluster {
    /// Starts the three nodes and forms the cluster (about 20 s).
    pub fn start() -> CitusCluster {
        let dir = tempfile::Builder::new()
            .prefix("tripload-citus")
            .tempdir()
            .expect("tempdir");
        let run_as = server_user();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let password: String = format!("pw{:x}{:x}", std::process::id(), rand_u64());
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, format!("{password}\n")).unwrap();
        let pgpass = dir.path().join("pgpass");
        std::fs::write(&pgpass, format!("127.0.0.1:*:*:{USER}:{password}\n")).unwrap();
        for f in [&pwfile, &pgpass] {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        std::fs::create_dir(dir.path().join("sock")).unwrap();
        if let Some((uid, gid)) = run_as {
            for p in [dir.path(), &pwfile, &pgpass, &dir.path().join("sock")] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
            }
        }
        let mut cluster = CitusCluster {
            dir,
            password,
            nodes: Vec::new(),
            run_as,
        };
        for name in ["coordinator", "worker1", "worker2"] {
            let data_dir = cluster.dir.path().join(name);
            cluster.initdb(&data_dir);
            let mut node = Node {
                name,
                data_dir,
                port: free_port(),
                server: None,
            };
            cluster.start_node(&mut node);
            cluster.nodes.push(node);
        }
        cluster.form();
        cluster
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(Path::new(BINDIR).join(program));
        cmd.current_dir("/")
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("LC_ALL", "C.UTF-8")
            .env("PGPASSFILE", self.dir.path().join("pgpass"))
            .stdin(Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    fn initdb(&self, data_dir: &Path) {
        let out = self
            .command("initdb")
            .arg("-D")
            .arg(data_dir)
            .args([
                "-U",
                USER,
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", self.dir.path().join("pw").display()))
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb {}: {}",
            data_dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts (or restarts) a node's server and waits until it accepts.
    fn start_node(&self, node: &mut Node) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.data_dir.join("server.log"))
            .expect("server log");
        let mut cmd = self.command("postgres");
        cmd.arg("-D").arg(&node.data_dir);
        for setting in [
            "listen_addresses=127.0.0.1".to_string(),
            format!("port={}", node.port),
            format!(
                "unix_socket_directories={}",
                self.dir.path().join("sock").display()
            ),
            "unix_socket_permissions=0700".into(),
            "shared_preload_libraries=citus".into(),
            "max_prepared_transactions=100".into(),
            "max_connections=100".into(),
            "shared_buffers=128MB".into(),
            "fsync=off".into(),
            "synchronous_commit=off".into(),
            "citus.shard_count=8".into(),
        ] {
            cmd.arg("-c").arg(setting);
        }
        cmd.stdout(log.try_clone().unwrap()).stderr(log);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGQUIT as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        node.server = Some(cmd.spawn().expect("start postgres"));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = block_on(async {
                tokio_postgres::connect(
                    &self.conninfo_of(node.port, "postgres"),
                    tokio_postgres::NoTls,
                )
                .await
                .is_ok()
            });
            if ok {
                return;
            }
            if let Some(Ok(Some(status))) = node.server.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "{} exited ({status}): {}",
                    node.name,
                    std::fs::read_to_string(node.data_dir.join("server.log")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "{} did not start", node.name);
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Fast shutdown of a node (sessions aborted, as when a machine goes).
    pub fn stop(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        if let Some(mut child) = node.server.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let _ = child.wait();
        }
    }

    /// Starts a stopped node again on the same port.
    pub fn restart(&mut self, index: usize) {
        let mut node = std::mem::replace(
            &mut self.nodes[index],
            Node {
                name: "",
                data_dir: PathBuf::new(),
                port: 0,
                server: None,
            },
        );
        self.start_node(&mut node);
        self.nodes[index] = node;
    }

    fn conninfo_of(&self, port: u16, dbname: &str) -> String {
        format!(
            "host=127.0.0.1 port={port} user={USER} password={} dbname={dbname}",
            self.password
        )
    }

    /// The connection string of node `index`'s `trips` database (tripload's
    /// default sslmode, prefer).
    pub fn conninfo(&self, index: usize) -> String {
        self.conninfo_of(self.nodes[index].port, DBNAME)
    }

    /// Runs statements on a node's `trips` database (plaintext session).
    pub fn batch(&self, index: usize, sql: &str) {
        let conninfo = format!("{} sslmode=disable", self.conninfo(index));
        block_on(async {
            let (c, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("connect {}: {e}", self.nodes[index].name));
            tokio::spawn(conn);
            c.batch_execute(sql)
                .await
                .unwrap_or_else(|e| panic!("{} on {}: {e:?}", sql, self.nodes[index].name));
        })
    }

    pub fn query(&self, index: usize, sql: &str) -> Vec<tokio_postgres::Row> {
        let conninfo = format!("{} sslmode=disable", self.conninfo(index));
        block_on(async {
            let (c, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("connect {}: {e}", self.nodes[index].name));
            tokio::spawn(conn);
            c.query(sql, &[])
                .await
                .unwrap_or_else(|e| panic!("{} on {}: {e:?}", sql, self.nodes[index].name))
        })
    }

    pub fn count(&self, index: usize, sql: &str) -> i64 {
        self.query(index, sql)[0].get(0)
    }

    /// `trips` with PostGIS and Citus on every node, the workers added.
    fn form(&self) {
        for (i, node) in self.nodes.iter().enumerate() {
            let admin = self.conninfo_of(node.port, "postgres");
            block_on(async {
                let (c, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
                    .await
                    .expect("connect");
                tokio::spawn(conn);
                c.batch_execute(&format!("CREATE DATABASE {DBNAME}"))
                    .await
                    .expect("create database");
            });
            self.batch(i, "CREATE EXTENSION citus; CREATE EXTENSION postgis;");
        }
        let c = self.nodes[0].port;
        self.batch(
            0,
            &format!("SELECT citus_set_coordinator_host('127.0.0.1', {c})"),
        );
        for node in &self.nodes[1..] {
            self.batch(
                0,
                &format!("SELECT citus_add_node('127.0.0.1', {})", node.port),
            );
        }
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .elapsed()
            .map_or(0, |d| d.as_nanos() as u64),
    );
    h.finish()
}

impl Drop for CitusCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            if let Some(mut child) = self.nodes[i].server.take() {
                unsafe { libc::kill(child.id() as i32, libc::SIGQUIT) };
                let _ = child.wait();
            }
        }
    }
}

// ---- what the Citus tests share: the binary, brute force, prepared transactions

pub fn tripload_cmd(cluster: &CitusCluster, dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tripload"));
    cmd.current_dir(dir)
        .env("DATABASE_URL", cluster.conninfo(0))
        .env_remove("TRIPLOAD_PG_DIR")
        .args(args);
    cmd
}

pub fn tripload(cluster: &CitusCluster, dir: &Path, args: &[&str]) -> Output {
    tripload_cmd(cluster, dir, args)
        .output()
        .expect("run tripload")
}

/// Prepared transactions left on any node (none after a commit or rollback).
pub fn prepared(cluster: &CitusCluster) -> i64 {
    (0..3)
        .map(|i| cluster.count(i, "SELECT count(*) FROM pg_prepared_xacts"))
        .sum()
}

pub type Weeks = Vec<(chrono::NaiveDate, i64)>;

pub fn weeks_from_csv(out: &Output) -> Weeks {
    assert_eq!(out.status.code(), Some(0), "{}", stderr(out));
    stdout(out)
        .lines()
        .skip(1)
        .map(|l| {
            let (d, n) = l.split_once(',').unwrap();
            (d.parse().unwrap(), n.parse().unwrap())
        })
        // Brute force lists only the weeks that have trips.
        .filter(|w: &(chrono::NaiveDate, i64)| w.1 > 0)
        .collect()
}

/// Brute force on the distributed trips: the weeks with a trip matching `cond`.
pub fn brute_weeks(cluster: &CitusCluster, cond: &str) -> Weeks {
    cluster
        .query(
            0,
            &format!(
                "SELECT date_trunc('week', t.datetime AT TIME ZONE 'UTC')::date, count(*)
                 FROM trips t JOIN regions r ON r.id = t.region_id
                 WHERE {cond} GROUP BY 1 ORDER BY 1"
            ),
        )
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

pub type GroupKey = (String, i64, i64, i64, i64, String);

/// `tripload groups --format csv`: key -> trips.
pub fn groups_from_cli(cluster: &CitusCluster, dir: &Path) -> BTreeMap<GroupKey, i64> {
    let out = tripload(
        cluster,
        dir,
        &["groups", "--format", "csv", "--top", "100000"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    stdout(&out)
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let key = (
                f[1].to_string(),
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
                f[4].parse().unwrap(),
                f[5].parse().unwrap(),
                f[6].to_string(),
            );
            (key, f[0].parse().unwrap())
        })
        .collect()
}

/// The same groups by brute force on the distributed trips (0.01° cells,
/// one-hour buckets: the defaults).
pub fn groups_brute(cluster: &CitusCluster) -> BTreeMap<GroupKey, i64> {
    cluster
        .query(
            0,
            "SELECT r.name, floor(ST_X(t.origin) / 0.01)::int8, floor(ST_Y(t.origin) / 0.01)::int8,
                    floor(ST_X(t.destination) / 0.01)::int8, floor(ST_Y(t.destination) / 0.01)::int8,
                    to_char(date_trunc('hour', t.datetime AT TIME ZONE 'UTC'), 'HH24:MI'), count(*)
             FROM trips t JOIN regions r ON r.id = t.region_id GROUP BY 1, 2, 3, 4, 5, 6",
        )
        .iter()
        .map(|r| {
            (
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)),
                r.get(6),
            )
        })
        .collect()
}

/// The shard of `trips` that holds `file_id`, and the node index of its
/// worker.
pub fn trips_shard_of(cluster: &CitusCluster, file_id: i32) -> (i64, usize) {
    let row = &cluster.query(
        0,
        &format!(
            "SELECT shardid, nodeport FROM citus_shards
             WHERE table_name = 'trips'::regclass
               AND shardid = get_shard_id_for_distribution_column('trips', {file_id})"
        ),
    )[0];
    let (shard, port): (i64, i32) = (row.get(0), row.get(1));
    let worker = (1..=2)
        .find(|&w| cluster.nodes[w].port as i32 == port)
        .expect("the shard's worker");
    (shard, worker)
}

/// A SHARE lock, held on its worker, on the shard of `trips` that holds a
/// `file_id`: that file's COPY waits for it there (its ledger row already
/// claimed on the coordinator), while attaching a new time partition does
/// not. Released when dropped (or when the worker stops).
pub struct HeldShard {
    pub shard: i64,
    /// The node index of the shard's worker, and of the other worker.
    pub worker: usize,
    pub other: usize,
    _client: tokio_postgres::Client,
    _rt: tokio::runtime::Runtime,
}

impl HeldShard {
    /// Takes the lock for `file_id`'s shard of `trips`.
    pub fn take(cluster: &CitusCluster, file_id: i32) -> HeldShard {
        let (shard, worker) = trips_shard_of(cluster, file_id);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let conninfo = format!("{} sslmode=disable", cluster.conninfo(worker));
        let client = rt.block_on(async {
            let (c, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
                .await
                .expect("connect to the worker");
            tokio::spawn(conn);
            c.batch_execute(&format!(
                "BEGIN; SET LOCAL citus.enable_manual_changes_to_shards = on;
                 LOCK TABLE trips_{shard} IN SHARE MODE"
            ))
            .await
            .expect("lock the shard");
            c
        });
        HeldShard {
            shard,
            worker,
            other: 3 - worker,
            _client: client,
            _rt: rt,
        }
    }

    /// Whether a session waits for the lock on the worker (the file's COPY).
    pub fn waited_for(&self, cluster: &CitusCluster) -> bool {
        let waiting = format!(
            "SELECT count(*) FROM pg_locks WHERE relation = 'trips_{}'::regclass AND NOT granted",
            self.shard
        );
        cluster.count(self.worker, &waiting) > 0
    }
}
