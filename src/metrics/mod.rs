//! The proxy's Prometheus metrics, registered once in the default registry.
//!
//! Label values are bounded: configured route and backend names (or `none`), dialect names, status
//! classes (`2xx` … `5xx`), `source` (`proxy` for answers the proxy made itself, `backend` for
//! translated backend answers) and the fixed [`Reason`] set. Nothing from a request ever becomes a
//! label. Units are base units (seconds, bytes).

use std::sync::OnceLock;

use prometheus::{
    register_histogram, register_histogram_vec, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec, Histogram, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
};

mod client;
pub mod migration;
mod pool;
mod request;
pub mod shared;

pub use client::{ClientMetrics, CloseReason};
pub use pool::{EndpointMetrics, PoolMetrics};
pub use request::{AccessRecord, LazyRouteMetrics, RouteMetrics};

use crate::auth::AuthReason;
use crate::error::Reason;

/// Auth service latency buckets: sub-millisecond to a few seconds.
pub const AUTH_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Latency buckets for chat traffic: a few milliseconds to tens of seconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
];

/// Body-size buckets, bytes.
pub const SIZE_BUCKETS: &[f64] = &[
    64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0,
];

/// The route label for requests that matched no route.
pub const NO_ROUTE: &str = "none";

/// All the proxy's metrics.
pub struct Metrics {
    /// `botbridge_requests_total{route, ingress, backend_dialect, status_class, source}`
    pub requests: IntCounterVec,
    /// `botbridge_request_duration_seconds{route, ingress, backend_dialect}`
    pub request_duration: HistogramVec,
    /// `botbridge_backend_duration_seconds{route, backend}`
    pub backend_duration: HistogramVec,
    /// `botbridge_request_errors_total{route, reason}`: requests answered with an error, by reason.
    pub request_errors: IntCounterVec,
    /// `botbridge_backend_errors_total{backend, reason}`: connect, timeout, status, bad answer.
    pub backend_errors: IntCounterVec,
    /// `botbridge_in_flight_requests`
    pub in_flight: IntGauge,
    /// `botbridge_request_body_bytes{route}`
    pub request_bytes: HistogramVec,
    /// `botbridge_answer_body_bytes{route}`
    pub answer_bytes: HistogramVec,
    /// `botbridge_auth_decisions_total{dialect, result, reason}`: result `allowed`, `denied` or
    /// `error`; reason `ok`, `stale` or an [`AuthReason`].
    pub auth_decisions: IntCounterVec,
    /// `botbridge_auth_cache_requests_total{result}`: `hit` or `miss`.
    pub auth_cache_requests: IntCounterVec,
    /// `botbridge_auth_cache_evictions_total{cause}`: `expired`, `size`, `explicit`, `replaced`.
    pub auth_cache_evictions: IntCounterVec,
    /// `botbridge_auth_service_duration_seconds`
    pub auth_service_duration: Histogram,
    /// `botbridge_auth_service_errors_total{reason}`: `connect`, `timeout`, `status`, `bad_answer`.
    pub auth_service_errors: IntCounterVec,
    /// `botbridge_config_reloads_total{result}`: `ok` or `error`.
    pub config_reloads: IntCounterVec,
    /// `botbridge_config_rollbacks_total{result}`: `ok`, `unknown` (no such configuration kept) or
    /// `error` (it no longer loads or needs a restart).
    pub config_rollbacks: IntCounterVec,
    /// `botbridge_config_info{hash}`: 1 for the configuration running (its SHA-256's first 12 hex
    /// digits; one series at a time), with `botbridge_config_loaded_timestamp_seconds`.
    pub config_info: IntGaugeVec,
    pub config_loaded: IntGauge,
    /// `botbridge_translation_errors_total{route, reason}`: see [`TRANSLATION_REASONS`].
    pub translation_errors: IntCounterVec,
    /// `botbridge_admin_refusals_total{reason}`: admin requests refused, see [`ADMIN_REFUSALS`].
    pub admin_refusals: IntCounterVec,
    /// The series of backend pools.
    pub pool: PoolMetrics,
}

