//! Rate limits per credential and per (credential, end user), and the cap on requests in flight per
//! backend ([`in_flight`]).
//!
//! A request's limits are known in two steps: its credential after `admit` ([`Limiter::plan`]), its
//! end user after `parse`. Which limit applies is the most specific one set: the credential's own
//! (`[[clients.<dialect>]] rate_limit`), else its route's, else `[limits]`; `user_rate_limit` alike,
//! on its own. Each limit is a GCRA bucket (`requests` per `per_seconds`, bursts up to `burst`) keyed
//! by a digest of where the limit came from, the limit itself, the credential and the user, so a
//! changed limit starts a fresh bucket and no key carries a credential or a user id in clear (on
//! Redis a SHA-256, the same on every instance; in this process alone a hash keyed at random, see
//! [`Keys`]).
//!
//! A request with only a credential limit is checked before its body is read; one with a user limit
//! is checked once, after `parse`, against both buckets at once (user first: a user refused by its own
//! limit takes nothing from its credential's). Without `[redis]` the buckets live in this process
//! ([`local`], governor's keyed limiters); with it, in Redis ([`redis`]: one script call per request, all buckets or
//! none), falling back as `[redis.limits] on_redis_error` says. A request no limit covers costs
//! nothing here: no digest, no lookup, no Redis call.

pub mod in_flight;
pub mod local;
pub mod redis;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus::IntCounter;
use sha2::{Digest, Sha256};

use crate::auth::Grant;
use crate::config::limits::LimitsConfig;
use crate::config::redis::OnRedisError;
use crate::config::Route;
use crate::error::{ProxyError, Reason};
use crate::metrics::shared::{Feature, SharedMetrics};
use crate::shared::redis::SharedRedis;

pub use botbridge_core::limits::{
    credential_id, truncate, CallerLimits, CredentialId, LimitPair, RateLimit,
};

/// Which bucket refused: the label of `botbridge_rate_limit_decisions_total` and the policy name in
/// the `RateLimit` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Credential,
    User,
}

impl Scope {
    pub const ALL: [Scope; 2] = [Scope::Credential, Scope::User];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Credential => "credential",
            Scope::User => "user",
        }
    }
}

/// Where a request's limit was set.
#[derive(Debug, Clone, Copy)]
enum Origin<'a> {
    Client,
    Route(&'a str),
    Default,
}

/// A bucket's key: a digest of everything that tells it apart.
pub type BucketKey = [u8; 16];

/// One bucket a request takes a token from.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    pub scope: Scope,
    pub limit: RateLimit,
    pub key: BucketKey,
    /// The credential whose bucket it is (its user's, for a user bucket).
    pub owner: CredentialId,
    /// A user bucket's stand-in when the local buckets are at their bound (see `local`): the
    /// credential's overflow bucket for this limit. Only made while they are.
    pub overflow: Option<BucketKey>,
}

impl Bucket {
    /// The bucket of `scope` for a limit from `origin`, its key made as `keys` says. The key's input
    /// is kept short (usually one SHA-256 block): a byte each for the scope and the origin, the route
    /// name with its length, the limit, the credential id, the user id.
    fn new(
        keys: Keys,
        scope: Scope,
        origin: Origin<'_>,
        limit: RateLimit,
        id: &CredentialId,
        user: &str,
    ) -> Self {
        let (tag, route) = match origin {
            Origin::Client => (b'c', ""),
            Origin::Route(name) => (b'r', name),
            Origin::Default => (b'd', ""),
        };
        let key = keys.digest(&[
            &[scope as u8, tag],
            &(route.len() as u32).to_be_bytes(),
            route.as_bytes(),
            &limit.requests.to_be_bytes(),
            &limit.per_seconds.to_be_bytes(),
            &limit.burst.to_be_bytes(),
            id,
            user.as_bytes(),
        ]);
        Bucket {
            scope,
            limit,
            key,
            owner: *id,
            overflow: None,
        }
    }

    /// The same bucket with its overflow stand-in: the bucket of a user no real id can name.
    fn with_overflow(mut self, keys: Keys, origin: Origin<'_>, id: &CredentialId) -> Self {
        let stand_in = Bucket::new(
            keys,
            Scope::Credential,
            origin,
            self.limit,
            id,
            "\0overflow",
        );
        self.overflow = Some(stand_in.key);
        self
    }
}

