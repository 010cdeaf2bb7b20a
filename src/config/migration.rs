//! Moving a route from one bot to another: a route's `shadow = {…}` and `canary = {…}` tables, and the
//! `[migration]` table (the divergence log).
//!
//! A shadow gets a copy of a share of the route's users' requests, off the caller's path, and its
//! answers are compared with the primary's; a canary answers a share of the route's users instead of
//! the primary. Both pick users by a hash of the user id, so a user's whole conversation stays on
//! one side (`crate::migration::user_bucket`).

use std::path::PathBuf;

use serde::Deserialize;

use super::rotation::{self, Rotation};
use super::secret::nonzero;
use super::ConfigError;

/// A route's `shadow = { backend = "new-bot", percent = 100 }` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShadow {
    /// The bot that gets the copies.
    pub backend: String,
    /// The share of users (0–100) whose every request is copied; default 100.
    #[serde(default = "hundred")]
    pub percent: u64,
    /// Put before each user id the shadow sees, so two bots sharing state keep their users apart.
    pub user_prefix: Option<String>,
    /// Copies in flight to the shadow at once, per route; default 32.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: u64,
    /// Copies waiting for one of those slots; beyond them a copy is dropped (and counted); default
    /// 256.
    #[serde(default = "default_queued")]
    pub max_queued: u64,
    /// The share (0–100) of differing pairs written to the divergence log; default 100.
    #[serde(default = "hundred")]
    pub log_percent: u64,
}

/// A route's `canary = { backend = "new-bot", percent = 10 }` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCanary {
    /// The bot that answers the canary's users.
    pub backend: String,
    /// The share of users (0–100) it answers; 0 sends every user back to the primary.
    pub percent: u64,
}

fn hundred() -> u64 {
    100
}
fn default_in_flight() -> u64 {
    32
}
fn default_queued() -> u64 {
    256
}

/// A route's shadow, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Shadow {
    /// Index into `Config::backends`.
    pub backend: usize,
    pub percent: u8,
    pub user_prefix: Option<String>,
    pub max_in_flight: usize,
    pub max_queued: usize,
    pub log_percent: u8,
}

/// A route's canary, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Canary {
    /// Index into `Config::backends`.
    pub backend: usize,
    pub percent: u8,
}

/// What the checks need to know about the route: how to find a backend by name, and which backends
/// already serve it.
pub struct RouteBots<'a> {
    pub lookup: &'a dyn Fn(String, &str) -> Result<usize, ConfigError>,
    pub primaries: &'a [usize],
}

/// Validates `shadow` (`key` is `routes[i].shadow`).
pub fn shadow(key: &str, raw: &RawShadow, bots: &RouteBots<'_>) -> Result<Shadow, ConfigError> {
    Ok(Shadow {
        backend: other_bot(key, &raw.backend, bots)?,
        percent: percent(&format!("{key}.percent"), raw.percent)?,
        user_prefix: raw.user_prefix.clone(),
        max_in_flight: nonzero(&format!("{key}.max_in_flight"), raw.max_in_flight)? as usize,
        max_queued: raw.max_queued as usize,
        log_percent: percent(&format!("{key}.log_percent"), raw.log_percent)?,
    })
}

/// Validates `canary` (`key` is `routes[i].canary`).
pub fn canary(key: &str, raw: &RawCanary, bots: &RouteBots<'_>) -> Result<Canary, ConfigError> {
    Ok(Canary {
        backend: other_bot(key, &raw.backend, bots)?,
        percent: percent(&format!("{key}.percent"), raw.percent)?,
    })
}

/// A backend that exists and does not already serve the route (it would get each message twice,
/// or compare a bot with itself).
fn other_bot(key: &str, name: &str, bots: &RouteBots<'_>) -> Result<usize, ConfigError> {
    let key = format!("{key}.backend");
    let b = (bots.lookup)(key.clone(), name)?;
    if bots.primaries.contains(&b) {
        return Err(ConfigError::new(
            key,
            format!("`{name}` already serves this route: name another bot"),
        ));
    }
    Ok(b)
}

fn percent(key: &str, v: u64) -> Result<u8, ConfigError> {
    u8::try_from(v)
        .ok()
        .filter(|p| *p <= 100)
        .ok_or_else(|| ConfigError::new(key, "must be between 0 and 100"))
}

/// `[migration]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMigration {
    /// Where differing pairs are written as JSON lines; none by default (the report page still
    /// shows the latest).
    pub divergence_log: Option<PathBuf>,
    /// The log's size cap; at it, the file is rotated. Default 10 MiB.
    #[serde(default = "default_log_bytes")]
    pub divergence_log_max_bytes: u64,
    /// Rotated files kept (`<file>.1` the newest); default 3.
    #[serde(default = "default_log_files")]
    pub divergence_log_files: u64,
}

