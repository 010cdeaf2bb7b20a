//! Redis Cluster: three real masters (Debian's `redis-server` with `cluster-enabled`, joined by
//! `redis-cli --cluster create`) shared by two instances. Shared limits count across both (a request's
//! buckets in one slot), a killed instance's deliveries are taken over by the other through the
//! journal's stream, and the migration report sums both.

mod common;
mod receiver;
#[path = "common/redis.rs"]
mod redis_server;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use receiver::{Receiver, Reply};
use redis_server::{command, start_with, RedisChild as Node};
use serde_json::json;

/// Three masters, the slots spread over them, the cluster answering `ok`.
fn cluster(dir: &std::path::Path) -> Vec<Node> {
    let nodes: Vec<Node> = (0..3)
        .map(|i| {
            let args = ["--cluster-enabled", "yes", "--cluster-config-file"]
                .map(String::from)
                .into_iter()
                .chain([format!("nodes-{i}.conf")])
                .chain(["--save", "", "--appendonly", "no"].map(String::from))
                // The bus port would default to port + 10000: inside the ephemeral range, where
                // an outgoing connection may hold it (the node then does not start).
                .chain(["--cluster-port".to_string(), child_port().to_string()])
                .collect::<Vec<_>>();
            start_with(dir, &format!("node-{i}"), &args)
        })
        .collect();
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let out = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !nodes.iter().all(|n| {
        command(n.port, &["CLUSTER", "INFO"]).is_some_and(|i| i.contains("cluster_state:ok"))
    }) {
        assert!(Instant::now() < deadline, "the cluster did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    nodes
}

fn config(nodes: &[Node], journal: &std::path::Path) -> String {
    let list: Vec<String> = nodes
        .iter()
        .map(|n| format!("\"redis://127.0.0.1:{}\"", n.port))
        .collect();
    format!(
        "{}\n[limits]\nrate_limit = {{ requests = 1000, per_seconds = 60 }}\nuser_rate_limit = {{ requests = 5, per_seconds = 60 }}\n\n[delivery]\njournal_dir = \"{}\"\n\
         retry_initial_ms = 50\nretry_max_ms = 200\nclaim_idle_ms = 1500\n\n[redis]\ncluster = [{}]\ntimeout_ms = 200\n",
        shipped_config(),
        journal.display(),
        list.join(", ")
    )
}

async fn haptik(proxy: &SpawnedProxy, path: &str, user: &str) -> u16 {
    let headers = [
        ("authorization", "Bearer demo-token".to_string()),
        ("client-id", "demo-client".to_string()),
    ];
    send(proxy, path, &headers, &haptik_body(user, "Hello", 343))
        .await
        .0
}

async fn metric(proxy: &SpawnedProxy, series: &str) -> f64 {
    series_value(&scrape(proxy).await, series).unwrap_or(0.0)
}

#[tokio::test]
async fn two_instances_share_limits_deliveries_and_the_report_on_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(dir.path());
    let (ja, jb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = SpawnedProxy::start(&config(&nodes, ja.path()));
    let b = SpawnedProxy::start(&config(&nodes, jb.path()));
    for p in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while metric(p, "botbridge_redis_up").await != 1.0 {
            assert!(
                Instant::now() < deadline,
                "the cluster never up:\n{}",
                p.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // One user's limit counts over both instances.
    let mut statuses = Vec::new();
    for i in 0..6 {
        let p = if i % 2 == 0 { &a } else { &b };
        statuses.push(haptik(p, "/chat", "cluster-user").await);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429], "{}", a.logs());
    let keys: usize = (nodes.iter())
        .map(|n| {
            let size = command(n.port, &["DBSIZE"]).unwrap();
            size.trim()
                .trim_start_matches(':')
                .parse::<usize>()
                .unwrap()
        })
        .sum();
    assert!(keys > 0);

    // The migration report sums both instances (the shipped demo route shadows every request).
    haptik(&a, "/demo/migration", "m-a").await;
    haptik(&b, "/demo/migration", "m-b").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let url = format!("http://127.0.0.1:{}/migration.json", a.admin_port);
        let r: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
        if r["routes"][0]["report"]["pairs"] == 2
            && r["fleet"]["instances"].as_array().unwrap().len() == 2
        {
            break;
        }
        assert!(Instant::now() < deadline, "{r}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A killed instance's deliveries: the other takes them over from the stream.
    let rx = Receiver::start(Reply::FailFirst(usize::MAX, 503)).await;
    for text in ["one", "two"] {
        let (key, sig) = csml_sign("demo-key", "demo-secret", unix_now());
        let headers = [("x-api-key", key), ("x-api-signature", sig)];
        let body = json!({"client": {"user_id": "cb-user"}, "callback_url": rx.url("/cb"),
                          "payload": {"content_type": "text", "content": {"text": text}}});
        let (status, ack) = send(&a, "/chat", &headers, &body.to_string()).await;
        assert_eq!(status, 200, "{ack}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(
        &a,
        "botbridge_delivery_journal_writes_total{result=\"ok\",store=\"redis\"}",
    )
    .await
        < 4.0
    {
        assert!(
            Instant::now() < deadline,
            "not journaled on the cluster:\n{}",
            a.logs()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    a.signal("KILL");
    rx.set(Reply::Ok);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ends = (rx.received().iter())
            .filter(|g| g.status == 200 && g.json()["conversation_end"] == true)
            .count();
        if ends == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "not taken over:\n{}", b.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(b
        .logs()
        .contains("deliveries of instances that are gone taken over"));
}
