//! `proxy.toml`: one file per table, each validated once by its own function into the types the
//! request path uses without re-checking. Every error names the key it is about
//! (`backends[0].url: …`).
//!
//! - [`server`]: `[server]`, with [`tls`] (its `tls` table) and [`private_dir`] (where `pid_file` and
//!   `upgrade_sock` may live); [`admin`]: `[admin]`, `[log]`, `[demo]`; [`clients`]: `[clients]` (each
//!   dialect reads its own `[[clients.<dialect>]]`); [`auth_service`]; [`backends`] (each dialect
//!   reads its own keys); [`routes`]; [`secret`]: secrets and the shared checks; [`limits`]: `[limits]`
//!   and the rate limit form; [`redis`]: `[redis]`; [`rotation`]: a log file's size cap.
//! - What a running process cannot change is one type, [`ProcessSettings`], compared as a whole on
//!   reload: a new setting there is covered by the reload check without anyone listing it.

pub mod admin;
pub mod auth_service;
pub mod backends;
pub mod clients;
pub mod conversations;
pub mod delivery;
pub mod dns;
pub mod limits;
pub mod migration;
pub mod otel;
pub mod pool;
pub mod private_dir;
pub mod redis;
pub mod rotation;
pub mod routes;
pub mod server;
pub mod source;
pub mod tls;

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use admin::{DemoConfig, LogConfig, LogFormat};
pub use auth_service::AuthServiceConfig;
pub use backends::Backend;
pub use botbridge_core::config::{header_safe, nonzero, secret, ConfigError, SecretSource};
pub use clients::ClientsConfig;
pub use routes::{Route, Target};
pub use server::{Limits, ServerConfig};
pub use tls::TlsIdentity;

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub server: server::RawServer,
    pub admin: admin::RawAdmin,
    #[serde(default)]
    pub log: admin::RawLog,
    pub demo: Option<admin::RawDemo>,
    #[serde(default)]
    pub clients: clients::RawClients,
    pub auth_service: Option<auth_service::RawAuthService>,
    #[serde(default)]
    pub dns: dns::RawDns,
    #[serde(default)]
    pub delivery: delivery::RawDelivery,
    #[serde(default)]
    pub backends: Vec<backends::RawBackend>,
    #[serde(default)]
    pub routes: Vec<routes::RawRoute>,
    #[serde(default)]
    pub limits: limits::RawLimits,
    pub redis: Option<redis::RawRedis>,
    #[serde(default)]
    pub conversations: conversations::RawConversations,
    #[serde(default)]
    pub migration: migration::RawMigration,
    /// `[tracing]`: OpenTelemetry traces (off without it).
    pub tracing: Option<otel::RawTracing>,
}

/// Everything a running process cannot change: listeners, threads, pools, logging, the demo bots.
/// A reload compares it as a whole ([`Config::restart_only_differences`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcessSettings {
    pub server: ServerConfig,
    pub admin: admin::AdminConfig,
    pub log: LogConfig,
    pub demo: Option<admin::DemoIdentity>,
    /// `[redis]`: connected once per process.
    pub redis: Option<redis::RedisSettings>,
    /// `[delivery]`: async mode's queue and files.
    pub delivery: delivery::DeliveryConfig,
    /// `[conversations]`: the conversation store's bound and idle time.
    pub conversations: conversations::ConversationSettings,
    /// `[tracing]`: where traces are exported, if anywhere.
    pub tracing: Option<otel::TracingConfig>,
}

