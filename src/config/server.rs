//! `[server]`: the public listener and the process.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::private_dir;
use super::secret::{nonzero, socket_addr};
use super::tls::RawTls;
use super::ConfigError;

/// `[server]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// The chat listener's address.
    pub listen: String,
    /// Worker threads of the chat listener.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// Larger request bodies get 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Larger backend answers get 502.
    #[serde(default = "default_max_answer")]
    pub max_answer_bytes: usize,
    /// Idle keep-alive connections kept per backend address.
    #[serde(default = "default_pool")]
    pub upstream_pool_size: usize,
    /// Per client connection read buffer; it is held for as long as the connection stays open
    /// (0: unbuffered reads).
    #[serde(default)]
    pub read_buffer_bytes: usize,
    /// How long a graceful stop or upgrade waits for requests in flight.
    #[serde(default = "default_grace")]
    pub grace_period_seconds: u64,
    /// Where the process id is written (in a private directory: see [`private_dir`]); by default
    /// in the instance's own directory.
    pub pid_file: Option<String>,
    /// The socket a graceful upgrade hands the listeners over (in a private directory).
    pub upgrade_sock: Option<String>,
    /// Serve HTTPS: `{ cert = "chain.pem", key = "key.pem" }` (see [`super::tls`]).
    pub tls: Option<RawTls>,
    /// A client's whole request head must arrive within this (on a new connection, counted from
    /// the accept; on a kept-alive one, from the head's first byte).
    #[serde(default = "default_header_timeout")]
    pub header_timeout_ms: u64,
    /// A request's whole body must arrive within this, counted from the first read of the body.
    #[serde(default = "default_body_timeout")]
    pub body_timeout_ms: u64,
    /// A kept-alive client connection idle this long after an answer is closed.
    #[serde(default = "default_keepalive_timeout")]
    pub keepalive_timeout_ms: u64,
    /// An answer a client does not take within this (counted from the first write that has to
    /// wait) ends the connection.
    #[serde(default = "default_write_timeout")]
    pub write_timeout_ms: u64,
    /// Larger request heads (request line and headers) get 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Requests with more header lines get 431.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Open client connections of the chat listener; at the cap, the longest-idle one is closed
    /// to make room, and a new one is refused only when none is idle.
    #[serde(default = "default_max_client_connections")]
    pub max_client_connections: usize,
    /// Open client connections from one source address (an IPv6 client's /64), at most; more get
    /// 503 at once (0: no per-address cap, e.g. behind a load balancer whose few addresses carry
    /// every client).
    #[serde(default = "default_max_connections_per_address")]
    pub max_connections_per_address: usize,
    /// A TLS client's handshake must finish within this, counted from the accept (with `tls`).
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout_ms: u64,
    /// Past this wait for a worker thread, new requests are refused with 503 (`crate::overload`);
    /// 0: never.
    #[serde(default)]
    pub max_queue_ms: u64,
}

/// `[server]`, validated: everything but the body limit needs a restart to change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub threads: usize,
    pub max_answer_bytes: usize,
    pub upstream_pool_size: usize,
    pub read_buffer_bytes: usize,
    pub grace_period_seconds: u64,
    pub pid_file: String,
    pub upgrade_sock: String,
    /// Whether the chat listener speaks TLS (its certificate may change on reload; this may not).
    pub tls: bool,
    pub header_timeout_ms: u64,
    pub body_timeout_ms: u64,
    pub keepalive_timeout_ms: u64,
    pub write_timeout_ms: u64,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_client_connections: usize,
    pub max_connections_per_address: usize,
    pub handshake_timeout_ms: u64,
}

/// What a reload may change in `[server]`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    /// Admission control's limit on the measured wait for a worker thread (zero: off).
    pub max_queue: std::time::Duration,
}

/// Validates `[server]`.
pub fn validate(s: &RawServer) -> Result<(ServerConfig, Limits), ConfigError> {
    if s.threads == 0 || s.threads > 256 {
        return Err(ConfigError::new(
            "server.threads",
            "must be between 1 and 256",
        ));
    }
    nonzero("server.max_body_bytes", s.max_body_bytes as u64)?;
    nonzero("server.max_answer_bytes", s.max_answer_bytes as u64)?;
    if s.read_buffer_bytes != 0 && !(1024..=1024 * 1024).contains(&s.read_buffer_bytes) {
        return Err(ConfigError::new(
            "server.read_buffer_bytes",
            "must be 0 (unbuffered) or between 1024 and 1048576",
        ));
    }
    nonzero("server.upstream_pool_size", s.upstream_pool_size as u64)?;
    validate_client_limits(s)?;
    let listen = socket_addr("server.listen", &s.listen)?;
    let or_default = |v: &Option<String>, name: &str| {
        v.clone()
            .unwrap_or_else(|| private_dir::default_file(listen, name))
    };
    let server = ServerConfig {
        listen,
        threads: s.threads,
        max_answer_bytes: s.max_answer_bytes,
        upstream_pool_size: s.upstream_pool_size,
        read_buffer_bytes: s.read_buffer_bytes,
        grace_period_seconds: s.grace_period_seconds,
        pid_file: or_default(&s.pid_file, "botbridge.pid"),
        upgrade_sock: or_default(&s.upgrade_sock, "upgrade.sock"),
        tls: s.tls.is_some(),
        header_timeout_ms: s.header_timeout_ms,
        body_timeout_ms: s.body_timeout_ms,
        keepalive_timeout_ms: s.keepalive_timeout_ms,
        write_timeout_ms: s.write_timeout_ms,
        max_header_bytes: s.max_header_bytes,
        max_headers: s.max_headers,
        max_client_connections: s.max_client_connections,
        max_connections_per_address: s.max_connections_per_address,
        handshake_timeout_ms: s.handshake_timeout_ms,
    };
    // Below 5 ms the timer's own rounding (up to 1 ms of lateness on an idle thread) would shed.
    if s.max_queue_ms != 0 && !(5..=10_000).contains(&s.max_queue_ms) {
        return Err(ConfigError::new(
            "server.max_queue_ms",
            "must be 0 (off) or between 5 and 10000",
        ));
    }
    let limits = Limits {
        max_body_bytes: s.max_body_bytes,
        max_queue: std::time::Duration::from_millis(s.max_queue_ms),
    };
    Ok((server, limits))
}

