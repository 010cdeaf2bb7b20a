//! `[redis]`: the Redis server that several instances share their rate limits, API key replay guard and
//! auth cache clears on (one server at `url`, or the master a set of Redis Sentinels names), and what
//! each feature does when Redis fails (`on_redis_error`).
//!
//! The whole table is a process setting: the connection is made once, so changing it needs a restart.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::secret::{nonzero, SecretSource};
use super::ConfigError;

/// What a feature does when Redis cannot be asked (down, slower than `timeout_ms`, or an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnRedisError {
    /// Use this instance's own in-process state instead (limits then hold per instance).
    Local,
    /// Refuse the request with 503 in the caller's dialect.
    Deny,
    /// Let the request through unchecked.
    Allow,
}

impl OnRedisError {
    /// Every policy, for pre-registering metric series.
    pub const ALL: [OnRedisError; 3] =
        [OnRedisError::Local, OnRedisError::Deny, OnRedisError::Allow];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            OnRedisError::Local => "local",
            OnRedisError::Deny => "deny",
            OnRedisError::Allow => "allow",
        }
    }
}

/// `[redis.limits]` / `[redis.replay_guard]`: one feature's failure policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFeature {
    /// What the feature does when Redis fails.
    pub on_redis_error: OnRedisError,
}

/// `[redis.deliveries]`: the journal's failure policy and how many replicas must hold each entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeliveries {
    /// What an async request gets when the journal cannot be written on Redis (default `local`).
    #[serde(default = "default_deliveries_on_error")]
    pub on_redis_error: OnRedisError,
    /// Replicas that must acknowledge each journal entry (`WAIT`) before the request is answered;
    /// 0 (the default) does not wait.
    #[serde(default)]
    pub wait_replicas: u32,
}

fn default_deliveries_on_error() -> OnRedisError {
    OnRedisError::Local
}

/// `[redis]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    /// `redis://[:password@]host:port/db` (a secret: it may carry the password); or `sentinels`.
    pub url: Option<SecretSource>,
    /// The Sentinels that name the master (`redis://host:port` each), instead of `url`.
    pub sentinels: Option<Vec<String>>,
    /// The master's name at the Sentinels (with `sentinels`).
    pub master_name: Option<String>,
    /// A Redis Cluster: some of its nodes (`redis://host:port` each), instead of `url`.
    pub cluster: Option<Vec<String>>,
    /// The master's password (with `sentinels`), or every node's (with `cluster`); a secret.
    pub password: Option<SecretSource>,
    /// The master's database (with `sentinels`).
    #[serde(default)]
    pub db: i64,
    /// Deadline of every Redis call on the request path.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Deadline for (re)connecting.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// After a failed call, Redis is left alone (every feature falls back at once) this long, then
    /// tried again by one request.
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
    /// Prepended to every key and channel name, so deployments can share one Redis.
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
    /// Rate limits: `on_redis_error` (default `local`).
    pub limits: Option<RawFeature>,
    /// The replay guard of signed API keys: `on_redis_error` (default `deny`).
    pub replay_guard: Option<RawFeature>,
    /// The conversations of stateful bots: `on_redis_error` (default `local`: this instance's
    /// memory store).
    pub conversations: Option<RawFeature>,
    /// The delivery journal (`[delivery] journal = "redis"`): `local` (default: this instance's
    /// file journal) or `deny` (async requests get 503 while Redis is down).
    pub deliveries: Option<RawDeliveries>,
}

fn default_timeout_ms() -> u64 {
    100
}
fn default_connect_timeout_ms() -> u64 {
    1_000
}
fn default_backoff_ms() -> u64 {
    1_000
}
fn default_prefix() -> String {
    "botbridge:".into()
}

/// Redis Sentinel: the master named `master` at these Sentinels, followed when they fail over.
#[derive(Clone, PartialEq, Serialize)]
pub struct SentinelSettings {
    pub sentinels: Vec<String>,
    pub master: String,
    #[serde(skip)]
    pub password: Option<String>,
    pub db: i64,
}

