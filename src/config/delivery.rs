//! `[delivery]`: async mode's queue, retries, journal, dead-letter log and spool. Every key needs a
//! restart to change (the queue and its files belong to the running process).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::private_dir;
use super::rotation::{self, Rotation};
use super::secret::nonzero;
use super::ConfigError;

/// Where accepted async requests are journaled before their callers are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JournalKind {
    /// An append-only file of this process in `journal_dir`.
    File,
    /// A Redis stream shared by every instance (`[redis]`), with the file as `[redis.deliveries]`'s
    /// `local` fallback.
    Redis,
    /// Nothing is journaled: a crash loses what is pending (a planned stop still spools it).
    Off,
}

impl JournalKind {
    /// The `store` label.
    pub fn as_str(self) -> &'static str {
        match self {
            JournalKind::File => "file",
            JournalKind::Redis => "redis",
            JournalKind::Off => "off",
        }
    }
}

/// `[delivery]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDelivery {
    /// Async requests accepted and not yet fully delivered, at most; more get 503.
    #[serde(default = "default_queue_size")]
    pub queue_size: usize,
    /// Async requests one credential may have pending, at most; more get 429.
    #[serde(default = "default_per_credential")]
    pub max_pending_per_credential: usize,
    /// Request and message bytes one credential's pending requests may hold; more get 429.
    #[serde(default = "default_bytes_per_credential")]
    pub max_pending_bytes_per_credential: usize,
    /// Async requests pending for one callback host, at most; more get 503.
    #[serde(default = "default_per_host")]
    pub max_pending_per_host: usize,
    /// Request and message bytes all pending requests may hold; more get 503.
    #[serde(default = "default_pending_bytes")]
    pub max_pending_bytes: usize,
    /// Deliveries in flight at once, over all receivers.
    #[serde(default = "default_concurrency")]
    pub max_concurrent: usize,
    /// One delivery attempt (connect, send, answer) must finish within this.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// A message still undelivered this long after the bot answered goes to the dead-letter log.
    #[serde(default = "default_deadline")]
    pub deadline_ms: u64,
    /// The first retry's delay; each next one doubles, up to `retry_max_ms` (with jitter).
    #[serde(default = "default_retry_initial")]
    pub retry_initial_ms: u64,
    /// The longest delay between two attempts (a receiver's `Retry-After` is honoured up to the
    /// deadline).
    #[serde(default = "default_retry_max")]
    pub retry_max_ms: u64,
    /// The JSONL file deliveries that gave up are appended to (default: in the instance's private
    /// directory, see [`private_dir`]).
    pub dead_letter_path: Option<String>,
    /// The dead-letter log's size cap; at it, the file is rotated. Default 10 MiB.
    #[serde(default = "default_dead_letter_bytes")]
    pub dead_letter_max_bytes: u64,
    /// Rotated dead-letter files kept (`<file>.1` the newest); default 5.
    #[serde(default = "default_dead_letter_files")]
    pub dead_letter_files: u64,
    /// The directory pending deliveries are written to on a graceful stop or upgrade, and read from
    /// by the next process (private to the proxy's user: deliveries carry what users wrote).
    pub spool_dir: Option<String>,
    /// `file`, `redis` or `off`; default `redis` with `[redis]`, else `file`.
    pub journal: Option<JournalKind>,
    /// The directory of the file journal (default: in the instance's private directory).
    pub journal_dir: Option<String>,
    /// Whether an async request is answered only once its journal record is on disk (`fdatasync`,
    /// default); `false`: once the kernel has it (survives a crash of the process, not of the
    /// machine).
    #[serde(default = "yes")]
    pub journal_fsync: bool,
    /// A journaled delivery whose instance has not touched it for this long is taken over by
    /// another instance (Redis journal; the owner touches its own every third of it).
    #[serde(default = "default_claim_idle")]
    pub claim_idle_ms: u64,
}

impl Default for RawDelivery {
    fn default() -> Self {
        toml::from_str("").expect("every [delivery] key has a default")
    }
}

/// `[delivery]`, validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeliveryConfig {
    pub queue_size: usize,
    pub max_pending_per_credential: usize,
    pub max_pending_bytes_per_credential: usize,
    pub max_pending_per_host: usize,
    pub max_pending_bytes: usize,
    pub max_concurrent: usize,
    pub timeout_ms: u64,
    pub deadline_ms: u64,
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    pub dead_letter_path: String,
    pub dead_letter_rotation: Rotation,
    pub spool_dir: String,
    pub journal: JournalKind,
    pub journal_dir: String,
    pub journal_fsync: bool,
    pub claim_idle_ms: u64,
}

