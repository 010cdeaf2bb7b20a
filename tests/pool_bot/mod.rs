//! A test bot for pool tests: a Rasa REST channel bot (the simplest dialect: no credential) that
//! records every message it receives by its text (the test's message id) and each user it serves,
//! answers `"<bot name>:<message>"` so the caller can tell which instance answered, serves
//! `GET /health`, and can be killed (listener and every connection closed at once, like a crashed
//! process) and revived on the same address.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// What a bot saw and how it behaves.
#[derive(Default)]
pub struct BotState {
    /// Message texts, in the order their requests were read in full.
    pub received: Mutex<Vec<String>>,
    /// Message texts answered.
    pub answered: Mutex<HashSet<String>>,
    /// Requests per user (Rasa `sender`).
    pub users: Mutex<HashMap<String, usize>>,
    /// `GET /health` requests served.
    pub health_checks: AtomicUsize,
    /// Milliseconds `GET /health` waits before answering.
    pub health_delay_ms: AtomicUsize,
    /// Connections open now.
    pub open: AtomicUsize,
    /// Milliseconds to wait before answering.
    pub delay_ms: AtomicUsize,
    /// The status of chat answers (200 unless told otherwise).
    pub status: AtomicU16,
}

/// A running (or killed) bot instance.
pub struct Bot {
    pub name: String,
    pub addr: SocketAddr,
    pub state: Arc<BotState>,
    conns: Arc<Mutex<JoinSet<()>>>,
    accept: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Bot {
    /// A bot on 127.0.0.1, any port.
    pub async fn start(name: &str) -> Bot {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap()).await
    }

    /// A bot on `bind`.
    pub async fn start_on(name: &str, bind: SocketAddr) -> Bot {
        let listener = TcpListener::bind(bind).await.unwrap();
        let state = Arc::new(BotState::default());
        state.status.store(200, Ordering::Relaxed);
        let bot = Bot {
            name: name.to_string(),
            addr: listener.local_addr().unwrap(),
            state,
            conns: Arc::new(Mutex::new(JoinSet::new())),
            accept: Mutex::new(None),
        };
        bot.serve(listener);
        bot
    }

    fn serve(&self, listener: TcpListener) {
        let (name, state, conns) = (self.name.clone(), self.state.clone(), self.conns.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (name, state) = (name.clone(), state.clone());
                state.open.fetch_add(1, Ordering::SeqCst);
                conns.lock().unwrap().spawn(async move {
                    let _open = Open(state.clone());
                    let svc = service_fn(move |req| handle(name.clone(), state.clone(), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        *self.accept.lock().unwrap() = Some(task);
    }

    /// Closes the listener, then every connection at once. Returns how many connections were open
    /// when it stopped accepting.
    pub async fn kill(&self) -> usize {
        let accept = self.accept.lock().unwrap().take();
        if let Some(task) = accept {
            task.abort();
            let _ = task.await;
        }
        let open = self.state.open.load(Ordering::SeqCst);
        let mut conns = std::mem::take(&mut *self.conns.lock().unwrap());
        conns.abort_all();
        while conns.join_next().await.is_some() {}
        open
    }

    /// Listens again on the same address (after [`Bot::kill`]).
    pub async fn revive(&self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    pub fn received(&self) -> Vec<String> {
        self.state.received.lock().unwrap().clone()
    }

    /// Messages read in full but never answered.
    pub fn unanswered(&self) -> HashSet<String> {
        let answered = self.state.answered.lock().unwrap();
        (self.received().into_iter())
            .filter(|m| !answered.contains(m))
            .collect()
    }

    pub fn count(&self) -> usize {
        self.state.received.lock().unwrap().len()
    }

    pub fn users(&self) -> HashSet<String> {
        self.state.users.lock().unwrap().keys().cloned().collect()
    }

    pub fn set_delay(&self, d: Duration) {
        (self.state.delay_ms).store(d.as_millis() as usize, Ordering::Relaxed);
    }

    pub fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::Relaxed);
    }
}

impl Drop for Bot {
    fn drop(&mut self) {
        if let Some(t) = self.accept.lock().unwrap().take() {
            t.abort();
        }
        self.conns.lock().unwrap().abort_all();
    }
}

/// Counts an open connection until dropped (also when its task is aborted).
struct Open(Arc<BotState>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(
    name: String,
    state: Arc<BotState>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() == hyper::Method::GET && req.uri().path() == "/health" {
        state.health_checks.fetch_add(1, Ordering::Relaxed);
        let delay = state.health_delay_ms.load(Ordering::Relaxed) as u64;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        return Ok(Response::new(Full::new(Bytes::from_static(b"ok"))));
    }
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let body: serde_json::Value = serde_json::from_slice(&body.unwrap_or_default()).unwrap();
    let sender = body["sender"].as_str().unwrap_or_default().to_string();
    let message = body["message"].as_str().unwrap_or_default().to_string();
    state.received.lock().unwrap().push(message.clone());
    *state
        .users
        .lock()
        .unwrap()
        .entry(sender.clone())
        .or_default() += 1;
    let delay = state.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay as u64)).await;
    }
    let status = state.status.load(Ordering::Relaxed);
    let answer = serde_json::json!([{"recipient_id": sender, "text": format!("{name}:{message}")}]);
    state.answered.lock().unwrap().insert(message);
    Ok(Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(answer.to_string())))
        .unwrap())
}

