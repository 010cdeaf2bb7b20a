//! `proxy.toml`: its tables as types, loaded and validated once.
//!
//! [`RawConfig`] mirrors the file (unknown keys are errors); [`Config::from_raw`] resolves secrets from
//! the environment or files, parses URLs and addresses, checks every cross-reference and builds the
//! runtime types the request path uses without re-checking. Every error names the key it is about
//! (`backends[0].url: …`).

use std::collections::HashMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::auth::{CsmlClientAuth, CsmlClients, Grant, HaptikClient, HaptikClients, Scope};
pub use crate::dialect::{
    AnswerShape, BackendDialect, BackendSpec, FlowTriggerPolicy, IngressDialect, RouteIngress,
};
pub use crate::signing::CsmlAuth;
use crate::signing::CsmlKey;

/// A configuration error: the key it is about and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The dotted key, e.g. `backends[0].url`; empty for file-level errors.
    pub key: String,
    /// What is wrong with it.
    pub problem: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
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

impl SecretSource {
    /// Reads the secret. `key` names the config key for errors; the value never appears in one.
    pub fn resolve(&self, key: &str) -> Result<String, ConfigError> {
        let value = match self {
            SecretSource::Literal(s) => s.clone(),
            SecretSource::Env(var) => std::env::var(var).map_err(|_| {
                ConfigError::new(key, format!("environment variable `{var}` is not set"))
            })?,
            SecretSource::File(path) => {
                let mut s = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::new(key, format!("cannot read `{path}`: {e}")))?;
                if s.ends_with('\n') {
                    s.pop();
                    if s.ends_with('\r') {
                        s.pop();
                    }
                }
                s
            }
        };
        if value.is_empty() {
            return Err(ConfigError::new(key, "the secret is empty"));
        }
        Ok(value)
    }
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub server: RawServer,
    pub admin: RawAdmin,
    #[serde(default)]
    pub log: RawLog,
    pub demo: Option<RawDemo>,
    #[serde(default)]
    pub clients: RawClients,
    pub auth_service: Option<RawAuthService>,
    #[serde(default)]
    pub backends: Vec<RawBackend>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
}

/// `[server]`: the public listener and process settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: String,
    #[serde(default = "default_threads")]
    pub threads: usize,
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    #[serde(default = "default_max_answer")]
    pub max_answer_bytes: usize,
    #[serde(default = "default_pool")]
    pub upstream_pool_size: usize,
    /// Per client connection read buffer; it is held for as long as the connection stays open.
    #[serde(default = "default_read_buffer")]
    pub read_buffer_bytes: usize,
    #[serde(default = "default_grace")]
    pub grace_period_seconds: u64,
    #[serde(default = "default_pid")]
    pub pid_file: String,
    #[serde(default = "default_upgrade_sock")]
    pub upgrade_sock: String,
}

/// `[admin]`: the metrics and health listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: String,
}

/// `[log]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    #[serde(default)]
    pub format: LogFormat,
    #[serde(default = "default_filter")]
    pub filter: String,
    /// Log caller and backend message bodies at trace level (target `botbridge::messages`). Off by
    /// default: bodies are what users wrote.
    #[serde(default)]
    pub message_bodies: bool,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            format: LogFormat::Human,
            filter: default_filter(),
            message_bodies: false,
        }
    }
}

/// How log lines look.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// `[demo]`: the built-in demo bots (CSML Chat API at `/api/chat`, Haptik webhook at
/// `/haptik/webhook`, CSML engine at `/run`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDemo {
    pub listen: String,
    pub api_key: String,
    pub api_secret: SecretSource,
    pub haptik_client_id: Option<String>,
    pub haptik_token: Option<SecretSource>,
}

/// `[clients]`: who may call the proxy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClients {
    #[serde(default)]
    pub haptik: Vec<RawHaptikClient>,
    #[serde(default)]
    pub csml: Vec<RawCsmlClient>,
    #[serde(default = "default_tolerance")]
    pub csml_tolerance_secs: u64,
    /// Refuse a signed CSML request whose (key, timestamp, signature) was already seen within the
    /// tolerance window. Off by default: the signature covers only `KEY|TS`, so two honest requests
    /// signed in the same second look identical.
    #[serde(default)]
    pub csml_replay_guard: bool,
}