/// Validates `[delivery]`; the files' defaults are in the private directory of the instance that
/// listens on `listen`; `redis`: whether `[redis]` is configured.
pub fn validate(
    d: &RawDelivery,
    listen: SocketAddr,
    redis: bool,
) -> Result<DeliveryConfig, ConfigError> {
    nonzero("delivery.queue_size", d.queue_size as u64)?;
    nonzero("delivery.max_concurrent", d.max_concurrent as u64)?;
    for (key, v) in [
        (
            "delivery.max_pending_per_credential",
            d.max_pending_per_credential,
        ),
        (
            "delivery.max_pending_bytes_per_credential",
            d.max_pending_bytes_per_credential,
        ),
        ("delivery.max_pending_per_host", d.max_pending_per_host),
        ("delivery.max_pending_bytes", d.max_pending_bytes),
    ] {
        nonzero(key, v as u64)?;
    }
    nonzero("delivery.timeout_ms", d.timeout_ms)?;
    nonzero("delivery.deadline_ms", d.deadline_ms)?;
    nonzero("delivery.retry_initial_ms", d.retry_initial_ms)?;
    if d.retry_max_ms < d.retry_initial_ms {
        return Err(ConfigError::new(
            "delivery.retry_max_ms",
            "must be at least delivery.retry_initial_ms",
        ));
    }
    let dead_letter_rotation = rotation::validate(
        "delivery.dead_letter",
        d.dead_letter_max_bytes,
        d.dead_letter_files,
    )?;
    let or_default = |v: &Option<String>, name: &str| {
        v.clone()
            .unwrap_or_else(|| private_dir::default_file(listen, name))
    };
    let dead_letter_path = or_default(&d.dead_letter_path, "dead-letters.jsonl");
    let spool_dir = or_default(&d.spool_dir, "spool");
    let journal_dir = or_default(&d.journal_dir, "journal");
    let journal = match (d.journal, redis) {
        (Some(JournalKind::Redis), false) => {
            return Err(ConfigError::new(
                "delivery.journal",
                "\"redis\" needs a [redis] table",
            ))
        }
        (Some(kind), _) => kind,
        (None, true) => JournalKind::Redis,
        (None, false) => JournalKind::File,
    };
    nonzero("delivery.claim_idle_ms", d.claim_idle_ms)?;
    for (key, path) in [
        ("delivery.dead_letter_path", &dead_letter_path),
        ("delivery.spool_dir", &spool_dir),
        ("delivery.journal_dir", &journal_dir),
    ] {
        if path.trim().is_empty() {
            return Err(ConfigError::new(key, "must not be empty"));
        }
    }
    Ok(DeliveryConfig {
        queue_size: d.queue_size,
        max_pending_per_credential: d.max_pending_per_credential,
        max_pending_bytes_per_credential: d.max_pending_bytes_per_credential,
        max_pending_per_host: d.max_pending_per_host,
        max_pending_bytes: d.max_pending_bytes,
        max_concurrent: d.max_concurrent,
        timeout_ms: d.timeout_ms,
        deadline_ms: d.deadline_ms,
        retry_initial_ms: d.retry_initial_ms,
        retry_max_ms: d.retry_max_ms,
        dead_letter_path,
        dead_letter_rotation,
        spool_dir,
        journal,
        journal_dir,
        journal_fsync: d.journal_fsync,
        claim_idle_ms: d.claim_idle_ms,
    })
}

fn yes() -> bool {
    true
}
fn default_claim_idle() -> u64 {
    30_000
}

fn default_queue_size() -> usize {
    10_000
}
fn default_per_credential() -> usize {
    1_000
}
fn default_bytes_per_credential() -> usize {
    16 * 1024 * 1024
}
fn default_per_host() -> usize {
    2_000
}
fn default_pending_bytes() -> usize {
    128 * 1024 * 1024
}
fn default_concurrency() -> usize {
    64
}
fn default_timeout() -> u64 {
    5_000
}
fn default_deadline() -> u64 {
    15 * 60 * 1000
}
fn default_retry_initial() -> u64 {
    500
}
fn default_retry_max() -> u64 {
    60_000
}
fn default_dead_letter_bytes() -> u64 {
    10 * 1024 * 1024
}
fn default_dead_letter_files() -> u64 {
    5
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(d: &RawDelivery) -> Result<DeliveryConfig, ConfigError> {
        super::validate(d, "127.0.0.1:8080".parse().unwrap(), false)
    }

    #[test]
    fn the_journal_is_on_redis_with_redis_else_in_a_file() {
        let listen = "127.0.0.1:8080".parse().unwrap();
        let d = super::validate(&RawDelivery::default(), listen, true).unwrap();
        assert_eq!(d.journal, JournalKind::Redis);
        let d = validate(&RawDelivery::default()).unwrap();
        assert_eq!((d.journal, d.journal_fsync), (JournalKind::File, true));
        assert!(d.journal_dir.ends_with("journal"));
        let raw: RawDelivery = toml::from_str("journal = \"redis\"").unwrap();
        assert_eq!(validate(&raw).unwrap_err().key, "delivery.journal");
        let raw: RawDelivery = toml::from_str("journal = \"off\"").unwrap();
        assert_eq!(
            super::validate(&raw, listen, true).unwrap().journal,
            JournalKind::Off
        );
        assert!(toml::from_str::<RawDelivery>("journal = \"disk\"").is_err());
    }

    #[test]
    fn defaults_are_valid_and_errors_name_the_key() {
        let d = validate(&RawDelivery::default()).unwrap();
        assert_eq!(d.queue_size, 10_000);
        assert!(d.spool_dir.ends_with("spool"));
        let raw: RawDelivery = toml::from_str("timeout_ms = 0").unwrap();
        assert_eq!(validate(&raw).unwrap_err().key, "delivery.timeout_ms");
        let raw: RawDelivery = toml::from_str("retry_initial_ms = 10\nretry_max_ms = 5").unwrap();
        assert_eq!(validate(&raw).unwrap_err().key, "delivery.retry_max_ms");
        assert_eq!(d.dead_letter_rotation.max_bytes, 10 * 1024 * 1024);
        assert_eq!(d.dead_letter_rotation.files, 5);
        let raw: RawDelivery = toml::from_str("dead_letter_max_bytes = 100").unwrap();
        let e = validate(&raw).unwrap_err();
        assert_eq!(e.key, "delivery.dead_letter_max_bytes");
    }
}
