//! `[tracing]`: OpenTelemetry traces, exported over OTLP (HTTP, protobuf) to a collector. Off
//! without the table. A process setting: the exporter is made once, so changing it needs a restart.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{nonzero, ConfigError};

/// `[tracing]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTracing {
    /// The collector's OTLP/HTTP traces URL, e.g. `http://127.0.0.1:4318/v1/traces` (used as given;
    /// plain HTTP: a collector on the machine or its private network, which forwards over TLS).
    pub endpoint: String,
    /// The share of traces the proxy starts that are recorded, 0 to 1.
    #[serde(default = "default_ratio")]
    pub sampling_ratio: f64,
    /// Whether a caller's `traceparent` that says sampled (or not) decides for its request (the
    /// W3C default); `false`: `sampling_ratio` decides for every request, so callers cannot make
    /// the proxy record more than it chose to (the trace id is kept either way).
    #[serde(default = "default_true")]
    pub caller_sampling: bool,
    /// `service.name` of every span.
    #[serde(default = "default_service")]
    pub service_name: String,
    /// Deadline of one export to the collector.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Spans waiting for export at most; more are dropped while the collector lags.
    #[serde(default = "default_queue")]
    pub max_queue: usize,
}

fn default_ratio() -> f64 {
    1.0
}
fn default_true() -> bool {
    true
}
fn default_service() -> String {
    "botbridge".into()
}
fn default_timeout_ms() -> u64 {
    5_000
}
fn default_queue() -> usize {
    8_192
}

/// `[tracing]`, validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TracingConfig {
    pub endpoint: String,
    pub sampling_ratio: f64,
    pub caller_sampling: bool,
    pub service_name: String,
    pub timeout: Duration,
    pub max_queue: usize,
}

/// Validates `[tracing]`.
pub fn validate(raw: &RawTracing) -> Result<TracingConfig, ConfigError> {
    let e = &raw.endpoint;
    // The exporter is built without TLS: an https:// URL would start and never export.
    if !e.starts_with("http://") || e.parse::<http::Uri>().is_err() {
        return Err(ConfigError::new(
            "tracing.endpoint",
            "must be an http:// URL (the OTLP/HTTP traces URL of a collector on this machine or its \
             private network, e.g. http://127.0.0.1:4318/v1/traces)",
        ));
    }
    if e.split("//")
        .nth(1)
        .is_some_and(|rest| rest.split('/').next().unwrap_or("").contains('@'))
    {
        return Err(ConfigError::new(
            "tracing.endpoint",
            "must not carry a user or password",
        ));
    }
    if !(0.0..=1.0).contains(&raw.sampling_ratio) {
        return Err(ConfigError::new(
            "tracing.sampling_ratio",
            "must be between 0 and 1",
        ));
    }
    if raw.service_name.trim().is_empty() {
        return Err(ConfigError::new(
            "tracing.service_name",
            "must not be empty",
        ));
    }
    Ok(TracingConfig {
        endpoint: e.clone(),
        sampling_ratio: raw.sampling_ratio,
        caller_sampling: raw.caller_sampling,
        service_name: raw.service_name.clone(),
        timeout: Duration::from_millis(nonzero("tracing.timeout_ms", raw.timeout_ms)?),
        max_queue: nonzero("tracing.max_queue", raw.max_queue as u64)? as usize,
    })
}