/// Redis Cluster: the nodes to start from (the client learns the others and the slots).
#[derive(Clone, PartialEq, Serialize)]
pub struct ClusterSettings {
    pub nodes: Vec<String>,
    #[serde(skip)]
    pub password: Option<String>,
}

/// `[redis]`, validated. `Debug` and `Serialize` never show the URL (only its digest, so a reload
/// still notices a change).
#[derive(Clone, PartialEq, Serialize)]
pub struct RedisSettings {
    /// The one server's URL (empty with `sentinel`).
    #[serde(skip)]
    pub url: String,
    pub sentinel: Option<SentinelSettings>,
    pub cluster: Option<ClusterSettings>,
    /// SHA-256 of the URL: what a reload compares.
    pub url_sha256: String,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub backoff: Duration,
    pub key_prefix: String,
    pub limits_on_error: OnRedisError,
    pub replay_guard_on_error: OnRedisError,
    pub conversations_on_error: OnRedisError,
    pub deliveries_on_error: OnRedisError,
    /// Replicas that must acknowledge each journal entry (0: none waited for).
    pub deliveries_wait_replicas: u32,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &"<redacted>")
            .field("timeout", &self.timeout)
            .field("key_prefix", &self.key_prefix)
            .finish_non_exhaustive()
    }
}

/// Validates `[redis]`: the URL must parse as a Redis URL (it is not connected to here).
pub fn validate(r: &RawRedis) -> Result<RedisSettings, ConfigError> {
    let (url, sentinel, cluster) = match (&r.url, &r.sentinels, &r.cluster) {
        (Some(u), None, None) => (server_url(u)?, None, None),
        (None, Some(list), None) => (String::new(), Some(sentinel(r, list)?), None),
        (None, None, Some(nodes)) => (String::new(), None, Some(cluster(r, nodes)?)),
        _ => {
            return Err(ConfigError::new(
                "redis.url",
                "give one of url (one server), sentinels (with master_name) or cluster",
            ))
        }
    };
    let digest = match (&sentinel, &cluster) {
        (Some(s), _) => format!(
            "{}|{}|{}|{:?}",
            s.sentinels.join(","),
            s.master,
            s.db,
            s.password
        ),
        (_, Some(c)) => format!("cluster|{}|{:?}", c.nodes.join(","), c.password),
        _ => url.clone(),
    };
    let ms = |key: &str, v: u64| nonzero(&format!("redis.{key}"), v).map(Duration::from_millis);
    let deliveries_wait_replicas = wait_replicas(r, cluster.is_some())?;
    Ok(RedisSettings {
        deliveries_wait_replicas,
        url_sha256: hex::encode(Sha256::digest(digest.as_bytes())),
        url,
        sentinel,
        cluster,
        timeout: ms("timeout_ms", r.timeout_ms)?,
        connect_timeout: ms("connect_timeout_ms", r.connect_timeout_ms)?,
        backoff: ms("backoff_ms", r.backoff_ms)?,
        key_prefix: r.key_prefix.clone(),
        limits_on_error: r
            .limits
            .as_ref()
            .map_or(OnRedisError::Local, |f| f.on_redis_error),
        replay_guard_on_error: r
            .replay_guard
            .as_ref()
            .map_or(OnRedisError::Deny, |f| f.on_redis_error),
        conversations_on_error: r
            .conversations
            .as_ref()
            .map_or(OnRedisError::Local, |f| f.on_redis_error),
        deliveries_on_error: match r.deliveries.as_ref().map(|f| f.on_redis_error) {
            None => OnRedisError::Local,
            Some(OnRedisError::Allow) => {
                return Err(ConfigError::new(
                    "redis.deliveries.on_redis_error",
                    "must be \"local\" or \"deny\": an accepted delivery is journaled somewhere",
                ))
            }
            Some(p) => p,
        },
    })
}

