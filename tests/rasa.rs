//! Rasa's REST channel end to end, both ways: Rasa clients at Rasa's own path in front of the demo
//! CSML bot, Haptik and CSML clients in front of a Rasa bot, the token rules, the README's examples
//! as written, what a test Rasa bot actually receives, and caller JSON no bot could read refused.

mod common;

use common::*;
use serde_json::{json, Value};

const RASA_PATH: &str = "/webhooks/rest/webhook";

fn demo_haptik() -> Vec<(&'static str, String)> {
    vec![
        ("authorization", "Bearer demo-token".to_string()),
        ("client-id", "demo-client".to_string()),
    ]
}

fn demo_csml() -> Vec<(&'static str, String)> {
    let (k, s) = csml_sign("demo-key", "demo-secret", unix_now());
    vec![("x-api-key", k), ("x-api-signature", s)]
}

fn csml_caller() -> Vec<(&'static str, String)> {
    let (k, s) = csml_sign(CSML_CALLER_KEY, CSML_CALLER_SECRET, unix_now());
    vec![("x-api-key", k), ("x-api-signature", s)]
}

fn csml_body(content_type: &str, content: Value) -> String {
    json!({"client": {"user_id": "csml-user"}, "metadata": {},
           "payload": {"content_type": content_type, "content": content}})
    .to_string()
}

