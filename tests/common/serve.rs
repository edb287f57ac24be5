//! A running `tripload serve` (the real binary) on a free loopback port,
//! for the tests that talk to it over HTTP or from a browser.

use super::{tripload_cmd, TestDb, Work};
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A running `tripload serve` (killed when dropped).
pub struct Server {
    pub child: Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the server on a free loopback port with `extra` arguments and
/// waits until it listens (it prints its address on stderr).
pub fn serve_with(w: &Work, db: &TestDb, extra: &[&str], env: &[(&str, &str)]) -> Server {
    let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--landing", "landing"];
    args.extend_from_slice(extra);
    let mut cmd = tripload_cmd(w, db, &args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    spawn_listening(cmd, "")
}

/// Spawns a command that serves and waits until it has said that it
/// listens, and said `also` (after or before that).
pub fn spawn_listening(mut cmd: std::process::Command, also: &str) -> Server {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tripload serve");
    let err = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut said: Vec<String> = Vec::new();
    let mut base = None;
    loop {
        if let Some(base) = base
            .as_ref()
            .filter(|_| said.iter().any(|l| l.contains(also)))
        {
            return Server {
                child,
                base: format!("http://{base}"),
            };
        }
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| {
                panic!(
                    "server did not start: {:?}\n{}",
                    child.try_wait(),
                    said.join("\n")
                )
            });
        if let Some(rest) = line.split("listening on http://").nth(1) {
            base = Some(rest.split('/').next().unwrap_or_default().to_string());
        }
        said.push(line);
    }
}

pub fn serve(w: &Work, db: &TestDb) -> Server {
    serve_with(w, db, &[], &[])
}
