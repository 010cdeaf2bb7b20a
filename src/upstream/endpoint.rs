//! Where and how to reach an HTTP service (a backend endpoint or the auth service): its URL parsed
//! and its host resolved when the configuration is loaded (a backend's names again while running:
//! `crate::pool`).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{header_safe, nonzero, ConfigError};

/// A resolved endpoint: one address of a URL. What the URL says is shared by every endpoint made
/// from it (the backend's settings, its pool's URL list and one member per address each held a
/// copy: about 0.5 KB a backend), and read through `Deref` (`ep.host`, `ep.path`).
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    url: Arc<EndpointUrl>,
}

/// What an endpoint's URL and timeouts say, the same at every address.
#[derive(Debug, Clone)]
pub struct EndpointUrl {
    /// The name metrics and logs use.
    pub name: String,
    pub tls: bool,
    /// The host as written in the URL (TLS server name).
    pub host: String,
    /// `host[:port]` for the Host header.
    pub authority: String,
    /// Path and query of every request.
    pub path: String,
    pub connect_timeout: Duration,
    /// The whole exchange must finish within this.
    pub read_timeout: Duration,
    pub pool_idle_timeout: Duration,
}

impl Deref for Endpoint {
    type Target = EndpointUrl;

    fn deref(&self) -> &EndpointUrl {
        &self.url
    }
}

/// An endpoint's timeouts as written (milliseconds, seconds).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect_ms: u64,
    pub read_ms: u64,
    pub idle_s: u64,
}

/// The parts of an `http(s)://` URL an endpoint needs.
struct UrlParts {
    tls: bool,
    host: String,
    port: u16,
    authority: String,
    path: String,
}

fn url_parts(url_key: &str, url: &str) -> Result<UrlParts, ConfigError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| ConfigError::new(url_key, format!("not a valid URL: {e}")))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => {
            return Err(ConfigError::new(
                url_key,
                "must start with http:// or https://",
            ))
        }
    };
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| ConfigError::new(url_key, "has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let authority = uri.authority().map_or("", |a| a.as_str()).to_string();
    if authority.contains('@') {
        return Err(ConfigError::new(url_key, "must not contain credentials"));
    }
    header_safe(url_key, &authority)?;
    Ok(UrlParts {
        tls,
        port: uri.port_u16().unwrap_or(if tls { 443 } else { 80 }),
        host,
        authority,
        path: uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
    })
}

/// Parses and resolves `url` into an endpoint (at the first address its host resolves to, with the
/// system's resolver). `key` names the table for errors.
pub fn endpoint(key: &str, name: &str, url: &str, t: Timeouts) -> Result<Endpoint, ConfigError> {
    let system = |host: &str, port: u16| {
        (host, port)
            .to_socket_addrs()
            .map(|a| a.collect())
            .map_err(|e| e.to_string())
    };
    endpoint_with(key, &format!("{key}.url"), name, url, t, Some(system)).map(|(ep, _)| ep)
}

/// Parses `url` (at `url_key`) into an endpoint without resolving its host: an IP address is its
/// own, a name is resolved by whoever uses the endpoint (a backend's pool, when it starts). Returns
/// the endpoint (at the unspecified address, for a name) and the addresses known now.
pub fn endpoint_unresolved(
    key: &str,
    url_key: &str,
    name: &str,
    url: &str,
    t: Timeouts,
) -> Result<(Endpoint, Vec<SocketAddr>), ConfigError> {
    type Resolve = fn(&str, u16) -> Result<Vec<SocketAddr>, String>;
    endpoint_with(key, url_key, name, url, t, None::<Resolve>)
}

/// Parses `url` (at `url_key`) into an endpoint, resolving its host with `resolve` (if given) unless
/// it is an IP address; returns the endpoint (at the first address) and every address. `key` names
/// the table of the timeouts for errors.
fn endpoint_with(
    key: &str,
    url_key: &str,
    name: &str,
    url: &str,
    t: Timeouts,
    resolve: Option<impl FnOnce(&str, u16) -> Result<Vec<SocketAddr>, String>>,
) -> Result<(Endpoint, Vec<SocketAddr>), ConfigError> {
    let p = url_parts(url_key, url)?;
    let addrs = match (p.host.parse::<IpAddr>(), resolve) {
        (Ok(ip), _) => vec![SocketAddr::new(ip, p.port)],
        (Err(_), None) => Vec::new(),
        (Err(_), Some(resolve)) => {
            let found = resolve(&p.host, p.port).map_err(|e| {
                ConfigError::new(url_key, format!("cannot resolve `{}`: {e}", p.host))
            })?;
            if found.is_empty() {
                let problem = format!("`{}` resolves to no address", p.host);
                return Err(ConfigError::new(url_key, problem));
            }
            found
        }
    };
    let unresolved = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), p.port);
    let addr = addrs.first().copied().unwrap_or(unresolved);
    let ms = |field: &str, v: u64| nonzero(&format!("{key}.{field}"), v).map(Duration::from_millis);
    let url = EndpointUrl {
        name: name.to_string(),
        tls: p.tls,
        host: p.host,
        authority: p.authority,
        path: p.path,
        connect_timeout: ms("connect_timeout_ms", t.connect_ms)?,
        read_timeout: ms("read_timeout_ms", t.read_ms)?,
        pool_idle_timeout: Duration::from_secs(nonzero(
            &format!("{key}.pool_idle_timeout_s"),
            t.idle_s,
        )?),
    };
    Ok((Endpoint::new(addr, url), addrs))
}

impl Endpoint {
    /// The endpoint of `url` at `addr`.
    pub fn new(addr: SocketAddr, url: EndpointUrl) -> Self {
        Endpoint {
            addr,
            url: Arc::new(url),
        }
    }

    /// Whether the host is a name (resolved again while running) rather than an IP address.
    pub fn has_name(&self) -> bool {
        self.host.parse::<IpAddr>().is_err()
    }

    /// The same endpoint at another address of its host.
    pub fn at(&self, addr: SocketAddr) -> Endpoint {
        Endpoint {
            addr,
            url: self.url.clone(),
        }
    }

    /// Adds a query parameter to every request's path (percent-encoding the value).
    pub fn add_query(&mut self, name: &str, value: &str) {
        let path = &mut Arc::make_mut(&mut self.url).path;
        let sep = if path.contains('?') { '&' } else { '?' };
        path.push(sep);
        path.push_str(name);
        path.push('=');
        for b in value.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                path.push(b as char);
            } else {
                path.push_str(&format!("%{b:02X}"));
            }
        }
    }
}
