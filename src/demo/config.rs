//! `[demo]`: the built-in demo bots' keys (the listener is checked with the others, in
//! `config::admin`), read into the settings the demo bots are built from once at start.

use std::net::SocketAddr;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::auth::IdTokenClient;
use crate::config::{ConfigError, SecretSource};
use crate::signing::HmacKey;

/// `[demo]`: the built-in demo bots (CSML Chat API at `/api/chat`, Haptik webhook at
/// `/haptik/webhook`, CSML engine at `/run`, and the other demo dialects).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDemo {
    /// The demo bots' listener.
    pub listen: String,
    /// The CSML key the demo bots expect from the proxy.
    pub api_key: String,
    /// Its secret.
    pub api_secret: SecretSource,
    /// The Haptik demo bot's expected client id.
    pub haptik_client_id: Option<String>,
    /// The Haptik demo bot's expected token.
    pub haptik_token: Option<SecretSource>,
    /// A service-account key file: the demo Dialogflow bot mints access tokens (at `/token`) for
    /// JWT grants this account signed, and answers requests that carry one.
    pub dialogflow_service_account: Option<String>,
}

/// `[demo]`, validated. The bots are built once at start. `Debug` leaves the secret out.
#[derive(Clone)]
pub struct DemoConfig {
    pub listen: SocketAddr,
    pub key: HmacKey,
    /// The secret of the same key as an AWS access key (the demo Lex bot's).
    pub secret: String,
    /// The Haptik demo bot's expected caller, if configured.
    pub haptik: Option<(String, IdTokenClient)>,
    /// The demo Dialogflow bot's service account (email, public key), if configured.
    pub dialogflow: Option<(String, botbridge_core::jwt::PublicKey)>,
}

impl std::fmt::Debug for DemoConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoConfig")
            .field("listen", &self.listen)
            .field("key", &self.key)
            .field("haptik", &self.haptik)
            .finish_non_exhaustive()
    }
}

/// Reads the demo bots' keys of `[demo]` (its listener, `listen`, is checked by `config::admin`):
/// the bots' settings, and a digest of their credentials for the restart check.
pub fn validate(d: &RawDemo, listen: SocketAddr) -> Result<(DemoConfig, String), ConfigError> {
    if d.api_key.is_empty() || d.api_key.contains('|') {
        return Err(ConfigError::new(
            "demo.api_key",
            "must be non-empty and contain no `|`",
        ));
    }
    let secret = d.api_secret.resolve("demo.api_secret")?;
    let mut digest = Sha256::new();
    digest.update(format!("{}\0{secret}\0", d.api_key));
    let haptik = match (&d.haptik_client_id, &d.haptik_token) {
        (Some(id), Some(t)) => {
            let token = t.resolve("demo.haptik_token")?;
            digest.update(format!("{id}\0{token}"));
            Some((
                id.clone(),
                IdTokenClient::with_token("demo-haptik-caller", token.as_bytes()),
            ))
        }
        (None, None) => None,
        _ => {
            return Err(ConfigError::new(
                "demo",
                "give both `haptik_client_id` and `haptik_token`, or neither",
            ))
        }
    };
    let dialogflow = match &d.dialogflow_service_account {
        Some(path) => {
            let key = "demo.dialogflow_service_account";
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError::new(key, format!("cannot read `{path}`: {e}")))?;
            let sa: crate::dialect::dialogflow::ServiceAccountFile = serde_json::from_str(&text)
                .map_err(|_| ConfigError::new(key, "not a service-account key file"))?;
            let private = botbridge_core::jwt::private_key_from_pem(&sa.private_key)
                .map_err(|e| ConfigError::new(key, e))?;
            digest.update(format!("\0{path}"));
            Some((sa.client_email, private.public()))
        }
        None => None,
    };
    let config = DemoConfig {
        listen,
        key: HmacKey::new(d.api_key.clone(), secret.as_bytes()),
        secret,
        haptik,
        dialogflow,
    };
    Ok((config, hex::encode(digest.finalize())))
}
