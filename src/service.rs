//! The public listener: the chat request path, read top to bottom in [`ChatService::serve`].
//!
//! read and bound → route → authenticate → parse → pick the backend → translate → sign → forward →
//! translate back → answer → record. Nothing reaches a backend before the whole body was read,
//! authenticated, validated and translated; every error is rendered in the caller's dialect.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::protocols::http::ServerSession;

use arc_swap::ArcSwap;

use crate::authn::Authenticator;
use crate::config::{Config, Route};
use crate::dialect::{self, AnswerContext, BackendRequestContext, IngressDialect};
use crate::error::{ProxyError, Reason};
use crate::httpio::{self, Answer, BodyError, Handler};
use crate::metrics::{self, Metrics};
use crate::model::request_id_is_sane;
use crate::upstream::{self, RequestBytes, Upstream};
use prometheus::{Histogram, IntCounter};

const REQUEST_ID: &str = "x-request-id";

/// The wall clock the request path reads: once per request, for signing and timestamps. Tests pass
/// their own to check time-dependent rules (signature tolerance) without waiting.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// The chat listener's state: configuration, backend peers and the upstream pool.
pub struct ChatService {
    runtime: Arc<ArcSwap<Runtime>>,
    clock: Clock,
    upstream: Upstream,
    metrics: &'static Metrics,
    next_message_id: AtomicU64,
    user_agent: String,
}

/// Everything the request path reads that a configuration reload replaces, swapped as one.
pub struct Runtime {
    /// The validated configuration.
    pub config: Arc<Config>,
    routes_by_path: HashMap<String, usize>,
    peers: Vec<upstream::BackendPeer>,
    /// Caller authentication, with its own (fresh) auth service decision cache.
    pub authn: Arc<Authenticator>,
    route_metrics: Vec<RouteMetrics>,
}

/// The metric handles of one (ingress dialect, backend) pair of a route.
struct PairMetrics {
    ingress: IngressDialect,
    backend: usize,
    ok_from_backend: IntCounter,
    duration: Histogram,
    backend_duration: Histogram,
}

/// A route's metric handles, resolved once per configuration so the common request hashes no labels.
struct RouteMetrics {
    request_bytes: Histogram,
    answer_bytes: Histogram,
    pairs: Vec<PairMetrics>,
}

impl RouteMetrics {
    fn new(m: &Metrics, config: &Config, r: &Route) -> Self {
        let mut pairs = Vec::new();
        let backends = r.backends();
        for ingress in [IngressDialect::Haptik, IngressDialect::Csml] {
            if !r.ingress.accepts(ingress) {
                continue;
            }
            for &b in &backends {
                let bd = config.backends[b].spec.dialect().as_str();
                pairs.push(PairMetrics {
                    ingress,
                    backend: b,
                    ok_from_backend: m.requests.with_label_values(&[
                        &r.name,
                        ingress.as_str(),
                        bd,
                        "2xx",
                        "backend",
                    ]),
                    duration: m.request_duration.with_label_values(&[
                        &r.name,
                        ingress.as_str(),
                        bd,
                    ]),
                    backend_duration: m
                        .backend_duration
                        .with_label_values(&[&r.name, &config.backends[b].name]),
                });
            }
        }
        RouteMetrics {
            request_bytes: m.request_bytes.with_label_values(&[&r.name]),
            answer_bytes: m.answer_bytes.with_label_values(&[&r.name]),
            pairs,
        }
    }

    fn pair(&self, ingress: IngressDialect, backend: usize) -> Option<&PairMetrics> {
        self.pairs
            .iter()
            .find(|p| p.ingress == ingress && p.backend == backend)
    }
}

