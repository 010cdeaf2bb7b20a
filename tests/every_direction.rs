//! All six caller × backend dialect combinations end to end over loopback, dialect detection,
//! CSML caller authentication (signed, plain, timestamp edges) and CSML-shaped errors.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const ENGINE_HELLO: &str = include_str!("fixtures/csml-engine/run-response-hello.json");
const ENGINE_MEDIA: &str = include_str!("fixtures/csml-engine/run-response-media.json");

/// Haptik's current answer shape, as a Haptik bot sends it.
fn hsl_answer() -> String {
    json!({
        "version": "1.0", "timestamp": "2018-10-04T12:41:27.980Z",
        "agent": {"id": 4415, "name": "gogo", "profile_image": "https://x.test/p.png", "is_automated": true},
        "message": [
            {"id": 1, "body": {"text": "Hi from Haptik", "type": "TEXT", "data": {"quick_replies": []}}},
            {"id": 2, "body": {"text": "Pick one", "type": "TEXT", "data": {"quick_replies": [
                {"actionable_text": "Red", "is_default": 0, "type": "TEXT_ONLY", "payload": {"message": "RED", "gogo_message": ""}},
                {"actionable_text": "Blue", "is_default": 0, "type": "TEXT_ONLY", "payload": {"message": "BLUE", "gogo_message": ""}}]}}},
            {"id": 3, "body": {"text": "", "type": "CAROUSEL", "data": {"image_aspect_ratio": "1", "width": "MEDIUM", "items": [
                {"thumbnail": {"image": "https://x.test/cat.png"}, "title": "", "sub_title": "", "description": "", "actionables": []}]}}},
            {"id": 4, "body": {"text": "Docs", "type": "BUTTON", "data": {"items": [
                {"actionable_text": "Open", "location_required": false, "uri": "LINK", "is_default": 0, "type": "APP_ACTION",
                 "payload": {"url": "https://x.test/docs", "gogo_message": ""}}]}}}
        ]
    })
    .to_string()
}

struct Setup {
    csml: CsmlBackend,
    haptik: CsmlBackend,
    engine: CsmlBackend,
    proxy: Proxy,
}

async fn setup(haptik_answer_shape: &str) -> Setup {
    let csml = CsmlBackend::start(Behaviour::Answer(ENGINE_MEDIA.into())).await;
    let haptik =
        CsmlBackend::start_checking(Check::HaptikBearer, Behaviour::Answer(hsl_answer())).await;
    let engine =
        CsmlBackend::start_checking(Check::EngineKey, Behaviour::Answer(ENGINE_HELLO.into())).await;
    let mut cfg = csml_backend_toml("csml", csml.addr, "");
    cfg += &format!(
        r#"
[[backends]]
name = "haptik"
dialect = "haptik"
url = "http://{}/webhook"
token = "{HAPTIK_BACKEND_TOKEN}"
client_id = "{HAPTIK_BACKEND_CLIENT}"
read_timeout_ms = 1500

[[backends]]
name = "engine"
dialect = "csml-engine"
url = "http://{}/run"
bot_id = "hello-bot"
channel_id = "test-channel"
api_key = "{ENGINE_KEY}"
"#,
        haptik.addr, engine.addr
    );
    for (path, ingress, backend) in [
        ("/h2c", "haptik", "csml"),
        ("/h2h", "haptik", "haptik"),
        ("/h2e", "haptik", "engine"),
        ("/c2c", "csml", "csml"),
        ("/c2h", "csml", "haptik"),
        ("/c2e", "csml", "engine"),
        ("/auto", "auto", "csml"),
    ] {
        cfg += &format!(
            r#"
[[routes]]
name = "{}"
path = "{path}"
ingress = "{ingress}"
backend = "{backend}"
business_id = 55
haptik_answer = "{haptik_answer_shape}"
bot_name = "front-bot"
"#,
            &path[1..]
        );
    }
    let proxy = Proxy::start(&config_with(&cfg)).await;
    Setup {
        csml,
        haptik,
        engine,
        proxy,
    }
}