/// `[redis.deliveries] wait_replicas`: at most 16, and not on a cluster (whose connection is shared by
/// every call, where a `WAIT` would hold up the others).
fn wait_replicas(r: &RawRedis, cluster: bool) -> Result<u32, ConfigError> {
    let n = r.deliveries.as_ref().map_or(0, |d| d.wait_replicas);
    if n > 16 {
        return Err(ConfigError::new(
            "redis.deliveries.wait_replicas",
            "at most 16 replicas can be waited for",
        ));
    }
    if n > 0 && cluster {
        return Err(ConfigError::new(
            "redis.deliveries.wait_replicas",
            "is for one server or Sentinels; a cluster journal is not waited on",
        ));
    }
    Ok(n)
}

/// One server's URL, checked.
fn server_url(u: &SecretSource) -> Result<String, ConfigError> {
    let url = u.resolve("redis.url")?;
    if !url.starts_with("redis://") && !url.starts_with("redis+unix://") {
        return Err(ConfigError::new(
            "redis.url",
            "must start with redis:// or redis+unix:// (TLS to Redis is not supported)",
        ));
    }
    // The client's own parser; its error may quote the URL, so it is not passed on.
    redis::Client::open(url.as_str())
        .map_err(|_| ConfigError::new("redis.url", "not a valid Redis URL"))?;
    Ok(url)
}

/// `cluster` and `password`, checked. Keys that must share a slot carry a hash tag (`{…}`), so the
/// key prefix may not hold one.
fn cluster(r: &RawRedis, nodes: &[String]) -> Result<ClusterSettings, ConfigError> {
    if nodes.is_empty() {
        return Err(ConfigError::new(
            "redis.cluster",
            "must name at least one node",
        ));
    }
    if nodes
        .iter()
        .any(|n| !n.starts_with("redis://") || redis::Client::open(n.as_str()).is_err())
    {
        return Err(ConfigError::new(
            "redis.cluster",
            "each must be a redis://host:port URL",
        ));
    }
    if r.key_prefix.contains(['{', '}']) {
        return Err(ConfigError::new(
            "redis.key_prefix",
            "may not contain { or } with cluster (its hash tags place keys in slots)",
        ));
    }
    let password = match &r.password {
        Some(p) => Some(p.resolve("redis.password")?),
        None => None,
    };
    Ok(ClusterSettings {
        nodes: nodes.to_vec(),
        password,
    })
}

