//! A callback receiver on loopback for the async-mode tests: records every POST (with the status it
//! answered and when it arrived) and answers as told. Signatures are checked here with `hmac`
//! directly, not with the proxy's code.

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// How the receiver answers.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200.
    Ok,
    /// This status for the first `n` attempts of each idempotency key, then 200.
    FailFirst(usize, u16),
    /// 429 with `Retry-After: secs` for the first `n` attempts of each key, then 200.
    FailFirstRetryAfter(usize, u64),
    /// 302 to this URL.
    Redirect(String),
    /// Never answers.
    Hang,
}

/// One POST the receiver got.
#[derive(Debug, Clone)]
pub struct Got {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The status it answered.
    pub status: u16,
    pub at: Instant,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&str> {
        (self.headers.iter())
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON delivery")
    }
}

pub struct Receiver {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    connections: Arc<AtomicUsize>,
    /// Whether connections are kept open after an answer (HTTP/1.1 keep-alive).
    keep_alive: Arc<AtomicBool>,
    got: Arc<Mutex<Vec<Got>>>,
    reply: Arc<Mutex<Reply>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start(reply: Reply) -> Receiver {
        Self::start_on("127.0.0.1:0", reply).await
    }

    pub async fn start_on(addr: &str, reply: Reply) -> Receiver {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let reply = Arc::new(Mutex::new(reply));
        let (g, r) = (got.clone(), reply.clone());
        let connections = Arc::new(AtomicUsize::new(0));
        let keep_alive = Arc::new(AtomicBool::new(true));
        let (accepted, keep) = (connections.clone(), keep_alive.clone());
        let task = tokio::spawn(async move {
            let tries: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let (g, r, tries) = (g.clone(), r.clone(), tries.clone());
                let keep = keep.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc =
                        service_fn(move |req| answer(req, g.clone(), r.clone(), tries.clone()));
                    let _ = http1::Builder::new()
                        .keep_alive(keep)
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            connections,
            keep_alive,
            got,
            reply,
            _task: task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn received(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// How many connections it accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Whether the connections it accepts from now on stay open after an answer.
    pub fn set_keep_alive(&self, on: bool) {
        self.keep_alive.store(on, Ordering::SeqCst);
    }

    pub fn set(&self, reply: Reply) {
        *self.reply.lock().unwrap() = reply;
    }
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    got: Arc<Mutex<Vec<Got>>>,
    reply: Arc<Mutex<Reply>>,
    tries: Arc<Mutex<HashMap<String, usize>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let at = Instant::now();
    let path = req.uri().path().to_string();
    let headers: Vec<(String, String)> = (req.headers().iter())
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let key = req
        .headers()
        .get("idempotency-key")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = req.into_body().collect().await.unwrap().to_bytes().to_vec();
    let n = {
        let mut t = tries.lock().unwrap();
        let n = t.entry(key).or_default();
        *n += 1;
        *n
    };
    let reply = reply.lock().unwrap().clone();
    let mut resp = Response::builder();
    let status = match reply {
        Reply::Ok => 200,
        Reply::FailFirst(k, s) if n <= k => s,
        Reply::FailFirst(..) => 200,
        Reply::FailFirstRetryAfter(k, secs) if n <= k => {
            resp = resp.header("retry-after", secs.to_string());
            429
        }
        Reply::FailFirstRetryAfter(..) => 200,
        Reply::Redirect(to) => {
            resp = resp.header("location", to);
            302
        }
        Reply::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            200
        }
    };
    got.lock().unwrap().push(Got {
        path,
        headers,
        body,
        status,
        at,
    });
    Ok(resp.status(status).body(Full::new(Bytes::new())).unwrap())
}

/// Whether a delivery's `x-botbridge-signature` is `sha256=<hex HMAC-SHA256(secret, "<ts>.<body>")>`
/// with `ts` its `x-botbridge-timestamp`, computed here.
pub fn verify_botbridge(secret: &str, g: &Got) -> bool {
    let (Some(ts), Some(sig)) = (
        g.header("x-botbridge-timestamp"),
        g.header("x-botbridge-signature"),
    ) else {
        return false;
    };
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{ts}.").as_bytes());
    mac.update(&g.body);
    sig == format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Whether a delivery's `X-Hub-Signature` is `sha1=<hex HMAC-SHA1(secret, body)>`, computed here.
pub fn verify_hub(secret: &str, g: &Got) -> bool {
    let Some(sig) = g.header("x-hub-signature") else {
        return false;
    };
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(&g.body);
    sig == format!("sha1={}", hex::encode(mac.finalize().into_bytes()))
}
