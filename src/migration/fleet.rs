//! The migration report of a fleet: with `[redis]`, every instance publishes its per-route statistics
//! every [`PUBLISH_EVERY`] to `<prefix>migration:{fleet}:<instance>` (a hash, route → JSON, which
//! expires an hour after its last publication) and notes itself in `<prefix>migration:{fleet}:instances` (instance →
//! when and who); `/migration` and `/migration.json` of any instance show the sum over every
//! instance seen in the last hour, this instance's own statistics as they are at that moment.
//!
//! An instance's comparisons count until an hour after it stopped publishing (the chart's window);
//! a restarted process is a new instance. While Redis cannot be asked the page shows this instance
//! alone, and says so.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::Value;
use serde::Serialize;

use super::report::{Report, RouteStats};
use crate::shared::redis::{value_text as text, Op, SharedRedis};

/// How often an instance publishes its statistics.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(5);

/// How long an instance's statistics count after its last publication.
const KEEP: Duration = Duration::from_secs(3600);

/// Whose comparisons a report sums.
#[derive(Debug, Clone, Serialize)]
pub struct Fleet {
    /// `redis`: every instance seen in the last hour; `local`: this instance alone (no `[redis]`,
    /// or Redis could not be asked).
    pub source: &'static str,
    pub instances: Vec<InstanceRow>,
}

/// One instance of the fleet.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceRow {
    /// Its host and process id.
    pub name: String,
    /// Whether it is the instance that drew the report.
    pub this: bool,
    /// The pairs it compared, over every route.
    pub pairs: u64,
    /// When it last published (RFC 3339).
    pub last_seen: String,
}

/// What a report of the fleet draws on: each route's statistics per instance, and the instances.
pub struct Gathered {
    pub routes: HashMap<String, Vec<RouteStats>>,
    pub fleet: Fleet,
}

fn keys(shared: &SharedRedis) -> (String, String) {
    let prefix = &shared.settings().key_prefix;
    // One hash tag: a cluster keeps the fleet's keys in one slot (one pipeline writes several).
    (
        format!("{prefix}migration:{{fleet}}:instances"),
        format!("{prefix}migration:{{fleet}}:"),
    )
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn rfc3339(ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// This process as the page names it.
fn own_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{} pid {}", host.trim(), std::process::id())
}

/// Publishes `report` every [`PUBLISH_EVERY`], on the Redis thread, while the report lives.
pub fn start_publishing(shared: &Arc<SharedRedis>, report: &Arc<Report>) {
    let (redis, report): (Arc<SharedRedis>, Weak<Report>) =
        (shared.clone(), Arc::downgrade(report));
    shared.handle().spawn(async move {
        let mut tick = tokio::time::interval(PUBLISH_EVERY);
        loop {
            tick.tick().await;
            let Some(report) = report.upgrade() else {
                return;
            };
            let routes = report.snapshot();
            drop(report);
            if !routes.is_empty() {
                publish(&redis, routes).await;
            }
        }
    });
}

async fn publish(redis: &SharedRedis, routes: Vec<(String, String)>) {
    let (instances, prefix) = keys(redis);
    let me = redis.instance().to_owned();
    let key = format!("{prefix}{me}");
    let who = serde_json::json!({"at": now_ms(), "name": own_name()}).to_string();
    let _ = redis
        .call(Op::Migration, |mut conn| async move {
            let mut p = redis::pipe();
            p.cmd("HSET").arg(&key).arg(routes).ignore();
            p.cmd("PEXPIRE")
                .arg(&key)
                .arg(KEEP.as_millis() as u64)
                .ignore();
            p.cmd("HSET").arg(&instances).arg(&me).arg(who).ignore();
            p.query_async::<()>(&mut conn).await
        })
        .await;
}

/// Every instance's statistics (this one's as they are now), or `None` if Redis cannot be asked.
pub async fn gather(redis: &SharedRedis, local: &Report) -> Option<Gathered> {
    let (instances_key, prefix) = keys(redis);
    let listed: HashMap<String, String> = redis
        .call(Op::Migration, |mut conn| {
            let key = instances_key.clone();
            async move { redis::cmd("HGETALL").arg(key).query_async(&mut conn).await }
        })
        .await
        .ok()?;
    let me = redis.instance().to_owned();
    let now = now_ms();
    let mut live: Vec<(String, String, u64)> = Vec::new();
    let mut gone: Vec<String> = Vec::new();
    for (id, who) in listed {
        let v: serde_json::Value = serde_json::from_str(&who).unwrap_or_default();
        let at = v["at"].as_u64().unwrap_or(0);
        let name = v["name"].as_str().unwrap_or("?").to_owned();
        match now.saturating_sub(at) < KEEP.as_millis() as u64 {
            true if id != me => live.push((id, name, at)),
            true => {}
            false => gone.push(id),
        }
    }
    let others: Vec<Value> = match live.is_empty() {
        true => Vec::new(),
        false => redis
            .call(Op::Migration, |mut conn| {
                let mut p = redis::pipe();
                for (id, _, _) in &live {
                    p.cmd("HGETALL").arg(format!("{prefix}{id}"));
                }
                if !gone.is_empty() {
                    p.cmd("HDEL").arg(&instances_key).arg(&gone).ignore();
                }
                async move { p.query_async(&mut conn).await }
            })
            .await
            .ok()?,
    };
    let mut routes: HashMap<String, Vec<RouteStats>> = HashMap::new();
    let mut rows = Vec::new();
    let mut add = |stats: Vec<(String, RouteStats)>, name: String, this: bool, at: u64| {
        let pairs = stats.iter().map(|(_, s)| s.pairs()).sum();
        for (route, s) in stats {
            routes.entry(route).or_default().push(s);
        }
        rows.push(InstanceRow {
            name,
            this,
            pairs,
            last_seen: rfc3339(at),
        });
    };
    let own = (local.snapshot().into_iter())
        .filter_map(|(r, json)| Some((r, serde_json::from_str(&json).ok()?)))
        .collect();
    add(own, own_name(), true, now);
    for ((_, name, at), value) in live.into_iter().zip(others) {
        add(route_stats(value), name, false, at);
    }
    rows.sort_by(|a, b| b.this.cmp(&a.this).then(a.name.cmp(&b.name)));
    Some(Gathered {
        routes,
        fleet: Fleet {
            source: "redis",
            instances: rows,
        },
    })
}

/// An instance's hash (route → JSON) as its statistics (unreadable ones left out).
fn route_stats(v: Value) -> Vec<(String, RouteStats)> {
    let pairs: Vec<(Value, Value)> = match v {
        Value::Array(items) => {
            let mut it = items.into_iter();
            std::iter::from_fn(|| Some((it.next()?, it.next()?))).collect()
        }
        Value::Map(m) => m,
        _ => Vec::new(),
    };
    (pairs.iter())
        .filter_map(|(k, v)| Some((text(k)?, serde_json::from_str(&text(v)?).ok()?)))
        .collect()
}