/// How bucket keys are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    /// Buckets in this process only: a keyed hash with keys drawn at random when the process
    /// starts (two SipHash-1-3 of std's `RandomState`, so no caller can choose user ids that share a
    /// bucket). Under the instruction count of a request with two limits, the two SHA-256 digests
    /// these replace were 7,000 of its 81,000 instructions (software SHA-256 under callgrind).
    Local,
    /// Buckets on Redis, shared by every instance: the first 16 bytes of a SHA-256, the same
    /// everywhere.
    Shared,
}

/// Bytes gathered for [`Keys::Local`] before they are hashed: a key's input is usually under 64
/// bytes, and one `write` of them costs a third of eight small ones (callgrind).
const GATHER: usize = 96;

impl Keys {
    /// The key of the input made of `parts`, in order.
    fn digest(self, parts: &[&[u8]]) -> BucketKey {
        match self {
            Keys::Shared => {
                let mut h = Sha256::new();
                parts.iter().for_each(|p| h.update(p));
                truncate(h)
            }
            Keys::Local => {
                static STATES: OnceLock<(RandomState, RandomState)> = OnceLock::new();
                let (a, b) = STATES.get_or_init(|| (RandomState::new(), RandomState::new()));
                let (mut first, mut second) = (a.build_hasher(), b.build_hasher());
                // std draws the second state's keys next to the first's; a different first byte
                // keeps the two halves apart all the same.
                second.write_u8(1);
                let mut gathered = [0u8; GATHER];
                let len: usize = parts.iter().map(|p| p.len()).sum();
                let mut write = |bytes: &[u8]| {
                    first.write(bytes);
                    second.write(bytes);
                };
                if len <= GATHER {
                    let mut at = 0;
                    for p in parts {
                        gathered[at..at + p.len()].copy_from_slice(p);
                        at += p.len();
                    }
                    write(&gathered[..len]);
                } else {
                    parts.iter().for_each(|p| write(p));
                }
                let mut key = [0u8; 16];
                key[..8].copy_from_slice(&first.finish().to_le_bytes());
                key[8..].copy_from_slice(&second.finish().to_le_bytes());
                key
            }
        }
    }
}

/// A check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Refused by the bucket of `scope`, which lets a request through again after `retry_after`.
    Limited {
        scope: Scope,
        limit: RateLimit,
        retry_after: Duration,
    },
}

/// What one request is subject to, known once its credential is.
pub struct Plan<'a> {
    credential: Option<Bucket>,
    user: Option<(Origin<'a>, RateLimit)>,
    id: CredentialId,
}

impl Plan<'_> {
    /// A plan no limit covers: for a request already checked (async mode's later bot call).
    pub fn none() -> Self {
        Plan {
            credential: None,
            user: None,
            id: CredentialId::default(),
        }
    }

    /// Whether no limit covers the request.
    pub fn is_empty(&self) -> bool {
        self.credential.is_none() && self.user.is_none()
    }
}

/// The rate limiter of one runtime. Its in-process buckets outlive a reload (handed over), so a
/// reload does not hand out fresh bursts.
pub struct Limiter {
    defaults: LimitPair,
    /// `Shared` with `[redis]` (its fallback to local buckets uses the same keys), else `Local`.
    keys: Keys,
    local: Arc<local::LocalBuckets>,
    shared: Option<Arc<SharedRedis>>,
    /// The batched checks, on one Redis server (not a cluster).
    batches: Option<redis::Batches>,
    on_redis_error: OnRedisError,
    /// `rate_limit_decisions_total{scope, result}` by [scope][allowed, limited], resolved once.
    decisions: [[IntCounter; 2]; 2],
    metrics: &'static SharedMetrics,
}

impl Limiter {
    /// The limiter for `[limits]`, on Redis when `shared` is given.
    pub fn new(
        config: &LimitsConfig,
        previous: Option<&Limiter>,
        shared: Option<Arc<SharedRedis>>,
    ) -> Self {
        let metrics = SharedMetrics::global();
        let decisions = Scope::ALL.map(|s| {
            ["allowed", "limited"]
                .map(|r| metrics.limit_decisions.with_label_values(&[s.as_str(), r]))
        });
        let local = previous.map_or_else(local::LocalBuckets::new, |p| p.local.clone());
        local.set_max(config.max_user_buckets);
        Limiter {
            defaults: config.defaults,
            keys: match shared {
                Some(_) => Keys::Shared,
                None => Keys::Local,
            },
            local,
            on_redis_error: shared
                .as_ref()
                .map_or(OnRedisError::Local, |s| s.settings().limits_on_error),
            batches: (shared.as_ref())
                .filter(|s| s.settings().cluster.is_none())
                .map(redis::Batches::start),
            shared,
            decisions,
            metrics,
        }
    }

