//! Test harness: the proxy, and test backends on loopback.
//!
//! Two ways to run the proxy:
//! - [`Proxy`] (`inproc.rs`): the chat, admin and demo services inside the test process, on listeners
//!   the test binds to port 0 itself, with a [`TestClock`]. For request-path tests: everything that
//!   only sends requests and checks answers, what backends received and `/metrics`.
//! - [`SpawnedProxy`] (`spawned.rs`): the real `botbridge` binary as a child process, for what only a
//!   process has: its log output, signals, reloading its file on `SIGHUP`, surviving, its environment.
//!
//! [`CsmlBackend`] is a small hyper server that checks the proxy's CSML signature on its own (plain
//! `hmac`, not the proxy's code), records every request it receives, and answers as told.
//! [`RawBackend`] speaks raw TCP for the cases hyper cannot produce (non-HTTP garbage).

#![allow(dead_code)]

mod inproc;
mod spawned;
mod tls_ca;
mod vendors;

// Each test binary uses one harness or both.
#[allow(unused_imports)]
pub use inproc::*;
#[allow(unused_imports)]
pub use spawned::*;
#[allow(unused_imports)]
pub use tls_ca::*;
#[allow(unused_imports)]
pub use vendors::*;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub const BACKEND_KEY: &str = "test-backend-key";
pub const BACKEND_SECRET: &str = "test-backend-secret";
pub const HAPTIK_BACKEND_TOKEN: &str = "haptik-backend-token";
pub const HAPTIK_BACKEND_CLIENT: &str = "haptik-backend-client";
pub const ENGINE_KEY: &str = "engine-key";
pub const CSML_CALLER_KEY: &str = "csml-caller-key";
pub const CSML_CALLER_SECRET: &str = "csml-caller-secret";
pub const CSML_PLAIN_KEY: &str = "csml-plain-key";

/// The secrets test configs read from the environment (`{ env = "VAR" }`), and their values: set in a
/// spawned proxy's environment, written into the config text of an in-process one.
pub const TEST_SECRETS: [(&str, &str); 2] = [
    ("TEST_BACKEND_SECRET", BACKEND_SECRET),
    ("TEST_CSML_CALLER_SECRET", CSML_CALLER_SECRET),
];

/// The credentials a test backend expects.
#[derive(Debug, Clone, Copy)]
pub enum Check {
    /// CSML Chat API: `x-api-key: KEY|TS` + a valid `x-api-signature`.
    CsmlSignature,
    /// Haptik: `Authorization: Bearer` + `client-id`.
    HaptikBearer,
    /// CSML engine: `X-Api-Key` equal to [`ENGINE_KEY`].
    EngineKey,
}

/// `x-api-key` and `x-api-signature` values for `key`/`secret` at `ts`, computed here with `hmac`.
pub fn csml_sign(key: &str, secret: &str, ts: u64) -> (String, String) {
    let api_key = format!("{key}|{ts}");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(api_key.as_bytes());
    (
        api_key,
        format!("sha256={}", hex::encode(mac.finalize().into_bytes())),
    )
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A loopback address where connections are refused, reserved for as long as this lives: a socket
/// bound to it that never listens. The kernel gives a bound port to nobody else (no listener, no
/// outgoing connection) and answers a connection attempt with a reset. For "the backend is down".
pub struct RefusedPort {
    pub addr: SocketAddr,
    _socket: tokio::net::TcpSocket,
}

impl RefusedPort {
    pub fn new() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        RefusedPort {
            addr: socket.local_addr().unwrap(),
            _socket: socket,
        }
    }
}

/// Where a running proxy (in-process or spawned) answers.
pub trait Urls {
    /// The chat listener's port.
    fn chat_port(&self) -> u16;
    /// The admin listener's port.
    fn admin_port(&self) -> u16;

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.chat_port(), path)
    }

    fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.admin_port(), path)
    }
}

impl<T: Urls + ?Sized> Urls for Arc<T> {
    fn chat_port(&self) -> u16 {
        (**self).chat_port()
    }
    fn admin_port(&self) -> u16 {
        (**self).admin_port()
    }
}

