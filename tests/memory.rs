//! What the process gives back, against the spawned binary: memory freed after a burst of requests
//! is returned to the system within seconds while the connections that sent them stay open and
//! keep serving (`src/memory.rs`, each worker thread's tidying, which is mimalloc's); a reload
//! gives back the configuration it replaced; a backend of its own costs what its pool needs, once.
#![cfg(feature = "mimalloc")]

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connections in the burst: under the per-address cap (512) of the shipped config.
const CONNECTIONS: usize = 400;

/// A figure of the process's `/proc/PID/status`, KiB: `VmRSS` (resident now) or `VmHWM` (its
/// peak since the last [`reset_peak`]).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// Makes the process's peak resident memory its current one.
fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
}

/// The shipped demo route's Haptik request, whole.
fn request() -> Vec<u8> {
    let body = haptik_body("burst-user", "Hello", 343);
    format!(
        "POST /chat HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\n\
         Authorization: Bearer demo-token\r\nclient-id: demo-client\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Reads one answer (head and `Content-Length` body); its status.
async fn answer(c: &mut TcpStream) -> u16 {
    let mut got = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(30), c.read(&mut buf))
            .await
            .expect("an answer within 30 s")
            .unwrap();
        assert!(n > 0, "the connection closed");
        got.extend_from_slice(&buf[..n]);
        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
        let length: usize = (head.lines())
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        if got.len() >= end + 4 + length {
            return head[9..12].parse().unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_freed_after_a_burst_goes_back_while_its_connections_stay_open() {
    let proxy = SpawnedProxy::start(&shipped_config());
    // One request on each, one connection after another: what a connection keeps after serving is
    // counted before the burst.
    let mut conns = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let mut c = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
        c.write_all(&request()).await.unwrap();
        assert_eq!(answer(&mut c).await, 200);
        conns.push(c);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rss_kib(proxy.pid());
    reset_peak(proxy.pid());
    // All at once: every request in flight together.
    for c in &mut conns {
        c.write_all(&request()).await.unwrap();
    }
    for c in &mut conns {
        assert_eq!(answer(c).await, 200);
    }
    // The peak while the burst was served (the tidying may already have run once it ends).
    let peak = status_kib(proxy.pid(), "VmHWM:");
    assert!(
        peak > before + 2048,
        "the burst should take memory: {before} KiB before, {peak} KiB after"
    );
    // Within a few seconds a good part of what the burst took is back with the system, though every
    // connection is still open (and the pool's connections to the demo bot, on both sides, keep
    // theirs): a release build returns nearly all of it, a debug build about half. Without the
    // tidying, none.
    let back = |now: u64| now <= peak - (peak - before) / 3;
    let started = Instant::now();
    let mut now = peak;
    while !back(now) && started.elapsed() < Duration::from_secs(6) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        now = rss_kib(proxy.pid());
    }
    assert!(
        back(now),
        "{before} KiB before the burst, {peak} KiB after it, still {now} KiB after {:?}",
        started.elapsed()
    );
    // And the connections still serve.
    for c in conns.iter_mut().take(20) {
        c.write_all(&request()).await.unwrap();
        assert_eq!(answer(c).await, 200);
    }
}

/// The shipped config with `n` more Haptik credentials: memory enough that keeping a second copy
/// of the configuration shows in the process's resident size.
fn config_with_credentials(n: usize) -> String {
    let mut config = shipped_config();
    for i in 0..n {
        config.push_str(&format!(
            "\n[[clients.haptik]]\nname = \"tenant-{i}\"\nclient_id = \"tenant-client-{i}\"\ntoken = \"tenant-token-{i:08}\"\n"
        ));
    }
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_gives_back_the_configuration_it_replaced() {
    let proxy = SpawnedProxy::start(&config_with_credentials(60_000));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let start = rss_kib(proxy.pid());
    let reload = || async {
        let r = reqwest::Client::new()
            .post(proxy.admin_url("/reload"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    };
    reload().await;
    reload().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(proxy.pid());
    // With the replaced configuration kept alive (two held at once) this was 1.44x in a debug
    // build; without, 1.20x: the history's compressed text and secret hashes, and the allocator's
    // slack. The line is between the two.
    assert!(
        after * 3 < start * 4,
        "{start} KiB at start, {after} KiB after two reloads of the same 60,000 credentials"
    );
    // The reloaded configuration serves.
    let (status, _) = send(
        &proxy,
        "/chat",
        &[
            ("Authorization", "Bearer tenant-token-00000007".to_string()),
            ("client-id", "tenant-client-7".to_string()),
        ],
        &haptik_body("u", "Hello", 343),
    )
    .await;
    assert_eq!(status, 200);
}

/// The shipped config with `routes` more Haptik routes to CSML bots: each with a backend of its own,
/// or all sharing one. No request ever reaches these bots.
fn config_with_routes(routes: usize, own_backends: bool) -> String {
    let mut config = shipped_config();
    let backends = if own_backends { routes } else { 1 };
    for i in 0..backends {
        config.push_str(&format!(
            "\n[[backends]]\nname = \"scale-bot-{i}\"\ndialect = \"csml\"\nurl = \"http://127.0.0.1:9/api/chat\"\n\
             auth = \"signed\"\napi_key = \"key-{i}\"\napi_secret = \"secret-{i}\"\n"
        ));
    }
    for i in 0..routes {
        config.push_str(&format!(
            "\n[[routes]]\nname = \"scale-{i}\"\npath = \"/scale/{i}/chat\"\ningress = \"haptik\"\n\
             backend = \"scale-bot-{}\"\n",
            i % backends
        ));
    }
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_of_its_own_costs_under_five_kilobytes() {
    const ROUTES: u64 = 8_000;
    let resident = |own| async move {
        let proxy = SpawnedProxy::start(&config_with_routes(ROUTES as usize, own));
        tokio::time::sleep(Duration::from_secs(2)).await;
        rss_kib(proxy.pid())
    };
    let shared = resident(false).await;
    let own = resident(true).await;
    // Each backend held its URL three times over (its settings, its pool's URL list, its member),
    // a copy of its pool settings, an idle breaker window, an empty balancer and a series that could
    // never count: 6,190 bytes a backend in a debug build, 3,950 without them. The line is between.
    assert!(
        own > shared,
        "{own} KiB with a backend each, {shared} KiB sharing one"
    );
    let per_backend = (own - shared) * 1024 / ROUTES;
    assert!(
        per_backend < 5_000,
        "{per_backend} bytes a backend: {shared} KiB with {ROUTES} routes sharing one, {own} KiB with a backend each"
    );
}