/// The validated configuration the proxy runs on.
#[derive(Debug)]
pub struct Config {
    pub process: ProcessSettings,
    pub limits: Limits,
    /// `[server] tls`: the chat listener's certificate and key, read anew at every load.
    pub tls: Option<TlsIdentity>,
    /// `[admin]`'s token and what it guards (a reload may change them).
    pub admin_lock: admin::AdminLock,
    /// `[log] message_bodies`: log caller and bot bodies at trace level.
    pub message_bodies: bool,
    pub demo: Option<DemoConfig>,
    pub clients: ClientsConfig,
    pub auth_service: Option<AuthServiceConfig>,
    /// `[dns]`: how backend names are resolved.
    pub dns: dns::DnsSettings,
    pub backends: Vec<Backend>,
    pub routes: Vec<Route>,
    /// `[limits]`: the default rate limits.
    pub rate_limits: limits::LimitsConfig,
    /// `[migration] divergence_log…`: where differing shadow answers are written, if anywhere.
    pub divergence_log: Option<migration::DivergenceLogConfig>,
    /// The text it was parsed from (empty when built otherwise).
    pub source: Arc<source::ConfigSource>,
}

/// Reads, parses and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new("", format!("cannot read {}: {e}", path.display())))?;
    parse(&text)
}

/// Parses and validates config text; the config keeps the text (and a view of it with its secrets
/// hidden) as its [`source::ConfigSource`].
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    let (config, secrets) = secret::with_literals(|| parse_only(text));
    let mut config = config?;
    config.source = Arc::new(source::ConfigSource::new(text, &secrets));
    Ok(config)
}

fn parse_only(text: &str) -> Result<Config, ConfigError> {
    let de = toml::Deserializer::new(text);
    let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let at = inner
            .span()
            .map(|s| format!(" (line {})", text[..s.start].matches('\n').count() + 1))
            .unwrap_or_default();
        let key = if key == "." { String::new() } else { key };
        ConfigError::new(key, format!("{}{at}", inner.message()))
    })?;
    Config::from_raw(raw)
}

impl Config {
    /// Validates the raw file, table by table.
    pub fn from_raw(raw: RawConfig) -> Result<Config, ConfigError> {
        let (server, limits) = server::validate(&raw.server)?;
        let tls = raw.server.tls.as_ref().map(tls::validate).transpose()?;
        let admin_config = admin::admin(&raw.admin, server.listen)?;
        let admin_lock = admin::lock(&raw.admin)?;
        let log = admin::log(&raw.log)?;
        let (demo, demo_identity) = match &raw.demo {
            Some(d) => {
                let (c, id) = admin::demo(d, &[server.listen, admin_config.listen])?;
                (Some(c), Some(id))
            }
            None => (None, None),
        };
        let clients = clients::validate(raw.clients)?;
        let auth_service = raw
            .auth_service
            .as_ref()
            .map(auth_service::validate)
            .transpose()?;
        let dns = dns::validate(&raw.dns)?;
        let (backends, backend_index) = backends::validate(raw.backends)?;
        let known = routes::Known {
            backends: &backends,
            backend_index: &backend_index,
            clients: &clients,
            auth_service: auth_service.is_some(),
        };
        let routes = routes::validate(&raw.routes, &known)?;
        let rate_limits = limits::validate(&raw.limits)?;
        let redis = raw.redis.as_ref().map(redis::validate).transpose()?;
        let divergence_log = migration::validate(&raw.migration)?;
        let delivery = delivery::validate(&raw.delivery, server.listen, redis.is_some())?;
        if let (delivery::JournalKind::Redis, Some(r)) = (delivery.journal, &redis) {
            // Touched every third of it, each touch a call of up to timeout_ms: a live instance's
            // jobs must never look idle.
            let least = (4 * r.timeout.as_millis() as u64).max(1_000);
            if delivery.claim_idle_ms < least {
                return Err(ConfigError::new(
                    "delivery.claim_idle_ms",
                    format!("must be at least {least} (1000, and 4 x redis.timeout_ms)"),
                ));
            }
        }
        let conversations = conversations::validate(&raw.conversations)?;
        let tracing = raw.tracing.as_ref().map(otel::validate).transpose()?;
        Ok(Config {
            process: ProcessSettings {
                server,
                admin: admin_config,
                log,
                demo: demo_identity,
                redis,
                delivery,
                conversations,
                tracing,
            },
            limits,
            tls,
            admin_lock,
            message_bodies: raw.log.message_bodies,
            demo,
            clients,
            auth_service,
            dns,
            backends,
            routes,
            rate_limits,
            divergence_log,
            source: Arc::default(),
        })
    }

