//! A backend behind a DNS name whose answers change, end to end: a real dnsmasq on loopback serves a
//! hosts file the test rewrites, the proxy's `[dns] servers` points at it, and two test bots listen
//! on 127.0.0.2 and 127.0.0.3 at the same port. The proxy follows the name within `dns_refresh_s`,
//! uses every address it has, and keeps the last addresses when it stops resolving.
//!
//! Needs dnsmasq (Debian: `apt-get install dnsmasq-base`); without it the test says so and passes.

mod common;
mod pool_bot;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use botbridge::config::dns::DnsSettings;
use botbridge::pool::dns::Resolver;
use common::{config_with, SpawnedProxy as Proxy, Urls};
use pool_bot::{answered_by, haptik, metric, route, Bot};

const NAME: &str = "bot.pool.test";

/// One dnsmasq at a time: two started together would try the same ports, and one could take the
/// other's server (which answers for the same name) for its own.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// dnsmasq answering from a hosts file, on 127.0.0.1 at a port below 32768.
struct Dnsmasq {
    child: Child,
    addr: SocketAddr,
    hosts: PathBuf,
    _dir: tempfile::TempDir,
}

impl Dnsmasq {
    /// Starts it on the first free port it finds, serving `hosts`; `None` if it is not installed.
    async fn start(hosts: &str) -> Option<Dnsmasq> {
        // In PATH, or in /usr/sbin, which a user's PATH may lack.
        let bin = ["dnsmasq", "/usr/sbin/dnsmasq"].into_iter().find(|b| {
            let run = Command::new(b)
                .arg("--version")
                .stdout(Stdio::null())
                .status();
            run.is_ok_and(|s| s.success())
        })?;
        let dir = tempfile::tempdir().unwrap();
        // dnsmasq may read the file as an unprivileged user.
        set_mode(dir.path(), 0o755);
        let path = dir.path().join("hosts");
        std::fs::write(&path, hosts).unwrap();
        set_mode(&path, 0o644);
        let first = 20_000 + (std::process::id() as u16 % 10_000);
        for port in (first..32_000).step_by(7).take(20) {
            let child = Command::new(bin)
                .args([
                    "--keep-in-foreground",
                    "--bind-interfaces",
                    "--listen-address=127.0.0.1",
                ])
                .args([
                    "--no-resolv",
                    "--no-hosts",
                    "--conf-file=/dev/null",
                    "--pid-file=",
                ])
                .arg(format!("--port={port}"))
                .arg(format!("--addn-hosts={}", path.display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut child = child;
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            if answers(&mut child, addr).await {
                return Some(Dnsmasq {
                    child,
                    addr,
                    hosts: path,
                    _dir: dir,
                });
            }
            // The port was taken (dnsmasq exits): try another.
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("dnsmasq did not start on any port tried");
    }

    /// Rewrites the hosts file and has dnsmasq read it again (SIGHUP).
    fn set_hosts(&self, text: &str) {
        std::fs::write(&self.hosts, text).unwrap();
        let ok = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the dnsmasq at `addr` runs and answers for the name.
async fn answers(child: &mut Child, addr: SocketAddr) -> bool {
    let settings = DnsSettings {
        servers: vec![addr],
        timeout: Duration::from_millis(300),
    };
    let resolver = Resolver::new(&settings).unwrap();
    for _ in 0..20 {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if resolver.resolve(NAME, 1).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Two bots at the same port on 127.0.0.2 and 127.0.0.3.
async fn two_bots() -> (Bot, Bot) {
    loop {
        let a = Bot::start_on("a", "127.0.0.2:0".parse().unwrap()).await;
        let b_addr = SocketAddr::from(([127, 0, 0, 3], a.addr.port()));
        if tokio::net::TcpListener::bind(b_addr).await.is_ok() {
            return (a, Bot::start_on("b", b_addr).await);
        }
    }
}

/// A Rasa backend at `http://{name}:{port}`, resolved by `dns`, on `/chat`.
fn named_config(dns: &Dnsmasq, name: &str, port: u16, refresh_s: u64) -> String {
    config_with(&format!(
        r#"
[dns]
servers = ["{}"]
timeout_ms = 500
[[backends]]
name = "named"
dialect = "rasa"
url = "http://{name}:{port}/webhooks/rest/webhook"
dns_refresh_s = {refresh_s}
{}"#,
        dns.addr,
        route("chat", "/chat", "named", "")
    ))
}

/// Sends requests until one is answered by `bot`; returns how long that took.
async fn until_answered_by(proxy: &Proxy, bot: &str, limit: Duration) -> Duration {
    let (client, started) = (reqwest::Client::new(), Instant::now());
    loop {
        let (status, answer) = haptik(&client, &proxy.url("/chat"), "u", "m").await;
        assert_eq!(status, 200, "{answer}");
        if answered_by(&answer).as_deref() == Some(bot) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{bot} never answered within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_whose_answers_change_is_followed_and_one_that_stops_resolving_keeps_its_addresses()
{
    let _serial = ONE_AT_A_TIME.lock().await;
    let Some(dns) = Dnsmasq::start(&format!("127.0.0.2 {NAME}\n")).await else {
        common::skip_for_missing("dnsmasq is not installed (apt-get install dnsmasq-base)");
        return;
    };
    let (a, b) = two_bots().await;
    let port = a.addr.port();
    let proxy = Proxy::start(&named_config(&dns, NAME, port, 1));
    let client = reqwest::Client::new();
    for _ in 0..5 {
        let (status, answer) = haptik(&client, &proxy.url("/chat"), "u", "m").await;
        assert_eq!((status, answered_by(&answer).as_deref()), (200, Some("a")));
    }

    // The name moves: followed within dns_refresh_s (1 s), plus a keeper tick and slack.
    dns.set_hosts(&format!("127.0.0.3 {NAME}\n"));
    let moved = until_answered_by(&proxy, "b", Duration::from_secs(5)).await;
    println!("dns: the moved name was followed after {moved:?} (dns_refresh_s = 1)");
    let before = a.count();
    for _ in 0..10 {
        let (_, answer) = haptik(&client, &proxy.url("/chat"), "u", "m").await;
        assert_eq!(answered_by(&answer).as_deref(), Some("b"));
    }
    assert_eq!(a.count(), before, "the old address gets nothing any more");
    assert!(b.count() >= 10);

    // Two addresses: both are endpoints.
    dns.set_hosts(&format!("127.0.0.2 {NAME}\n127.0.0.3 {NAME}\n"));
    until_answered_by(&proxy, "a", Duration::from_secs(5)).await;
    until_answered_by(&proxy, "b", Duration::from_secs(5)).await;

    // The name stops resolving: its last addresses stay, and the failures are counted.
    dns.set_hosts("");
    let admin = proxy.admin_url("");
    let errors = r#"botbridge_backend_dns_resolutions_total{backend="named",result="error"}"#;
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&admin, errors).await < 2.0 {
        assert!(
            Instant::now() < deadline,
            "failed resolutions were not counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    until_answered_by(&proxy, "a", Duration::from_secs(2)).await;
    until_answered_by(&proxy, "b", Duration::from_secs(2)).await;
}

/// Loading a configuration does no DNS: a bot whose name does not resolve yet does not stop the
/// proxy from starting. Its requests get a 503 with `Retry-After` (no endpoint), and once the name
/// resolves it is found within a second or two, long before `dns_refresh_s`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_does_not_resolve_yet_starts_the_proxy_and_is_found_once_it_does() {
    const LATER: &str = "later.pool.test";
    let _serial = ONE_AT_A_TIME.lock().await;
    let Some(dns) = Dnsmasq::start(&format!("127.0.0.2 {NAME}\n")).await else {
        common::skip_for_missing("dnsmasq is not installed (apt-get install dnsmasq-base)");
        return;
    };
    let (a, _b) = two_bots().await;
    let port = a.addr.port();
    let proxy = Proxy::start(&named_config(&dns, LATER, port, 3600));
    let client = reqwest::Client::new();
    let (status, answer) = haptik(&client, &proxy.url("/chat"), "u", "m").await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(a.count(), 0);

    dns.set_hosts(&format!("127.0.0.2 {NAME}\n127.0.0.2 {LATER}\n"));
    let started = Instant::now();
    loop {
        let (status, answer) = haptik(&client, &proxy.url("/chat"), "u", "m").await;
        if status == 200 {
            assert_eq!(answered_by(&answer).as_deref(), Some("a"));
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the name was not found again: {status} {answer}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "dns: a name that resolved late was found after {:?}",
        started.elapsed()
    );
}
