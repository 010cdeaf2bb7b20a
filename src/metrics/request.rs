//! The request path's metrics and access log: the handles of each route resolved once per
//! configuration (so the common request hashes no labels), and the record of one request.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus::{Histogram, IntCounter};

use super::{status_class, Metrics, NO_ROUTE};
use crate::config::{Config, Route};
use crate::dialect::Caller;
use crate::error::Reason;

/// The metric handles of one (caller dialect, backend) pair of a route.
struct PairMetrics {
    ingress: Caller,
    backend: usize,
    ok_from_backend: IntCounter,
    duration: Histogram,
    backend_duration: Histogram,
}

/// A route's metric handles, made (and its series created) at the route's first request: a route
/// nobody calls holds no series at all. With 10,000 routes, creating every route's ~40 series up
/// front took ~40 KB per route (bench/scale.py).
#[derive(Default)]
pub struct LazyRouteMetrics(OnceLock<RouteMetrics>);

impl LazyRouteMetrics {
    /// The handles of route `r` (index `route` of `config`), made now if this is its first request.
    fn get(&self, m: &Metrics, config: &Config, route: usize) -> &RouteMetrics {
        self.0
            .get_or_init(|| RouteMetrics::new(m, config, &config.routes[route]))
    }
}

/// A route's metric handles.
pub struct RouteMetrics {
    request_bytes: Histogram,
    answer_bytes: Histogram,
    pairs: Vec<PairMetrics>,
}