    /// The limits of a request by `grant` on `route`: the most specific of each kind.
    pub fn plan<'a>(&self, route: &'a Route, grant: &Grant) -> Plan<'a> {
        let own = grant.limits.own();
        let pick = |f: fn(&LimitPair) -> Option<RateLimit>| {
            (f(&own).map(|l| (Origin::Client, l)))
                .or_else(|| f(&route.limits).map(|l| (Origin::Route(&route.name), l)))
                .or_else(|| f(&self.defaults).map(|l| (Origin::Default, l)))
        };
        let id = grant.limits.id;
        Plan {
            credential: pick(|p| p.rate_limit)
                .map(|(o, l)| Bucket::new(self.keys, Scope::Credential, o, l, &id, "")),
            user: pick(|p| p.user_rate_limit),
            id,
        }
    }

    /// After `admit`: checks a credential limit now, unless a user limit will be checked with it.
    pub async fn admit(&self, plan: &Plan<'_>) -> Result<(), ProxyError> {
        match (&plan.credential, &plan.user) {
            (Some(c), None) => self.check(&[*c]).await,
            _ => Ok(()),
        }
    }

    /// After `parse`: checks the user's limit and the credential's together, if there is a user limit.
    pub async fn admit_user(&self, plan: &Plan<'_>, user_id: &str) -> Result<(), ProxyError> {
        let Some((origin, limit)) = plan.user else {
            return Ok(());
        };
        let mut user = Bucket::new(self.keys, Scope::User, origin, limit, &plan.id, user_id);
        if self.local.full() {
            user = user.with_overflow(self.keys, origin, &plan.id);
        }
        match plan.credential {
            Some(c) => self.check(&[user, c]).await,
            None => self.check(&[user]).await,
        }
    }

    async fn check(&self, buckets: &[Bucket]) -> Result<(), ProxyError> {
        let verdict = match &self.shared {
            None => self.local.check(buckets),
            Some(shared) => match self.shared_check(shared, buckets).await {
                Ok(v) => v,
                Err(_) => self.fallback(buckets)?,
            },
        };
        match verdict {
            Verdict::Allowed => {
                for b in buckets {
                    self.decisions[b.scope as usize][0].inc();
                }
                Ok(())
            }
            Verdict::Limited {
                scope,
                limit,
                retry_after,
            } => {
                self.decisions[scope as usize][1].inc();
                Err(too_many_requests(scope, limit, retry_after))
            }
        }
    }

    /// The buckets checked on Redis: batched with other requests' checks, or alone on a cluster.
    async fn shared_check(
        &self,
        shared: &SharedRedis,
        buckets: &[Bucket],
    ) -> Result<Verdict, crate::shared::redis::Unavailable> {
        match &self.batches {
            Some(b) => b.check(shared, buckets).await,
            None => redis::check(shared, buckets).await,
        }
    }

    /// Redis failed: what `[redis.limits] on_redis_error` says, counted.
    fn fallback(&self, buckets: &[Bucket]) -> Result<Verdict, ProxyError> {
        self.metrics.fallback(Feature::Limits, self.on_redis_error);
        match self.on_redis_error {
            OnRedisError::Local => Ok(self.local.check(buckets)),
            OnRedisError::Allow => Ok(Verdict::Allowed),
            OnRedisError::Deny => Err(ProxyError::new(
                503,
                Reason::RedisUnavailable,
                "the rate limiter is unavailable; try again later",
            )
            .with_header("retry-after", "1")),
        }
    }
}

