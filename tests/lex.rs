//! Amazon Lex V2 both ways, against the vendor's own code: boto3's `lexv2-runtime` client as the
//! caller (signing with botocore), and a Lex bot that checks the proxy's signatures with botocore's
//! own signer (`tests/vendors/lex_bot.py`). Every bot dialect behind a Lex caller; Haptik, CSML and
//! Rasa callers in front of the Lex bot; the refusals in Lex's own error shape.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const BOT_KEY: &str = "AKIDLEXBOT";
const BOT_SECRET: &str = "lex-bot-secret";

/// The shipped proxy.toml (its demo bots and demo Lex key), plus a Lex bot at `lex_port`, one Lex
/// route per bot dialect (each below a path prefix, as an SDK's endpoint URL can have one), and
/// routes from the other dialects to the Lex bot.
fn config(lex_port: u16) -> String {
    let mut c = shipped_config();
    c.push_str(&format!(
        r#"
[[backends]]
name = "py-lex"
dialect = "lex-v2"
url = "http://127.0.0.1:{lex_port}"
region = "eu-west-1"
bot_id = "PYBOT00001"
bot_alias_id = "TSTALIASID"
locale_id = "en_GB"
access_key_id = "{BOT_KEY}"
secret_access_key = "{BOT_SECRET}"

[[backends]]
name = "py-lex-wrong-secret"
dialect = "lex-v2"
url = "http://127.0.0.1:{lex_port}"
region = "eu-west-1"
bot_id = "PYBOT00001"
bot_alias_id = "TSTALIASID"
locale_id = "en_GB"
access_key_id = "{BOT_KEY}"
secret_access_key = "not-the-secret"

[[routes]]
name = "lex-to-haptik"
path_prefix = "/to-haptik/bots/"
ingress = "lex-v2"
backend = "demo-haptik-bot"
business_id = 343

[[routes]]
name = "lex-to-engine"
path_prefix = "/to-engine/bots/"
ingress = "lex-v2"
backend = "demo-engine"

[[routes]]
name = "lex-to-rasa"
path_prefix = "/to-rasa/bots/"
ingress = "lex-v2"
backend = "demo-rasa-bot"

[[routes]]
name = "lex-to-lex"
path_prefix = "/to-lex/bots/"
ingress = "lex-v2"
backend = "py-lex"

[[routes]]
name = "lex-limited"
path_prefix = "/limited/bots/"
ingress = "lex-v2"
backend = "demo-bot"
rate_limit = {{ requests = 1, per_seconds = 60, burst = 1 }}

[[routes]]
name = "to-py-lex"
path = "/to-py-lex"
ingress = ["haptik", "csml", "rasa"]
backend = "py-lex"
business_id = 343

[[routes]]
name = "to-py-lex-wrong"
path = "/to-py-lex-wrong"
ingress = "auto"
backend = "py-lex-wrong-secret"
"#
    ));
    c
}

fn lex_bot() -> VendorServer {
    VendorServer::start("lex_bot.py", &[BOT_KEY, BOT_SECRET, "eu-west-1"])
}

/// One boto3 RecognizeText per `(endpoint path, session, text)` with the demo Lex key (or `secret`).
async fn boto3(proxy: &Proxy, secret: &str, calls: &[(&str, &str, &str)]) -> Vec<Value> {
    let calls: Vec<Value> = calls
        .iter()
        .map(|(prefix, session, text)| {
            json!({"endpoint": proxy.url(prefix), "key": "DEMOACCESSKEYID", "secret": secret,
                   "session": session, "text": text, "attributes": {"plan": "gold"}})
        })
        .collect();
    let out = run_vendor_script_async("lex_caller.py", vec![Value::from(calls).to_string()]).await;
    out.as_array().unwrap().clone()
}