/// The admin listener's `/metrics` text.
pub async fn scrape<P: Urls + ?Sized>(proxy: &P) -> String {
    reqwest::get(proxy.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of one series (name and labels as printed, e.g. `x_total{a="b"}`) in a scrape.
pub fn series_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?.strip_prefix(' ')?;
        Some(rest.trim().parse::<f64>().unwrap())
    })
}

/// How much a counter grew from the scrape `before` to the scrape `after` (a series missing from
/// `before` counts from 0; one missing from `after` fails the test).
///
/// The metrics live in the process-wide Prometheus registry, so an in-process test reads its own
/// effect as a difference, on a proxy started with [`Proxy::start_alone`] so that no other test's
/// requests move the same series meanwhile.
pub fn grew(before: &str, after: &str, series: &str) -> u64 {
    let now = series_value(after, series).unwrap_or_else(|| panic!("no series {series}"));
    let then = series_value(before, series).unwrap_or(0.0);
    (now - then) as u64
}

/// What a test backend received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the backend's credential check passed (see [`Check`]).
    pub signature_ok: bool,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("backend received JSON")
    }
}

/// How a test backend answers.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// 200 with this body (only if the signature checks out; else 401).
    Answer(String),
    /// Accept the request whatever its credentials, then answer this.
    AnswerUnchecked(String),
    /// Answer with this status and body.
    Status(u16, String),
    /// Wait this long before answering `Answer`.
    Slow(Duration, String),
}

/// A hyper-based CSML Chat API test backend.
pub struct CsmlBackend {
    pub addr: SocketAddr,
    /// TCP connections accepted so far.
    pub connections: Arc<Mutex<usize>>,
    pub received: Arc<Mutex<Vec<Received>>>,
    behaviour: Arc<Mutex<Behaviour>>,
    task: tokio::task::JoinHandle<()>,
}

fn signature_ok(key_header: Option<&str>, sig_header: Option<&str>) -> bool {
    let (Some(key), Some(sig)) = (key_header, sig_header) else {
        return false;
    };
    let Some((k, ts)) = key.rsplit_once('|') else {
        return false;
    };
    let ts: u64 = match ts.parse() {
        Ok(t) => t,
        Err(_) => return false,
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut mac = Hmac::<Sha256>::new_from_slice(BACKEND_SECRET.as_bytes()).unwrap();
    mac.update(key.as_bytes());
    let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    k == BACKEND_KEY && sig == want && ts.abs_diff(now) <= 5
}

async fn serve_conn<S>(
    stream: S,
    rec: Arc<Mutex<Vec<Received>>>,
    beh: Arc<Mutex<Behaviour>>,
    check: Check,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
        let (rec, beh) = (rec.clone(), beh.clone());
        async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let headers: Vec<(String, String)> = parts
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                .collect();
            let get = |n: &str| parts.headers.get(n).and_then(|v| v.to_str().ok());
            let ok = match check {
                Check::CsmlSignature => signature_ok(get("x-api-key"), get("x-api-signature")),
                Check::HaptikBearer => {
                    get("authorization")
                        .is_some_and(|v| v == format!("Bearer {HAPTIK_BACKEND_TOKEN}"))
                        && get("client-id") == Some(HAPTIK_BACKEND_CLIENT)
                }
                Check::EngineKey => get("x-api-key") == Some(ENGINE_KEY),
            };
            rec.lock().unwrap().push(Received {
                method: parts.method.to_string(),
                path: parts.uri.path().to_string(),
                headers,
                body: body.to_vec(),
                signature_ok: ok,
            });
            let behaviour = beh.lock().unwrap().clone();
            let (status, text) = match behaviour {
                Behaviour::Answer(b) if ok => (200, b),
                Behaviour::Answer(_) => (401, r#"{"error":"bad signature"}"#.to_string()),
                Behaviour::AnswerUnchecked(b) => (200, b),
                Behaviour::Status(s, b) => (s, b),
                Behaviour::Slow(d, b) => {
                    tokio::time::sleep(d).await;
                    (200, b)
                }
            };
            Ok::<_, Infallible>(
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(text)))
                    .unwrap(),
            )
        }
    });
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}

