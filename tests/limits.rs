//! Rate limits and `max_in_flight` on one instance, without Redis (the in-process limiter): what a
//! caller over a limit gets in its own dialect, that nothing reaches the bot, which limit applies, and
//! that a reload keeps the buckets. In-process; the metric test starts its proxy alone.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::header::HeaderMap;
use serde_json::{json, Value};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn post<P: Urls>(
    proxy: &P,
    headers: &[(&str, String)],
    body: &str,
) -> (u16, HeaderMap, Value) {
    send_with_headers(proxy, "/chat", headers, body).await
}

fn haptik(client: &str, token: &str) -> Vec<(&'static str, String)> {
    vec![
        ("authorization", format!("Bearer {token}")),
        ("client-id", client.to_string()),
    ]
}

fn csml_plain() -> Vec<(&'static str, String)> {
    vec![("x-api-key", CSML_PLAIN_KEY.to_string())]
}

fn csml_body(user: &str) -> String {
    json!({"client": {"user_id": user}, "payload": {"content_type": "text", "content": {"text": "hi"}}})
        .to_string()
}

fn header<'h>(h: &'h HeaderMap, name: &str) -> &'h str {
    h.get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

fn answer() -> Behaviour {
    Behaviour::Answer(csml_answer(
        "r",
        &[json!({"content_type":"text","content":{"text":"ok"}})],
    ))
}

