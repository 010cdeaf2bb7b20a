//! The OpenAPI documents of the caller dialects (`docs/openapi/`): served by the admin listener, they
//! describe exactly the shipped proxy.toml's routes for each dialect, and each documented example,
//! sent with the demo credentials, gets the documented answer from the running proxy.

mod common;

use std::time::Duration;

use botbridge::config::{self, Config};
use botbridge::dialect::{caller, AnswerShape, FlowTriggerPolicy};
use common::*;
use serde_json::Value;

const DIALECTS: [&str; 3] = ["haptik", "csml", "rasa"];

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
        let mut shipped_paths: Vec<&str> = routes.iter().map(|r| r.path.as_str()).collect();
        let mut documented_sorted = documented.clone();
        shipped_paths.sort_unstable();
        documented_sorted.sort_unstable();
        assert_eq!(
            documented_sorted, shipped_paths,
            "{dialect}: documented paths"
        );
        for route in routes {
            let op = &doc["paths"][&route.path]["post"];
            let answer = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
                .as_str()
                .unwrap();
            if dialect == "haptik" {
                let hsl = route.haptik_answer == AnswerShape::Hsl;
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
                && ["haptik", "rasa"].contains(&bot.bot.dialect());
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
        _ => (Vec::new(), "?token=demo-rasa-token"),
    }
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
            let (headers, query) = credentials(dialect);
            let (status, answer) = send(
                &proxy,
                &format!("{path}{query}"),
                &headers,
                &example.to_string(),
            )
            .await;
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
