//! The shared journal: a Redis stream, `<prefix>deliveries`, with one consumer group every instance
//! reads, and dead letters in a stream of their own, `<prefix>deliveries:dead`.
//!
//! - A job is one entry (field `job`: its [`JobRecord`] as JSON). It is added and, in the same
//!   script, read into the adding instance's pending entries (an atomic `XADD` and
//!   `XREADGROUP … >`: every writer does both, so the group has read everything before it and `>`
//!   returns exactly the new entry). An answered job is a new entry replacing the accepted one
//!   (acknowledged and deleted in the same script). A finished job is `XACK`ed and `XDEL`eted.
//! - The owner touches its entries (`XCLAIM … JUSTID`) every third of `claim_idle_ms`; entries of an
//!   instance that died stop being touched, and any instance takes them over (`XAUTOCLAIM`) once
//!   they are idle that long. A graceful stop releases its entries at once (their idle time set
//!   past `claim_idle_ms`), so the next instance takes them over at its next look.
//! - Dead letters: `XADD … MAXLEN ~ 10000`, with what a replay needs (the URL as given and the body);
//!   the admin API lists them (URL without query, body only with `[log] message_bodies`) and replays
//!   them.
//!
//! Redis is as durable as it is configured: with `appendonly yes` (`appendfsync everysec`) a Redis
//! crash loses at most a second of journal, a replica failover what it had not replicated. With
//! `[redis.deliveries] wait_replicas = n`, each entry is written and followed by `WAIT n` on a
//! connection of its own, and counts as written only once `n` replicas hold it: what a failover
//! promotes has every entry a caller was answered for. An entry too few replicas acknowledged within
//! half of `timeout_ms` is taken back (acknowledged and deleted) and the write fails, as when Redis is
//! down (`on_redis_error`); writes then skip Redis for `backoff_ms`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use botbridge_core::delivery::journal::JobRecord;
use redis::{RedisResult, Value};

use crate::shared::redis::{value_text as text, Op, SharedRedis, Unavailable};

/// The consumer group of every instance.
const GROUP: &str = "botbridge";

/// Dead letters kept (approximately) in the stream.
const DEAD_MAX: usize = 10_000;

/// Entries taken over per `XAUTOCLAIM`.
const CLAIM_COUNT: usize = 64;

/// Adds a job (ARGV[3]) to the stream (KEYS[1]) and reads it into this consumer's (ARGV[2])
/// pending entries of the group (ARGV[1]); acknowledges and deletes the entry it replaces
/// (ARGV[4], if not empty). The group is created with the stream if Redis has neither (a Redis that
/// lost its data).
/// Entries left unread before ours (written by other means) are read into this consumer too, up to
/// 1,000 per call: not touched by it, they are idle and taken over by whoever looks next.
const ADD: &str = r#"
redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
local id = redis.call('XADD', KEYS[1], '*', 'job', ARGV[3])
local found = false
for _ = 1, 1000 do
  local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', 1, 'STREAMS', KEYS[1], '>')
  if not r then break end
  if r[1][2][1][1] == id then found = true; break end
end
if not found then return redis.error_reply('journal entry not read back') end
if ARGV[4] ~= '' then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[4])
  redis.call('XDEL', KEYS[1], ARGV[4])
end
return id
"#;

/// Takes over (for consumer ARGV[2] of group ARGV[1]) entries of KEYS[1] idle for ARGV[3] ms,
/// from cursor ARGV[4], at most ARGV[5]; the group is created first if Redis has none.
const CLAIM: &str = r#"
redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
return redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
"#;

/// An entry taken over from another instance.
pub struct Claimed {
    pub id: String,
    /// `None`: the entry could not be read (counted, acknowledged and dropped).
    pub job: Option<JobRecord>,
}

/// A dead letter as stored.
pub struct DeadEntry {
    pub id: String,
    pub fields: serde_json::Value,
}

/// The stream journal of this instance.
pub struct RedisJournal {
    redis: Arc<SharedRedis>,
    stream: String,
    dead: String,
    consumer: String,
    claim_idle: Duration,
    add: redis::Script,
    claim: redis::Script,
    /// The entries this instance works on (touched every third of `claim_idle`).
    owned: Mutex<HashSet<String>>,
    /// Finished entries whose acknowledgement failed (tried again with each touch).
    unacked: Mutex<HashSet<String>>,
    /// Replicas that must acknowledge each write (0: not waited for).
    wait_replicas: u32,
    /// Until when (ms since `epoch`) writes skip Redis, after one too few replicas acknowledged.
    short_until: AtomicU64,
    epoch: Instant,
}