impl Runtime {
    /// Builds the runtime of a configuration and creates its metric series. On a reload, `previous`
    /// is the runtime being replaced (it hands over what must outlive a reload, the replay guard).
    pub fn new(config: Arc<Config>, previous: Option<&Runtime>) -> Self {
        let metrics = Metrics::global();
        for b in &config.backends {
            metrics.register_backend(&b.name);
        }
        for r in &config.routes {
            let reach = r.backends();
            let backends: Vec<&str> = reach
                .iter()
                .map(|&b| config.backends[b].name.as_str())
                .collect();
            let mut dialects: Vec<&str> = reach
                .iter()
                .map(|&b| config.backends[b].spec.dialect().as_str())
                .collect();
            dialects.sort_unstable();
            dialects.dedup();
            for ingress in [IngressDialect::Haptik, IngressDialect::Csml] {
                if r.ingress.accepts(ingress) {
                    metrics.register_route(&r.name, ingress.as_str(), &dialects, &backends);
                }
            }
        }
        Runtime {
            routes_by_path: config
                .routes
                .iter()
                .enumerate()
                .map(|(i, r)| (r.path.clone(), i))
                .collect(),
            peers: config
                .backends
                .iter()
                .map(|b| upstream::peer_for(&b.endpoint))
                .collect(),
            authn: Arc::new(Authenticator::new(
                config.clone(),
                previous.map(|p| &*p.authn),
            )),
            route_metrics: config
                .routes
                .iter()
                .map(|r| RouteMetrics::new(metrics, &config, r))
                .collect(),
            config,
        }
    }

    fn route(&self, idx: usize) -> &Route {
        &self.config.routes[idx]
    }
}

/// What one request did, for the access log and metrics.
struct Outcome {
    route: Option<usize>,
    ingress: Option<IngressDialect>,
    backend: Option<usize>,
    request_id: Option<String>,
    bytes_in: usize,
    backend_time: Option<Duration>,
    error: Option<Reason>,
    /// Whether the answer came from the backend (translated) rather than from the proxy alone.
    from_backend: bool,
}

impl ChatService {
    /// Builds the service on a (reloadable) runtime, on the system clock.
    pub fn new(runtime: Arc<ArcSwap<Runtime>>) -> Self {
        Self::with_clock(runtime, Arc::new(SystemTime::now))
    }