/// `sentinels`, `master_name`, `password` and `db`, checked.
fn sentinel(r: &RawRedis, list: &[String]) -> Result<SentinelSettings, ConfigError> {
    if list.is_empty() {
        return Err(ConfigError::new(
            "redis.sentinels",
            "must name at least one Sentinel",
        ));
    }
    for s in list {
        if !s.starts_with("redis://") || redis::Client::open(s.as_str()).is_err() {
            return Err(ConfigError::new(
                "redis.sentinels",
                "each must be a redis://host:port URL",
            ));
        }
    }
    let master = (r.master_name.clone())
        .filter(|m| !m.trim().is_empty())
        .ok_or_else(|| ConfigError::new("redis.master_name", "required with sentinels"))?;
    let password = match &r.password {
        Some(p) => Some(p.resolve("redis.password")?),
        None => None,
    };
    Ok(SentinelSettings {
        sentinels: list.to_vec(),
        master,
        password,
        db: r.db,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> RawRedis {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn defaults_and_policies() {
        let s = validate(&raw(r#"url = "redis://127.0.0.1:6379/0""#)).unwrap();
        assert_eq!(s.timeout, Duration::from_millis(100));
        assert_eq!(s.key_prefix, "botbridge:");
        assert_eq!(s.limits_on_error, OnRedisError::Local);
        assert_eq!(s.replay_guard_on_error, OnRedisError::Deny);
        let s = validate(&raw(
            "url = \"redis://h:1/2\"\nlimits = { on_redis_error = \"deny\" }\n[replay_guard]\non_redis_error = \"allow\"",
        ))
        .unwrap();
        assert_eq!(s.limits_on_error, OnRedisError::Deny);
        assert_eq!(s.replay_guard_on_error, OnRedisError::Allow);
    }

    #[test]
    fn sentinels_instead_of_a_url() {
        let s = validate(&raw(
            "sentinels = [\"redis://127.0.0.1:26379\"]\nmaster_name = \"m\"\npassword = \"pw\"",
        ))
        .unwrap();
        let sentinel = s.sentinel.as_ref().unwrap();
        assert_eq!((sentinel.master.as_str(), sentinel.db), ("m", 0));
        assert!(!format!("{s:?}").contains("pw"));
        assert!(!serde_json::to_string(&s).unwrap().contains("pw"));
        let e = validate(&raw("sentinels = [\"redis://h:1\"]")).unwrap_err();
        assert_eq!(e.key, "redis.master_name");
        let e = validate(&raw("url = \"redis://h:1\"\nsentinels = [\"redis://h:1\"]")).unwrap_err();
        assert_eq!(e.key, "redis.url");
        let e = validate(&raw("sentinels = [\"h:1\"]\nmaster_name = \"m\"")).unwrap_err();
        assert_eq!(e.key, "redis.sentinels");
    }

    #[test]
    fn a_cluster_instead_of_a_url() {
        let s = validate(&raw(
            "cluster = [\"redis://127.0.0.1:7000\", \"redis://127.0.0.1:7001\"]",
        ))
        .unwrap();
        assert_eq!(s.cluster.as_ref().unwrap().nodes.len(), 2);
        let e = validate(&raw("cluster = [\"redis://h:1\"]\nkey_prefix = \"{bb}:\"")).unwrap_err();
        assert_eq!(e.key, "redis.key_prefix");
        let e = validate(&raw("cluster = []")).unwrap_err();
        assert_eq!(e.key, "redis.cluster");
        let e = validate(&raw("url = \"redis://h:1\"\ncluster = [\"redis://h:1\"]")).unwrap_err();
        assert_eq!(e.key, "redis.url");
    }

    #[test]
    fn wait_replicas_for_the_journal() {
        let s = validate(&raw("url = \"redis://h:1\"")).unwrap();
        assert_eq!(s.deliveries_wait_replicas, 0);
        let s = validate(&raw(
            "url = \"redis://h:1\"\ndeliveries = { wait_replicas = 2 }",
        ))
        .unwrap();
        assert_eq!(
            (s.deliveries_wait_replicas, s.deliveries_on_error),
            (2, OnRedisError::Local)
        );
        let e = validate(&raw(
            "url = \"redis://h:1\"\ndeliveries = { wait_replicas = 17 }",
        ))
        .unwrap_err();
        assert_eq!(e.key, "redis.deliveries.wait_replicas");
        let e = validate(&raw(
            "cluster = [\"redis://h:1\"]\ndeliveries = { wait_replicas = 1 }",
        ))
        .unwrap_err();
        assert_eq!(e.key, "redis.deliveries.wait_replicas");
    }

    #[test]
    fn errors_name_the_key_and_never_the_url() {
        let e = validate(&raw(r#"url = "http://user:hunter2@h:1""#)).unwrap_err();
        assert_eq!(e.key, "redis.url");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = validate(&raw("url = \"redis://h:1\"\ntimeout_ms = 0")).unwrap_err();
        assert_eq!(e.to_string(), "redis.timeout_ms: must be greater than 0");
        let s = validate(&raw(r#"url = "redis://:hunter2@h:1/0""#)).unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!serde_json::to_string(&s).unwrap().contains("hunter2"));
        assert!(toml::from_str::<RawRedis>(
            "url = \"redis://h\"\nlimits = { on_redis_error = \"maybe\" }"
        )
        .is_err());
    }
}
