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
    /// Where the process id is written (in a private directory: see [`private_dir`]).
    #[serde(default = "private_dir::default_pid_file")]
    pub pid_file: String,
    /// The socket a graceful upgrade hands the listeners over (in a private directory).
    #[serde(default = "private_dir::default_upgrade_sock")]
    pub upgrade_sock: String,
    /// Serve HTTPS: `{ cert = "chain.pem", key = "key.pem" }` (see [`super::tls`]).
    pub tls: Option<RawTls>,
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
}

/// What a reload may change in `[server]`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
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
    let server = ServerConfig {
        listen: socket_addr("server.listen", &s.listen)?,
        threads: s.threads,
        max_answer_bytes: s.max_answer_bytes,
        upstream_pool_size: s.upstream_pool_size,
        read_buffer_bytes: s.read_buffer_bytes,
        grace_period_seconds: s.grace_period_seconds,
        pid_file: s.pid_file.clone(),
        upgrade_sock: s.upgrade_sock.clone(),
        tls: s.tls.is_some(),
    };
    let limits = Limits {
        max_body_bytes: s.max_body_bytes,
    };
    Ok((server, limits))
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