    /// Builds the service on a (reloadable) runtime and the given wall clock.
    pub fn with_clock(runtime: Arc<ArcSwap<Runtime>>, clock: Clock) -> Self {
        let server = runtime.load().config.server.clone();
        let start_id = clock()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        ChatService {
            upstream: Upstream::new(server.upstream_pool_size, server.max_answer_bytes),
            metrics: Metrics::global(),
            next_message_id: AtomicU64::new(start_id),
            user_agent: format!("botbridge/{}", env!("CARGO_PKG_VERSION")),
            runtime,
            clock,
        }
    }
    /// The request path. Returns the answer body on success.
    async fn serve(
        &self,
        rt: &Runtime,
        session: &mut ServerSession,
        out: &mut Outcome,
        arrived: Instant,
    ) -> Result<Vec<u8>, ProxyError> {
        // The wall clock is read once; later wall-clock times are derived from the monotonic clock
        // reads the request makes anyway.
        let received = (self.clock)();
        // The caller's dialect as its headers tell it (refusals before routing use it too).
        let req_header = session.req_header();
        let header = |name: &str| req_header.headers.get(name).map(|v| v.as_bytes());
        let by_headers = dialect::detect(
            header("x-api-key").is_some(),
            header(http::header::AUTHORIZATION.as_str()),
            None,
        );
        out.ingress = by_headers;
        // Route by path.
        let route_idx = *rt
            .routes_by_path
            .get(req_header.uri.path())
            .ok_or_else(|| ProxyError::new(404, Reason::NotFound, "no route for this path"))?;
        out.route = Some(route_idx);
        let route = rt.route(route_idx);
        out.ingress = route.ingress.fixed().or(by_headers);
        if req_header.method != http::Method::POST {
            return Err(ProxyError::new(
                405,
                Reason::MethodNotAllowed,
                "only POST is allowed here",
            ));
        }
        out.request_id = Some(request_id(req_header));
        let json = is_json(header(http::header::CONTENT_TYPE.as_str()));

        // A caller that sent no credential header at all on a route that takes either dialect: the
        // body's shape tells which dialect to refuse it in.
        let mut body = None;
        let ingress = match out.ingress {
            Some(d) => d,
            None => {
                let b = self
                    .read_body(session, json, rt.config.server.max_body_bytes, out)
                    .await?;
                let d = dialect::detect(false, None, Some(&b)).ok_or_else(|| {
                    ProxyError::bad_request(
                        "cannot tell the request's dialect: send Haptik (Authorization: Bearer + client-id) \
                         or CSML (x-api-key [+ x-api-signature])",
                    )
                })?;
                out.ingress = Some(d);
                body = Some(b);
                d
            }
        };

        // Authenticate from the headers alone: no body is read for a caller we do not know.
        let req_header = session.req_header();
        let caller = rt
            .authn
            .authenticate(ingress, req_header, unix_secs(received))
            .await?;
        tracing::trace!(caller = &*caller.name, "caller authenticated");

        // Read and bound the whole body, then parse it.
        let body = match body {
            Some(b) => b,
            None => {
                self.read_body(session, json, rt.config.server.max_body_bytes, out)
                    .await?
            }
        };
        if rt.config.log.message_bodies {
            tracing::trace!(target: "botbridge::messages", request_id = out.request_id.as_deref(), from = "caller", body = %String::from_utf8_lossy(&body));
        }
        let mut req = ingress
            .parse_request(&body)
            .inspect_err(|_| self.translation_error(route, "invalid_request", 1))?;
        ingress.settle_business(&mut req, caller.business_id, route.business_id);
        if let Some(rid) = req.caller_request_id() {
            out.request_id = Some(rid.to_owned());
        }

        // Pick the backend, translate and sign.
        let target = route.target(req.business_id).ok_or_else(|| {
            ProxyError::new(400, Reason::UnknownTarget, "invalid business_id provided")
        })?;
        // Least privilege: the credential reaches only its routes and businesses.
        caller
            .scope
            .check(&route.name, req.business_id)
            .inspect_err(|d| rt.authn.denied(ingress, d.reason))?;
        out.backend = Some(target.backend);
        let backend = &rt.config.backends[target.backend];
        let request_id = out.request_id.as_deref().unwrap_or_default();
        let upstream_body = backend
            .spec
            .render_request(
                &req,
                &BackendRequestContext {
                    request_id,
                    business_id: req.business_id,
                    flow_trigger: route.flow_trigger,
                },
            )
            .inspect_err(|_| self.translation_error(route, "untranslatable", 1))?;
        // Signed at the moment of sending, after the caller's body has been read. Header values are
        // checked when the configuration is loaded and request ids when they arrive.
        let started = Instant::now();
        let signed_at = unix_secs(received + started.saturating_duration_since(arrived));
        let mut up = RequestBytes::post(&backend.endpoint.path, upstream_body.len());
        up.header("host", &backend.endpoint.authority)
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .header("user-agent", &self.user_agent)
            .header(REQUEST_ID, request_id);
        backend.spec.auth_headers(signed_at, |name, value| {
            up.header(name, value);
        });
        let request = up.body(&upstream_body);

        // Forward.
        let result = self
            .upstream
            .exchange(
                &rt.peers[target.backend],
                &backend.endpoint,
                &request,
                started,
            )
            .await;
        out.backend_time = Some(started.elapsed());
        let exchange = result
            .map_err(ProxyError::from)
            .inspect_err(|e| self.backend_error(rt, target.backend, e.reason))?;
        out.from_backend = true;

        // Translate the answer back.
        let answer = backend
            .spec
            .parse_answer(exchange.status, &exchange.body, ingress)
            .inspect_err(|e| {
                self.backend_error(rt, target.backend, e.reason);
                if e.reason == Reason::BackendBadAnswer {
                    self.translation_error(route, "invalid_answer", 1);
                }
            })?;
        if rt.config.log.message_bodies {
            tracing::trace!(target: "botbridge::messages", request_id, from = "backend", body = %String::from_utf8_lossy(&exchange.body));
        }
        if answer.dropped > 0 && !ingress.passes_through(&answer, route.haptik_answer) {
            self.translation_error(route, "dropped_message", answer.dropped as u64);
            tracing::debug!(
                dropped = answer.dropped,
                "backend messages with no rendering for this caller"
            );
        }
        let ids = ingress.ids_needed(&answer);
        // Only CSML answers carry an interaction id and a channel (the business, else the route).
        let (interaction_id, channel_id) = match ingress {
            IngressDialect::Csml => (
                uuid::Uuid::new_v4().to_string(),
                req.business_id
                    .map_or_else(|| route.name.clone(), |b| b.to_string()),
            ),
            IngressDialect::Haptik => (String::new(), String::new()),
        };
        let ctx = AnswerContext {
            message_id: self.next_message_id.fetch_add(ids, Ordering::Relaxed),
            received,
            request_id,
            interaction_id: &interaction_id,
            business_name: &target.business_name,
            bot_name: &route.bot_name,
            channel_id: &channel_id,
            shape: route.haptik_answer,
        };
        Ok(ingress.render_answer(&req, &answer, &ctx))
    }

