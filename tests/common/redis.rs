//! A real Redis for the tests: Debian's `redis-server` (`.ci/run` installs it) as a child process on a
//! free loopback port below 32768 (from [`child_port`], like the spawned proxies' ports), with
//! persistence off, stopped when dropped. Tests can stop it and start it again on the same port.
//!
//! Test files include it with `#[path = "common/redis.rs"] mod redis_server;` next to `mod common;`.
#![allow(dead_code)] // each test file uses some of these helpers

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::child_port;

/// A running `redis-server`.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers `PING`.
    pub fn start() -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..5 {
            let port = child_port();
            if let Some(child) = spawn(port, &dir) {
                return RedisServer {
                    child: Some(child),
                    port,
                    dir,
                };
            }
        }
        panic!("redis-server could not start on a free port in 5 attempts")
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server (as a crash would: no shutdown handshake) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port (empty: persistence is off).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(child) = spawn(self.port, &self.dir) {
                self.child = Some(child);
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not restart on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends one command (its words as given) and returns the raw RESP answer.
    pub fn command(&self, words: &[&str]) -> String {
        command(self.port, words).expect("redis answers")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `redis-server` on `port`; `None` if it exited (the port was taken meanwhile).
fn spawn(port: u16, dir: &tempfile::TempDir) -> Option<Child> {
    let log = std::fs::File::create(dir.path().join(format!("redis-{port}.log"))).unwrap();
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run redis-server ({e}): install it, e.g. apt-get install redis-server")
        });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if command(port, &["PING"]).is_some_and(|a| a.starts_with("+PONG")) {
            return Some(child);
        }
        if child.try_wait().unwrap().is_some() {
            return None;
        }
        assert!(
            Instant::now() < deadline,
            "redis-server did not answer on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `redis-server` started with arguments of the test's own (a cluster node, a replica, a
/// Sentinel: its config file and `--sentinel`) on a port chosen here, killed when dropped.
pub struct RedisChild {
    child: Child,
    pub port: u16,
}

impl Drop for RedisChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `redis-server` with `args` (then `--port`, `--bind 127.0.0.1` and `--dir dir`), logging to
/// `<dir>/<name>.log`, and waits until it answers PING.
pub fn start_with(dir: &std::path::Path, name: &str, args: &[String]) -> RedisChild {
    let port = child_port();
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let child = Command::new("redis-server")
        .args(args)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("redis-server (apt-get install redis-server)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !command(port, &["PING"]).is_some_and(|a| a.starts_with("+PONG")) {
        assert!(Instant::now() < deadline, "{name} did not answer");
        std::thread::sleep(Duration::from_millis(20));
    }
    RedisChild { child, port }
}

/// One command over a fresh connection; `None` if nothing answers.
pub fn command(port: u16, words: &[&str]) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut out = format!("*{}\r\n", words.len());
    for w in words {
        out.push_str(&format!("${}\r\n{w}\r\n", w.len()));
    }
    s.write_all(out.as_bytes()).ok()?;
    let mut buf = vec![0u8; 65536];
    let n = s.read(&mut buf).ok()?;
    (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned())
}
