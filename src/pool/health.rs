//! Whether an endpoint may be chosen: active checks and passive ejection.
//!
//! **Active**: pingora-load-balancing's `TcpHealthCheck` (a TCP, and for https a TLS, connect) or
//! `HttpHealthCheck` (`GET path`, 200 is healthy) per URL, run over every endpoint by its
//! `HealthRegistry`, which flips an endpoint after `unhealthy_after` failing or `healthy_after`
//! passing checks in a row. [`ActiveCheck`] is the one check a registry holds: it runs the check of
//! the endpoint's own URL (several URLs may differ in host, TLS and port) within the timeout, and
//! takes the thresholds of the configuration in force (a reload keeps the registry, so endpoints
//! that stay keep their health).
//!
//! **Passive** ([`Outlier`], the project's own: pingora-load-balancing has none): `eject_after`
//! failed exchanges in a row eject an endpoint for `eject_s`, doubled at each ejection that follows
//! without a success in between, capped at `eject_max_s`. The last endpoint that is up is never
//! ejected (a pool of one behaves as without ejection; the breaker handles a failing backend).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora_load_balancing::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora_load_balancing::Backend as LbBackend;

use super::member::Member;
use crate::config::pool::{HealthSettings, OutlierSettings};
use crate::upstream::Endpoint;

/// The active check of one URL's endpoints.
pub struct UrlCheck {
    check: Box<dyn HealthCheck + Send + Sync>,
    timeout: Duration,
}

impl UrlCheck {
    /// The check `[backends.health]` asks for, against the URL's host (TLS server name, `Host`).
    pub fn new(ep: &Endpoint, h: &HealthSettings) -> Self {
        let check: Box<dyn HealthCheck + Send + Sync> = match &h.path {
            None => {
                let mut c = if ep.tls {
                    TcpHealthCheck::new_tls(&ep.host)
                } else {
                    TcpHealthCheck::new()
                };
                c.peer_template.options.connection_timeout = Some(h.timeout);
                c
            }
            Some(path) => Box::new(http_check(ep, path, h.timeout)),
        };
        UrlCheck {
            check,
            timeout: h.timeout,
        }
    }

    /// Runs the check within the timeout. A failure is reduced to its type (`ConnectRefused`,
    /// `non 200 code`, …): pingora's full error carries the peer's whole settings, which would
    /// fill the log line pingora-load-balancing writes when an endpoint changes state.
    async fn run(&self, target: &LbBackend) -> pingora::Result<()> {
        match tokio::time::timeout(self.timeout, self.check.check(target)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(pingora::Error::new(e.etype().clone())),
            Err(_) => Err(pingora::Error::new(pingora::ErrorType::ReadTimedout)),
        }
    }
}

fn http_check(ep: &Endpoint, path: &str, timeout: Duration) -> HttpHealthCheck {
    let mut c = HttpHealthCheck::new(&ep.host, ep.tls);
    let mut req = RequestHeader::build("GET", path.as_bytes(), None).expect("a checked path");
    // Checked when the configuration was loaded: both are visible ASCII.
    let _ = req.insert_header("host", &ep.authority);
    let _ = req.insert_header(
        "user-agent",
        concat!("botbridge/", env!("CARGO_PKG_VERSION")),
    );
    c.req = req;
    c.peer_template.options.connection_timeout = Some(timeout);
    c.peer_template.options.read_timeout = Some(timeout);
    c
}

/// `healthy_after`, `unhealthy_after`.
pub type Thresholds = ArcSwap<(usize, usize)>;

/// The check a backend's `HealthRegistry` runs on each endpoint: its URL's own.
pub struct ActiveCheck {
    pub backend: String,
    pub thresholds: Arc<Thresholds>,
}

#[async_trait]
impl HealthCheck for ActiveCheck {
    async fn check(&self, target: &LbBackend) -> pingora::Result<()> {
        match target
            .ext
            .get::<Arc<Member>>()
            .and_then(|m| m.check.clone())
        {
            Some(c) => c.run(target).await,
            None => Ok(()),
        }
    }

    /// How pingora-load-balancing names an endpoint in its log line when its health changes
    /// (`backend b endpoint 10.0.0.1:8080 becomes unhealthy, ConnectRefused`).
    fn backend_summary(&self, target: &LbBackend) -> String {
        format!("backend {} endpoint {}", self.backend, target.addr)
    }

