//! One delivery attempt: check the URL, resolve the name, check every address, connect to the
//! checked address, POST, and classify the answer.
//!
//! The connection is opened here, to the `SocketAddr` that passed the check (pingora's transport
//! connector: plain TCP, or TLS with the URL's host as server name), and only then handed to hyper's
//! HTTP/1.1 client; once its answer is read it is kept for the next delivery to that same checked
//! address ([`super::keepalive`]). A client that resolves names itself could connect to another address than the
//! one checked (DNS rebinding), and one that follows redirects could be sent anywhere; hyper's
//! connection-level client does neither. A 3xx is never followed: it fails the delivery.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use pingora::connectors::TransportConnector;
use pingora::upstreams::peer::HttpPeer;

use super::keepalive::{self, IdlePool, Key};
use super::ssrf::{CallbackUrl, Reach, Refusal};

/// How deliveries reach receivers: new connections (to checked addresses only) and the idle ones
/// kept for reuse.
pub struct Connections {
    pub connector: TransportConnector,
    pub idle: Arc<IdlePool>,
}

/// How one attempt ended: the bounded label set of `botbridge_delivery_attempts_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx.
    Delivered,
    /// 408, 429 or 5xx: retried (honouring `Retry-After`).
    Status5xx,
    Status429,
    /// Any other 4xx: the receiver refused it for good.
    Rejected,
    /// 3xx: redirects are not followed.
    Redirect,
    /// Connecting failed (refused, unreachable, TLS).
    ConnectError,
    /// The attempt took longer than `delivery.timeout_ms`.
    Timeout,
    /// The name did not resolve (retried: DNS failures pass).
    Unresolvable,
    /// The URL or a resolved address is not allowed for the credential.
    Forbidden,
}

impl Outcome {
    /// Every outcome, for pre-registering metric series.
    pub const ALL: [Outcome; 9] = [
        Outcome::Delivered,
        Outcome::Status5xx,
        Outcome::Status429,
        Outcome::Rejected,
        Outcome::Redirect,
        Outcome::ConnectError,
        Outcome::Timeout,
        Outcome::Unresolvable,
        Outcome::Forbidden,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Status5xx => "status_5xx",
            Outcome::Status429 => "status_429",
            Outcome::Rejected => "rejected",
            Outcome::Redirect => "redirect",
            Outcome::ConnectError => "connect_error",
            Outcome::Timeout => "timeout",
            Outcome::Unresolvable => "unresolvable",
            Outcome::Forbidden => "forbidden",
        }
    }

    /// Whether another attempt may succeed.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            Outcome::Status5xx
                | Outcome::Status429
                | Outcome::ConnectError
                | Outcome::Timeout
                | Outcome::Unresolvable
        )
    }
}

/// The result of an attempt: its outcome and the receiver's `Retry-After`, if it gave one.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    pub outcome: Outcome,
    pub retry_after: Option<Duration>,
}

impl From<Outcome> for Attempt {
    fn from(outcome: Outcome) -> Self {
        Attempt {
            outcome,
            retry_after: None,
        }
    }
}

/// One POST of `body` to `url` with `headers`, within `timeout`.
pub async fn attempt(
    conns: &Connections,
    reach: &Reach,
    url: &CallbackUrl,
    headers: &[(&str, String)],
    body: Bytes,
    timeout: Duration,
) -> Attempt {
    if reach.check_parsed(url).is_err() {
        return Outcome::Forbidden.into();
    }
    let run = async {
        let addr = match checked_address(reach, url).await {
            Ok(a) => a,
            Err(Refusal::Unresolvable) => return Err(Outcome::Unresolvable.into()),
            Err(_) => return Err(Outcome::Forbidden.into()),
        };
        post(conns, addr, url, headers, body).await
    };
    // The outcome is the answer's status, within the timeout; the rest of the answer only decides
    // whether its connection is kept.
    match tokio::time::timeout(timeout, run).await {
        Err(_) => Outcome::Timeout.into(),
        Ok(Err(failed)) => failed,
        Ok(Ok(answered)) => answered.finish(&conns.idle).await,
    }
}

/// Resolves the URL's host and checks every address; the first one is where the delivery connects.
pub async fn checked_address(reach: &Reach, url: &CallbackUrl) -> Result<SocketAddr, Refusal> {
    let ips: Vec<IpAddr> = match url.host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => tokio::net::lookup_host((url.host.as_str(), url.port))
            .await
            .map_err(|_| Refusal::Unresolvable)?
            .map(|a| a.ip())
            .collect(),
    };
    reach.check_addrs(&ips)?;
    Ok(SocketAddr::new(ips[0], url.port))
}