fn haptik_caller() -> Vec<(&'static str, String)> {
    vec![
        ("authorization", "Bearer acme-token".into()),
        ("client-id", "acme-client".into()),
    ]
}

fn csml_caller_at(ts: u64) -> Vec<(&'static str, String)> {
    let (k, s) = csml_sign(CSML_CALLER_KEY, CSML_CALLER_SECRET, ts);
    vec![("x-api-key", k), ("x-api-signature", s)]
}

fn csml_caller() -> Vec<(&'static str, String)> {
    csml_caller_at(unix_now())
}

fn csml_body(content_type: &str, content: Value) -> String {
    json!({
        "client": {"user_id": "c-user"},
        "metadata": {"firstname": "Ada", "plan": "gold"},
        "request_id": "csml-rid-1",
        "payload": {"content_type": content_type, "content": content}
    })
    .to_string()
}

fn no_caller_credentials(r: &Received) {
    for (h, secret) in [
        ("authorization", "acme-token"),
        ("x-api-signature", ""),
        ("x-api-key", CSML_CALLER_KEY),
    ] {
        if let Some(v) = r.header(h) {
            assert!(
                secret.is_empty() || !v.contains(secret),
                "caller's {h} reached the backend: {v}"
            );
        }
    }
    assert_ne!(r.header("x-api-signature").map(|s| s.len()), Some(0));
    assert!(!r
        .headers
        .iter()
        .any(|(_, v)| v.contains(CSML_CALLER_KEY) || v.contains("acme-token")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haptik_caller_to_csml_bot() {
    let s = setup("legacy").await;
    let (status, body) = send(
        &s.proxy,
        "/h2c",
        &haptik_caller(),
        &haptik_body("u-1", "Hi", 494),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let r = &s.csml.requests()[0];
    assert!(r.signature_ok);
    no_caller_credentials(r);
    assert_eq!(
        r.json()["payload"],
        json!({"content_type":"text","content":{"text":"Hi"}})
    );
    assert_eq!(body[0]["bot_messages"][1], "Example: https://example.com");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haptik_caller_to_haptik_bot_both_answer_shapes() {
    // HSL route: the Haptik bot's own HSL bodies come back verbatim.
    let s = setup("hsl").await;
    let (status, body) = send(
        &s.proxy,
        "/h2h",
        &haptik_caller(),
        &haptik_body("u-1", "Hi", 494),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let r = &s.haptik.requests()[0];
    assert!(
        r.signature_ok,
        "backend's own bearer and client id: {:?}",
        r.headers
    );
    no_caller_credentials(r);
    assert_eq!(r.path, "/webhook");
    assert_eq!(
        r.json(),
        json!({"user":{"auth_id":"u-1"},"message_body":"Hi","message_type":0,"business_id":494})
    );
    let sent: Value = serde_json::from_str(&hsl_answer()).unwrap();
    let bodies: Vec<&Value> = body["message"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["body"])
        .collect();
    let want: Vec<&Value> = sent["message"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["body"])
        .collect();
    assert_eq!(bodies, want, "same-dialect fronting loses nothing");
    assert_eq!(body["agent"]["name"], "gogo");
    assert_eq!(body["version"], "1.0");
    // Legacy route: the same bot's answer as strings.
    let s = setup("legacy").await;
    let (_, body) = send(
        &s.proxy,
        "/h2h",
        &haptik_caller(),
        &haptik_body("u-1", "Hi", 494),
    )
    .await;
    assert_eq!(
        body[0]["bot_messages"],
        json!([
            "Hi from Haptik",
            "Pick one\n[Red] [Blue]",
            "https://x.test/cat.png",
            "Open: https://x.test/docs"
        ])
    );
    // A legacy-array bot.
    s.haptik.set(Behaviour::Answer(
        include_str!("fixtures/haptik/seed-response.json").into(),
    ));
    let (_, body) = send(
        &s.proxy,
        "/h2h",
        &haptik_caller(),
        &haptik_body("u-1", "Hi", 494),
    )
    .await;
    assert_eq!(body[0]["bot_messages"], json!(["Hello there!"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haptik_caller_to_csml_engine() {
    let s = setup("legacy").await;
    let mut h = haptik_caller();
    h.push(("x-request-id", "rid-e".into()));
    let (status, body) = send(&s.proxy, "/h2e", &h, &haptik_body("u-1", "Hi", 494)).await;
    assert_eq!(status, 200, "{body}");
    let r = &s.engine.requests()[0];
    assert!(r.signature_ok, "engine's X-Api-Key");
    no_caller_credentials(r);
    assert_eq!(r.path, "/run");
    assert_eq!(
        r.json(),
        json!({"bot_id":"hello-bot","event":{"request_id":"rid-e",
               "client":{"bot_id":"hello-bot","channel_id":"test-channel","user_id":"u-1"},
               "metadata":{"business_id":494},"payload":{"content_type":"text","content":{"text":"Hi"}}}})
    );
    assert_eq!(
        body[0]["bot_messages"],
        json!(["Hello there!", "What is your name?\n[Alice] [Bob]"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csml_caller_to_csml_bot_is_lossless() {
    let s = setup("legacy").await;
    let req = csml_body("text", json!({"text": "/media", "extra": 1}));
    let (status, body) = send(&s.proxy, "/c2c", &csml_caller(), &req).await;
    assert_eq!(status, 200, "{body}");
    let r = &s.csml.requests()[0];
    assert!(r.signature_ok, "re-signed with the backend's key");
    no_caller_credentials(r);
    let got = r.json();
    assert_eq!(
        got["metadata"],
        json!({"firstname": "Ada", "plan": "gold"}),
        "metadata passed through"
    );
    assert_eq!(got["request_id"], "csml-rid-1");
    assert_eq!(got["client"], json!({"user_id": "c-user"}));
    assert_eq!(
        got["payload"],
        json!({"content_type": "text", "content": {"text": "/media", "extra": 1}}),
        "extra content properties reach the bot"
    );
    // Every message the bot sent, typing/wait/object included, comes back verbatim.
    let sent: Value = serde_json::from_str(ENGINE_MEDIA).unwrap();
    let theirs: Vec<&Value> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["payload"])
        .collect();
    let ours: Vec<&Value> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["payload"])
        .collect();
    assert_eq!(ours, theirs);
    assert_eq!(body["request_id"], "csml-rid-1");
    assert_eq!(
        body["client"],
        json!({"bot_id":"hello-bot","channel_id":"test-channel","user_id":"c-user"})
    );
    assert_eq!(body["is_authorized"], true);
    assert!(body["interaction_id"].as_str().unwrap().len() >= 16);
    assert!(humantime::parse_rfc3339(body["received_at"].as_str().unwrap()).is_ok());
    assert_eq!(body["messages"][0]["direction"], "SEND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csml_caller_to_haptik_bot() {
    let s = setup("legacy").await;
    // The signed credential maps to business 77; a button click goes as its payload.
    let (status, body) = send(
        &s.proxy,
        "/c2h",
        &csml_caller(),
        &csml_body("payload", json!({"payload": "RED"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let r = &s.haptik.requests()[0];
    assert!(r.signature_ok);
    no_caller_credentials(r);
    assert_eq!(
        r.json(),
        json!({"user":{"auth_id":"c-user"},"message_body":"RED","message_type":0,"business_id":77})
    );
    assert_eq!(
        r.header("x-request-id"),
        Some("csml-rid-1"),
        "the caller's request_id travels as a header"
    );
    let payloads: Vec<&Value> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["payload"])
        .collect();
    assert_eq!(
        payloads,
        [
            &json!({"content_type":"text","content":{"text":"Hi from Haptik"}}),
            &json!({"content_type":"question","content":{"title":"Pick one","buttons":[
                {"content_type":"button","content":{"title":"Red","payload":"RED","accepts":["Red","RED"]}},
                {"content_type":"button","content":{"title":"Blue","payload":"BLUE","accepts":["Blue","BLUE"]}}]}}),
            &json!({"content_type":"image","content":{"url":"https://x.test/cat.png"}}),
            &json!({"content_type":"url","content":{"url":"https://x.test/docs","text":"Open","title":"Docs"}}),
        ]
    );
    assert_eq!(body["client"]["bot_id"], "gogo");
    assert_eq!(body["client"]["channel_id"], "77");
    // The plain credential has no mapping: the route's business 55. An image goes as type 1.
    let plain = vec![("x-api-key", CSML_PLAIN_KEY.to_string())];
    let (status, _) = send(
        &s.proxy,
        "/c2h",
        &plain,
        &csml_body("image", json!({"url": "https://x.test/a.png"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        s.haptik.requests()[1].json(),
        json!({"user":{"auth_id":"c-user"},"message_body":"https://x.test/a.png","message_type":1,"business_id":55})
    );
    // A flow trigger has no Haptik equivalent: 422 in CSML's shape, nothing sent.
    let (status, err) = send(
        &s.proxy,
        "/c2h",
        &csml_caller(),
        &csml_body("flow_trigger", json!({"flow_id": "f"})),
    )
    .await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(err["statusCode"], 422);
    assert!(err["message"].as_str().unwrap().contains("flow_trigger"));
    assert_eq!(s.haptik.count(), 2);
    // A Haptik refusal about the caller's request reaches the caller with the bot's status, in
    // CSML's shape, with Haptik's documented message.
    s.haptik.set(Behaviour::Status(
        403,
        r#"{"error_message":"user is not registered"}"#.into(),
    ));
    let text = csml_body("text", json!({"text": "x"}));
    let (status, err) = send(&s.proxy, "/c2h", &csml_caller(), &text).await;
    assert_eq!((status, &err["statusCode"]), (403, &json!(403)), "{err}");
    assert_eq!(err["message"], "user is not registered");
    // One about the proxy's own credentials at the bot stays a 502.
    s.haptik.set(Behaviour::Status(
        401,
        r#"{"error_message":"invalid authorization details"}"#.into(),
    ));
    let (status, err) = send(&s.proxy, "/c2h", &csml_caller(), &text).await;
    assert_eq!(status, 502, "{err}");
    // The bot's own free text never reaches the caller.
    s.haptik.set(Behaviour::Status(
        400,
        r#"{"error_message":"SECRET internal detail"}"#.into(),
    ));
    let (status, err) = send(&s.proxy, "/c2h", &csml_caller(), &text).await;
    assert_eq!(status, 400, "{err}");
    assert!(!err.to_string().contains("SECRET"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csml_caller_to_csml_engine() {
    let s = setup("legacy").await;
    let (status, body) = send(
        &s.proxy,
        "/c2e",
        &csml_caller(),
        &csml_body("text", json!({"text": "hi"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let r = &s.engine.requests()[0];
    assert!(r.signature_ok);
    no_caller_credentials(r);
    assert_eq!(
        r.json(),
        json!({"bot_id":"hello-bot","event":{"request_id":"csml-rid-1",
               "client":{"bot_id":"hello-bot","channel_id":"test-channel","user_id":"c-user"},
               "metadata":{"firstname":"Ada","plan":"gold"},"payload":{"content_type":"text","content":{"text":"hi"}}}})
    );
    let sent: Value = serde_json::from_str(ENGINE_HELLO).unwrap();
    assert_eq!(
        body["messages"][1]["payload"],
        sent["messages"][1]["payload"]
    );
    // The engine's own failures: 400 text/plain and an empty 500 become 502s.
    s.engine
        .set(Behaviour::Status(400, "missing field `metadata`".into()));
    let (status, err) = send(
        &s.proxy,
        "/c2e",
        &csml_caller(),
        &csml_body("text", json!({"text": "hi"})),
    )
    .await;
    assert_eq!(status, 502);
    assert_eq!(
        err["message"], "the CSML engine refused the request (HTTP 400)",
        "{err}"
    );
    assert!(!err.to_string().contains("metadata"), "{err}");
    s.engine.set(Behaviour::Status(500, String::new()));
    let (status, _) = send(
        &s.proxy,
        "/c2e",
        &csml_caller(),
        &csml_body("text", json!({"text": "hi"})),
    )
    .await;
    assert_eq!(status, 502);
    // A bot error is an error, not a text.
    s.engine.set(Behaviour::AnswerUnchecked(
        r#"{"messages":[{"payload":{"content_type":"error","content":{"error":"flow crashed"}}}]}"#
            .into(),
    ));
    let (status, err) = send(
        &s.proxy,
        "/c2e",
        &csml_caller(),
        &csml_body("text", json!({"text": "hi"})),
    )
    .await;
    assert_eq!(status, 502);
    assert_eq!(err["message"], "the bot reported an error", "{err}");
    assert!(!err.to_string().contains("flow crashed"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_endpoint_detects_either_dialect_and_neither() {
    let s = setup("legacy").await;
    let (status, body) = send(
        &s.proxy,
        "/auto",
        &haptik_caller(),
        &haptik_body("u", "Hi", 1),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        body.is_array(),
        "Haptik caller gets a Haptik answer: {body}"
    );
    let (status, body) = send(
        &s.proxy,
        "/auto",
        &csml_caller(),
        &csml_body("text", json!({"text": "hi"})),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        body["messages"].is_array(),
        "CSML caller gets a CSML answer: {body}"
    );
    // No credential headers: the body's shape picks the dialect of the refusal.
    let (status, err) = send(&s.proxy, "/auto", &[], &haptik_body("u", "Hi", 1)).await;
    assert_eq!(
        (status, err["error_message"].as_str()),
        (401, Some("client_id missing in headers"))
    );
    let (status, err) = send(
        &s.proxy,
        "/auto",
        &[],
        &csml_body("text", json!({"text": "hi"})),
    )
    .await;
    assert_eq!(
        (status, err["message"].as_str()),
        (401, Some("missing x-api-key header"))
    );
    assert_eq!(err["statusCode"], 401);
    // Neither: a 400 that says so, readable by both kinds of client.
    let (status, err) = send(&s.proxy, "/auto", &[], r#"{"hello":"world"}"#).await;
    assert_eq!(status, 400);
    assert!(err["error_message"]
        .as_str()
        .unwrap()
        .contains("cannot tell the request's dialect"));
    assert!(err["message"]
        .as_str()
        .unwrap()
        .contains("cannot tell the request's dialect"));
    // A fixed-dialect route refuses the other dialect's credentials in its own dialect.
    let (status, err) = send(
        &s.proxy,
        "/c2c",
        &haptik_caller(),
        &haptik_body("u", "Hi", 1),
    )
    .await;
    assert_eq!(
        (status, err["message"].as_str()),
        (401, Some("missing x-api-key header"))
    );
    assert_eq!(
        s.csml.count(),
        2,
        "only the two authenticated requests reached the bot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csml_signature_and_timestamp_edges() {
    let s = setup("legacy").await;
    let body = csml_body("text", json!({"text": "hi"}));
    // Signed at exactly the tolerance either way, and one second past it, by the proxy's clock held
    // still (at the current second, so the backend still accepts the proxy's own signature).
    for (offset, ok) in [(-300i64, true), (300, true), (-301, false), (301, false)] {
        let now = s.proxy.clock.freeze();
        let ts = (now as i64 + offset) as u64;
        let (status, answer) = send(&s.proxy, "/c2c", &csml_caller_at(ts), &body).await;
        if ok {
            assert_eq!(status, 200, "offset {offset}: {answer}");
        } else {
            assert_eq!(status, 401, "offset {offset}: {answer}");
            assert!(
                answer["message"]
                    .as_str()
                    .unwrap()
                    .contains("more than 300 s"),
                "{answer}"
            );
        }
    }
    s.proxy.clock.resume();
    let now = unix_now();
    let (k, _) = csml_sign(CSML_CALLER_KEY, CSML_CALLER_SECRET, now);
    let (_, wrong) = csml_sign(CSML_CALLER_KEY, "not-the-secret", now);
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (
            vec![("x-api-key", k.clone()), ("x-api-signature", wrong)],
            "invalid signature",
        ),
        (vec![("x-api-key", k.clone())], "x-api-signature"),
        (
            vec![
                ("x-api-key", format!("nobody|{now}")),
                ("x-api-signature", "sha256=00".into()),
            ],
            "invalid API key",
        ),
        (
            vec![("x-api-key", CSML_CALLER_KEY.into())],
            "needs a signature",
        ),
        (vec![("x-api-key", "not-a-key".into())], "invalid API key"),
    ];
    for (headers, needle) in cases {
        let (status, err) = send(&s.proxy, "/c2c", &headers, &body).await;
        assert_eq!(status, 401, "{headers:?}");
        assert_eq!(err["statusCode"], 401);
        assert_eq!(err["error"], "Unauthorized");
        assert!(
            err["message"].as_str().unwrap().contains(needle),
            "{needle}: {err}"
        );
    }
    // Plain-key mode.
    let (status, _) = send(
        &s.proxy,
        "/c2c",
        &[("x-api-key", CSML_PLAIN_KEY.into())],
        &body,
    )
    .await;
    assert_eq!(status, 200);
    // Bad CSML bodies are 400s naming the field, in CSML's shape.
    for (bad, needle) in [
        (
            r#"{"client":{},"payload":{"content_type":"text","content":{"text":"x"}}}"#,
            "user_id",
        ),
        (
            r#"{"client":{"user_id":"u"},"payload":{"content_type":"sticker","content":{}}}"#,
            "payload.content_type",
        ),
        (
            r#"{"client":{"user_id":"u"},"payload":{"content_type":"url","content":{"url":"nope"}}}"#,
            "payload.content.url",
        ),
    ] {
        let (status, err) = send(&s.proxy, "/c2c", &csml_caller(), bad).await;
        assert_eq!(status, 400);
        assert!(err["message"].as_str().unwrap().contains(needle), "{err}");
    }
    // Three requests were accepted (the two in-tolerance timestamps and the plain key); nothing else reached the bot.
    assert_eq!(s.csml.count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csml_callers_get_csml_errors_for_limits_and_backend_failures() {
    let s = setup("legacy").await;
    let (status, err) = send(
        &s.proxy,
        "/c2c",
        &csml_caller(),
        &csml_body("text", json!({"text": "x".repeat(4000)})),
    )
    .await;
    assert_eq!((status, err["statusCode"].as_u64()), (413, Some(413)));
    let resp = reqwest::Client::new()
        .post(s.proxy.url("/c2c"))
        .headers(
            (&csml_caller()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect::<std::collections::HashMap<_, _>>())
                .try_into()
                .unwrap(),
        )
        .header("content-type", "text/plain")
        .body(csml_body("text", json!({"text": "x"})))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"], "Unsupported Media Type");
    s.csml
        .set(Behaviour::Slow(Duration::from_secs(3), ENGINE_MEDIA.into()));
    let (status, err) = send(
        &s.proxy,
        "/c2c",
        &csml_caller(),
        &csml_body("text", json!({"text": "x"})),
    )
    .await;
    assert_eq!((status, err["statusCode"].as_u64()), (504, Some(504)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_config_runs_every_demo_direction() {
    // The shipped proxy.toml, on the harness's listeners: the README's examples.
    let proxy = Proxy::start(&shipped_config()).await;
    let demo_csml = || {
        let (k, s) = csml_sign("demo-key", "demo-secret", unix_now());
        vec![("x-api-key", k), ("x-api-signature", s)]
    };
    let demo_haptik = || {
        vec![
            ("authorization", "Bearer demo-token".to_string()),
            ("client-id", "demo-client".to_string()),
        ]
    };
    let echo = "You said: Hello";
    let csml_req = json!({"client":{"user_id":"u"},"metadata":{},"payload":{"content_type":"text","content":{"text":"Hello"}}}).to_string();
    let haptik_req = haptik_body("u", "Hello", 343);
    // CSML clients on CSML's own paths and on /chat.
    for path in ["/v1/api/chat", "/prod/api/chat", "/chat"] {
        let (status, body) = send(&proxy, path, &demo_csml(), &csml_req).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["messages"][2]["payload"]["content"]["text"], echo);
    }
    // A CSML client reaching the Haptik-speaking bot, and a Haptik client reaching it (HSL answer).
    let (status, body) = send(&proxy, "/demo/haptik-bot", &demo_csml(), &csml_req).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["messages"][1]["payload"]["content_type"], "question");
    assert_eq!(body["messages"][2]["payload"]["content"]["text"], echo);
    let (status, body) = send(&proxy, "/demo/haptik-bot", &demo_haptik(), &haptik_req).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message"][2]["body"]["text"], echo);
    assert_eq!(
        body["message"][1]["body"]["data"]["quick_replies"][0]["actionable_text"],
        "Yes"
    );
    // Both kinds of client reaching the CSML engine bot.
    let (status, body) = send(&proxy, "/demo/engine", &demo_haptik(), &haptik_req).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body[0]["bot_messages"][2], echo);
    let (status, body) = send(&proxy, "/demo/engine", &demo_csml(), &csml_req).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["messages"][2]["payload"]["content"]["text"], echo);
    // Haptik and CSML clients reaching the demo Lex bot (SigV4) and the demo Dialogflow agent (an
    // access token minted at its token endpoint).
    for path in ["/demo/lex-bot", "/demo/dialogflow-bot"] {
        let (status, body) = send(&proxy, path, &demo_haptik(), &haptik_req).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(
            body[0]["bot_messages"][1], "Did that reach you?\n[Yes] [No]",
            "{path}"
        );
        assert_eq!(body[0]["bot_messages"][2], echo, "{path}");
        let (status, body) = send(&proxy, path, &demo_csml(), &csml_req).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["messages"][2]["payload"]["content"]["text"], echo);
    }
    // The README's Dialogflow client example (a static bearer token).
    let (status, body) = send(
        &proxy,
        "/v3/projects/my-project/locations/global/agents/my-agent/sessions/user-1:detectIntent",
        &[("authorization", "Bearer demo-dialogflow-token".to_string())],
        r#"{"queryInput":{"text":{"text":"Hello"},"languageCode":"en"}}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let messages = &body["queryResult"]["responseMessages"];
    assert_eq!(messages[2]["payload"]["richContent"][0][0]["type"], "chips");
    assert_eq!(messages[3]["text"]["text"][0], echo);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csml_keys_are_routed_to_their_own_backends() {
    // The signed key maps to business 77, served by the CSML bot; the plain key has no mapping and
    // goes to the route's default backend, the engine.
    let csml = CsmlBackend::start(Behaviour::Answer(ENGINE_MEDIA.into())).await;
    let engine =
        CsmlBackend::start_checking(Check::EngineKey, Behaviour::Answer(ENGINE_HELLO.into())).await;
    let mut cfg = csml_backend_toml("csml", csml.addr, "");
    cfg += &format!(
        r#"
[[backends]]
name = "engine"
dialect = "csml-engine"
url = "http://{}/run"
bot_id = "hello-bot"
channel_id = "test-channel"
api_key = "{ENGINE_KEY}"

[[routes]]
name = "keyed"
path = "/keyed"
ingress = "csml"
backend = "engine"

[[routes.businesses]]
id = 77
backend = "csml"
"#,
        engine.addr
    );
    let proxy = Proxy::start(&config_with(&cfg)).await;
    let body = csml_body("text", json!({"text": "hi"}));
    let (status, _) = send(&proxy, "/keyed", &csml_caller(), &body).await;
    assert_eq!(status, 200);
    assert_eq!(
        (csml.count(), engine.count()),
        (1, 0),
        "the signed key reached the CSML bot"
    );
    let (status, _) = send(
        &proxy,
        "/keyed",
        &[("x-api-key", CSML_PLAIN_KEY.to_string())],
        &body,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (csml.count(), engine.count()),
        (1, 1),
        "the plain key reached the engine"
    );
}
