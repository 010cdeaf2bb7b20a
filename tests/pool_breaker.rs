//! The circuit breaker and route fallbacks, end to end: a failing Rasa bot behind the real binary
//! opens its backend's circuit; while open, callers of both dialects get a fast 503 with
//! `Retry-After` in their own shape, or, on a route with a `fallback`, the answer of a maintenance
//! bot of another dialect (CSML) translated as usual; a half-open probe closes it again.

mod common;
mod pool_bot;

use std::time::{Duration, Instant};

use common::{
    config_with, csml_answer, csml_backend_toml, Behaviour, CsmlBackend, SpawnedProxy as Proxy,
    Urls,
};
use pool_bot::{backends, haptik, metric, pool_backend, route, Bot};
use serde_json::{json, Value};

/// A CSML caller's request (plain key): (status, `Retry-After`, answer).
async fn csml(client: &reqwest::Client, url: &str, text: &str) -> (u16, Option<String>, Value) {
    let body = json!({"client": {"user_id": "u"}, "payload": {"content_type": "text", "content": {"text": text}}});
    let resp = (client.post(url))
        .header("x-api-key", common::CSML_PLAIN_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let retry = (resp.headers().get("retry-after")).map(|v| v.to_str().unwrap().to_string());
    (status, retry, resp.json().await.unwrap())
}

/// A Haptik caller's request: (status, `Retry-After`, answer).
async fn haptik_full(
    client: &reqwest::Client,
    url: &str,
    text: &str,
) -> (u16, Option<String>, Value) {
    let body = json!({"user": {"auth_id": "u"}, "message_body": text, "message_type": 0, "business_id": 1});
    let resp = (client.post(url))
        .header("authorization", "Bearer acme-token")
        .header("client-id", "acme-client")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let retry = (resp.headers().get("retry-after")).map(|v| v.to_str().unwrap().to_string());
    (status, retry, resp.json().await.unwrap())
}

async fn maintenance_bot() -> CsmlBackend {
    let text = json!({"content_type": "text", "content": {"text": "down for maintenance"}});
    CsmlBackend::start(Behaviour::Answer(csml_answer("r", &[text]))).await
}

/// Both dialects get a fast 503 with `Retry-After` (1 to `open_s` seconds) in their own shape.
async fn assert_fails_fast(client: &reqwest::Client, url: &str, open_s: u64) -> Duration {
    let started = Instant::now();
    let (status, retry, answer) = haptik_full(client, url, "while open").await;
    let took = started.elapsed();
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer["error_message"]
            .as_str()
            .unwrap()
            .contains("unavailable"),
        "{answer}"
    );
    let secs: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=open_s).contains(&secs), "Retry-After {secs}");
    let (status, retry, answer) = csml(client, url, "while open").await;
    assert_eq!(
        (status, answer["statusCode"].as_u64()),
        (503, Some(503)),
        "{answer}"
    );
    assert_eq!(answer["error"], "Service Unavailable");
    assert!(retry.is_some());
    took
}

/// Both dialects get the maintenance bot's answer, translated.
async fn assert_fallback_answers(client: &reqwest::Client, url: &str) {
    let (status, answer) = haptik(client, url, "u", "via fallback").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer[0]["bot_messages"][0], "down for maintenance");
    let (status, _, answer) = csml(client, url, "via fallback").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["messages"][0]["payload"]["content"]["text"],
        "down for maintenance"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_fails_fast_lets_the_fallback_answer_and_recovers_through_half_open() {
    let (bot, maint) = (Bot::start("primary").await, maintenance_bot().await);
    let breaker =
        "[backends.breaker]\nerror_rate = 0.5\nwindow_s = 10\nmin_requests = 4\nopen_s = 4";
    let proxy = Proxy::start(&config_with(
        &(pool_backend("primary", &[bot.addr], breaker)
            + &csml_backend_toml("maintenance", maint.addr, "")
            + &route("chat", "/chat", "primary", "")
            + &route(
                "chat-fb",
                "/chat-fb",
                "primary",
                "fallback = \"maintenance\"",
            )),
    ));
    let (client, admin) = (reqwest::Client::new(), proxy.admin_url(""));
    let (chat, chat_fb) = (proxy.url("/chat"), proxy.url("/chat-fb"));

    // Four failures in four requests: the circuit opens.
    bot.set_status(500);
    for i in 0..4 {
        let (status, _) = haptik(&client, &chat, "u", &format!("f-{i}")).await;
        assert_eq!(status, 502);
    }
    let sent = bot.count();
    assert_eq!(sent, 4);
    let took = assert_fails_fast(&client, &chat, 4).await;
    assert_fallback_answers(&client, &chat_fb).await;
    assert_eq!(
        bot.count(),
        sent,
        "nothing reached the bot while its circuit was open"
    );
    assert_eq!(maint.count(), 2);
    assert_eq!(backends(&admin).await["backends"][0]["circuit"], "open");
    let series = |s: &str| format!("botbridge_backend_{s}");
    assert_eq!(
        metric(&admin, &series(r#"circuit_open{backend="primary"}"#)).await,
        1.0
    );
    let fallbacks = r#"fallbacks_total{backend="primary",route="chat-fb"}"#;
    assert_eq!(metric(&admin, &series(fallbacks)).await, 2.0);
    println!("breaker: 503 answered in {took:?} while open");

    // The bot recovers; after open_s the first request is a probe, and its answer closes it.
    bot.set_status(200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = haptik(&client, &chat, "u", "probe").await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(
            Instant::now() < deadline,
            "the circuit never let a probe through"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, answer) = haptik(&client, &chat_fb, "u", "closed again").await;
    assert_eq!(
        (status, answer[0]["bot_messages"][0].as_str()),
        (200, Some("primary:closed again"))
    );
    assert_eq!(backends(&admin).await["backends"][0]["circuit"], "closed");
    for (to, n) in [("open", 1.0), ("half_open", 1.0), ("closed", 1.0)] {
        let s = format!(r#"circuit_transitions_total{{backend="primary",to="{to}"}}"#);
        assert_eq!(metric(&admin, &series(&s)).await, n, "{to}");
    }
    assert_eq!(
        metric(&admin, &series(r#"circuit_open{backend="primary"}"#)).await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_endpoint_fails_its_checks_requests_fail_fast_or_go_to_the_fallback() {
    // Two addresses nothing listens on.
    let dead: Vec<_> = (0..2)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
        })
        .collect();
    let maint = maintenance_bot().await;
    let health = "[backends.health]\ninterval_s = 1\ntimeout_ms = 300\nunhealthy_after = 1\n\
                  [backends.breaker]\nerror_rate = 0\nopen_s = 3";
    let proxy = Proxy::start(&config_with(
        &(pool_backend("down", &dead, health)
            + &csml_backend_toml("maintenance", maint.addr, "")
            + &route("chat", "/chat", "down", "")
            + &route("chat-fb", "/chat-fb", "down", "fallback = \"maintenance\"")),
    ));
    let (client, admin) = (reqwest::Client::new(), proxy.admin_url(""));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let b = backends(&admin).await;
        let eps = b["backends"][0]["endpoints"].as_array().unwrap().clone();
        if eps.len() == 2 && eps.iter().all(|e| e["healthy"] == false) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the checks never marked them down: {b}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_fails_fast(&client, &proxy.url("/chat"), 3).await;
    assert_fallback_answers(&client, &proxy.url("/chat-fb")).await;
    let up = r#"botbridge_backend_endpoint_up{backend="down",endpoint=""#;
    for a in &dead {
        assert_eq!(metric(&admin, &format!("{up}{a}\"}}")).await, 0.0);
    }
}