    /// Checks the content type, then reads the whole body up to the limit.
    async fn read_body(
        &self,
        session: &mut ServerSession,
        json: bool,
        limit: usize,
        out: &mut Outcome,
    ) -> Result<Bytes, ProxyError> {
        if !json {
            return Err(ProxyError::new(
                415,
                Reason::UnsupportedMediaType,
                "Content-Type must be application/json",
            ));
        }
        let body = httpio::read_body(session, limit)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge => ProxyError::new(
                    413,
                    Reason::BodyTooLarge,
                    format!("the request body is larger than {limit} bytes"),
                ),
                BodyError::Io(_) => ProxyError::bad_request("the request body could not be read"),
            })?;
        out.bytes_in = body.len();
        Ok(body)
    }

    fn translation_error(&self, route: &Route, reason: &str, n: u64) {
        self.metrics
            .translation_errors
            .with_label_values(&[&route.name, reason])
            .inc_by(n);
    }

    fn backend_error(&self, rt: &Runtime, backend: usize, reason: Reason) {
        self.metrics
            .backend_errors
            .with_label_values(&[&rt.config.backends[backend].name, reason.as_str()])
            .inc();
    }

    fn record(&self, rt: &Runtime, out: &Outcome, status: u16, bytes_out: usize, took: Duration) {
        let m = self.metrics;
        let ingress = out.ingress.map_or("none", IngressDialect::as_str);
        let (route, bd) = match out.route {
            Some(i) => {
                let r = rt.route(i);
                let bd = out
                    .backend
                    .or_else(|| r.default_target.as_ref().map(|t| t.backend))
                    .map_or("none", |b| rt.config.backends[b].spec.dialect().as_str());
                (r.name.as_str(), bd)
            }
            None => (metrics::NO_ROUTE, "none"),
        };
        let source = if out.from_backend { "backend" } else { "proxy" };
        let class = metrics::status_class(status);
        // The common case, a 2xx translated from a backend, uses handles resolved at load;
        // everything else looks its series up by labels.
        let hot = match (out.route, out.ingress, out.backend) {
            (Some(r), Some(i), Some(b)) => rt.route_metrics[r].pair(i, b),
            _ => None,
        };
        match hot {
            Some(p) => {
                if class == "2xx" && out.from_backend {
                    p.ok_from_backend.inc();
                } else {
                    m.requests
                        .with_label_values(&[route, ingress, bd, class, source])
                        .inc();
                }
                p.duration.observe(took.as_secs_f64());
                if let Some(t) = out.backend_time {
                    p.backend_duration.observe(t.as_secs_f64());
                }
            }
            None => {
                m.requests
                    .with_label_values(&[route, ingress, bd, class, source])
                    .inc();
                m.request_duration
                    .with_label_values(&[route, ingress, bd])
                    .observe(took.as_secs_f64());
                if let (Some(b), Some(t)) = (out.backend, out.backend_time) {
                    m.backend_duration
                        .with_label_values(&[route, &rt.config.backends[b].name])
                        .observe(t.as_secs_f64());
                }
            }
        }
        match out.route {
            Some(r) => {
                rt.route_metrics[r]
                    .request_bytes
                    .observe(out.bytes_in as f64);
                rt.route_metrics[r].answer_bytes.observe(bytes_out as f64);
            }
            None => {
                m.request_bytes
                    .with_label_values(&[route])
                    .observe(out.bytes_in as f64);
                m.answer_bytes
                    .with_label_values(&[route])
                    .observe(bytes_out as f64);
            }
        }
        if let Some(reason) = out.error {
            m.request_errors
                .with_label_values(&[route, reason.as_str()])
                .inc();
        }
        tracing::info!(
            target: "botbridge::access",
            request_id = out.request_id.as_deref().unwrap_or("-"),
            route,
            ingress,
            backend = out.backend.map_or("-", |b| rt.config.backends[b].name.as_str()),
            backend_dialect = bd,
            status,
            reason = out.error.map_or("-", |r| r.as_str()),
            duration_ms = took.as_secs_f64() * 1e3,
            backend_ms = out.backend_time.map_or(0.0, |t| t.as_secs_f64() * 1e3),
            bytes_in = out.bytes_in,
            bytes_out,
        );
    }
}

