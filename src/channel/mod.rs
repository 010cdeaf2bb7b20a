//! The conversations of channel callers (`dialect::ChannelCaller`): each one's activity log, which
//! polls read after a watermark and streams follow as it grows.
//!
//! - Each conversation belongs to the route and credential that started it: any other gets a 404,
//!   whatever token or secret it holds.
//! - In memory (moka, `memory`): a conversation nobody reads or writes for `[conversations]
//!   idle_secs` is forgotten; each keeps its last `channel_activities` activities and at most
//!   `channel_conversation_bytes`; all together are held to `channel_bytes` (the least used go
//!   first), so no caller can fill memory through its conversations. Pages (a poll's answer, a
//!   stream message) are held to `PAGE_BYTES`.
//! - With `[redis]`, conversations live on Redis instead (`shared`), so polling or streaming from
//!   any instance sees the same conversation. A Redis failure is a 503 (a conversation held in one instance's
//!   memory would split it), counted as `botbridge_redis_fallbacks_total{feature="channels",
//!   action="deny"}`. Streams follow their own instance's appends at once and other instances'
//!   within a second (they read the stream again each second).
//! - Watermarks are opaque to callers (one the store never gives reads everything kept): the place (`seq`) of the last activity read in memory, the
//!   Redis stream id of the last entry read on Redis. Activity ids carry the place either way (the
//!   dialect writes them; on Redis the places come from the hash's counter).
//! - Metrics: `botbridge_channel_conversations` (open in this instance's memory),
//!   `botbridge_channel_activities_total{direction}` (`in` from callers, `out` from bots),
//!   `botbridge_channel_polls_total`, `botbridge_channel_streams` (open streams, at most
//!   `channel_streams` per instance and one per conversation: a new one closes the old).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use prometheus::{
    register_int_counter, register_int_counter_vec, register_int_gauge, IntCounter, IntCounterVec,
    IntGauge,
};
use tokio::sync::watch;

use crate::config::conversations::ConversationSettings;
use crate::config::redis::OnRedisError;
use crate::error::{ProxyError, Reason};
use crate::metrics::shared::{Feature, SharedMetrics};
use crate::shared::redis::SharedRedis;

mod memory;
mod shared;
pub mod stream;

use memory::Keep;
pub use memory::Log;
use shared::{Shared, Start};

/// The most bytes one page carries (at least one activity).
pub const PAGE_BYTES: usize = 512 << 10;

/// The store's metrics.
pub struct ChannelMetrics {
    pub conversations: IntGauge,
    pub activities: IntCounterVec,
    pub polls: IntCounter,
    pub streams: IntGauge,
}

/// The process-wide channel metrics (registered on first use).
pub fn metrics() -> &'static ChannelMetrics {
    static M: OnceLock<ChannelMetrics> = OnceLock::new();
    M.get_or_init(|| {
        let m = ChannelMetrics {
            conversations: register_int_gauge!(
                "botbridge_channel_conversations",
                "Conversations of channel callers this instance keeps in memory."
            )
            .expect("register channel conversations"),
            activities: register_int_counter_vec!(
                "botbridge_channel_activities_total",
                "Activities added to channel conversations: `in` from callers, `out` from bots.",
                &["direction"]
            )
            .expect("register channel activities"),
            polls: register_int_counter!(
                "botbridge_channel_polls_total",
                "Reads of a channel conversation's activities after a watermark."
            )
            .expect("register channel polls"),
            streams: register_int_gauge!(
                "botbridge_channel_streams",
                "Open streams of channel conversations (WebSocket clients)."
            )
            .expect("register channel streams"),
        };
        for d in ["in", "out"] {
            m.activities.with_label_values(&[d]);
        }
        m
    })
}

/// A page of a conversation: the activities after a watermark, and the watermark after them.
pub struct Page {
    pub activities: Vec<Bytes>,
    pub watermark: String,
}

/// The Redis store's failure: a 503, counted.
fn unavailable() -> ProxyError {
    SharedMetrics::global().fallback(Feature::Channels, OnRedisError::Deny);
    ProxyError::new(
        503,
        Reason::RedisUnavailable,
        "the conversation store is unavailable; retry shortly",
    )
}

/// Whether a watermark is a Redis stream id (`ms-seq`).
fn is_stream_id(w: &str) -> bool {
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit()) && s.parse::<u64>().is_ok();
    w.split_once('-')
        .is_some_and(|(a, b)| digits(a) && digits(b))
}

/// A place from a watermark: one past any there is (more digits than a u64 holds) reads nothing;
/// one this store never gives reads everything kept.
fn place(w: &str) -> Option<u64> {
    match w.parse::<u64>() {
        Ok(p) => Some(p),
        Err(_) if !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()) => Some(u64::MAX),
        Err(_) => None,
    }
}

