//! botbridge: a protocol-translating reverse proxy for chatbot APIs.
//!
//! The pure core (no network types): [`model`], [`dialect`], [`auth`], [`signing`], [`error`],
//! [`config`]. The shell on pingora: [`service`] (the request path), [`upstream`] (backend I/O),
//! [`admin`] (metrics and health), [`metrics`], [`demo`] (the built-in demo bot), [`server`]
//! (assembly), [`logging`].

pub mod auth;
pub mod config;
pub mod dialect;
pub mod error;
pub mod model;
pub mod signing;
