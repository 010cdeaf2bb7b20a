//! `[[backends]]`: the bots the proxy forwards to. The keys every backend has are read here; the
//! rest belong to the backend's dialect, which reads them into its own settings type
//! (`BotDialect::configure`). A key of another dialect is refused by name.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;

use super::ConfigError;
use crate::dialect::{registry, Bot};
use crate::upstream::endpoint::{endpoint, Endpoint, Timeouts};

/// `[[backends]]` as written.
#[derive(Debug, Deserialize)]
pub struct RawBackend {
    /// Its name in routes, metrics and logs.
    pub name: String,
    /// What it speaks: `csml`, `haptik`, `csml-engine`, ….
    pub dialect: String,
    /// Where requests go (`http://` or `https://`).
    pub url: String,
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

/// A backend, validated: address resolved, credentials loaded.
#[derive(Debug, Clone)]
pub struct Backend {
    pub name: String,
    pub bot: Arc<dyn Bot>,
    pub endpoint: Endpoint,
    /// `max_in_flight`: the cap on requests at the bot at once (`limits::in_flight`).
    pub max_in_flight: Option<u32>,
}

/// Validates every backend; returns them with an index by name.
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
    let timeouts = Timeouts {
        connect_ms: b.connect_timeout_ms,
        read_ms: b.read_timeout_ms,
        idle_s: b.pool_idle_timeout_s,
    };
    let mut endpoint = endpoint(key, &b.name, &b.url, timeouts)?;
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
    let bot = dialect.configure(key, b.settings)?;
    if let Some((name, value)) = bot.query_param() {
        endpoint.add_query(name, value);
    }
    Ok(Backend {
        name: b.name,
        bot: Arc::from(bot),
        endpoint,
        max_in_flight: b.max_in_flight,
    })
}
