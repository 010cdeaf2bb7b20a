//! Async mode for CSML callers (`callback_url`), over real loopback receivers: what arrives, in which
//! order, signed how; retries with a stable idempotency key; the dead-letter log; every forgery case
//! refused before the bot hears of it; the queue bound.

mod common;
mod receiver;

use std::time::Duration;

use common::*;
use receiver::{verify_botbridge, Receiver, Reply};
use serde_json::{json, Value};

/// The demo CSML caller's secret (the shipped config), which also keys its callbacks.
const DEMO_SECRET: &str = "demo-secret";

/// The shipped config with the delivery files in the proxy's temporary folder and quick retries.
fn shipped(extra_delivery: &str) -> String {
    format!(
        "{}\n[delivery]\nspool_dir = \"{{DIR}}/spool\"\ndead_letter_path = \"{{DIR}}/dead.jsonl\"\nretry_initial_ms = 20\nretry_max_ms = 100\n{extra_delivery}\n",
        shipped_config()
    )
}

fn demo_headers() -> Vec<(&'static str, String)> {
    let (key, sig) = csml_sign("demo-key", DEMO_SECRET, unix_now());
    vec![("x-api-key", key), ("x-api-signature", sig)]
}

fn csml_body(text: &str, callback: Option<&str>) -> String {
    let mut v = json!({
        "client": {"user_id": "async-user"},
        "metadata": {},
        "request_id": "req-async-1",
        "payload": {"content_type": "text", "content": {"text": text}},
    });
    if let Some(url) = callback {
        v["callback_url"] = json!(url);
    }
    v.to_string()
}

