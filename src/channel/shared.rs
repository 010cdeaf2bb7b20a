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

/// How long a client's activity id is remembered once answered (a client retries within seconds).
const CLAIM_MS: i64 = 600_000;
/// How long it is held while its post is with the bot: past the longest exchange, so an instance
/// that died meanwhile does not leave it held for ten minutes.
const CLAIM_IN_FLIGHT_MS: i64 = 60_000;
/// The most entries one read of a conversation's stream takes (each at most an activity's bytes):
/// a read stays small, whatever the conversation holds.
const READ_COUNT: usize = 64;

/// A client's activity id on Redis: `""` while its post is with the bot, then the activity's id.
pub async fn claim(redis: &SharedRedis, key: &str) -> Result<Option<String>, ProxyError> {
    let mut pipe = redis::pipe();
    (pipe
        .cmd("SET")
        .arg(key)
        .arg("")
        .arg("NX")
        .arg("PX")
        .arg(CLAIM_IN_FLIGHT_MS))
    .get(key);
    let (set, found): (Option<String>, Option<String>) = run(redis, pipe).await?;
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

/// Runs a pipeline on Redis; a failure is the store's 503.
async fn run<T: redis::FromRedisValue + Send + 'static>(
    redis: &SharedRedis,
    pipe: redis::Pipeline,
) -> Result<T, ProxyError> {
    (redis
        .call(Op::Channel, |mut conn| async move {
            pipe.query_async(&mut conn).await
        })
        .await)
        .map_err(|_| unavailable())
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
        let mut pipe = redis::pipe();
        (pipe.atomic().hset_nx(&self.meta, "owner", owner))
            .hset_nx(&self.meta, "user", user)
            .ignore()
            .pexpire(&self.meta, self.idle_ms)
            .ignore()
            .hget(&self.meta, "owner");
        let (created, found): (i64, String) = run(self.redis, pipe).await?;
        Ok(match (created, found == owner) {
            (1, _) => Start::New,
            (_, true) => Start::Existing,
            _ => Start::Foreign,
        })
    }

    /// The user, if the conversation exists and is `owner`'s.
    pub async fn user(&self, owner: &str) -> Result<Option<String>, ProxyError> {
        let mut pipe = redis::pipe();
        (pipe
            .atomic()
            .cmd("HMGET")
            .arg(&self.meta)
            .arg("user")
            .arg("owner"))
        .pexpire(&self.meta, self.idle_ms)
        .ignore();
        let ((user, found),): ((Option<String>, Option<String>),) = run(self.redis, pipe).await?;
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
        let mut pipe = redis::pipe();
        (pipe.atomic().hget(&self.meta, "owner"))
            .hincr(&self.meta, "next", n)
            .pexpire(&self.meta, self.idle_ms)
            .ignore();
        let (found, last): (Option<String>, u64) = run(self.redis, pipe).await?;
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
        pipe.pexpire(&self.stream, self.idle_ms).ignore();
        pipe.pexpire(&self.meta, self.idle_ms).ignore();
        run::<()>(self.redis, pipe).await?;
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
        let start = watermark.map_or_else(|| "-".to_owned(), |w| format!("({w}"));
        let mut pipe = redis::pipe();
        (pipe.atomic().hget(&self.meta, "owner"))
            .cmd("XRANGE")
            .arg(&self.stream)
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(max.min(READ_COUNT))
            .pexpire(&self.meta, self.idle_ms)
            .ignore()
            .pexpire(&self.stream, self.idle_ms)
            .ignore();
        type Entries = Vec<(String, Vec<Vec<u8>>)>;
        let (found, entries): (Option<String>, Entries) = run(self.redis, pipe).await?;
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
