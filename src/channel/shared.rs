//! Channel conversations on Redis, so polling or streaming from any instance sees the same
//! conversation: a hash `<prefix>channel-meta:<id>` (owner, user, the next place) and a stream
//! `<prefix>channel:<id>` (the activities, `MAXLEN ~ channel_activities`), both expiring after
//! `idle_secs` without use. Places come from the hash's counter, so activity ids stay unique
//! whichever instance adds them; watermarks are stream ids.

use bytes::Bytes;

use super::{unavailable, Page};
use crate::error::ProxyError;
use crate::shared::redis::{Op, SharedRedis};

/// A conversation on Redis: its keys, and how long an unused one lives.
pub struct Shared<'a> {
    pub redis: &'a SharedRedis,
    meta: String,
    stream: String,
    idle_ms: i64,
}

/// How long a client's activity id is remembered (a client retries within seconds).
const CLAIM_MS: i64 = 600_000;

/// A client's activity id on Redis: `""` while its post is with the bot, then the activity's id.
pub async fn claim(redis: &SharedRedis, key: &str) -> Result<Option<String>, ProxyError> {
    let key = key.to_owned();
    let (set, found): (Option<String>, Option<String>) = redis
        .call(Op::Channel, |mut conn| async move {
            redis::pipe()
                .cmd("SET")
                .arg(&key)
                .arg("")
                .arg("NX")
                .arg("PX")
                .arg(CLAIM_MS)
                .get(&key)
                .query_async(&mut conn)
                .await
        })
        .await
        .map_err(|_| unavailable())?;
    Ok(if set.is_some() { None } else { found })
}

/// Records the activity id of a claimed post (`Some`), or lets the post be tried again (`None`).
pub async fn settle(redis: &SharedRedis, key: &str, id: Option<&str>) {
    let key = key.to_owned();
    let id = id.map(str::to_owned);
    let _ = redis
        .call(Op::Channel, |mut conn| async move {
            match id {
                Some(id) => {
                    let set = redis::cmd("SET")
                        .arg(&key)
                        .arg(id)
                        .arg("PX")
                        .arg(CLAIM_MS)
                        .clone();
                    set.query_async::<()>(&mut conn).await
                }
                None => {
                    redis::cmd("DEL")
                        .arg(&key)
                        .query_async::<()>(&mut conn)
                        .await
                }
            }
        })
        .await;
}

/// What starting a conversation found.
pub enum Start {
    New,
    Existing,
    /// Started by another route or credential.
    Foreign,
}

impl<'a> Shared<'a> {
    pub fn new(redis: &'a SharedRedis, id: &str, idle_ms: i64) -> Self {
        Shared {
            redis,
            meta: redis.key("channel-meta", id.as_bytes()),
            stream: redis.key("channel", id.as_bytes()),
            idle_ms,
        }
    }

    pub async fn start(&self, owner: &str, user: &str) -> Result<Start, ProxyError> {
        let (meta, ms) = (self.meta.clone(), self.idle_ms);
        let (created, found): (i64, String) = (self.redis)
            .call(Op::Channel, |mut conn| async move {
                redis::pipe()
                    .atomic()
                    .hset_nx(&meta, "owner", owner)
                    .hset_nx(&meta, "user", user)
                    .ignore()
                    .pexpire(&meta, ms)
                    .ignore()
                    .hget(&meta, "owner")
                    .query_async(&mut conn)
                    .await
            })
            .await
            .map_err(|_| unavailable())?;
        Ok(match (created, found == owner) {
            (1, _) => Start::New,
            (_, true) => Start::Existing,
            _ => Start::Foreign,
        })
    }

    /// The user, if the conversation exists and is `owner`'s.
    pub async fn user(&self, owner: &str) -> Result<Option<String>, ProxyError> {
        let (meta, ms) = (self.meta.clone(), self.idle_ms);
        let ((user, found),): ((Option<String>, Option<String>),) = (self.redis)
            .call(Op::Channel, |mut conn| async move {
                redis::pipe()
                    .atomic()
                    .cmd("HMGET")
                    .arg(&meta)
                    .arg("user")
                    .arg("owner")
                    .pexpire(&meta, ms)
                    .ignore()
                    .query_async(&mut conn)
                    .await
            })
            .await
            .map_err(|_| unavailable())?;
        Ok(user.filter(|_| found.as_deref() == Some(owner)))
    }

    /// Takes `n` places and adds what `make(first)` writes; `None` if it is not `owner`'s.
    pub async fn append(
        &self,
        owner: &str,
        n: u64,
        keep: usize,
        make: &(dyn Fn(u64) -> Vec<Vec<u8>> + Sync),
    ) -> Result<Option<u64>, ProxyError> {
        let (meta, ms) = (self.meta.clone(), self.idle_ms);
        let (found, last): (Option<String>, u64) = (self.redis)
            .call(Op::Channel, |mut conn| async move {
                redis::pipe()
                    .atomic()
                    .hget(&meta, "owner")
                    .hincr(&meta, "next", n)
                    .pexpire(&meta, ms)
                    .ignore()
                    .query_async(&mut conn)
                    .await
            })
            .await
            .map_err(|_| unavailable())?;
        if found.as_deref() != Some(owner) {
            return Ok(None);
        }
        let first = last + 1 - n;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for a in make(first) {
            (pipe
                .cmd("XADD")
                .arg(&self.stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(keep))
            .arg("*")
            .arg("a")
            .arg(a)
            .ignore();
        }
        pipe.pexpire(&self.stream, ms).ignore();
        pipe.pexpire(&self.meta, ms).ignore();
        (self.redis)
            .call(Op::Channel, |mut conn| async move {
                pipe.query_async::<()>(&mut conn).await
            })
            .await
            .map_err(|_| unavailable())?;
        Ok(Some(first))
    }

    /// The activities after stream id `watermark` (all kept for `None`), at most `max` and about
    /// `max_bytes`; `None` if it is not `owner`'s.
    pub async fn after(
        &self,
        owner: &str,
        watermark: Option<&str>,
        max: usize,
        max_bytes: usize,
    ) -> Result<Option<Page>, ProxyError> {
        let (meta, stream, ms) = (self.meta.clone(), self.stream.clone(), self.idle_ms);
        let start = watermark.map_or_else(|| "-".to_owned(), |w| format!("({w}"));
        type Entries = Vec<(String, Vec<Vec<u8>>)>;
        let (found, entries): (Option<String>, Entries) = (self.redis)
            .call(Op::Channel, |mut conn| async move {
                redis::pipe()
                    .atomic()
                    .hget(&meta, "owner")
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
        if found.as_deref() != Some(owner) {
            return Ok(None);
        }
        let (mut activities, mut size, mut last) = (Vec::new(), 0, None);
        for (id, mut fields) in entries {
            if fields.len() != 2 {
                continue;
            }
            let a = fields.remove(1);
            if !activities.is_empty() && size + a.len() > max_bytes {
                break;
            }
            size += a.len();
            activities.push(Bytes::from(a));
            last = Some(id);
        }
        let watermark = last
            .or_else(|| watermark.map(str::to_owned))
            .unwrap_or_default();
        Ok(Some(Page {
            activities,
            watermark,
        }))
    }
}
