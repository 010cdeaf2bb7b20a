//! The in-process buckets: one governor keyed GCRA limiter (its state in a `DashMap`, one entry per
//! bucket key) per distinct limit, made on first use. A sweeper thread drops, every
//! [`SWEEP_EVERY`], the entries whose bucket is full again (forgetting them changes nothing), so
//! memory follows the credentials and users active within one refill time; their count is the gauge
//! `botbridge_rate_limit_local_buckets`.
//!
//! Used without `[redis]`, and with it as the `local` fallback. Across instances these buckets are not
//! shared: each instance lets a credential have its whole limit.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use governor::clock::{Clock, QuantaClock};
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use super::{Bucket, BucketKey, RateLimit, Verdict};
use crate::metrics::shared::SharedMetrics;

/// How often full buckets are forgotten.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

type Keyed = RateLimiter<BucketKey, DashMapStateStore<BucketKey>, QuantaClock>;

/// The buckets of this process, by limit.
pub struct LocalBuckets {
    /// Read on every check without a lock; replaced (under `adding`) when a new limit appears.
    by_limit: ArcSwap<HashMap<RateLimit, Arc<Keyed>>>,
    adding: Mutex<()>,
    clock: QuantaClock,
}

impl LocalBuckets {
    /// Empty buckets, and their sweeper thread (it ends once they are dropped).
    pub fn new() -> Arc<Self> {
        let buckets = Arc::new(LocalBuckets {
            by_limit: ArcSwap::from_pointee(HashMap::new()),
            adding: Mutex::new(()),
            clock: QuantaClock::default(),
        });
        let weak = Arc::downgrade(&buckets);
        // A plain thread: no runtime is needed, and it must run whether or not requests come.
        let spawned = std::thread::Builder::new()
            .name("botbridge-limits".into())
            .spawn(move || sweep(weak));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the rate limit sweeper: full buckets are kept");
        }
        buckets
    }

    /// Takes a token from each bucket in order; the first that has none refuses the request (the
    /// ones before it keep their token taken: governor has no look-ahead, so the caller puts the
    /// narrowest bucket first).
    pub fn check(&self, buckets: &[Bucket]) -> Verdict {
        let by_limit = self.by_limit.load();
        for b in buckets {
            let refused = match by_limit.get(&b.limit) {
                Some(keyed) => keyed.check_key(&b.key),
                None => self.add(b.limit).check_key(&b.key),
            };
            if let Err(not_until) = refused {
                return Verdict::Limited {
                    scope: b.scope,
                    limit: b.limit,
                    retry_after: not_until.wait_time_from(self.clock.now()),
                };
            }
        }
        Verdict::Allowed
    }

    /// The keyed limiter of a limit seen for the first time (or just added by another thread).
    fn add(&self, limit: RateLimit) -> Arc<Keyed> {
        let _one_at_a_time = self.adding.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = self.by_limit.load().get(&limit) {
            return k.clone();
        }
        let burst = NonZeroU32::new(limit.burst).expect("validated: burst > 0");
        let quota = Quota::with_period(Duration::from_micros(limit.interval_us()))
            .expect("validated: interval > 0")
            .allow_burst(burst);
        let keyed = Arc::new(RateLimiter::dashmap_with_clock(quota, self.clock.clone()));
        let mut next = HashMap::clone(&self.by_limit.load());
        next.insert(limit, keyed.clone());
        self.by_limit.store(Arc::new(next));
        keyed
    }

    /// Forgets the full buckets; returns how many are left.
    fn sweep_once(&self) -> usize {
        (self.by_limit.load().values())
            .map(|keyed| {
                keyed.retain_recent();
                keyed.shrink_to_fit();
                keyed.len()
            })
            .sum()
    }
}

/// The sweeper thread's loop, for as long as the buckets live.
fn sweep(buckets: Weak<LocalBuckets>) {
    let gauge = &SharedMetrics::global().local_buckets;
    loop {
        std::thread::sleep(SWEEP_EVERY);
        let Some(b) = buckets.upgrade() else { return };
        gauge.set(b.sweep_once() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{credential_id, Origin, Scope};
    use super::*;

    #[test]
    fn a_burst_then_refusals_with_the_wait_and_full_buckets_are_forgotten() {
        let local = LocalBuckets::new();
        let limit = RateLimit {
            requests: 1,
            per_seconds: 3600,
            burst: 3,
        };
        let bucket = |who: &[u8]| {
            let id = credential_id("t", who);
            Bucket::new(Scope::Credential, Origin::Client, limit, &id, "")
        };
        let b = bucket(b"x");
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
        assert_eq!(
            local.check(&[bucket(b"y")]),
            Verdict::Allowed,
            "its own bucket"
        );
        // Both buckets have tokens taken: neither is full, so a sweep keeps both.
        assert_eq!(local.sweep_once(), 2);
        let short = RateLimit {
            requests: 1_000_000,
            per_seconds: 1,
            burst: 1,
        };
        let quick = Bucket::new(Scope::User, Origin::Default, short, &[0; 16], "u");
        // Checking made its entry; two microseconds refill it, a millisecond is plenty: it is full
        // again, and forgotten.
        assert_eq!(local.check(&[quick]), Verdict::Allowed);
        std::thread::sleep(Duration::from_millis(1));
        assert_eq!(local.sweep_once(), 2);
    }
}
