//! The shared buckets: one Lua script per request does GCRA on every bucket of the request in Redis,
//! atomically, on Redis's own clock (so instances need not agree on the time).
//!
//! A bucket is one key holding its theoretical arrival time (TAT, microseconds), expiring when the
//! bucket is full again. The script takes a token from every bucket or, if any is empty, from none, and
//! says which refused and for how long. `Script::invoke_async` sends `EVALSHA` and loads the script
//! only when Redis does not know it yet, so a request costs one round trip.

use std::sync::LazyLock;
use std::time::Duration;

use super::{Bucket, Verdict};
use crate::shared::redis::{Op, SharedRedis, Unavailable};

/// GCRA over the buckets `KEYS` with `ARGV` = (interval µs, burst) per bucket. Returns `{0, 0}` when
/// every bucket had a token (each then took one), else `{i, wait µs}`: the bucket that must be waited
/// for longest, and how long.
const GCRA: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tats = {}
local refused, longest = 0, 0
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  tats[i] = tat + interval
  local wait = tats[i] - interval * burst - now
  if wait > longest then refused, longest = i, wait end
end
if refused > 0 then return {refused, longest} end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, string.format('%d', tats[i]), 'PX', math.floor((tats[i] - now) / 1000) + 1)
end
return {0, 0}
";

static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(GCRA));

/// Takes a token from every bucket in Redis, or says why not; `Err` when Redis cannot be asked.
pub async fn check(shared: &SharedRedis, buckets: &[Bucket]) -> Result<Verdict, Unavailable> {
    let mut invocation = SCRIPT.prepare_invoke();
    for b in buckets {
        // In the credential's slot: one script may touch all of a request's buckets on a cluster.
        invocation.key(shared.tagged_key("rl", &b.owner, &b.key));
    }
    for b in buckets {
        invocation.arg(b.limit.interval_us()).arg(b.limit.burst);
    }
    let (refused, wait_us): (usize, u64) = shared
        .call(Op::RateLimit, |mut conn| async move {
            invocation.invoke_async(&mut conn).await
        })
        .await?;
    Ok(match refused.checked_sub(1).and_then(|i| buckets.get(i)) {
        None => Verdict::Allowed,
        Some(b) => Verdict::Limited {
            scope: b.scope,
            limit: b.limit,
            retry_after: Duration::from_micros(wait_us),
        },
    })
}
