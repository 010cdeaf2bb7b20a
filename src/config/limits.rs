//! `[limits]` and the limit form every table that takes one shares: `rate_limit` and
//! `user_rate_limit` = `{ requests = 50, per_seconds = 1, burst = 100 }`, on a `[[clients.<dialect>]]`
//! table, on a `[[routes]]` table, or here as the default. One function reads the form, so every
//! table's errors name their own key (`clients.<dialect>[0].rate_limit.requests: …`).

use serde::Deserialize;

use super::ConfigError;
use crate::limits::local::DEFAULT_MAX_BUCKETS;
use crate::limits::{LimitPair, RateLimit};

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            defaults: LimitPair::default(),
            max_user_buckets: DEFAULT_MAX_BUCKETS,
        }
    }
}

/// The limit form as written.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    /// How many requests per window are let through in the long run.
    pub requests: u32,
    /// The window, in seconds.
    pub per_seconds: u32,
    /// How many requests may come at once after a quiet spell (default: `requests`).
    pub burst: Option<u32>,
}

/// `[limits]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// The limit per credential, where neither the credential nor the route sets one.
    pub rate_limit: Option<RawRateLimit>,
    /// The limit per (credential, end user), likewise.
    pub user_rate_limit: Option<RawRateLimit>,
    /// In-process buckets kept at most (see `limits::local`); past that, new users of a credential
    /// share one overflow bucket.
    pub max_user_buckets: Option<usize>,
}

/// `[limits]`, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitsConfig {
    /// The defaults.
    pub defaults: LimitPair,
    /// In-process buckets kept at most.
    pub max_user_buckets: usize,
}

/// Validates one limit form at `key`.
pub fn rate_limit(key: &str, r: &RawRateLimit) -> Result<RateLimit, ConfigError> {
    let positive = |name: &str, v: u32| {
        if v == 0 {
            Err(ConfigError::new(
                format!("{key}.{name}"),
                "must be greater than 0",
            ))
        } else {
            Ok(v)
        }
    };
    let limit = RateLimit {
        requests: positive("requests", r.requests)?,
        per_seconds: positive("per_seconds", r.per_seconds)?,
        burst: positive("burst", r.burst.unwrap_or(r.requests))?,
    };
    if limit.interval_us() == 0 {
        return Err(ConfigError::new(
            format!("{key}.requests"),
            "more than one request per microsecond cannot be limited",
        ));
    }
    Ok(limit)
}

/// Validates a `rate_limit` / `user_rate_limit` pair found under `key` (`routes[0]`, `limits`, …).
pub fn pair(
    key: &str,
    rate: Option<&RawRateLimit>,
    user: Option<&RawRateLimit>,
) -> Result<LimitPair, ConfigError> {
    Ok(LimitPair {
        rate_limit: rate
            .map(|r| rate_limit(&format!("{key}.rate_limit"), r))
            .transpose()?,
        user_rate_limit: user
            .map(|r| rate_limit(&format!("{key}.user_rate_limit"), r))
            .transpose()?,
    })
}

/// Takes `rate_limit` and `user_rate_limit` out of a `[[clients.<dialect>]]` table (the dialect
/// reads the rest) and validates them.
pub fn take_from_table(key: &str, table: &mut toml::Table) -> Result<LimitPair, ConfigError> {
    let mut take = |name: &str| -> Result<Option<RawRateLimit>, ConfigError> {
        table
            .remove(name)
            .map(|v| {
                v.try_into::<RawRateLimit>()
                    .map_err(|e| ConfigError::new(format!("{key}.{name}"), e.message().to_owned()))
            })
            .transpose()
    };
    let (rate, user) = (take("rate_limit")?, take("user_rate_limit")?);
    pair(key, rate.as_ref(), user.as_ref())
}

/// Validates `[limits]`.
pub fn validate(raw: &RawLimits) -> Result<LimitsConfig, ConfigError> {
    let max_user_buckets = raw.max_user_buckets.unwrap_or(DEFAULT_MAX_BUCKETS);
    if max_user_buckets == 0 {
        return Err(ConfigError::new(
            "limits.max_user_buckets",
            "must be greater than 0",
        ));
    }
    Ok(LimitsConfig {
        max_user_buckets,
        defaults: pair(
            "limits",
            raw.rate_limit.as_ref(),
            raw.user_rate_limit.as_ref(),
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn the_form_defaults_its_burst_and_names_bad_keys() {
        let mut t = table("name = \"x\"\nrate_limit = { requests = 50, per_seconds = 1 }");
        let p = take_from_table("clients.csml[0]", &mut t).unwrap();
        let l = p.rate_limit.unwrap();
        assert_eq!((l.requests, l.per_seconds, l.burst), (50, 1, 50));
        assert_eq!(l.interval_us(), 20_000);
        assert!(p.user_rate_limit.is_none());
        assert!(!t.contains_key("rate_limit"), "the dialect never sees it");
        assert!(t.contains_key("name"));

        let cases = [
            ("rate_limit = { requests = 0, per_seconds = 1 }", "clients.csml[0].rate_limit.requests: must be greater than 0"),
            ("user_rate_limit = { requests = 5, per_seconds = 0 }", "clients.csml[0].user_rate_limit.per_seconds: must be greater than 0"),
            ("rate_limit = { requests = 5, per_seconds = 1, burst = 0 }", "clients.csml[0].rate_limit.burst: must be greater than 0"),
            ("rate_limit = { requests = 2000000, per_seconds = 1 }", "clients.csml[0].rate_limit.requests: more than one request per microsecond cannot be limited"),
        ];
        for (text, want) in cases {
            let e = take_from_table("clients.csml[0]", &mut table(text)).unwrap_err();
            assert_eq!(e.to_string(), want);
        }
        let e = take_from_table(
            "clients.csml[0]",
            &mut table("rate_limit = { requests = 5, per_seconds = 1, colour = 1 }"),
        )
        .unwrap_err();
        assert_eq!(e.key, "clients.csml[0].rate_limit");
        assert!(e.problem.contains("colour"), "{e}");
    }

    #[test]
    fn limits_table() {
        let raw: RawLimits =
            toml::from_str("user_rate_limit = { requests = 10, per_seconds = 60, burst = 3 }")
                .unwrap();
        let c = validate(&raw).unwrap();
        assert!(c.defaults.rate_limit.is_none());
        assert_eq!(c.defaults.user_rate_limit.unwrap().burst, 3);
        let raw: RawLimits =
            toml::from_str("rate_limit = { requests = 1, per_seconds = 0 }").unwrap();
        assert_eq!(
            validate(&raw).unwrap_err().to_string(),
            "limits.rate_limit.per_seconds: must be greater than 0"
        );
        assert!(toml::from_str::<RawLimits>("local_buckets = 5").is_err());
    }
}