    fn health_threshold(&self, success: bool) -> usize {
        let t = self.thresholds.load();
        if success {
            t.0
        } else {
            t.1
        }
    }
}

/// Passive ejection of one endpoint. Times are milliseconds on the pool's clock.
#[derive(Default)]
pub struct Outlier {
    failures: AtomicU32,
    /// Ejected until then (0: not ejected).
    until_ms: AtomicU64,
    /// Ejections in a row without a success: each doubles the next one's length.
    level: AtomicU32,
}

impl Outlier {
    /// Whether the endpoint is ejected at `now_ms`.
    pub fn ejected(&self, now_ms: u64) -> bool {
        self.until_ms.load(Ordering::Relaxed) > now_ms
    }

    /// Failed exchanges in a row.
    pub fn failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Records an exchange; returns how long the endpoint was ejected for, if this ejected it.
    /// `may_eject` says whether another endpoint is up (asked only when the threshold is reached).
    pub fn record(
        &self,
        failed: bool,
        s: &OutlierSettings,
        now_ms: u64,
        may_eject: impl FnOnce() -> bool,
    ) -> Option<Duration> {
        if !failed {
            self.failures.store(0, Ordering::Relaxed);
            self.level.store(0, Ordering::Relaxed);
            return None;
        }
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if s.eject_after == 0 || failures < s.eject_after || self.ejected(now_ms) || !may_eject() {
            return None;
        }
        let level = self.level.fetch_add(1, Ordering::Relaxed).min(16);
        let length = (s.eject * 2u32.pow(level)).min(s.eject_max);
        let until = now_ms + length.as_millis() as u64;
        let previous = self.until_ms.swap(until, Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
        // Two requests may cross the threshold together: only the one that ejected it reports.
        (previous <= now_ms).then_some(length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> OutlierSettings {
        OutlierSettings {
            eject_after: 3,
            eject: Duration::from_secs(5),
            eject_max: Duration::from_secs(12),
        }
    }

    #[test]
    fn consecutive_failures_eject_for_a_growing_capped_time() {
        let (o, s) = (Outlier::default(), settings());
        let mut now = 1_000;
        let fail = |o: &Outlier, now: u64| o.record(true, &s, now, || true);
        assert_eq!(fail(&o, now), None);
        assert_eq!(fail(&o, now), None);
        assert_eq!(fail(&o, now), Some(Duration::from_secs(5)));
        assert!(o.ejected(now + 4_999) && !o.ejected(now + 5_000));
        now += 5_000;
        for _ in 0..2 {
            assert_eq!(fail(&o, now), None);
        }
        assert_eq!(fail(&o, now), Some(Duration::from_secs(10)));
        now += 10_000;
        for _ in 0..2 {
            fail(&o, now);
        }
        assert_eq!(fail(&o, now), Some(Duration::from_secs(12)), "capped");
    }

    #[test]
    fn a_success_resets_the_count_and_the_backoff() {
        let (o, s) = (Outlier::default(), settings());
        o.record(true, &s, 0, || true);
        o.record(true, &s, 0, || true);
        o.record(false, &s, 0, || true);
        assert_eq!(o.record(true, &s, 0, || true), None);
        assert_eq!(o.failures(), 1);
        for _ in 0..2 {
            o.record(true, &s, 0, || true);
        }
        assert!(o.ejected(1));
        o.record(false, &s, 10_000, || true);
        for _ in 0..2 {
            o.record(true, &s, 10_000, || true);
        }
        let again = o.record(true, &s, 10_000, || true);
        assert_eq!(
            again,
            Some(Duration::from_secs(5)),
            "back to the base length"
        );
    }

    #[test]
    fn the_last_endpoint_up_and_a_zero_threshold_never_eject() {
        let (o, mut s) = (Outlier::default(), settings());
        for _ in 0..10 {
            assert_eq!(o.record(true, &s, 0, || false), None);
        }
        s.eject_after = 0;
        let o = Outlier::default();
        for _ in 0..10 {
            assert_eq!(o.record(true, &s, 0, || true), None);
        }
        assert!(!o.ejected(0));
    }
}
