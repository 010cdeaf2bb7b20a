//! The configuration pieces a dialect reads its `[[backends]]` and `[[clients.*]]` tables with:
//! [`ConfigError`] (the key and what is wrong with it), secrets ([`SecretSource`]) and the small
//! checks every table shares. The proxy's `config` module reads the file and re-exports these.

pub mod secret;

use std::fmt;

pub use secret::{header_safe, nonzero, socket_addr, SecretSource};

/// A configuration error: the key it is about and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The dotted key, e.g. `backends[0].url`; empty for file-level errors.
    pub key: String,
    /// What is wrong with it.
    pub problem: String,
}

impl ConfigError {
    /// An error about `key`.
    pub fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.problem)
        } else {
            write!(f, "{}: {}", self.key, self.problem)
        }
    }
}

impl std::error::Error for ConfigError {}