impl CsmlBackend {
    pub async fn start(behaviour: Behaviour) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), behaviour, None).await
    }

    /// A backend that checks `check` instead of a CSML signature.
    pub async fn start_checking(check: Check, behaviour: Behaviour) -> Self {
        Self::start_full("127.0.0.1:0".parse().unwrap(), behaviour, None, check).await
    }

    /// A backend on `bind`, serving HTTPS with `tls` when given.
    pub async fn start_on(
        bind: SocketAddr,
        behaviour: Behaviour,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Self {
        Self::start_full(bind, behaviour, tls, Check::CsmlSignature).await
    }

    async fn start_full(
        bind: SocketAddr,
        behaviour: Behaviour,
        tls: Option<tokio_rustls::TlsAcceptor>,
        check: Check,
    ) -> Self {
        let listener = TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let behaviour = Arc::new(Mutex::new(behaviour));
        let (rec, beh) = (received.clone(), behaviour.clone());
        let tls = tls.map(Arc::new);
        let connections = Arc::new(Mutex::new(0));
        let conns = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                *conns.lock().unwrap() += 1;
                let (rec, beh, tls) = (rec.clone(), beh.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => serve_conn(stream, rec, beh, check).await,
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(stream).await {
                                serve_conn(s, rec, beh, check).await
                            }
                        }
                    }
                });
            }
        });
        CsmlBackend {
            addr,
            connections,
            received,
            behaviour,
            task,
        }
    }

    pub fn set(&self, b: Behaviour) {
        *self.behaviour.lock().unwrap() = b;
    }

    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}