/// `[auth_service]`: an external service asked about credentials not configured here.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuthService {
    pub url: String,
    /// Sent as `Authorization: Bearer` to the service, if it wants one.
    pub bearer: Option<SecretSource>,
    #[serde(default = "default_auth_timeout")]
    pub timeout_ms: u64,
    #[serde(default = "default_positive_ttl")]
    pub positive_ttl_s: u64,
    #[serde(default = "default_negative_ttl")]
    pub negative_ttl_s: u64,
    #[serde(default = "default_max_entries")]
    pub max_entries: u64,
    /// How long after its TTL a valid decision may still be used while the service is down (0: never).
    #[serde(default)]
    pub serve_stale_s: u64,
}

/// `[[clients.csml]]`: one CSML caller.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCsmlClient {
    pub name: String,
    pub key: SecretSource,
    #[serde(default)]
    pub auth: CsmlAuthMode,
    pub secret: Option<SecretSource>,
    pub business_id: Option<i64>,
    /// Route names this caller may reach (absent: any).
    pub routes: Option<Vec<String>>,
    /// Business ids this caller may reach (absent: any).
    pub businesses: Option<Vec<i64>>,
}

/// `[[clients.haptik]]`: one Haptik caller. Give `token` or `token_sha256`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHaptikClient {
    pub name: String,
    pub client_id: String,
    pub token: Option<SecretSource>,
    pub token_sha256: Option<SecretSource>,
    /// Route names this caller may reach (absent: any).
    pub routes: Option<Vec<String>>,
    /// Business ids this caller may reach (absent: any).
    pub businesses: Option<Vec<i64>>,
}

impl Default for RawClients {
    fn default() -> Self {
        RawClients {
            haptik: Vec::new(),
            csml: Vec::new(),
            csml_tolerance_secs: default_tolerance(),
            csml_replay_guard: false,
        }
    }
}

/// `[[backends]]`: one bot the proxy forwards to. Which credential keys apply depends on `dialect`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub name: String,
    pub dialect: BackendDialect,
    pub url: String,
    /// csml: `signed` or `plain`.
    pub auth: Option<CsmlAuthMode>,
    /// csml, csml-engine.
    pub api_key: Option<SecretSource>,
    /// csml (signed).
    pub api_secret: Option<SecretSource>,
    /// haptik.
    pub token: Option<SecretSource>,
    /// haptik.
    pub client_id: Option<String>,
    /// csml-engine.
    pub bot_id: Option<String>,
    /// csml-engine.
    pub channel_id: Option<String>,
    #[serde(default = "default_connect_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_read_ms")]
    pub read_timeout_ms: u64,
    #[serde(default = "default_idle_s")]
    pub pool_idle_timeout_s: u64,
}

/// How the proxy authenticates to a CSML backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CsmlAuthMode {
    /// `x-api-key: KEY|TS` + `x-api-signature`.
    #[default]
    Signed,
    /// `x-api-key: KEY` only.
    Plain,
}

/// `[[routes]]`: a path clients call and where it leads.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    pub path: String,
    pub ingress: RouteIngress,
    #[serde(default)]
    pub haptik_answer: AnswerShape,
    #[serde(default)]
    pub flow_trigger: FlowTriggerPolicy,
    pub business_id: Option<i64>,
    pub backend: Option<String>,
    pub business_name: Option<String>,
    #[serde(default = "default_bot_name")]
    pub bot_name: String,
    #[serde(default)]
    pub businesses: Vec<RawBusiness>,
}

/// `[[routes.businesses]]`: one Haptik business id and the backend that serves it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBusiness {
    pub id: i64,
    pub backend: Option<String>,
    pub name: Option<String>,
}

fn default_threads() -> usize {
    2
}
fn default_max_body() -> usize {
    64 * 1024
}
fn default_max_answer() -> usize {
    1024 * 1024
}
fn default_pool() -> usize {
    256
}
fn default_read_buffer() -> usize {
    0
}
fn default_grace() -> u64 {
    5
}
fn default_pid() -> String {
    "/tmp/botbridge.pid".into()
}
fn default_upgrade_sock() -> String {
    "/tmp/botbridge_upgrade.sock".into()
}
fn default_filter() -> String {
    "info".into()
}
fn default_connect_ms() -> u64 {
    2_000
}
fn default_read_ms() -> u64 {
    30_000
}
fn default_idle_s() -> u64 {
    30
}
fn default_tolerance() -> u64 {
    300
}
fn default_auth_timeout() -> u64 {
    500
}
fn default_positive_ttl() -> u64 {
    60
}
fn default_negative_ttl() -> u64 {
    5
}
fn default_max_entries() -> u64 {
    10_000
}
fn default_bot_name() -> String {
    "botbridge".into()
}

