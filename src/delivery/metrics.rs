//! Async mode's metrics, in the default registry beside the proxy's others. Labels are bounded:
//! caller dialect names, the fixed refusal, outcome and reason sets.

use std::sync::OnceLock;

use prometheus::{
    register_histogram, register_int_counter, register_int_counter_vec, register_int_gauge,
    Histogram, IntCounter, IntCounterVec, IntGauge,
};

use super::send::Outcome;
use super::ssrf::Refusal;

/// How a webhook from a bot that answers on the proxy's webhook ended
/// (`botbridge_bot_webhooks_total{result}`).
pub const WEBHOOK_RESULTS: [&str; 6] = [
    "routed",
    "unrouted",
    "bad_signature",
    "bad_request",
    "replayed",
    "stale",
];

/// Why a message went to the dead-letter log.
pub const DEAD_REASONS: [&str; 5] = ["deadline", "rejected", "redirect", "forbidden", "shutdown"];

/// All of async mode's metrics.
pub struct DeliveryMetrics {
    /// `botbridge_async_requests_total{dialect, result}`: `accepted`, `queue_full`, `not_journaled`
    /// (the journal could not take it: 503) or a URL refusal.
    pub requests: IntCounterVec,
    /// `botbridge_delivery_queue_depth`: async requests accepted and not yet fully delivered.
    pub queue_depth: IntGauge,
    /// `botbridge_delivery_attempts_total{outcome}`: every attempt, by how it ended.
    pub attempts: IntCounterVec,
    /// `botbridge_deliveries_total{result}`: messages `delivered`, `dead_lettered` or `spooled`.
    pub deliveries: IntCounterVec,
    /// `botbridge_delivery_retries_total{outcome}`: attempts that were followed by another.
    pub retries: IntCounterVec,
    /// `botbridge_delivery_duration_seconds`: from the bot's answer to the receiver's 2xx.
    pub latency: Histogram,
    /// `botbridge_dead_letters_total{reason}`
    pub dead_letters: IntCounterVec,
    /// `botbridge_delivery_spool_messages_total{direction}`: `written` at a stop, `restored` after.
    pub spooled: IntCounterVec,
    /// `botbridge_delivery_spool_bytes`: the spool files waiting in `delivery.spool_dir`.
    pub spool_bytes: IntGauge,
    /// `botbridge_bot_webhooks_total{result}`: webhooks from bots that answer on one, `routed` to a
    /// waiting request, `unrouted`, `bad_signature`, `bad_request`, `replayed` (a signed body seen
    /// before) or `stale` (its timestamp older than the replay window).
    pub bot_webhooks: IntCounterVec,
    /// `botbridge_bot_reply_conflicts_total`: requests refused (503) because their user's replies
    /// from an async bot belong to another credential or route for now.
    pub reply_conflicts: IntCounter,
}

impl DeliveryMetrics {
    /// The process-wide instance, registered on first use with every series created at zero.
    pub fn global() -> &'static DeliveryMetrics {
        static M: OnceLock<DeliveryMetrics> = OnceLock::new();
        M.get_or_init(|| {
            let m = Self::register();
            m.zero();
            m
        })
    }

    fn register() -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register_int_counter_vec!(name, help, labels).expect("metric registers once")
        };
        DeliveryMetrics {
            requests: counter(
                "botbridge_async_requests_total",
                "Async requests (a caller's callback URL or a client's webhook), accepted or refused by reason",
                &["dialect", "result"],
            ),
            queue_depth: register_int_gauge!(
                "botbridge_delivery_queue_depth",
                "Async requests accepted and not yet fully delivered"
            )
            .expect("metric registers once"),
            attempts: counter(
                "botbridge_delivery_attempts_total",
                "Delivery attempts by outcome",
                &["outcome"],
            ),
            deliveries: counter(
                "botbridge_deliveries_total",
                "Messages delivered, dead-lettered or spooled",
                &["result"],
            ),
            retries: counter(
                "botbridge_delivery_retries_total",
                "Delivery attempts followed by a retry, by the failed attempt's outcome",
                &["outcome"],
            ),
            latency: register_histogram!(
                "botbridge_delivery_duration_seconds",
                "From the bot's answer to the receiver's 2xx, retries included",
                crate::metrics::LATENCY_BUCKETS.to_vec()
            )
            .expect("metric registers once"),
            dead_letters: counter(
                "botbridge_dead_letters_total",
                "Messages that gave up and went to the dead-letter log, by reason",
                &["reason"],
            ),
            spooled: counter(
                "botbridge_delivery_spool_messages_total",
                "Messages written to the spool at a stop, or restored from it",
                &["direction"],
            ),
            spool_bytes: register_int_gauge!(
                "botbridge_delivery_spool_bytes",
                "Bytes of spool files waiting in delivery.spool_dir"
            )
            .expect("metric registers once"),
            bot_webhooks: counter(
                "botbridge_bot_webhooks_total",
                "Webhooks from bots that answer on the proxy's webhook, by result",
                &["result"],
            ),
            reply_conflicts: register_int_counter!(
                "botbridge_bot_reply_conflicts_total",
                "Requests refused because their user's async bot replies belong to another caller"
            )
            .expect("metric registers once"),
        }
    }

    /// Creates every series at zero, so dashboards and alerts see them before the first event.
    fn zero(&self) {
        for o in Outcome::ALL {
            self.attempts.with_label_values(&[o.as_str()]);
            if o.retryable() {
                self.retries.with_label_values(&[o.as_str()]);
            }
        }
        for r in ["delivered", "dead_lettered", "spooled"] {
            self.deliveries.with_label_values(&[r]);
        }
        for r in DEAD_REASONS {
            self.dead_letters.with_label_values(&[r]);
        }
        for d in ["written", "restored"] {
            self.spooled.with_label_values(&[d]);
        }
        for r in WEBHOOK_RESULTS {
            self.bot_webhooks.with_label_values(&[r]);
        }
    }

    /// Creates the request series of a caller dialect at zero.
    pub fn register_dialect(&self, dialect: &str) {
        self.requests.with_label_values(&[dialect, "accepted"]);
        self.requests.with_label_values(&[dialect, "not_journaled"]);
        for r in super::Refused::ALL {
            self.requests.with_label_values(&[dialect, r.as_str()]);
        }
        for r in Refusal::ALL {
            self.requests.with_label_values(&[dialect, r.as_str()]);
        }
    }
}
