//! Shadow traffic end to end, in-process: a copy of each sampled request reaches the shadow bot
//! once, translated and signed for it, while the caller gets exactly what it would get without a
//! shadow; pairs of test bots that answer alike or differently produce each verdict; a slow, down
//! or saturated shadow changes nothing for the caller; the divergence log.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const RASA_CLIENT: &str = "\n[[clients.rasa]]\nname = \"web\"\ntoken = \"rasa-token\"\n";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A Rasa caller's message; the answer's status and exact bytes.
async fn rasa<P: Urls>(proxy: &P, path: &str, user: &str, text: &str) -> (u16, Vec<u8>) {
    let body = json!({"sender": user, "message": text}).to_string();
    let resp = (client().post(proxy.url(&format!("{path}?token=rasa-token"))))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.bytes().await.unwrap().to_vec())
}

fn route(name: &str, backend: &str, extra: &str) -> String {
    format!(
        "\n[[routes]]\nname = \"{name}\"\npath = \"/{name}\"\ningress = \"rasa\"\nbackend = \"{backend}\"\nbusiness_id = 343\n{extra}\n"
    )
}

fn haptik_backend_toml(name: &str, addr: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "\n[[backends]]\nname = \"{name}\"\ndialect = \"haptik\"\nurl = \"http://{addr}/webhook\"\ntoken = \"{HAPTIK_BACKEND_TOKEN}\"\nclient_id = \"{HAPTIK_BACKEND_CLIENT}\"\nread_timeout_ms = 1500\n{extra}\n"
    )
}

/// The route's part of `/migration.json`.
async fn report<P: Urls>(proxy: &P, route: &str) -> Value {
    let all: Value = (client()
        .get(proxy.admin_url("/migration.json"))
        .send()
        .await
        .unwrap())
    .json()
    .await
    .unwrap();
    let routes = all["routes"].as_array().unwrap();
    routes.iter().find(|r| r["route"] == route).unwrap().clone()
}

