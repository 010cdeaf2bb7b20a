//! The pool keys of `[[backends]]`: how a backend's endpoints are chosen (`balance`, `tries`), how
//! their health is told (`[backends.health]` active checks, `[backends.outlier]` passive ejection),
//! how often host names are resolved again (`dns_refresh_s`) and when the backend's circuit opens
//! (`[backends.breaker]`). Read by `backends.rs`; validated here into [`PoolSettings`].

use std::time::Duration;

use serde::Deserialize;

use super::{nonzero, ConfigError};

/// How a request picks one of a backend's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each endpoint in turn.
    #[default]
    RoundRobin,
    /// The endpoint with the fewest requests in flight.
    LeastRequests,
    /// Consistent hashing on the conversation's user id: a user stays on one endpoint while it is up.
    Sticky,
}

impl Balance {
    /// The name used in the configuration and `GET /backends`.
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastRequests => "least_requests",
            Balance::Sticky => "sticky",
        }
    }
}

/// `[backends.health]` as written: active checks of every endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// `GET` this path (200 is healthy); without it, a TCP (and TLS) connect is the check.
    pub path: Option<String>,
    /// Seconds between checks.
    #[serde(default = "default_interval_s")]
    pub interval_s: u64,
    /// A check not answered within this fails.
    #[serde(default = "default_check_timeout_ms")]
    pub timeout_ms: u64,
    /// Consecutive passing checks that bring a down endpoint back.
    #[serde(default = "default_healthy_after")]
    pub healthy_after: u64,
    /// Consecutive failing checks that take an endpoint down.
    #[serde(default = "default_unhealthy_after")]
    pub unhealthy_after: u64,
}

fn default_interval_s() -> u64 {
    5
}
fn default_check_timeout_ms() -> u64 {
    1_000
}
fn default_healthy_after() -> u64 {
    2
}
fn default_unhealthy_after() -> u64 {
    3
}

/// `[backends.outlier]` as written: passive ejection from what requests see.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlier {
    /// Consecutive failed exchanges (connect failure, timeout, broken answer, 5xx) that eject an
    /// endpoint; 0 turns ejection off.
    #[serde(default = "default_eject_after")]
    pub eject_after: u64,
    /// The first ejection's length; each further ejection in a row doubles it.
    #[serde(default = "default_eject_s")]
    pub eject_s: u64,
    /// The longest ejection.
    #[serde(default = "default_eject_max_s")]
    pub eject_max_s: u64,
}

impl Default for RawOutlier {
    fn default() -> Self {
        RawOutlier {
            eject_after: default_eject_after(),
            eject_s: default_eject_s(),
            eject_max_s: default_eject_max_s(),
        }
    }
}

fn default_eject_after() -> u64 {
    5
}
fn default_eject_s() -> u64 {
    5
}
fn default_eject_max_s() -> u64 {
    60
}

/// `[backends.breaker]` as written: the circuit breaker's error-rate trigger and timings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    /// The share of failed requests (0 to 1) over `window_s` that opens the circuit; 0 turns the
    /// error-rate trigger off (the circuit then opens only when every endpoint is down).
    #[serde(default = "default_error_rate")]
    pub error_rate: f64,
    /// The window the error rate is measured over, in seconds.
    #[serde(default = "default_window_s")]
    pub window_s: u64,
    /// Fewer requests than this in the window never open the circuit.
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    /// How long an open circuit fails requests fast before a probe may test the backend.
    #[serde(default = "default_open_s")]
    pub open_s: u64,
}

fn default_error_rate() -> f64 {
    0.5
}
fn default_window_s() -> u64 {
    10
}
fn default_min_requests() -> u64 {
    20
}
fn default_open_s() -> u64 {
    10
}

/// Active health checks, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthSettings {
    /// `GET` path, or `None` for a TCP (and TLS) connect.
    pub path: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_after: usize,
    pub unhealthy_after: usize,
}

/// Passive ejection, validated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutlierSettings {
    /// Consecutive failures that eject an endpoint; 0: never.
    pub eject_after: u32,
    pub eject: Duration,
    pub eject_max: Duration,
}

/// The circuit breaker, validated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSettings {
    /// The error-rate trigger, when `[backends.breaker]` is given.
    pub error_rate: Option<f64>,
    pub window: Duration,
    pub min_requests: u64,
    /// How long the circuit stays open before a probe.
    pub open: Duration,
}

/// Everything about a backend's pool of endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSettings {
    pub balance: Balance,
    /// Endpoints one request may be sent to, counting the first (moves happen only when nothing
    /// of the request was sent).
    pub tries: u32,
    /// How often host names are resolved again.
    pub dns_refresh: Duration,
    pub health: Option<HealthSettings>,
    pub outlier: OutlierSettings,
    pub breaker: BreakerSettings,
}