/// The validated configuration the proxy runs on.
#[derive(Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub admin_listen: SocketAddr,
    pub log: RawLog,
    pub demo: Option<DemoConfig>,
    pub haptik_clients: HaptikClients,
    pub csml_clients: CsmlClients,
    pub csml_replay_guard: bool,
    pub auth_service: Option<AuthServiceConfig>,
    /// Callers whose credentials are the shipped demo ones (warned about at start).
    pub demo_credentials_in_use: Vec<String>,
    pub backends: Vec<Backend>,
    pub routes: Vec<Route>,
}

/// `[auth_service]`, validated.
#[derive(Debug, Clone)]
pub struct AuthServiceConfig {
    pub endpoint: Endpoint,
    pub bearer: Option<String>,
    pub positive_ttl: Duration,
    pub negative_ttl: Duration,
    pub max_entries: u64,
    pub serve_stale: Option<Duration>,
}

/// `[server]`, validated.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub threads: usize,
    pub max_body_bytes: usize,
    pub max_answer_bytes: usize,
    pub upstream_pool_size: usize,
    pub read_buffer_bytes: usize,
    pub grace_period_seconds: u64,
    pub pid_file: String,
    pub upgrade_sock: String,
}

/// `[demo]`, validated.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    pub listen: SocketAddr,
    pub key: CsmlKey,
    /// The Haptik demo bot's expected caller, if configured.
    pub haptik: Option<(String, HaptikClient)>,
}

/// A backend, validated: address resolved, credentials loaded.
#[derive(Debug, Clone)]
pub struct Backend {
    pub name: String,
    pub spec: BackendSpec,
    pub endpoint: Endpoint,
}

/// Where and how to reach an HTTP service (a backend or the auth service), resolved at load.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The name metrics and logs use.
    pub name: String,
    pub tls: bool,
    /// The host as written in the URL (TLS server name).
    pub host: String,
    /// `host[:port]` for the Host header.
    pub authority: String,
    pub addr: SocketAddr,
    pub path: String,
    pub connect_timeout: Duration,
    /// The whole exchange must finish within this.
    pub read_timeout: Duration,
    pub pool_idle_timeout: Duration,
}

/// Where a request for one business goes.
#[derive(Debug, Clone)]
pub struct Target {
    /// Index into [`Config::backends`].
    pub backend: usize,
    /// The business name shown to Haptik clients.
    pub business_name: String,
}

/// A route, validated.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub path: String,
    pub ingress: RouteIngress,
    pub haptik_answer: AnswerShape,
    pub flow_trigger: FlowTriggerPolicy,
    /// The Haptik business for callers that name none (CSML callers without a mapping).
    pub business_id: Option<i64>,
    pub bot_name: String,
    /// For business ids not listed in `businesses`; `None` rejects them.
    pub default_target: Option<Target>,
    pub businesses: HashMap<i64, Target>,
}

impl Route {
    /// The target for a business id, if the route serves it.
    pub fn target(&self, business_id: Option<i64>) -> Option<&Target> {
        business_id
            .and_then(|id| self.businesses.get(&id))
            .or(self.default_target.as_ref())
    }

    /// Every backend the route can reach (indexes into [`Config::backends`]), each once, in order.
    pub fn backends(&self) -> Vec<usize> {
        let mut b: Vec<usize> = self
            .default_target
            .iter()
            .chain(self.businesses.values())
            .map(|t| t.backend)
            .collect();
        b.sort_unstable();
        b.dedup();
        b
    }
}

/// Reads, parses and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new("", format!("cannot read {}: {e}", path.display())))?;
    parse(&text)
}

/// Parses and validates config text.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    let de = toml::Deserializer::new(text);
    let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let msg = inner.message().to_string();
        let at = inner
            .span()
            .map(|s| {
                let line = text[..s.start].matches('\n').count() + 1;
                format!(" (line {line})")
            })
            .unwrap_or_default();
        ConfigError::new(
            if key == "." { String::new() } else { key },
            format!("{msg}{at}"),
        )
    })?;
    Config::from_raw(raw)
}

fn socket_addr(key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse()
        .map_err(|_| ConfigError::new(key, format!("`{s}` is not an address like 127.0.0.1:8080")))
}

