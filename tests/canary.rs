//! The sticky canary end to end, in-process: its share of users within ±3% over 10,000 user ids,
//! every request of a user on one side, a reload that raises the percent moving only users at the
//! margin, `percent = 0` stepping everyone back, and a canary that is also the shadow never getting
//! a request twice.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const RASA_CLIENT: &str = "\n[[clients.rasa]]\nname = \"web\"\ntoken = \"rasa-token\"\n";

/// A proxy in front of two bots that say who they are ("old", "new"), with the given route keys.
/// The route is named `name` (metrics are process-wide: each test has its own route name) and
/// served at `/split`.
async fn setup(name: &str, route_keys: &str) -> (Proxy, CsmlBackend, CsmlBackend) {
    let says = |who: &str| {
        let payload = json!({"content_type": "text", "content": {"text": who}});
        Behaviour::Answer(csml_answer("r", &[payload]))
    };
    let old = CsmlBackend::start(says("old")).await;
    let new = CsmlBackend::start(says("new")).await;
    let cfg = csml_backend_toml("old", old.addr, "")
        + &csml_backend_toml("new", new.addr, "")
        + &format!("\n[[routes]]\nname = \"{name}\"\npath = \"/split\"\ningress = \"rasa\"\nbackend = \"old\"\n")
        + route_keys
        + "\n"
        + RASA_CLIENT;
    (Proxy::start(&config_with(&cfg)).await, old, new)
}

/// Which bot answered this user's message: "old" or "new".
async fn side(client: &reqwest::Client, url: &str, user: &str) -> String {
    let body = json!({"sender": user, "message": "hello"}).to_string();
    let resp = (client.post(url).header("content-type", "application/json"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    answer[0]["text"].as_str().unwrap().to_owned()
}

/// The users (of `users`) the canary answered, asking each once, 16 at a time.
async fn on_canary(proxy: &Proxy, users: &[String]) -> HashSet<String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = Arc::new(proxy.url("/split?token=rasa-token"));
    let mut tasks = tokio::task::JoinSet::new();
    let mut canary = HashSet::new();
    for user in users {
        if tasks.len() == 16 {
            let (user, s) = tasks.join_next().await.unwrap().unwrap();
            if s == "new" {
                canary.insert(user);
            }
        }
        let (client, url, user) = (client.clone(), url.clone(), user.clone());
        tasks.spawn(async move {
            let s = side(&client, &url, &user).await;
            (user, s)
        });
    }
    while let Some(done) = tasks.join_next().await {
        let (user, s) = done.unwrap();
        if s == "new" {
            canary.insert(user);
        }
    }
    canary
}

fn users(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_answers_its_share_of_users_and_each_user_stays_on_one_side() {
    let (proxy, old, new) = setup("share", "canary = { backend = \"new\", percent = 10 }").await;
    let all = users(10_000);
    let first = on_canary(&proxy, &all).await;
    assert!(
        (700..=1300).contains(&first.len()),
        "10% of 10,000 users ±3%: {}",
        first.len()
    );
    assert_eq!(new.count(), first.len());
    assert_eq!(old.count(), all.len() - first.len());
    // Asked again, every user gets the same side.
    for _ in 0..2 {
        assert_eq!(
            on_canary(&proxy, &all[..500]).await,
            first
                .iter()
                .filter(|u| all[..500].contains(u))
                .cloned()
                .collect()
        );
    }
    let m = scrape(&proxy).await;
    let canary = series_value(
        &m,
        "botbridge_canary_requests_total{route=\"share\",side=\"canary\"}",
    );
    let primary = series_value(
        &m,
        "botbridge_canary_requests_total{route=\"share\",side=\"primary\"}",
    );
    assert_eq!(canary.unwrap() + primary.unwrap(), 11_000.0);
    assert_eq!(canary.unwrap() as usize, new.count());
}

/// Rewrites the proxy's config file with another percent and reloads it.
async fn reload_with(proxy: &Proxy, from: &str, to: &str) {
    let text = std::fs::read_to_string(&proxy.config_path).unwrap();
    assert!(text.contains(from));
    std::fs::write(&proxy.config_path, text.replace(from, to)).unwrap();
    let resp = reqwest::Client::new()
        .post(proxy.admin_url("/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_the_percent_moves_only_users_at_the_margin_and_zero_steps_everyone_back() {
    let (proxy, _old, _new) = setup("margin", "canary = { backend = \"new\", percent = 10 }").await;
    let all = users(1000);
    let at_10 = on_canary(&proxy, &all).await;
    reload_with(&proxy, "percent = 10", "percent = 50").await;
    let at_50 = on_canary(&proxy, &all).await;
    assert!(at_10.is_subset(&at_50), "users on the canary stay there");
    assert!(
        at_50.len() > at_10.len() + 300,
        "{} then {}",
        at_10.len(),
        at_50.len()
    );
    reload_with(&proxy, "percent = 50", "percent = 0").await;
    assert!(on_canary(&proxy, &all).await.is_empty(), "everyone back");
    reload_with(&proxy, "percent = 0", "percent = 10").await;
    assert_eq!(
        on_canary(&proxy, &all).await,
        at_10,
        "the same users as before"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_is_also_the_shadow_never_gets_a_request_twice() {
    let (proxy, old, new) = setup(
        "both",
        "canary = { backend = \"new\", percent = 50 }\nshadow = { backend = \"new\" }",
    )
    .await;
    let all = users(200);
    let canary = on_canary(&proxy, &all).await;
    assert_eq!(old.count(), all.len() - canary.len());
    // The shadow's copies are of the other users' requests only: each user reached "new" once.
    let deadline = Instant::now() + Duration::from_secs(10);
    while new.count() < all.len() {
        assert!(
            Instant::now() < deadline,
            "{} of {}",
            new.count(),
            all.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let senders: HashSet<String> = (new.requests().iter())
        .map(|r| r.json()["client"]["user_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(senders.len(), all.len(), "every user once");
    let report: Value = (reqwest::get(proxy.admin_url("/migration.json"))
        .await
        .unwrap())
    .json()
    .await
    .unwrap();
    let sent = &report["routes"][0]["report"]["copies_sent"];
    assert_eq!(sent.as_u64(), Some((all.len() - canary.len()) as u64));
}
