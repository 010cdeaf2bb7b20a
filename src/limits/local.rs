//! The in-process buckets: one governor keyed GCRA limiter (its state in a `DashMap`, one entry per
//! bucket key) per distinct limit, made on first use. A sweeper thread drops, every
//! [`SWEEP_EVERY`], the entries whose bucket is full again (forgetting them changes nothing), so
//! memory follows the credentials and users active within one refill time; their count is the gauge
//! `botbridge_rate_limit_local_buckets`.
//!
//! Used without `[redis]`, and with it as the `local` fallback. Across instances these buckets are not
//! shared: each instance lets a credential have its whole limit.
//!
//! Bounded: past `[limits] max_user_buckets` entries, a user without a bucket of their own whose
//! credential holds its share of the entries or more (the bound divided by the credentials holding
//! any) takes tokens from one overflow bucket of that credential (and limit) instead, counted in
//! `botbridge_rate_limit_bucket_overflows_total`. A flood of made-up user ids cannot grow memory
//! past twice the bound (the credentials under their share may still fill up to it), users who
//! already have a bucket keep it, and a credential under its share, such as every one but the
//! flooding one, keeps giving its new users buckets of their own. governor's keyed limiter cannot
//! say whether a key is new, so its DashMap store is wrapped ([`Store`]) to be asked, and to count
//! new entries. Entries per credential are counted as they are made and, at each sweep, scaled by
//! the share of all entries that is left (the sweep cannot tell whose were dropped).

