//! botbridge's pure core: what a chat request and answer are ([`model`]), how each vendor writes
//! them ([`dialect`], one file per vendor), who may call ([`auth`]) and how requests are signed
//! ([`signing`], [`delivery`]'s callback signatures), with the one error type of the request path
//! ([`error`]) and the configuration pieces the dialects read ([`config`], [`limits`]).
//!
//! Plain functions over bytes and structs: no sockets, no runtime, no clock it is not handed; the one
//! thing it reads is a secret a configuration names (`{ env = … }`, `{ file = … }`) while a table is
//! read. The proxy (the `botbridge` crate, on pingora) reads, calls this crate, does the I/O and
//! records metrics; this crate cannot depend on it, so the line between them is the compiler's.
//! `cargo tree -p botbridge-core -e normal` lists neither pingora nor tokio (`.ci/run` checks).

pub mod auth;
pub mod config;
pub mod delivery;
pub mod dialect;
pub mod error;
pub mod jwt;
pub mod limits;
pub mod model;
pub mod request;
pub mod session;
pub mod signing;
pub mod sigv4;
pub mod timefmt;
