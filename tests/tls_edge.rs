//! The TLS listener's edge, against the spawned binary over real loopback sockets: a connection in
//! its handshake counts against `max_client_connections` and is evicted like an idle one, so a flood
//! of silent TLS connections cannot lock out a new HTTPS client; a handshake has its own deadline;
//! a timed-out or failed handshake is counted by close reason.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn closes(reason: &str) -> String {
    format!("botbridge_client_closes_total{{listener=\"chat\",reason=\"{reason}\"}}")
}

/// The value of one series once it reaches `want`, or whatever it is after 5 s.
async fn metric_reaches(proxy: &SpawnedProxy, series: &str, want: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = series_value(&scrape(proxy).await, series).unwrap_or(0.0);
        if v >= want || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Open file descriptors of a process.
fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Lowers a running process's open-file limit (what a hardened unit or container gives it).
fn limit_open_files(pid: u32, n: u64) {
    let limit = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: prlimit reads one `rlimit` through a valid pointer and writes nothing back (null).
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_silent_tls_connections_do_not_lock_out_a_new_https_client() {
    let answer = csml_answer(
        "r",
        &[json!({"content_type":"text","content":{"text":"in"}})],
    );
    let backend = CsmlBackend::start(Behaviour::Answer(answer)).await;
    let ca = Ca::new();
    // Every connection comes from 127.0.0.1: no per-address cap, so the connection cap alone holds.
    let config = tls_config(backend.addr, "max_connections_per_address = 0");
    let (proxy, _certs) = start_with_certificate(&config, &ca, &ca.leaf("leaf"));
    // An open-file limit the flood would run past (the cap, 4,096, fits it: 2 per connection).
    limit_open_files(proxy.pid(), 8_300);

    let mut silent = Vec::with_capacity(10_000);
    for _ in 0..100 {
        let batch = (0..100).map(|_| TcpStream::connect(("127.0.0.1", proxy.port)));
        for s in futures_util::future::join_all(batch).await {
            silent.push(s.expect("a TCP connection"));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let evicted = loop {
        let evicted = metric_reaches(&proxy, &closes("evicted"), 5_800.0).await;
        if evicted >= 5_800.0 || Instant::now() > deadline {
            break evicted;
        }
    };
    assert!(
        evicted >= 5_800.0,
        "handshakes past the cap were not evicted: {evicted}"
    );
    let files = open_files(proxy.pid());
    assert!(
        files < 4_096 + 200,
        "{files} descriptors open for a cap of 4,096"
    );

    let started = Instant::now();
    let mut client = tokio::time::timeout(Duration::from_secs(5), Client::connect(&ca, proxy.port))
        .await
        .expect("a handshake within 5 s, with 10,000 silent connections open");
    let (status, body) = client.chat("still here").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body[0]["bot_messages"], json!(["in"]));
    assert!(started.elapsed() < Duration::from_secs(5));
    let refused = r#"botbridge_client_connections_total{listener="chat",result="refused"}"#;
    assert_eq!(series_value(&scrape(&proxy).await, refused), Some(0.0));
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_has_its_own_deadline_and_a_failed_one_is_counted() {
    let backend = CsmlBackend::start(Behaviour::Answer(csml_answer("r", &[]))).await;
    let ca = Ca::new();
    let config = tls_config(backend.addr, "handshake_timeout_ms = 500");
    let (proxy, _certs) = start_with_certificate(&config, &ca, &ca.leaf("leaf"));

    // Silent: closed at the handshake deadline, well before the 10 s head deadline.
    let mut silent = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    let took = closed_within(&mut silent, Duration::from_secs(3)).await;
    assert!(took >= Duration::from_millis(400), "closed after {took:?}");
    let timeouts = metric_reaches(&proxy, &closes("tls_handshake_timeout"), 1.0).await;
    assert_eq!(timeouts, 1.0);

    // Plain HTTP on the TLS port: the handshake fails at once, and is counted.
    let mut plain = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    plain
        .write_all(b"GET /chat HTTP/1.1\r\nHost: proxy\r\n\r\n")
        .await
        .unwrap();
    closed_within(&mut plain, Duration::from_secs(2)).await;
    let failed = metric_reaches(&proxy, &closes("tls_handshake_failed"), 1.0).await;
    assert_eq!(failed, 1.0);

    // A real client after both is served.
    let mut client = Client::connect(&ca, proxy.port).await;
    assert_eq!(client.chat("hi").await.0, 200);
    assert_eq!(backend.count(), 1);
}