fn default_log_bytes() -> u64 {
    10 * 1024 * 1024
}
fn default_log_files() -> u64 {
    3
}

/// The divergence log's settings, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DivergenceLogConfig {
    pub path: PathBuf,
    pub rotation: Rotation,
}

/// Validates `[migration]`.
pub fn validate(raw: &RawMigration) -> Result<Option<DivergenceLogConfig>, ConfigError> {
    let Some(path) = &raw.divergence_log else {
        return Ok(None);
    };
    let rotation = rotation::validate(
        "migration.divergence_log",
        raw.divergence_log_max_bytes,
        raw.divergence_log_files,
    )?;
    if path.file_name().is_none() {
        return Err(ConfigError::new(
            "migration.divergence_log",
            "must name a file",
        ));
    }
    Ok(Some(DivergenceLogConfig {
        path: path.clone(),
        rotation,
    }))
}

#[cfg(test)]
mod tests {
    use crate::config::{parse, ConfigError};

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
name = "old"
dialect = "csml"
url = "http://127.0.0.1:3/api/chat"
api_key = "k"
api_secret = "s"
[[backends]]
name = "new"
dialect = "csml"
api_key = "k2"
api_secret = "s2"
url = "http://127.0.0.1:4/api/chat"
[[routes]]
name = "r"
path = "/chat"
ingress = "haptik"
backend = "old"
"#;

    fn with(extra: &str) -> Result<crate::config::Config, ConfigError> {
        parse(&format!("{BASE}{extra}"))
    }

    #[test]
    fn shadow_and_canary_load_with_their_defaults() {
        let c =
            with("shadow = { backend = \"new\" }\ncanary = { backend = \"new\", percent = 10 }")
                .unwrap();
        let s = c.routes[0].shadow.as_ref().unwrap();
        assert_eq!((s.backend, s.percent, s.log_percent), (1, 100, 100));
        assert_eq!(
            (s.max_in_flight, s.max_queued, s.user_prefix.as_deref()),
            (32, 256, None)
        );
        assert_eq!(c.routes[0].canary.as_ref().unwrap().percent, 10);
        assert_eq!(c.routes[0].backends(), [0, 1]);
        assert!(c.divergence_log.is_none());
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (
                "shadow = { backend = \"nope\" }",
                "routes[0].shadow.backend",
            ),
            ("shadow = { backend = \"old\" }", "routes[0].shadow.backend"),
            (
                "shadow = { backend = \"new\", percent = 101 }",
                "routes[0].shadow.percent",
            ),
            (
                "shadow = { backend = \"new\", max_in_flight = 0 }",
                "routes[0].shadow.max_in_flight",
            ),
            (
                "shadow = { backend = \"new\", log_percent = 200 }",
                "routes[0].shadow.log_percent",
            ),
            ("canary = { backend = \"new\" }", "routes[0].canary"),
            (
                "canary = { backend = \"old\", percent = 5 }",
                "routes[0].canary.backend",
            ),
            (
                "canary = { backend = \"new\", percent = 500 }",
                "routes[0].canary.percent",
            ),
            (
                "[migration]\ndivergence_log = \"/tmp/d.jsonl\"\ndivergence_log_max_bytes = 10",
                "migration.divergence_log_max_bytes",
            ),
            (
                "[migration]\ndivergence_log = \"/tmp/d.jsonl\"\ndivergence_log_files = 0",
                "migration.divergence_log_files",
            ),
        ];
        for (extra, key) in cases {
            let e = with(extra).unwrap_err();
            assert_eq!(e.key, key, "{extra}: {e}");
        }
        let e = with("shadow = { backend = \"old\" }").unwrap_err();
        assert_eq!(
            e.to_string(),
            "routes[0].shadow.backend: `old` already serves this route: name another bot"
        );
    }

    #[test]
    fn a_haptik_shadow_needs_a_business_for_callers_that_name_none() {
        let text = format!("{BASE}shadow = {{ backend = \"h\" }}\n")
            .replace("[[clients.haptik]]", "[[clients.csml]]\nname = \"r\"\nkey = \"rk\"\nauth = \"plain\"\n[[clients.haptik]]")
            .replace("ingress = \"haptik\"", "ingress = \"csml\"")
            + "[[backends]]\nname = \"h\"\ndialect = \"haptik\"\nurl = \"http://127.0.0.1:5/h\"\ntoken = \"t\"\nclient_id = \"c\"\n";
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key, "routes[0].business_id", "{e}");
    }
}
