//! One credential's callback settings, read from its `[[clients.<dialect>]]` table by the dialect
//! and carried in its `Grant` (pure).
//!
//! Two kinds, whichever dialect reads them. Callers that choose their callback URL within an
//! allow-list ([`callback_hosts`]): `callback_hosts`, `allow_http_callbacks`,
//! `allow_private_callbacks`, `callback_secret` (the key of `x-botbridge-signature`; a signed
//! credential's API secret by default). Clients with one fixed webhook ([`fixed_webhook`]):
//! `webhook_url` (where the bot's replies to async requests go), `webhook_secret` (the key of
//! `X-Hub-Signature`), and the same two `allow_*` switches.

use crate::config::ConfigError;

use super::sign::Signer;
use super::ssrf::{CallbackUrl, HostPattern, Reach};

/// What one credential's callbacks may reach and how they are signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackPolicy {
    /// `<dialect>:<name>`: how a spooled delivery finds its credential again in the next process.
    pub credential: String,
    pub reach: Reach,
    pub signer: Signer,
    /// The client's fixed webhook, for credentials with one (callers cannot choose one).
    pub webhook: Option<CallbackUrl>,
}

/// The callback keys of a `[[clients.<dialect>]]` table whose callers choose their callback URL, as
/// written.
#[derive(Debug, Default)]
pub struct CallbackKeys {
    pub hosts: Option<Vec<String>>,
    pub allow_http: bool,
    pub allow_private: bool,
    /// `callback_secret`, else a signed credential's API secret.
    pub secret: Option<String>,
}

/// Reads the callback settings of a `dialect` credential whose callers choose a URL within an
/// allow-list; `None` when it has no `callback_hosts` (its callers may not ask for callbacks). `key`
/// names the table.
pub fn callback_hosts(
    dialect: &str,
    key: &str,
    name: &str,
    k: CallbackKeys,
) -> Result<Option<CallbackPolicy>, ConfigError> {
    let Some(hosts) = k.hosts else {
        return Ok(None);
    };
    let hosts_key = format!("{key}.callback_hosts");
    if hosts.is_empty() {
        return Err(ConfigError::new(
            hosts_key,
            "must name at least one host (or leave it out)",
        ));
    }
    let hosts = (hosts.iter())
        .map(|h| HostPattern::parse(h))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| {
            ConfigError::new(&hosts_key, "each entry is a host name, an IP or `*.domain`")
        })?;
    let secret = k.secret.filter(|s| !s.is_empty()).ok_or_else(|| {
        ConfigError::new(
            format!("{key}.callback_secret"),
            "required with `callback_hosts` for `auth = \"plain\"` (deliveries are always signed)",
        )
    })?;
    Ok(Some(CallbackPolicy {
        credential: format!("{dialect}:{name}"),
        reach: Reach {
            hosts,
            allow_http: k.allow_http,
            allow_private: k.allow_private,
        },
        signer: Signer::Botbridge(secret.into_bytes()),
        webhook: None,
    }))
}

/// Reads the settings of a `dialect` client with one fixed webhook; `None` without `webhook_url`.
/// The webhook's own host is its allow-list; the scheme and address rules are the same as for
/// [`callback_hosts`].
pub fn fixed_webhook(
    dialect: &str,
    key: &str,
    name: &str,
    url: Option<&str>,
    secret: Option<String>,
    allow_http: bool,
    allow_private: bool,
) -> Result<Option<CallbackPolicy>, ConfigError> {
    let Some(url) = url else {
        if secret.is_some() {
            return Err(ConfigError::new(
                format!("{key}.webhook_secret"),
                "not used without `webhook_url`; remove it",
            ));
        }
        return Ok(None);
    };
    let url_key = format!("{key}.webhook_url");
    let webhook = CallbackUrl::parse(url).map_err(|_| {
        ConfigError::new(&url_key, "not an absolute http(s) URL without credentials")
    })?;
    if !webhook.tls && !allow_http {
        return Err(ConfigError::new(
            url_key,
            "must be https (or set `allow_http_callbacks = true`)",
        ));
    }
    let secret = secret.filter(|s| !s.is_empty()).ok_or_else(|| {
        ConfigError::new(
            format!("{key}.webhook_secret"),
            "required with `webhook_url` (webhooks are signed with X-Hub-Signature)",
        )
    })?;
    Ok(Some(CallbackPolicy {
        credential: format!("{dialect}:{name}"),
        reach: Reach {
            hosts: vec![HostPattern::Exact(webhook.host.clone())],
            allow_http,
            allow_private,
        },
        signer: Signer::HubSha1(secret.into_bytes()),
        webhook: Some(webhook),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csml_needs_a_secret_and_valid_hosts() {
        let keys = |hosts: &[&str], secret: Option<&str>| CallbackKeys {
            hosts: Some(hosts.iter().map(|h| h.to_string()).collect()),
            secret: secret.map(str::to_owned),
            ..Default::default()
        };
        let p = callback_hosts("csml", "k", "n", keys(&["*.example.org"], Some("s")))
            .unwrap()
            .unwrap();
        assert_eq!(p.credential, "csml:n");
        assert!(p.reach.check_url("https://a.example.org/x").is_ok());
        let e = callback_hosts("csml", "k", "n", keys(&["h"], None)).unwrap_err();
        assert_eq!(e.key, "k.callback_secret");
        let e = callback_hosts("csml", "k", "n", keys(&["a.*.b"], Some("s"))).unwrap_err();
        assert_eq!(e.key, "k.callback_hosts");
        let e = callback_hosts("csml", "k", "n", keys(&[], Some("s"))).unwrap_err();
        assert_eq!(e.key, "k.callback_hosts");
        assert_eq!(
            callback_hosts("csml", "k", "n", CallbackKeys::default()).unwrap(),
            None
        );
    }

    #[test]
    fn haptik_webhook_is_its_own_allow_list() {
        let p = fixed_webhook(
            "haptik",
            "k",
            "n",
            Some("https://hooks.test/h"),
            Some("s".into()),
            false,
            false,
        )
        .unwrap()
        .unwrap();
        assert!(p.reach.check_parsed(p.webhook.as_ref().unwrap()).is_ok());
        let e = fixed_webhook(
            "haptik",
            "k",
            "n",
            Some("http://hooks.test/h"),
            Some("s".into()),
            false,
            false,
        )
        .unwrap_err();
        assert_eq!(e.key, "k.webhook_url");
        let e = fixed_webhook(
            "haptik",
            "k",
            "n",
            Some("https://hooks.test/h"),
            None,
            false,
            false,
        )
        .unwrap_err();
        assert_eq!(e.key, "k.webhook_secret");
        let e =
            fixed_webhook("haptik", "k", "n", None, Some("s".into()), false, false).unwrap_err();
        assert_eq!(e.key, "k.webhook_secret");
    }
}
