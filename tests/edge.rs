//! The client side of the chat listener, over real loopback sockets against the spawned binary:
//! deadlines for the head, the body, the idle keep-alive wait and the answer; head size and header
//! count limits; the connection cap (idle connections make room, busy ones do not); every refusal
//! answered with its status; a refused large body answered rather than reset; and the metrics that
//! count each of them.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A config with one auto route (`/chat`, Haptik or CSML callers) and these `[server]` keys. Its
/// backend is never reached.
fn edge_config(server_keys: &str) -> String {
    let backend = csml_backend_toml("bot", "127.0.0.1:9".parse().unwrap(), "");
    let route =
        "\n[[routes]]\nname = \"chat\"\npath = \"/chat\"\ningress = \"auto\"\nbackend = \"bot\"\n";
    config_with(&format!("{backend}{route}")).replacen(
        "[server]\n",
        &format!("[server]\n{server_keys}\n"),
        1,
    )
}

async fn connect(proxy: &SpawnedProxy) -> TcpStream {
    TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap()
}

/// A Haptik request head (valid credentials) announcing a body of `length` bytes.
fn haptik_head(length: usize) -> String {
    format!(
        "POST /chat HTTP/1.1\r\nHost: proxy\r\nContent-Type: application/json\r\n\
         Authorization: Bearer acme-token\r\nclient-id: acme-client\r\nContent-Length: {length}\r\n\r\n"
    )
}

const NOT_FOUND: &[u8] = b"GET /nowhere HTTP/1.1\r\nHost: proxy\r\n\r\n";

/// One answer read off the connection (within 10 s): status and JSON body (by its
/// `Content-Length`).
async fn read_answer(s: &mut TcpStream) -> (u16, Value) {
    let limit = Duration::from_secs(10);
    (tokio::time::timeout(limit, read_answer_now(s)).await).expect("an answer within 10 s")
}

async fn read_answer_now(s: &mut TcpStream) -> (u16, Value) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + length {
                let status = head[9..12].parse().unwrap();
                let body = &buf[end + 4..end + 4 + length];
                return (status, serde_json::from_slice(body).unwrap_or(Value::Null));
            }
        }
        let n = s.read(&mut chunk).await.expect("the answer, not a reset");
        assert!(
            n > 0,
            "closed before a whole answer: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Sends `bytes` one at a time, `every` apart, while watching for an answer or a close; returns
/// what the proxy sent (possibly nothing) and when the connection ended, from the first byte.
async fn drip(s: &mut TcpStream, bytes: &[u8], every: Duration) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    for b in bytes.iter().cycle() {
        let _ = s.write_all(&[*b]).await;
        match tokio::time::timeout(every, s.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) => return (got, started.elapsed()),
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
            Err(_) => {}
        }
        assert!(started.elapsed() < Duration::from_secs(10), "still open");
    }
    unreachable!()
}

/// The value of one series on the admin listener's `/metrics`, 0 when absent.
async fn metric(proxy: &SpawnedProxy, series: &str) -> f64 {
    series_value(&scrape(proxy).await, series).unwrap_or(0.0)
}

