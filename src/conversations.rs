//! The conversation store: per (backend, user), the conversation a stateful bot is in (its dialect's
//! [`Conversations`]: a vendor session id, a cursor). The dialect says what a conversation is; this
//! keeps them.
//!
//! - In memory (moka): bounded by `[conversations] max_entries` (least used go first), a
//!   conversation forgotten after `idle_secs` without a read or write. Kept over a reload.
//! - With `[redis]`, on Redis as well (`<prefix>conversation:<hex SHA-256 of backend and user>`, a
//!   JSON value, the same idle time, refreshed by every read: `GET` and `PEXPIRE` in one `MULTI`,
//!   which every Redis version has), so another instance continues the same conversation. Redis is
//!   the truth; this instance's memory holds what it last saw or wrote there.
//! - Redis failing a read: `[redis.conversations] on_redis_error` says: `local` (default) this
//!   instance's memory, `allow` the dialect's first conversation (derived from the user id alone, so
//!   every instance agrees on it), `deny` a 503 in the caller's dialect. Each counted as a fallback.
//! - Redis failing a write (the bot already answered, so the caller is never refused for it): the
//!   change is kept in memory as not yet written, counted as a `local` fallback, preferred over
//!   what Redis says and written again by the next read that reaches Redis, so a conversation the
//!   bot ended is never resumed because Redis missed a write.
//! - A user with no kept conversation is in the dialect's first one; nothing is written until an
//!   answer changes it (a conversation the bot ended), so an ordinary message costs one read.
//! - `botbridge_conversations{store="memory"}` counts what this instance's memory holds (every
//!   15 s and at each change), `botbridge_conversation_restarts_total{backend}` the conversations
//!   bots ended. Redis is not counted: a `SCAN` of a shared keyspace on every instance costs more
//!   than the number is worth, and Redis's own `INFO keyspace` has it.

use std::hash::BuildHasher;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use botbridge_core::dialect::{AfterAnswer, Conversation, Conversations};
use botbridge_core::error::{ProxyError, Reason};
use prometheus::{register_int_counter_vec, register_int_gauge_vec, IntCounterVec, IntGaugeVec};
use sha2::{Digest, Sha256};

use crate::config::conversations::ConversationSettings;
use crate::config::redis::OnRedisError;
use crate::metrics::shared::{Feature, SharedMetrics};
use crate::shared::redis::{Op, SharedRedis};

/// How often the sizes are counted.
const COUNT_EVERY: Duration = Duration::from_secs(15);

/// The store's metrics.
struct StoreMetrics {
    size: IntGaugeVec,
    restarts: IntCounterVec,
}

fn metrics() -> &'static StoreMetrics {
    static M: OnceLock<StoreMetrics> = OnceLock::new();
    M.get_or_init(|| {
        let m = StoreMetrics {
            size: register_int_gauge_vec!(
                "botbridge_conversations",
                "Conversations of stateful bots this instance keeps in memory.",
                &["store"]
            )
            .expect("register conversations"),
            restarts: register_int_counter_vec!(
                "botbridge_conversation_restarts_total",
                "Conversations a bot ended, so that the user's next message started a fresh one.",
                &["backend"]
            )
            .expect("register conversation restarts"),
        };
        m.size.with_label_values(&["memory"]).set(0);
        m
    })
}

/// The conversations of every stateful backend.
pub struct ConversationStore {
    memory: moka::sync::Cache<u128, Conversation>,
    /// Changes Redis refused to take: preferred over what Redis says until a write succeeds.
    unwritten: moka::sync::Cache<u128, Conversation>,
    /// The seeds of the memory keys ([`ConversationStore::key_here`]).
    seeds: (
        foldhash::quality::RandomState,
        foldhash::quality::RandomState,
    ),
    shared: Option<Arc<SharedRedis>>,
    settings: ConversationSettings,
}

