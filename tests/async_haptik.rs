//! Haptik's asynchronous side, both ways, over loopback: a Haptik caller on the Log Message API gets
//! its bot's replies on its webhook, signed as Haptik signs; a Haptik bot with `mode = "async"`
//! answers on the proxy's webhook, for a synchronous caller or an async one.

mod common;
mod receiver;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use receiver::{verify_hub, Receiver, Reply};
use serde_json::{json, Value};

const LOG_MESSAGE: &str = "/v1.0/log_message_from_user/";
const HOOK_SECRET: &str = "client-webhook-secret";
const BOT_SECRET: &str = "bot-webhook-secret";
const BOT_HOOK: &str = "/botbridge/haptik-replies";

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

/// A Haptik client with a webhook at `hook`, beside the harness's others.
fn hooked_client(hook: &str) -> String {
    format!(
        "[[clients.haptik]]\nname = \"hooked\"\nclient_id = \"hooked-client\"\ntoken = \"hooked-token\"\nwebhook_url = \"{hook}\"\nwebhook_secret = \"{HOOK_SECRET}\"\nallow_http_callbacks = true\nallow_private_callbacks = true\n"
    )
}

fn delivery_files() -> &'static str {
    "[delivery]\nspool_dir = \"{DIR}/spool\"\ndead_letter_path = \"{DIR}/dead.jsonl\"\n"
}

fn hooked_headers() -> Vec<(&'static str, String)> {
    vec![
        ("authorization", "Bearer hooked-token".into()),
        ("client-id", "hooked-client".into()),
    ]
}

#[tokio::test]
async fn a_log_message_caller_gets_each_reply_on_its_webhook_signed_as_haptik_signs() {
    let bot = CsmlBackend::start(Behaviour::Answer(csml_answer(
        "r",
        &[
            json!({"content_type": "text", "content": {"text": "first"}}),
            json!({"content_type": "text", "content": {"text": "second"}}),
        ],
    )))
    .await;
    let rx = Receiver::start(Reply::Ok).await;
    let config = config_with(&format!(
        "{}\n{}\n[[routes]]\nname = \"log\"\npath = \"{LOG_MESSAGE}\"\ningress = \"haptik\"\nbackend = \"bot\"\n{}",
        hooked_client(&rx.url("/haptik-hook")),
        csml_backend_toml("bot", bot.addr, ""),
        delivery_files()
    ));
    let proxy = Proxy::start(&config).await;
    let (status, ack) = send(
        &proxy,
        LOG_MESSAGE,
        &hooked_headers(),
        &haptik_body("user-9", "hello", 343),
    )
    .await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(ack["message_body"], "hello");
    assert_eq!(ack["message_type"], 0);
    assert!(
        ack["message_id"].is_u64() && ack["created_at"].is_string(),
        "{ack}"
    );

    eventually("two webhooks", || rx.received().len() == 2).await;
    for (got, text) in rx.received().iter().zip(["first", "second"]) {
        assert!(verify_hub(HOOK_SECRET, got), "X-Hub-Signature verifies");
        let v = got.json();
        assert_eq!(v["event_name"], "message");
        assert_eq!(v["user"]["auth_id"], "user-9");
        assert_eq!(v["business_id"], 343);
        assert_eq!(v["message"]["body"]["text"], text);
        assert_eq!(v["message"]["body"]["type"], "TEXT");
        assert!(v["message"]["id"].is_u64());
        assert!(got.header("idempotency-key").is_some());
    }

    // A client with no webhook cannot use the Log Message API.
    let acme = [
        ("authorization", "Bearer acme-token".to_string()),
        ("client-id", "acme-client".to_string()),
    ];
    let (status, err) = send(&proxy, LOG_MESSAGE, &acme, &haptik_body("u", "hello", 343)).await;
    assert_eq!(status, 400, "{err}");
    assert!(err["error_message"]
        .as_str()
        .unwrap()
        .contains("webhook_url"));
    assert_eq!(bot.count(), 1, "the refused request never reached the bot");
}

