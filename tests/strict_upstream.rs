//! Misbehaving bots over real loopback, against the real binary: answers the proxy must not read
//! leniently (an interim 1xx flood, a header block over 64 KiB, a transfer coding other than
//! `chunked`, malformed chunks) get a quick 502 with a fixed message, a connection that carried bytes
//! it should not have is never reused, and no bot's own text ever reaches the caller, whatever the
//! bot's dialect.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::SpawnedProxy as Proxy;
use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a [`ScriptBot`] writes for a request: given the request's number over all connections and
/// its number on its own connection (both from 0).
type Script = Arc<dyn Fn(usize, usize) -> Vec<u8> + Send + Sync>;

/// A raw TCP bot that answers each request with what its script says, byte for byte, and keeps
/// every connection open afterwards (reading the next request on it), so that nothing but the
/// proxy's own parsing can end an exchange early. It counts the connections it accepted.
struct ScriptBot {
    addr: std::net::SocketAddr,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl ScriptBot {
    async fn start(script: impl Fn(usize, usize) -> Vec<u8> + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let script: Script = Arc::new(script);
        let conns = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                conns.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, script.clone(), requests.clone()));
            }
        });
        ScriptBot {
            addr,
            connections,
            task,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// The same bot for any request: always `reply`.
    async fn always(reply: Vec<u8>) -> Self {
        Self::start(move |_, _| reply.clone()).await
    }
}

impl Drop for ScriptBot {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One connection: read a request (head and `Content-Length` body), write the script's answer,
/// repeat until the proxy closes it.
async fn serve(mut s: TcpStream, script: Script, requests: Arc<AtomicUsize>) {
    let mut buf = Vec::new();
    for on_conn in 0.. {
        let Some(len) = read_request(&mut s, &mut buf).await else {
            return;
        };
        buf.drain(..len);
        let n = requests.fetch_add(1, Ordering::SeqCst);
        if s.write_all(&script(n, on_conn)).await.is_err() {
            return;
        }
    }
}

/// Reads until `buf` holds a whole request; its length, or `None` once the connection ends.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse::<usize>().unwrap());
            if buf.len() >= end + 4 + length {
                return Some(end + 4 + length);
            }
        }
        let mut chunk = [0u8; 8192];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A CSML answer body the proxy accepts.
fn good_body() -> String {
    csml_answer(
        "r",
        &[json!({"content_type":"text","content":{"text":"hi"}})],
    )
}

