//! Redis Sentinel: the proxy connects to the master three real Sentinels name (Debian's
//! `redis-server` in sentinel mode), and follows the new master when they fail over, by itself, under
//! load: limits keep their `on_redis_error` behaviour during the switch (`local`: every request is
//! answered), nothing fails with a 5xx, and once the replica is promoted the shared limits live on it.

mod common;
#[path = "common/redis.rs"]
mod redis_server;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use redis_server::{command, RedisChild};

fn start(dir: &std::path::Path, name: &str, args: &[String]) -> RedisChild {
    redis_server::start_with(dir, name, args)
}

/// The port of the server the Sentinel at `sentinel` names master of `bbmaster`.
fn master_port(sentinel: u16) -> Option<u16> {
    let a = command(
        sentinel,
        &["SENTINEL", "get-master-addr-by-name", "bbmaster"],
    )?;
    a.lines().rev().find_map(|l| l.parse().ok())
}

fn haptik(user: &str) -> (Vec<(&'static str, String)>, String) {
    let headers = vec![
        ("authorization", "Bearer demo-token".to_string()),
        ("client-id", "demo-client".to_string()),
    ];
    (headers, haptik_body(user, "Hello", 343))
}

async fn status(proxy: &SpawnedProxy, user: &str) -> u16 {
    let (h, body) = haptik(user);
    send(proxy, "/chat", &h, &body).await.0
}

/// A master, its replica and three Sentinels watching them (failing over after 1 s down), and the
/// shipped config on them with a per-user limit of 5 a minute.
struct Redises {
    _dir: tempfile::TempDir,
    master: RedisChild,
    replica: RedisChild,
    sentinels: Vec<RedisChild>,
    config: String,
}

fn redises() -> Redises {
    let dir = tempfile::tempdir().unwrap();
    let none = [
        "--save".to_string(),
        String::new(),
        "--appendonly".into(),
        "no".into(),
    ];
    let master = start(dir.path(), "master", &none);
    let mut replica_args = none.to_vec();
    replica_args.extend([
        "--replicaof".into(),
        "127.0.0.1".into(),
        master.port.to_string(),
    ]);
    let replica = start(dir.path(), "replica", &replica_args);
    let sentinels: Vec<RedisChild> = (0..3)
        .map(|i| {
            let conf = dir.path().join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "sentinel monitor bbmaster 127.0.0.1 {} 2\nsentinel down-after-milliseconds bbmaster 1000\n\
                     sentinel failover-timeout bbmaster 4000\nsentinel parallel-syncs bbmaster 1\n",
                    master.port
                ),
            )
            .unwrap();
            let args = [conf.display().to_string(), "--sentinel".to_string()];
            start(dir.path(), &format!("sentinel-{i}"), &args)
        })
        .collect();
    let list: Vec<String> = (sentinels.iter())
        .map(|s| format!("\"redis://127.0.0.1:{}\"", s.port))
        .collect();
    let config = format!(
        "{}\n[limits]\nuser_rate_limit = {{ requests = 5, per_seconds = 60 }}\n\n[redis]\nsentinels = [{}]\nmaster_name = \"bbmaster\"\ntimeout_ms = 200\nbackoff_ms = 300\n",
        shipped_config(),
        list.join(", ")
    );
    Redises {
        _dir: dir,
        master,
        replica,
        sentinels,
        config,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_follows_the_master_through_a_sentinel_failover_under_load() {
    let Redises {
        _dir,
        master,
        replica,
        sentinels,
        config,
    } = redises();
    let proxy = Arc::new(SpawnedProxy::start(&config));
    let up = |p: Arc<SpawnedProxy>| async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        while series_value(&scrape(&*p).await, "botbridge_redis_up") != Some(1.0) {
            assert!(Instant::now() < deadline, "redis never up:\n{}", p.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    up(proxy.clone()).await;
    // The shared limit lives on the master.
    for _ in 0..5 {
        assert_eq!(status(&proxy, "before").await, 200);
    }
    assert_eq!(status(&proxy, "before").await, 429);
    let on_master = command(master.port, &["KEYS", "botbridge:rl:*"]).unwrap();
    assert!(
        !on_master.starts_with("*0"),
        "the bucket is on the master: {on_master}"
    );

    // Load from other users during the failover: every request answered, never a 5xx.
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<u16>>> = Arc::default();
    let load = tokio::spawn({
        let (proxy, stop, seen) = (proxy.clone(), stop.clone(), seen.clone());
        async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let s = status(&proxy, &format!("load-{}", n % 50)).await;
                seen.lock().unwrap().push(s);
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(master); // killed: the Sentinels promote the replica
    let deadline = Instant::now() + Duration::from_secs(30);
    while master_port(sentinels[0].port) != Some(replica.port) {
        assert!(Instant::now() < deadline, "the sentinels did not fail over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The proxy follows by itself: a new user's bucket is made on the new master.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let user = format!("after-{}", Instant::now().elapsed().as_nanos());
        let statuses: Vec<u16> =
            futures_util::future::join_all((0..6).map(|_| status(&proxy, &user))).await;
        let on_new = command(replica.port, &["KEYS", "botbridge:rl:*"]).unwrap_or_default();
        if statuses.iter().filter(|s| **s == 429).count() == 1 && !on_new.starts_with("*0") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the proxy did not follow the new master:\n{}",
            proxy.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() > 20, "{seen:?}");
    assert!(
        seen.iter().all(|s| *s == 200 || *s == 429),
        "every request answered through the switch: {seen:?}"
    );
    let logs = proxy.logs();
    assert!(
        logs.contains("the sentinels name a new redis master: following it"),
        "{logs}"
    );
    let metrics = scrape(&*proxy).await;
    assert!(
        series_value(
            &metrics,
            "botbridge_redis_fallbacks_total{action=\"local\",feature=\"limits\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "limits fell back to this instance's buckets during the switch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_failover_is_followed_before_the_old_master_is_demoted() {
    let r = redises();
    let proxy = SpawnedProxy::start(&r.config);
    let deadline = Instant::now() + Duration::from_secs(10);
    while series_value(&scrape(&proxy).await, "botbridge_redis_up") != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "redis never up:\n{}",
            proxy.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status(&proxy, "warm").await, 200);
    // Wait until the replica is in sync, so the Sentinels agree to fail over.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let a =
            command(r.sentinels[0].port, &["SENTINEL", "FAILOVER", "bbmaster"]).unwrap_or_default();
        if a.starts_with("+OK") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sentinels refused to fail over: {a}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let switched = Instant::now();
    // The old master stays a writable master until the Sentinels demote it (up to ten seconds):
    // the proxy must have moved to the new one long before, on the Sentinels' word alone.
    let deadline = switched + Duration::from_secs(4);
    loop {
        let user = format!("after-{}", switched.elapsed().as_nanos());
        assert_eq!(status(&proxy, &user).await, 200);
        if proxy.logs().contains("following it") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not followed within 4 s of the failover:\n{}",
            proxy.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let old_role = command(r.master.port, &["ROLE"]).unwrap_or_default();
    eprintln!(
        "followed {:?} after the failover; the old master's role then: {}",
        switched.elapsed(),
        old_role.lines().nth(1).unwrap_or("")
    );
}