/// Refuses a value that cannot be sent as an HTTP header value (control characters, non-ASCII),
/// e.g. a secret file with a stray carriage return. The value itself is never printed.
fn header_safe(key: &str, v: &str) -> Result<(), ConfigError> {
    if v.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)) {
        Ok(())
    } else {
        Err(ConfigError::new(
            key,
            "contains characters that cannot be sent in an HTTP header (control or non-ASCII)",
        ))
    }
}

/// Checks every value of a backend spec that is sent as a header.
fn spec_headers_safe(key: &str, spec: &BackendSpec) -> Result<(), ConfigError> {
    let field = |f: &str| format!("{key}.{f}");
    match spec {
        BackendSpec::Csml {
            auth: CsmlAuth::Signed(k),
        } => header_safe(&field("api_key"), k.key()),
        BackendSpec::Csml {
            auth: CsmlAuth::Plain(k),
        } => header_safe(&field("api_key"), k),
        BackendSpec::Haptik { token, client_id } => {
            header_safe(&field("token"), token)?;
            header_safe(&field("client_id"), client_id)
        }
        BackendSpec::CsmlEngine { api_key, .. } => api_key
            .as_deref()
            .map_or(Ok(()), |k| header_safe(&field("api_key"), k)),
    }
}

fn nonzero(key: &str, v: u64) -> Result<u64, ConfigError> {
    if v == 0 {
        Err(ConfigError::new(key, "must be greater than 0"))
    } else {
        Ok(v)
    }
}

