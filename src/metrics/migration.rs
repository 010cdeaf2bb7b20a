//! The metrics of vendor migration (`crate::migration`): shadow copies, their comparisons, both
//! bots' latency, the divergence log and the canary's split. Registered once, beside the request
//! path's metrics, in the default registry.
//!
//! Labels are bounded: configured route names, the six verdicts, the eight message kinds, `side`
//! (`primary`, `shadow` or `canary`) and fixed outcome sets.

use std::sync::OnceLock;

use prometheus::{
    register_histogram_vec, register_int_counter_vec, register_int_gauge_vec, HistogramVec,
    IntCounterVec, IntGaugeVec,
};

use super::LATENCY_BUCKETS;
use crate::migration::compare::{Verdict, KINDS};

/// What became of a copy for the shadow: `sent`, or `dropped` (its route's queue was full).
pub const SHADOW_OUTCOMES: [&str; 2] = ["sent", "dropped"];

/// The migration metrics.
pub struct MigrationMetrics {
    /// `botbridge_shadow_requests_total{route, outcome}`: see [`SHADOW_OUTCOMES`].
    pub shadow_requests: IntCounterVec,
    /// `botbridge_shadow_pending{route}`: copies in flight or waiting.
    pub shadow_pending: IntGaugeVec,
    /// `botbridge_shadow_comparisons_total{route, verdict}`
    pub comparisons: IntCounterVec,
    /// `botbridge_shadow_message_comparisons_total{route, kind, result}`: result `match` or
    /// `differs`, per message position.
    pub message_comparisons: IntCounterVec,
    /// `botbridge_shadow_latency_seconds{route, side}`: side `primary` or `shadow`, both bots'
    /// exchange for the same requests.
    pub latency: HistogramVec,
    /// `botbridge_divergence_log_writes_total{result}`: `ok`, `error`.
    pub log_writes: IntCounterVec,
    /// `botbridge_canary_requests_total{route, side}`: side `primary` or `canary`, which bot was
    /// asked for each request of a route with a canary.
    pub canary_requests: IntCounterVec,
}

impl MigrationMetrics {
    /// The metrics, registered on first use.
    pub fn global() -> &'static MigrationMetrics {
        static M: OnceLock<MigrationMetrics> = OnceLock::new();
        M.get_or_init(|| MigrationMetrics {
            shadow_requests: counter(
                "botbridge_shadow_requests_total",
                "Copies of requests for a shadow bot, by outcome.",
                &["route", "outcome"],
            ),
            shadow_pending: register_int_gauge_vec!(
                "botbridge_shadow_pending",
                "Copies for a shadow bot in flight or waiting.",
                &["route"]
            )
            .expect("register shadow_pending"),
            comparisons: counter(
                "botbridge_shadow_comparisons_total",
                "Primary and shadow answers compared, by verdict.",
                &["route", "verdict"],
            ),
            message_comparisons: counter(
                "botbridge_shadow_message_comparisons_total",
                "Primary and shadow messages compared position by position, by kind and result.",
                &["route", "kind", "result"],
            ),
            latency: register_histogram_vec!(
                "botbridge_shadow_latency_seconds",
                "Backend exchange time of the primary and the shadow bot for the same requests.",
                &["route", "side"],
                LATENCY_BUCKETS.to_vec()
            )
            .expect("register shadow latency"),
            log_writes: counter(
                "botbridge_divergence_log_writes_total",
                "Divergence log lines written, by result.",
                &["result"],
            ),
            canary_requests: counter(
                "botbridge_canary_requests_total",
                "Requests of routes with a canary, by the side that was asked.",
                &["route", "side"],
            ),
        })
    }

    /// Creates a shadowed route's series (at zero) so dashboards see them before the first copy.
    pub fn register_shadow(&self, route: &str) {
        for o in SHADOW_OUTCOMES {
            self.shadow_requests.with_label_values(&[route, o]);
        }
        self.shadow_pending.with_label_values(&[route]);
        for v in Verdict::ALL {
            self.comparisons.with_label_values(&[route, v.as_str()]);
        }
        for k in KINDS {
            for r in ["match", "differs"] {
                self.message_comparisons.with_label_values(&[route, k, r]);
            }
        }
        for side in ["primary", "shadow"] {
            self.latency.with_label_values(&[route, side]);
        }
        for r in ["ok", "error"] {
            self.log_writes.with_label_values(&[r]);
        }
    }

    /// Creates a canary route's series (at zero).
    pub fn register_canary(&self, route: &str) {
        for side in ["primary", "canary"] {
            self.canary_requests.with_label_values(&[route, side]);
        }
    }
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register_int_counter_vec!(name, help, labels).expect("register a migration counter")
}