/// The client connection limits: timeouts above zero, head limits within what pingora's request
/// parser can enforce (a 1 MiB head, 256 headers).
fn validate_client_limits(s: &RawServer) -> Result<(), ConfigError> {
    nonzero("server.header_timeout_ms", s.header_timeout_ms)?;
    nonzero("server.body_timeout_ms", s.body_timeout_ms)?;
    nonzero("server.keepalive_timeout_ms", s.keepalive_timeout_ms)?;
    nonzero("server.write_timeout_ms", s.write_timeout_ms)?;
    nonzero("server.handshake_timeout_ms", s.handshake_timeout_ms)?;
    nonzero(
        "server.max_client_connections",
        s.max_client_connections as u64,
    )?;
    if !(1024..=1_048_575).contains(&s.max_header_bytes) {
        return Err(ConfigError::new(
            "server.max_header_bytes",
            "must be between 1024 and 1048575",
        ));
    }
    if !(1..=256).contains(&s.max_headers) {
        return Err(ConfigError::new(
            "server.max_headers",
            "must be between 1 and 256",
        ));
    }
    Ok(())
}

fn default_threads() -> usize {
    2
}
fn default_max_body() -> usize {
    64 * 1024
}
fn default_max_answer() -> usize {
    1024 * 1024
}
fn default_pool() -> usize {
    256
}
fn default_grace() -> u64 {
    5
}
fn default_header_timeout() -> u64 {
    10_000
}
fn default_body_timeout() -> u64 {
    30_000
}
fn default_keepalive_timeout() -> u64 {
    60_000
}
fn default_write_timeout() -> u64 {
    30_000
}
fn default_max_header_bytes() -> usize {
    16 * 1024
}
fn default_max_headers() -> usize {
    100
}
fn default_max_client_connections() -> usize {
    4096
}
fn default_max_connections_per_address() -> usize {
    512
}
fn default_handshake_timeout() -> u64 {
    10_000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(keys: &str) -> Result<ServerConfig, ConfigError> {
        let raw: RawServer = toml::from_str(&format!("listen = \"127.0.0.1:1\"\n{keys}")).unwrap();
        validate(&raw).map(|(s, _)| s)
    }

    #[test]
    fn max_queue_is_off_or_between_5_ms_and_10_s() {
        let raw = |keys: &str| -> RawServer {
            toml::from_str(&format!("listen = \"127.0.0.1:1\"\n{keys}")).unwrap()
        };
        let limits = |keys: &str| validate(&raw(keys)).map(|(_, l)| l.max_queue);
        assert_eq!(limits("").unwrap(), std::time::Duration::ZERO);
        assert_eq!(limits("max_queue_ms = 50").unwrap().as_millis(), 50);
        for bad in ["max_queue_ms = 4", "max_queue_ms = 10001"] {
            let e = limits(bad).unwrap_err();
            assert_eq!(e.key, "server.max_queue_ms", "{bad}");
        }
    }

    #[test]
    fn client_limits_are_read_and_bad_ones_named() {
        let s =
            with("header_timeout_ms = 5\nmax_headers = 256\nmax_client_connections = 7").unwrap();
        assert_eq!(
            (s.header_timeout_ms, s.max_headers, s.max_client_connections),
            (5, 256, 7)
        );
        let cases = [
            (
                "header_timeout_ms = 0",
                "server.header_timeout_ms: must be greater than 0",
            ),
            (
                "body_timeout_ms = 0",
                "server.body_timeout_ms: must be greater than 0",
            ),
            (
                "keepalive_timeout_ms = 0",
                "server.keepalive_timeout_ms: must be greater than 0",
            ),
            (
                "write_timeout_ms = 0",
                "server.write_timeout_ms: must be greater than 0",
            ),
            (
                "handshake_timeout_ms = 0",
                "server.handshake_timeout_ms: must be greater than 0",
            ),
            (
                "max_client_connections = 0",
                "server.max_client_connections: must be greater than 0",
            ),
            (
                "max_header_bytes = 100",
                "server.max_header_bytes: must be between 1024 and 1048575",
            ),
            (
                "max_headers = 257",
                "server.max_headers: must be between 1 and 256",
            ),
        ];
        for (keys, want) in cases {
            assert_eq!(with(keys).unwrap_err().to_string(), want);
        }
    }
}
