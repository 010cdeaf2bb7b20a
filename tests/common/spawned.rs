//! The spawned harness: the real `botbridge` binary as a child process, for what only a process has
//! (log output, signals, reloading its file, surviving, its environment).
//!
//! The child must be told its ports by number, and the number must not be taken by the time it
//! binds. A port that "was free a moment ago" (bound to 0, then dropped) is from the kernel's
//! ephemeral range, which the kernel keeps handing out to every other test's outgoing connections and
//! port-0 listeners. So child ports come from outside that range ([`child_port`]):
//! - the range is read from `/proc/sys/net/ipv4/ip_local_port_range` (32768–60999 when unreadable):
//!   the 12768 ports below it (20000–32767 for the usual 32768 start; never below 1024), or the ports
//!   above it when there is no room below. The kernel assigns none of these on its own, and no
//!   in-process test binds them (those bind port 0);
//! - a process-wide atomic counter walks the range from an offset derived from the process id, so the
//!   tests of one binary never pick the same port twice and two test binaries running at once start
//!   far apart;
//! - each port is probed by binding it before use, and skipped if taken;
//! - if the child still finds a port taken (pingora logs that it "is in use" and keeps retrying for
//!   30 s, then exits), the whole start is retried at once on new ports; a child that exits for any
//!   other reason fails the test with its log;
//! - the child counts as started only once the listening sockets on its ports are its own (checked in
//!   `/proc`, where there is one), so a test never talks to another process by mistake.

use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{Urls, TEST_SECRETS};

/// How many times a start is tried on fresh ports before giving up.
const START_ATTEMPTS: usize = 5;

/// A running proxy process.
pub struct SpawnedProxy {
    child: Child,
    /// The config file the proxy runs on (rewrite it, then reload).
    pub config_path: std::path::PathBuf,
    pub port: u16,
    pub admin_port: u16,
    /// The demo bots' port (`{DEMO}`), whether the config uses it or not.
    pub demo_port: u16,
    pub log_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// The first and last port of the range child processes listen on (see the module docs).
fn child_port_range() -> (u32, u32) {
    static RANGE: OnceLock<(u32, u32)> = OnceLock::new();
    *RANGE.get_or_init(|| {
        let (lo, hi) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| {
                let mut it = s.split_whitespace().map(|n| n.parse::<u32>().ok());
                Some((it.next()??, it.next()??))
            })
            .unwrap_or((32768, 60999));
        const ENOUGH: u32 = 1000;
        let below = (lo.saturating_sub(12768).max(1024), lo.saturating_sub(1));
        let above = (hi + 1, 65535);
        if below.1 >= below.0 + ENOUGH {
            below
        } else if above.1 >= above.0 + ENOUGH {
            above
        } else {
            panic!("the ephemeral port range {lo}-{hi} leaves no room for fixed test ports")
        }
    })
}

/// A port for a child process: outside the ephemeral range, never handed out twice by this process,
/// and free when probed.
pub fn child_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (first, last) = child_port_range();
    let span = last - first + 1;
    let offset = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (first + (offset + n) % span) as u16;
        if StdListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {first}-{last}")
}

impl SpawnedProxy {
    /// Starts the proxy on `config` (with `{PORT}`, `{ADMIN}`, `{DEMO}` and `{DIR}` placeholders) and
    /// waits until its listeners answer.
    pub fn start(config: &str) -> SpawnedProxy {
        Self::start_with_env(config, &[])
    }

    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> SpawnedProxy {
        Self::start_inner(config, env, false)
    }

    /// Started with its stderr a pipe (taken with [`SpawnedProxy::take_stderr`]), not the log file.
    pub fn start_with_stderr_pipe(config: &str) -> SpawnedProxy {
        Self::start_inner(config, &[], true)
    }

    /// The read end of the pipe of [`SpawnedProxy::start_with_stderr_pipe`].
    pub fn take_stderr(&mut self) -> std::process::ChildStderr {
        self.child
            .stderr
            .take()
            .expect("started with a stderr pipe")
    }

    fn start_inner(config: &str, env: &[(&str, &str)], pipe: bool) -> SpawnedProxy {
        for _ in 0..START_ATTEMPTS {
            if let Some(proxy) = Self::try_start(config, env, pipe) {
                return proxy;
            }
        }
        panic!("the proxy could not bind its ports in {START_ATTEMPTS} attempts")
    }

