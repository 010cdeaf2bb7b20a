//! `[dns]`: how backend host names are resolved, at load and every `dns_refresh_s` after. Without
//! it, the system's resolver configuration (`/etc/resolv.conf`, `/etc/hosts`) is used.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::secret::{nonzero, socket_addr};
use super::ConfigError;

/// `[dns]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    /// Name servers to ask (`ip:port`), in order; empty: the system's.
    #[serde(default)]
    pub servers: Vec<String>,
    /// One resolution (all tries) must finish within this.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

impl Default for RawDns {
    fn default() -> Self {
        RawDns {
            servers: Vec::new(),
            timeout_ms: default_timeout_ms(),
        }
    }
}

fn default_timeout_ms() -> u64 {
    2_000
}

/// `[dns]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    /// Empty: the system's configuration.
    pub servers: Vec<SocketAddr>,
    pub timeout: Duration,
}

/// Validates `[dns]`.
pub fn validate(d: &RawDns) -> Result<DnsSettings, ConfigError> {
    let servers = (d.servers.iter().enumerate())
        .map(|(i, s)| socket_addr(&format!("dns.servers[{i}]"), s))
        .collect::<Result<_, _>>()?;
    Ok(DnsSettings {
        servers,
        timeout: Duration::from_millis(nonzero("dns.timeout_ms", d.timeout_ms)?),
    })
}