impl RouteMetrics {
    /// Creates a route's series (at zero) and resolves its handles.
    pub fn new(m: &Metrics, config: &Config, r: &Route) -> Self {
        let reach = r.backends();
        let backends: Vec<&str> = reach
            .iter()
            .map(|&b| config.backends[b].name.as_str())
            .collect();
        let mut dialects: Vec<&str> = reach
            .iter()
            .map(|&b| config.backends[b].bot.dialect())
            .collect();
        dialects.sort_unstable();
        dialects.dedup();
        for &b in &reach {
            let backend = &config.backends[b];
            m.register_backend(&backend.name);
            if backend.bot.conversations().is_some() {
                crate::conversations::ConversationStore::register_backend(&backend.name);
            }
            if backend.token_endpoint.is_some() {
                crate::tokens::register_backend(&backend.name);
            }
        }
        let mut pairs = Vec::new();
        for &ingress in &r.ingress {
            m.register_route(&r.name, ingress.as_str(), &dialects, &backends);
            for &b in &reach {
                let bd = config.backends[b].bot.dialect();
                let labels = [r.name.as_str(), ingress.as_str(), bd, "2xx", "backend"];
                pairs.push(PairMetrics {
                    ingress,
                    backend: b,
                    ok_from_backend: m.requests.with_label_values(&labels),
                    duration: m.request_duration.with_label_values(&labels[..3]),
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

    fn pair(&self, ingress: Caller, backend: usize) -> Option<&PairMetrics> {
        self.pairs
            .iter()
            .find(|p| p.ingress == ingress && p.backend == backend)
    }
}

/// What one request did, for the access log and metrics.
#[derive(Debug, Default)]
pub struct AccessRecord {
    pub route: Option<usize>,
    pub ingress: Option<Caller>,
    pub backend: Option<usize>,
    pub request_id: Option<String>,
    pub bytes_in: usize,
    pub backend_time: Option<Duration>,
    pub error: Option<Reason>,
    /// Whether the answer came from the backend (translated) rather than from the proxy alone.
    pub from_backend: bool,
    /// How long the caller should wait, when the backend's circuit is open.
    pub retry_after: Option<Duration>,
    /// The request's trace id, with `[tracing]` (the line then says `trace_id=`).
    pub trace_id: Option<String>,
}

/// The label values of one record.
struct Labels<'a> {
    route: &'a str,
    ingress: &'static str,
    backend_dialect: &'static str,
    class: &'static str,
    source: &'static str,
}

impl AccessRecord {
    /// Counts the request and writes its access log line.
    pub fn record(
        &self,
        m: &Metrics,
        config: &Config,
        routes: &[LazyRouteMetrics],
        status: u16,
        bytes_out: usize,
        took: Duration,
    ) {
        let l = self.labels(config, status);
        let route = self.route.map(|r| routes[r].get(m, config, r));
        let hot = match (route, self.ingress, self.backend) {
            (Some(r), Some(i), Some(b)) => r.pair(i, b),
            _ => None,
        };
        match hot {
            Some(p) => self.observe_hot(m, p, &l, took),
            None => self.observe_cold(m, config, &l, took),
        }
        match route {
            Some(r) => {
                r.request_bytes.observe(self.bytes_in as f64);
                r.answer_bytes.observe(bytes_out as f64);
            }
            None => {
                m.request_bytes
                    .with_label_values(&[l.route])
                    .observe(self.bytes_in as f64);
                m.answer_bytes
                    .with_label_values(&[l.route])
                    .observe(bytes_out as f64);
            }
        }
        if let Some(reason) = self.error {
            m.request_errors
                .with_label_values(&[l.route, reason.as_str()])
                .inc();
        }
        self.log(config, &l, status, bytes_out, took);
    }

    fn labels<'c>(&self, config: &'c Config, status: u16) -> Labels<'c> {
        let (route, backend_dialect) = match self.route {
            Some(i) => {
                let r = &config.routes[i];
                let bd = self
                    .backend
                    .or_else(|| r.default_target.as_ref().map(|t| t.backend))
                    .map_or("none", |b| config.backends[b].bot.dialect());
                (r.name.as_str(), bd)
            }
            None => (NO_ROUTE, "none"),
        };
        Labels {
            route,
            ingress: self.ingress.map_or("none", Caller::as_str),
            backend_dialect,
            class: status_class(status),
            source: if self.from_backend {
                "backend"
            } else {
                "proxy"
            },
        }
    }

    /// The common case, a 2xx translated from a backend, uses handles resolved at load.
    fn observe_hot(&self, m: &Metrics, p: &PairMetrics, l: &Labels<'_>, took: Duration) {
        if l.class == "2xx" && self.from_backend {
            p.ok_from_backend.inc();
        } else {
            m.requests
                .with_label_values(&[l.route, l.ingress, l.backend_dialect, l.class, l.source])
                .inc();
        }
        p.duration.observe(took.as_secs_f64());
        if let Some(t) = self.backend_time {
            p.backend_duration.observe(t.as_secs_f64());
        }
    }

    /// Everything else looks its series up by labels.
    fn observe_cold(&self, m: &Metrics, config: &Config, l: &Labels<'_>, took: Duration) {
        m.requests
            .with_label_values(&[l.route, l.ingress, l.backend_dialect, l.class, l.source])
            .inc();
        m.request_duration
            .with_label_values(&[l.route, l.ingress, l.backend_dialect])
            .observe(took.as_secs_f64());
        if let (Some(b), Some(t)) = (self.backend, self.backend_time) {
            m.backend_duration
                .with_label_values(&[l.route, &config.backends[b].name])
                .observe(t.as_secs_f64());
        }
    }

    fn log(&self, config: &Config, l: &Labels<'_>, status: u16, bytes_out: usize, took: Duration) {
        let backend = self
            .backend
            .map_or("-", |b| config.backends[b].name.as_str());
        let reason = self.error.map_or("-", |r| r.as_str());
        let request_id = self.request_id.as_deref().unwrap_or("-");
        let duration_ms = took.as_secs_f64() * 1e3;
        let backend_ms = self.backend_time.map_or(0.0, |t| t.as_secs_f64() * 1e3);
        // Two lines of one shape: a field set is fixed per call site, and without tracing the
        // line stays as it always was.
        match &self.trace_id {
            None => tracing::info!(
                target: crate::log_line::ACCESS_TARGET,
                request_id, route = l.route, ingress = l.ingress, backend,
                backend_dialect = l.backend_dialect, status, reason, duration_ms, backend_ms,
                bytes_in = self.bytes_in, bytes_out,
            ),
            Some(trace_id) => tracing::info!(
                target: crate::log_line::ACCESS_TARGET,
                request_id, route = l.route, ingress = l.ingress, backend,
                backend_dialect = l.backend_dialect, status, reason, duration_ms, backend_ms,
                bytes_in = self.bytes_in, bytes_out, trace_id = trace_id.as_str(),
            ),
        }
    }
}
