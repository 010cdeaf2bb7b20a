//! Google Dialogflow CX both ways, against the vendor's own code: Google's client library
//! (`google-cloud-dialogflow-cx`, REST transport, a service-account key file) as the caller, and an
//! agent whose token endpoint checks the proxy's JWT-bearer grants with google-auth
//! (`tests/vendors/dialogflow_bot.py`). Every bot dialect behind a Dialogflow caller; Haptik, CSML,
//! Rasa and Lex callers in front of the agent; tokens minted once; the refusals in Google's shape.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::{json, Value};

const BOT_EMAIL: &str = "bot@test-project.iam.gserviceaccount.com";
const CALLER_EMAIL: &str = "caller@test-project.iam.gserviceaccount.com";
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dialogflow");

/// A service-account key file for `email` with the fixture key `key` (its `token_uri` is the
/// agent's, or nowhere when the agent is not running).
fn key_file(dir: &Path, name: &str, email: &str, key: &str, token_uri: &str) -> PathBuf {
    let pem = std::fs::read_to_string(format!("{FIXTURES}/{key}.pem")).unwrap();
    let path = dir.join(name);
    let sa = json!({"type": "service_account", "project_id": "test-project", "private_key_id": "k1",
                    "private_key": pem, "client_email": email, "client_id": "1",
                    "token_uri": token_uri});
    std::fs::write(&path, sa.to_string()).unwrap();
    path
}

struct Setup {
    _dir: tempfile::TempDir,
    agent: VendorServer,
    proxy: Proxy,
    caller_key: PathBuf,
}

/// The shipped config plus the agent as `py-agent` (and as `no-tokens`, whose token endpoint is
/// down), one Dialogflow route per bot dialect (by project id), and routes to the agent.
async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let public = format!("{FIXTURES}/test-key.pub.pem");
    let agent = VendorServer::start("dialogflow_bot.py", &[BOT_EMAIL, &public]);
    let token_uri = format!("http://127.0.0.1:{}/token", agent.port);
    let bot_key = key_file(dir.path(), "bot.json", BOT_EMAIL, "test-key", &token_uri);
    let dead = key_file(
        dir.path(),
        "dead.json",
        BOT_EMAIL,
        "test-key",
        "http://127.0.0.1:1/token",
    );
    let caller_key = key_file(
        dir.path(),
        "caller.json",
        CALLER_EMAIL,
        "caller-key",
        "http://127.0.0.1:1/token",
    );
    let mut c = shipped_config();
    let route = |name: &str, project: &str, backend: &str| {
        format!("\n[[routes]]\nname = \"{name}\"\npath_prefix = \"/v3/projects/{project}/\"\ningress = \"dialogflow-cx\"\nbackend = \"{backend}\"\nbusiness_id = 343\n")
    };
    c.push_str(&format!(
        r#"
[[clients.dialogflow-cx]]
name = "service-account"
client_email = "{CALLER_EMAIL}"
public_key_file = "{FIXTURES}/caller-key.pub.pem"

[[backends]]
name = "py-agent"
dialect = "dialogflow-cx"
url = "http://127.0.0.1:{port}"
project = "test-project"
location = "global"
agent = "agent-1"
language_code = "en"
credentials_file = "{bot}"

[[backends]]
name = "no-tokens"
dialect = "dialogflow-cx"
url = "http://127.0.0.1:{port}"
project = "test-project"
location = "global"
agent = "agent-1"
language_code = "en"
credentials_file = "{dead}"

[[routes]]
name = "to-agent"
path = "/to-agent"
ingress = ["haptik", "csml", "rasa", "lex-v2"]
backend = "py-agent"
business_id = 343

[[routes]]
name = "lex-to-agent"
path_prefix = "/lex-to-agent/bots/"
ingress = "lex-v2"
backend = "py-agent"

[[routes]]
name = "agent-shadowed-by-lex"
path = "/agent-shadowed-by-lex"
ingress = "haptik"
backend = "py-agent"
shadow = {{ backend = "demo-lex-bot", percent = 100 }}

[[routes]]
name = "lex-shadowed-by-agent"
path = "/lex-shadowed-by-agent"
ingress = "haptik"
backend = "demo-lex-bot"
shadow = {{ backend = "py-agent", percent = 100 }}

[[routes]]
name = "to-no-tokens"
path = "/to-no-tokens"
ingress = "auto"
backend = "no-tokens"
"#,
        port = agent.port,
        bot = bot_key.display(),
        dead = dead.display(),
    ));
    for (project, backend) in [
        ("to-haptik", "demo-haptik-bot"),
        ("to-rasa", "demo-rasa-bot"),
        ("to-engine", "demo-engine"),
        ("to-lex", "demo-lex-bot"),
        ("to-agent", "py-agent"),
    ] {
        c.push_str(&route(project, project, backend));
    }
    let proxy = Proxy::start(&c).await;
    Setup {
        _dir: dir,
        agent,
        proxy,
        caller_key,
    }
}