/// A `[[backends]]` table of Rasa bots at these addresses, with more keys.
pub fn pool_backend(name: &str, addrs: &[SocketAddr], extra: &str) -> String {
    let urls: Vec<String> = (addrs.iter())
        .map(|a| format!("\"http://{a}/webhooks/rest/webhook\""))
        .collect();
    format!(
        r#"
[[backends]]
name = "{name}"
dialect = "rasa"
urls = [{}]
connect_timeout_ms = 500
read_timeout_ms = 3000
{extra}
"#,
        urls.join(", ")
    )
}

/// A `[[routes]]` table for Haptik and CSML callers.
pub fn route(name: &str, path: &str, backend: &str, extra: &str) -> String {
    format!(
        r#"
[[routes]]
name = "{name}"
path = "{path}"
ingress = ["haptik", "csml"]
backend = "{backend}"
{extra}
"#
    )
}

/// A Haptik caller's request on `path`: (status, answer).
pub async fn haptik(
    client: &reqwest::Client,
    url: &str,
    user: &str,
    message: &str,
) -> (u16, serde_json::Value) {
    let body = serde_json::json!({
        "user": {"auth_id": user}, "message_body": message, "message_type": 0, "business_id": 1
    });
    let resp = (client.post(url))
        .header("authorization", "Bearer acme-token")
        .header("client-id", "acme-client")
        .json(&body)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

/// Which bot answered a Haptik caller (the `"<bot>:…"` prefix of its first bot message).
pub fn answered_by(answer: &serde_json::Value) -> Option<String> {
    let text = answer[0]["bot_messages"][0].as_str()?;
    text.split_once(':').map(|(bot, _)| bot.to_string())
}

/// The value of one series on the proxy's `/metrics` (0 when absent).
pub async fn metric(admin_url: &str, series: &str) -> f64 {
    let text = reqwest::get(format!("{admin_url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    (text.lines())
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `GET /backends` as JSON.
pub async fn backends(admin_url: &str) -> serde_json::Value {
    reqwest::get(format!("{admin_url}/backends"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The `GET /backends` entry of one endpoint.
pub async fn endpoint_state(admin_url: &str, backend: &str, addr: SocketAddr) -> serde_json::Value {
    let all = backends(admin_url).await;
    let b = (all["backends"].as_array().unwrap().iter())
        .find(|b| b["name"] == backend)
        .unwrap()
        .clone();
    (b["endpoints"].as_array().unwrap().iter())
        .find(|e| e["address"] == addr.to_string())
        .cloned()
        .unwrap_or_default()
}
