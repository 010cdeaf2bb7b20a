//! Client connection metrics: how many are open, how many were accepted or refused at the cap, and
//! why the proxy closed one on its own. Labels are the listener's name (`chat`, `admin`, `demo`) and
//! fixed sets.

use std::sync::OnceLock;

use prometheus::{
    register_int_counter_vec, register_int_gauge_vec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec,
};

/// Why the connection layer closed a client connection, as a bounded label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseReason {
    /// Idle after an answer for longer than `keepalive_timeout_ms`.
    IdleTimeout = 1,
    /// The request head did not arrive within `header_timeout_ms` (408 if part of it came).
    HeaderTimeout,
    /// The request body did not arrive within `body_timeout_ms` (408).
    BodyTimeout,
    /// The client did not take an answer within `write_timeout_ms`.
    WriteTimeout,
    /// Closed while idle to make room for a new connection at `max_client_connections`.
    Evicted,
    /// A request head over `max_header_bytes` (431).
    HeaderTooLarge,
    /// More header lines than `max_headers` (431).
    TooManyHeaders,
    /// A head that cannot be framed or parsed: conflicting `Content-Length`s, a bad
    /// `Transfer-Encoding`, a malformed request line or header (400).
    BadFraming,
    /// A lingering close that ended at its time or byte limit, not at the client's close: the
    /// client may have seen a reset.
    LingerLimit,
    /// The TLS handshake did not finish within `handshake_timeout_ms`.
    TlsHandshakeTimeout,
    /// The TLS handshake failed (not TLS, no common version or cipher, a bad record).
    TlsHandshakeFailed,
}

impl CloseReason {
    /// Every reason, for pre-registering the series.
    pub const ALL: [CloseReason; 11] = [
        CloseReason::IdleTimeout,
        CloseReason::HeaderTimeout,
        CloseReason::BodyTimeout,
        CloseReason::WriteTimeout,
        CloseReason::Evicted,
        CloseReason::HeaderTooLarge,
        CloseReason::TooManyHeaders,
        CloseReason::BadFraming,
        CloseReason::LingerLimit,
        CloseReason::TlsHandshakeTimeout,
        CloseReason::TlsHandshakeFailed,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::HeaderTimeout => "header_timeout",
            CloseReason::BodyTimeout => "body_timeout",
            CloseReason::WriteTimeout => "write_timeout",
            CloseReason::Evicted => "evicted",
            CloseReason::HeaderTooLarge => "header_too_large",
            CloseReason::TooManyHeaders => "too_many_headers",
            CloseReason::BadFraming => "bad_framing",
            CloseReason::LingerLimit => "linger_limit",
            CloseReason::TlsHandshakeTimeout => "tls_handshake_timeout",
            CloseReason::TlsHandshakeFailed => "tls_handshake_failed",
        }
    }

    /// The reason stored as `code` (see [`CloseReason::code`]), if any.
    pub fn from_code(code: u8) -> Option<CloseReason> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }

    /// A non-zero code, for keeping the reason in an atomic.
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// The process-wide client connection metric families.
struct Families {
    open: IntGaugeVec,
    connections: IntCounterVec,
    closes: IntCounterVec,
}

fn families() -> &'static Families {
    static F: OnceLock<Families> = OnceLock::new();
    F.get_or_init(|| Families {
        open: register_int_gauge_vec!(
            "botbridge_client_connections",
            "Client connections open right now, by listener.",
            &["listener"]
        )
        .expect("register client_connections"),
        connections: register_int_counter_vec!(
            "botbridge_client_connections_total",
            "Client connections accepted, or refused: at the connection cap with none idle \
             (refused) or at the per-address cap (refused_per_address).",
            &["listener", "result"]
        )
        .expect("register client_connections_total"),
        closes: register_int_counter_vec!(
            "botbridge_client_closes_total",
            "Client connections the proxy closed on its own (timeouts, limits, refusals), by reason.",
            &["listener", "reason"]
        )
        .expect("register client_closes_total"),
    })
}

/// One listener's client connection series, resolved once so that counting is one atomic add.
#[derive(Clone)]
pub struct ClientMetrics {
    /// `botbridge_client_connections{listener}`
    pub open: IntGauge,
    /// `botbridge_client_connections_total{listener, result="accepted"}`
    pub accepted: IntCounter,
    /// `botbridge_client_connections_total{listener, result="refused"}`
    pub refused: IntCounter,
    /// `botbridge_client_connections_total{listener, result="refused_per_address"}`
    pub refused_per_address: IntCounter,
    closes: Vec<IntCounter>,
}

impl ClientMetrics {
    /// The series of `listener`, created at zero.
    pub fn new(listener: &str) -> Self {
        let f = families();
        ClientMetrics {
            open: f.open.with_label_values(&[listener]),
            accepted: f.connections.with_label_values(&[listener, "accepted"]),
            refused: f.connections.with_label_values(&[listener, "refused"]),
            refused_per_address: (f.connections)
                .with_label_values(&[listener, "refused_per_address"]),
            closes: (CloseReason::ALL.iter())
                .map(|r| f.closes.with_label_values(&[listener, r.as_str()]))
                .collect(),
        }
    }

    /// Counts a connection the proxy closed for `reason`.
    pub fn closed(&self, reason: CloseReason) {
        self.closes[reason.code() as usize - 1].inc();
    }
}
