//! The metrics of rate limits, `max_in_flight` and the shared state on Redis, registered in the
//! default registry with every series created at zero (so dashboards and alerts see them even on an
//! instance without Redis).

use std::sync::OnceLock;

use prometheus::{
    register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge,
    HistogramVec, IntCounter, IntCounterVec, IntGauge,
};

use crate::config::redis::OnRedisError;

/// Redis call latency buckets: 100 µs to 1 s.
pub const REDIS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// The Redis operations (`op` label): a rate limit check, a replay guard entry, a cache clear
/// published, a conversation read or written, a channel's activities, the delivery journal, the
/// fleet's migration report.
pub const OPS: [&str; 7] = [
    "rate_limit",
    "replay_guard",
    "publish",
    "conversation",
    "channel",
    "journal",
    "migration",
];

/// Why a Redis call failed (`reason` label): no answer in `timeout_ms`, no connection, an error
/// answer, or (a journal write) fewer replicas than `wait_replicas` acknowledged it.
pub const REDIS_ERRORS: [&str; 4] = ["timeout", "connection", "response", "replicas"];

/// A feature that falls back when Redis fails (`feature` label).
#[derive(Debug, Clone, Copy)]
pub enum Feature {
    Limits,
    ReplayGuard,
    Conversations,
    Channels,
    Deliveries,
}

impl Feature {
    pub fn as_str(self) -> &'static str {
        match self {
            Feature::Limits => "limits",
            Feature::ReplayGuard => "replay_guard",
            Feature::Conversations => "conversations",
            Feature::Channels => "channels",
            Feature::Deliveries => "deliveries",
        }
    }
}

/// The metrics.
pub struct SharedMetrics {
    /// `botbridge_rate_limit_decisions_total{scope, result}`: `credential`/`user`, `allowed`/`limited`.
    pub limit_decisions: IntCounterVec,
    /// `botbridge_rate_limit_local_buckets`: buckets the in-process limiter holds (after its last sweep).
    pub local_buckets: IntGauge,
    /// `botbridge_rate_limit_bucket_overflows_total`: checks of users without a bucket of their own
    /// made against their credential's overflow bucket, the buckets being at `max_user_buckets`.
    pub bucket_overflows: IntCounter,
    /// `botbridge_backend_in_flight_refusals_total{backend}`: 503s because `max_in_flight` was reached.
    pub in_flight_refusals: IntCounterVec,
    /// `botbridge_redis_duration_seconds{op}`: Redis calls, failed ones included.
    pub redis_duration: HistogramVec,
    /// `botbridge_redis_errors_total{op, reason}`.
    pub redis_errors: IntCounterVec,
    /// `botbridge_redis_fallbacks_total{feature, action}`: requests decided without Redis, by what
    /// `on_redis_error` said.
    pub redis_fallbacks: IntCounterVec,
    /// `botbridge_redis_up`: 1 while the last Redis call succeeded, else 0 (also 0 without Redis).
    pub redis_up: IntGauge,
    /// `botbridge_auth_cache_clear_messages_total{direction}`: `published`, `received`.
    pub clear_messages: IntCounterVec,
}

impl SharedMetrics {
    /// The process-wide metrics (registered on first use).
    pub fn global() -> &'static SharedMetrics {
        static M: OnceLock<SharedMetrics> = OnceLock::new();
        M.get_or_init(|| {
            let m = SharedMetrics {
                limit_decisions: register_int_counter_vec!(
                    "botbridge_rate_limit_decisions_total",
                    "Rate limit checks, by the bucket's scope and the result.",
                    &["scope", "result"]
                )
                .expect("register limit_decisions"),
                local_buckets: register_int_gauge!(
                    "botbridge_rate_limit_local_buckets",
                    "Buckets the in-process rate limiter holds, as of its last sweep."
                )
                .expect("register local_buckets"),
                bucket_overflows: register_int_counter!(
                    "botbridge_rate_limit_bucket_overflows_total",
                    "User rate limit checks made against the credential's overflow bucket, the \
                     in-process buckets being at limits.max_user_buckets."
                )
                .expect("register bucket_overflows"),
                in_flight_refusals: register_int_counter_vec!(
                    "botbridge_backend_in_flight_refusals_total",
                    "Requests refused with 503 because the backend had max_in_flight requests in flight.",
                    &["backend"]
                )
                .expect("register in_flight_refusals"),
                redis_duration: register_histogram_vec!(
                    "botbridge_redis_duration_seconds",
                    "Redis calls, by operation (failed ones included).",
                    &["op"],
                    REDIS_BUCKETS.to_vec()
                )
                .expect("register redis_duration"),
                redis_errors: register_int_counter_vec!(
                    "botbridge_redis_errors_total",
                    "Failed Redis calls, by operation and reason.",
                    &["op", "reason"]
                )
                .expect("register redis_errors"),
                redis_fallbacks: register_int_counter_vec!(
                    "botbridge_redis_fallbacks_total",
                    "Requests decided without Redis because it failed, by feature and on_redis_error action.",
                    &["feature", "action"]
                )
                .expect("register redis_fallbacks"),
                redis_up: register_int_gauge!(
                    "botbridge_redis_up",
                    "1 while the last Redis call succeeded, else 0."
                )
                .expect("register redis_up"),
                clear_messages: register_int_counter_vec!(
                    "botbridge_auth_cache_clear_messages_total",
                    "Auth cache clears published to other instances or received from them.",
                    &["direction"]
                )
                .expect("register clear_messages"),
            };
            m.register_all();
            m
        })
    }

    fn register_all(&self) {
        for s in ["credential", "user"] {
            for r in ["allowed", "limited"] {
                self.limit_decisions.with_label_values(&[s, r]);
            }
        }
        for op in OPS {
            self.redis_duration.with_label_values(&[op]);
            for r in REDIS_ERRORS {
                self.redis_errors.with_label_values(&[op, r]);
            }
        }
        for f in [
            Feature::Limits,
            Feature::ReplayGuard,
            Feature::Conversations,
            Feature::Channels,
            Feature::Deliveries,
        ] {
            for a in OnRedisError::ALL {
                self.redis_fallbacks
                    .with_label_values(&[f.as_str(), a.as_str()]);
            }
        }
        for d in ["published", "received"] {
            self.clear_messages.with_label_values(&[d]);
        }
    }

    /// Counts one request decided by `action` because Redis failed.
    pub fn fallback(&self, feature: Feature, action: OnRedisError) {
        self.redis_fallbacks
            .with_label_values(&[feature.as_str(), action.as_str()])
            .inc();
    }
}