    /// One start on fresh ports; `None` if one of them turned out to be taken.
    fn try_start(config: &str, env: &[(&str, &str)], pipe: bool) -> Option<SpawnedProxy> {
        let dir = tempfile::tempdir().unwrap();
        let (port, admin_port, demo_port) = (child_port(), child_port(), child_port());
        let path = dir.path().join("proxy.toml");
        let text = fill(
            config,
            port,
            admin_port,
            demo_port,
            &dir.path().display().to_string(),
        );
        std::fs::write(&path, text).unwrap();
        let log_path = dir.path().join("proxy.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_botbridge"));
        cmd.arg("--config")
            .arg(&path)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(if pipe { Stdio::piped() } else { log.into() });
        for (k, v) in TEST_SECRETS.iter().chain(env) {
            cmd.env(k, v);
        }
        let mut proxy = SpawnedProxy {
            child: cmd.spawn().expect("start botbridge"),
            config_path: path,
            port,
            admin_port,
            demo_port,
            log_path,
            _dir: dir,
        };
        let uses_demo = config.contains("{DEMO}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // pingora retries a port in use (for 30 s), logging so; then it gives up.
            let logs = proxy.logs();
            if logs.contains("is in use") || logs.contains("Address already in use") {
                return None;
            }
            if let Some(status) = proxy.child.try_wait().unwrap() {
                panic!("the proxy exited ({status}) while starting:\n{logs}");
            }
            let pid = proxy.child.id();
            let answers = |p: u16| {
                owns_listener(pid, p) != Some(false)
                    && std::net::TcpStream::connect(("127.0.0.1", p)).is_ok()
            };
            if answers(admin_port) && answers(port) && (!uses_demo || answers(demo_port)) {
                return Some(proxy);
            }
            assert!(Instant::now() < deadline, "proxy did not start:\n{logs}");
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Rewrites the config file (same placeholders as [`SpawnedProxy::start`], same ports and folder).
    pub fn rewrite_config(&self, config: &str) {
        let dir = self.config_path.parent().unwrap().display().to_string();
        let text = fill(config, self.port, self.admin_port, self.demo_port, &dir);
        std::fs::write(&self.config_path, text).unwrap();
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal to the process (`kill -SIG pid`).
    pub fn signal(&self, sig: &str) {
        self.signal_pid(self.child.id(), sig);
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// A graceful upgrade: starts a new process on the same config with `-u` (it waits on
    /// `upgrade_sock`), sends this one SIGQUIT so it hands over its listening sockets, and waits
    /// until the new one answers on them. `self` then is the new process; the old one (draining, it
    /// exits after its grace period) is returned with the path of its log.
    pub fn upgrade(&mut self) -> (Child, std::path::PathBuf) {
        let n = std::fs::read_dir(self.config_path.parent().unwrap()).map_or(0, |d| d.count());
        let log_path = (self.config_path.parent().unwrap()).join(format!("proxy-{n}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_botbridge"));
        cmd.arg("--config")
            .arg(&self.config_path)
            .arg("--upgrade")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in TEST_SECRETS {
            cmd.env(k, v);
        }
        let new = cmd.spawn().expect("start the upgraded botbridge");
        let old = std::mem::replace(&mut self.child, new);
        let old_log = std::mem::replace(&mut self.log_path, log_path);
        // The new process must be waiting on the upgrade socket before the old one sends to it.
        std::thread::sleep(Duration::from_millis(500));
        self.signal_pid(old.id(), "QUIT");
        let deadline = Instant::now() + Duration::from_secs(20);
        let pid = self.child.id();
        while owns_listener(pid, self.port) == Some(false)
            || std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err()
        {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the upgraded proxy exited ({status}):\n{}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "the upgraded proxy did not take over:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        (old, old_log)
    }

    fn signal_pid(&self, pid: u32, sig: &str) {
        let ok = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {pid}");
    }
}

/// Whether process `pid` holds a socket listening on `port` (its descriptors matched against the
/// kernel's TCP table), so a listener that is not the child's is never taken for it; `None` where
/// `/proc` cannot tell (then the harness only checks that the port answers).
fn owns_listener(pid: u32, port: u16) -> Option<bool> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let listening: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = u16::from_str_radix(f.get(1)?.rsplit_once(':')?.1, 16).ok()?;
            // State 0A: LISTEN.
            let inode = f.get(9)?;
            (local_port == port && *f.get(3)? == "0A").then(|| format!("socket:[{inode}]"))
        })
        .collect();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| listening.iter().any(|s| target.as_os_str() == s.as_str()))
    }))
}

/// The config text with its placeholders filled in.
fn fill(config: &str, port: u16, admin: u16, demo: u16, dir: &str) -> String {
    config
        .replace("{PORT}", &port.to_string())
        .replace("{ADMIN}", &admin.to_string())
        .replace("{DEMO}", &demo.to_string())
        .replace("{DIR}", dir)
}

impl Urls for SpawnedProxy {
    fn chat_port(&self) -> u16 {
        self.port
    }
    fn admin_port(&self) -> u16 {
        self.admin_port
    }
}

impl Drop for SpawnedProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