impl ConversationStore {
    /// A store with `settings`, on `shared` when there is a Redis, counting its sizes on a thread of
    /// its own for as long as it lives.
    pub fn new(settings: &ConversationSettings, shared: Option<Arc<SharedRedis>>) -> Arc<Self> {
        let cache = || {
            moka::sync::Cache::builder()
                .max_capacity(settings.max_entries)
                .time_to_idle(settings.idle)
                .build()
        };
        let store = Arc::new(ConversationStore {
            memory: cache(),
            unwritten: cache(),
            seeds: Default::default(),
            shared,
            settings: settings.clone(),
        });
        let weak = Arc::downgrade(&store);
        let spawned = std::thread::Builder::new()
            .name("conversations".into())
            .spawn(move || count(weak));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "conversation sizes will not be counted");
        }
        store
    }

    /// Creates the restart series of a stateful backend at zero (for dashboards and alerts).
    pub fn register_backend(name: &str) {
        metrics().restarts.with_label_values(&[name]);
    }

    /// The conversation `user` is in with `backend`: the kept one, else the dialect's first.
    pub async fn current(
        &self,
        backend: &str,
        rules: &dyn Conversations,
        user: &str,
    ) -> Result<Conversation, ProxyError> {
        let key = self.key_here(backend, user);
        let kept = match &self.shared {
            None => self.memory.get(&key),
            Some(redis) => match self.read_shared(redis, key, backend, user).await {
                Ok(kept) => kept,
                Err(policy) => self.fallback(policy, &key)?,
            },
        };
        Ok(kept.unwrap_or_else(|| rules.first(user)))
    }

    /// Keeps what an answer did to `user`'s conversation with `backend` ([`Conversations::after`]):
    /// a changed or restarted conversation is written (to Redis too, with `[redis]`); a write
    /// Redis refuses leaves it in this instance's memory alone, counted.
    pub async fn keep(&self, backend: &str, user: &str, after: AfterAnswer) {
        let Some(next) = changed(backend, after) else {
            return;
        };
        let key = self.key_here(backend, user);
        if let Some(redis) = &self.shared {
            match self.write_shared(redis, backend, user, &next).await {
                Ok(()) => self.unwritten.invalidate(&key),
                Err(_) => {
                    SharedMetrics::global().fallback(Feature::Conversations, OnRedisError::Local);
                    self.unwritten.insert(key, next.clone());
                }
            }
        }
        self.memory.insert(key, next);
        // Writes are rare (a conversation changed): the gauge follows them at once.
        self.memory.run_pending_tasks();
        let gauge = metrics().size.with_label_values(&["memory"]);
        gauge.set(self.memory.entry_count() as i64);
    }

    /// Keeps a change in this instance's memory only (for shadow bots: see
    /// `migration::shadow::ShadowConversation`).
    pub fn keep_here(&self, backend: &str, user: &str, after: AfterAnswer) {
        if let Some(next) = changed(backend, after) {
            self.memory.insert(self.key_here(backend, user), next);
        }
    }

    /// What this instance last saw of `user`'s conversation with `backend`, without asking Redis
    /// (for shadow copies, which never wait on the store).
    pub fn peek(&self, backend: &str, user: &str) -> Option<Conversation> {
        self.memory.get(&self.key_here(backend, user))
    }

    /// Redis failed on a read: what `on_redis_error` says, counted.
    fn fallback(
        &self,
        policy: OnRedisError,
        key: &u128,
    ) -> Result<Option<Conversation>, ProxyError> {
        SharedMetrics::global().fallback(Feature::Conversations, policy);
        match policy {
            OnRedisError::Local => Ok(self.memory.get(key)),
            OnRedisError::Allow => Ok(None),
            OnRedisError::Deny => Err(ProxyError::new(
                503,
                Reason::RedisUnavailable,
                "the conversation store is unavailable; try again later",
            )
            .with_header("retry-after", "1")),
        }
    }

    /// The conversation on Redis (its idle time restarted), also remembered in memory; `Err`: Redis
    /// could not be asked, with the policy that decides instead.
    async fn read_shared(
        &self,
        redis: &SharedRedis,
        key: u128,
        backend: &str,
        user: &str,
    ) -> Result<Option<Conversation>, OnRedisError> {
        let name = redis.key("conversation", &key_shared(backend, user));
        let ms = self.settings.idle.as_millis() as u64;
        let (value,): (Option<Vec<u8>>,) = redis
            .call(Op::Conversation, |mut conn| async move {
                redis::pipe()
                    .atomic()
                    .get(&name)
                    .pexpire(&name, ms as i64)
                    .ignore()
                    .query_async(&mut conn)
                    .await
            })
            .await
            .map_err(|_| redis.settings().conversations_on_error)?;
        if let Some(mine) = self.unwritten.get(&key) {
            // A change Redis missed wins over what Redis has; it is written now that Redis answers.
            if self.write_shared(redis, backend, user, &mine).await.is_ok() {
                self.unwritten.invalidate(&key);
            }
            return Ok(Some(mine));
        }
        // A value this version cannot read is treated as none (and overwritten by the next change).
        let kept = value.and_then(|v| serde_json::from_slice::<Conversation>(&v).ok());
        match &kept {
            Some(c) => self.memory.insert(key, c.clone()),
            None => self.memory.invalidate(&key),
        }
        Ok(kept)
    }

    async fn write_shared(
        &self,
        redis: &SharedRedis,
        backend: &str,
        user: &str,
        conv: &Conversation,
    ) -> Result<(), crate::shared::redis::Unavailable> {
        let name = redis.key("conversation", &key_shared(backend, user));
        let value = serde_json::to_vec(conv).expect("a conversation serializes");
        let ms = self.settings.idle.as_millis() as u64;
        redis
            .call(Op::Conversation, |mut conn| async move {
                redis::cmd("SET")
                    .arg(name)
                    .arg(value)
                    .arg("PX")
                    .arg(ms)
                    .query_async::<()>(&mut conn)
                    .await
            })
            .await
    }
}