    /// The keys that differ between `self` and `new` and cannot change in a running process.
    pub fn restart_only_differences(&self, new: &Config) -> Vec<String> {
        if self.process == new.process {
            return Vec::new();
        }
        let a = serde_json::to_value(&self.process).expect("settings serialize");
        let b = serde_json::to_value(&new.process).expect("settings serialize");
        let mut keys = Vec::new();
        differing_keys("", &a, &b, &mut keys);
        keys
    }
}

/// The dotted keys under which two JSON values differ.
fn differing_keys(at: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value::Object;
    match (a, b) {
        (Object(x), Object(y)) => {
            let mut names: Vec<&String> = x.keys().chain(y.keys()).collect();
            names.sort_unstable();
            names.dedup();
            for k in names {
                let key = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                let null = serde_json::Value::Null;
                differing_keys(
                    &key,
                    x.get(k).unwrap_or(&null),
                    y.get(k).unwrap_or(&null),
                    out,
                );
            }
        }
        _ if a != b => out.push(at.to_string()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: &str = include_str!("../../proxy.toml");

    #[test]
    fn the_shipped_config_is_valid() {
        let c = parse(DEFAULT).unwrap();
        assert_eq!(c.process.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.process.admin.listen.to_string(), "127.0.0.1:9090");
        assert!(c.demo.is_some());
        assert_eq!(
            c.clients.demo_credentials_in_use,
            [
                "csml key demo-key",
                "dialogflow-cx token of demo",
                "directline secret of demo",
                "haptik client demo-client",
                "lex-v2 key of demo",
                &format!("{} token of demo", c.routes[5].ingress[0].as_str())
            ]
        );
        assert_eq!(c.routes[0].path, "/chat");
    }

    fn err(text: &str) -> ConfigError {
        parse(text).unwrap_err()
    }

    const MINIMAL: &str = r#"
[server]
listen = "127.0.0.1:1"
[admin]
listen = "127.0.0.1:2"
[[clients.haptik]]
name = "c"
client_id = "cid"
token = "t"
[[backends]]
name = "b"
dialect = "csml"
url = "http://127.0.0.1:3/api/chat"
api_key = "k"
api_secret = "s"
[[routes]]
name = "r"
path = "/chat"
ingress = "haptik"
backend = "b"
"#;

    #[test]
    fn minimal_config_loads() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.backends[0].urls[0].endpoint.path, "/api/chat");
        assert_eq!(c.backends[0].urls[0].endpoint.authority, "127.0.0.1:3");
        assert!(c.routes[0].target(Some(99)).is_some());
    }

    #[test]
    fn a_path_routed_twice_is_refused_and_a_prefix_of_it_is_not() {
        let again =
            "[[routes]]\nname = \"r2\"\npath = \"/chat\"\ningress = \"haptik\"\nbackend = \"b\"\n";
        let e = err(&format!("{MINIMAL}{again}"));
        assert_eq!(
            (e.key.as_str(), e.problem.as_str()),
            ("routes[1].path", "`/chat` is routed twice")
        );
        let prefix = again.replace("path =", "path_prefix =");
        assert!(parse(&format!("{MINIMAL}{prefix}")).is_ok());
    }

    /// A load is pure: names are resolved when pools and the auth service start, so a name that
    /// does not resolve (yet) never refuses a configuration.
    #[test]
    fn loading_does_no_dns() {
        let text = MINIMAL.replace("127.0.0.1:3", "no-such-bot.invalid:3")
            + "[auth_service]\nurl = \"http://no-such-auth.invalid/verify\"\n";
        let c = parse(&text).unwrap();
        assert!(c.backends[0].urls[0].addrs.is_empty());
        assert_eq!(c.backends[0].urls[0].endpoint.host, "no-such-bot.invalid");
        assert!(c.auth_service.unwrap().endpoint.has_name());
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = err(&MINIMAL.replace("name = \"b\"", "name = \"b\"\ncolour = 1"));
        assert_eq!(e.key, "backends[0].colour");
        assert!(e.problem.contains("unknown field `colour`"), "{e}");
        let e = err(&format!("{MINIMAL}\n[extra]\n"));
        assert!(e.to_string().contains("unknown field `extra`"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            (
                MINIMAL.replace("http://127.0.0.1:3/api/chat", "ftp://x/y"),
                "backends[0].url",
            ),
            (
                MINIMAL.replace("backend = \"b\"", "backend = \"nope\""),
                "routes[0].backend",
            ),
            (
                MINIMAL.replace("listen = \"127.0.0.1:1\"", "listen = \"nowhere\""),
                "server.listen",
            ),
            (
                MINIMAL.replace("api_secret = \"s\"", ""),
                "backends[0].api_secret",
            ),
            (
                MINIMAL.replace(
                    "token = \"t\"",
                    "token = { env = \"BOTBRIDGE_TEST_UNSET_VAR\" }",
                ),
                "clients.haptik[0].token",
            ),
            (
                MINIMAL.replace("token = \"t\"", "token = { file = \"/nonexistent/x\" }"),
                "clients.haptik[0].token",
            ),
            (
                MINIMAL.replace("token = \"t\"", "token = { vault = \"x\" }"),
                "clients.haptik[0].token",
            ),
            (
                MINIMAL.replace("dialect = \"csml\"", "dialect = \"klingon\""),
                "backends[0].dialect",
            ),
            (
                MINIMAL.replace("token = \"t\"", "token_sha256 = \"abc\""),
                "clients.haptik[0].token_sha256",
            ),
        ];
        for (text, key) in cases {
            let e = err(&text);
            assert_eq!(e.key, key, "{e}");
        }
    }

    #[test]
    fn header_breaking_secrets_are_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "tok\r\nX-Evil: 1\n").unwrap();
        let cfg = MINIMAL.replace(
            "dialect = \"csml\"\nurl = \"http://127.0.0.1:3/api/chat\"\napi_key = \"k\"\napi_secret = \"s\"",
            &format!("dialect = \"haptik\"\nurl = \"http://127.0.0.1:3/hook\"\ntoken = {{ file = \"{}\" }}\nclient_id = \"c\"", f.display()),
        );
        let e = err(&cfg);
        assert_eq!(e.key, "backends[0].token", "{e}");
        assert!(!e.to_string().contains("X-Evil"));
    }

    #[test]
    fn secrets_come_from_env_and_files_and_never_print() {
        std::env::set_var("BOTBRIDGE_TEST_SECRET", "from-env");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secret");
        std::fs::write(&f, "from-file\n").unwrap();
        let src = SecretSource::Env("BOTBRIDGE_TEST_SECRET".into());
        assert_eq!(src.resolve("k").unwrap(), "from-env");
        let src = SecretSource::File(f.to_string_lossy().into());
        assert_eq!(src.resolve("k").unwrap(), "from-file");
        assert!(!format!("{:?}", SecretSource::Literal("hush".into())).contains("hush"));
        let c = parse(&MINIMAL.replace(
            "api_secret = \"s\"",
            "api_secret = { env = \"BOTBRIDGE_TEST_SECRET\" }",
        ))
        .unwrap();
        assert!(!format!("{c:?}").contains("from-env"));
    }

    #[test]
    fn a_key_of_another_dialect_is_refused_by_name() {
        let with = |extra: &str| {
            MINIMAL.replace(
                "api_secret = \"s\"",
                &format!("api_secret = \"s\"\n{extra}"),
            )
        };
        let e = err(&with("token = \"t\""));
        assert_eq!(
            e.to_string(),
            "backends[0].token: not used by dialect `csml`; remove it"
        );
        let e = err(&with("bot_id = \"b\""));
        assert_eq!(e.key, "backends[0].bot_id");
        let e = err(&with("colour = 1"));
        assert_eq!(e.to_string(), "backends[0].colour: unknown field `colour`");
        let e = err(&MINIMAL.replace("dialect = \"csml\"", "dialect = \"haptik\""));
        assert_eq!(
            e.to_string(),
            "backends[0].api_key: not used by dialect `haptik`; remove it"
        );
    }

    #[test]
    fn ingress_names_dialects_and_clients_tables_must_exist() {
        let e = err(&MINIMAL.replace("ingress = \"haptik\"", "ingress = \"klingon\""));
        assert_eq!(e.key, "routes[0].ingress");
        assert!(e.problem.contains("unknown dialect `klingon`"), "{e}");
        let c = parse(&MINIMAL.replace("ingress = \"haptik\"", "ingress = [\"haptik\"]")).unwrap();
        assert_eq!(c.routes[0].fixed().map(|d| d.as_str()), Some("haptik"));
        let e = err(&MINIMAL.replace("ingress = \"haptik\"", "ingress = \"csml\""));
        assert_eq!(
            e.to_string(),
            "routes[0].ingress: accepts csml callers but no [[clients.csml]] is configured"
        );
        let e = err(&format!("{MINIMAL}\n[[clients.klingon]]\nname = \"k\"\n"));
        assert_eq!(e.key, "clients.klingon");
    }

    #[test]
    fn every_process_setting_needs_a_restart_and_is_named() {
        let a = parse(DEFAULT).unwrap();
        let same = parse(DEFAULT).unwrap();
        assert!(a.restart_only_differences(&same).is_empty());
        let cases = [
            ("threads = 2", "threads = 3", "process.server.threads"),
            (
                "listen = \"127.0.0.1:9090\"",
                "listen = \"127.0.0.1:9091\"",
                "admin.listen",
            ),
            ("filter = \"info\"", "filter = \"debug\"", "log.filter"),
            (
                "api_secret = \"demo-backend-secret\"\nhaptik",
                "api_secret = \"other\"\nhaptik",
                "demo.credentials_sha256",
            ),
        ];
        for (from, to, key) in cases {
            let b = parse(&DEFAULT.replacen(from, to, 1)).unwrap();
            let keys = a.restart_only_differences(&b);
            assert!(
                keys.iter().any(|k| k == key.trim_start_matches("process.")),
                "{key}: {keys:?}"
            );
        }
        // What a reload may change is not among them.
        let b = parse(&DEFAULT.replace("max_body_bytes = 65536", "max_body_bytes = 1024")).unwrap();
        assert!(a.restart_only_differences(&b).is_empty());
    }

    /// Read by the Rasa dialect's table: its token joins the URL's query.
    #[test]
    fn a_rasa_bot_token_travels_in_the_query() {
        let config = r#"
[server]
listen = "127.0.0.1:1"
[admin]
listen = "127.0.0.1:2"
[[clients.rasa]]
name = "r"
token = "caller-token"
[[backends]]
name = "b"
dialect = "rasa"
url = "http://127.0.0.1:3/webhooks/rest/webhook?x=1"
token = "t k&"
[[routes]]
name = "r"
path = "/webhooks/rest/webhook"
ingress = "rasa"
backend = "b"
"#;
        let c = parse(config).unwrap();
        assert_eq!(
            c.backends[0].urls[0].endpoint.path,
            "/webhooks/rest/webhook?x=1&token=t%20k%26"
        );
        let e = parse(&config.replace("token = \"t k&\"", "bot_id = \"x\"")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "backends[0].bot_id: not used by dialect `rasa`; remove it"
        );
    }
}