/// A Haptik bot on the Log Message API: acknowledges at once, then POSTs each reply to the proxy's
/// webhook (signed with [`BOT_SECRET`], or with `wrong` when set).
struct AsyncHaptikBot {
    addr: SocketAddr,
    proxy_hook: Arc<Mutex<Option<String>>>,
    received: Arc<Mutex<Vec<Value>>>,
}

impl AsyncHaptikBot {
    async fn start(replies: &'static [&'static str]) -> Self {
        use http_body_util::{BodyExt, Full};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let proxy_hook: Arc<Mutex<Option<String>>> = Arc::default();
        let received: Arc<Mutex<Vec<Value>>> = Arc::default();
        let (hook, rec) = (proxy_hook.clone(), received.clone());
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let (hook, rec) = (hook.clone(), rec.clone());
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (hook, rec) = (hook.clone(), rec.clone());
                        async move {
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let v: Value = serde_json::from_slice(&body).unwrap();
                            rec.lock().unwrap().push(v.clone());
                            let url = hook.lock().unwrap().clone().unwrap();
                            let texts: Vec<String> = match replies {
                                [ECHO] => {
                                    vec![format!("echo: {}", v["message_body"].as_str().unwrap())]
                                }
                                _ => replies.iter().map(|r| r.to_string()).collect(),
                            };
                            tokio::spawn(send_replies(
                                url,
                                v["user"]["auth_id"].as_str().unwrap().to_string(),
                                texts,
                            ));
                            let ack = json!({"message_id": 1, "message_body": v["message_body"], "created_at": "2024-01-01T00:00:00Z", "message_type": 0});
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                bytes::Bytes::from(ack.to_string()),
                            )))
                        }
                    },
                );
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc),
                );
            }
        });
        AsyncHaptikBot {
            addr,
            proxy_hook,
            received,
        }
    }
}