fn texts(answer: &Value) -> Vec<String> {
    answer
        .as_array()
        .expect("a Rasa answer is an array")
        .iter()
        .filter_map(|m| m["text"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rasa_clients_reach_the_demo_csml_bot_with_either_token_form() {
    let proxy = Proxy::start(&shipped_config()).await;
    let body = json!({"sender": "ada", "message": "Hello"}).to_string();
    for (path, headers) in [
        (format!("{RASA_PATH}?token=demo-rasa-token"), vec![]),
        (
            RASA_PATH.to_string(),
            vec![("authorization", "Bearer demo-rasa-token".to_string())],
        ),
    ] {
        let (status, answer) = send(&proxy, &path, &headers, &body).await;
        assert_eq!(status, 200, "{path}: {answer}");
        let messages = answer.as_array().unwrap();
        assert_eq!(messages.len(), 3, "{answer}");
        assert!(messages.iter().all(|m| m["recipient_id"] == "ada"));
        assert_eq!(messages[0]["text"], "Hello from the botbridge demo bot!");
        assert_eq!(messages[1]["text"], "Did that reach you?");
        assert_eq!(
            messages[1]["buttons"],
            json!([{"title": "Yes", "payload": "YES"}, {"title": "No", "payload": "NO"}])
        );
        assert_eq!(messages[2]["text"], "You said: Hello");
    }
    // A slash message is a button click: the CSML bot gets a payload, not text.
    let click = json!({"sender": "ada", "message": "/affirm"}).to_string();
    let path = format!("{RASA_PATH}?token=demo-rasa-token");
    let (status, answer) = send(&proxy, &path, &[], &click).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(texts(&answer)[2], "You clicked: /affirm");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rasa_callers_are_refused_in_rasas_error_shape() {
    let proxy = Proxy::start(&shipped_config()).await;
    let body = json!({"sender": "ada", "message": "Hello"}).to_string();
    type Case<'a> = (String, Vec<(&'a str, String)>, &'a str, u16);
    let cases: [Case; 4] = [
        (format!("{RASA_PATH}?token=wrong"), vec![], &body, 401),
        (RASA_PATH.to_string(), vec![], &body, 401),
        (
            RASA_PATH.to_string(),
            vec![("authorization", "Bearer wrong".to_string())],
            &body,
            401,
        ),
        (
            format!("{RASA_PATH}?token=demo-rasa-token"),
            vec![],
            r#"{"sender": "ada"}"#,
            400,
        ),
    ];
    for (path, headers, body, want) in cases {
        let (status, err) = send(&proxy, &path, &headers, body).await;
        assert_eq!(status, want, "{path}: {err}");
        assert_eq!(err["status"], "failure", "{err}");
        assert_eq!(err["code"], want, "{err}");
        assert!(err["message"].is_string(), "{err}");
    }
    // The token is never echoed back.
    let (_, err) = send(&proxy, &format!("{RASA_PATH}?token=wrong"), &[], &body).await;
    assert!(!err.to_string().contains("wrong"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haptik_and_csml_clients_reach_the_demo_rasa_bot() {
    let proxy = Proxy::start(&shipped_config()).await;
    let haptik = haptik_body("ada", "Hello", 343);
    let (status, body) = send(&proxy, "/demo/rasa-bot", &demo_haptik(), &haptik).await;
    assert_eq!(status, 200, "{body}");
    let strings = &body[0]["bot_messages"];
    assert_eq!(strings[0], "Hello from the botbridge demo bot!");
    assert_eq!(strings[1], "Did that reach you?\n[Yes] [No]");
    assert_eq!(strings[2], "You said: Hello");
    let csml = json!({"client":{"user_id":"ada"},"metadata":{},
                      "payload":{"content_type":"text","content":{"text":"Hello"}}})
    .to_string();
    let (status, body) = send(&proxy, "/demo/rasa-bot", &demo_csml(), &csml).await;
    assert_eq!(status, 200, "{body}");
    let question = &body["messages"][1]["payload"];
    assert_eq!(question["content_type"], "question");
    assert_eq!(
        question["content"]["buttons"][1]["content"]["payload"],
        "NO"
    );
    assert_eq!(
        body["messages"][2]["payload"]["content"]["text"],
        "You said: Hello"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rasa_bot_gets_rasas_request_and_its_answer_is_translated() {
    // A test Rasa bot (no credential of its own: Rasa's REST channel has none).
    let answer = json!([
        {"recipient_id": "u", "text": "Pick one", "buttons": [{"title": "A", "payload": "/a"}]},
        {"recipient_id": "u", "image": "https://x.test/cat.png"},
        {"recipient_id": "u", "custom": {"anything": 1}}
    ]);
    let bot = CsmlBackend::start(Behaviour::AnswerUnchecked(answer.to_string())).await;
    let cfg = format!(
        r#"
[[backends]]
name = "rasa"
dialect = "rasa"
url = "http://{}/webhooks/rest/webhook"
token = "bot-token"

[[routes]]
name = "to-rasa"
path = "/to-rasa"
ingress = "auto"
business_id = 5
backend = "rasa"
"#,
        bot.addr
    );
    let proxy = Proxy::start(&config_with(&cfg)).await;
    let body = csml_body("text", json!({"text": "hi"}));
    let (status, out) = send(&proxy, "/to-rasa", &csml_caller(), &body).await;
    assert_eq!(status, 200, "{out}");
    let got = &bot.requests()[0];
    assert_eq!(got.path, "/webhooks/rest/webhook");
    assert_eq!(got.json()["sender"], "csml-user");
    assert_eq!(got.json()["message"], "hi");
    assert!(got.header("authorization").is_none());
    assert!(
        got.header("x-api-key").is_none(),
        "no CSML key reaches a Rasa bot"
    );
    let payloads: Vec<&Value> = out["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["payload"])
        .collect();
    assert_eq!(
        payloads.len(),
        2,
        "the custom message has no CSML rendering: {out}"
    );
    assert_eq!(payloads[0]["content_type"], "question");
    assert_eq!(
        payloads[0]["content"]["buttons"][0]["content"]["payload"],
        "/a"
    );
    assert_eq!(payloads[1]["content_type"], "image");
    // The dropped message is counted.
    let metrics = reqwest::get(proxy.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"botbridge_translation_errors_total{reason="dropped_message",route="to-rasa"} 1"#
        ),
        "{metrics}"
    );
}

/// A caller's `metadata` (and CSML `payload`) reaches a bot as written: one a bot's JSON reader
/// would refuse (a number out of range) is refused here, in the caller's dialect, naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_a_bot_could_not_read_is_refused_before_the_bot_hears_of_it() {
    let bot = CsmlBackend::start(Behaviour::Answer(csml_answer(
        "r",
        &[json!({"content_type": "text", "content": {"text": "x"}})],
    )))
    .await;
    let routes = format!(
        "{}\n[[routes]]\nname = \"rasa\"\npath = \"{RASA_PATH}\"\ningress = \"rasa\"\nbackend = \"bot\"\n\n[[routes]]\nname = \"csml\"\npath = \"/chat\"\ningress = \"csml\"\nbackend = \"bot\"\n\n[[clients.rasa]]\nname = \"web\"\ntoken = \"rasa-token\"\n",
        csml_backend_toml("bot", bot.addr, "")
    );
    let proxy = Proxy::start(&config_with(&routes)).await;
    let rasa = r#"{"sender": "u", "message": "hi", "metadata": {"a": 1e400}}"#;
    let path = format!("{RASA_PATH}?token=rasa-token");
    let (status, err) = send(&proxy, &path, &[], rasa).await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["status"], "failure", "Rasa's error shape: {err}");
    assert!(
        err["message"].as_str().unwrap().contains("`metadata`"),
        "{err}"
    );

    let plain = vec![("x-api-key", CSML_PLAIN_KEY.to_string())];
    let csml = [
        (
            r#"{"client": {"user_id": "u"}, "metadata": {"a": 1e400}, "payload": {"content_type": "text", "content": {"text": "hi"}}}"#,
            "`metadata`",
        ),
        (
            r#"{"client": {"user_id": "u"}, "payload": {"content_type": "text", "content": {"text": "hi", "n": 1e400}}}"#,
            "`payload`",
        ),
    ];
    for (body, field) in csml {
        let (status, err) = send(&proxy, "/chat", &plain, body).await;
        assert_eq!(status, 400, "{err}");
        assert_eq!(err["statusCode"], 400, "CSML's error shape: {err}");
        assert!(err["message"].as_str().unwrap().contains(field), "{err}");
    }
    assert_eq!(bot.count(), 0, "no refused request reached the bot");
    // The same requests with readable numbers do reach it.
    let (status, out) = send(&proxy, &path, &[], &rasa.replace("1e400", "1e300")).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(bot.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_without_an_auth_service_shows_its_series_at_zero() {
    // No test in this file uses an auth service, so those series stay at zero here.
    let proxy = Proxy::start(&shipped_config()).await;
    let metrics = reqwest::get(proxy.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        r#"botbridge_auth_cache_requests_total{result="hit"} 0"#,
        r#"botbridge_auth_cache_requests_total{result="miss"} 0"#,
        r#"botbridge_auth_service_errors_total{reason="timeout"} 0"#,
        r#"botbridge_auth_decisions_total{dialect="rasa",reason="ok",result="allowed"} "#,
    ] {
        assert!(metrics.contains(series), "{series} missing");
    }
}