impl RedisJournal {
    pub fn new(redis: Arc<SharedRedis>, claim_idle: Duration) -> RedisJournal {
        let prefix = redis.settings().key_prefix.clone();
        RedisJournal {
            consumer: redis.instance().to_owned(),
            stream: format!("{prefix}deliveries"),
            dead: format!("{prefix}deliveries:dead"),
            claim_idle,
            add: redis::Script::new(ADD),
            claim: redis::Script::new(CLAIM),
            owned: Mutex::new(HashSet::new()),
            unacked: Mutex::new(HashSet::new()),
            wait_replicas: redis.settings().deliveries_wait_replicas,
            short_until: AtomicU64::new(0),
            epoch: Instant::now(),
            redis,
        }
    }

    /// Starts touching this instance's entries every third of `claim_idle_ms` (and retrying the
    /// acknowledgements that failed), on the Redis thread, for the life of the process.
    pub fn start_touching(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        let every = self.claim_idle / 3;
        self.redis.handle().spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(me) = me.upgrade() else { return };
                me.touch().await;
                me.ack_again().await;
            }
        });
    }

    /// Whether this instance already works on entry `id`.
    pub fn owns(&self, id: &str) -> bool {
        self.owned().contains(id)
    }

    fn owned(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.owned.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long an entry may go untouched before another instance takes it over.
    pub fn claim_idle(&self) -> Duration {
        self.claim_idle
    }

    /// Writes `job` (replacing entry `replaces`); the new entry's id.
    pub async fn write(
        &self,
        job: &JobRecord,
        replaces: Option<&str>,
    ) -> Result<String, Unavailable> {
        let payload = serde_json::to_string(job).expect("a job serializes");
        let old = replaces.unwrap_or_default().to_owned();
        let id = match self.wait_replicas {
            0 => self.add(payload, old).await?,
            n => self.add_replicated(payload, old, n).await?,
        };
        let unacked = self.unacked().clone();
        let mut owned = self.owned();
        if let Some(old) = replaces {
            // Still owned (touched) until its acknowledgement goes through.
            if !unacked.contains(old) {
                owned.remove(old);
            }
        }
        owned.insert(id.clone());
        Ok(id)
    }

    /// The `ADD` script, on the shared connection.
    async fn add(&self, payload: String, old: String) -> Result<String, Unavailable> {
        let (stream, consumer) = (self.stream.clone(), self.consumer.clone());
        let script = self.add.clone();
        self.redis
            .call(Op::Journal, |mut conn| async move {
                script
                    .key(stream)
                    .arg(GROUP)
                    .arg(consumer)
                    .arg(payload)
                    .arg(old)
                    .invoke_async(&mut conn)
                    .await
            })
            .await
    }

    /// The `ADD` script and `WAIT n` in one pipeline on a durable connection (so the `WAIT` covers
    /// this write even if the connection is replaced); an entry too few replicas hold is taken back.
    async fn add_replicated(
        &self,
        payload: String,
        old: String,
        n: u32,
    ) -> Result<String, Unavailable> {
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        if now < self.short_until.load(Ordering::Relaxed) {
            return Err(Unavailable);
        }
        let (stream, consumer) = (self.stream.clone(), self.consumer.clone());
        let wait_ms = (self.redis.settings().timeout.as_millis() as u64 / 2).max(1);
        // The entry it replaces stays until this one is replicated (`ARGV[4]` empty): taken back, the
        // new one leaves the old one as it was. Errors are read per command, so the new entry's id is
        // known even when `WAIT` fails.
        let replies: Vec<RedisResult<Value>> = self
            .redis
            .call_durable(Op::Journal, |mut conn| async move {
                redis::pipe()
                    .ignore_errors()
                    .cmd("EVAL")
                    .arg(ADD)
                    .arg(1)
                    .arg(stream)
                    .arg(GROUP)
                    .arg(consumer)
                    .arg(payload)
                    .arg("")
                    .cmd("WAIT")
                    .arg(n)
                    .arg(wait_ms)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        let mut replies = replies.into_iter();
        let id = match replies.next() {
            Some(Ok(v)) => text(&v).ok_or(Unavailable)?,
            _ => return Err(Unavailable),
        };
        let acked = match replies.next() {
            Some(Ok(Value::Int(k))) => k,
            _ => -1,
        };
        if acked >= i64::from(n) {
            if !old.is_empty() && !self.ack(&old).await {
                self.unacked().insert(old);
            }
            return Ok(id);
        }
        self.redis.short_of_replicas(Op::Journal);
        let backoff = self.redis.settings().backoff.as_millis() as u64;
        self.short_until
            .store(now + wait_ms + backoff, Ordering::Relaxed);
        tracing::warn!(
            replicas = acked,
            wanted = n,
            "a journal entry was not replicated in time: taken back, and redis skipped for backoff_ms"
        );
        if !self.ack(&id).await {
            // Kept, touched and acknowledged again: no other instance takes it over meanwhile.
            self.owned().insert(id.clone());
            self.unacked().insert(id);
        }
        Err(Unavailable)
    }

    /// Takes `id` as this instance's to work on (a claimed entry).
    pub fn own(&self, id: &str) {
        self.owned().insert(id.to_owned());
    }

    /// Forgets `id` (written elsewhere, or finished).
    pub fn disown(&self, id: &str) {
        self.owned().remove(id);
    }

    /// Acknowledges and deletes a finished entry (in the background; one that fails is kept in
    /// `unacked`, touched and acknowledged again, so no other instance delivers it again).
    pub fn finish(self: &Arc<Self>, id: &str) {
        let me = self.clone();
        let id = id.to_owned();
        self.redis.handle().spawn(async move {
            if me.ack(&id).await {
                me.disown(&id);
            } else {
                me.unacked().insert(id);
            }
        });
    }

    fn unacked(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.unacked.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn ack(&self, id: &str) -> bool {
        let (stream, id) = (self.stream.clone(), id.to_owned());
        self.redis
            .call(Op::Journal, |mut conn| async move {
                redis::pipe()
                    .cmd("XACK")
                    .arg(&stream)
                    .arg(GROUP)
                    .arg(&id)
                    .ignore()
                    .cmd("XDEL")
                    .arg(&stream)
                    .arg(&id)
                    .ignore()
                    .query_async::<()>(&mut conn)
                    .await
            })
            .await
            .is_ok()
    }

    async fn ack_again(&self) {
        let ids: Vec<String> = self.unacked().iter().cloned().collect();
        for id in ids {
            if self.ack(&id).await {
                self.unacked().remove(&id);
                self.disown(&id);
            }
        }
    }

    /// Touches this instance's entries, so no other instance takes them over while it lives.
    pub async fn touch(&self) {
        let ids: Vec<String> = self.owned().iter().cloned().collect();
        for chunk in ids.chunks(256) {
            let _ = self.xclaim(chunk, None).await;
        }
    }

    /// Releases `ids` to the other instances at once (a graceful stop).
    pub async fn release(&self, ids: &[String]) {
        let idle = self.claim_idle.as_millis() as u64 * 10 + 1;
        for chunk in ids.chunks(256) {
            if self.xclaim(chunk, Some(idle)).await.is_err() {
                tracing::warn!(entries = chunk.len(), "cannot release journal entries: other instances take them over after delivery.claim_idle_ms");
            }
        }
    }

    async fn xclaim(&self, ids: &[String], idle: Option<u64>) -> Result<(), Unavailable> {
        let (stream, consumer) = (self.stream.clone(), self.consumer.clone());
        let ids = ids.to_vec();
        self.redis
            .call(Op::Journal, |mut conn| async move {
                let mut cmd = redis::cmd("XCLAIM");
                cmd.arg(&stream).arg(GROUP).arg(&consumer).arg(0).arg(&ids);
                if let Some(ms) = idle {
                    cmd.arg("IDLE").arg(ms);
                }
                cmd.arg("JUSTID").query_async::<Value>(&mut conn).await
            })
            .await
            .map(drop)
    }

    /// Takes over entries other instances left untouched for `claim_idle_ms`, oldest first.
    pub async fn claim(&self) -> Result<Vec<Claimed>, Unavailable> {
        let mut claimed = Vec::new();
        let mut cursor = "0-0".to_owned();
        loop {
            let (stream, consumer) = (self.stream.clone(), self.consumer.clone());
            let idle = self.claim_idle.as_millis() as u64;
            let start = cursor.clone();
            let script = self.claim.clone();
            let reply: Value = self
                .redis
                .call(Op::Journal, |mut conn| async move {
                    script
                        .key(stream)
                        .arg(GROUP)
                        .arg(consumer)
                        .arg(idle)
                        .arg(start)
                        .arg(CLAIM_COUNT)
                        .invoke_async(&mut conn)
                        .await
                })
                .await?;
            let (next, entries) = autoclaim_reply(reply);
            claimed.extend(entries);
            if next == "0-0" || claimed.len() >= 10 * CLAIM_COUNT {
                break;
            }
            cursor = next;
        }
        Ok(claimed)
    }

    /// Appends a dead letter (in the background).
    pub fn dead_letter(self: &Arc<Self>, fields: serde_json::Value) {
        let me = self.clone();
        self.redis.handle().spawn(async move {
            let dead = me.dead.clone();
            let payload = fields.to_string();
            let written = me
                .redis
                .call(Op::Journal, |mut conn| async move {
                    redis::cmd("XADD")
                        .arg(&dead)
                        .arg("MAXLEN")
                        .arg("~")
                        .arg(DEAD_MAX)
                        .arg("*")
                        .arg("letter")
                        .arg(payload)
                        .query_async::<String>(&mut conn)
                        .await
                })
                .await;
            if written.is_err() {
                tracing::warn!("dead letter not written to redis (unavailable): it is in the local dead-letter log only");
            }
        });
    }

    /// The newest `count` dead letters (newest first), or the one with id `only`.
    pub async fn dead_letters(
        &self,
        count: usize,
        only: Option<&str>,
    ) -> Result<Vec<DeadEntry>, Unavailable> {
        let dead = self.dead.clone();
        let only = only.map(str::to_owned);
        let reply: Value = self
            .redis
            .call(Op::Journal, |mut conn| async move {
                let cmd = match &only {
                    Some(id) => {
                        let mut c = redis::cmd("XRANGE");
                        c.arg(&dead).arg(id).arg(id);
                        c
                    }
                    None => {
                        let mut c = redis::cmd("XREVRANGE");
                        c.arg(&dead).arg("+").arg("-").arg("COUNT").arg(count);
                        c
                    }
                };
                cmd.query_async(&mut conn).await
            })
            .await?;
        Ok(entries(reply)
            .into_iter()
            .filter_map(|(id, payload)| {
                let fields = serde_json::from_str(&payload?).ok()?;
                Some(DeadEntry { id, fields })
            })
            .collect())
    }

    /// Removes a dead letter about to be replayed; whether it was there.
    pub async fn forget_dead(&self, id: &str) -> Result<bool, Unavailable> {
        let (dead, id) = (self.dead.clone(), id.to_owned());
        self.redis
            .call(Op::Journal, |mut conn| async move {
                redis::cmd("XDEL")
                    .arg(&dead)
                    .arg(&id)
                    .query_async::<i64>(&mut conn)
                    .await
            })
            .await
            .map(|removed| removed == 1)
    }
}

/// `[next cursor, [[id, [field, value, …]], …], …]` as the cursor and the entries read.
fn autoclaim_reply(reply: Value) -> (String, Vec<Claimed>) {
    let Value::Array(mut parts) = reply else {
        return ("0-0".into(), Vec::new());
    };
    let next = match parts.first() {
        Some(v) => text(v).unwrap_or_else(|| "0-0".into()),
        None => "0-0".into(),
    };
    let list = if parts.len() > 1 {
        parts.swap_remove(1)
    } else {
        Value::Nil
    };
    let claimed = (entries(list).into_iter())
        .map(|(id, payload)| Claimed {
            id,
            job: payload.and_then(|p| serde_json::from_str(&p).ok()),
        })
        .collect();
    (next, claimed)
}

/// A list of stream entries as (id, the value of their one field).
fn entries(list: Value) -> Vec<(String, Option<String>)> {
    let Value::Array(items) = list else {
        return Vec::new();
    };
    (items.into_iter())
        .filter_map(|item| {
            let Value::Array(pair) = item else {
                return None;
            };
            let id = text(pair.first()?)?;
            let value = match pair.get(1) {
                Some(Value::Array(fv)) => fv.get(1).and_then(text),
                _ => None,
            };
            Some((id, value))
        })
        .collect()
}