/// Sends the request to `addr` (and nowhere else): on an idle keep-alive connection to that
/// address and server name when there is one, else on a new one. A reused connection that fails
/// before an answer (the receiver closed it while idle) is replaced by a new one at once, as Go's
/// HTTP client does for requests that carry an idempotency key: the receiver may see the message
/// twice with the same `idempotency-key`, which at-least-once delivery allows anyway.
async fn post(
    conns: &Connections,
    addr: SocketAddr,
    url: &CallbackUrl,
    headers: &[(&str, String)],
    body: Bytes,
) -> Result<Answered, Attempt> {
    let key = Key {
        addr,
        tls_name: url.tls.then(|| url.host.clone()),
    };
    let Some(req) = request(url, headers, &body) else {
        return Err(Outcome::Rejected.into());
    };
    let req = match conns.idle.take(&key) {
        Some(mut sender) => match sender.try_send_request(req).await {
            Ok(answer) => {
                return Ok(Answered {
                    key,
                    sender,
                    answer,
                })
            }
            Err(mut e) => match e.take_message() {
                Some(req) => req,
                // Sent, but the connection closed before any answer: the receiver closed it
                // while idle. Any other failure (a malformed answer) is the attempt's outcome.
                None if e.error().is_incomplete_message() || e.error().is_canceled() => {
                    match request(url, headers, &body) {
                        Some(req) => req,
                        None => return Err(Outcome::Rejected.into()),
                    }
                }
                None => return Err(Outcome::ConnectError.into()),
            },
        },
        None => req,
    };
    let peer = HttpPeer::new(addr, url.tls, url.host.clone());
    let Ok(stream) = conns.connector.new_stream(&peer).await else {
        return Err(Outcome::ConnectError.into());
    };
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    else {
        return Err(Outcome::ConnectError.into());
    };
    tokio::spawn(conn);
    match sender.send_request(req).await {
        Ok(answer) => Ok(Answered {
            key,
            sender,
            answer,
        }),
        Err(_) => Err(Outcome::ConnectError.into()),
    }
}

/// The POST itself.
fn request(
    url: &CallbackUrl,
    headers: &[(&str, String)],
    body: &Bytes,
) -> Option<hyper::Request<Full<Bytes>>> {
    let mut req = hyper::Request::post(url.path.as_str())
        .header("host", url.authority.as_str())
        .header("content-type", "application/json")
        .header(
            "user-agent",
            concat!("botbridge/", env!("CARGO_PKG_VERSION")),
        );
    for (name, value) in headers {
        req = req.header(*name, value.as_str());
    }
    req.body(Full::new(body.clone())).ok()
}

/// An answer's head, on the connection it came on.
struct Answered {
    key: Key,
    sender: keepalive::Sender,
    answer: hyper::Response<hyper::body::Incoming>,
}

impl Answered {
    /// The attempt's outcome (its status alone, as before connections were kept), once its body is
    /// read and the connection filed as idle if it can take another request. That waits at most
    /// [`KEEP_INLINE`] (a complete answer takes far less), then goes on in a task of its own for
    /// at most [`KEEP_WITHIN`]: a receiver that trickles or withholds its body, or stops reading the
    /// request, only loses its connection, never changes the outcome.
    async fn finish(self, idle: &Arc<IdlePool>) -> Attempt {
        let Answered {
            key,
            mut sender,
            answer,
        } = self;
        let attempt = classify(answer.status().as_u16(), answer.headers());
        let mut reuse = Box::pin(async move {
            let read = Limited::new(answer.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await;
            (read.is_ok() && sender.ready().await.is_ok()).then_some(sender)
        });
        match tokio::time::timeout(KEEP_INLINE, &mut reuse).await {
            Ok(Some(sender)) => idle.put(key, sender),
            Ok(None) => {}
            Err(_) => {
                let idle = idle.clone();
                tokio::spawn(async move {
                    if let Ok(Some(sender)) = tokio::time::timeout(KEEP_WITHIN, reuse).await {
                        idle.put(key, sender);
                    }
                });
            }
        }
        attempt
    }
}

/// How long a delivery waits for the rest of an answer before leaving it to a task.
const KEEP_INLINE: Duration = Duration::from_millis(100);
/// How long the rest of an answer may take for its connection to be kept.
const KEEP_WITHIN: Duration = Duration::from_secs(2);

/// A receiver's answer body longer than this closes the connection instead of being read to its end.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// What a receiver's status means for the delivery.
fn classify(status: u16, headers: &http::HeaderMap) -> Attempt {
    let outcome = match status {
        200..=299 => Outcome::Delivered,
        300..=399 => Outcome::Redirect,
        429 => Outcome::Status429,
        408 | 500..=599 => Outcome::Status5xx,
        _ => Outcome::Rejected,
    };
    let retry_after = (outcome.retryable())
        .then(|| headers.get("retry-after"))
        .flatten()
        .and_then(|v| retry_after(v.as_bytes()));
    Attempt {
        outcome,
        retry_after,
    }
}

/// `Retry-After` in delay-seconds. An HTTP-date is not read (receivers that send one get the usual
/// backoff), and a delay is capped at a day so a bogus value cannot park a delivery forever (the
/// message deadline still applies).
fn retry_after(v: &[u8]) -> Option<Duration> {
    let secs: u64 = std::str::from_utf8(v).ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs.min(86_400)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_and_retry_after_read() {
        let mut h = http::HeaderMap::new();
        h.insert("retry-after", "3".parse().unwrap());
        let a = classify(429, &h);
        assert_eq!(a.outcome, Outcome::Status429);
        assert_eq!(a.retry_after, Some(Duration::from_secs(3)));
        assert_eq!(classify(503, &h).outcome, Outcome::Status5xx);
        assert_eq!(classify(204, &h).retry_after, None);
        assert_eq!(classify(302, &h).outcome, Outcome::Redirect);
        assert!(!Outcome::Redirect.retryable());
        assert_eq!(classify(404, &h).outcome, Outcome::Rejected);
        h.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(classify(503, &h).retry_after, None);
    }
}
