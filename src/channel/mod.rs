//! The conversations of channel callers (`dialect::ChannelCaller`): each one's activity log, which
//! polls read after a watermark and streams follow as it grows.
//!
//! - In memory (moka): a conversation nobody reads or writes for `[conversations] idle_secs` is
//!   forgotten; each keeps its last `channel_activities` activities; all logs together are held to
//!   `channel_bytes` (weighed by their activities' bytes; the least used go first), so no caller
//!   can fill memory through its conversations.
//! - With `[redis]`, conversations live on Redis instead, so polling or streaming from any instance
//!   sees the same conversation: a hash `<prefix>channel-meta:<id>` (its user, the next place) and a
//!   stream `<prefix>channel:<id>` (its activities, `MAXLEN ~ channel_activities`), both expiring
//!   after `idle_secs` without use. A Redis failure is a 503 (a conversation held in one instance's
//!   memory would split it), counted as `botbridge_redis_fallbacks_total{feature="channels",
//!   action="deny"}`. Streams follow their own instance's appends at once and other instances'
//!   within a second (they read the stream again each second).
//! - Watermarks are opaque to callers (one the store never gives reads everything kept): the place (`seq`) of the last activity read in memory, the
//!   Redis stream id of the last entry read on Redis. Activity ids carry the place either way (the
//!   dialect writes them; on Redis the places come from the hash's counter).
//! - Metrics: `botbridge_channel_conversations` (open in this instance's memory),
//!   `botbridge_channel_activities_total{direction}` (`in` from callers, `out` from bots),
//!   `botbridge_channel_polls_total`, `botbridge_channel_streams` (open streams).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
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
use crate::shared::redis::{Op, SharedRedis};

pub mod stream;

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

/// One conversation: its user and its activities.
pub struct Log {
    /// The user its tokens were issued for.
    pub user: String,
    state: Mutex<LogState>,
    /// The place of the last activity, for streams to wait on.
    last: watch::Sender<u64>,
}

struct LogState {
    /// The place the next activity gets (the first is 1).
    next: u64,
    items: VecDeque<(u64, Bytes)>,
    bytes: usize,
}

/// A page of a conversation in memory: the activities after a place, and the place after them.
pub struct Places {
    pub activities: Vec<Bytes>,
    pub watermark: u64,
}

/// A page of a conversation: the activities after a watermark, and the watermark after them.
pub struct Page {
    pub activities: Vec<Bytes>,
    pub watermark: String,
}

impl Log {
    fn new(user: String) -> Self {
        Log {
            user,
            state: Mutex::new(LogState {
                next: 1,
                items: VecDeque::new(),
                bytes: 0,
            }),
            last: watch::channel(0).0,
        }
    }

    /// Adds activities at the next places: `make(first)` writes them, the first at place `first`.
    /// The oldest go beyond `keep` activities. Returns the first place.
    pub fn append(&self, keep: usize, make: impl FnOnce(u64) -> Vec<Vec<u8>>) -> u64 {
        let (first, last) = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let first = s.next;
            for a in make(first) {
                let seq = s.next;
                s.next += 1;
                s.bytes += a.len();
                s.items.push_back((seq, Bytes::from(a)));
            }
            while s.items.len() > keep {
                let (_, gone) = s.items.pop_front().expect("not empty");
                s.bytes -= gone.len();
            }
            (first, s.next - 1)
        };
        self.last.send_replace(last);
        first
    }

    /// The activities after `watermark` (all that are kept for `None`), at most `max`.
    pub fn after(&self, watermark: Option<u64>, max: usize) -> Places {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let from = watermark.unwrap_or(0);
        let start = s.items.partition_point(|(seq, _)| *seq <= from);
        let activities: Vec<Bytes> = (s.items.range(start..).take(max))
            .map(|(_, a)| a.clone())
            .collect();
        let watermark = match activities.len() {
            0 => from.min(s.next - 1),
            n => s.items[start + n - 1].0,
        };
        Places {
            activities,
            watermark,
        }
    }

    /// Follows the place of the last activity.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.last.subscribe()
    }

    fn weight(&self) -> u32 {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (s.bytes + self.user.len() + 256).min(u32::MAX as usize) as u32
    }
}