fn texts(response: &Value) -> Vec<String> {
    (response["messages"].as_array().unwrap().iter())
        .filter(|m| m["contentType"] == "PlainText")
        .map(|m| m["content"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn boto3_gets_answers_from_every_bot_dialect_through_the_proxy() {
    let bot = lex_bot();
    let proxy = Proxy::start(&config(bot.port)).await;
    let prefixes = ["", "/to-haptik", "/to-engine", "/to-rasa"];
    let calls: Vec<(&str, &str, &str)> =
        prefixes.iter().map(|p| (*p, "user:1.a", "hello")).collect();
    for (prefix, result) in prefixes
        .iter()
        .zip(boto3(&proxy, "demo-lex-secret", &calls).await)
    {
        let r = &result["ok"];
        assert_eq!(r["sessionId"], "user:1.a", "{prefix}: {result}");
        assert!(
            texts(r).contains(&"You said: hello".to_owned()),
            "{prefix}: {r}"
        );
        // The demo bots' question with two buttons is a Lex response card.
        let card = (r["messages"].as_array().unwrap().iter())
            .find(|m| m["contentType"] == "ImageResponseCard")
            .unwrap_or_else(|| panic!("{prefix}: no card in {r}"));
        let buttons = &card["imageResponseCard"]["buttons"];
        assert_eq!(buttons[0]["text"], "Yes", "{prefix}: {card}");
        assert_eq!(r["sessionState"]["dialogAction"]["type"], "ElicitIntent");
    }

    // Lex to Lex: the bot's own messages verbatim (its CustomPayload too), re-signed for the bot.
    let results = boto3(
        &proxy,
        "demo-lex-secret",
        &[
            ("/to-lex", "user:1.a", "hello"),
            ("/to-lex", "user:1.a", "bye"),
        ],
    )
    .await;
    let r = &results[0]["ok"];
    assert_eq!(texts(r), ["Lex heard: hello"]);
    assert_eq!(
        r["messages"][2],
        json!({"contentType": "CustomPayload", "content": "{\"kind\": \"custom\"}"})
    );
    assert_eq!(
        r["messages"][1]["imageResponseCard"]["imageUrl"],
        "https://example.com/pick.png"
    );
    assert_eq!(
        results[1]["ok"]["sessionState"]["dialogAction"]["type"],
        "Close"
    );
    let received = bot.received().await;
    let first = &received[0];
    assert_eq!(
        first["problem"],
        Value::Null,
        "botocore refused the proxy's signature: {first}"
    );
    assert_eq!(
        first["path"],
        "/bots/PYBOT00001/botAliases/TSTALIASID/botLocales/en_GB/sessions/user%3A1.a/text"
    );
    assert_eq!(
        first["body"],
        json!({"text": "hello", "requestAttributes": {"plan": "gold"}})
    );
    assert_eq!(first["signed"], "content-type;host;x-amz-date");
}

#[tokio::test]
async fn haptik_csml_and_rasa_callers_reach_the_lex_bot() {
    let bot = lex_bot();
    let proxy = Proxy::start(&config(bot.port)).await;
    let haptik = [
        ("authorization", "Bearer demo-token".to_owned()),
        ("client-id", "demo-client".to_owned()),
    ];
    let (status, v) = send(
        &proxy,
        "/to-py-lex",
        &haptik,
        &haptik_body("jane doe", "hi", 343),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let said = v[0]["bot_messages"].as_array().unwrap();
    assert_eq!(said[0], "Lex heard: hi");
    assert_eq!(said[1], "https://example.com/pick.png");
    assert_eq!(said[2], "Pick one\n[Yes] [No]");

    let (key, sig) = csml_sign("demo-key", "demo-secret", unix_now());
    let csml = [("x-api-key", key), ("x-api-signature", sig)];
    let body = json!({"client": {"user_id": "u-2"}, "metadata": {"plan": "gold", "seats": 3},
                      "payload": {"content_type": "text", "content": {"text": "hey"}}});
    let (status, v) = send(&proxy, "/to-py-lex", &csml, &body.to_string()).await;
    assert_eq!(status, 200, "{v}");
    let payloads: Vec<&Value> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["payload"])
        .collect();
    assert_eq!(payloads[0]["content"]["text"], "Lex heard: hey");
    assert_eq!(
        payloads[1]["content"]["url"],
        "https://example.com/pick.png"
    );
    assert_eq!(payloads[2]["content_type"], "question");
    assert_eq!(
        payloads[2]["content"]["buttons"][1]["content"]["payload"],
        "no"
    );

    let (status, v) = send(
        &proxy,
        "/to-py-lex?token=demo-rasa-token",
        &[],
        r#"{"sender":"r-3","message":"yo"}"#,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v[0]["text"], "Lex heard: yo");

    let received = bot.received().await;
    let received = received.as_array().unwrap();
    assert_eq!(received.len(), 3);
    assert!(
        received.iter().all(|r| r["problem"].is_null()),
        "{received:?}"
    );
    // A user id Lex would refuse becomes a stable hashed session id; CSML metadata become string
    // request attributes.
    let hashed = received[0]["path"].as_str().unwrap();
    assert!(hashed.contains("/sessions/bb-"), "{hashed}");
    assert_eq!(
        received[1]["body"]["requestAttributes"],
        json!({"plan": "gold", "seats": "3", "business_id": "343"})
    );
    assert!(received[2]["path"]
        .as_str()
        .unwrap()
        .ends_with("/sessions/r-3/text"));

    // The bot checks signatures for real: signed with the wrong secret, it refuses, and the caller
    // gets a 502 that repeats nothing the bot said.
    let (status, v) = send(
        &proxy,
        "/to-py-lex-wrong",
        &haptik,
        &haptik_body("u", "hi", 343),
    )
    .await;
    assert_eq!(status, 502, "{v}");
    assert!(!v.to_string().contains("mismatch"), "{v}");
    assert_eq!(bot.received().await[3]["problem"], "signature mismatch");
}

#[tokio::test]
async fn bad_signatures_stale_dates_unknown_keys_and_limits_get_lex_errors() {
    let bot = lex_bot();
    let proxy = Proxy::start_alone(&config(bot.port)).await;
    let before = scrape(&proxy).await;
    let results = boto3(&proxy, "wrong-secret", &[("/to-lex", "s-1", "hello")]).await;
    assert_eq!(
        results[0]["error"],
        json!({"code": "InvalidSignatureException", "status": 403,
               "message": "The request signature we calculated does not match the signature you provided"})
    );

    let unknown = json!([{"endpoint": proxy.url("/to-lex"), "key": "AKIDUNKNOWN", "secret": "x",
                          "session": "s-1", "text": "hello"}]);
    let out = run_vendor_script_async("lex_caller.py", vec![unknown.to_string()]).await;
    assert_eq!(
        out[0]["error"]["code"], "UnrecognizedClientException",
        "{out}"
    );
    assert_eq!(out[0]["error"]["status"], 403);

    // The proxy's clock ten minutes ahead: boto3's signature is stale.
    proxy
        .clock
        .set(std::time::SystemTime::now() + Duration::from_secs(600));
    let results = boto3(&proxy, "demo-lex-secret", &[("/to-lex", "s-1", "hello")]).await;
    assert_eq!(results[0]["error"]["code"], "InvalidSignatureException");
    assert!(results[0]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("expired"));
    proxy.clock.resume();

    assert_eq!(
        bot.received().await,
        json!([]),
        "a refused request reached the bot"
    );
    let after = scrape(&proxy).await;
    let denied = |reason: &str| {
        grew(
            &before,
            &after,
            &format!(
                r#"botbridge_auth_decisions_total{{dialect="lex-v2",reason="{reason}",result="denied"}}"#
            ),
        )
    };
    assert_eq!(
        (
            denied("bad_signature"),
            denied("invalid"),
            denied("expired")
        ),
        (1, 1, 1)
    );

    // Refused signatures spend nothing of the key's rate (its id is no secret); over the limit:
    // Lex's ThrottlingException.
    let refused = boto3(
        &proxy,
        "wrong-secret",
        &[("/limited", "s-1", "zero"), ("/limited", "s-1", "zero")],
    )
    .await;
    assert!(
        refused
            .iter()
            .all(|r| r["error"]["code"] == "InvalidSignatureException"),
        "{refused:?}"
    );
    let results = boto3(
        &proxy,
        "demo-lex-secret",
        &[("/limited", "s-1", "one"), ("/limited", "s-1", "two")],
    )
    .await;
    assert!(results[0]["ok"].is_object(), "{results:?}");
    assert_eq!(results[1]["error"]["code"], "ThrottlingException");
    assert_eq!(results[1]["error"]["status"], 429);
}

/// The README's boto3 example, run as written against the shipped proxy.toml (only the port moved).
#[tokio::test]
async fn the_readme_boto3_example_runs_as_written() {
    let proxy = Proxy::start(&shipped_config()).await;
    let readme = include_str!("../README.md");
    let start = readme
        .find("```python\nimport boto3")
        .expect("the README's boto3 example");
    let code = &readme[start + "```python\n".len()..];
    let code = &code[..code.find("```").unwrap()];
    let printed = &readme[start..];
    let printed = &printed[printed.find("prints `").unwrap() + "prints `".len()..];
    let printed = &printed[..printed.find('`').unwrap()];
    let code = code.replace("http://127.0.0.1:8080", &proxy.url(""));
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(vendor_python())
            .arg("-c")
            .arg(code)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), printed);
}
