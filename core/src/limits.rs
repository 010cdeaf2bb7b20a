//! What a credential's rate limits are, as the dialects read them from its table, and the id its
//! buckets are keyed by. The proxy's `limits` module keeps the buckets.

use std::time::Duration;

use sha2::{Digest, Sha256};

/// One limit: `requests` per `per_seconds` in the long run, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateLimit {
    pub requests: u32,
    pub per_seconds: u32,
    pub burst: u32,
}

impl RateLimit {
    /// The emission interval: one request per this many microseconds.
    pub fn interval_us(&self) -> u64 {
        u64::from(self.per_seconds) * 1_000_000 / u64::from(self.requests)
    }

    /// How long a bucket takes to refill completely: idle this long, it is as good as new.
    pub fn refill(&self) -> Duration {
        Duration::from_micros(self.interval_us() * u64::from(self.burst))
    }
}

/// A `rate_limit` and `user_rate_limit` pair, as a route or `[limits]` sets them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitPair {
    pub rate_limit: Option<RateLimit>,
    pub user_rate_limit: Option<RateLimit>,
}

/// What identifies a credential in bucket keys: a digest, the same on every instance whether the
/// credential is configured there or vouched for by the auth service.
pub type CredentialId = [u8; 16];

/// The id of a credential of `kind` (`client-id`, `api-key`, `token`) identified by `ident`.
pub fn credential_id(kind: &str, ident: &[u8]) -> CredentialId {
    let mut h = Sha256::new();
    h.update(b"botbridge-credential\0");
    h.update(kind.as_bytes());
    h.update(b"\0");
    h.update(ident);
    truncate(h)
}

/// The limits a credential carries, and the id its buckets are keyed by.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallerLimits {
    pub id: CredentialId,
    /// Boxed, and only when set: most credentials have none, and every grant would carry 32 bytes.
    own: Option<Box<LimitPair>>,
}

impl CallerLimits {
    /// The limits `own` of the credential `id`.
    pub fn new(id: CredentialId, own: LimitPair) -> Self {
        let own = (own != LimitPair::default()).then(|| Box::new(own));
        CallerLimits { id, own }
    }

    /// The credential's own limits (none set: the route's or `[limits]` apply).
    pub fn own(&self) -> LimitPair {
        self.own.as_deref().copied().unwrap_or_default()
    }
}

/// The first 16 bytes of a SHA-256: ample for keys no caller chooses the digest of.
pub fn truncate(h: Sha256) -> [u8; 16] {
    let full = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}