/// What a post carrying a client's activity id found.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// Never seen: this post goes to the bot.
    New,
    /// Seen and answered: the activity's id.
    Done(String),
    /// Seen, and still with the bot.
    InFlight,
}

/// An open stream's place: its conversation's stream generation (a newer stream closes it) and
/// its share of the instance's `channel_streams`.
pub struct StreamClaim {
    pub generation: u64,
    pub newer: watch::Receiver<u64>,
    open: Arc<AtomicUsize>,
    by_credential: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    owner: String,
}

impl Drop for StreamClaim {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        let mut by = self.by_credential.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = by.get_mut(&self.owner) {
            *n -= 1;
            if *n == 0 {
                by.remove(&self.owner);
            }
        }
    }
}

/// Every channel conversation: in this instance's memory, or on Redis.
pub struct Channels {
    logs: moka::sync::Cache<Arc<str>, Arc<Log>>,
    /// On Redis: what rings this instance's streams when it appends to a conversation.
    bells: moka::sync::Cache<Arc<str>, Arc<watch::Sender<u64>>>,
    /// Client activity ids seen (`""` while with the bot), in memory.
    claims: moka::sync::Cache<String, Arc<str>>,
    /// Each conversation's stream generation.
    streams: moka::sync::Cache<Arc<str>, Arc<watch::Sender<u64>>>,
    open_streams: Arc<AtomicUsize>,
    max_streams: usize,
    /// Open streams by credential (its conversations' owner), each held to `max_per_credential`.
    by_credential: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    max_per_credential: usize,
    redis: Option<Arc<SharedRedis>>,
    keep: Keep,
    idle: Duration,
}