fn dead_letters(proxy: &Proxy) -> Vec<Value> {
    let path = proxy.config_path.parent().unwrap().join("dead.jsonl");
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Waits (bounded) until `f` holds.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn every_message_arrives_in_order_then_the_closing_post_signed() {
    let proxy = Proxy::start(&shipped("")).await;
    let rx = Receiver::start(Reply::Ok).await;
    let (status, ack) = send(
        &proxy,
        "/chat",
        &demo_headers(),
        &csml_body("hello", Some(&rx.url("/cb"))),
    )
    .await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(
        ack["messages"],
        json!([]),
        "answered at once, with no message"
    );
    assert_eq!(ack["request_id"], "req-async-1");

    // The same request answered synchronously: what the callback must carry, message by message.
    let (_, sync) = send(&proxy, "/chat", &demo_headers(), &csml_body("hello", None)).await;
    let expected = sync["messages"].as_array().unwrap().clone();
    assert_eq!(expected.len(), 3);
    eventually("all deliveries", || {
        rx.received().len() == expected.len() + 1
    })
    .await;

    let got = rx.received();
    let mut keys = Vec::new();
    for (i, r) in got.iter().enumerate() {
        assert!(verify_botbridge(DEMO_SECRET, r), "delivery {i} is signed");
        let key = r
            .header("idempotency-key")
            .expect("idempotency key")
            .to_string();
        assert!(!keys.contains(&key));
        keys.push(key);
        let body = r.json();
        assert_eq!(body["request_id"], "req-async-1");
        assert_eq!(body["client"]["user_id"], "async-user");
        if i < expected.len() {
            let m = body["messages"].as_array().unwrap();
            assert_eq!(m.len(), 1, "one message per POST");
            assert_eq!(
                m[0]["payload"], expected[i]["payload"],
                "message {i} in order"
            );
        } else {
            assert_eq!(body["messages"], json!([]));
            assert_eq!(body["conversation_end"], true);
        }
    }
    assert!(got.iter().all(|r| r.path == "/cb"));
}

#[tokio::test]
async fn deliveries_to_one_receiver_reuse_a_kept_alive_connection() {
    let proxy = Proxy::start(&shipped("")).await;
    let rx = Receiver::start(Reply::Ok).await;
    for (n, text) in ["hello", "again", "once more"].into_iter().enumerate() {
        let body = csml_body(text, Some(&rx.url("/cb")));
        let (status, ack) = send(&proxy, "/chat", &demo_headers(), &body).await;
        assert_eq!(status, 200, "{ack}");
        eventually("the request's four POSTs", || {
            rx.received().len() == 4 * (n + 1)
        })
        .await;
    }
    assert!(rx.received().iter().all(|g| g.status == 200));
    assert_eq!(
        rx.connections(),
        1,
        "twelve deliveries one after the other, all on one connection"
    );

    // A receiver that closes each connection after its answer still gets everything, each on a
    // connection of its own (a closed one is never reused).
    let closing = Receiver::start(Reply::Ok).await;
    closing.set_keep_alive(false);
    let body = csml_body("hello", Some(&closing.url("/cb")));
    let (status, ack) = send(&proxy, "/chat", &demo_headers(), &body).await;
    assert_eq!(status, 200, "{ack}");
    eventually("four POSTs", || closing.received().len() == 4).await;
    assert_eq!(closing.connections(), 4);
    assert!(closing.received().iter().all(|g| g.status == 200));
}

#[tokio::test]
async fn a_receiver_that_fails_twice_gets_each_message_with_a_stable_key() {
    let proxy = Proxy::start_alone(&shipped("")).await;
    let before = scrape(&proxy).await;
    let rx = Receiver::start(Reply::FailFirst(2, 503)).await;
    let (status, _) = send(
        &proxy,
        "/chat",
        &demo_headers(),
        &csml_body("hi", Some(&rx.url("/cb"))),
    )
    .await;
    assert_eq!(status, 200);
    eventually("4 messages, 3 attempts each", || rx.received().len() == 12).await;
    let got = rx.received();
    for chunk in got.chunks(3) {
        let key = chunk[0].header("idempotency-key").unwrap();
        assert!(
            chunk
                .iter()
                .all(|r| r.header("idempotency-key") == Some(key)),
            "same key on every attempt"
        );
        assert!(
            chunk.iter().all(|r| r.body == chunk[0].body),
            "same body on every attempt"
        );
    }
    let delivered: Vec<_> = got.iter().filter(|r| r.status == 200).collect();
    assert_eq!(delivered.len(), 4, "each message accepted once");
    assert_eq!(delivered[3].json()["conversation_end"], true);
    let after = scrape(&proxy).await;
    assert_eq!(
        grew(
            &before,
            &after,
            "botbridge_delivery_retries_total{outcome=\"status_5xx\"}"
        ),
        8
    );
    assert_eq!(
        grew(
            &before,
            &after,
            "botbridge_deliveries_total{result=\"delivered\"}"
        ),
        4
    );
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let proxy = Proxy::start(&shipped("")).await;
    let rx = Receiver::start(Reply::FailFirstRetryAfter(1, 1)).await;
    let (status, _) = send(
        &proxy,
        "/chat",
        &demo_headers(),
        &csml_body("hi", Some(&rx.url("/cb"))),
    )
    .await;
    assert_eq!(status, 200);
    eventually("first message retried", || rx.received().len() >= 2).await;
    let got = rx.received();
    assert_eq!(got[0].status, 429);
    let waited = got[1].at.duration_since(got[0].at);
    assert!(
        waited >= Duration::from_millis(950),
        "waited {waited:?} for Retry-After: 1"
    );
}

#[tokio::test]
async fn an_unreachable_receiver_ends_in_the_dead_letter_log_after_the_deadline() {
    let proxy = Proxy::start_alone(&shipped("deadline_ms = 600\ntimeout_ms = 200")).await;
    let before = scrape(&proxy).await;
    let down = RefusedPort::new();
    let url = format!("http://{}/cb?token=s3cret", down.addr);
    let (status, _) = send(
        &proxy,
        "/chat",
        &demo_headers(),
        &csml_body("secret words", Some(&url)),
    )
    .await;
    assert_eq!(status, 200);
    eventually("4 dead letters", || dead_letters(&proxy).len() == 4).await;
    let dead = dead_letters(&proxy);
    for d in &dead {
        assert_eq!(d["reason"], "deadline");
        assert_eq!(d["last_outcome"], "connect_error");
        assert_eq!(d["credential"], "csml:demo");
        assert_eq!(d["request_id"], "req-async-1");
        assert_eq!(
            d["url"],
            format!("http://{}/cb", down.addr),
            "no query in the log"
        );
        assert!(
            d.get("body").is_none(),
            "no message text without [log] message_bodies"
        );
    }
    let text =
        std::fs::read_to_string(proxy.config_path.parent().unwrap().join("dead.jsonl")).unwrap();
    assert!(!text.contains("secret words") && !text.contains("s3cret"));
    let after = scrape(&proxy).await;
    assert_eq!(
        grew(
            &before,
            &after,
            "botbridge_dead_letters_total{reason=\"deadline\"}"
        ),
        4
    );
}

/// A config with a CSML test bot (which records what it receives) and one CSML credential whose
/// callback settings are `callback`.
fn forgery_config(bot: std::net::SocketAddr, callback: &str) -> String {
    let mut c = config_with(&format!(
        "{}\n[[routes]]\nname = \"r\"\npath = \"/chat\"\ningress = \"csml\"\nbackend = \"bot\"\n",
        csml_backend_toml("bot", bot, "")
    ));
    c = c.replace(
        "[[clients.csml]]\nname = \"plain\"\nkey = \"csml-plain-key\"\nauth = \"plain\"",
        &format!("[[clients.csml]]\nname = \"plain\"\nkey = \"csml-plain-key\"\nauth = \"plain\"\ncallback_secret = \"cb-secret\"\n{callback}"),
    );
    format!("{c}\n[delivery]\nspool_dir = \"{{DIR}}/spool\"\ndead_letter_path = \"{{DIR}}/dead.jsonl\"\ndeadline_ms = 2000\n")
}

/// A CSML bot that answers every request at once with one text, "x".
async fn answering_bot() -> CsmlBackend {
    CsmlBackend::start(Behaviour::Answer(csml_answer(
        "r",
        &[json!({"content_type": "text", "content": {"text": "x"}})],
    )))
    .await
}

fn plain_headers() -> Vec<(&'static str, String)> {
    vec![("x-api-key", CSML_PLAIN_KEY.to_string())]
}

#[tokio::test]
async fn every_forgery_case_is_refused_before_the_bot_hears_of_it() {
    let bot = answering_bot().await;
    let loopback_ok =
        "callback_hosts = [\"127.0.0.1\", \"localhost\"]\nallow_http_callbacks = true";
    let cases: Vec<(&str, String, &str)> = vec![
        ("loopback without permission", loopback_ok.into(), "http://127.0.0.1:9/cb"),
        ("a name resolving to 127.0.0.1", loopback_ok.into(), "http://localhost:9/cb"),
        ("a private address", "callback_hosts = [\"10.1.2.3\"]\nallow_http_callbacks = true".into(), "http://10.1.2.3/cb"),
        ("a metadata address, even with private allowed", "callback_hosts = [\"169.254.169.254\"]\nallow_http_callbacks = true\nallow_private_callbacks = true".into(), "http://169.254.169.254/latest"),
        ("a host not on the allow-list", format!("{loopback_ok}\nallow_private_callbacks = true"), "http://127.0.0.2:9/cb"),
        ("http for an https-only credential", "callback_hosts = [\"127.0.0.1\"]\nallow_private_callbacks = true".into(), "http://127.0.0.1:9/cb"),
        ("credentials in the URL", format!("{loopback_ok}\nallow_private_callbacks = true"), "http://u:p@127.0.0.1:9/cb"),
        ("a credential without callbacks", String::new(), "https://hooks.example.com/cb"),
    ];
    for (case, callback, url) in cases {
        let proxy = Proxy::start(&forgery_config(bot.addr, &callback)).await;
        let mut body: Value = serde_json::from_str(&csml_body("x", Some(url))).unwrap();
        body["request_id"] = json!("r");
        let (status, err) = send(&proxy, "/chat", &plain_headers(), &body.to_string()).await;
        assert_eq!(status, 400, "{case}: {err}");
        assert_eq!(err["statusCode"], 400, "{case}: CSML's error shape");
        assert!(
            err["message"].as_str().unwrap().contains("callback_url"),
            "{case}: {err}"
        );
        assert!(
            !err.to_string().contains(url),
            "{case}: the URL is not repeated"
        );
    }
    assert_eq!(bot.count(), 0, "no refused request reached the bot");
}

#[tokio::test]
async fn an_internal_ipv4_address_written_inside_an_ipv6_one_is_refused() {
    let bot = answering_bot().await;
    for host in [
        "::127.0.0.1",        // IPv4-compatible
        "::ffff:0:127.0.0.1", // IPv4-translated
        "64:ff9b::7f00:1",    // NAT64
        "2002:a9fe:a9fe::1",  // 6to4 of the metadata address
    ] {
        let callback = format!("callback_hosts = [\"{host}\"]\nallow_http_callbacks = true");
        let proxy = Proxy::start(&forgery_config(bot.addr, &callback)).await;
        let url = format!("http://[{host}]:9/cb");
        let (status, err) = send(
            &proxy,
            "/chat",
            &plain_headers(),
            &csml_body("x", Some(&url)),
        )
        .await;
        assert_eq!(status, 400, "{host}: {err}");
        assert_eq!(err["statusCode"], 400, "{host}: CSML's error shape");
        let message = err["message"].as_str().unwrap();
        assert!(message.contains("may not reach"), "{host}: {err}");
    }
    assert_eq!(bot.count(), 0, "no refused request reached the bot");
}

#[tokio::test]
async fn a_redirect_is_not_followed() {
    let bot = answering_bot().await;
    let elsewhere = Receiver::start(Reply::Ok).await;
    let redirecting = Receiver::start(Reply::Redirect(elsewhere.url("/stolen"))).await;
    let callback = "callback_hosts = [\"127.0.0.1\"]\nallow_http_callbacks = true\nallow_private_callbacks = true";
    let proxy = Proxy::start(&forgery_config(bot.addr, callback)).await;
    let (status, _) = send(
        &proxy,
        "/chat",
        &plain_headers(),
        &csml_body("x", Some(&redirecting.url("/cb"))),
    )
    .await;
    assert_eq!(status, 200);
    eventually("both messages dead-lettered", || {
        dead_letters(&proxy).len() == 2
    })
    .await;
    assert!(dead_letters(&proxy)
        .iter()
        .all(|d| d["reason"] == "redirect"));
    assert_eq!(
        redirecting.received().len(),
        2,
        "one attempt each, no retry"
    );
    assert_eq!(
        elsewhere.received().len(),
        0,
        "the redirect target never hears of it"
    );
}

#[tokio::test]
async fn csml_fronting_csml_the_proxy_delivers_and_the_bot_never_sees_the_callback() {
    let bot = CsmlBackend::start(Behaviour::Answer(csml_answer(
        "r",
        &[json!({"content_type": "text", "content": {"text": "from the bot"}})],
    )))
    .await;
    let rx = Receiver::start(Reply::Ok).await;
    let callback = "callback_hosts = [\"127.0.0.1\"]\nallow_http_callbacks = true\nallow_private_callbacks = true";
    let proxy = Proxy::start(&forgery_config(bot.addr, callback)).await;
    let (status, _) = send(
        &proxy,
        "/chat",
        &plain_headers(),
        &csml_body("x", Some(&rx.url("/cb"))),
    )
    .await;
    assert_eq!(status, 200);
    eventually("message and closing POST", || rx.received().len() == 2).await;
    assert!(
        bot.requests()[0].json().get("callback_url").is_none(),
        "the bot never gets the caller's URL"
    );
    let first = rx.received()[0].json();
    assert_eq!(
        first["messages"][0]["payload"]["content"]["text"],
        "from the bot"
    );
    assert!(
        verify_botbridge("cb-secret", &rx.received()[0]),
        "signed with callback_secret"
    );
}

#[tokio::test]
async fn a_full_queue_answers_503() {
    let bot = answering_bot().await;
    let rx = Receiver::start(Reply::Hang).await;
    let callback = "callback_hosts = [\"127.0.0.1\"]\nallow_http_callbacks = true\nallow_private_callbacks = true";
    let config = forgery_config(bot.addr, callback)
        .replace("deadline_ms = 2000", "deadline_ms = 2000\nqueue_size = 1");
    let proxy = Proxy::start(&config).await;
    let (first, _) = send(
        &proxy,
        "/chat",
        &plain_headers(),
        &csml_body("x", Some(&rx.url("/cb"))),
    )
    .await;
    assert_eq!(first, 200);
    let (second, err) = send(
        &proxy,
        "/chat",
        &plain_headers(),
        &csml_body("y", Some(&rx.url("/cb"))),
    )
    .await;
    assert_eq!(second, 503, "{err}");
    assert_eq!(err["statusCode"], 503);
}

#[tokio::test]
async fn requests_of_one_conversation_are_delivered_in_the_order_accepted() {
    let proxy = Proxy::start(&shipped("")).await;
    // The first request's deliveries fail twice each, so the second's would overtake them if allowed.
    let rx = Receiver::start(Reply::FailFirst(2, 503)).await;
    for text in ["first", "second"] {
        let (status, _) = send(
            &proxy,
            "/chat",
            &demo_headers(),
            &csml_body(text, Some(&rx.url("/cb"))),
        )
        .await;
        assert_eq!(status, 200);
    }
    eventually("8 deliveries", || {
        rx.received().iter().filter(|r| r.status == 200).count() == 8
    })
    .await;
    let texts: Vec<String> = (rx.received().iter())
        .filter(|r| r.status == 200)
        .map(|r| r.json()["messages"].to_string())
        .collect();
    let first_end = texts.iter().position(|t| t.contains("second")).unwrap();
    assert!(texts[..first_end].iter().any(|t| t.contains("first")));
    assert!(
        texts[first_end..].iter().all(|t| !t.contains("first")),
        "{texts:#?}"
    );
}

/// A second CSML credential with callbacks beside "plain": the signed caller.
fn with_signed_callbacks(config: &str, callback: &str) -> String {
    config.replace(
        "business_id = 77\n",
        &format!("business_id = 77\ncallback_secret = \"cb-secret-2\"\n{callback}\n"),
    )
}

fn signed_headers() -> Vec<(&'static str, String)> {
    let (key, sig) = csml_sign(CSML_CALLER_KEY, CSML_CALLER_SECRET, unix_now());
    vec![("x-api-key", key), ("x-api-signature", sig)]
}

/// A bot that answers at once, a receiver that never does (every accepted request stays pending),
/// and a config in which both CSML credentials may use callbacks, with `delivery_keys`.
async fn pending_forever(delivery_keys: &str) -> (CsmlBackend, Receiver, String) {
    let bot = answering_bot().await;
    let rx = Receiver::start(Reply::Hang).await;
    let callback = "callback_hosts = [\"127.0.0.1\"]\nallow_http_callbacks = true\nallow_private_callbacks = true";
    let config = with_signed_callbacks(&forgery_config(bot.addr, callback), callback).replace(
        "deadline_ms = 2000",
        &format!("deadline_ms = 60000\n{delivery_keys}"),
    );
    (bot, rx, config)
}

#[tokio::test]
async fn one_credentials_flood_cannot_take_the_queue_from_another() {
    let (_bot, rx, config) = pending_forever("max_pending_per_credential = 5").await;
    let proxy = Proxy::start_alone(&config).await;
    let before = scrape(&proxy).await;
    let mut statuses = Vec::new();
    for n in 0..20 {
        let body = csml_body(&format!("flood {n}"), Some(&rx.url(&format!("/cb{n}"))));
        let (status, err) = send(&proxy, "/chat", &plain_headers(), &body).await;
        if status == 429 {
            assert_eq!(err["statusCode"], 429, "in CSML's error shape: {err}");
        }
        statuses.push(status);
    }
    let accepted = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(accepted, 5, "{statuses:?}");
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");

    // Another credential's async request is still accepted.
    let body = csml_body("mine", Some(&rx.url("/other")));
    let (status, ack) = send(&proxy, "/chat", &signed_headers(), &body).await;
    assert_eq!(status, 200, "{ack}");
    let after = scrape(&proxy).await;
    let series = |r: &str| {
        let name = format!("botbridge_async_requests_total{{dialect=\"csml\",result=\"{r}\"}}");
        grew(&before, &after, &name)
    };
    assert_eq!(series("credential_quota"), 15);
    assert_eq!(series("accepted"), 6);
}

#[tokio::test]
async fn the_bytes_pending_requests_hold_are_bounded() {
    let keys = "max_pending_bytes_per_credential = 4000\nmax_pending_bytes = 6000";
    let (_bot, rx, config) = pending_forever(keys).await;
    let config = config.replace("max_body_bytes = 2048", "max_body_bytes = 4096");
    let proxy = Proxy::start_alone(&config).await;
    let before = scrape(&proxy).await;
    let big = |n: usize| csml_body(&"z".repeat(1500), Some(&rx.url(&format!("/cb{n}"))));
    // Each request holds about 1.5 KB until its bot answers, then its messages (the bot answers
    // at once: a short message and the closing POST).
    let mut accepted = 0;
    for n in 0..30 {
        let (status, err) = send(&proxy, "/chat", &plain_headers(), &big(n)).await;
        match status {
            200 => accepted += 1,
            429 => assert!(err.to_string().contains("this credential"), "{err}"),
            other => panic!("{other}: {err}"),
        }
    }
    assert!((2..30).contains(&accepted), "{accepted} accepted");
    let refused = r#"botbridge_async_requests_total{dialect="csml",result="credential_quota"}"#;
    assert_eq!(grew(&before, &scrape(&proxy).await, refused), 30 - accepted);
}

#[tokio::test]
async fn a_symlink_planted_at_the_dead_letter_path_is_not_followed() {
    let proxy = Proxy::start(&shipped("")).await;
    let elsewhere = tempfile::tempdir().unwrap();
    let target = elsewhere.path().join("someone-elses-file");
    std::fs::write(&target, "theirs\n").unwrap();
    let dead = proxy.config_path.parent().unwrap().join("dead.jsonl");
    std::os::unix::fs::symlink(&target, &dead).unwrap();
    // 400: rejected, a dead letter at once.
    let rx = Receiver::start(Reply::FailFirst(usize::MAX, 400)).await;
    let before = scrape(&proxy).await;
    let (status, _) = send(
        &proxy,
        "/chat",
        &demo_headers(),
        &csml_body("hello", Some(&rx.url("/cb"))),
    )
    .await;
    assert_eq!(status, 200);
    let metric = "botbridge_dead_letters_total{reason=\"rejected\"}";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while grew(&before, &scrape(&proxy).await, metric) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "theirs\n");
    assert!(std::fs::symlink_metadata(&dead)
        .unwrap()
        .file_type()
        .is_symlink());
}