async fn library(calls: Vec<Value>) -> Vec<Value> {
    let out =
        run_vendor_script_async("dialogflow_caller.py", vec![Value::from(calls).to_string()]).await;
    out.as_array().unwrap().clone()
}

/// The texts of a DetectIntentResponse.
fn texts(r: &Value) -> Vec<String> {
    (r["queryResult"]["responseMessages"]
        .as_array()
        .unwrap()
        .iter())
    .flat_map(|m| m["text"]["text"].as_array().cloned().unwrap_or_default())
    .map(|t| t.as_str().unwrap().to_owned())
    .collect()
}

fn chips(r: &Value) -> Vec<String> {
    (r["queryResult"]["responseMessages"]
        .as_array()
        .unwrap()
        .iter())
    .filter_map(|m| m["payload"]["richContent"][0].as_array())
    .flatten()
    .filter(|i| i["type"] == "chips")
    .flat_map(|i| i["options"].as_array().unwrap().clone())
    .map(|o| o["text"].as_str().unwrap().to_owned())
    .collect()
}

#[tokio::test]
async fn the_client_library_gets_answers_from_every_bot_dialect() {
    let s = setup().await;
    let endpoint = s.proxy.url("");
    let key = s.caller_key.display().to_string();
    let projects = ["demo", "to-haptik", "to-rasa", "to-engine", "to-lex"];
    let calls = projects
        .iter()
        .map(|p| {
            json!({"endpoint": endpoint, "project": p, "session": "user-1",
        "text": "hello", "key_file": key})
        })
        .collect();
    for (project, result) in projects.iter().zip(library(calls).await) {
        let r = &result["ok"];
        assert!(
            texts(r).contains(&"You said: hello".to_owned()),
            "{project}: {result}"
        );
        assert_eq!(chips(r), ["Yes", "No"], "{project}: {r}");
    }
    // A static token works too (the shipped demo token), and the agent's own messages pass through.
    let calls = vec![
        json!({"endpoint": endpoint, "project": "demo", "session": "user-2", "text": "hi", "token": "demo-dialogflow-token"}),
        json!({"endpoint": endpoint, "project": "to-agent", "session": "user-3", "text": "bye", "key_file": key}),
    ];
    let results = library(calls).await;
    assert!(
        texts(&results[0]["ok"]).contains(&"You said: hi".to_owned()),
        "{results:?}"
    );
    let agent = &results[1]["ok"];
    assert_eq!(texts(agent), ["Agent heard: bye", "Pick one"]);
    assert_eq!(
        agent["queryResult"]["responseMessages"][2]["payload"]["richContent"][0][1]["rawUrl"],
        "https://example.com/agent.png"
    );
    assert!(
        agent["queryResult"]["responseMessages"][3]
            .get("endInteraction")
            .is_some(),
        "{agent}"
    );
    let seen = s.agent.received().await;
    assert_eq!(
        seen["requests"][0]["path"],
        "/v3/projects/test-project/locations/global/agents/agent-1/sessions/user-3:detectIntent"
    );
    assert_eq!(seen["requests"][0]["token_ok"], true);
}