impl Channels {
    /// A store with `settings`' bounds, on `redis` when there is one.
    pub fn new(settings: &ConversationSettings, redis: Option<Arc<SharedRedis>>) -> Arc<Self> {
        metrics();
        let small = || {
            moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(settings.idle)
                .build()
        };
        Arc::new(Channels {
            logs: moka::sync::Cache::builder()
                .max_capacity(settings.channel_bytes)
                .weigher(|_, log: &Arc<Log>| log.weight())
                .time_to_idle(settings.idle)
                .build(),
            bells: small(),
            claims: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(600))
                .build(),
            streams: small(),
            open_streams: Arc::default(),
            max_streams: settings.channel_streams,
            by_credential: Arc::default(),
            max_per_credential: settings.channel_streams_per_credential,
            redis,
            keep: Keep {
                count: settings.channel_activities,
                bytes: settings.channel_conversation_bytes,
            },
            idle: settings.idle,
        })
    }

    /// Whether streams must read the store again now and then (other instances append too).
    pub fn shared(&self) -> bool {
        self.redis.is_some()
    }

    fn on_redis<'a>(&self, redis: &'a SharedRedis, id: &str) -> Shared<'a> {
        Shared::new(redis, id, self.idle.as_millis() as i64)
    }

    /// Counts what memory holds (after a change: moka counts lazily).
    fn count(&self) {
        metrics().conversations.set(self.logs.entry_count() as i64);
    }

    /// Starts conversation `id` for `owner` and `user`: `Some(true)` new, `Some(false)` already
    /// started (kept as is), `None` started by someone else.
    pub async fn start(
        &self,
        id: &str,
        owner: &str,
        user: &str,
    ) -> Result<Option<bool>, ProxyError> {
        let Some(redis) = &self.redis else {
            let entry = (self.logs)
                .entry(Arc::from(id))
                .or_insert_with(|| Arc::new(Log::new(owner, user)));
            self.count();
            return Ok(match (entry.is_fresh(), entry.value().owner == owner) {
                (true, _) => Some(true),
                (false, true) => Some(false),
                (false, false) => None,
            });
        };
        Ok(match self.on_redis(redis, id).start(owner, user).await? {
            Start::New => Some(true),
            Start::Existing => Some(false),
            Start::Foreign => None,
        })
    }

    /// The user of conversation `id`, if it was started by `owner` (and not forgotten).
    pub async fn user(&self, id: &str, owner: &str) -> Result<Option<String>, ProxyError> {
        match &self.redis {
            None => Ok(self.mine(id, owner).map(|l| l.user.clone())),
            Some(redis) => self.on_redis(redis, id).user(owner).await,
        }
    }

    fn mine(&self, id: &str, owner: &str) -> Option<Arc<Log>> {
        self.logs.get(id).filter(|l| l.owner == owner)
    }

    /// Adds activities to `owner`'s conversation `id`; `None` if there is none. `make(first)` writes
    /// them, the caller's first, then the bot's (counted by direction); on Redis it is called
    /// twice, once to count them before their places are taken.
    pub async fn append(
        &self,
        id: &str,
        owner: &str,
        make: impl Fn(u64) -> Vec<Vec<u8>> + Sync,
    ) -> Result<Option<u64>, ProxyError> {
        let (first, added) = match &self.redis {
            None => {
                let Some(log) = self.mine(id, owner) else {
                    return Ok(None);
                };
                let (first, added) = log.append(self.keep, make);
                // Weighed again (moka weighs an entry when it is inserted), unless it was dropped
                // meanwhile: a conversation forgotten stays forgotten.
                if self.logs.contains_key(id) {
                    self.logs.insert(Arc::from(id), log);
                }
                (first, added as u64)
            }
            Some(redis) => {
                let n = make(0).len() as u64;
                let on = self.on_redis(redis, id);
                let Some(first) = on.append(owner, n, self.keep.count, &make).await? else {
                    return Ok(None);
                };
                if let Some(bell) = self.bells.get(id) {
                    bell.send_replace(first + n);
                }
                (first, n)
            }
        };
        let m = &metrics().activities;
        m.with_label_values(&["in"]).inc_by(added.min(1));
        m.with_label_values(&["out"])
            .inc_by(added.saturating_sub(1));
        Ok(Some(first))
    }

    /// The activities of `owner`'s conversation `id` after `watermark` (all kept for `None`, or for
    /// one this store never gives), at most `max` and about [`PAGE_BYTES`]; `None` if there is no
    /// such conversation.
    pub async fn after(
        &self,
        id: &str,
        owner: &str,
        watermark: Option<&str>,
        max: usize,
    ) -> Result<Option<Page>, ProxyError> {
        match &self.redis {
            None => Ok(self
                .mine(id, owner)
                .map(|log| log.after(watermark.and_then(place), max, PAGE_BYTES))),
            Some(redis) => {
                let watermark = watermark.filter(|w| is_stream_id(w));
                (self.on_redis(redis, id))
                    .after(owner, watermark, max, PAGE_BYTES)
                    .await
            }
        }
    }

    /// Claims the client activity id `client` of a post to conversation `id` (remembered for ten
    /// minutes), so a client retrying a post it sent does not send the message to the bot twice.
    pub async fn claim(&self, id: &str, client: &str) -> Result<Claim, ProxyError> {
        let key = format!("{id}\n{client}");
        let found = match &self.redis {
            None => {
                let entry = self.claims.entry(key).or_insert_with(|| Arc::from(""));
                (!entry.is_fresh()).then(|| entry.into_value().to_string())
            }
            Some(redis) => {
                let key = redis.key("channel-claim", key.as_bytes());
                shared::claim(redis, &key).await?
            }
        };
        Ok(match found {
            None => Claim::New,
            Some(a) if a.is_empty() => Claim::InFlight,
            Some(a) => Claim::Done(a),
        })
    }

    /// Settles a claim: the activity's id once it joined the conversation, or `None` to let the
    /// post be tried again (the bot failed).
    pub async fn settle(&self, id: &str, client: &str, activity: Option<&str>) {
        let key = format!("{id}\n{client}");
        match (&self.redis, activity) {
            (None, Some(a)) => self.claims.insert(key, Arc::from(a)),
            (None, None) => self.claims.invalidate(&key),
            (Some(redis), a) => {
                let key = redis.key("channel-claim", key.as_bytes());
                shared::settle(redis, &key, a).await
            }
        }
    }

    /// What rings when this instance adds to conversation `id`.
    pub fn bell(&self, id: &str) -> watch::Receiver<u64> {
        if self.redis.is_none() {
            if let Some(log) = self.logs.get(id) {
                return log.subscribe();
            }
        }
        (self.bells)
            .get_with(Arc::from(id), || Arc::new(watch::channel(0).0))
            .subscribe()
    }

    /// A place for a new stream of `owner`'s conversation `id` (the one open before is told to
    /// close); `None` when this instance has `channel_streams` open, or the credential
    /// `channel_streams_per_credential`.
    pub fn claim_stream(&self, id: &str, owner: &str) -> Option<StreamClaim> {
        {
            let mut by = self.by_credential.lock().unwrap_or_else(|p| p.into_inner());
            let mine = by.entry(owner.to_owned()).or_default();
            if *mine >= self.max_per_credential {
                return None;
            }
            let open = self.open_streams.fetch_add(1, Ordering::Relaxed);
            if open >= self.max_streams {
                self.open_streams.fetch_sub(1, Ordering::Relaxed);
                return None;
            }
            *mine += 1;
        }
        let generations = (self.streams).get_with(Arc::from(id), || Arc::new(watch::channel(0).0));
        let mut generation = 0;
        generations.send_modify(|g| {
            *g += 1;
            generation = *g;
        });
        Some(StreamClaim {
            generation,
            newer: generations.subscribe(),
            open: self.open_streams.clone(),
            by_credential: self.by_credential.clone(),
            owner: owner.to_owned(),
        })
    }
}