/// Every channel conversation: in this instance's memory, or on Redis.
pub struct Channels {
    logs: moka::sync::Cache<Arc<str>, Arc<Log>>,
    /// On Redis: what rings this instance's streams when it appends to a conversation.
    bells: moka::sync::Cache<Arc<str>, Arc<watch::Sender<u64>>>,
    redis: Option<Arc<SharedRedis>>,
    keep: usize,
    idle: Duration,
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

impl Channels {
    /// A store with `settings`' bounds, on `redis` when there is one.
    pub fn new(settings: &ConversationSettings, redis: Option<Arc<SharedRedis>>) -> Arc<Self> {
        metrics();
        Arc::new(Channels {
            logs: moka::sync::Cache::builder()
                .max_capacity(settings.channel_bytes)
                .weigher(|_, log: &Arc<Log>| log.weight())
                .time_to_idle(settings.idle)
                .eviction_listener(|_, _, cause| {
                    if cause != moka::notification::RemovalCause::Replaced {
                        metrics().conversations.dec();
                    }
                })
                .build(),
            bells: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(settings.idle)
                .build(),
            redis,
            keep: settings.channel_activities,
            idle: settings.idle,
        })
    }

    /// Whether streams must read the store again now and then (other instances append too).
    pub fn shared(&self) -> bool {
        self.redis.is_some()
    }

    fn keys(&self, redis: &SharedRedis, id: &str) -> (String, String) {
        (
            redis.key("channel-meta", id.as_bytes()),
            redis.key("channel", id.as_bytes()),
        )
    }

    fn idle_ms(&self) -> i64 {
        self.idle.as_millis() as i64
    }

    /// Starts conversation `id` for `user`; false if it was already started (it is kept as is).
    pub async fn start(&self, id: &str, user: &str) -> Result<bool, ProxyError> {
        let Some(redis) = &self.redis else {
            let entry = (self.logs)
                .entry(Arc::from(id))
                .or_insert_with(|| Arc::new(Log::new(user.to_owned())));
            if entry.is_fresh() {
                metrics().conversations.inc();
            }
            return Ok(entry.is_fresh());
        };
        let (meta, _) = self.keys(redis, id);
        let ms = self.idle_ms();
        let (created,): (i64,) = redis
            .call(Op::Channel, |mut conn| async move {
                redis::pipe()
                    .atomic()
                    .hset_nx(&meta, "user", user)
                    .pexpire(&meta, ms)
                    .ignore()
                    .query_async(&mut conn)
                    .await
            })
            .await
            .map_err(|_| unavailable())?;
        Ok(created == 1)
    }

    /// The user of conversation `id`, if it was started (and not forgotten).
    pub async fn user(&self, id: &str) -> Result<Option<String>, ProxyError> {
        let Some(redis) = &self.redis else {
            return Ok(self.logs.get(id).map(|l| l.user.clone()));
        };
        let (meta, _) = self.keys(redis, id);
        let ms = self.idle_ms();
        let (user,): (Option<String>,) = redis
            .call(Op::Channel, |mut conn| async move {
                redis::pipe()
                    .atomic()
                    .hget(&meta, "user")
                    .pexpire(&meta, ms)
                    .ignore()
                    .query_async(&mut conn)
                    .await
            })
            .await
            .map_err(|_| unavailable())?;
        Ok(user)
    }

