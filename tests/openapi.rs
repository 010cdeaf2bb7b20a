//! The OpenAPI documents of the caller dialects (`docs/openapi/`): served by the admin listener, they
//! describe exactly the shipped proxy.toml's routes for each dialect, and each documented example,
//! sent with the demo credentials, gets the documented answer from the running proxy.

mod common;

use std::time::Duration;

use botbridge::config::{self, Config};
use botbridge::dialect::{caller, AnswerShape, FlowTriggerPolicy};
use common::*;
use serde_json::Value;

const DIALECTS: [&str; 5] = ["haptik", "csml", "rasa", "lex-v2", "dialogflow-cx"];

fn shipped() -> Config {
    config::parse(include_str!("../proxy.toml")).expect("the shipped config loads")
}

async fn get(url: &str) -> (u16, String, Vec<u8>) {
    let resp = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    (
        resp.status().as_u16(),
        ct,
        resp.bytes().await.unwrap().to_vec(),
    )
}

/// The schema a `$ref` names in the same document.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => doc
            .pointer(r.trim_start_matches('#'))
            .expect("the $ref resolves"),
        None => schema,
    }
}

#[tokio::test]
async fn each_document_is_served_and_lists_the_shipped_routes_of_its_dialect() {
    let proxy = Proxy::start(&shipped_config()).await;
    let config = shipped();
    for dialect in DIALECTS {
        let (status, ct, body) = get(&proxy.admin_url(&format!("/openapi/{dialect}.json"))).await;
        assert_eq!(
            (status, ct.as_str()),
            (200, "application/json"),
            "{dialect}"
        );
        let doc: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let documented: Vec<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        let c = caller(dialect).unwrap();
        let routes: Vec<_> = config.routes.iter().filter(|r| r.accepts(c)).collect();
        // A prefix route is documented as the template of the paths it takes.
        let documented_as = |r: &config::Route| -> String {
            match r.prefix {
                false => r.path.clone(),
                true => (documented.iter())
                    .find(|d| d.starts_with(&r.path))
                    .map_or_else(|| r.path.clone(), |d| d.to_string()),
            }
        };
        let shipped: Vec<String> = routes.iter().map(|r| documented_as(r)).collect();
        let mut shipped_paths: Vec<&str> = shipped.iter().map(String::as_str).collect();
        let mut documented_sorted = documented.clone();
        shipped_paths.sort_unstable();
        documented_sorted.sort_unstable();
        assert_eq!(
            documented_sorted, shipped_paths,
            "{dialect}: documented paths"
        );
        for route in routes {
            let op = &doc["paths"][&documented_as(route)]["post"];
            let answer = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
                .as_str()
                .unwrap();
            if dialect == "haptik" {
                let hsl = route.answer_shape == AnswerShape::Hsl;
                assert_eq!(
                    answer.ends_with("HslAnswer"),
                    hsl,
                    "{}: answer shape",
                    route.path
                );
            }
            // A flow trigger is refused (422) where the route rejects it and the bot has none.
            let bot = &config.backends[route.default_target.as_ref().unwrap().backend];
            let refuses = dialect == "csml"
                && route.flow_trigger == FlowTriggerPolicy::Reject
                && ["haptik", "rasa", "lex-v2"].contains(&bot.bot.dialect());
            assert_eq!(
                op["responses"].get("422").is_some(),
                refuses,
                "{}: 422",
                route.path
            );
        }
    }
    assert_eq!(get(&proxy.admin_url("/openapi/nope.json")).await.0, 404);
}

/// The demo credentials of a dialect, as headers and a query string.
fn credentials(dialect: &str) -> (Vec<(&'static str, String)>, &'static str) {
    match dialect {
        "haptik" => (
            vec![
                ("authorization", "Bearer demo-token".into()),
                ("client-id", "demo-client".into()),
            ],
            "",
        ),
        "csml" => {
            let (key, sig) = csml_sign("demo-key", "demo-secret", unix_now());
            (vec![("x-api-key", key), ("x-api-signature", sig)], "")
        }
        "rasa" => (Vec::new(), "?token=demo-rasa-token"),
        "dialogflow-cx" => (
            vec![("authorization", "Bearer demo-dialogflow-token".into())],
            "",
        ),
        other => panic!("no demo credentials for {other}"),
    }
}

/// A documented path with its `{parameters}` filled in (Lex's ids).
fn concrete(path: &str) -> String {
    (path.replace("{botId}", "ABCDEFGHIJ"))
        .replace("{botAliasId}", "TSTALIASID")
        .replace("{localeId}", "en_US")
        .replace("{sessionId}", "user-1")
        .replace("{project}", "my-project")
        .replace("{location}", "global")
        .replace("{agent}", "my-agent")
        .replace("{session}", "user-1")
}

/// The headers of a request to `path` with `body` signed with the demo Lex key (AWS SigV4, by the
/// proxy's signer: boto3 signs in tests/lex.rs).
fn lex_signed(host: &str, path: &str, body: &str) -> Vec<(&'static str, String)> {
    use botbridge::sigv4::{self, SigningKey};
    let date = sigv4::amz_date(unix_now());
    let scope = sigv4::Scope {
        date: &date[..8],
        region: "us-east-1",
        service: "lex",
    };
    let headers = [
        ("content-type", "application/json"),
        ("host", host),
        ("x-amz-date", date.as_str()),
    ];
    let request = sigv4::Request {
        method: "POST",
        path,
        query: None,
        headers: &headers,
        body: body.as_bytes(),
    };
    let signature = SigningKey::derive("demo-lex-secret", &scope).sign(&request, &date, &scope);
    let auth = sigv4::authorization(
        "DEMOACCESSKEYID",
        &scope,
        "content-type;host;x-amz-date",
        &signature,
    );
    vec![("authorization", auth), ("x-amz-date", date)]
}

#[tokio::test]
async fn every_documented_example_gets_the_documented_answer() {
    let proxy = Proxy::start(&shipped_config()).await;
    for dialect in DIALECTS {
        let doc: Value = serde_json::from_slice(
            &get(&proxy.admin_url(&format!("/openapi/{dialect}.json")))
                .await
                .2,
        )
        .unwrap();
        for (path, item) in doc["paths"].as_object().unwrap() {
            let op = &item["post"];
            let example = &op["requestBody"]["content"]["application/json"]["example"];
            let (path, body) = (concrete(path), example.to_string());
            let (headers, query) = match dialect {
                "lex-v2" => {
                    let host = format!("127.0.0.1:{}", proxy.chat_port());
                    (lex_signed(&host, &path, &body), "")
                }
                _ => credentials(dialect),
            };
            let (status, answer) = send(&proxy, &format!("{path}{query}"), &headers, &body).await;
            assert_eq!(status, 200, "{dialect} {path}: {answer}");
            let schema = resolve(
                &doc,
                &op["responses"]["200"]["content"]["application/json"]["schema"],
            );
            let (ty, required) = (schema["type"].as_str().unwrap(), &schema["required"]);
            let object = match ty {
                "array" => &answer[0],
                _ => &answer,
            };
            let required_of_items = &resolve(&doc, &schema["items"])["required"];
            let required = if ty == "array" {
                required_of_items
            } else {
                required
            };
            for field in required.as_array().unwrap() {
                let field = field.as_str().unwrap();
                assert!(
                    object.get(field).is_some(),
                    "{dialect} {path}: no `{field}` in {answer}"
                );
            }
        }
    }
}
