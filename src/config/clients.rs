//! `[clients]`: who may call the proxy. The keys every `[[clients.<dialect>]]` table shares (`name`,
//! `business_id`, `routes`, `businesses`, `rate_limit`, `user_rate_limit`) are read here, once for
//! every dialect; the dialect reads only its own credential keys (`CallerDialect::client`). This
//! file then adds the shared keys to the credential (with the id its rate limit buckets are keyed
//! by), files it by kind and refuses duplicates.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde::Deserialize;

use super::ConfigError;
use crate::auth::{
    ApiKeyClients, ClientCredential, Credentials, IdTokenClients, Scope, SharedKeys, TokenClients,
};
use crate::delivery::policy::CallbackPolicy;
use crate::dialect::{registry, settings, Caller};

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
    // The ids of the keys channel tokens are signed with, to refuse one key for two credentials.
    let mut channel_keys = HashSet::new();
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
            let (caller, shared) = take_shared(&key, &mut table, dialect)?;
            if let Some(routes) = &shared.scope.routes {
                out.route_scopes
                    .push((format!("{key}.routes"), routes.clone()));
            }
            let entry = dialect.client(&key, &caller, table)?;
            if let Some(p) = entry.credential.callbacks() {
                out.callbacks.insert(p.credential.clone(), p.clone());
            }
            out.demo_credentials_in_use.extend(entry.demo);
            let summary = out.summary.entry(dialect.as_str()).or_default();
            summary.count += 1;
            let credential = entry.credential.share(shared);
            file(
                &mut out.credentials,
                &mut channel_keys,
                &key,
                credential,
                summary,
            )?;
        }
    }
    Ok(out)
}

/// The keys every caller table shares, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShared {
    /// A name for logs.
    name: String,
    /// The business its requests go to (callers whose requests name none).
    business_id: Option<i64>,
    /// Route names it may reach (absent: any).
    routes: Option<Vec<String>>,
    /// Business ids it may reach (absent: any).
    businesses: Option<Vec<i64>>,
}

/// Takes the keys every caller table shares out of `table` (leaving the dialect's own), read once
/// here for every dialect: the caller's name and the rest.
fn take_shared(
    key: &str,
    table: &mut toml::Table,
    dialect: Caller,
) -> Result<(String, SharedKeys), ConfigError> {
    let limits = super::limits::take_from_table(key, table)?;
    let mut own = toml::Table::new();
    for k in ["name", "business_id", "routes", "businesses"] {
        if let Some(v) = table.remove(k) {
            own.insert(k.to_owned(), v);
        }
    }
    let raw: RawShared = settings(key, own)?;
    if raw.business_id.is_some() && dialect.names_business() {
        return Err(ConfigError::new(
            format!("{key}.business_id"),
            format!(
                "not used by `{}` callers: their requests name their business",
                dialect.as_str()
            ),
        ));
    }
    let shared = SharedKeys {
        business_id: raw.business_id,
        scope: Scope {
            routes: raw.routes,
            businesses: raw.businesses,
        },
        limits,
    };
    Ok((raw.name, shared))
}

/// Files one credential under its kind; a duplicate is an error naming the key.
fn file(
    creds: &mut Credentials,
    channel_keys: &mut HashSet<[u8; 16]>,
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
            // Tokens find their credential by the id of the key that signs them: two credentials
            // with one key would share every conversation.
            if let Some(c) = &grant.channel {
                if !channel_keys.insert(c.key.id()) {
                    return Err(ConfigError::new(
                        format!("{key}.token_secret"),
                        "another credential signs its tokens with the same secret: give each its own",
                    ));
                }
            }
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

    /// `name`, `business_id`, `routes`, `businesses` and the rate limits are read here for every
    /// dialect and reach the credential; a dialect whose requests name their business refuses
    /// `business_id`.
    #[test]
    fn the_shared_keys_are_read_once_for_every_dialect() {
        let raw: RawClients = toml::from_str(
            r#"
[[rasa]]
name = "web"
token = "t"
business_id = 7
routes = ["chat"]
businesses = [7]
rate_limit = { requests = 5, per_seconds = 1 }
"#,
        )
        .unwrap();
        let c = validate(raw).unwrap();
        let digest = crate::auth::token_digest("rasa", b"t");
        let grant = c.credentials.tokens.by_digest(&digest).unwrap();
        assert_eq!(&*grant.name, "web");
        assert_eq!(grant.business_id, Some(7));
        assert_eq!(
            grant.scope.routes.as_deref(),
            Some(&["chat".to_owned()][..])
        );
        assert_eq!(grant.scope.businesses.as_deref(), Some(&[7][..]));
        assert_eq!(grant.limits.own().rate_limit.map(|l| l.requests), Some(5));
        assert_eq!(
            c.route_scopes,
            [("clients.rasa[0].routes".to_owned(), vec!["chat".to_owned()])]
        );

        let err = |text: &str| {
            validate(toml::from_str(text).unwrap())
                .unwrap_err()
                .to_string()
        };
        let haptik = "[[haptik]]\nname = \"h\"\nclient_id = \"c\"\ntoken = \"t\"\nbusiness_id = 1";
        assert_eq!(
            err(haptik),
            "clients.haptik[0].business_id: not used by `haptik` callers: their requests name their business"
        );
        assert!(err("[[rasa]]\ntoken = \"t\"").contains("missing field `name`"));
        assert!(
            err("[[rasa]]\nname = \"w\"\ntoken = \"t\"\nroutes = \"chat\"")
                .starts_with("clients.rasa[0]")
        );
    }
}
