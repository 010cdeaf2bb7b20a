//! `[conversations]`: how many conversations of stateful bots (a vendor session per user, see
//! `dialect::Conversations`) the proxy keeps in memory, and for how long a conversation nobody
//! writes to is kept. With `[redis]` they are kept on Redis too, with the same idle time, so every
//! instance continues the same conversation (`[redis.conversations] on_redis_error` says what
//! happens while Redis fails).
//!
//! A process setting: the store is made once, so changing it needs a restart.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `[conversations]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConversations {
    /// A conversation neither read nor written for this long is forgotten (the user's next message
    /// starts from the dialect's first conversation). Default one day: longer than the session
    /// idle time of the vendors with sessions.
    #[serde(default = "default_idle_secs")]
    pub idle_secs: u64,
    /// At most this many conversations in this instance's memory; the least used go first.
    #[serde(default = "default_max_entries")]
    pub max_entries: u64,
    /// Each channel conversation (a caller dialect whose conversations the proxy holds) keeps its last this many
    /// activities; older ones are no longer read by polls or streams.
    #[serde(default = "default_channel_activities")]
    pub channel_activities: usize,
    /// All channel conversations together hold at most this many bytes of activities in this
    /// instance's memory; the least used conversations go first.
    #[serde(default = "default_channel_bytes")]
    pub channel_bytes: u64,
    /// Each channel conversation keeps at most this many bytes of activities (the oldest go
    /// first), so one conversation cannot take the others' share of `channel_bytes`.
    #[serde(default = "default_channel_conversation_bytes")]
    pub channel_conversation_bytes: usize,
    /// At most this many streams (WebSockets) of channel conversations open at once on this
    /// instance; more are refused (503) until some close.
    #[serde(default = "default_channel_streams")]
    pub channel_streams: usize,
    /// At most this many of them for one credential on one route, so no caller takes them all.
    #[serde(default = "default_channel_streams_per_credential")]
    pub channel_streams_per_credential: usize,
}

impl Default for RawConversations {
    fn default() -> Self {
        RawConversations {
            idle_secs: default_idle_secs(),
            max_entries: default_max_entries(),
            channel_activities: default_channel_activities(),
            channel_bytes: default_channel_bytes(),
            channel_conversation_bytes: default_channel_conversation_bytes(),
            channel_streams: default_channel_streams(),
            channel_streams_per_credential: default_channel_streams_per_credential(),
        }
    }
}

fn default_idle_secs() -> u64 {
    86_400
}
fn default_max_entries() -> u64 {
    100_000
}
fn default_channel_activities() -> usize {
    500
}
fn default_channel_bytes() -> u64 {
    64 << 20
}
fn default_channel_conversation_bytes() -> usize {
    256 << 10
}
fn default_channel_streams() -> usize {
    1_000
}
fn default_channel_streams_per_credential() -> usize {
    250
}

/// `[conversations]`, validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConversationSettings {
    pub idle: Duration,
    pub max_entries: u64,
    pub channel_activities: usize,
    pub channel_bytes: u64,
    pub channel_conversation_bytes: usize,
    pub channel_streams: usize,
    pub channel_streams_per_credential: usize,
}

/// Validates `[conversations]`: every bound must be above zero.
pub fn validate(r: &RawConversations) -> Result<ConversationSettings, ConfigError> {
    if r.idle_secs == 0 {
        return Err(ConfigError::new(
            "conversations.idle_secs",
            "must be greater than 0",
        ));
    }
    if r.max_entries == 0 {
        return Err(ConfigError::new(
            "conversations.max_entries",
            "must be greater than 0",
        ));
    }
    for (key, v) in [
        ("channel_activities", r.channel_activities as u64),
        ("channel_bytes", r.channel_bytes),
        (
            "channel_conversation_bytes",
            r.channel_conversation_bytes as u64,
        ),
        ("channel_streams", r.channel_streams as u64),
        (
            "channel_streams_per_credential",
            r.channel_streams_per_credential as u64,
        ),
    ] {
        if v == 0 {
            let key = format!("conversations.{key}");
            return Err(ConfigError::new(key, "must be greater than 0"));
        }
    }
    Ok(ConversationSettings {
        idle: Duration::from_secs(r.idle_secs),
        max_entries: r.max_entries,
        channel_activities: r.channel_activities,
        channel_bytes: r.channel_bytes,
        channel_conversation_bytes: r.channel_conversation_bytes,
        channel_streams: r.channel_streams,
        channel_streams_per_credential: r.channel_streams_per_credential,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_refusals() {
        let s = validate(&RawConversations::default()).unwrap();
        assert_eq!((s.idle.as_secs(), s.max_entries), (86_400, 100_000));
        let raw: RawConversations = toml::from_str("idle_secs = 0").unwrap();
        let e = validate(&raw).unwrap_err();
        assert_eq!(
            e.to_string(),
            "conversations.idle_secs: must be greater than 0"
        );
        let raw: RawConversations = toml::from_str("max_entries = 0").unwrap();
        assert!(validate(&raw).is_err());
        assert!(toml::from_str::<RawConversations>("ttl = 5").is_err());
        let raw: RawConversations = toml::from_str("channel_activities = 0").unwrap();
        assert!(validate(&raw).is_err());
    }
}