/// Why the admin listener refused a request: a `Host` a tokenless listener does not answer
/// (`foreign_host`, 421), a cross-site request to a mutating endpoint (`cross_site`, 403) or a
/// missing or wrong `[admin] token` (`unauthorized`, 401).
pub const ADMIN_REFUSALS: [&str; 3] = ["foreign_host", "cross_site", "unauthorized"];

/// Why a translation failed or lost something: a caller body that cannot be parsed
/// (`invalid_request`), a request the backend's dialect cannot express (`untranslatable`), a backend
/// answer that is not valid in its dialect (`invalid_answer`), a backend message with no rendering in
/// the caller's dialect (`dropped_message`, counted per message).
pub const TRANSLATION_REASONS: [&str; 4] = [
    "invalid_request",
    "untranslatable",
    "invalid_answer",
    "dropped_message",
];

impl Metrics {
    /// The process-wide metrics (registered on first use).
    pub fn global() -> &'static Metrics {
        static M: OnceLock<Metrics> = OnceLock::new();
        M.get_or_init(|| {
            let build = register_int_gauge_vec!(
                "botbridge_build_info",
                "Always 1; the labels say which build is running.",
                &["version"]
            )
            .expect("register build_info");
            // The log writer counts on its own (it has no `Metrics`); registered with the rest.
            let dropped = Box::new(crate::log_writer::DROPPED_LINES.clone());
            prometheus::register(dropped).expect("register log_lines_dropped");
            build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
            Metrics {
                requests: register_int_counter_vec!(
                    "botbridge_requests_total",
                    "Requests answered, by route, dialects, status class and who made the answer.",
                    &[
                        "route",
                        "ingress",
                        "backend_dialect",
                        "status_class",
                        "source"
                    ]
                )
                .expect("register requests"),
                request_duration: register_histogram_vec!(
                    "botbridge_request_duration_seconds",
                    "Time from the request header to the last answer byte written.",
                    &["route", "ingress", "backend_dialect"],
                    LATENCY_BUCKETS.to_vec()
                )
                .expect("register request_duration"),
                backend_duration: register_histogram_vec!(
                    "botbridge_backend_duration_seconds",
                    "Time from contacting the backend to its whole answer read.",
                    &["route", "backend"],
                    LATENCY_BUCKETS.to_vec()
                )
                .expect("register backend_duration"),
                request_errors: register_int_counter_vec!(
                    "botbridge_request_errors_total",
                    "Requests answered with an error, by reason.",
                    &["route", "reason"]
                )
                .expect("register request_errors"),
                backend_errors: register_int_counter_vec!(
                    "botbridge_backend_errors_total",
                    "Failed backend exchanges, by reason.",
                    &["backend", "reason"]
                )
                .expect("register backend_errors"),
                in_flight: register_int_gauge!(
                    "botbridge_in_flight_requests",
                    "Requests being handled right now."
                )
                .expect("register in_flight"),
                request_bytes: register_histogram_vec!(
                    "botbridge_request_body_bytes",
                    "Size of request bodies read from callers.",
                    &["route"],
                    SIZE_BUCKETS.to_vec()
                )
                .expect("register request_bytes"),
                answer_bytes: register_histogram_vec!(
                    "botbridge_answer_body_bytes",
                    "Size of answer bodies written to callers.",
                    &["route"],
                    SIZE_BUCKETS.to_vec()
                )
                .expect("register answer_bytes"),
                auth_decisions: register_int_counter_vec!(
                    "botbridge_auth_decisions_total",
                    "Caller authentication decisions, by caller dialect, result and reason.",
                    &["dialect", "result", "reason"]
                )
                .expect("register auth_decisions"),
                auth_cache_requests: register_int_counter_vec!(
                    "botbridge_auth_cache_requests_total",
                    "Auth service decision cache look-ups, by result.",
                    &["result"]
                )
                .expect("register auth_cache_requests"),
                auth_cache_evictions: register_int_counter_vec!(
                    "botbridge_auth_cache_evictions_total",
                    "Auth service decisions removed from the cache, by cause.",
                    &["cause"]
                )
                .expect("register auth_cache_evictions"),
                auth_service_duration: register_histogram!(
                    "botbridge_auth_service_duration_seconds",
                    "Time to get an answer from the auth service.",
                    AUTH_BUCKETS.to_vec()
                )
                .expect("register auth_service_duration"),
                auth_service_errors: register_int_counter_vec!(
                    "botbridge_auth_service_errors_total",
                    "Failed auth service calls, by reason.",
                    &["reason"]
                )
                .expect("register auth_service_errors"),
                config_reloads: register_int_counter_vec!(
                    "botbridge_config_reloads_total",
                    "Configuration reloads (SIGHUP or POST /reload), by result.",
                    &["result"]
                )
                .expect("register config_reloads"),
                config_rollbacks: register_int_counter_vec!(
                    "botbridge_config_rollbacks_total",
                    "Rollbacks to an earlier configuration (POST /config/rollback), by result.",
                    &["result"]
                )
                .expect("register config_rollbacks"),
                config_info: register_int_gauge_vec!(
                    "botbridge_config_info",
                    "The configuration running: 1, labelled with the first 12 hex digits of its SHA-256.",
                    &["hash"]
                )
                .expect("register config_info"),
                config_loaded: register_int_gauge!(
                    "botbridge_config_loaded_timestamp_seconds",
                    "When the configuration running was loaded (Unix time)."
                )
                .expect("register config_loaded"),
                translation_errors: register_int_counter_vec!(
                    "botbridge_translation_errors_total",
                    "Requests or answers that could not be translated, and messages dropped in translation.",
                    &["route", "reason"]
                )
                .expect("register translation_errors"),
                admin_refusals: {
                    let c = register_int_counter_vec!(
                        "botbridge_admin_refusals_total",
                        "Admin listener requests refused, by reason.",
                        &["reason"]
                    )
                    .expect("register admin_refusals");
                    for r in ADMIN_REFUSALS {
                        c.with_label_values(&[r]);
                    }
                    c
                },
                pool: PoolMetrics::register(),
            }
        })
    }

    /// Creates the series of a route so they exist (at zero) before the first request.
    pub fn register_route(
        &self,
        route: &str,
        ingress: &str,
        backend_dialects: &[&str],
        backends: &[&str],
    ) {
        for bd in backend_dialects {
            self.request_duration
                .with_label_values(&[route, ingress, bd]);
            for class in ["2xx", "4xx", "5xx"] {
                for source in ["proxy", "backend"] {
                    self.requests
                        .with_label_values(&[route, ingress, bd, class, source]);
                }
            }
        }
        for b in backends {
            self.backend_duration.with_label_values(&[route, b]);
        }
        for r in Reason::ALL {
            self.request_errors.with_label_values(&[route, r.as_str()]);
        }
        self.request_bytes.with_label_values(&[route]);
        self.answer_bytes.with_label_values(&[route]);
        for r in TRANSLATION_REASONS {
            self.translation_errors.with_label_values(&[route, r]);
        }
    }

    /// Creates the auth series (all at zero) so dashboards see them before the first event. The
    /// auth cache and auth service series exist even without an auth service, so the shipped
    /// dashboard shows 0 rather than "no data".
    pub fn register_auth(&self, dialects: &[&str], with_service: bool) {
        for d in dialects {
            self.auth_decisions.with_label_values(&[d, "allowed", "ok"]);
            for r in AuthReason::ALL {
                self.auth_decisions
                    .with_label_values(&[d, r.result(), r.as_str()]);
            }
            if with_service {
                self.auth_decisions
                    .with_label_values(&[d, "allowed", "stale"]);
            }
        }
        for r in ["hit", "miss"] {
            self.auth_cache_requests.with_label_values(&[r]);
        }
        for c in ["expired", "size", "explicit", "replaced"] {
            self.auth_cache_evictions.with_label_values(&[c]);
        }
        for r in ["connect", "timeout", "status", "bad_answer"] {
            self.auth_service_errors.with_label_values(&[r]);
        }
    }

    /// Creates the error and pool series of a backend.
    pub fn register_backend(&self, backend: &str) {
        self.pool.register_backend(backend);
        for r in Reason::ALL.iter().filter(|r| r.is_backend()) {
            self.backend_errors
                .with_label_values(&[backend, r.as_str()]);
        }
    }
}

/// The status class label of a status code.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
