//! OpenTelemetry traces: the real binary with `[tracing]` exporting OTLP/HTTP to a receiver that
//! decodes it with the official protobuf definitions (`tests/vendors/otlp_receiver.py`). A caller's
//! `traceparent` is continued; the request's span has children for authentication and the bot
//! exchange; the bot gets the exchange's span as its parent; an async delivery carries the trace to
//! the callback receiver; the access log names the trace.

mod common;
mod receiver;

use std::time::{Duration, Instant};

use common::*;
use receiver::{Receiver, Reply};
use serde_json::{json, Value};

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn routes() -> &'static str {
    "\n[[routes]]\nname = \"chat\"\npath = \"/chat\"\ningress = \"auto\"\nbackend = \"bot\"\n"
}

fn tracing_table(receiver: &VendorServer, ratio: f64) -> String {
    format!(
        "\n[tracing]\nendpoint = \"http://127.0.0.1:{}/v1/traces\"\nsampling_ratio = {ratio}\nservice_name = \"bb-test\"\n",
        receiver.port
    )
}

/// The spans of `trace` the receiver has, once at least `n` arrived (the batch goes every 0.5 s).
async fn spans_of(receiver: &VendorServer, trace: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let all = receiver.received().await;
        let of: Vec<Value> = (all.as_array().unwrap().iter())
            .filter(|s| s["trace_id"] == trace)
            .cloned()
            .collect();
        if of.len() >= n {
            return of;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} spans of {trace}: {all:#}",
            of.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn named<'a>(spans: &'a [Value], name: &str) -> Vec<&'a Value> {
    spans.iter().filter(|s| s["name"] == name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_trace_is_continued_through_the_proxy_to_the_bot_and_exported() {
    let otlp = VendorServer::start("otlp_receiver.py", &[]);
    let bot = CsmlBackend::start(Behaviour::Answer(csml_answer("r", &[]))).await;
    let config = config_with(&(csml_backend_toml("bot", bot.addr, "") + routes()));
    let proxy = SpawnedProxy::start(&(config + &tracing_table(&otlp, 1.0)));
    let traceparent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let answer = reqwest::Client::new()
        .post(proxy.url("/chat"))
        .header("authorization", "Bearer acme-token")
        .header("client-id", "acme-client")
        .header("content-type", "application/json")
        .header("traceparent", &traceparent)
        .header("tracestate", "vendor=abc")
        .body(haptik_body("u", "hi", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);

    // The bot's request names the proxy's span for this try, in the caller's trace.
    let got = &bot.requests()[0];
    let to_bot = got
        .header("traceparent")
        .expect("the bot gets a traceparent");
    let parts: Vec<&str> = to_bot.split('-').collect();
    assert_eq!(
        (parts[0], parts[1], parts[3]),
        ("00", CALLER_TRACE, "01"),
        "{to_bot}"
    );
    assert_ne!(parts[2], CALLER_SPAN);
    assert_eq!(got.header("tracestate"), Some("vendor=abc"));

    let spans = spans_of(&otlp, CALLER_TRACE, 3).await;
    let request = named(&spans, "chat request");
    assert_eq!(request.len(), 1, "{spans:#?}");
    let request = request[0];
    assert_eq!(request["parent_span_id"], CALLER_SPAN);
    assert_eq!(request["kind"], "SPAN_KIND_SERVER");
    assert_eq!(request["service_name"], "bb-test");
    let attrs = &request["attributes"];
    assert_eq!(attrs["http.response.status_code"], 200);
    assert_eq!(attrs["botbridge.route"], "chat");
    assert_eq!(attrs["botbridge.caller_dialect"], "haptik");
    assert_eq!(attrs["botbridge.backend"], "bot");
    let auth = named(&spans, "authenticate");
    assert_eq!(auth.len(), 1, "{spans:#?}");
    assert_eq!(auth[0]["parent_span_id"], request["span_id"]);
    let tries = named(&spans, "bot exchange");
    assert_eq!(tries.len(), 1, "{spans:#?}");
    assert_eq!(tries[0]["parent_span_id"], request["span_id"]);
    assert_eq!(
        tries[0]["span_id"], parts[2],
        "the bot's parent is the try's span"
    );
    assert_eq!(tries[0]["kind"], "SPAN_KIND_CLIENT");
    assert_eq!(tries[0]["attributes"]["botbridge.backend"], "bot");
    assert_eq!(tries[0]["attributes"]["http.response.status_code"], 200);
    assert_eq!(
        tries[0]["attributes"]["server.address"],
        bot.addr.to_string()
    );

    // The access log names the trace.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !proxy
        .logs()
        .contains(&format!("trace_id=\"{CALLER_TRACE}\""))
    {
        assert!(Instant::now() < deadline, "{}", proxy.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Without a caller's trace, a new one: the bot's traceparent and the exported spans agree.
    let (status, _) = send(
        &proxy,
        "/chat",
        &[
            ("authorization", "Bearer acme-token".into()),
            ("client-id", "acme-client".into()),
        ],
        &haptik_body("u", "again", 1),
    )
    .await;
    assert_eq!(status, 200);
    let second = bot.requests()[1].header("traceparent").unwrap().to_owned();
    let trace = second.split('-').nth(1).unwrap().to_owned();
    assert_ne!(trace, CALLER_TRACE);
    let spans = spans_of(&otlp, &trace, 3).await;
    let request = named(&spans, "chat request");
    assert_eq!(request[0]["parent_span_id"], "", "a root span");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_delivery_carries_the_trace_to_the_callback_receiver() {
    let otlp = VendorServer::start("otlp_receiver.py", &[]);
    let rx = Receiver::start(Reply::Ok).await;
    let proxy = SpawnedProxy::start(&(shipped_config() + &tracing_table(&otlp, 1.0)));
    let (key, sig) = csml_sign("demo-key", "demo-secret", unix_now());
    let body = json!({
        "client": {"user_id": "traced"},
        "metadata": {},
        "payload": {"content_type": "text", "content": {"text": "hi"}},
        "callback_url": rx.url("/cb"),
    })
    .to_string();
    let traceparent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let headers = [
        ("x-api-key", key),
        ("x-api-signature", sig),
        ("traceparent", traceparent),
    ];
    let (status, ack) = send(&proxy, "/chat", &headers, &body).await;
    assert_eq!(status, 200, "{ack}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while rx.received().is_empty() {
        assert!(Instant::now() < deadline, "nothing delivered");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let delivered = &rx.received()[0];
    let tp = delivered
        .header("traceparent")
        .expect("the callback gets a traceparent");
    assert_eq!(tp.split('-').nth(1), Some(CALLER_TRACE), "{tp}");
    // The delivery's span ends after the request's, and may reach the receiver in a later export.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut spans = spans_of(&otlp, CALLER_TRACE, 2).await;
    while named(&spans, "async delivery").is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        spans = spans_of(&otlp, CALLER_TRACE, 2).await;
    }
    let request = named(&spans, "chat request")[0].clone();
    let deliveries = named(&spans, "async delivery");
    assert!(!deliveries.is_empty(), "{spans:#?}");
    assert_eq!(deliveries[0]["parent_span_id"], request["span_id"]);
    assert_eq!(
        deliveries[0]["attributes"]["botbridge.delivery.outcome"],
        "delivered"
    );
    let ids: Vec<&Value> = deliveries.iter().map(|d| &d["span_id"]).collect();
    assert!(
        ids.iter().any(|id| tp.contains(id.as_str().unwrap())),
        "{tp} {ids:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sampling_ratio_of_zero_exports_nothing_the_proxy_starts() {
    let otlp = VendorServer::start("otlp_receiver.py", &[]);
    let bot = CsmlBackend::start(Behaviour::Answer(csml_answer("r", &[]))).await;
    let config = config_with(&(csml_backend_toml("bot", bot.addr, "") + routes()));
    let proxy = SpawnedProxy::start(&(config + &tracing_table(&otlp, 0.0)));
    let headers = [
        ("authorization", "Bearer acme-token".to_string()),
        ("client-id", "acme-client".to_string()),
    ];
    for _ in 0..5 {
        assert_eq!(
            send(&proxy, "/chat", &headers, &haptik_body("u", "hi", 1))
                .await
                .0,
            200
        );
    }
    // Not sampled: the trace still goes on (flags 00), but nothing is exported.
    let tp = bot.requests()[0].header("traceparent").unwrap().to_owned();
    assert!(tp.ends_with("-00"), "{tp}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(otlp.received().await, json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_caller_sampling_a_caller_cannot_make_the_proxy_record_and_long_state_is_dropped() {
    let otlp = VendorServer::start("otlp_receiver.py", &[]);
    let bot = CsmlBackend::start(Behaviour::Answer(csml_answer("r", &[]))).await;
    let config = config_with(&(csml_backend_toml("bot", bot.addr, "") + routes()));
    let table = tracing_table(&otlp, 0.0) + "caller_sampling = false\n";
    let proxy = SpawnedProxy::start(&(config + &table));
    let state: Vec<String> = (0..40).map(|i| format!("v{i}=x")).collect();
    let headers = [
        ("authorization", "Bearer acme-token".to_string()),
        ("client-id", "acme-client".to_string()),
        ("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01")),
        ("tracestate", state.join(",")),
    ];
    assert_eq!(
        send(&proxy, "/chat", &headers, &haptik_body("u", "hi", 1))
            .await
            .0,
        200
    );
    let got = &bot.requests()[0];
    let tp = got.header("traceparent").unwrap();
    assert!(
        tp.contains(CALLER_TRACE) && tp.ends_with("-00"),
        "the caller's trace, not sampled: {tp}"
    );
    assert_eq!(
        got.header("tracestate"),
        None,
        "40 members are more than W3C allows"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(otlp.received().await, json!([]));
}

const LOG_MESSAGE: &str = "/v1.0/log_message_from_user/";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_holds_the_retry_the_shadow_copy_and_the_async_delivery() {
    let otlp = VendorServer::start("otlp_receiver.py", &[]);
    let hello = [json!({"content_type": "text", "content": {"text": "hello"}})];
    let bot = CsmlBackend::start(Behaviour::Answer(csml_answer("r", &hello))).await;
    let shadow = CsmlBackend::start(Behaviour::Answer(csml_answer("r", &hello))).await;
    let rx = Receiver::start(Reply::Ok).await;
    // An endpoint nothing listens on, before the live one: a try that sends nothing, then another.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let pool = csml_backend_toml("bot", bot.addr, "").replace(
        &format!("url = \"http://{}/api/chat\"", bot.addr),
        &format!(
            "urls = [\"http://{dead}/api/chat\", \"http://{}/api/chat\"]\nbalance = \"round_robin\"",
            bot.addr
        ),
    );
    let hooked = format!(
        "[[clients.haptik]]\nname = \"hooked\"\nclient_id = \"hooked-client\"\ntoken = \"hooked-token\"\nwebhook_url = \"{}\"\nwebhook_secret = \"hook-secret\"\nallow_http_callbacks = true\nallow_private_callbacks = true\n",
        rx.url("/hook")
    );
    let routes = format!(
        "[[routes]]\nname = \"log\"\npath = \"{LOG_MESSAGE}\"\ningress = \"haptik\"\nbackend = \"bot\"\nshadow = {{ backend = \"shadow\", percent = 100 }}\n"
    );
    let config = config_with(&format!(
        "{hooked}\n{pool}\n{}\n{routes}\n[delivery]\nspool_dir = \"{{DIR}}/spool\"\ndead_letter_path = \"{{DIR}}/dead.jsonl\"\njournal = \"off\"\n",
        csml_backend_toml("shadow", shadow.addr, "")
    ));
    let proxy = SpawnedProxy::start(&(config + &tracing_table(&otlp, 1.0)));
    // Round robin over two endpoints: of two requests, one tries the dead endpoint first.
    let traces = [
        "0af7651916cd43dd8448eb211c80319c",
        "0af7651916cd43dd8448eb211c80319d",
    ];
    for trace in traces {
        let headers = [
            ("authorization", "Bearer hooked-token".to_string()),
            ("client-id", "hooked-client".to_string()),
            ("traceparent", format!("00-{trace}-{CALLER_SPAN}-01")),
        ];
        let (status, ack) = send(&proxy, LOG_MESSAGE, &headers, &haptik_body("u", "hi", 343)).await;
        assert_eq!(status, 200, "{ack}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while rx.received().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "not delivered: {:?}",
            rx.received().len()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut retried = None;
    for trace in traces {
        let spans = spans_of(&otlp, trace, 5).await;
        if named(&spans, "bot exchange").len() == 2 {
            retried = Some((trace, spans));
        }
    }
    let (trace, spans) = retried.expect("one request tried the dead endpoint first");
    let request = named(&spans, "chat request")[0].clone();
    assert_eq!(request["parent_span_id"], CALLER_SPAN);
    let id = &request["span_id"];
    // Both tries, the shadow's copy and the delivery are children of the request's span.
    let tries = named(&spans, "bot exchange");
    assert!(
        tries.iter().all(|t| &t["parent_span_id"] == id),
        "{spans:#?}"
    );
    let failed: Vec<_> = tries
        .iter()
        .filter(|t| t["status"] == "STATUS_CODE_ERROR")
        .collect();
    assert_eq!(failed.len(), 1, "{spans:#?}");
    assert_eq!(failed[0]["attributes"]["server.address"], dead.to_string());
    let ok = tries
        .iter()
        .find(|t| t["attributes"]["http.response.status_code"] == 200)
        .unwrap();
    let all = spans_of(&otlp, trace, 6).await;
    let copies = named(&all, "shadow copy");
    assert_eq!(copies.len(), 1);
    assert_eq!(&copies[0]["parent_span_id"], id);
    let deliveries = named(&all, "async delivery");
    assert!(!deliveries.is_empty(), "{all:#?}");
    assert!(deliveries.iter().all(|d| &d["parent_span_id"] == id));
    // What the bots and the receiver got name the same trace and the right spans.
    let asked: Vec<String> = (bot.requests().iter())
        .filter_map(|r| r.header("traceparent").map(str::to_owned))
        .collect();
    assert!(
        asked
            .iter()
            .any(|tp| tp.contains(ok["span_id"].as_str().unwrap()) && tp.contains(trace)),
        "{asked:?}"
    );
    let copied: Vec<String> = (shadow.requests().iter())
        .filter_map(|r| r.header("traceparent").map(str::to_owned))
        .collect();
    assert!(
        copied
            .iter()
            .any(|tp| tp.contains(copies[0]["span_id"].as_str().unwrap())),
        "{copied:?}"
    );
    let hooked: Vec<String> = (rx.received().iter())
        .filter_map(|g| g.header("traceparent").map(str::to_owned))
        .collect();
    assert!(hooked.iter().any(|tp| tp.contains(trace)), "{hooked:?}");
}
