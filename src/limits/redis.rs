//! The shared buckets: a Lua script does GCRA on every bucket of a request in Redis (of a batch of
//! requests, see below), atomically, on Redis's own clock (so instances need not agree on the time).
//!
//! A bucket is one key holding its theoretical arrival time (TAT, microseconds), expiring when the
//! bucket is full again. The script takes a token from every bucket or, if any is empty, from none, and
//! says which refused and for how long. `Script::invoke_async` sends `EVALSHA` and loads the script
//! only when Redis does not know it yet, so a request costs one round trip.
//!
//! On one Redis server (or Sentinel's master) the checks of concurrent requests are batched
//! ([`Batches`]): while one script call is out, the checks that arrive wait, and the next call
//! carries all of them (up to [`MAX_BATCH`]); the script runs them one after the other, each all or
//! nothing as alone, so counts stay exact. One call per request made Redis's own CPU the limit on
//! its latency. With `cluster`, keys of different credentials live in different slots, so each
//! request keeps a call of its own there.

use std::sync::{Arc, LazyLock, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{Bucket, Verdict};
use crate::shared::redis::{Op, SharedRedis, Unavailable};

/// GCRA for one or more requests in one call: `ARGV[1]` is the number of requests; then for each,
/// its number of buckets and their (interval µs, burst) pairs; `KEYS` are all their buckets in that
/// order. Returns `{refused, wait µs}` per request, in order: `{0, 0}` when every bucket of the
/// request had a token (each then took one), else the bucket (1-based) that must be waited for
/// longest, and how long; a refused request takes no token from any of its buckets.
const GCRA_BATCH: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
local k, a = 1, 2
for r = 1, tonumber(ARGV[1]) do
  local n = tonumber(ARGV[a])
  a = a + 1
  local tats = {}
  local refused, longest = 0, 0
  for i = 1, n do
    local interval = tonumber(ARGV[a])
    local burst = tonumber(ARGV[a + 1])
    a = a + 2
    local tat = tonumber(redis.call('GET', KEYS[k + i - 1]) or now)
    if tat < now then tat = now end
    tats[i] = tat + interval
    local wait = tats[i] - interval * burst - now
    if wait > longest then refused, longest = i, wait end
  end
  if refused == 0 then
    for i = 1, n do
      redis.call('SET', KEYS[k + i - 1], string.format('%d', tats[i]), 'PX', math.floor((tats[i] - now) / 1000) + 1)
    end
  end
  out[#out + 1] = refused
  out[#out + 1] = longest
  k = k + n
end
return out
";

static BATCH_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(GCRA_BATCH));

/// The most requests one batched call carries.
pub const MAX_BATCH: usize = 128;

/// One request's check, waiting for a batch.
struct Pending {
    buckets: Vec<BucketArgs>,
    reply: oneshot::Sender<Result<(usize, u64), Unavailable>>,
}

/// A bucket as the script takes it: its key (in the credential's slot, so that one script may
/// touch all of a request's buckets on a cluster), interval (µs) and burst.
type BucketArgs = (String, u64, u32);

fn bucket_args(shared: &SharedRedis, buckets: &[Bucket]) -> Vec<BucketArgs> {
    let args = |b: &Bucket| {
        let key = shared.tagged_key("rl", &b.owner, &b.key);
        (key, b.limit.interval_us(), b.limit.burst)
    };
    buckets.iter().map(args).collect()
}

/// One request's part of the script's arguments: its number of buckets, then each bucket.
fn add_request(invocation: &mut redis::ScriptInvocation<'_>, buckets: &[BucketArgs]) {
    invocation.arg(buckets.len());
    for (key, interval, burst) in buckets {
        invocation.key(key).arg(*interval).arg(*burst);
    }
}

/// The batching of one server's checks: a task on the Redis thread sends what has queued.
pub struct Batches {
    queue: mpsc::UnboundedSender<Pending>,
}

impl Batches {
    /// Starts the batching task (it ends with the last `Batches` of `shared`, or with `shared`).
    pub fn start(shared: &Arc<SharedRedis>) -> Batches {
        let (queue, rx) = mpsc::unbounded_channel();
        shared
            .handle()
            .spawn(send_batches(Arc::downgrade(shared), rx));
        Batches { queue }
    }

    /// [`check`], in the next batch.
    pub async fn check(
        &self,
        shared: &SharedRedis,
        buckets: &[Bucket],
    ) -> Result<Verdict, Unavailable> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            buckets: bucket_args(shared, buckets),
            reply,
        };
        self.queue.send(pending).map_err(|_| Unavailable)?;
        // At most the call in flight and the one carrying this check, each within `timeout_ms`;
        // past that Redis counts as unavailable for this request (its fallback applies).
        let wait = shared.settings().timeout * 2;
        let answered = tokio::time::timeout(wait, answer).await;
        let (refused, wait_us) = answered
            .map_err(|_| Unavailable)?
            .map_err(|_| Unavailable)??;
        Ok(verdict(buckets, refused, wait_us))
    }
}

/// Sends the queued checks, one call at a time, each carrying every check queued meanwhile.
async fn send_batches(shared: Weak<SharedRedis>, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let Some(s) = shared.upgrade() else { return };
        let mut invocation = BATCH_SCRIPT.prepare_invoke();
        invocation.arg(batch.len());
        for p in &batch {
            add_request(&mut invocation, &p.buckets);
        }
        let answers: Result<Vec<u64>, Unavailable> = s
            .call(Op::RateLimit, |mut conn| async move {
                invocation.invoke_async(&mut conn).await
            })
            .await;
        drop(s);
        match answers {
            Ok(v) if v.len() == 2 * batch.len() => {
                for (p, pair) in batch.drain(..).zip(v.chunks(2)) {
                    let _ = p.reply.send(Ok((pair[0] as usize, pair[1])));
                }
            }
            _ => {
                for p in batch.drain(..) {
                    let _ = p.reply.send(Err(Unavailable));
                }
            }
        }
    }
}

/// What the script's `{refused, wait}` means for these buckets.
fn verdict(buckets: &[Bucket], refused: usize, wait_us: u64) -> Verdict {
    match refused.checked_sub(1).and_then(|i| buckets.get(i)) {
        None => Verdict::Allowed,
        Some(b) => Verdict::Limited {
            scope: b.scope,
            limit: b.limit,
            retry_after: Duration::from_micros(wait_us),
        },
    }
}

/// Takes a token from every bucket in Redis, or says why not; `Err` when Redis cannot be asked. A
/// call of its own (on a cluster, where a batch would span slots).
pub async fn check(shared: &SharedRedis, buckets: &[Bucket]) -> Result<Verdict, Unavailable> {
    let mut invocation = BATCH_SCRIPT.prepare_invoke();
    invocation.arg(1);
    add_request(&mut invocation, &bucket_args(shared, buckets));
    let answer: Vec<u64> = shared
        .call(Op::RateLimit, |mut conn| async move {
            invocation.invoke_async(&mut conn).await
        })
        .await?;
    match answer[..] {
        [refused, wait_us] => Ok(verdict(buckets, refused as usize, wait_us)),
        _ => Err(Unavailable),
    }
}
