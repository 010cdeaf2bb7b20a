//! `[[backends]]`: the bots the proxy forwards to. The keys every backend has are read here (its
//! pool keys are validated in `pool.rs`); the rest belong to the backend's dialect, which reads them
//! into its own settings type (`BotDialect::configure`). A key of another dialect is refused by name.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::Deserialize;

use super::pool::{self, Balance, PoolSettings, RawBreaker, RawHealth, RawOutlier, RawPool};
use super::ConfigError;
use crate::dialect::{registry, Bot};
use crate::upstream::endpoint::{endpoint_unresolved, Endpoint, Timeouts};

/// `[[backends]]` as written.
#[derive(Debug, Deserialize)]
pub struct RawBackend {
    /// Its name in routes, metrics and logs.
    pub name: String,
    /// What it speaks: a bot dialect's name (`dialect::registry`).
    pub dialect: String,
    /// Where requests go (`http://` or `https://`): the one-endpoint form of `urls`.
    pub url: Option<String>,
    /// Several URLs: every address each host resolves to is an endpoint of the backend's pool.
    pub urls: Option<Vec<String>>,
    /// How an endpoint is picked: `round_robin`, `least_requests` or `sticky`.
    #[serde(default)]
    pub balance: Balance,
    /// Endpoints one request may try (a move happens only when nothing of it was sent).
    #[serde(default = "default_tries")]
    pub tries: u64,
    /// Seconds between resolutions of the URLs' host names.
    #[serde(default = "default_dns_refresh_s")]
    pub dns_refresh_s: u64,
    /// `[backends.health]`: active checks (none without it).
    pub health: Option<RawHealth>,
    /// `[backends.outlier]`: passive ejection (on by default).
    #[serde(default)]
    pub outlier: RawOutlier,
    /// `[backends.breaker]`: the circuit's error-rate trigger and timings.
    pub breaker: Option<RawBreaker>,
    /// Deadline for a new connection.
    #[serde(default = "default_connect_ms")]
    pub connect_timeout_ms: u64,
    /// Deadline for the whole exchange.
    #[serde(default = "default_read_ms")]
    pub read_timeout_ms: u64,
    /// How long an idle pooled connection is kept (below the bot's own keep-alive timeout).
    #[serde(default = "default_idle_s")]
    pub pool_idle_timeout_s: u64,
    /// At most this many requests from this instance at the bot at once (absent: no cap).
    pub max_in_flight: Option<u32>,
    /// The dialect's own keys.
    #[serde(flatten)]
    pub settings: toml::Table,
}

fn default_connect_ms() -> u64 {
    2_000
}
fn default_read_ms() -> u64 {
    30_000
}
fn default_idle_s() -> u64 {
    30
}
fn default_tries() -> u64 {
    2
}
fn default_dns_refresh_s() -> u64 {
    30
}

impl RawBackend {
    /// The pool keys, for `pool::validate`.
    fn pool_keys(&self) -> RawPool<'_> {
        RawPool {
            balance: self.balance,
            tries: self.tries,
            dns_refresh_s: self.dns_refresh_s,
            health: self.health.as_ref(),
            outlier: &self.outlier,
            breaker: self.breaker.as_ref(),
        }
    }
}

/// A backend, validated: URLs parsed and resolved, credentials loaded.
#[derive(Debug, Clone)]
pub struct Backend {
    pub name: String,
    pub bot: Arc<dyn Bot>,
    /// One per URL, in the order written.
    pub urls: Vec<BackendUrl>,
    /// Shared with the backend's pool (which would otherwise hold a copy of its own).
    pub pool: Arc<PoolSettings>,
    /// `max_in_flight`: the cap on requests at the bot at once (`limits::in_flight`).
    pub max_in_flight: Option<u32>,
    /// For a bot with a token source: its token endpoint (a name in it is resolved at each fetch).
    pub token_endpoint: Option<Endpoint>,
}

/// One URL of a backend: where and how to reach it, and its address when it is an IP address (a
/// name is resolved by the pool when it starts).
#[derive(Debug, Clone)]
pub struct BackendUrl {
    /// At the first address; the pool makes one per address.
    pub endpoint: Endpoint,
    pub addrs: Vec<SocketAddr>,
}

