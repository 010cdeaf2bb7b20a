//! One fleet, one report: with `[redis]`, the shadow comparisons of every instance feed the same
//! `/migration` page and `/migration.json`, whichever instance draws it. Two real processes of the
//! shipped demo (its `/demo/migration` route shadows every request to a second bot) and one Redis.

mod common;
#[path = "common/redis.rs"]
mod redis_server;

use std::time::{Duration, Instant};

use common::*;
use redis_server::RedisServer;
use serde_json::Value;

fn config(redis: &str) -> String {
    format!("{}\n[redis]\nurl = \"{redis}\"\n", shipped_config())
}

async fn ask(proxy: &SpawnedProxy, user: &str) {
    let haptik = [
        ("authorization", "Bearer demo-token".to_string()),
        ("client-id", "demo-client".to_string()),
    ];
    let (status, _) = send(
        proxy,
        "/demo/migration",
        &haptik,
        &haptik_body(user, "Hello", 343),
    )
    .await;
    assert_eq!(status, 200);
}

async fn report(proxy: &SpawnedProxy) -> Value {
    let url = format!("http://127.0.0.1:{}/migration.json", proxy.admin_port);
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn every_instance_shows_the_comparisons_of_the_whole_fleet() {
    let redis = RedisServer::start();
    let a = SpawnedProxy::start(&config(&redis.url()));
    let b = SpawnedProxy::start(&config(&redis.url()));
    for i in 0..3 {
        ask(&a, &format!("a-{i}")).await;
    }
    for i in 0..2 {
        ask(&b, &format!("b-{i}")).await;
    }
    // Each instance publishes every 5 s.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut from_a, mut from_b);
    loop {
        (from_a, from_b) = (report(&a).await, report(&b).await);
        let pairs = |r: &Value| r["routes"][0]["report"]["pairs"].as_u64().unwrap_or(0);
        if pairs(&from_a) == 5 && pairs(&from_b) == 5 {
            break;
        }
        assert!(Instant::now() < deadline, "{from_a}\n{from_b}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (r, own) in [(&from_a, 3), (&from_b, 2)] {
        assert_eq!(r["fleet"]["source"], "redis");
        let instances = r["fleet"]["instances"].as_array().unwrap();
        assert_eq!(instances.len(), 2, "{r}");
        let this: Vec<&Value> = instances.iter().filter(|i| i["this"] == true).collect();
        assert_eq!(this[0]["pairs"], own, "{r}");
        let mut all: Vec<u64> = instances
            .iter()
            .map(|i| i["pairs"].as_u64().unwrap())
            .collect();
        all.sort();
        assert_eq!(all, [2, 3]);
        assert_eq!(r["routes"][0]["report"]["match_rate"], 1.0);
        let chart: u64 = (r["routes"][0]["report"]["series"]
            .as_array()
            .unwrap()
            .iter())
        .map(|p| p["pairs"].as_u64().unwrap())
        .sum();
        assert_eq!(chart, 5, "the chart sums both instances");
    }
    let page = reqwest::get(format!("http://127.0.0.1:{}/migration", a.admin_port))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("Comparisons of 2 instances (on Redis)"),
        "{page}"
    );

    // Redis gone: each instance shows its own, and says so.
    drop(redis);
    let own = report(&a).await;
    assert_eq!(own["fleet"]["source"], "local", "{own}");
    assert_eq!(own["routes"][0]["report"]["pairs"], 3);
}