impl Config {
    /// The keys that differ between `self` and `new` and cannot change in a running process.
    pub fn restart_only_differences(&self, new: &Config) -> Vec<&'static str> {
        let (a, b) = (&self.server, &new.server);
        let mut d = Vec::new();
        let mut check = |key: &'static str, differs: bool| {
            if differs {
                d.push(key);
            }
        };
        check("server.listen", a.listen != b.listen);
        check("server.threads", a.threads != b.threads);
        check(
            "server.upstream_pool_size",
            a.upstream_pool_size != b.upstream_pool_size,
        );
        check(
            "server.max_answer_bytes",
            a.max_answer_bytes != b.max_answer_bytes,
        );
        check(
            "server.grace_period_seconds",
            a.grace_period_seconds != b.grace_period_seconds,
        );
        check("server.pid_file", a.pid_file != b.pid_file);
        check(
            "server.read_buffer_bytes",
            a.read_buffer_bytes != b.read_buffer_bytes,
        );
        check("server.upgrade_sock", a.upgrade_sock != b.upgrade_sock);
        check("admin.listen", self.admin_listen != new.admin_listen);
        check(
            "log",
            self.log.format != new.log.format || self.log.filter != new.log.filter,
        );
        check(
            "demo",
            self.demo.as_ref().map(|d| d.listen) != new.demo.as_ref().map(|d| d.listen),
        );
        d
    }

    /// Validates the raw file into the runtime configuration.
    pub fn from_raw(raw: RawConfig) -> Result<Config, ConfigError> {
        let s = &raw.server;
        if s.threads == 0 || s.threads > 256 {
            return Err(ConfigError::new(
                "server.threads",
                "must be between 1 and 256",
            ));
        }
        nonzero("server.max_body_bytes", s.max_body_bytes as u64)?;
        nonzero("server.max_answer_bytes", s.max_answer_bytes as u64)?;
        if s.read_buffer_bytes != 0 && !(1024..=1024 * 1024).contains(&s.read_buffer_bytes) {
            return Err(ConfigError::new(
                "server.read_buffer_bytes",
                "must be 0 (unbuffered) or between 1024 and 1048576",
            ));
        }
        nonzero("server.upstream_pool_size", s.upstream_pool_size as u64)?;
        let server = ServerConfig {
            listen: socket_addr("server.listen", &s.listen)?,
            threads: s.threads,
            max_body_bytes: s.max_body_bytes,
            max_answer_bytes: s.max_answer_bytes,
            upstream_pool_size: s.upstream_pool_size,
            read_buffer_bytes: s.read_buffer_bytes,
            grace_period_seconds: s.grace_period_seconds,
            pid_file: s.pid_file.clone(),
            upgrade_sock: s.upgrade_sock.clone(),
        };
        let admin_listen = socket_addr("admin.listen", &raw.admin.listen)?;
        if admin_listen == server.listen {
            return Err(ConfigError::new(
                "admin.listen",
                "must differ from server.listen",
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&raw.log.filter)
            .map_err(|e| ConfigError::new("log.filter", format!("not a valid filter: {e}")))?;

        let demo = match &raw.demo {
            None => None,
            Some(d) => {
                let listen = socket_addr("demo.listen", &d.listen)?;
                if listen == server.listen || listen == admin_listen {
                    return Err(ConfigError::new(
                        "demo.listen",
                        "must differ from the other listeners",
                    ));
                }
                if d.api_key.is_empty() || d.api_key.contains('|') {
                    return Err(ConfigError::new(
                        "demo.api_key",
                        "must be non-empty and contain no `|`",
                    ));
                }
                let secret = d.api_secret.resolve("demo.api_secret")?;
                let haptik = match (&d.haptik_client_id, &d.haptik_token) {
                    (Some(id), Some(t)) => Some((
                        id.clone(),
                        HaptikClient::with_token(
                            "demo-haptik-caller",
                            t.resolve("demo.haptik_token")?.as_bytes(),
                        ),
                    )),
                    (None, None) => None,
                    _ => {
                        return Err(ConfigError::new(
                            "demo",
                            "give both `haptik_client_id` and `haptik_token`, or neither",
                        ))
                    }
                };
                Some(DemoConfig {
                    listen,
                    key: CsmlKey::new(d.api_key.clone(), secret.as_bytes()),
                    haptik,
                })
            }
        };

        let mut haptik_clients = HaptikClients::new();
        let mut demo_credentials_in_use = Vec::new();
        for (i, c) in raw.clients.haptik.iter().enumerate() {
            let key = format!("clients.haptik[{i}]");
            if c.client_id.trim().is_empty() {
                return Err(ConfigError::new(
                    format!("{key}.client_id"),
                    "must not be empty",
                ));
            }
            let client = match (&c.token, &c.token_sha256) {
                (Some(t), None) => {
                    let token = t.resolve(&format!("{key}.token"))?;
                    if token == "demo-token" {
                        demo_credentials_in_use.push(format!("haptik client {}", c.client_id));
                    }
                    HaptikClient::with_token(&c.name, token.as_bytes())
                }
                (None, Some(h)) => {
                    let k = format!("{key}.token_sha256");
                    let hexed = h.resolve(&k)?;
                    let mut digest = [0u8; 32];
                    hex::decode_to_slice(hexed.trim(), &mut digest).map_err(|_| {
                        ConfigError::new(&k, "must be 64 hex digits (a SHA-256 digest)")
                    })?;
                    HaptikClient::with_token_sha256(&c.name, digest)
                }
                _ => {
                    return Err(ConfigError::new(
                        key,
                        "give exactly one of `token` or `token_sha256`",
                    ))
                }
            };
            let client = client.with_scope(Scope {
                routes: c.routes.clone(),
                businesses: c.businesses.clone(),
            });
            if !haptik_clients.insert(c.client_id.clone(), client) {
                return Err(ConfigError::new(
                    format!("{key}.client_id"),
                    format!("`{}` is configured twice", c.client_id),
                ));
            }
        }

        let mut csml_clients = CsmlClients::new(raw.clients.csml_tolerance_secs);
        for (i, c) in raw.clients.csml.iter().enumerate() {
            let key = format!("clients.csml[{i}]");
            let api_key = c.key.resolve(&format!("{key}.key"))?;
            if api_key.contains('|') {
                return Err(ConfigError::new(
                    format!("{key}.key"),
                    "must not contain `|`",
                ));
            }
            let auth = match (c.auth, &c.secret) {
                (CsmlAuthMode::Signed, Some(s)) => {
                    let secret = s.resolve(&format!("{key}.secret"))?;
                    if api_key == "demo-key" && secret == "demo-secret" {
                        demo_credentials_in_use.push(format!("csml key {api_key}"));
                    }
                    CsmlClientAuth::Signed(CsmlKey::new(api_key.clone(), secret.as_bytes()))
                }
                (CsmlAuthMode::Signed, None) => {
                    return Err(ConfigError::new(
                        format!("{key}.secret"),
                        "missing: `auth = \"signed\"` needs the secret",
                    ))
                }
                (CsmlAuthMode::Plain, None) => CsmlClientAuth::Plain,
                (CsmlAuthMode::Plain, Some(_)) => {
                    return Err(ConfigError::new(
                        format!("{key}.secret"),
                        "not used with `auth = \"plain\"`; remove it",
                    ))
                }
            };
            let client = Grant {
                name: c.name.as_str().into(),
                business_id: c.business_id,
                scope: Scope {
                    routes: c.routes.clone(),
                    businesses: c.businesses.clone(),
                },
                csml: Some(auth),
            };
            if !csml_clients.insert(&api_key, client) {
                return Err(ConfigError::new(
                    format!("{key}.key"),
                    "this key is configured twice",
                ));
            }
        }

        let auth_service = match &raw.auth_service {
            None => None,
            Some(a) => {
                let timeout = nonzero("auth_service.timeout_ms", a.timeout_ms)?;
                let bearer = match &a.bearer {
                    Some(b) => {
                        let v = b.resolve("auth_service.bearer")?;
                        header_safe("auth_service.bearer", &v)?;
                        Some(v)
                    }
                    None => None,
                };
                Some(AuthServiceConfig {
                    endpoint: endpoint(
                        "auth_service",
                        "auth-service",
                        &a.url,
                        RawTimeouts {
                            connect_ms: timeout,
                            read_ms: timeout,
                            idle_s: 30,
                        },
                    )?,
                    bearer,
                    positive_ttl: Duration::from_secs(nonzero(
                        "auth_service.positive_ttl_s",
                        a.positive_ttl_s,
                    )?),
                    negative_ttl: Duration::from_secs(nonzero(
                        "auth_service.negative_ttl_s",
                        a.negative_ttl_s,
                    )?),
                    max_entries: nonzero("auth_service.max_entries", a.max_entries)?,
                    serve_stale: (a.serve_stale_s > 0)
                        .then(|| Duration::from_secs(a.serve_stale_s)),
                })
            }
        };

        let mut backends = Vec::with_capacity(raw.backends.len());
        let mut backend_index = HashMap::new();
        for (i, b) in raw.backends.iter().enumerate() {
            let key = format!("backends[{i}]");
            if backend_index.insert(b.name.clone(), i).is_some() {
                return Err(ConfigError::new(
                    format!("{key}.name"),
                    format!("`{}` is used twice", b.name),
                ));
            }
            backends.push(backend(&key, b)?);
        }

        let mut routes = Vec::with_capacity(raw.routes.len());
        for (i, r) in raw.routes.iter().enumerate() {
            let key = format!("routes[{i}]");
            if !r.path.starts_with('/') {
                return Err(ConfigError::new(
                    format!("{key}.path"),
                    "must start with `/`",
                ));
            }
            if routes.iter().any(|x: &Route| x.path == r.path) {
                return Err(ConfigError::new(
                    format!("{key}.path"),
                    format!("`{}` is routed twice", r.path),
                ));
            }
            let lookup = |k: String, name: &str| {
                backend_index
                    .get(name)
                    .copied()
                    .ok_or_else(|| ConfigError::new(k, format!("no backend named `{name}`")))
            };
            let default_name = r.business_name.clone();
            let default_target = match &r.backend {
                Some(name) => {
                    let idx = lookup(format!("{key}.backend"), name)?;
                    Some(Target {
                        backend: idx,
                        business_name: default_name.clone().unwrap_or_else(|| name.clone()),
                    })
                }
                None => None,
            };
            let mut businesses = HashMap::new();
            for (j, biz) in r.businesses.iter().enumerate() {
                let bkey = format!("{key}.businesses[{j}]");
                let (idx, bname) = match (&biz.backend, &default_target) {
                    (Some(name), _) => (lookup(format!("{bkey}.backend"), name)?, name.clone()),
                    (None, Some(t)) => (t.backend, backends[t.backend].name.clone()),
                    (None, None) => {
                        return Err(ConfigError::new(
                            format!("{bkey}.backend"),
                            "missing, and the route has no default `backend`",
                        ))
                    }
                };
                let business_name = biz
                    .name
                    .clone()
                    .or_else(|| default_name.clone())
                    .unwrap_or(bname);
                if businesses
                    .insert(
                        biz.id,
                        Target {
                            backend: idx,
                            business_name,
                        },
                    )
                    .is_some()
                {
                    return Err(ConfigError::new(
                        format!("{bkey}.id"),
                        format!("business {} is listed twice", biz.id),
                    ));
                }
            }
            if default_target.is_none() && businesses.is_empty() {
                return Err(ConfigError::new(
                    key,
                    "give a `backend` or at least one `businesses` entry",
                ));
            }
            if r.ingress.accepts(IngressDialect::Haptik)
                && haptik_clients.is_empty()
                && auth_service.is_none()
            {
                return Err(ConfigError::new(
                    format!("{key}.ingress"),
                    "accepts Haptik callers but no [[clients.haptik]] is configured",
                ));
            }
            let reaches_haptik = default_target
                .iter()
                .chain(businesses.values())
                .any(|t| backends[t.backend].spec.dialect() == BackendDialect::Haptik);
            if reaches_haptik
                && r.ingress.accepts(IngressDialect::Csml)
                && r.business_id.is_none()
                && raw.clients.csml.iter().any(|c| c.business_id.is_none())
            {
                return Err(ConfigError::new(
                    format!("{key}.business_id"),
                    "required: CSML callers without a business_id reach a Haptik bot here",
                ));
            }
            if r.ingress.accepts(IngressDialect::Csml)
                && csml_clients.is_empty()
                && auth_service.is_none()
            {
                return Err(ConfigError::new(
                    format!("{key}.ingress"),
                    "accepts CSML callers but no [[clients.csml]] is configured",
                ));
            }
            routes.push(Route {
                name: r.name.clone(),
                path: r.path.clone(),
                ingress: r.ingress,
                haptik_answer: r.haptik_answer,
                flow_trigger: r.flow_trigger,
                business_id: r.business_id,
                bot_name: r.bot_name.clone(),
                default_target,
                businesses,
            });
        }
        if routes.is_empty() {
            return Err(ConfigError::new("routes", "at least one route is needed"));
        }
        let scoped = raw
            .clients
            .haptik
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("clients.haptik[{i}].routes"), &c.routes))
            .chain(
                raw.clients
                    .csml
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (format!("clients.csml[{i}].routes"), &c.routes)),
            );
        for (key, names) in scoped {
            for name in names.iter().flatten() {
                if !routes.iter().any(|r| &r.name == name) {
                    return Err(ConfigError::new(key, format!("no route named `{name}`")));
                }
            }
        }

        Ok(Config {
            server,
            admin_listen,
            log: raw.log,
            demo,
            haptik_clients,
            csml_clients,
            csml_replay_guard: raw.clients.csml_replay_guard,
            auth_service,
            demo_credentials_in_use,
            backends,
            routes,
        })
    }
}