fn hub(secret: &str, body: &str) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    format!("sha1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The replies an [`AsyncHaptikBot`] given `&[ECHO]` sends: one, "echo: " and what it was sent.
const ECHO: &str = "<echo>";

/// A webhook body as the bot sends it: the time now, and a message id of its own.
fn bot_webhook_body(auth_id: &str, text: &str) -> String {
    static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    json!({
        "version": "1.0", "timestamp": now, "user": {"auth_id": auth_id},
        "business_id": 343, "event_name": "message",
        "agent": {"id": 1, "name": "bot", "profile_image": "", "is_automated": true},
        "message": {"id": id, "body": {"text": text, "type": "TEXT", "data": {"quick_replies": []}}},
    })
    .to_string()
}

async fn send_replies(url: String, auth_id: String, replies: Vec<String>) {
    tokio::time::sleep(Duration::from_millis(30)).await;
    for text in replies {
        let body = bot_webhook_body(&auth_id, &text);
        let resp = reqwest::Client::new()
            .post(&url)
            .header("x-hub-signature", hub(BOT_SECRET, &body))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
}

fn async_bot_config(bot: SocketAddr, routes: &str) -> String {
    config_with(&format!(
        r#"
[[backends]]
name = "async-haptik"
dialect = "haptik"
url = "http://{bot}{LOG_MESSAGE}"
token = "t"
client_id = "c"
mode = "async"
webhook_path = "{BOT_HOOK}"
webhook_secret = "{BOT_SECRET}"
quiet_ms = 300
read_timeout_ms = 3000
{routes}
{}
"#,
        delivery_files()
    ))
}

#[tokio::test]
async fn an_async_haptik_bot_answers_a_synchronous_caller_through_the_proxys_webhook() {
    let bot = AsyncHaptikBot::start(&["one", "two"]).await;
    let routes = "[[routes]]\nname = \"r\"\npath = \"/chat\"\ningress = \"csml\"\nbackend = \"async-haptik\"\nbusiness_id = 343\n";
    let proxy = Proxy::start(&async_bot_config(bot.addr, routes)).await;
    *bot.proxy_hook.lock().unwrap() = Some(proxy.url(BOT_HOOK));
    let body = json!({"client": {"user_id": "u-1"}, "metadata": {}, "payload": {"content_type": "text", "content": {"text": "hi"}}});
    let (status, answer) = send(
        &proxy,
        "/chat",
        &[("x-api-key", CSML_PLAIN_KEY.to_string())],
        &body.to_string(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let texts: Vec<&str> = (answer["messages"].as_array().unwrap().iter())
        .map(|m| m["payload"]["content"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["one", "two"]);
    let sent = bot.received.lock().unwrap()[0].clone();
    assert_eq!(sent["message_body"], "hi");
    assert_eq!(sent["user"]["auth_id"], "u-1");

    // A webhook whose signature does not verify is refused.
    let body = json!({"user": {"auth_id": "u-1"}, "event_name": "message", "message": {"id": 1, "body": {"text": "forged", "type": "TEXT", "data": {}}}}).to_string();
    let resp = reqwest::Client::new()
        .post(proxy.url(BOT_HOOK))
        .header("x-hub-signature", hub("wrong", &body))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn haptik_async_both_ways_end_to_end() {
    let bot = AsyncHaptikBot::start(&["alpha", "beta"]).await;
    let rx = Receiver::start(Reply::Ok).await;
    let routes = format!(
        "{}\n[[routes]]\nname = \"log\"\npath = \"{LOG_MESSAGE}\"\ningress = \"haptik\"\nbackend = \"async-haptik\"\n",
        hooked_client(&rx.url("/hook"))
    );
    let proxy = Proxy::start(&async_bot_config(bot.addr, &routes)).await;
    *bot.proxy_hook.lock().unwrap() = Some(proxy.url(BOT_HOOK));
    let (status, ack) = send(
        &proxy,
        LOG_MESSAGE,
        &hooked_headers(),
        &haptik_body("user-2", "hey", 343),
    )
    .await;
    assert_eq!(status, 200, "{ack}");
    eventually("both replies delivered", || rx.received().len() == 2).await;
    for (got, text) in rx.received().iter().zip(["alpha", "beta"]) {
        assert!(verify_hub(HOOK_SECRET, got));
        assert_eq!(got.json()["message"]["body"]["text"], text);
        assert_eq!(got.json()["user"]["auth_id"], "user-2");
    }
}

/// Two routes to one async Haptik bot: CSML callers on `/csml`, Haptik callers on `/chat`.
fn two_caller_routes(bot: SocketAddr) -> String {
    async_bot_config(
        bot,
        "[[routes]]\nname = \"csml-callers\"\npath = \"/csml\"\ningress = \"csml\"\nbackend = \"async-haptik\"\nbusiness_id = 343\n\
         [[routes]]\nname = \"haptik-callers\"\npath = \"/chat\"\ningress = \"haptik\"\nbackend = \"async-haptik\"\n",
    )
}

fn csml_text_body(user: &str, text: &str) -> String {
    json!({"client": {"user_id": user}, "metadata": {}, "payload": {"content_type": "text", "content": {"text": text}}}).to_string()
}

fn texts_of(csml_answer: &Value) -> Vec<String> {
    (csml_answer["messages"].as_array().unwrap().iter())
        .map(|m| {
            m["payload"]["content"]["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// A CSML caller's request on `/csml`, on a task of its own (it waits for the bot's replies).
fn waiting_csml_caller(
    proxy: &Proxy,
    user: &str,
    text: &str,
) -> tokio::task::JoinHandle<(u16, Value)> {
    let (url, body) = (proxy.url("/csml"), csml_text_body(user, text));
    tokio::spawn(async move {
        let r = reqwest::Client::new()
            .post(url)
            .header("x-api-key", CSML_PLAIN_KEY)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    })
}

fn acme() -> Vec<(&'static str, String)> {
    vec![
        ("authorization", "Bearer acme-token".to_string()),
        ("client-id", "acme-client".to_string()),
    ]
}

#[tokio::test]
async fn a_bot_reply_never_reaches_another_credentials_caller_with_the_same_user_id() {
    let bot = AsyncHaptikBot::start(&[ECHO]).await;
    let proxy = Proxy::start_alone(&two_caller_routes(bot.addr)).await;
    *bot.proxy_hook.lock().unwrap() = Some(proxy.url(BOT_HOOK));
    let plain = [("x-api-key", CSML_PLAIN_KEY.to_string())];
    let before = scrape(&proxy).await;

    // The victim (a CSML caller) waits for its bot's replies...
    let victim = waiting_csml_caller(&proxy, "victim-42", "my secret");
    eventually("the bot has the victim's message", || {
        bot.received.lock().unwrap().len() == 1
    })
    .await;
    // ... while a Haptik caller speaks as the same user id to the same bot: refused, in Haptik's
    // error shape, before the bot hears of it.
    let (status, headers, err) = send_with_headers(
        &proxy,
        "/chat",
        &acme(),
        &haptik_body("victim-42", "spy", 343),
    )
    .await;
    assert_eq!(status, 503, "{err}");
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    assert!(err["error_message"].is_string(), "{err}");
    let (status, answer) = victim.await.unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(texts_of(&answer), ["echo: my secret"]);
    assert_eq!(
        bot.received.lock().unwrap().len(),
        1,
        "the refused request never reached the bot"
    );

    // The user's replies stay the victim's for the backend's read timeout (late replies), then
    // another caller may speak as that user id and gets only its own replies.
    assert_eq!(
        send(
            &proxy,
            "/chat",
            &acme(),
            &haptik_body("victim-42", "spy", 343)
        )
        .await
        .0,
        503
    );
    tokio::time::sleep(Duration::from_millis(3_100)).await;
    let (status, answer) = send(
        &proxy,
        "/chat",
        &acme(),
        &haptik_body("victim-42", "later", 343),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer[0]["bot_messages"],
        json!(["echo: later"]),
        "{answer}"
    );
    // The victim's own route continues its conversation at once.
    let (status, answer) = send(&proxy, "/csml", &plain, &csml_text_body("someone", "hi")).await;
    assert_eq!(
        (status, texts_of(&answer)),
        (200, vec!["echo: hi".to_string()])
    );
    let conflicts = grew(
        &before,
        &scrape(&proxy).await,
        "botbridge_bot_reply_conflicts_total",
    );
    assert_eq!(conflicts, 2);
}

#[tokio::test]
async fn a_captured_bot_webhook_replayed_later_reaches_nobody() {
    let bot = AsyncHaptikBot::start(&[ECHO]).await;
    let proxy = Proxy::start_alone(&two_caller_routes(bot.addr)).await;
    *bot.proxy_hook.lock().unwrap() = Some(proxy.url(BOT_HOOK));
    let before = scrape(&proxy).await;
    let post = |body: String| {
        let url = proxy.url(BOT_HOOK);
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .header("x-hub-signature", hub(BOT_SECRET, &body))
                .body(body)
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }
    };
    // A webhook the bot once sent (captured on its way), taken once while nobody waited.
    let captured = bot_webhook_body("victim-7", "captured text");
    assert_eq!(post(captured.clone()).await, 200);
    // One signed long ago.
    let old = bot_webhook_body("victim-7", "old text").replace(
        &humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()[..16],
        "2024-01-01T00:00",
    );

    let victim = waiting_csml_caller(&proxy, "victim-7", "hello");
    eventually("the bot has the victim's message", || {
        bot.received.lock().unwrap().len() == 1
    })
    .await;
    // Replayed while the victim waits: answered 200 (a bot retrying must stop), handed to nobody.
    assert_eq!(post(captured).await, 200);
    assert_eq!(post(old).await, 200);
    let (_, answer) = victim.await.unwrap();
    assert_eq!(texts_of(&answer), ["echo: hello"], "{answer}");
    let after = scrape(&proxy).await;
    let result = |r: &str| {
        grew(
            &before,
            &after,
            &format!("botbridge_bot_webhooks_total{{result=\"{r}\"}}"),
        )
    };
    assert_eq!((result("replayed"), result("stale")), (1, 1));
}