use std::cell::Cell;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use governor::clock::{Clock, QuantaClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::state::StateStore;
use governor::{Quota, RateLimiter};

use super::{Bucket, BucketKey, CredentialId, RateLimit, Verdict};
use crate::metrics::shared::SharedMetrics;

/// How often full buckets are forgotten.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

thread_local! {
    /// Set by [`Store`] when the check that just ran made a new entry.
    static MADE_ONE: Cell<bool> = const { Cell::new(false) };
}

/// The default of `[limits] max_user_buckets`.
pub const DEFAULT_MAX_BUCKETS: usize = 250_000;

/// governor's DashMap store, shared: the limiter measures through it, [`LocalBuckets`] asks it
/// whether a key is known (only at the bound); every entry it makes is counted in `entries`.
#[derive(Clone, Default)]
struct Store {
    map: Arc<DashMapStateStore<BucketKey>>,
    entries: Arc<AtomicUsize>,
}

impl StateStore for Store {
    type Key = BucketKey;

    fn measure_and_replace<T, F, E>(&self, key: &BucketKey, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        // A bucket's state is empty (`None`) only while it is new: counting those costs no second
        // lookup. (Two threads making one key at once may count it twice; the sweep corrects.)
        let fresh = std::cell::Cell::new(false);
        let result = self.map.measure_and_replace(key, |prev| {
            fresh.set(prev.is_none());
            f(prev)
        });
        if fresh.get() {
            self.entries.fetch_add(1, Ordering::Relaxed);
            MADE_ONE.set(true);
        }
        result
    }
}

impl ShrinkableKeyedStateStore<BucketKey> for Store {
    fn retain_recent(&self, drop_below: Nanos) {
        ShrinkableKeyedStateStore::retain_recent(&*self.map, drop_below)
    }
    fn shrink_to_fit(&self) {
        ShrinkableKeyedStateStore::shrink_to_fit(&*self.map)
    }
    fn len(&self) -> usize {
        self.map.len()
    }
    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

type Keyed =
    RateLimiter<BucketKey, Store, QuantaClock, NoOpMiddleware<<QuantaClock as Clock>::Instant>>;

/// One limit's limiter and its store.
struct Limiter {
    keyed: Keyed,
    store: Store,
}

/// The buckets of this process, by limit.
pub struct LocalBuckets {
    /// Read on every check without a lock; replaced (under `adding`) when a new limit appears.
    by_limit: ArcSwap<HashMap<RateLimit, Arc<Limiter>>>,
    adding: Mutex<()>,
    clock: QuantaClock,
    /// Entries of every limiter (counted as they are made, set exactly at each sweep).
    entries: Arc<AtomicUsize>,
    /// `[limits] max_user_buckets`.
    max: AtomicUsize,
    /// Entries per credential, as counted when made (scaled at each sweep).
    owners: Mutex<HashMap<CredentialId, usize>>,
}

impl LocalBuckets {
    /// Empty buckets, and their sweeper thread (it ends once they are dropped).
    pub fn new() -> Arc<Self> {
        let buckets = Arc::new(LocalBuckets {
            by_limit: ArcSwap::from_pointee(HashMap::new()),
            adding: Mutex::new(()),
            clock: QuantaClock::default(),
            entries: Arc::default(),
            max: AtomicUsize::new(DEFAULT_MAX_BUCKETS),
            owners: Mutex::default(),
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
            let added;
            let limiter = match by_limit.get(&b.limit) {
                Some(l) => l,
                None => {
                    added = self.add(b.limit);
                    &added
                }
            };
            MADE_ONE.set(false);
            let refused = limiter.keyed.check_key(self.key_of(limiter, b));
            if MADE_ONE.get() {
                *self.lock_owners().entry(b.owner).or_default() += 1;
            }
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

    /// Sets the most entries kept (`[limits] max_user_buckets`).
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// Whether the buckets are at their bound: user buckets then carry an overflow key.
    pub fn full(&self) -> bool {
        self.entries.load(Ordering::Relaxed) >= self.max.load(Ordering::Relaxed)
    }

    fn lock_owners(&self) -> std::sync::MutexGuard<'_, HashMap<CredentialId, usize>> {
        self.owners.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `owner` holds at least its share of the bound: the bound over the credentials that
    /// hold any entry.
    fn over_share(&self, owner: &CredentialId) -> bool {
        let owners = self.lock_owners();
        let held = owners.get(owner).copied().unwrap_or(0);
        held * owners.len().max(1) >= self.max.load(Ordering::Relaxed)
    }

    /// The key `b` takes its token under: its own, or at the bound, its overflow bucket's when it
    /// has none yet and its credential holds its share.
    fn key_of<'b>(&self, limiter: &Limiter, b: &'b Bucket) -> &'b BucketKey {
        match &b.overflow {
            Some(overflow)
                if self.full()
                    && !limiter.store.map.contains_key(&b.key)
                    && self.over_share(&b.owner) =>
            {
                SharedMetrics::global().bucket_overflows.inc();
                overflow
            }
            _ => &b.key,
        }
    }

    /// The keyed limiter of a limit seen for the first time (or just added by another thread).
    fn add(&self, limit: RateLimit) -> Arc<Limiter> {
        let _one_at_a_time = self.adding.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = self.by_limit.load().get(&limit) {
            return k.clone();
        }
        let burst = NonZeroU32::new(limit.burst).expect("validated: burst > 0");
        let quota = Quota::with_period(Duration::from_micros(limit.interval_us()))
            .expect("validated: interval > 0")
            .allow_burst(burst);
        let store = Store {
            map: Arc::default(),
            entries: self.entries.clone(),
        };
        let keyed = RateLimiter::new(quota, store.clone(), self.clock.clone());
        let limiter = Arc::new(Limiter { keyed, store });
        let mut next = HashMap::clone(&self.by_limit.load());
        next.insert(limit, limiter.clone());
        self.by_limit.store(Arc::new(next));
        limiter
    }

    /// Forgets the full buckets; returns how many are left.
    fn sweep_once(&self) -> usize {
        let before = self.entries.load(Ordering::Relaxed).max(1);
        let left: usize = (self.by_limit.load().values())
            .map(|l| {
                l.keyed.retain_recent();
                l.keyed.shrink_to_fit();
                l.keyed.len()
            })
            .sum();
        self.entries.store(left, Ordering::Relaxed);
        let mut owners = self.lock_owners();
        for held in owners.values_mut() {
            *held = (*held as u128 * left as u128 / before as u128) as usize;
        }
        owners.retain(|_, held| *held > 0);
        left
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
    use super::super::{credential_id, Keys, Origin, Scope};
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
            Bucket::new(
                Keys::Local,
                Scope::Credential,
                Origin::Client,
                limit,
                &id,
                "",
            )
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
        let quick = Bucket::new(
            Keys::Local,
            Scope::User,
            Origin::Default,
            short,
            &[0; 16],
            "u",
        );
        // Checking made its entry; two microseconds refill it, a millisecond is plenty: it is full
        // again, and forgotten.
        assert_eq!(local.check(&[quick]), Verdict::Allowed);
        std::thread::sleep(Duration::from_millis(1));
        assert_eq!(local.sweep_once(), 2);
    }

    #[test]
    fn at_the_bound_new_users_share_their_credentials_overflow_bucket() {
        let local = LocalBuckets::new();
        local.set_max(100);
        let limit = RateLimit {
            requests: 5,
            per_seconds: 86_400,
            burst: 5,
        };
        let user = |cred: &[u8], who: &str| {
            let id = credential_id("t", cred);
            let b = Bucket::new(Keys::Local, Scope::User, Origin::Default, limit, &id, who);
            match local.full() {
                true => b.with_overflow(Keys::Local, Origin::Default, &id),
                false => b,
            }
        };
        // One known user, then a flood of made-up ones from the same credential.
        assert_eq!(local.check(&[user(b"a", "known")]), Verdict::Allowed);
        let overflows = || SharedMetrics::global().bucket_overflows.get();
        let before = overflows();
        let mut allowed = 0;
        for n in 0..10_000 {
            if local.check(&[user(b"a", &format!("made-up-{n}"))]) == Verdict::Allowed {
                allowed += 1;
            }
        }
        let held: usize = local.by_limit.load().values().map(|l| l.keyed.len()).sum();
        assert!(held <= 101, "{held} buckets held for a bound of 100");
        // 99 made-up users got buckets of their own (5 tokens each, 1 used), the rest shared one
        // overflow bucket of 5 tokens.
        assert_eq!(allowed, 99 + 5);
        assert!(overflows() - before >= 9_900, "{}", overflows() - before);
        // The known user keeps their own bucket, and another credential's new users (under its
        // share) get buckets of their own: five requests each, none shared.
        assert_eq!(local.check(&[user(b"a", "known")]), Verdict::Allowed);
        for who in ["b-1", "b-2", "b-3"] {
            for _ in 0..5 {
                assert_eq!(local.check(&[user(b"b", who)]), Verdict::Allowed, "{who}");
            }
        }
        // The flooding credential's overflow bucket stays spent.
        assert!(matches!(
            local.check(&[user(b"a", "made-up-again")]),
            Verdict::Limited { .. }
        ));
    }
}