/// Timeouts of an endpoint, as written (milliseconds / seconds).
struct RawTimeouts {
    connect_ms: u64,
    read_ms: u64,
    idle_s: u64,
}

/// Parses and resolves an `http(s)://` URL into an endpoint. `key` names the table for errors.
fn endpoint(key: &str, name: &str, url: &str, t: RawTimeouts) -> Result<Endpoint, ConfigError> {
    let url_key = format!("{key}.url");
    let uri: http::Uri = url
        .parse()
        .map_err(|e| ConfigError::new(&url_key, format!("not a valid URL: {e}")))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => {
            return Err(ConfigError::new(
                &url_key,
                "must start with http:// or https://",
            ))
        }
    };
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| ConfigError::new(&url_key, "has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_default();
    if authority.contains('@') {
        return Err(ConfigError::new(&url_key, "must not contain credentials"));
    }
    header_safe(&url_key, &authority)?;
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| ConfigError::new(&url_key, format!("cannot resolve `{host}`: {e}")))?
        .next()
        .ok_or_else(|| ConfigError::new(&url_key, format!("`{host}` resolves to no address")))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    Ok(Endpoint {
        name: name.to_string(),
        tls,
        host,
        authority,
        addr,
        path,
        connect_timeout: Duration::from_millis(nonzero(
            &format!("{key}.connect_timeout_ms"),
            t.connect_ms,
        )?),
        read_timeout: Duration::from_millis(nonzero(&format!("{key}.read_timeout_ms"), t.read_ms)?),
        pool_idle_timeout: Duration::from_secs(nonzero(
            &format!("{key}.pool_idle_timeout_s"),
            t.idle_s,
        )?),
    })
}