#[tokio::test]
async fn haptik_csml_rasa_and_lex_callers_reach_the_agent_with_one_token() {
    let s = setup().await;
    let haptik = [
        ("authorization", "Bearer demo-token".to_owned()),
        ("client-id", "demo-client".to_owned()),
    ];
    for i in 0..3 {
        let (status, v) = send(
            &s.proxy,
            "/to-agent",
            &haptik,
            &haptik_body("jane doe", &format!("hi {i}"), 343),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        let said = v[0]["bot_messages"].as_array().unwrap();
        assert_eq!(said[0], format!("Agent heard: hi {i}"));
        assert_eq!(said[1], "Pick one\n[Yes] [No]");
        assert_eq!(said[2], "https://example.com/agent.png");
    }
    let (key, sig) = csml_sign("demo-key", "demo-secret", unix_now());
    let body = json!({"client": {"user_id": "u-2"}, "metadata": {"plan": "gold"},
                      "payload": {"content_type": "flow_trigger", "content": {"flow_id": "welcome"}}});
    let (status, v) = send(
        &s.proxy,
        "/to-agent",
        &[("x-api-key", key), ("x-api-signature", sig)],
        &body.to_string(),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["messages"][0]["payload"]["content"]["text"],
        "Agent heard: event welcome"
    );
    assert_eq!(v["messages"][1]["payload"]["content_type"], "question");
    let (status, v) = send(
        &s.proxy,
        "/to-agent?token=demo-rasa-token",
        &[],
        r#"{"sender":"r-3","message":"yo"}"#,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v[0]["text"], "Agent heard: yo");
    let calls = json!([{"endpoint": s.proxy.url("/lex-to-agent"), "key": "DEMOACCESSKEYID", "secret": "demo-lex-secret",
                        "session": "lex-4", "text": "hey"}]);
    let out = run_vendor_script_async("lex_caller.py", vec![calls.to_string()]).await;
    assert_eq!(
        out[0]["ok"]["messages"][0]["content"], "Agent heard: hey",
        "{out}"
    );

    let seen = s.agent.received().await;
    // One token for every request: google-auth accepted the grant once, and it was reused.
    assert_eq!(seen["mints"], 1, "{seen}");
    let requests = seen["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 6);
    assert!(
        requests.iter().all(|r| r["token_ok"] == true),
        "{requests:?}"
    );
    // A user id Dialogflow would refuse becomes a stable session of at most 36 characters.
    let path = requests[0]["path"].as_str().unwrap();
    let session = path
        .rsplit('/')
        .next()
        .unwrap()
        .trim_end_matches(":detectIntent");
    assert!(session.starts_with("bb-") && session.len() <= 36, "{path}");
    assert_eq!(requests[1]["path"], path, "the same user kept its session");
    assert_eq!(
        requests[3]["body"],
        json!({"queryInput": {"event": {"event": "welcome"}, "languageCode": "en"},
                                           "queryParams": {"parameters": {"plan": "gold", "business_id": 343}}})
    );
}

#[tokio::test]
async fn bad_jwts_unknown_tokens_and_a_token_endpoint_that_is_down_get_clear_errors() {
    let s = setup().await;
    let proxy = &s.proxy;
    let endpoint = proxy.url("");
    let now = unix_now();
    let jwt = |key_file: &Path, claims: Value| {
        json!({"endpoint": endpoint, "project": "to-agent", "session": "u",
        "text": "hi", "raw_jwt": {"key_file": key_file.display().to_string(), "claims": claims}})
    };
    let claims = |iat: u64, aud: &str| json!({"iss": CALLER_EMAIL, "sub": CALLER_EMAIL, "aud": aud, "iat": iat, "exp": iat + 3600});
    let dir = tempfile::tempdir().unwrap();
    let impostor = key_file(
        dir.path(),
        "impostor.json",
        CALLER_EMAIL,
        "test-key",
        "http://127.0.0.1:1/token",
    );
    let calls = vec![
        jwt(
            &s.caller_key,
            claims(now, "https://dialogflow.googleapis.com/"),
        ),
        jwt(&impostor, claims(now, "https://dialogflow.googleapis.com/")),
        jwt(
            &s.caller_key,
            claims(now - 7300, "https://dialogflow.googleapis.com/"),
        ),
        jwt(&s.caller_key, claims(now, "https://example.com/")),
        json!({"endpoint": endpoint, "project": "to-agent", "session": "u", "text": "hi", "raw_token": "not-a-token"}),
    ];
    let results = library(calls).await;
    assert!(results[0]["ok"].is_object(), "{results:?}");
    for (i, why) in [(1, "signature"), (2, "expired"), (3, "not for Dialogflow")] {
        assert_eq!(results[i]["error"]["code"], 401, "{i}: {results:?}");
        assert_eq!(results[i]["error"]["status"], "UNAUTHENTICATED");
        assert!(
            results[i]["error"]["message"]
                .as_str()
                .unwrap()
                .contains(why),
            "{i}: {results:?}"
        );
    }
    assert_eq!(results[4]["error"]["code"], 401, "{results:?}");
    assert_eq!(results[4]["error"]["status"], "UNAUTHENTICATED");
    // An unsigned JWT-shaped token naming a static token's digest as its issuer finds nothing: a
    // JWT's issuer is only ever looked up among service accounts.
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        b"demo-dialogflow-token",
    ));
    let forged: Vec<Value> = [format!("token:sha256:{digest}"), format!("sha256:{digest}")]
        .into_iter()
        .map(|iss| json!({"endpoint": endpoint, "project": "demo", "session": "u", "text": "hi", "forged_iss": iss}))
        .collect();
    for r in library(forged).await {
        assert_eq!(r["error"]["code"], 401, "a forged token got in: {r}");
    }
    assert_eq!(
        s.agent.received().await["requests"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "a refused caller reached the agent"
    );

    // The token endpoint is down: a fixed 502 in the caller's dialect, counted; the next request
    // within the backoff is refused without another fetch, and nothing reaches the agent.
    let before = scrape(proxy).await;
    let haptik = [
        ("authorization", "Bearer demo-token".to_owned()),
        ("client-id", "demo-client".to_owned()),
    ];
    for _ in 0..2 {
        let (status, v) = send(
            proxy,
            "/to-no-tokens",
            &haptik,
            &haptik_body("u", "hi", 343),
        )
        .await;
        assert_eq!(status, 502, "{v}");
        assert_eq!(
            v["error_message"],
            "the bot's credentials could not be obtained; try again later"
        );
    }
    let after = scrape(proxy).await;
    assert_eq!(
        grew(
            &before,
            &after,
            r#"botbridge_token_fetches_total{backend="no-tokens",result="error"}"#
        ),
        1
    );
    assert_eq!(
        grew(
            &before,
            &after,
            r#"botbridge_backend_errors_total{backend="no-tokens",reason="backend_credentials"}"#
        ),
        2
    );
    assert_eq!(
        s.agent.received().await["requests"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// Shadows between the new dialects both ways: a Dialogflow primary copied to a Lex bot (signed with
/// SigV4 on the shadow's path), and a Lex primary copied to the Dialogflow agent (with its token).
#[tokio::test]
async fn shadows_run_between_dialogflow_and_lex_both_ways() {
    let s = setup().await;
    let proxy = &s.proxy;
    let before = scrape(proxy).await;
    let haptik = [
        ("authorization", "Bearer demo-token".to_owned()),
        ("client-id", "demo-client".to_owned()),
    ];
    for path in ["/agent-shadowed-by-lex", "/lex-shadowed-by-agent"] {
        for i in 0..2 {
            let (status, v) = send(
                proxy,
                path,
                &haptik,
                &haptik_body("u-9", &format!("hi {i}"), 343),
            )
            .await;
            assert_eq!(status, 200, "{path}: {v}");
        }
    }
    // The copies are compared off the callers' path: wait for the comparisons.
    let compared = |text: &str, route: &str| -> f64 {
        [
            "match",
            "text_differs",
            "buttons_differ",
            "kinds_differ",
            "count_differs",
        ]
        .iter()
        .filter_map(|v| {
            series_value(
                text,
                &format!("botbridge_shadow_comparisons_total{{route=\"{route}\",verdict=\"{v}\"}}"),
            )
        })
        .sum()
    };
    let mut after = scrape(proxy).await;
    for _ in 0..50 {
        if compared(&after, "agent-shadowed-by-lex") >= 2.0
            && compared(&after, "lex-shadowed-by-agent") >= 2.0
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        after = scrape(proxy).await;
    }
    for route in ["agent-shadowed-by-lex", "lex-shadowed-by-agent"] {
        let errors = format!(
            "botbridge_shadow_comparisons_total{{route=\"{route}\",verdict=\"shadow_error\"}}"
        );
        assert_eq!(
            grew(&before, &after, &errors),
            0,
            "{route}: a shadow failed"
        );
        assert!(
            compared(&after, route) - compared(&before, route) >= 2.0,
            "{route}: not compared"
        );
    }
    let seen = s.agent.received().await;
    assert_eq!(
        seen["requests"].as_array().unwrap().len(),
        4,
        "2 as primary, 2 as shadow: {seen}"
    );
    assert!(seen["requests"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["token_ok"] == true));
}

/// An access token the agent refuses (revoked, or its key deleted) is dropped at once: the next
/// request fetches a new one instead of every request failing until the old one would expire.
#[tokio::test]
async fn a_token_the_agent_refuses_is_replaced_by_the_next_request() {
    let dir = tempfile::tempdir().unwrap();
    let token = json!({"access_token": "t", "expires_in": 3600, "token_type": "Bearer"});
    let endpoint = CsmlBackend::start(Behaviour::AnswerUnchecked(token.to_string())).await;
    let refused = r#"{"error":{"code":401,"message":"no","status":"UNAUTHENTICATED"}}"#;
    let agent = CsmlBackend::start(Behaviour::Status(401, refused.into())).await;
    let uri = format!("http://{}/token", endpoint.addr);
    let key = key_file(dir.path(), "bot.json", BOT_EMAIL, "test-key", &uri);
    let proxy = Proxy::start(&config_with(&format!(
        r#"
[[backends]]
name = "agent"
dialect = "dialogflow-cx"
url = "http://{}"
project = "p"
location = "global"
agent = "a"
language_code = "en"
credentials_file = "{}"

[[routes]]
name = "chat"
path = "/chat"
ingress = "haptik"
backend = "agent"
"#,
        agent.addr,
        key.display()
    )))
    .await;
    let haptik = [
        ("authorization", "Bearer acme-token".to_owned()),
        ("client-id", "acme-client".to_owned()),
    ];
    let (status, v) = send(&proxy, "/chat", &haptik, &haptik_body("u", "hi", 1)).await;
    assert_eq!(status, 502, "{v}");
    assert_eq!(endpoint.count(), 1);
    let answer = json!({"queryResult": {"responseMessages": [{"text": {"text": ["hello"]}}]}});
    agent.set(Behaviour::AnswerUnchecked(answer.to_string()));
    let (status, v) = send(&proxy, "/chat", &haptik, &haptik_body("u", "hi", 1)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(endpoint.count(), 2, "the refused token was not replaced");
    let (status, _) = send(&proxy, "/chat", &haptik, &haptik_body("u", "hi", 1)).await;
    assert_eq!(status, 200);
    assert_eq!(endpoint.count(), 2, "a good token is kept");
}
