//! `[admin]`, `[log]` and `[demo]`: the operator's listener, logging, and the built-in demo bots.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::secret::{socket_addr, SecretSource};
use super::ConfigError;
use crate::auth::HaptikClient;
use crate::signing::CsmlKey;

/// `[admin]`: the metrics, health and reload listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Its address (keep it on loopback or a private network).
    pub listen: String,
}

/// `[log]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// `human` or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// `RUST_LOG` syntax; `RUST_LOG` overrides it.
    #[serde(default = "default_filter")]
    pub filter: String,
    /// Log caller and backend message bodies at trace level (target `botbridge::messages`). Off by
    /// default: bodies are what users wrote.
    #[serde(default)]
    pub message_bodies: bool,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            format: LogFormat::Human,
            filter: default_filter(),
            message_bodies: false,
        }
    }
}

fn default_filter() -> String {
    "info".into()
}

/// How log lines look.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// The logger's settings: set once at start.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogConfig {
    pub format: LogFormat,
    pub filter: String,
}

/// `[demo]`: the built-in demo bots (CSML Chat API at `/api/chat`, Haptik webhook at
/// `/haptik/webhook`, CSML engine at `/run`, and the other demo dialects).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDemo {
    /// The demo bots' listener.
    pub listen: String,
    /// The CSML key the demo bots expect from the proxy.
    pub api_key: String,
    /// Its secret.
    pub api_secret: SecretSource,
    /// The Haptik demo bot's expected client id.
    pub haptik_client_id: Option<String>,
    /// The Haptik demo bot's expected token.
    pub haptik_token: Option<SecretSource>,
}

/// `[demo]`, validated. The bots are built once at start.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    pub listen: SocketAddr,
    pub key: CsmlKey,
    /// The Haptik demo bot's expected caller, if configured.
    pub haptik: Option<(String, HaptikClient)>,
}

/// What identifies the demo bots for the restart check: the listener and a digest of the
/// credentials (never the credentials themselves).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DemoIdentity {
    pub listen: SocketAddr,
    pub credentials_sha256: String,
}

/// `[admin]`, validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

/// Validates `[admin]`; it must not share the chat listener's address.
pub fn admin(raw: &RawAdmin, chat: SocketAddr) -> Result<AdminConfig, ConfigError> {
    let listen = socket_addr("admin.listen", &raw.listen)?;
    if listen == chat {
        return Err(ConfigError::new(
            "admin.listen",
            "must differ from server.listen",
        ));
    }
    Ok(AdminConfig { listen })
}

/// Validates `[log]`'s filter.
pub fn log(raw: &RawLog) -> Result<LogConfig, ConfigError> {
    tracing_subscriber::EnvFilter::try_new(&raw.filter)
        .map_err(|e| ConfigError::new("log.filter", format!("not a valid filter: {e}")))?;
    Ok(LogConfig {
        format: raw.format,
        filter: raw.filter.clone(),
    })
}

/// Validates `[demo]`; its listener must differ from the others.
pub fn demo(d: &RawDemo, taken: &[SocketAddr]) -> Result<(DemoConfig, DemoIdentity), ConfigError> {
    let listen = socket_addr("demo.listen", &d.listen)?;
    if taken.contains(&listen) {
        return Err(ConfigError::new(
            "demo.listen",
            "must differ from the other listeners",
        ));
    }
    if d.api_key.is_empty() || d.api_key.contains('|') {
        return Err(ConfigError::new(
            "demo.api_key",
            "must be non-empty and contain no `|`",
        ));
    }
    let secret = d.api_secret.resolve("demo.api_secret")?;
    let mut digest = Sha256::new();
    digest.update(format!("{}\0{secret}\0", d.api_key));
    let haptik = match (&d.haptik_client_id, &d.haptik_token) {
        (Some(id), Some(t)) => {
            let token = t.resolve("demo.haptik_token")?;
            digest.update(format!("{id}\0{token}"));
            Some((
                id.clone(),
                HaptikClient::with_token("demo-haptik-caller", token.as_bytes()),
            ))
        }
        (None, None) => None,
        _ => {
            return Err(ConfigError::new(
                "demo",
                "give both `haptik_client_id` and `haptik_token`, or neither",
            ))
        }
    };
    let identity = DemoIdentity {
        listen,
        credentials_sha256: hex::encode(digest.finalize()),
    };
    let config = DemoConfig {
        listen,
        key: CsmlKey::new(d.api_key.clone(), secret.as_bytes()),
        haptik,
    };
    Ok((config, identity))
}