    /// Adds activities to conversation `id` (see [`Log::append`]); `None` if it was not started.
    /// `make(first)` writes them, the caller's first, then the bot's (counted by direction); on
    /// Redis it is called twice, once to count them before their places are taken.
    pub async fn append(
        &self,
        id: &str,
        make: impl Fn(u64) -> Vec<Vec<u8>> + Sync,
    ) -> Result<Option<u64>, ProxyError> {
        let (first, added) = match &self.redis {
            None => {
                let Some(log) = self.logs.get(id) else {
                    return Ok(None);
                };
                let mut added = 0;
                let first = log.append(self.keep, |first| {
                    let made = make(first);
                    added = made.len() as u64;
                    made
                });
                // Weighed again: moka weighs an entry when it is inserted.
                self.logs.insert(Arc::from(id), log);
                (first, added)
            }
            Some(redis) => {
                let n = make(0).len() as u64;
                let Some(first) = self.append_shared(redis, id, n, &make).await? else {
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

    /// On Redis: `n` places taken from the conversation's counter, then the activities added.
    async fn append_shared(
        &self,
        redis: &SharedRedis,
        id: &str,
        n: u64,
        make: &(dyn Fn(u64) -> Vec<Vec<u8>> + Sync),
    ) -> Result<Option<u64>, ProxyError> {
        let (meta, stream) = self.keys(redis, id);
        let ms = self.idle_ms();
        let meta2 = meta.clone();
        let (user, last): (Option<String>, u64) = redis
            .call(Op::Channel, |mut conn| async move {
                redis::pipe()
                    .atomic()
                    .hget(&meta2, "user")
                    .hincr(&meta2, "next", n)
                    .pexpire(&meta2, ms)
                    .ignore()
                    .query_async(&mut conn)
                    .await
            })
            .await
            .map_err(|_| unavailable())?;
        if user.is_none() {
            return Ok(None);
        }
        let first = last + 1 - n;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for a in make(first) {
            pipe.cmd("XADD")
                .arg(&stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.keep)
                .arg("*")
                .arg("a")
                .arg(a)
                .ignore();
        }
        pipe.pexpire(&stream, ms)
            .ignore()
            .pexpire(&meta, ms)
            .ignore();
        redis
            .call(Op::Channel, |mut conn| async move {
                pipe.query_async::<()>(&mut conn).await
            })
            .await
            .map_err(|_| unavailable())?;
        Ok(Some(first))
    }

    /// The activities of conversation `id` after `watermark` (all kept for `None`, or for one this
    /// store never gives), at most `max`; `None` if it was not started.
    pub async fn after(
        &self,
        id: &str,
        watermark: Option<&str>,
        max: usize,
    ) -> Result<Option<Page>, ProxyError> {
        let Some(redis) = &self.redis else {
            let Some(log) = self.logs.get(id) else {
                return Ok(None);
            };
            // A place past any there is (more digits than a u64 holds) reads nothing.
            let place = |w: &str| match w.parse::<u64>() {
                Ok(p) => Some(p),
                Err(_) if !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()) => Some(u64::MAX),
                Err(_) => None,
            };
            let from = watermark.and_then(place);
            let p = log.after(from, max);
            return Ok(Some(Page {
                activities: p.activities,
                watermark: p.watermark.to_string(),
            }));
        };
        let watermark = watermark.filter(|w| is_stream_id(w));
        let (meta, stream) = self.keys(redis, id);
        let ms = self.idle_ms();
        let start = watermark.map_or_else(|| "-".to_owned(), |w| format!("({w}"));
        type Entries = Vec<(String, Vec<Vec<u8>>)>;
        let (user, entries): (Option<String>, Entries) = redis
            .call(Op::Channel, |mut conn| async move {
                redis::pipe()
                    .atomic()
                    .hget(&meta, "user")
                    .cmd("XRANGE")
                    .arg(&stream)
                    .arg(start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(max)
                    .pexpire(&meta, ms)
                    .ignore()
                    .pexpire(&stream, ms)
                    .ignore()
                    .query_async(&mut conn)
                    .await
            })
            .await
            .map_err(|_| unavailable())?;
        if user.is_none() {
            return Ok(None);
        }
        let watermark = (entries.last().map(|(id, _)| id.clone()))
            .or_else(|| watermark.map(str::to_owned))
            .unwrap_or_default();
        let activities = (entries.into_iter())
            .filter_map(|(_, mut fields)| {
                (fields.len() == 2).then(|| Bytes::from(fields.remove(1)))
            })
            .collect();
        Ok(Some(Page {
            activities,
            watermark,
        }))
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_watermarks_and_the_oldest_go_first() {
        let log = Log::new("u".into());
        let first = log.append(3, |f| {
            (f..f + 2).map(|i| format!("a{i}").into_bytes()).collect()
        });
        assert_eq!(first, 1);
        let p = log.after(None, 100);
        assert_eq!((p.activities.len(), p.watermark), (2, 2));
        assert_eq!(log.after(Some(2), 100).activities.len(), 0);
        assert_eq!(log.after(Some(2), 100).watermark, 2);
        log.append(3, |f| {
            (f..f + 2).map(|i| format!("a{i}").into_bytes()).collect()
        });
        let p = log.after(Some(1), 100);
        assert_eq!(
            p.activities,
            vec![Bytes::from("a2"), Bytes::from("a3"), Bytes::from("a4")]
        );
        let p = log.after(None, 1);
        assert_eq!((p.activities, p.watermark), (vec![Bytes::from("a2")], 2));
        // A watermark from the future reads nothing and is not believed.
        assert_eq!(log.after(Some(99), 100).watermark, 4);
    }
}