#[async_trait]
impl Handler for ChatService {
    async fn handle(&self, session: &mut ServerSession) -> Answer {
        let started = Instant::now();
        let _in_flight = InFlight::enter(self.metrics);
        let mut out = Outcome {
            route: None,
            ingress: None,
            backend: None,
            request_id: None,
            bytes_in: 0,
            backend_time: None,
            error: None,
            from_backend: false,
        };
        let rt = self.runtime.load_full();
        let result = self.serve(&rt, session, &mut out, started).await;
        let mut answer = match result {
            Ok(body) => Answer::json(200, body),
            Err(err) => {
                out.error = Some(err.reason);
                let body = match out.ingress {
                    Some(d) => d.render_error(&err),
                    None => dialect::render_error_for_either(&err),
                };
                let mut a = Answer::json(err.status, body);
                if err.reason == Reason::MethodNotAllowed {
                    a = a.with_header("allow", "POST");
                }
                // An unread body must be drained before the connection can serve another request;
                // one already found oversized is not read any further.
                if err.reason == Reason::BodyTooLarge {
                    a.keepalive = false;
                } else if !session.is_body_done() {
                    a.keepalive =
                        httpio::discard_body(session, rt.config.server.max_body_bytes).await;
                }
                a
            }
        };
        self.record(
            &rt,
            &out,
            answer.status,
            answer.body.len(),
            started.elapsed(),
        );
        if let Some(id) = out.request_id {
            answer = answer.with_header(REQUEST_ID, id);
        }
        answer
    }
}

/// Counts a request in flight for as long as it lives, even if its future is dropped.
struct InFlight(&'static Metrics);

impl InFlight {
    fn enter(m: &'static Metrics) -> Self {
        m.in_flight.inc();
        InFlight(m)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

/// The caller's `X-Request-Id` if it is sane (1–128 visible ASCII characters), else a new UUID.
fn request_id(req: &RequestHeader) -> String {
    req.headers
        .get(REQUEST_ID)
        .map(|v| v.as_bytes())
        .filter(|v| request_id_is_sane(v))
        .and_then(|v| std::str::from_utf8(v).ok())
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Whether a Content-Type header declares JSON (`application/json`, any parameters).
fn is_json(content_type: Option<&[u8]>) -> bool {
    let Some(ct) = content_type else { return false };
    let essence = ct
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    essence.eq_ignore_ascii_case(b"application/json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types() {
        assert!(is_json(Some(b"application/json")));
        assert!(is_json(Some(b"Application/JSON; charset=utf-8")));
        assert!(!is_json(Some(b"text/plain")));
        assert!(!is_json(Some(b"application/x-www-form-urlencoded")));
        assert!(!is_json(None));
    }
}
