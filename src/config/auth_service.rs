//! `[auth_service]`: an external service asked about credentials not configured here.

use std::time::Duration;

use serde::Deserialize;

use super::secret::{header_safe, nonzero, SecretSource};
use super::ConfigError;
use crate::upstream::endpoint::{endpoint_unresolved, Endpoint, Timeouts};

/// `[auth_service]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuthService {
    /// Where to `POST` the questions (see the book: docs/book/src/security.md, "The auth service").
    pub url: String,
    /// Sent as `Authorization: Bearer` to the service, if it wants one.
    pub bearer: Option<SecretSource>,
    /// Connect and answer deadline per call.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// How long a valid answer is remembered.
    #[serde(default = "default_positive_ttl")]
    pub positive_ttl_s: u64,
    /// How long an invalid answer is remembered.
    #[serde(default = "default_negative_ttl")]
    pub negative_ttl_s: u64,
    /// Most decisions remembered.
    #[serde(default = "default_max_entries")]
    pub max_entries: u64,
    /// How long after its TTL a valid decision may still be used while the service is down (0: never).
    #[serde(default)]
    pub serve_stale_s: u64,
}

fn default_timeout() -> u64 {
    500
}
fn default_positive_ttl() -> u64 {
    60
}
fn default_negative_ttl() -> u64 {
    5
}
fn default_max_entries() -> u64 {
    10_000
}

/// `[auth_service]`, validated.
#[derive(Debug, Clone)]
pub struct AuthServiceConfig {
    pub endpoint: Endpoint,
    pub bearer: Option<String>,
    pub positive_ttl: Duration,
    pub negative_ttl: Duration,
    pub max_entries: u64,
    pub serve_stale: Option<Duration>,
}

/// Validates `[auth_service]`.
pub fn validate(a: &RawAuthService) -> Result<AuthServiceConfig, ConfigError> {
    let timeout = nonzero("auth_service.timeout_ms", a.timeout_ms)?;
    let bearer = match &a.bearer {
        Some(b) => {
            let v = b.resolve("auth_service.bearer")?;
            header_safe("auth_service.bearer", &v)?;
            Some(v)
        }
        None => None,
    };
    let timeouts = Timeouts {
        connect_ms: timeout,
        read_ms: timeout,
        idle_s: 30,
    };
    let secs = |key: &str, v: u64| nonzero(key, v).map(Duration::from_secs);
    Ok(AuthServiceConfig {
        endpoint: endpoint_unresolved(
            "auth_service",
            "auth_service.url",
            "auth-service",
            &a.url,
            timeouts,
        )?
        .0,
        bearer,
        positive_ttl: secs("auth_service.positive_ttl_s", a.positive_ttl_s)?,
        negative_ttl: secs("auth_service.negative_ttl_s", a.negative_ttl_s)?,
        max_entries: nonzero("auth_service.max_entries", a.max_entries)?,
        serve_stale: (a.serve_stale_s > 0).then(|| Duration::from_secs(a.serve_stale_s)),
    })
}