/// The pool keys of one `[[backends]]` table, as written.
pub struct RawPool<'a> {
    pub balance: Balance,
    pub tries: u64,
    pub dns_refresh_s: u64,
    pub health: Option<&'a RawHealth>,
    pub outlier: &'a RawOutlier,
    pub breaker: Option<&'a RawBreaker>,
}

/// Validates the pool keys of the backend at `key` (`backends[0]`).
pub fn validate(key: &str, raw: RawPool<'_>) -> Result<PoolSettings, ConfigError> {
    if !(1..=10).contains(&raw.tries) {
        return Err(ConfigError::new(
            format!("{key}.tries"),
            "must be between 1 and 10",
        ));
    }
    let secs = |k: &str, v: u64| nonzero(&format!("{key}.{k}"), v).map(Duration::from_secs);
    Ok(PoolSettings {
        balance: raw.balance,
        tries: raw.tries as u32,
        dns_refresh: secs("dns_refresh_s", raw.dns_refresh_s)?,
        health: raw.health.map(|h| health(key, h)).transpose()?,
        outlier: outlier(key, raw.outlier)?,
        breaker: breaker(key, raw.breaker)?,
    })
}

fn health(key: &str, h: &RawHealth) -> Result<HealthSettings, ConfigError> {
    let k = |field: &str| format!("{key}.health.{field}");
    if let Some(p) = &h.path {
        if !p.starts_with('/') || p.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
            return Err(ConfigError::new(
                k("path"),
                "must start with `/` and hold visible ASCII only",
            ));
        }
    }
    let count = |field: &str, v: u64| {
        nonzero(&k(field), v).and_then(|v| match v {
            1..=100 => Ok(v as usize),
            _ => Err(ConfigError::new(k(field), "must be at most 100")),
        })
    };
    Ok(HealthSettings {
        path: h.path.clone(),
        interval: Duration::from_secs(nonzero(&k("interval_s"), h.interval_s)?),
        timeout: Duration::from_millis(nonzero(&k("timeout_ms"), h.timeout_ms)?),
        healthy_after: count("healthy_after", h.healthy_after)?,
        unhealthy_after: count("unhealthy_after", h.unhealthy_after)?,
    })
}

fn outlier(key: &str, o: &RawOutlier) -> Result<OutlierSettings, ConfigError> {
    let k = |field: &str| format!("{key}.outlier.{field}");
    let eject = Duration::from_secs(nonzero(&k("eject_s"), o.eject_s)?);
    let eject_max = Duration::from_secs(nonzero(&k("eject_max_s"), o.eject_max_s)?);
    if eject_max < eject {
        return Err(ConfigError::new(
            k("eject_max_s"),
            "must be at least `eject_s`",
        ));
    }
    let eject_after = u32::try_from(o.eject_after)
        .ok()
        .filter(|n| *n <= 1000)
        .ok_or_else(|| ConfigError::new(k("eject_after"), "must be at most 1000"))?;
    Ok(OutlierSettings {
        eject_after,
        eject,
        eject_max,
    })
}

