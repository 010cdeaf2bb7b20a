//! `[clients]`: who may call the proxy. Each `[[clients.<dialect>]]` table is read by that caller
//! dialect (`CallerDialect::client`); this file only files the credentials by kind and refuses
//! duplicates. The keys every caller table shares, `rate_limit` and `user_rate_limit`, are read here
//! (`config::limits`) before the dialect reads the rest, and given to the credential with the id its
//! rate limit buckets are keyed by.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Deserialize;

use super::ConfigError;
use crate::auth::{ApiKeyClients, ClientCredential, Credentials, IdTokenClients, TokenClients};
use crate::delivery::policy::CallbackPolicy;
use crate::dialect::registry;
use crate::limits::{credential_id, CallerLimits, LimitPair};

/// `[clients]` as written: the shared settings, then one array of tables per caller dialect.
#[derive(Debug, Deserialize)]
pub struct RawClients {
    /// How far a signed API key's timestamp may be from now, seconds either way.
    #[serde(default = "default_tolerance")]
    #[serde(alias = "csml_tolerance_secs")] // legacy key
    pub signature_tolerance_secs: u64,
    /// Refuse a signed API key request whose (key, timestamp, signature) was already seen within the
    /// tolerance window. Off by default: the signature covers only `KEY|TS`, so two honest requests
    /// signed in the same second look identical.
    #[serde(default)]
    #[serde(alias = "csml_replay_guard")] // legacy key
    pub replay_guard: bool,
    /// `[[clients.<dialect>]]` tables, by dialect name.
    #[serde(flatten)]
    pub by_dialect: BTreeMap<String, Vec<toml::Table>>,
}

impl Default for RawClients {
    fn default() -> Self {
        RawClients {
            signature_tolerance_secs: default_tolerance(),
            replay_guard: false,
            by_dialect: BTreeMap::new(),
        }
    }
}

fn default_tolerance() -> u64 {
    300
}

/// `[clients]`, validated.
#[derive(Debug, Clone)]
pub struct ClientsConfig {
    pub credentials: Credentials,
    /// `replay_guard`: refuse a signed API key request seen before.
    pub replay_guard: bool,
    /// Per caller dialect: how many credentials, and whether any names no business.
    pub summary: HashMap<&'static str, DialectClients>,
    /// Callers whose credentials are the shipped demo ones (warned about at start).
    pub demo_credentials_in_use: Vec<String>,
    /// Every credential's `routes` scope (`clients.x[i].routes`, names), checked against the routes.
    pub route_scopes: Vec<(String, Vec<String>)>,
    /// Callback settings by credential (`<dialect>:<name>`), for deliveries read back from the spool.
    pub callbacks: HashMap<String, Arc<CallbackPolicy>>,
}

/// What the route checks need to know of one dialect's credentials.
#[derive(Debug, Clone, Copy, Default)]
pub struct DialectClients {
    pub count: usize,
    pub any_without_business: bool,
}

/// Validates `[clients]`.
pub fn validate(raw: RawClients) -> Result<ClientsConfig, ConfigError> {
    let mut out = ClientsConfig {
        credentials: Credentials {
            client_tokens: IdTokenClients::new(),
            api_keys: ApiKeyClients::new(raw.signature_tolerance_secs),
            tokens: TokenClients::default(),
        },
        replay_guard: raw.replay_guard,
        summary: HashMap::new(),
        demo_credentials_in_use: Vec::new(),
        route_scopes: Vec::new(),
        callbacks: HashMap::new(),
    };
    for (name, tables) in raw.by_dialect {
        let dialect = registry::caller(&name).ok_or_else(|| {
            ConfigError::new(
                format!("clients.{name}"),
                format!(
                    "no caller dialect named `{name}` (one of: {})",
                    registry::caller_names().join(", ")
                ),
            )
        })?;
        for (i, mut table) in tables.into_iter().enumerate() {
            let key = format!("clients.{name}[{i}]");
            let limits = super::limits::take_from_table(&key, &mut table)?;
            if let Some(toml::Value::Array(routes)) = table.get("routes") {
                let names = routes.iter().filter_map(|r| r.as_str().map(str::to_owned));
                out.route_scopes
                    .push((format!("{key}.routes"), names.collect()));
            }
            let entry = dialect.client(&key, table)?;
            if let Some(p) = entry.credential.callbacks() {
                out.callbacks.insert(p.credential.clone(), p.clone());
            }
            out.demo_credentials_in_use.extend(entry.demo);
            let summary = out.summary.entry(dialect.as_str()).or_default();
            summary.count += 1;
            let credential = with_limits(entry.credential, limits);
            file(&mut out.credentials, &key, credential, summary)?;
        }
    }
    Ok(out)
}

/// Gives a credential its own limits and the id its buckets are keyed by: the same id the auth
/// service's grants get for the same identity (`AuthQuery::credential_id`).
fn with_limits(c: ClientCredential, own: LimitPair) -> ClientCredential {
    match c {
        ClientCredential::ClientToken { client_id, client } => {
            let id = credential_id("client-id", client_id.as_bytes());
            let client = client.with_limits(CallerLimits { id, own });
            ClientCredential::ClientToken { client_id, client }
        }
        ClientCredential::ApiKey { key, mut grant } => {
            grant.limits = CallerLimits {
                id: credential_id("api-key", key.as_bytes()),
                own,
            };
            ClientCredential::ApiKey { key, grant }
        }
        ClientCredential::Token { digest, mut grant } => {
            grant.limits = CallerLimits {
                id: credential_id("token", &digest),
                own,
            };
            ClientCredential::Token { digest, grant }
        }
    }
}

/// Files one credential under its kind; a duplicate is an error naming the key.
fn file(
    creds: &mut Credentials,
    key: &str,
    c: ClientCredential,
    summary: &mut DialectClients,
) -> Result<(), ConfigError> {
    match c {
        ClientCredential::ClientToken { client_id, client } => {
            let taken = format!("`{client_id}` is configured twice");
            if !creds.client_tokens.insert(client_id, client) {
                return Err(ConfigError::new(format!("{key}.client_id"), taken));
            }
        }
        ClientCredential::ApiKey {
            key: api_key,
            grant,
        } => {
            summary.any_without_business |= grant.business_id.is_none();
            if !creds.api_keys.insert(&api_key, grant) {
                return Err(ConfigError::new(
                    format!("{key}.key"),
                    "this key is configured twice",
                ));
            }
        }
        ClientCredential::Token { digest, grant } => {
            summary.any_without_business |= grant.business_id.is_none();
            if !creds.tokens.insert(digest, grant) {
                return Err(ConfigError::new(
                    format!("{key}.token"),
                    "this token is configured twice",
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keys_of_signed_api_keys_keep_their_old_names_as_aliases() {
        for text in [
            "signature_tolerance_secs = 60\nreplay_guard = true",
            "csml_tolerance_secs = 60\ncsml_replay_guard = true",
        ] {
            let raw: RawClients = toml::from_str(text).unwrap();
            assert_eq!((raw.signature_tolerance_secs, raw.replay_guard), (60, true));
            assert!(raw.by_dialect.is_empty(), "{text}");
        }
    }
}
