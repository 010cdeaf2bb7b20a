//! botbridge: a protocol-translating reverse proxy for chatbot APIs.
//!
//! The pure core (no network types) is the `botbridge-core` crate, re-exported here under its old
//! names: [`model`], [`dialect`], [`auth`], [`signing`], [`error`], [`timefmt`]; its configuration
//! pieces come through [`config`]. The shell on pingora: [`service`] (the request path), [`pool`] (backends as pools of
//! endpoints: selection, health, failover, circuit breaker, DNS), [`upstream`] (backend I/O:
//! request writer, answer parser, connection pool, exchange), [`httpio`] (bodies and answers),
//! [`conn`] (client connection deadlines, head budget, connection cap),
//! [`authn`] (auth service, decision cache, replay guard), [`admin`] (metrics and health),
//! [`delivery`] (async mode: callbacks, retries,
//! dead letters, spool), [`admin`] (metrics and health),
//! [`metrics`], [`migration`] (shadow traffic, its report, the canary), [`demo`] (the built-in demo bot), [`reload`] (SIGHUP and `POST /reload`), [`tls`] (the chat
//! listener's certificate), [`server`] (assembly), [`logging`]; [`limits`] (rate limits and
//! `max_in_flight`) and [`shared`] (state shared between instances on Redis); [`timefmt`] (RFC 3339
//! timestamps); [`rotating_file`] (the capped, private log files);
//! [`instance_lock`] (one live process per instance's files).

pub mod admin;
pub mod authn;
pub mod channel;
pub mod config;
pub mod conn;
pub mod conversations;
pub mod delivery;
pub mod demo;
pub mod httpio;
pub mod instance_lock;
pub mod limits;
pub mod log_line;
pub mod log_writer;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod migration;
pub mod otel;
pub mod overload;
pub mod pool;
pub mod reload;
pub mod rotating_file;
pub mod server;
pub mod service;
pub mod shared;
pub mod tls;
pub mod tokens;
pub mod upstream;

// The pure core, under the names the shell has always used.
pub use botbridge_core::{
    auth, dialect, error, jwt, model, request, session, signing, sigv4, timefmt,
};