fn backend(key: &str, b: &RawBackend) -> Result<Backend, ConfigError> {
    let endpoint = endpoint(
        key,
        &b.name,
        &b.url,
        RawTimeouts {
            connect_ms: b.connect_timeout_ms,
            read_ms: b.read_timeout_ms,
            idle_s: b.pool_idle_timeout_s,
        },
    )?;
    let spec = backend_spec(key, b)?;
    spec_headers_safe(key, &spec)?;
    Ok(Backend {
        name: b.name.clone(),
        spec,
        endpoint,
    })
}

/// The dialect-specific part of a backend: its credentials and parameters. Keys that belong to
/// another dialect are errors, so a typo cannot silently drop a credential.
fn backend_spec(key: &str, b: &RawBackend) -> Result<BackendSpec, ConfigError> {
    let not_for = |field: &str, set: bool| -> Result<(), ConfigError> {
        if set {
            Err(ConfigError::new(
                format!("{key}.{field}"),
                format!("not used by dialect `{}`; remove it", b.dialect.as_str()),
            ))
        } else {
            Ok(())
        }
    };
    let required = |field: &str| {
        ConfigError::new(
            format!("{key}.{field}"),
            format!("required by dialect `{}`", b.dialect.as_str()),
        )
    };
    match b.dialect {
        BackendDialect::Csml => {
            not_for("token", b.token.is_some())?;
            not_for("client_id", b.client_id.is_some())?;
            not_for("bot_id", b.bot_id.is_some())?;
            not_for("channel_id", b.channel_id.is_some())?;
            let api_key = b
                .api_key
                .as_ref()
                .ok_or_else(|| required("api_key"))?
                .resolve(&format!("{key}.api_key"))?;
            if api_key.contains('|') {
                return Err(ConfigError::new(
                    format!("{key}.api_key"),
                    "must not contain `|`",
                ));
            }
            let auth = match (b.auth.unwrap_or_default(), &b.api_secret) {
                (CsmlAuthMode::Signed, Some(s)) => {
                    let secret = s.resolve(&format!("{key}.api_secret"))?;
                    CsmlAuth::Signed(CsmlKey::new(api_key, secret.as_bytes()))
                }
                (CsmlAuthMode::Signed, None) => {
                    return Err(ConfigError::new(
                        format!("{key}.api_secret"),
                        "missing: `auth = \"signed\"` needs the API secret",
                    ))
                }
                (CsmlAuthMode::Plain, None) => CsmlAuth::Plain(api_key),
                (CsmlAuthMode::Plain, Some(_)) => {
                    return Err(ConfigError::new(
                        format!("{key}.api_secret"),
                        "not used with `auth = \"plain\"`; remove it",
                    ))
                }
            };
            Ok(BackendSpec::Csml { auth })
        }
        BackendDialect::Haptik => {
            not_for("auth", b.auth.is_some())?;
            not_for("api_key", b.api_key.is_some())?;
            not_for("api_secret", b.api_secret.is_some())?;
            not_for("bot_id", b.bot_id.is_some())?;
            not_for("channel_id", b.channel_id.is_some())?;
            let token = b
                .token
                .as_ref()
                .ok_or_else(|| required("token"))?
                .resolve(&format!("{key}.token"))?;
            let client_id = b
                .client_id
                .clone()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| required("client_id"))?;
            Ok(BackendSpec::Haptik { token, client_id })
        }
        BackendDialect::CsmlEngine => {
            not_for("auth", b.auth.is_some())?;
            not_for("api_secret", b.api_secret.is_some())?;
            not_for("token", b.token.is_some())?;
            not_for("client_id", b.client_id.is_some())?;
            let api_key = match &b.api_key {
                Some(k) => Some(k.resolve(&format!("{key}.api_key"))?),
                None => None,
            };
            Ok(BackendSpec::CsmlEngine {
                bot_id: b
                    .bot_id
                    .clone()
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| required("bot_id"))?,
                channel_id: b
                    .channel_id
                    .clone()
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| required("channel_id"))?,
                api_key,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: &str = include_str!("../proxy.toml");

    #[test]
    fn the_shipped_config_is_valid() {
        let c = parse(DEFAULT).unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.admin_listen.to_string(), "127.0.0.1:9090");
        assert!(c.demo.is_some());
        assert_eq!(
            c.demo_credentials_in_use,
            ["haptik client demo-client", "csml key demo-key"]
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
        assert_eq!(c.backends[0].endpoint.path, "/api/chat");
        assert_eq!(c.backends[0].endpoint.authority, "127.0.0.1:3");
        assert!(c.routes[0].target(Some(99)).is_some());
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
}