/// Waits (10 s at most) until the route's shadow has compared `n` pairs; returns its report.
async fn pairs<P: Urls>(proxy: &P, route: &str, n: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = report(proxy, route).await;
        let done = r["report"]["pairs"].as_u64().unwrap_or(0);
        assert!(done <= n, "{route}: more pairs than copies: {r}");
        if done == n {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{route}: {done} of {n} pairs after 10 s: {r}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn verdict_count(r: &Value, verdict: &str) -> u64 {
    let list = r["report"]["verdicts"].as_array().unwrap();
    let v = list.iter().find(|v| v["verdict"] == verdict).unwrap();
    v["count"].as_u64().unwrap()
}

fn text(t: &str) -> Value {
    json!({"content_type": "text", "content": {"text": t}})
}

fn question(title: &str, buttons: &[(&str, &str)]) -> Value {
    let buttons: Vec<Value> = (buttons.iter())
        .map(|(t, p)| json!({"content_type": "button", "content": {"title": t, "payload": p}}))
        .collect();
    json!({"content_type": "question", "content": {"title": title, "buttons": buttons}})
}

/// The HSL answer of a Haptik bot saying what `PRIMARY` says.
fn hsl_same_as_primary() -> String {
    json!({
        "version": "1.0", "timestamp": "2018-10-04T12:41:27.980Z",
        "agent": {"id": 1, "name": "new", "profile_image": "", "is_automated": true},
        "message": [
            {"id": 1, "body": {"text": "Hi there!", "type": "TEXT", "data": {"quick_replies": []}}},
            {"id": 2, "body": {"text": "Pick one", "type": "TEXT", "data": {"quick_replies": [
                {"actionable_text": "Red", "is_default": 0, "type": "TEXT_ONLY", "payload": {"message": "RED", "gogo_message": ""}},
                {"actionable_text": "Blue", "is_default": 0, "type": "TEXT_ONLY", "payload": {"message": "BLUE", "gogo_message": ""}}]}}}
        ]
    })
    .to_string()
}

fn primary_answer() -> String {
    csml_answer(
        "r",
        &[
            text("Hi there!"),
            question("Pick one", &[("Red", "RED"), ("Blue", "BLUE")]),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sampled_request_reaches_the_shadow_once_and_the_caller_gets_the_same_bytes() {
    let old = CsmlBackend::start(Behaviour::Answer(primary_answer())).await;
    let new = CsmlBackend::start_checking(
        Check::HaptikBearer,
        Behaviour::Answer(hsl_same_as_primary()),
    )
    .await;
    let cfg = csml_backend_toml("old", old.addr, "")
        + &haptik_backend_toml("new", new.addr, "")
        + &route("plain", "old", "")
        + &route(
            "mirrored",
            "old",
            "shadow = { backend = \"new\", percent = 100, user_prefix = \"shadow-\" }",
        )
        + RASA_CLIENT;
    let proxy = Proxy::start(&config_with(&cfg)).await;
    const N: usize = 20;
    for i in 0..N {
        let (user, msg) = (format!("user-{i}"), format!("message {i}"));
        let plain = rasa(&proxy, "/plain", &user, &msg).await;
        let mirrored = rasa(&proxy, "/mirrored", &user, &msg).await;
        assert_eq!(plain.0, 200, "{}", String::from_utf8_lossy(&plain.1));
        assert_eq!(
            plain, mirrored,
            "the caller's answer is the same with a shadow"
        );
    }
    let r = pairs(&proxy, "mirrored", N as u64).await;
    assert_eq!(verdict_count(&r, "match"), N as u64, "{r}");
    assert_eq!(r["report"]["copies_sent"], N as u64);
    // Each request once, in the shadow's dialect, with its own credentials, the user prefixed.
    let got = new.requests();
    assert_eq!(got.len(), N);
    for i in 0..N {
        let seen: Vec<_> = (got.iter())
            .filter(|r| r.json()["message_body"] == format!("message {i}"))
            .collect();
        assert_eq!(seen.len(), 1, "message {i} reached the shadow once");
        assert!(seen[0].signature_ok, "signed with the shadow's own token");
        assert_eq!(
            seen[0].json()["user"]["auth_id"],
            format!("shadow-user-{i}")
        );
        assert_eq!(seen[0].json()["business_id"], 343);
    }
    assert_eq!(
        old.count(),
        2 * N,
        "the primary got only the callers' requests"
    );
    assert!(r["report"]["latency_ms"]["shadow"]["p99"]
        .as_f64()
        .is_some());
}

/// A route whose primary answers `primary` and whose shadow (a CSML bot) answers `shadow`.
struct Pair {
    name: &'static str,
    primary: Vec<Value>,
    shadow: Behaviour,
    verdict: &'static str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_verdict_comes_from_a_pair_of_bots_that_answer_alike_or_differently() {
    let q = || question("Pick one", &[("Red", "RED"), ("Blue", "BLUE")]);
    let answer = |msgs: &[Value]| Behaviour::Answer(csml_answer("r", msgs));
    let pairs_list = vec![
        Pair {
            name: "alike",
            primary: vec![text("Hi!"), q()],
            shadow: answer(&[text("hi"), q()]),
            verdict: "match",
        },
        Pair {
            name: "wording",
            primary: vec![text("Hi!")],
            shadow: answer(&[text("Goodbye")]),
            verdict: "text_differs",
        },
        Pair {
            name: "kinds",
            primary: vec![text("Hi!"), q()],
            shadow: answer(&[q(), text("Hi!")]),
            verdict: "kinds_differ",
        },
        Pair {
            name: "buttons",
            primary: vec![q()],
            shadow: answer(&[question("Pick one", &[("Red", "RED"), ("Green", "GREEN")])]),
            verdict: "buttons_differ",
        },
        Pair {
            name: "count",
            primary: vec![text("Hi!")],
            shadow: answer(&[text("Hi!"), q()]),
            verdict: "count_differs",
        },
        Pair {
            name: "failing",
            primary: vec![text("Hi!")],
            shadow: Behaviour::Status(500, "{}".into()),
            verdict: "shadow_error",
        },
    ];
    let mut bots = Vec::new();
    let mut cfg = String::from(RASA_CLIENT);
    for p in &pairs_list {
        let primary = CsmlBackend::start(answer(&p.primary)).await;
        let shadow = CsmlBackend::start(p.shadow.clone()).await;
        let (old, new) = (format!("{}-old", p.name), format!("{}-new", p.name));
        cfg += &csml_backend_toml(&old, primary.addr, "");
        cfg += &csml_backend_toml(&new, shadow.addr, "");
        cfg += &route(p.name, &old, &format!("shadow = {{ backend = \"{new}\" }}"));
        bots.push((primary, shadow));
    }
    let proxy = Proxy::start(&config_with(&cfg)).await;
    for p in &pairs_list {
        for i in 0..2 {
            let (status, _) =
                rasa(&proxy, &format!("/{}", p.name), &format!("u{i}"), "hello").await;
            assert_eq!(status, 200);
        }
    }
    for p in &pairs_list {
        let r = pairs(&proxy, p.name, 2).await;
        assert_eq!(verdict_count(&r, p.verdict), 2, "{}: {r}", p.name);
        let series = format!(
            "botbridge_shadow_comparisons_total{{route=\"{}\",verdict=\"{}\"}}",
            p.name, p.verdict
        );
        // Route names are this test's own, so the process-wide counter is this proxy's.
        assert_eq!(series_value(&scrape(&proxy).await, &series), Some(2.0));
        let latest = r["report"]["latest"].as_array().unwrap();
        if p.verdict == "match" {
            assert!(latest.is_empty());
            assert_eq!(
                r["report"]["exact_rate"], 0.0,
                "matched only once normalised"
            );
        } else {
            assert_eq!(latest.len(), 2);
            assert_eq!(latest[0]["verdict"], p.verdict);
        }
    }
    let failing = report(&proxy, "failing").await;
    assert_eq!(
        failing["report"]["latest"][0]["shadow_error"],
        "backend_status"
    );
    let kinds = report(&proxy, "kinds").await;
    let rows = kinds["report"]["kinds"].as_array().unwrap();
    assert!(
        rows.iter().all(|k| k["differing"] == k["compared"]),
        "{rows:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_down_shadow_changes_nothing_for_the_caller() {
    let old = CsmlBackend::start(Behaviour::Answer(csml_answer("r", &[text("Hi!")]))).await;
    let slow = CsmlBackend::start(Behaviour::Slow(
        Duration::from_secs(5),
        csml_answer("r", &[text("Hi!")]),
    ))
    .await;
    let down = RefusedPort::new();
    let cfg = csml_backend_toml("old", old.addr, "")
        + &csml_backend_toml("slow", slow.addr, "")
        + &csml_backend_toml("down", down.addr, "")
        + &route("alone", "old", "")
        + &route("slowly", "old", "shadow = { backend = \"slow\" }")
        + &route("downed", "old", "shadow = { backend = \"down\" }")
        + RASA_CLIENT;
    let proxy = Proxy::start(&config_with(&cfg)).await;
    for i in 0..3 {
        let user = format!("user-{i}");
        let alone = rasa(&proxy, "/alone", &user, "hello").await;
        for path in ["/slowly", "/downed"] {
            let started = Instant::now();
            let got = rasa(&proxy, path, &user, "hello").await;
            let took = started.elapsed();
            assert_eq!(got, alone, "{path}: the same answer");
            // The slow shadow answers after 5 s (and times out at 1.5 s): the caller never waits.
            assert!(took < Duration::from_secs(1), "{path}: took {took:?}");
        }
    }
    for (route, reason) in [("slowly", "backend_timeout"), ("downed", "backend_connect")] {
        let r = pairs(&proxy, route, 3).await;
        assert_eq!(verdict_count(&r, "shadow_error"), 3, "{r}");
        assert_eq!(r["report"]["latest"][0]["shadow_error"], reason);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_beyond_the_queue_are_dropped_and_counted() {
    let old = CsmlBackend::start(Behaviour::Answer(csml_answer("r", &[text("Hi!")]))).await;
    let slow = CsmlBackend::start(Behaviour::Slow(
        Duration::from_millis(1200),
        csml_answer("r", &[text("Hi!")]),
    ))
    .await;
    let cfg = csml_backend_toml("old", old.addr, "")
        + &csml_backend_toml("slow", slow.addr, "")
        + &route(
            "narrow",
            "old",
            "shadow = { backend = \"slow\", max_in_flight = 1, max_queued = 1 }",
        )
        + RASA_CLIENT;
    let proxy = Proxy::start(&config_with(&cfg)).await;
    for i in 0..6 {
        let (status, _) = rasa(&proxy, "/narrow", &format!("user-{i}"), "hello").await;
        assert_eq!(status, 200);
    }
    // Sent copies are counted by their task when it starts, dropped ones at once.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (sent, dropped) = loop {
        let r = report(&proxy, "narrow").await;
        let count = |k: &str| r["report"][k].as_u64().unwrap_or(0);
        let (sent, dropped) = (count("copies_sent"), count("copies_dropped"));
        assert!(sent + dropped <= 6, "{r}");
        if sent + dropped == 6 {
            break (Some(sent), Some(dropped));
        }
        assert!(Instant::now() < deadline, "{r}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        dropped.unwrap() >= 1,
        "one in flight and one waiting, the rest dropped: {dropped:?}"
    );
    let m = scrape(&proxy).await;
    let series = "botbridge_shadow_requests_total{outcome=\"dropped\",route=\"narrow\"}";
    assert_eq!(series_value(&m, series), dropped.map(|d| d as f64), "{m}");
    pairs(&proxy, "narrow", sent.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_divergence_log_has_sampled_mismatches_with_text_only_when_bodies_are_logged() {
    let old = CsmlBackend::start(Behaviour::Answer(csml_answer("r", &[text("Hello!")]))).await;
    let new = CsmlBackend::start(Behaviour::Answer(csml_answer("r", &[text("Goodbye")]))).await;
    let cfg = csml_backend_toml("old", old.addr, "")
        + &csml_backend_toml("new", new.addr, "")
        + &route(
            "logged",
            "old",
            "shadow = { backend = \"new\", log_percent = 50 }",
        )
        + RASA_CLIENT
        + "\n[migration]\ndivergence_log = \"{DIR}/divergences.jsonl\"\n";
    for bodies in [false, true] {
        let text = config_with(&cfg).replace(
            "filter = \"info\"",
            &format!("filter = \"info\"\nmessage_bodies = {bodies}"),
        );
        let proxy = Proxy::start(&text).await;
        for i in 0..4 {
            rasa(&proxy, "/logged", &format!("user-{i}"), "hello").await;
        }
        pairs(&proxy, "logged", 4).await;
        let path = proxy.config_path.with_file_name("divergences.jsonl");
        let log = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "half of the 4 divergences: {log}");
        for l in &lines {
            assert_eq!(l["route"], "logged");
            assert_eq!(l["verdict"], "text_differs");
            assert!(l["request_id"].as_str().is_some_and(|r| !r.is_empty()));
            assert_eq!(l["primary"][0]["kind"], "text");
            assert_eq!(l["primary"][0]["length"], 6);
            assert_eq!(l["shadow"][0]["length"], 7);
            let shown = (l["primary"][0].get("text"), l["shadow"][0].get("text"));
            if bodies {
                assert_eq!(shown, (Some(&json!("Hello!")), Some(&json!("Goodbye"))));
            } else {
                assert_eq!(shown, (None, None), "redacted: {l}");
                assert!(!log.contains("Hello!") && !log.contains("Goodbye"));
            }
        }
    }
}

/// A canary between two of the new dialects, on the shipped demo bots: a Dialogflow route whose
/// canary share goes to the Lex bot (shadows between them both ways: `tests/dialogflow.rs`).
#[tokio::test]
async fn a_dialogflow_route_with_a_lex_canary_sends_its_share_to_lex() {
    let mut c = shipped_config();
    c.push_str(
        "\n[[routes]]\nname = \"df-lex-canary\"\npath = \"/df-lex-canary\"\ningress = \"rasa\"\nbackend = \"demo-dialogflow-bot\"\ncanary = { backend = \"demo-lex-bot\", percent = 100 }\n",
    );
    c.push_str(RASA_CLIENT);
    let proxy = Proxy::start(&c).await;
    let before = scrape(&proxy).await;
    let (status, body) = rasa(&proxy, "/df-lex-canary", "u3", "hello").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let after = scrape(&proxy).await;
    let canary = r#"botbridge_canary_requests_total{route="df-lex-canary",side="canary"}"#;
    assert_eq!(grew(&before, &after, canary), 1);
}
