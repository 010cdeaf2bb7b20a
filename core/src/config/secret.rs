//! Values every table shares: secrets read from the file, the environment or a file, and the small
//! checks (header-safe values, addresses, non-zero numbers) whose errors name the key.

use std::cell::RefCell;
use std::fmt;
use std::net::SocketAddr;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::ConfigError;

/// Where a secret comes from: the literal string, `{ env = "VAR" }` or `{ file = "path" }`.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// Written in the file itself (fine for demos, not for production).
    Literal(String),
    /// Read from an environment variable at load.
    Env(String),
    /// Read from a file at load (one trailing newline is removed).
    File(String),
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Literal(_) => f.write_str("Literal(<redacted>)"),
            SecretSource::Env(v) => write!(f, "Env({v})"),
            SecretSource::File(p) => write!(f, "File({p})"),
        }
    }
}

impl<'de> Deserialize<'de> for SecretSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SecretSource;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a string, { env = "VAR" } or { file = "path" }"#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SecretSource, E> {
                LITERALS.with(|l| {
                    if let Some(seen) = l.borrow_mut().as_mut() {
                        seen.push(v.to_owned());
                    }
                });
                Ok(SecretSource::Literal(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SecretSource, A::Error> {
                let mut found = None;
                while let Some(k) = map.next_key::<String>()? {
                    let v: String = map.next_value()?;
                    let s = match k.as_str() {
                        "env" => SecretSource::Env(v),
                        "file" => SecretSource::File(v),
                        other => return Err(de::Error::unknown_field(other, &["env", "file"])),
                    };
                    if found.replace(s).is_some() {
                        return Err(de::Error::custom("give exactly one of `env` or `file`"));
                    }
                }
                found.ok_or_else(|| de::Error::custom("give one of `env` or `file`"))
            }
        }
        d.deserialize_any(V)
    }
}

thread_local! {
    /// The literal secrets read while [`with_literals`] runs on this thread.
    static LITERALS: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

/// Runs `f` (a config parse) and returns, with its result, every literal secret it read: whatever
/// a key typed as a secret holds, so a view of the file can hide exactly those values, whichever
/// table or dialect they belong to.
pub fn with_literals<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    let outer = LITERALS.with(|l| l.borrow_mut().replace(Vec::new()));
    let result = f();
    let seen = LITERALS.with(|l| std::mem::replace(&mut *l.borrow_mut(), outer));
    (result, seen.unwrap_or_default())
}

impl SecretSource {
    /// Reads the secret. `key` names the config key for errors; the value never appears in one.
    pub fn resolve(&self, key: &str) -> Result<String, ConfigError> {
        let value = match self {
            SecretSource::Literal(s) => s.clone(),
            SecretSource::Env(var) => std::env::var(var).map_err(|_| {
                ConfigError::new(key, format!("environment variable `{var}` is not set"))
            })?,
            SecretSource::File(path) => read_secret_file(key, path)?,
        };
        if value.is_empty() {
            return Err(ConfigError::new(key, "the secret is empty"));
        }
        Ok(value)
    }
}

fn read_secret_file(key: &str, path: &str) -> Result<String, ConfigError> {
    let mut s = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(key, format!("cannot read `{path}`: {e}")))?;
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    Ok(s)
}

/// Parses `ip:port`.
pub fn socket_addr(key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse()
        .map_err(|_| ConfigError::new(key, format!("`{s}` is not an address like 127.0.0.1:8080")))
}

/// Refuses a value that cannot be sent as an HTTP header value (control characters, non-ASCII),
/// e.g. a secret file with a stray carriage return. The value itself is never printed.
pub fn header_safe(key: &str, v: &str) -> Result<(), ConfigError> {
    if v.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)) {
        Ok(())
    } else {
        Err(ConfigError::new(
            key,
            "contains characters that cannot be sent in an HTTP header (control or non-ASCII)",
        ))
    }
}

/// Refuses zero.
pub fn nonzero(key: &str, v: u64) -> Result<u64, ConfigError> {
    if v == 0 {
        Err(ConfigError::new(key, "must be greater than 0"))
    } else {
        Ok(v)
    }
}