impl Drop for CsmlBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A raw TCP backend that reads one request per connection and writes `reply` verbatim.
pub struct RawBackend {
    pub addr: SocketAddr,
    pub hits: Arc<Mutex<usize>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawBackend {
    pub async fn start(reply: &'static [u8]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(Mutex::new(0));
        let h = hits.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let h = h.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    let mut got = 0;
                    // Read until the header end and a body of the declared length.
                    loop {
                        let Ok(n) = s.read(&mut buf[got..]).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        got += n;
                        let text = String::from_utf8_lossy(&buf[..got]).to_string();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let cl = text[..end]
                                .lines()
                                .find_map(|l| {
                                    let (k, v) = l.split_once(':')?;
                                    k.eq_ignore_ascii_case("content-length")
                                        .then(|| v.trim().parse::<usize>().ok())?
                                })
                                .unwrap_or(0);
                            if got >= end + 4 + cl {
                                break;
                            }
                        }
                    }
                    *h.lock().unwrap() += 1;
                    let _ = s.write_all(reply).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        RawBackend { addr, hits, task }
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The config's `[[backends]]` table for a CSML test backend at `addr`.
pub fn csml_backend_toml(name: &str, addr: SocketAddr, extra: &str) -> String {
    format!(
        r#"
[[backends]]
name = "{name}"
dialect = "csml"
url = "http://{addr}/api/chat"
api_key = "{BACKEND_KEY}"
api_secret = {{ env = "TEST_BACKEND_SECRET" }}
connect_timeout_ms = 500
read_timeout_ms = 1500
{extra}
"#
    )
}

/// A complete config: one Haptik client, the given backends and routes; `{PORT}`, `{ADMIN}` and
/// `{DIR}` are left for the harness.
pub fn config_with(backends_and_routes: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{{PORT}}"
threads = 1
max_body_bytes = 2048
pid_file = "{{DIR}}/pid"
upgrade_sock = "{{DIR}}/upgrade.sock"
grace_period_seconds = 0

[admin]
listen = "127.0.0.1:{{ADMIN}}"

[log]
filter = "info"

[clients]
csml_tolerance_secs = 300

[[clients.haptik]]
name = "acme"
client_id = "acme-client"
token = "acme-token"

[[clients.csml]]
name = "signed"
key = "{CSML_CALLER_KEY}"
secret = {{ env = "TEST_CSML_CALLER_SECRET" }}
business_id = 77

[[clients.csml]]
name = "plain"
key = "{CSML_PLAIN_KEY}"
auth = "plain"

[[clients.haptik]]
name = "hashed"
client_id = "hashed-client"
# sha256("hashed-token")
token_sha256 = "{}"
{backends_and_routes}
"#,
        hex::encode(<Sha256 as sha2::Digest>::digest(b"hashed-token")),
    )
}

/// The shipped `proxy.toml`, moved off its fixed ports: `{PORT}`, `{ADMIN}`, `{DEMO}` (the demo bots'
/// port, which the backends' URLs name too) and `{DIR}`, filled in by either harness.
pub fn shipped_config() -> String {
    include_str!("../../proxy.toml")
        .replace("127.0.0.1:8080", "127.0.0.1:{PORT}")
        .replace("127.0.0.1:9090", "127.0.0.1:{ADMIN}")
        .replace("127.0.0.1:8081", "127.0.0.1:{DEMO}")
        .replace(
            "[server]",
            "[server]\npid_file = \"{DIR}/pid\"\nupgrade_sock = \"{DIR}/sock\"",
        )
}

/// POSTs a JSON body with these headers to the proxy; the answer's status and JSON body.
pub async fn send<P: Urls + ?Sized>(
    proxy: &P,
    path: &str,
    headers: &[(&str, String)],
    body: &str,
) -> (u16, serde_json::Value) {
    let (status, _, json) = send_with_headers(proxy, path, headers, body).await;
    (status, json)
}

/// As [`send`], with the answer's headers too.
pub async fn send_with_headers<P: Urls + ?Sized>(
    proxy: &P,
    path: &str,
    headers: &[(&str, String)],
    body: &str,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let mut rb = reqwest::Client::new()
        .post(proxy.url(path))
        .timeout(Duration::from_secs(10))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (k, v) in headers {
        rb = rb.header(*k, v);
    }
    let resp = rb.send().await.unwrap();
    let (status, answer_headers) = (resp.status().as_u16(), resp.headers().clone());
    let text = resp.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON answer: {text}"));
    (status, answer_headers, json)
}

/// A Haptik request body.
pub fn haptik_body(auth_id: &str, text: &str, business_id: i64) -> String {
    serde_json::json!({
        "user": {"auth_id": auth_id},
        "message_body": text,
        "message_type": 0,
        "business_id": business_id
    })
    .to_string()
}

/// A CSML answer with these messages (payload objects).
pub fn csml_answer(request_id: &str, payloads: &[serde_json::Value]) -> String {
    let messages: Vec<_> = payloads
        .iter()
        .map(|p| {
            serde_json::json!({
                "conversation_id": "c-1", "direction": "SEND", "interaction_order": 0, "payload": p
            })
        })
        .collect();
    serde_json::json!({
        "request_id": request_id,
        "interaction_id": "i-1",
        "messages": messages,
        "client": {"bot_id": "b", "channel_id": "ch", "user_id": "u"},
        "received_at": "2019-11-16T17:48:26.519Z",
        "is_authorized": true
    })
    .to_string()
}

/// Waits (at most `limit`) for the proxy to close the connection; how long that took.
pub async fn closed_within(s: &mut tokio::net::TcpStream, limit: Duration) -> Duration {
    let started = std::time::Instant::now();
    let mut sink = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + limit).into(), s.read(&mut sink)).await {
            Ok(Ok(0) | Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("still open after {limit:?}"),
        }
    }
}

/// A tool a test needs is missing (`what` says which and how to install it): the test fails, unless
/// `BOTBRIDGE_ALLOW_SKIP=1` lets it skip, saying so (true: return now).
pub fn skip_for_missing(what: &str) -> bool {
    if std::env::var("BOTBRIDGE_ALLOW_SKIP").as_deref() == Ok("1") {
        eprintln!("SKIPPED (BOTBRIDGE_ALLOW_SKIP=1): {what}");
        return true;
    }
    panic!("{what}: `tests/run` installs it; BOTBRIDGE_ALLOW_SKIP=1 skips the tests that need it");
}