/// Validates every backend; returns them with an index by name. Host names are not resolved here:
/// each pool resolves its own when it starts (`crate::pool`), so a load is pure and a name that
/// does not resolve yet never refuses a configuration.
pub fn validate(
    raw: Vec<RawBackend>,
) -> Result<(Vec<Backend>, HashMap<String, usize>), ConfigError> {
    let mut backends = Vec::with_capacity(raw.len());
    let mut index = HashMap::new();
    for (i, b) in raw.into_iter().enumerate() {
        let key = format!("backends[{i}]");
        if index.insert(b.name.clone(), i).is_some() {
            return Err(ConfigError::new(
                format!("{key}.name"),
                format!("`{}` is used twice", b.name),
            ));
        }
        backends.push(backend(&key, b)?);
    }
    Ok((backends, index))
}

fn backend(key: &str, b: RawBackend) -> Result<Backend, ConfigError> {
    let dialect = registry::bot_dialect(&b.dialect).ok_or_else(|| {
        ConfigError::new(
            format!("{key}.dialect"),
            format!(
                "unknown dialect `{}` (one of: {})",
                b.dialect,
                registry::bot_names().join(", ")
            ),
        )
    })?;
    for field in b.settings.keys() {
        if !dialect.keys().contains(&field.as_str()) {
            let problem = match registry::bot_key_owner(field, dialect.name()) {
                Some(_) => format!("not used by dialect `{}`; remove it", dialect.name()),
                None => format!("unknown field `{field}`"),
            };
            return Err(ConfigError::new(format!("{key}.{field}"), problem));
        }
    }
    if b.max_in_flight == Some(0) {
        return Err(ConfigError::new(
            format!("{key}.max_in_flight"),
            "must be greater than 0",
        ));
    }
    let pool = pool::validate(key, b.pool_keys())?;
    let mut urls = urls(key, &b)?;
    let bot = dialect.configure(key, b.settings)?;
    let token_endpoint = match bot.token_source() {
        // The token endpoint is reached like a backend (with its timeouts); a name in it is resolved
        // at each fetch (`crate::tokens`).
        Some(source) => {
            let url_key = format!("{key}.credentials_file");
            let timeouts = Timeouts {
                connect_ms: b.connect_timeout_ms,
                read_ms: b.read_timeout_ms,
                idle_s: b.pool_idle_timeout_s,
            };
            let url = source.token_url();
            Some(endpoint_unresolved(key, &url_key, &b.name, url, timeouts)?.0)
        }
        None => None,
    };
    if let Some((name, value)) = bot.query_param() {
        for u in &mut urls {
            u.endpoint.add_query(name, value);
        }
    }
    Ok(Backend {
        name: b.name,
        bot: Arc::from(bot),
        urls,
        pool: Arc::new(pool),
        max_in_flight: b.max_in_flight,
        token_endpoint,
    })
}

/// `url` or `urls` (exactly one of them), each parsed.
fn urls(key: &str, b: &RawBackend) -> Result<Vec<BackendUrl>, ConfigError> {
    let written: Vec<(String, &str)> = match (&b.url, &b.urls) {
        (Some(u), None) => vec![(format!("{key}.url"), u.as_str())],
        (None, Some(list)) if !list.is_empty() => (list.iter().enumerate())
            .map(|(i, u)| (format!("{key}.urls[{i}]"), u.as_str()))
            .collect(),
        (None, Some(_)) => return Err(ConfigError::new(format!("{key}.urls"), "is empty")),
        (None, None) => {
            return Err(ConfigError::new(
                format!("{key}.url"),
                "missing (or give `urls`)",
            ))
        }
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                format!("{key}.urls"),
                "give `url` or `urls`, not both",
            ))
        }
    };
    let timeouts = Timeouts {
        connect_ms: b.connect_timeout_ms,
        read_ms: b.read_timeout_ms,
        idle_s: b.pool_idle_timeout_s,
    };
    let mut out: Vec<BackendUrl> = Vec::with_capacity(written.len());
    for (i, (url_key, url)) in written.iter().enumerate() {
        if written[..i].iter().any(|(_, u)| u == url) {
            return Err(ConfigError::new(url_key, "is listed twice"));
        }
        let (endpoint, addrs) = endpoint_unresolved(key, url_key, &b.name, url, timeouts)?;
        out.push(BackendUrl { endpoint, addrs });
    }
    Ok(out)
}
