//! The conversations of channel callers (`dialect::ChannelCaller`): each one's activity log, which
//! polls read after a watermark and streams follow as it grows.
//!
//! - In memory (moka): a conversation nobody reads or writes for `[conversations] idle_secs` is
//!   forgotten; each keeps its last `channel_activities` activities; all logs together are held to
//!   `channel_bytes` (weighed by their activities' bytes; the least used go first), so no caller
//!   can fill memory through its conversations.
//! - Watermarks are the place (`seq`) of the last activity read, as a decimal string; activity ids
//!   carry the same place (the dialect writes them).
//! - Metrics: `botbridge_channel_conversations` (open in this instance's memory),
//!   `botbridge_channel_activities_total{direction}` (`in` from callers, `out` from bots),
//!   `botbridge_channel_polls_total`, `botbridge_channel_streams` (open streams).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use prometheus::{
    register_int_counter, register_int_counter_vec, register_int_gauge, IntCounter, IntCounterVec,
    IntGauge,
};
use tokio::sync::watch;

use crate::config::conversations::ConversationSettings;

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

/// A page of a conversation: the activities after a watermark, and the watermark after them.
pub struct Page {
    pub activities: Vec<Bytes>,
    pub watermark: u64,
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
    pub fn after(&self, watermark: Option<u64>, max: usize) -> Page {
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
        Page {
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

/// Every channel conversation this instance holds.
pub struct Channels {
    logs: moka::sync::Cache<Arc<str>, Arc<Log>>,
    keep: usize,
}

impl Channels {
    /// A store with `settings`' bounds.
    pub fn new(settings: &ConversationSettings) -> Arc<Self> {
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
            keep: settings.channel_activities,
        })
    }

    /// Starts conversation `id` for `user`; false if it was already started (it is kept as is).
    pub fn start(&self, id: &str, user: &str) -> bool {
        let entry = (self.logs)
            .entry(Arc::from(id))
            .or_insert_with(|| Arc::new(Log::new(user.to_owned())));
        if entry.is_fresh() {
            metrics().conversations.inc();
        }
        entry.is_fresh()
    }

    /// Conversation `id`, if this instance holds it.
    pub fn get(&self, id: &str) -> Option<Arc<Log>> {
        self.logs.get(id)
    }

    /// Adds activities to conversation `id` (see [`Log::append`]), weighing it again; `None` if it
    /// is not held. `make` writes the caller's activity first, then the bot's (counted by
    /// direction).
    pub fn append(&self, id: &str, make: impl FnOnce(u64) -> Vec<Vec<u8>>) -> Option<u64> {
        let log = self.logs.get(id)?;
        let mut added = 0;
        let first = log.append(self.keep, |first| {
            let made = make(first);
            added = made.len() as u64;
            made
        });
        let m = &metrics().activities;
        m.with_label_values(&["in"]).inc_by(added.min(1));
        m.with_label_values(&["out"])
            .inc_by(added.saturating_sub(1));
        // Weighed again: moka weighs an entry when it is inserted.
        self.logs.insert(Arc::from(id), log);
        Some(first)
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