/// The 429 for a refused request: `Retry-After`, and the IETF `RateLimit-Policy` and `RateLimit`
/// fields (draft-ietf-httpapi-ratelimit-headers-10) naming the bucket that refused.
pub fn too_many_requests(scope: Scope, limit: RateLimit, retry_after: Duration) -> ProxyError {
    let secs = retry_after.as_micros().div_ceil(1_000_000).max(1);
    let (who, name) = match scope {
        Scope::Credential => ("this credential", "credential"),
        Scope::User => ("this user", "user"),
    };
    ProxyError::new(
        429,
        Reason::RateLimited,
        format!(
            "too many requests for {who}: at most {} per {} s; retry in {secs} s",
            limit.requests, limit.per_seconds
        ),
    )
    .with_header("retry-after", secs.to_string())
    .with_header(
        "ratelimit-policy",
        format!("\"{name}\";q={};w={}", limit.requests, limit.per_seconds),
    )
    .with_header("ratelimit", format!("\"{name}\";r=0;t={secs}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: RateLimit = RateLimit {
        requests: 50,
        per_seconds: 1,
        burst: 100,
    };

    #[test]
    fn keys_tell_origins_limits_credentials_and_users_apart() {
        for keys in [Keys::Local, Keys::Shared] {
            keys_tell_apart(keys);
        }
    }

    fn keys_tell_apart(keys: Keys) {
        let id = credential_id("api-key", b"k");
        let key = |o, l, id: &CredentialId, u| Bucket::new(keys, Scope::User, o, l, id, u).key;
        let base = key(Origin::Client, L, &id, "u1");
        assert_eq!(base, key(Origin::Client, L, &id, "u1"), "stable");
        let other_limit = RateLimit { burst: 99, ..L };
        for different in [
            key(Origin::Client, L, &id, "u2"),
            key(Origin::Default, L, &id, "u1"),
            key(Origin::Route("chat"), L, &id, "u1"),
            key(Origin::Client, other_limit, &id, "u1"),
            key(Origin::Client, L, &credential_id("api-key", b"k2"), "u1"),
            key(Origin::Client, L, &credential_id("token", b"k"), "u1"),
        ] {
            assert_ne!(base, different);
        }
        assert_ne!(
            key(Origin::Route("chat"), L, &id, ""),
            key(Origin::Route("cha"), L, &id, "t")
        );
        assert_ne!(base[..8], base[8..], "two independent halves");
        // Inputs past the gathered bytes' room are hashed as they come: still one key per input.
        let long = "u".repeat(200);
        assert_eq!(
            key(Origin::Client, L, &id, &long),
            key(Origin::Client, L, &id, &long)
        );
        assert_ne!(
            key(Origin::Client, L, &id, &long),
            key(Origin::Client, L, &id, &long[1..])
        );
    }

    #[test]
    fn shared_keys_are_the_same_on_every_instance_and_local_ones_are_not_theirs() {
        let id = credential_id("api-key", b"k");
        let key = |keys| Bucket::new(keys, Scope::User, Origin::Client, L, &id, "u1").key;
        // A fixed digest: another instance (another process) makes the same key.
        let mut h = Sha256::new();
        h.update([Scope::User as u8, b'c']);
        h.update(0u32.to_be_bytes());
        h.update(50u32.to_be_bytes());
        h.update(1u32.to_be_bytes());
        h.update(100u32.to_be_bytes());
        h.update(id);
        h.update(b"u1");
        assert_eq!(key(Keys::Shared), truncate(h));
        assert_ne!(key(Keys::Local), key(Keys::Shared));
    }

    #[test]
    fn the_429_names_its_bucket_and_when_to_retry() {
        let e = too_many_requests(Scope::User, L, Duration::from_millis(1_200));
        assert_eq!((e.status, e.reason), (429, Reason::RateLimited));
        let h = |n: &str| e.headers.iter().find(|(k, _)| *k == n).unwrap().1.clone();
        assert_eq!(h("retry-after"), "2");
        assert_eq!(h("ratelimit-policy"), "\"user\";q=50;w=1");
        assert_eq!(h("ratelimit"), "\"user\";r=0;t=2");
        assert!(e.message.contains("this user"), "{}", e.message);
        let e = too_many_requests(Scope::Credential, L, Duration::from_micros(10));
        assert_eq!(e.headers[0].1, "1", "never 0");
    }

    #[test]
    fn intervals_and_refill() {
        assert_eq!(L.interval_us(), 20_000);
        assert_eq!(L.refill(), Duration::from_secs(2));
    }
}
