//! The in-process buckets: one governor GCRA limiter per bucket key, kept in a bounded moka cache
//! that forgets a bucket once it has been idle long enough to be full again (so forgetting it changes
//! nothing), or, past `[limits] local_buckets`, the least used ones.
//!
//! Used without `[redis]`, and with it as the `local` fallback. Across instances these buckets are not
//! shared: each instance lets a credential have its whole limit.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::clock::{Clock, QuantaClock};
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use moka::sync::Cache;
use moka::Expiry;

use super::{Bucket, BucketKey, RateLimit, Verdict};

type Gcra = RateLimiter<NotKeyed, InMemoryState, QuantaClock>;

/// One bucket's limiter and how long it takes to refill.
struct Entry {
    gcra: Gcra,
    refill: Duration,
}

/// Expires an entry once it has been idle for its refill time.
struct WhenFull;

impl Expiry<BucketKey, Arc<Entry>> for WhenFull {
    fn expire_after_create(&self, _: &BucketKey, e: &Arc<Entry>, _: Instant) -> Option<Duration> {
        Some(e.refill)
    }

    fn expire_after_read(
        &self,
        _: &BucketKey,
        e: &Arc<Entry>,
        _: Instant,
        _: Option<Duration>,
        _: Instant,
    ) -> Option<Duration> {
        Some(e.refill)
    }
}

/// The buckets of this process.
pub struct LocalBuckets {
    buckets: Cache<BucketKey, Arc<Entry>>,
    clock: QuantaClock,
}

impl LocalBuckets {
    /// Keeps at most `capacity` buckets.
    pub fn new(capacity: u64) -> Self {
        LocalBuckets {
            buckets: Cache::builder()
                .max_capacity(capacity)
                .expire_after(WhenFull)
                .build(),
            clock: QuantaClock::default(),
        }
    }

    /// Takes a token from each bucket in order; the first that has none refuses the request (the
    /// ones before it keep their token taken: governor has no look-ahead, so the caller puts the
    /// narrowest bucket first).
    pub fn check(&self, buckets: &[Bucket]) -> Verdict {
        for b in buckets {
            let entry = self
                .buckets
                .get_with(b.key, || Arc::new(self.entry(b.limit)));
            if let Err(not_until) = entry.gcra.check() {
                return Verdict::Limited {
                    scope: b.scope,
                    limit: b.limit,
                    retry_after: not_until.wait_time_from(self.clock.now()),
                };
            }
        }
        Verdict::Allowed
    }

    fn entry(&self, limit: RateLimit) -> Entry {
        let burst = NonZeroU32::new(limit.burst).expect("validated: burst > 0");
        let quota = Quota::with_period(Duration::from_micros(limit.interval_us()))
            .expect("validated: interval > 0")
            .allow_burst(burst);
        Entry {
            gcra: RateLimiter::direct_with_clock(quota, self.clock.clone()),
            refill: limit.refill(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{credential_id, Origin, Scope};
    use super::*;

    #[test]
    fn a_burst_then_refusals_with_the_wait() {
        let local = LocalBuckets::new(100);
        let limit = RateLimit {
            requests: 1,
            per_seconds: 3600,
            burst: 3,
        };
        let b = Bucket::new(
            Scope::Credential,
            Origin::Client,
            limit,
            &credential_id("t", b"x"),
            "",
        );
        for _ in 0..3 {
            assert_eq!(local.check(&[b]), Verdict::Allowed);
        }
        match local.check(&[b]) {
            Verdict::Limited {
                scope, retry_after, ..
            } => {
                assert_eq!(scope, Scope::Credential);
                assert!(retry_after > Duration::from_secs(3590), "{retry_after:?}");
            }
            v => panic!("{v:?}"),
        }
        let other = Bucket::new(
            Scope::Credential,
            Origin::Client,
            limit,
            &credential_id("t", b"y"),
            "",
        );
        assert_eq!(local.check(&[other]), Verdict::Allowed, "its own bucket");
    }
}