/// [`good_body`] as a whole HTTP answer with `Content-Length`.
fn good_answer() -> Vec<u8> {
    let body = good_body();
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// [`good_body`] chunked in two, under this `Transfer-Encoding`.
fn chunked_answer(transfer_coding: &str) -> Vec<u8> {
    let body = good_body();
    let (a, b) = body.split_at(10);
    format!(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: {transfer_coding}\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    )
    .into_bytes()
}

/// A CSML backend at `addr` whose answers may take 5 s: every refusal below must come well before.
fn csml_bot(name: &str, addr: std::net::SocketAddr) -> String {
    format!(
        r#"
[[backends]]
name = "{name}"
dialect = "csml"
url = "http://{addr}/api/chat"
api_key = "{BACKEND_KEY}"
api_secret = {{ env = "TEST_BACKEND_SECRET" }}
connect_timeout_ms = 500
read_timeout_ms = 5000
"#
    )
}

/// The route `/chat`: business `id` goes to backend `name`, for each pair.
fn route(backends: &[(i64, &str)]) -> String {
    let mut cfg = r#"
[[routes]]
name = "chat"
path = "/chat"
ingress = ["haptik", "csml"]
business_id = 1
"#
    .to_string();
    for (id, name) in backends {
        cfg += &format!("\n[[routes.businesses]]\nid = {id}\nbackend = \"{name}\"\n");
    }
    cfg
}

fn haptik_caller() -> Vec<(&'static str, String)> {
    vec![
        ("authorization", "Bearer acme-token".to_string()),
        ("client-id", "acme-client".to_string()),
    ]
}

/// The route `/<backend>` to that backend alone, for Haptik and CSML callers.
fn route_to(backend: &str) -> String {
    format!(
        r#"
[[routes]]
name = "{backend}"
path = "/{backend}"
ingress = ["haptik", "csml"]
business_id = 1
backend = "{backend}"
"#
    )
}

/// A Haptik caller's message to business `id` on `/chat`: the status, the answer, the time it took.
async fn ask(proxy: &Proxy, id: i64) -> (u16, Value, Duration) {
    ask_on(proxy, "/chat", id).await
}

async fn ask_on(proxy: &Proxy, path: &str, id: i64) -> (u16, Value, Duration) {
    let started = Instant::now();
    let (status, body) = send(proxy, path, &haptik_caller(), &haptik_body("u", "hi", id)).await;
    (status, body, started.elapsed())
}

async fn metrics(proxy: &Proxy) -> String {
    reqwest::get(proxy.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_cannot_be_read_strictly_are_502s_at_once() {
    let ok_head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    let body = good_body();
    // Complete, and only a little over the limit.
    let big_head = format!(
        "HTTP/1.1 200 OK\r\nX-Pad: {}\r\nContent-Length: {}\r\n\r\n{body}",
        "a".repeat(64 * 1024),
        body.len()
    );
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            b"HTTP/1.1 100 Continue\r\n\r\n".repeat(1000),
            "the backend sent too many interim (1xx) answers",
        ),
        (big_head.into_bytes(), "the answer header is too large"),
        (
            chunked_answer("gzip, chunked"),
            "the answer uses a transfer coding other than chunked",
        ),
        (
            format!("{ok_head}5\nhello").into_bytes(),
            "a line of the chunked body does not end with CRLF",
        ),
        (
            format!("{ok_head}zz").into_bytes(),
            "the answer has an invalid chunk size",
        ),
        (
            format!("{ok_head}5\r\nhelloX").into_bytes(),
            "a chunk does not end with CRLF",
        ),
    ];
    let mut bots = Vec::new();
    let mut cfg = String::new();
    for (i, (reply, _)) in cases.iter().enumerate() {
        let bot = ScriptBot::always(reply.clone()).await;
        cfg += &csml_bot(&format!("bad{i}"), bot.addr);
        bots.push(bot);
    }
    let good = ScriptBot::always(chunked_answer("chunked")).await;
    cfg += &csml_bot("good", good.addr);
    let names: Vec<String> = (0..cases.len()).map(|i| format!("bad{i}")).collect();
    let mut pairs: Vec<(i64, &str)> = (names.iter().enumerate())
        .map(|(i, n)| (i as i64 + 10, n.as_str()))
        .collect();
    pairs.push((99, "good"));
    let proxy = Proxy::start(&config_with(&(cfg + &route(&pairs))));

    // A well-formed chunked answer still works, on one reused connection.
    for _ in 0..2 {
        let (status, body, _) = ask(&proxy, 99).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(good.connections(), 1);

    for (i, (_, want)) in cases.iter().enumerate() {
        // Twice: a connection whose answer could not be read is never used again.
        for _ in 0..2 {
            let (status, body, took) = ask(&proxy, i as i64 + 10).await;
            assert_eq!(
                (status, body["error_message"].as_str()),
                (502, Some(*want)),
                "{i}"
            );
            assert!(took < Duration::from_secs(1), "case {i} took {took:?}");
        }
        assert_eq!(bots[i].connections(), 2, "case {i}");
        let m = metrics(&proxy).await;
        let line = format!(
            r#"botbridge_backend_errors_total{{backend="bad{i}",reason="backend_bad_answer"}} 2"#
        );
        assert!(m.contains(&line), "{line}\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_204_declared_a_body_is_not_reused() {
    // The bot declares a body on a 204 and sends it only once the next request comes on the same
    // connection, where the proxy would read it as the start of the next answer.
    let bot = ScriptBot::start(|n, on_conn| match (n, on_conn) {
        (0, _) => b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n".to_vec(),
        (_, 0) => good_answer(),
        _ => [b"hello".as_slice(), &good_answer()].concat(),
    })
    .await;
    let cfg = csml_bot("bot", bot.addr) + &route(&[(1, "bot")]);
    let proxy = Proxy::start(&config_with(&cfg));
    // A 204 has no body, so no CSML answer.
    let (status, body, _) = ask(&proxy, 1).await;
    assert_eq!(status, 502, "{body}");
    let (status, body, _) = ask(&proxy, 1).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        bot.connections(),
        2,
        "the second request came on a new connection"
    );
}

/// Every bot dialect's bad answers, each carrying a secret where serde's error would quote it, behind
/// one route per dialect.
struct Bots {
    csml: CsmlBackend,
    engine: CsmlBackend,
    haptik: CsmlBackend,
    rasa: CsmlBackend,
}

const CSML_SECRET: &str = r#"{"messages":"SECRET-1"}"#;
const CSML_ERROR: &str =
    r#"{"messages":[{"payload":{"content_type":"error","content":{"error":"SECRET-5"}}}]}"#;
const HAPTIK_SECRET: &str = r#"{"message":[{"body":{"text":"a","type":"TEXT","data":{"quick_replies":[{"actionable_text":"Red","payload":"SECRET-3"}]}}}]}"#;
const RASA_SECRET: &str = r#"[{"text":"ok"},{"buttons":"SECRET-4"}]"#;

impl Bots {
    async fn start() -> Self {
        Bots {
            csml: CsmlBackend::start(Behaviour::Answer(CSML_SECRET.into())).await,
            engine: CsmlBackend::start_checking(
                Check::EngineKey,
                Behaviour::Status(400, "SECRET-2 missing field `metadata`".into()),
            )
            .await,
            haptik: CsmlBackend::start_checking(
                Check::HaptikBearer,
                Behaviour::Answer(HAPTIK_SECRET.into()),
            )
            .await,
            rasa: CsmlBackend::start(Behaviour::AnswerUnchecked(RASA_SECRET.into())).await,
        }
    }

    fn config(&self, log: &str) -> String {
        let mut cfg = csml_backend_toml("csml", self.csml.addr, "");
        cfg += &format!(
            r#"
[[backends]]
name = "engine"
dialect = "csml-engine"
url = "http://{}/run"
bot_id = "b"
channel_id = "c"
api_key = "{ENGINE_KEY}"

[[backends]]
name = "haptik"
dialect = "haptik"
url = "http://{}/webhook"
token = "{HAPTIK_BACKEND_TOKEN}"
client_id = "{HAPTIK_BACKEND_CLIENT}"

[[backends]]
name = "rasa"
dialect = "rasa"
url = "http://{}/webhooks/rest/webhook"
"#,
            self.engine.addr, self.haptik.addr, self.rasa.addr
        );
        for backend in ["csml", "engine", "haptik", "rasa"] {
            cfg += &route_to(backend);
        }
        config_with(&cfg).replace("filter = \"info\"", log)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_bot_text_ever_reaches_the_caller_or_a_log_without_message_bodies() {
    let bots = Bots::start().await;
    // Everything the proxy logs, at debug level, but message bodies off.
    let mut proxy = Proxy::start(&bots.config("filter = \"debug\""));
    let cases = [
        (
            "/csml",
            "the backend answer is not a CSML answer: `messages` has the wrong type",
        ),
        ("/engine", "the CSML engine refused the request (HTTP 400)"),
        (
            "/haptik",
            "the backend answer is not a Haptik answer: \
             `message[0].body.data.quick_replies[0].payload` has the wrong type",
        ),
        (
            "/rasa",
            "the backend answer is not a Rasa answer: `[1].buttons` has the wrong type",
        ),
    ];
    for (path, want) in cases {
        let (status, body, _) = ask_on(&proxy, path, 1).await;
        assert_eq!((status, body["error_message"].as_str()), (502, Some(want)));
        assert!(!body.to_string().contains("SECRET"), "{body}");
        // A CSML caller's error shape says the same.
        let (status, body) = send(&proxy, path, &csml_signed_caller(), &csml_text()).await;
        assert_eq!(
            (status, body["message"].as_str()),
            (502, Some(want)),
            "{body}"
        );
        assert!(!body.to_string().contains("SECRET"), "{body}");
    }
    // A bot's own error message: a fixed message, its text nowhere.
    bots.csml.set(Behaviour::Answer(CSML_ERROR.into()));
    let (status, body, _) = ask_on(&proxy, "/csml", 1).await;
    assert_eq!(
        (status, body["error_message"].as_str()),
        (502, Some("the bot reported an error"))
    );
    assert!(!body.to_string().contains("SECRET"), "{body}");
    let logs = proxy.logs();
    assert!(logs.contains("backend answer unusable"), "{logs}");
    assert!(!logs.contains("SECRET"), "{logs}");
    assert!(proxy.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_message_bodies_on_the_debug_log_says_what_the_bot_sent() {
    let bots = Bots::start().await;
    // Debug, not trace: the bodies themselves (trace) stay out, only why an answer was unusable.
    let log = "filter = \"info,botbridge::messages=debug\"\nmessage_bodies = true";
    let proxy = Proxy::start(&bots.config(log));
    for path in ["/csml", "/engine", "/haptik", "/rasa"] {
        let (status, body, _) = ask_on(&proxy, path, 1).await;
        assert_eq!(status, 502, "{body}");
        assert!(!body.to_string().contains("SECRET"), "{body}");
    }
    let logs = proxy.logs();
    for secret in ["SECRET-1", "SECRET-2", "SECRET-3", "SECRET-4"] {
        assert!(logs.contains(secret), "{secret} in\n{logs}");
    }
    assert!(
        !logs.contains(r#"from=\"backend\""#) && !logs.contains("from=\"backend\""),
        "no whole body at debug level:\n{logs}"
    );
}

/// A signed CSML caller.
fn csml_signed_caller() -> Vec<(&'static str, String)> {
    let (key, sig) = csml_sign(CSML_CALLER_KEY, CSML_CALLER_SECRET, unix_now());
    vec![("x-api-key", key), ("x-api-signature", sig)]
}

/// A CSML caller's text message.
fn csml_text() -> String {
    json!({"client":{"user_id":"c-user"},"metadata":{},"request_id":"r-1",
           "payload":{"content_type":"text","content":{"text":"hi"}}})
    .to_string()
}