/// The test config with `extra_client` keys on the `acme` Haptik client and `route` keys on the
/// route (which takes Haptik and CSML callers).
fn config(backend: &CsmlBackend, extra_client: &str, route: &str, backend_extra: &str) -> String {
    config_with(&format!(
        "{}\n[[routes]]\nname = \"chat\"\npath = \"/chat\"\ningress = [\"haptik\", \"csml\"]\nbackend = \"bot\"\n{route}\n",
        csml_backend_toml("bot", backend.addr, backend_extra)
    ))
    .replace(
        "token = \"acme-token\"",
        &format!("token = \"acme-token\"\n{extra_client}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_its_limit_a_caller_gets_429_in_its_own_dialect_and_the_bot_nothing() {
    let backend = CsmlBackend::start(answer()).await;
    let proxy = Proxy::start(&config(
        &backend,
        "rate_limit = { requests = 3, per_seconds = 3600 }",
        "rate_limit = { requests = 2, per_seconds = 3600 }",
        "",
    ))
    .await;
    let acme = haptik("acme-client", "acme-token");
    for i in 0..3 {
        let (status, _, body) = post(&proxy, &acme, &haptik_body("u", "hi", 1)).await;
        assert_eq!(status, 200, "request {i}: {body}");
    }
    let (status, h, body) = post(&proxy, &acme, &haptik_body("u", "hi", 1)).await;
    assert_eq!(status, 429, "{body}");
    let message = body["error_message"]
        .as_str()
        .expect("Haptik's error shape");
    assert!(message.contains("at most 3 per 3600 s"), "{message}");
    // One request per 1200 s: the next token is about 1200 s away.
    let retry: u64 = header(&h, "retry-after").parse().unwrap();
    assert!((1100..=1200).contains(&retry), "{retry}");
    assert_eq!(header(&h, "ratelimit-policy"), "\"credential\";q=3;w=3600");
    assert_eq!(
        header(&h, "ratelimit"),
        format!("\"credential\";r=0;t={retry}")
    );
    assert_eq!(
        backend.count(),
        3,
        "the refused request never reached the bot"
    );

    // The CSML caller has no limit of its own: the route's applies, in its own bucket.
    for _ in 0..2 {
        assert_eq!(post(&proxy, &csml_plain(), &csml_body("u")).await.0, 200);
    }
    let (status, h, body) = post(&proxy, &csml_plain(), &csml_body("u")).await;
    assert_eq!(
        (status, &body["statusCode"], &body["error"]),
        (429, &json!(429), &json!("Too Many Requests")),
        "{body}"
    );
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("at most 2 per 3600 s"));
    assert!(header(&h, "retry-after").parse::<u64>().unwrap() > 1000);
    assert_eq!(header(&h, "ratelimit-policy"), "\"credential\";q=2;w=3600");
    // The other Haptik client has its own bucket of the route's limit.
    let hashed = haptik("hashed-client", "hashed-token");
    assert_eq!(
        post(&proxy, &hashed, &haptik_body("u", "hi", 1)).await.0,
        200
    );
    assert_eq!(backend.count(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rasa_caller_over_its_limit_gets_rasas_error_shape() {
    let backend = CsmlBackend::start(answer()).await;
    let cfg = config_with(&format!(
        "{}\n[[routes]]\nname = \"rasa\"\npath = \"/webhooks/rest/webhook\"\ningress = \"rasa\"\nbackend = \"bot\"\n\n[[clients.rasa]]\nname = \"web\"\ntoken = \"rasa-token\"\nrate_limit = {{ requests = 1, per_seconds = 60 }}\n",
        csml_backend_toml("bot", backend.addr, "")
    ));
    let proxy = Proxy::start(&cfg).await;
    let send = || async {
        let resp = client()
            .post(proxy.url("/webhooks/rest/webhook?token=rasa-token"))
            .header("content-type", "application/json")
            .body(r#"{"sender":"u","message":"hi"}"#)
            .send()
            .await
            .unwrap();
        let (status, h) = (resp.status().as_u16(), resp.headers().clone());
        (status, h, resp.json::<Value>().await.unwrap())
    };
    assert_eq!(send().await.0, 200);
    let (status, h, body) = send().await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(
        (&body["status"], &body["reason"], &body["code"]),
        (&json!("failure"), &json!("rate_limited"), &json!(429)),
        "{body}"
    );
    assert!((50..=60).contains(&header(&h, "retry-after").parse::<u64>().unwrap()));
    assert_eq!(backend.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_in_a_loop_is_limited_alone_and_spends_nothing_of_its_credential() {
    let backend = CsmlBackend::start(answer()).await;
    let proxy = Proxy::start(&config(
        &backend,
        "rate_limit = { requests = 5, per_seconds = 3600 }",
        "user_rate_limit = { requests = 2, per_seconds = 3600 }",
        "",
    ))
    .await;
    let acme = haptik("acme-client", "acme-token");
    let send = |user: &'static str| {
        let (proxy, acme) = (&proxy, &acme);
        async move { post(proxy, acme, &haptik_body(user, "hi", 1)).await }
    };
    assert_eq!(send("looping").await.0, 200);
    assert_eq!(send("looping").await.0, 200);
    for _ in 0..3 {
        let (status, h, body) = send("looping").await;
        assert_eq!(status, 429, "{body}");
        assert_eq!(header(&h, "ratelimit-policy"), "\"user\";q=2;w=3600");
        assert!(body["error_message"]
            .as_str()
            .unwrap()
            .contains("this user"));
    }
    // The looping user's refusals took nothing from the credential: 3 of its 5 are left.
    for user in ["a", "b", "c"] {
        assert_eq!(send(user).await.0, 200, "{user}");
    }
    let (status, h, _) = send("d").await;
    assert_eq!(status, 429);
    assert_eq!(header(&h, "ratelimit-policy"), "\"credential\";q=5;w=3600");
    assert_eq!(backend.count(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_limit_applies_and_a_reload_keeps_the_buckets() {
    let backend = CsmlBackend::start(answer()).await;
    let cfg = config(&backend, "", "", "")
        + "\n[limits]\nrate_limit = { requests = 2, per_seconds = 3600, burst = 2 }\n";
    let proxy = Proxy::start(&cfg).await;
    let acme = haptik("acme-client", "acme-token");
    for _ in 0..2 {
        assert_eq!(post(&proxy, &acme, &haptik_body("u", "hi", 1)).await.0, 200);
    }
    assert_eq!(post(&proxy, &acme, &haptik_body("u", "hi", 1)).await.0, 429);
    let reload = client()
        .post(proxy.admin_url("/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 200);
    let (status, _, body) = post(&proxy, &acme, &haptik_body("u", "hi", 1)).await;
    assert_eq!(status, 429, "a reload hands out no fresh burst: {body}");
    assert_eq!(backend.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_answers_503_while_a_slow_bot_holds_every_slot() {
    let backend = CsmlBackend::start(Behaviour::Slow(
        Duration::from_millis(1200),
        csml_answer(
            "r",
            &[json!({"content_type":"text","content":{"text":"ok"}})],
        ),
    ))
    .await;
    let proxy =
        std::sync::Arc::new(Proxy::start(&config(&backend, "", "", "max_in_flight = 2")).await);
    let acme = haptik("acme-client", "acme-token");
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let (proxy, acme) = (proxy.clone(), acme.clone());
            tokio::spawn(async move { post(&proxy, &acme, &haptik_body("u", "hi", 1)).await.0 })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend.count() < 2 {
        assert!(
            Instant::now() < deadline,
            "the two slow requests did not reach the bot"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, h, body) = post(&proxy, &acme, &haptik_body("u", "hi", 1)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error_message"], "the bot is busy; try again later");
    assert_eq!(header(&h, "retry-after"), "1");
    let (status, _, body) = post(&proxy, &csml_plain(), &csml_body("u")).await;
    assert_eq!((status, &body["statusCode"]), (503, &json!(503)), "{body}");
    assert_eq!(
        backend.count(),
        2,
        "the refused requests never reached the bot"
    );
    for s in slow {
        assert_eq!(s.await.unwrap(), 200);
    }
    // The slots were given back.
    assert_eq!(post(&proxy, &acme, &haptik_body("u", "hi", 1)).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_decisions_are_counted_by_scope_and_result() {
    let backend = CsmlBackend::start(answer()).await;
    let proxy = Proxy::start_alone(&config(
        &backend,
        "rate_limit = { requests = 1, per_seconds = 3600 }",
        "",
        "",
    ))
    .await;
    let before = scrape(&proxy).await;
    let acme = haptik("acme-client", "acme-token");
    for _ in 0..3 {
        post(&proxy, &acme, &haptik_body("u", "hi", 1)).await;
    }
    // A caller no limit covers is not counted at all.
    post(&proxy, &csml_plain(), &csml_body("u")).await;
    let after = scrape(&proxy).await;
    let decisions = |result: &str| {
        grew(
            &before,
            &after,
            &format!(
                "botbridge_rate_limit_decisions_total{{result=\"{result}\",scope=\"credential\"}}"
            ),
        )
    };
    assert_eq!((decisions("allowed"), decisions("limited")), (1, 2));
    assert_eq!(
        grew(
            &before,
            &after,
            "botbridge_request_errors_total{reason=\"rate_limited\",route=\"chat\"}"
        ),
        2
    );
    assert!(after.contains("botbridge_redis_up 0"), "no Redis here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_made_up_user_ids_holds_at_most_max_user_buckets() {
    let backend = CsmlBackend::start(answer()).await;
    let text = config(
        &backend,
        "",
        "user_rate_limit = { requests = 2, per_seconds = 86400 }",
        "",
    ) + "\n[limits]\nmax_user_buckets = 50\n";
    let proxy = Proxy::start_alone(&text).await;
    let before = scrape(&proxy).await;
    // A user known before the flood.
    assert_eq!(
        post(&proxy, &csml_plain(), &csml_body("known")).await.0,
        200
    );
    let mut allowed = 0;
    for n in 0..300 {
        let (status, _, body) =
            post(&proxy, &csml_plain(), &csml_body(&format!("made-up-{n}"))).await;
        match status {
            200 => allowed += 1,
            429 => assert_eq!(body["statusCode"], 429, "{body}"),
            other => panic!("{other}: {body}"),
        }
    }
    // About 49 made-up users got a bucket of their own; the other ~250 shared one overflow bucket
    // of 2 requests (the count of entries is refreshed exactly only by the sweeper).
    assert!((49..=60).contains(&allowed), "{allowed} allowed");
    let overflows = grew(
        &before,
        &scrape(&proxy).await,
        "botbridge_rate_limit_bucket_overflows_total",
    );
    assert!(overflows >= 240, "{overflows}");
    // The known user keeps their own bucket, with its second request left.
    assert_eq!(
        post(&proxy, &csml_plain(), &csml_body("known")).await.0,
        200
    );
    // Another credential's new users are not limited by the flood: each gets a bucket of its own
    // (three users, two requests each, more than one shared bucket would let through).
    let acme = haptik("acme-client", "acme-token");
    for n in 0..3 {
        for _ in 0..2 {
            let body = haptik_body(&format!("new-user-{n}"), "hi", 1);
            let (status, _, answer) = post(&proxy, &acme, &body).await;
            assert_eq!(status, 200, "{answer}");
        }
    }
}
