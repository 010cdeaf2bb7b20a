//! Admission control (`[server] max_queue_ms`), against the real binary: a flood of concurrent
//! callers on one worker thread gets some of its requests refused at once with 503 in the caller's
//! dialect and `Retry-After`, counted; the rest are answered by the bot; without the setting, none
//! is refused.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn config(bot: std::net::SocketAddr, max_queue_ms: u64) -> String {
    let backend = csml_backend_toml("bot", bot, "");
    let route = "\n[[routes]]\nname = \"chat\"\npath = \"/chat\"\ningress = \"haptik\"\nbackend = \"bot\"\n";
    config_with(&format!("{backend}{route}"))
        .replacen(
            "[server]\n",
            &format!("[server]\nmax_queue_ms = {max_queue_ms}\nmax_connections_per_address = 0\n"),
            1,
        )
        .replace("filter = \"info\"", "filter = \"warn\"")
}

#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    shed: AtomicUsize,
    other: AtomicUsize,
}

/// `callers` keep-alive callers each sending requests one after the other for `seconds`; checks
/// every refusal's shape as it comes.
async fn flood(proxy: &SpawnedProxy, callers: usize, seconds: u64) -> Arc<Tally> {
    let tally = Arc::new(Tally::default());
    let until = Instant::now() + Duration::from_secs(seconds);
    let url = proxy.url("/chat");
    let mut tasks = Vec::new();
    for i in 0..callers {
        let (tally, url) = (tally.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            while Instant::now() < until {
                let sent = client
                    .post(&url)
                    .timeout(Duration::from_secs(30))
                    .header("content-type", "application/json")
                    .header("authorization", "Bearer acme-token")
                    .header("client-id", "acme-client")
                    .body(haptik_body(&format!("user-{i}"), "hello", 343))
                    .send()
                    .await;
                let Ok(answer) = sent else {
                    tally.other.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let status = answer.status().as_u16();
                let retry_after = answer.headers().get("retry-after").cloned();
                let body: serde_json::Value = answer.json().await.unwrap_or_default();
                match status {
                    200 => tally.ok.fetch_add(1, Ordering::Relaxed),
                    503 => {
                        assert_eq!(retry_after.unwrap(), "1", "{body}");
                        assert!(body["error_message"].is_string(), "Haptik's shape: {body}");
                        tally.shed.fetch_add(1, Ordering::Relaxed)
                    }
                    _ => tally.other.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_queue_limit_a_worker_sheds_new_requests_with_503_and_retry_after() {
    let bot = CsmlBackend::start(Behaviour::Answer(csml_answer(
        "r",
        &[json!({"content_type": "text", "content": {"text": "hi"}})],
    )))
    .await;
    let env = [("TEST_BACKEND_SECRET", BACKEND_SECRET)];

    // Off (the default): 200 callers at once on one worker thread all wait their turn.
    let proxy = SpawnedProxy::start_with_env(&config(bot.addr, 0), &env);
    let off = flood(&proxy, 200, 2).await;
    assert_eq!(off.shed.load(Ordering::Relaxed), 0);
    assert!(off.ok.load(Ordering::Relaxed) > 200);
    drop(proxy);

    // A 5 ms limit (the least allowed): the queue of 200 callers is far past it, so many are
    // refused at once.
    let proxy = SpawnedProxy::start_with_env(&config(bot.addr, 5), &env);
    let on = flood(&proxy, 200, 3).await;
    let (ok, shed) = (
        on.ok.load(Ordering::Relaxed),
        on.shed.load(Ordering::Relaxed),
    );
    assert!(shed > 50, "refused: {shed}, answered: {ok}");
    assert!(ok > 0, "some are still admitted and answered: {ok}");
    assert_eq!(on.other.load(Ordering::Relaxed), 0);
    let text = scrape(&proxy).await;
    assert_eq!(
        series_value(&text, "botbridge_requests_shed_total"),
        Some(shed as f64)
    );
    let errors = "botbridge_request_errors_total{reason=\"overloaded\",route=\"chat\"}";
    assert_eq!(series_value(&text, errors), Some(shed as f64));
    assert!(series_value(&text, "botbridge_worker_queue_delay_seconds").unwrap() > 0.0);
}