fn breaker(key: &str, b: Option<&RawBreaker>) -> Result<BreakerSettings, ConfigError> {
    let Some(b) = b else {
        return Ok(BreakerSettings {
            error_rate: None,
            window: Duration::from_secs(default_window_s()),
            min_requests: default_min_requests(),
            open: Duration::from_secs(default_open_s()),
        });
    };
    let k = |field: &str| format!("{key}.breaker.{field}");
    if !(0.0..=1.0).contains(&b.error_rate) {
        return Err(ConfigError::new(k("error_rate"), "must be between 0 and 1"));
    }
    Ok(BreakerSettings {
        error_rate: (b.error_rate > 0.0).then_some(b.error_rate),
        window: Duration::from_secs(nonzero(&k("window_s"), b.window_s)?),
        min_requests: nonzero(&k("min_requests"), b.min_requests)?,
        open: Duration::from_secs(nonzero(&k("open_s"), b.open_s)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    const BASE: &str = r#"
[server]
listen = "127.0.0.1:1"
[admin]
listen = "127.0.0.1:2"
[[clients.haptik]]
name = "c"
client_id = "cid"
token = "t"
[[backends]]
name = "b"
dialect = "csml"
api_key = "k"
api_secret = "s"
url = "http://127.0.0.1:3/api/chat"
[[backends]]
name = "m"
dialect = "csml"
api_key = "k"
api_secret = "s"
url = "http://127.0.0.1:4/api/chat"
[[routes]]
name = "r"
path = "/chat"
ingress = "haptik"
backend = "b"
"#;

    /// BASE with `keys` added to the first backend.
    fn with(keys: &str) -> String {
        BASE.replacen(
            "url = \"http://127.0.0.1:3/api/chat\"",
            &format!("url = \"http://127.0.0.1:3/api/chat\"\n{keys}"),
            1,
        )
    }

    #[test]
    fn defaults_change_nothing_for_a_one_url_backend() {
        let c = parse(BASE).unwrap();
        let p = &c.backends[0].pool;
        assert_eq!((p.balance, p.tries), (Balance::RoundRobin, 2));
        assert_eq!(p.dns_refresh, Duration::from_secs(30));
        assert!(p.health.is_none() && p.breaker.error_rate.is_none());
        assert_eq!(p.outlier.eject_after, 5);
        assert_eq!(c.backends[0].urls.len(), 1);
        assert_eq!(c.routes[0].fallback, None);
    }

    #[test]
    fn pool_keys_are_read() {
        let c = parse(&with(
            "balance = \"sticky\"\ntries = 3\ndns_refresh_s = 5\n\
             [backends.health]\npath = \"/up\"\ninterval_s = 2\n\
             [backends.outlier]\neject_after = 0\n\
             [backends.breaker]\nerror_rate = 0.25\nopen_s = 4",
        ))
        .unwrap();
        let p = &c.backends[0].pool;
        assert_eq!((p.balance, p.tries), (Balance::Sticky, 3));
        let h = p.health.as_ref().unwrap();
        assert_eq!(
            (h.path.as_deref(), h.interval),
            (Some("/up"), Duration::from_secs(2))
        );
        assert_eq!((h.healthy_after, h.unhealthy_after), (2, 3));
        assert_eq!(p.outlier.eject_after, 0);
        assert_eq!(p.breaker.error_rate, Some(0.25));
        assert_eq!(p.breaker.open, Duration::from_secs(4));
        let urls = "url = \"http://127.0.0.1:3/api/chat\"";
        let two = "urls = [\"http://127.0.0.1:3/a\", \"http://127.0.0.1:5/b\"]";
        let c = parse(&BASE.replacen(urls, two, 1)).unwrap();
        let eps: Vec<_> = c.backends[0]
            .urls
            .iter()
            .map(|u| u.endpoint.addr.port())
            .collect();
        assert_eq!(eps, [3, 5]);
        let c =
            parse(&BASE.replace("backend = \"b\"", "backend = \"b\"\nfallback = \"m\"")).unwrap();
        assert_eq!(c.routes[0].fallback, Some(1));
        assert_eq!(c.routes[0].backends(), [0, 1]);
    }

    #[test]
    fn bad_pool_keys_are_named() {
        let urls = "url = \"http://127.0.0.1:3/api/chat\"";
        let cases = [
            (with("tries = 0"), "backends[0].tries"),
            (with("dns_refresh_s = 0"), "backends[0].dns_refresh_s"),
            (with("balance = \"random\""), "backends[0].balance"),
            (
                with("[backends.health]\ninterval_s = 0"),
                "backends[0].health.interval_s",
            ),
            (
                with("[backends.health]\npath = \"up\""),
                "backends[0].health.path",
            ),
            (
                with("[backends.health]\nhealthy_after = 0"),
                "backends[0].health.healthy_after",
            ),
            (
                with("[backends.outlier]\neject_s = 10\neject_max_s = 5"),
                "backends[0].outlier.eject_max_s",
            ),
            (
                with("[backends.breaker]\nerror_rate = 1.5"),
                "backends[0].breaker.error_rate",
            ),
            (
                with("[backends.breaker]\nopen_s = 0"),
                "backends[0].breaker.open_s",
            ),
            (
                with("urls = [\"http://127.0.0.1:5/b\"]"),
                "backends[0].urls",
            ),
            (BASE.replacen(urls, "urls = []", 1), "backends[0].urls"),
            (BASE.replacen(urls, "", 1), "backends[0].url"),
            (
                BASE.replacen(
                    urls,
                    "urls = [\"http://127.0.0.1:5/b\", \"http://127.0.0.1:5/b\"]",
                    1,
                ),
                "backends[0].urls[1]",
            ),
            (
                BASE.replacen(urls, "urls = [\"http://127.0.0.1:5/b\", \"ftp://x\"]", 1),
                "backends[0].urls[1]",
            ),
            (
                BASE.replace("backend = \"b\"", "backend = \"b\"\nfallback = \"x\""),
                "routes[0].fallback",
            ),
            (
                BASE.replace("backend = \"b\"", "backend = \"b\"\nfallback = \"b\""),
                "routes[0].fallback",
            ),
            (
                format!("{BASE}\n[dns]\nservers = [\"nowhere\"]"),
                "dns.servers[0]",
            ),
            (format!("{BASE}\n[dns]\ntimeout_ms = 0"), "dns.timeout_ms"),
        ];
        for (text, key) in cases {
            let e = parse(&text).unwrap_err();
            assert_eq!(e.key, key, "{e}");
        }
    }
}
