//! `[admin]`, `[log]` and `[demo]`: the operator's listener, logging, and the built-in demo bots'
//! listener (the demo bots read the rest of their table themselves, `crate::demo::config`).

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::secret::{header_safe, socket_addr, SecretSource};
use super::ConfigError;
pub use crate::demo::config::{DemoConfig, RawDemo};

/// `[admin]`: the metrics, health and reload listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Its address (keep it on loopback or a private network).
    pub listen: String,
    /// The bearer token `POST /reload` and `POST /auth-cache/clear` require (a secret); none by
    /// default.
    pub token: Option<SecretSource>,
    /// Whether `GET /metrics` (and the other reads) require the token too (default false, so
    /// scrapers work unchanged).
    #[serde(default)]
    pub metrics_token_required: bool,
    /// Host names, besides loopback ones and the listener's own address, that a request's `Host`
    /// may name while no token is set (a DNS-rebinding guard, see `crate::admin`).
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
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

/// `[admin]`'s lock: the token (as its SHA-256, compared in constant time), what it guards, and the
/// host names an open (tokenless) listener answers. Read from the runtime on every admin request,
/// so a reload applies a new token or host list.
#[derive(Clone, Default)]
pub struct AdminLock {
    token_sha256: Option<[u8; 32]>,
    /// `GET /metrics`, `/backends` and `/migration(.json)` require the token too.
    pub metrics_token_required: bool,
    /// `allowed_hosts`: lowercase, without a trailing dot or IPv6 brackets.
    pub allowed_hosts: Vec<String>,
}

impl fmt::Debug for AdminLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminLock")
            .field("token", &self.token_sha256.map(|_| "<redacted>"))
            .field("metrics_token_required", &self.metrics_token_required)
            .field("allowed_hosts", &self.allowed_hosts)
            .finish()
    }
}

impl AdminLock {
    /// Whether a token is configured.
    pub fn locked(&self) -> bool {
        self.token_sha256.is_some()
    }

    /// Whether `presented` (the bearer token of the request, if any) opens the lock: always with
    /// no token configured, else only with the token, compared in constant time.
    pub fn opens(&self, presented: Option<&[u8]>) -> bool {
        let Some(expected) = &self.token_sha256 else {
            return true;
        };
        let Some(presented) = presented else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(presented).into();
        digest.ct_eq(expected).into()
    }
}

/// Validates `[admin]`'s token, `metrics_token_required` and `allowed_hosts`.
pub fn lock(raw: &RawAdmin) -> Result<AdminLock, ConfigError> {
    let token_sha256 = match &raw.token {
        Some(t) => {
            let token = t.resolve("admin.token")?;
            header_safe("admin.token", &token)?;
            Some(Sha256::digest(token.as_bytes()).into())
        }
        None if raw.metrics_token_required => {
            return Err(ConfigError::new(
                "admin.metrics_token_required",
                "needs admin.token",
            ))
        }
        None => None,
    };
    Ok(AdminLock {
        token_sha256,
        metrics_token_required: raw.metrics_token_required,
        allowed_hosts: allowed_hosts(&raw.allowed_hosts)?,
    })
}

/// Reads `allowed_hosts`: each a DNS name or an IP address, without a port.
fn allowed_hosts(raw: &[String]) -> Result<Vec<String>, ConfigError> {
    raw.iter()
        .map(|h| {
            let host = h.trim_start_matches('[').trim_end_matches(']');
            let host = host.trim_end_matches('.').to_ascii_lowercase();
            let name = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'.';
            match !host.is_empty() && (host.bytes().all(name) || host.parse::<IpAddr>().is_ok()) {
                true => Ok(host),
                false => Err(ConfigError::new(
                    "admin.allowed_hosts",
                    "each entry must be a host name or an IP address, without a port",
                )),
            }
        })
        .collect()
}

/// The warning for an admin listener anyone beyond this machine may reach with no token (its
/// `POST /reload` and `POST /auth-cache/clear` would be open to them).
pub fn exposure_warning(admin: &AdminConfig, lock: &AdminLock) -> Option<String> {
    if admin.listen.ip().is_loopback() || lock.locked() {
        return None;
    }
    Some(format!(
        "admin.listen: {} is reachable beyond this machine and admin.token is not set: \
         anyone who can reach it may reload the configuration and clear the auth cache",
        admin.listen
    ))
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

/// Validates `[demo]`: its listener, which must differ from the others, then the demo bots' own
/// keys (`crate::demo::config`).
pub fn demo(d: &RawDemo, taken: &[SocketAddr]) -> Result<(DemoConfig, DemoIdentity), ConfigError> {
    let listen = socket_addr("demo.listen", &d.listen)?;
    if taken.contains(&listen) {
        return Err(ConfigError::new(
            "demo.listen",
            "must differ from the other listeners",
        ));
    }
    let (config, credentials_sha256) = crate::demo::config::validate(d, listen)?;
    let identity = DemoIdentity {
        listen,
        credentials_sha256,
    };
    Ok((config, identity))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(token: Option<&str>, metrics: bool) -> RawAdmin {
        RawAdmin {
            listen: "127.0.0.1:9090".into(),
            token: token.map(|t| SecretSource::Literal(t.into())),
            metrics_token_required: metrics,
            allowed_hosts: Vec::new(),
        }
    }

    #[test]
    fn the_token_opens_the_lock_and_never_prints() {
        let lock = lock(&raw(Some("s3cret"), true)).unwrap();
        assert!(lock.opens(Some(b"s3cret")));
        assert!(!lock.opens(Some(b"s3cret ")));
        assert!(!lock.opens(Some(b"")));
        assert!(!lock.opens(None));
        assert!(!format!("{lock:?}").contains("s3cret"));
        let open = super::lock(&raw(None, false)).unwrap();
        assert!(open.opens(None) && !open.locked());
    }

    #[test]
    fn metrics_cannot_require_a_token_that_is_not_set() {
        let e = lock(&raw(None, true)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "admin.metrics_token_required: needs admin.token"
        );
        let e = lock(&raw(Some("a\r\nb"), false)).unwrap_err();
        assert_eq!(e.key, "admin.token");
    }

    #[test]
    fn allowed_hosts_are_names_or_addresses_without_a_port() {
        let with = |hosts: &[&str]| {
            let raw = RawAdmin {
                allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(),
                ..raw(None, false)
            };
            lock(&raw).map(|l| l.allowed_hosts)
        };
        assert_eq!(
            with(&["Admin.Example.", "10.0.0.5", "[fd00::5]"]).unwrap(),
            ["admin.example", "10.0.0.5", "fd00::5"]
        );
        for bad in ["", "admin.example:9090", "a b", "*.example", "http://x"] {
            let e = with(&[bad]).unwrap_err();
            assert_eq!(e.key, "admin.allowed_hosts", "{bad}");
        }
    }

    #[test]
    fn only_an_exposed_listener_without_a_token_is_warned_about() {
        let at = |listen: &str| AdminConfig {
            listen: listen.parse().unwrap(),
        };
        let open = lock(&raw(None, false)).unwrap();
        let locked = lock(&raw(Some("t"), false)).unwrap();
        assert!(exposure_warning(&at("127.0.0.1:9090"), &open).is_none());
        assert!(exposure_warning(&at("[::1]:9090"), &open).is_none());
        assert!(exposure_warning(&at("0.0.0.0:9090"), &locked).is_none());
        let w = exposure_warning(&at("10.0.0.5:9090"), &open).unwrap();
        assert!(w.starts_with("admin.listen: 10.0.0.5:9090 "), "{w}");
    }
}