/// The conversation after an answer, if it changed (a restart counted).
fn changed(backend: &str, after: AfterAnswer) -> Option<Conversation> {
    match after {
        AfterAnswer::Keep => None,
        AfterAnswer::Update(c) => Some(c),
        AfterAnswer::Restart(c) => {
            metrics().restarts.with_label_values(&[backend]).inc();
            Some(c)
        }
    }
}

/// 16 random bytes for a fresh conversation id: a v4 UUID's (122 random bits from the crate's
/// fast RNG, which is plenty for an id only the proxy and the bot see).
pub fn random() -> [u8; 16] {
    *uuid::Uuid::new_v4().as_bytes()
}

impl ConversationStore {
    /// The memory key of a user's conversation with a backend: 128 bits from two hashes seeded at
    /// random per process, so nobody can make two users' keys collide. Not SHA-256, which cost
    /// about 3,700 instructions a request under callgrind (bench/RESULTS.md), nor the user id
    /// itself (unbounded, personal).
    fn key_here(&self, backend: &str, user: &str) -> u128 {
        let half = |seed: &foldhash::quality::RandomState| seed.hash_one((backend, user)) as u128;
        half(&self.seeds.0) << 64 | half(&self.seeds.1)
    }
}

/// The Redis key of a user's conversation with a backend: the same on every instance, and never
/// the user id itself.
fn key_shared(backend: &str, user: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(backend.as_bytes());
    h.update([0]);
    h.update(user.as_bytes());
    h.finalize().into()
}

/// The memory counting thread's loop, for as long as the store lives.
fn count(store: Weak<ConversationStore>) {
    let gauge = metrics().size.with_label_values(&["memory"]);
    loop {
        let Some(s) = store.upgrade() else { return };
        s.memory.run_pending_tasks();
        gauge.set(s.memory.entry_count() as i64);
        drop(s);
        std::thread::sleep(COUNT_EVERY);
    }
}