/// The value of one series once it reaches `want` (a close is counted as its connection task ends,
/// just after the client sees the close), or whatever it is after 3 s.
async fn metric_reaches(proxy: &SpawnedProxy, series: &str, want: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let v = metric(proxy, series).await;
        if v == want || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn closes(reason: &str) -> String {
    format!("botbridge_client_closes_total{{listener=\"chat\",reason=\"{reason}\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_after_every_answer() {
    let proxy = SpawnedProxy::start(&edge_config("keepalive_timeout_ms = 1000"));
    let mut s = connect(&proxy).await;
    s.write_all(NOT_FOUND).await.unwrap();
    assert_eq!(read_answer(&mut s).await.0, 404);
    // Half the idle time later the connection still serves, and the idle time starts again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.write_all(NOT_FOUND).await.unwrap();
    assert_eq!(read_answer(&mut s).await.0, 404);
    let idle = closed_within(&mut s, Duration::from_secs(5)).await;
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(2),
        "closed after {idle:?} idle"
    );
    assert_eq!(
        metric_reaches(&proxy, &closes("idle_timeout"), 1.0).await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dripped_head_is_cut_at_the_head_deadline_with_408() {
    let proxy = SpawnedProxy::start(&edge_config("header_timeout_ms = 1000"));
    let mut s = connect(&proxy).await;
    let head = b"POST /chat HTTP/1.1\r\nHost: proxy\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let (got, took) = drip(&mut s, head, Duration::from_millis(100)).await;
    assert!(took < Duration::from_secs(2), "cut after {took:?}");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains(r#""statusCode":408"#), "{text}");
    assert_eq!(
        metric_reaches(&proxy, &closes("header_timeout"), 1.0).await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dripped_body_gets_408_at_the_body_deadline() {
    let proxy = SpawnedProxy::start(&edge_config("body_timeout_ms = 1000"));
    let mut s = connect(&proxy).await;
    s.write_all(haptik_head(1000).as_bytes()).await.unwrap();
    let (got, took) = drip(&mut s, b"{\"user\": ", Duration::from_millis(100)).await;
    assert!(took < Duration::from_secs(2), "cut after {took:?}");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    // The caller's own dialect: a Haptik error.
    assert!(text.contains(r#"{"error_message":"#), "{text}");
    assert_eq!(
        metric_reaches(&proxy, &closes("body_timeout"), 1.0).await,
        1.0
    );
    let errors = r#"botbridge_request_errors_total{reason="request_timeout",route="chat"}"#;
    assert_eq!(metric(&proxy, errors).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_answers_is_closed_at_the_write_deadline() {
    let proxy = SpawnedProxy::start(&edge_config("write_timeout_ms = 1000"));
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let s = socket
        .connect(format!("127.0.0.1:{}", proxy.port).parse().unwrap())
        .await
        .unwrap();
    let (_unread, mut w) = s.into_split();
    let batch = NOT_FOUND.repeat(100);
    let started = Instant::now();
    // Pipelined requests, answers never read: the proxy's writes fill both buffers and wait.
    let closed = tokio::time::timeout(Duration::from_secs(60), async {
        while w.write_all(&batch).await.is_ok() {}
    })
    .await;
    assert!(closed.is_ok(), "still open after {:?}", started.elapsed());
    assert_eq!(
        metric_reaches(&proxy, &closes("write_timeout"), 1.0).await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_connections_does_not_lock_out_a_new_client() {
    let proxy = SpawnedProxy::start(&edge_config("max_client_connections = 20"));
    // 30 clients, each idle after one request: the oldest make room for the newest.
    let mut flood = Vec::new();
    for _ in 0..30 {
        let mut s = connect(&proxy).await;
        s.write_all(NOT_FOUND).await.unwrap();
        assert_eq!(read_answer(&mut s).await.0, 404);
        flood.push(s);
    }
    let mut client = connect(&proxy).await;
    client.write_all(NOT_FOUND).await.unwrap();
    assert_eq!(read_answer(&mut client).await.0, 404);
    // The oldest ones were closed to make room; the newest are still open.
    closed_within(&mut flood[0], Duration::from_secs(1)).await;
    closed_within(&mut flood[10], Duration::from_secs(1)).await;
    flood[29].write_all(NOT_FOUND).await.unwrap();
    assert_eq!(read_answer(&mut flood[29]).await.0, 404);
    assert_eq!(metric_reaches(&proxy, &closes("evicted"), 11.0).await, 11.0);
    let open = r#"botbridge_client_connections{listener="chat"}"#;
    assert!(metric(&proxy, open).await <= 20.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_with_every_connection_busy_a_new_one_is_refused_at_once() {
    let proxy = SpawnedProxy::start(&edge_config("max_client_connections = 4"));
    // Four requests in flight, each waiting for the rest of its body.
    let mut busy = Vec::new();
    for _ in 0..4 {
        let mut s = connect(&proxy).await;
        s.write_all(format!("{}{{", haptik_head(100)).as_bytes())
            .await
            .unwrap();
        busy.push(s);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&proxy, "botbridge_in_flight_requests").await < 4.0 {
        assert!(Instant::now() < deadline, "requests not in flight");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    let mut s = connect(&proxy).await;
    let (status, body) = read_answer(&mut s).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["statusCode"], 503);
    assert!(started.elapsed() < Duration::from_secs(1));
    let refused = r#"botbridge_client_connections_total{listener="chat",result="refused"}"#;
    assert_eq!(metric(&proxy, refused).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refused_head_is_answered_with_its_status() {
    let proxy = SpawnedProxy::start(&edge_config(""));
    let csml = "x-api-key: csml-plain-key\r\nContent-Type: application/json\r\n";
    let haptik = "Authorization: Bearer acme-token\r\nclient-id: acme-client\r\n";
    let many = |n: usize| (0..n).map(|i| format!("X-H{i}: v\r\n")).collect::<String>();
    // (the rest of the head, the status, a field the answer has, one it must not have)
    let cases = [
        (
            format!("{csml}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello"),
            400,
            "statusCode", // a CSML caller: CSML's error shape
            Some("error_message"),
        ),
        (
            format!("{haptik}Transfer-Encoding: gzip\r\n\r\nhello"),
            400,
            "error_message", // a Haptik caller: Haptik's
            Some("statusCode"),
        ),
        // No dialect told: readable by every dialect.
        (
            format!("X-Big: {}\r\n\r\n", "b".repeat(20_000)),
            431,
            "error_message",
            None,
        ),
        (format!("{}\r\n", many(150)), 431, "statusCode", None),
        (format!("{}\r\n", many(300)), 431, "statusCode", None),
    ];
    for (rest, want, has, lacks) in cases {
        let mut s = connect(&proxy).await;
        let request = format!("POST /chat HTTP/1.1\r\nHost: proxy\r\n{rest}");
        s.write_all(request.as_bytes()).await.unwrap();
        let (status, body) = read_answer(&mut s).await;
        assert_eq!(status, want, "{}: {body}", &request[..80]);
        assert!(body.get(has).is_some(), "{body}");
        assert!(lacks.is_none_or(|f| body.get(f).is_none()), "{body}");
        closed_within(&mut s, Duration::from_secs(2)).await;
    }
    assert_eq!(
        metric_reaches(&proxy, &closes("bad_framing"), 2.0).await,
        2.0
    );
    assert_eq!(
        metric_reaches(&proxy, &closes("header_too_large"), 1.0).await,
        1.0
    );
    assert_eq!(
        metric_reaches(&proxy, &closes("too_many_headers"), 2.0).await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_8_mib_body_is_answered_not_reset() {
    let proxy = SpawnedProxy::start(&edge_config(""));
    let body = vec![b'x'; 8 * 1024 * 1024];
    let wrong_token = haptik_head(body.len()).replace("acme-token", "wrong-token");
    // Over max_body_bytes (413), and a caller refused before its body is read (401).
    for (head, want) in [(haptik_head(body.len()), 413), (wrong_token, 401)] {
        let mut s = connect(&proxy).await;
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&body)
            .await
            .expect("the whole body sent, no reset");
        let (status, answer) = read_answer(&mut s).await;
        assert_eq!(status, want, "{answer}");
        closed_within(&mut s, Duration::from_secs(2)).await;
    }
}

/// A connection to the proxy from another loopback address.
async fn connect_from(proxy: &SpawnedProxy, source: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let to = format!("127.0.0.1:{}", proxy.port).parse().unwrap();
    socket.connect(to).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_dripping_bodies_holds_only_its_share_of_the_connections() {
    let proxy = SpawnedProxy::start(&edge_config(
        "max_client_connections = 8\nmax_connections_per_address = 3",
    ));
    // An attacker on 127.0.0.2 keeps three requests in flight, each dripping its body.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = connect_from(&proxy, "127.0.0.2").await;
        s.write_all(format!("{}{{", haptik_head(100)).as_bytes())
            .await
            .unwrap();
        held.push(s);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&proxy, "botbridge_in_flight_requests").await < 3.0 {
        assert!(Instant::now() < deadline, "requests not in flight");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Its fourth connection is refused at once, with a 503 the client can read.
    let mut fourth = connect_from(&proxy, "127.0.0.2").await;
    let (status, body) = read_answer(&mut fourth).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.to_string().contains("from this address"), "{body}");
    let refused =
        r#"botbridge_client_connections_total{listener="chat",result="refused_per_address"}"#;
    assert_eq!(metric(&proxy, refused).await, 1.0);
    // Everyone else still gets in, up to the cap.
    for source in ["127.0.0.3", "127.0.0.1"] {
        let mut s = connect_from(&proxy, source).await;
        s.write_all(NOT_FOUND).await.unwrap();
        assert_eq!(read_answer(&mut s).await.0, 404, "from {source}");
    }
    // A place is freed when one of the attacker's connections closes.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = connect_from(&proxy, "127.0.0.2").await;
        s.write_all(NOT_FOUND).await.unwrap();
        if read_answer(&mut s).await.0 == 404 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed connection's place stays taken"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
