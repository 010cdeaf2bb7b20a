//! End to end over loopback: Haptik clients through the proxy to CSML backends. In-process, except the
//! tests that read the proxy's logs or check that its process survives (on the spawned binary).

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn route(extra: &str) -> String {
    format!(
        r#"
[[routes]]
name = "chat"
path = "/chat"
ingress = "haptik"
backend = "bot"
business_name = "acme-web"
bot_name = "acme-bot"
{extra}
"#
    )
}

async fn post<P: Urls>(
    proxy: &P,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<reqwest::Body>,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut rb = client().post(proxy.url(path)).body(body);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let resp = rb.send().await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.unwrap();
    assert_eq!(
        headers
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()),
        Some(bytes.len()),
        "exact Content-Length"
    );
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("answer is JSON: {}", String::from_utf8_lossy(&bytes)));
    (status, headers, json)
}

const AUTH: [(&str, &str); 3] = [
    ("authorization", "Bearer acme-token"),
    ("client-id", "acme-client"),
    ("content-type", "application/json"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn translates_a_haptik_request_and_the_csml_answer_field_by_field() {
    let backend = CsmlBackend::start(Behaviour::Answer(csml_answer(
        "rid-1",
        &[json!({"content_type":"text","content":{"text":"Hello there!"}})],
    )))
    .await;
    let proxy = Proxy::start(&config_with(
        &(csml_backend_toml("bot", backend.addr, "") + &route("")),
    ))
    .await;
    let before = SystemTime::now();
    let mut headers = AUTH.to_vec();
    headers.push(("x-request-id", "rid-1"));
    let (status, resp_headers, body) =
        post(&proxy, "/chat", &headers, haptik_body("user-42", "Hi", 494)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(resp_headers["x-request-id"], "rid-1");

    // What the backend received: exactly one signed CSML request, no caller credentials.
    let got = backend.requests();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/api/chat"));
    assert!(
        r.signature_ok,
        "signature checked by the backend: {:?}",
        r.headers
    );
    assert!(r
        .header("x-api-key")
        .unwrap()
        .starts_with("test-backend-key|"));
    assert_eq!(
        r.header("authorization"),
        None,
        "caller's token must not be forwarded"
    );
    assert_eq!(
        r.header("client-id"),
        None,
        "caller's client id must not be forwarded"
    );
    assert_eq!(
        r.header("content-length").unwrap(),
        r.body.len().to_string()
    );
    assert_eq!(r.header("x-request-id"), Some("rid-1"));
    assert_eq!(
        r.json(),
        json!({"client":{"user_id":"user-42"},"metadata":{"business_id":494},"request_id":"rid-1",
               "payload":{"content_type":"text","content":{"text":"Hi"}}})
    );

    // What the client received: the seed's legacy array.
    let arr = body.as_array().expect("an array");
    assert_eq!(arr.len(), 1);
    let m = &arr[0];
    assert_eq!(m["model"], "api.chatmessaged");
    assert_eq!(m["bot_messages"], json!(["Hello there!"]));
    let f = &m["fields"];
    assert_eq!(f["body"], "Hi");
    assert_eq!(f["business_id"], 494);
    assert_eq!(f["business_name"], "acme-web");
    assert_eq!(f["business_via_name"], "acme-web");
    assert_eq!(f["claim_name"], "acme-bot");
    assert_eq!(f["message_type"], 0);
    assert_eq!(f["direction"], true);
    assert_eq!(f["id"], m["pk"]);
    assert_eq!(f["agent_name"], Value::Null);
    assert_eq!(f["id_hash"].as_str().unwrap().len(), 32);
    let created = f["created_at"].as_str().unwrap();
    assert_eq!(created, f["modified_at"].as_str().unwrap());
    assert_eq!(created.len(), "2019-07-29T07:35:39.221Z".len(), "{created}");
    assert!(created.ends_with('Z'));
    let t = humantime::parse_rfc3339(created).unwrap();
    assert!(
        t + Duration::from_secs(2) >= before && t <= SystemTime::now() + Duration::from_secs(2)
    );

    // A second message gets a different id.
    let (_, _, second) = post(&proxy, "/chat", &AUTH, haptik_body("user-42", "again", 494)).await;
    assert_ne!(second[0]["pk"], m["pk"]);
    // Without an incoming X-Request-Id one is generated and sent both ways.
    let got = backend.requests();
    let rid = got[1].header("x-request-id").unwrap();
    assert_eq!(got[1].json()["request_id"], rid);
    assert!(rid.len() >= 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuses_pooled_backend_connections() {
    let backend = CsmlBackend::start(Behaviour::Answer(csml_answer("r", &[]))).await;
    let proxy = Proxy::start(&config_with(
        &(csml_backend_toml("bot", backend.addr, "") + &route("")),
    ))
    .await;
    for i in 0..20 {
        let (status, _, _) = post(
            &proxy,
            "/chat",
            &AUTH,
            haptik_body("u", &format!("m{i}"), 1),
        )
        .await;
        assert_eq!(status, 200);
    }
    assert_eq!(backend.count(), 20);
    assert_eq!(
        *backend.connections.lock().unwrap(),
        1,
        "20 sequential requests over one pooled connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renders_rich_messages_as_documented() {
    let answer = include_str!("fixtures/csml-engine/run-response-media.json");
    let backend = CsmlBackend::start(Behaviour::Answer(answer.to_string())).await;
    let proxy = Proxy::start(&config_with(
        &(csml_backend_toml("bot", backend.addr, "") + &route("")),
    ))
    .await;
    let (status, _, body) = post(&proxy, "/chat", &AUTH, haptik_body("u", "/media", 1)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body[0]["bot_messages"],
        json!([
            "https://example.com/image.jpg",
            "Example: https://example.com",
            "https://example.com/video.mp4",
            "https://example.com/audio.mp3",
            "https://example.com/file.pdf",
            "[Click me]",
            "metadata firstname=John"
        ])
    );
    backend.set(Behaviour::Answer(
        include_str!("fixtures/csml-engine/run-response-hello.json").into(),
    ));
    let (_, _, body) = post(&proxy, "/chat", &AUTH, haptik_body("u", "hi", 1)).await;
    assert_eq!(
        body[0]["bot_messages"],
        json!(["Hello there!", "What is your name?\n[Alice] [Bob]"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_and_hashed_tokens_and_the_underscore_header() {
    let backend = CsmlBackend::start(Behaviour::Answer(csml_answer("r", &[]))).await;
    let proxy = Proxy::start(&config_with(
        &(csml_backend_toml("bot", backend.addr, "") + &route("")),
    ))
    .await;
    let body = json!({"user":{"auth_id":"u"},"message_body":"https://x.test/cat.png","message_type":1,"business_id":7});
    let headers = [
        ("authorization", "Bearer hashed-token"),
        ("client_id", "hashed-client"),
        ("content-type", "application/json; charset=utf-8"),
    ];
    let (status, _, out) = post(&proxy, "/chat", &headers, body.to_string()).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out[0]["fields"]["message_type"], 1);
    assert_eq!(out[0]["bot_messages"], json!([]));
    let sent = backend.requests()[0].json();
    assert_eq!(
        sent["payload"],
        json!({"content_type":"image","content":{"url":"https://x.test/cat.png"}})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_key_mode_sends_the_key_alone() {
    let backend = CsmlBackend::start(Behaviour::AnswerUnchecked(csml_answer("r", &[]))).await;
    let backends = format!(
        r#"
[[backends]]
name = "bot"
dialect = "csml"
url = "http://{}/api/chat"
auth = "plain"
api_key = "plain-key"
"#,
        backend.addr
    );
    let proxy = Proxy::start(&config_with(&(backends + &route("")))).await;
    let (status, _, _) = post(&proxy, "/chat", &AUTH, haptik_body("u", "x", 1)).await;
    assert_eq!(status, 200);
    let r = &backend.requests()[0];
    assert_eq!(r.header("x-api-key"), Some("plain-key"));
    assert_eq!(r.header("x-api-signature"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn businesses_pick_backends_and_unknown_ones_are_refused() {
    let a = CsmlBackend::start(Behaviour::Answer(csml_answer(
        "r",
        &[json!({"content_type":"text","content":{"text":"from a"}})],
    )))
    .await;
    let b = CsmlBackend::start(Behaviour::Answer(csml_answer(
        "r",
        &[json!({"content_type":"text","content":{"text":"from b"}})],
    )))
    .await;
    let routes = r#"
[[routes]]
name = "chat"
path = "/chat"
ingress = "haptik"

[[routes.businesses]]
id = 1
backend = "a"
name = "first"

[[routes.businesses]]
id = 2
backend = "b"
"#;
    let cfg = csml_backend_toml("a", a.addr, "") + &csml_backend_toml("b", b.addr, "") + routes;
    let proxy = Proxy::start(&config_with(&cfg)).await;
    let (_, _, one) = post(&proxy, "/chat", &AUTH, haptik_body("u", "x", 1)).await;
    assert_eq!(one[0]["bot_messages"], json!(["from a"]));
    assert_eq!(one[0]["fields"]["business_name"], "first");
    let (_, _, two) = post(&proxy, "/chat", &AUTH, haptik_body("u", "x", 2)).await;
    assert_eq!(two[0]["bot_messages"], json!(["from b"]));
    assert_eq!(two[0]["fields"]["business_name"], "b");
    let (status, _, err) = post(&proxy, "/chat", &AUTH, haptik_body("u", "x", 3)).await;
    assert_eq!(status, 400);
    assert_eq!(
        err,
        json!({"error_message": "invalid business_id provided"})
    );
    assert_eq!((a.count(), b.count()), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_caller_error_is_a_haptik_error_and_reaches_no_backend() {
    let backend = CsmlBackend::start(Behaviour::Answer(csml_answer("r", &[]))).await;
    let proxy = Proxy::start(&config_with(
        &(csml_backend_toml("bot", backend.addr, "") + &route("")),
    ))
    .await;
    let ok = haptik_body("u", "hi", 1);
    let json_ct = ("content-type", "application/json");
    type Case<'a> = (Vec<(&'a str, &'a str)>, String, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![("client-id", "acme-client"), json_ct],
            ok.clone(),
            401,
            "token missing in headers",
        ),
        (
            vec![("authorization", "Bearer acme-token"), json_ct],
            ok.clone(),
            401,
            "client_id missing in headers",
        ),
        (
            vec![
                ("authorization", "Bearer wrong"),
                ("client-id", "acme-client"),
                json_ct,
            ],
            ok.clone(),
            401,
            "invalid authorization details",
        ),
        (
            vec![
                ("authorization", "Bearer acme-token"),
                ("client-id", "nobody"),
                json_ct,
            ],
            ok.clone(),
            401,
            "invalid authorization details",
        ),
        (
            vec![
                ("authorization", "Basic YWNtZTp4"),
                ("client-id", "acme-client"),
                json_ct,
            ],
            ok.clone(),
            401,
            "invalid authorization details",
        ),
        (AUTH.to_vec(), "{\"user\":".into(), 400, "malformed JSON"),
        (
            AUTH.to_vec(),
            r#"{"user":{"auth_id":"u"},"business_id":1}"#.into(),
            400,
            "message_body",
        ),
        (
            AUTH.to_vec(),
            r#"{"user":{"auth_id":7},"message_body":"x","business_id":1}"#.into(),
            400,
            "user.auth_id",
        ),
        (
            AUTH.to_vec(),
            r#"{"user":{"auth_id":"u"},"message_body":"x","business_id":"1"}"#.into(),
            400,
            "business_id",
        ),
        (AUTH.to_vec(), r#"[1,2]"#.into(), 400, "invalid body"),
        (
            vec![
                ("authorization", "Bearer acme-token"),
                ("client-id", "acme-client"),
                ("content-type", "text/plain"),
            ],
            ok.clone(),
            415,
            "application/json",
        ),
        (
            vec![
                ("authorization", "Bearer acme-token"),
                ("client-id", "acme-client"),
            ],
            ok.clone(),
            415,
            "application/json",
        ),
        (
            AUTH.to_vec(),
            haptik_body("u", &"x".repeat(4096), 1),
            413,
            "larger than 2048",
        ),
    ];
    for (headers, body, want_status, needle) in cases {
        let (status, _, err) = post(&proxy, "/chat", &headers, body.clone()).await;
        assert_eq!(status.as_u16(), want_status, "{headers:?} {body} -> {err}");
        let msg = err["error_message"]
            .as_str()
            .unwrap_or_else(|| panic!("Haptik error shape: {err}"));
        assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
        assert_eq!(err.as_object().unwrap().len(), 1, "{err}");
    }
    // Unknown path and wrong method.
    let (status, _, err) = post(&proxy, "/nope", &AUTH, ok.clone()).await;
    assert_eq!(
        (status.as_u16(), err["error_message"].is_string()),
        (404, true)
    );
    let resp = client().get(proxy.url("/chat")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "POST");
    let err: Value = resp.json().await.unwrap();
    assert!(err["error_message"].is_string());
    // A chunked body over the limit is refused too, and the connection closed.
    {
        use std::io::{Read, Write};
        let mut sock = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let head = "POST /chat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer acme-token\r\nclient-id: acme-client\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
        let _ = sock.write_all(head.as_bytes());
        for _ in 0..10 {
            let _ = sock.write_all(format!("190\r\n{}\r\n", "x".repeat(400)).as_bytes());
        }
        let _ = sock.write_all(b"0\r\n\r\n");
        let mut answer = String::new();
        let _ = sock.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains("larger than 2048"), "{answer}");
    }

    assert_eq!(backend.count(), 0, "no bad request may reach the backend");
    // And the proxy still serves good ones.
    let (status, _, _) = post(&proxy, "/chat", &AUTH, ok).await;
    assert_eq!(status, 200);
    assert_eq!(backend.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_the_connection_after_an_error() {
    let backend = CsmlBackend::start(Behaviour::Answer(csml_answer("r", &[]))).await;
    let proxy = Proxy::start(&config_with(
        &(csml_backend_toml("bot", backend.addr, "") + &route("")),
    ))
    .await;
    // One raw connection: a 401 with a body, then a good request on the same socket.
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let body = haptik_body("u", "hi", 1);
    let bad = format!("POST /chat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer no\r\nclient-id: acme-client\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    let good = format!("POST /chat HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer acme-token\r\nclient-id: acme-client\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    s.write_all(bad.as_bytes()).unwrap();
    let first = read_response(&mut s);
    assert!(first.starts_with("HTTP/1.1 401"), "{first}");
    s.write_all(good.as_bytes()).unwrap();
    let second = read_response(&mut s);
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    // Pipelined: two requests in one write are answered in order on the same connection.
    s.write_all(format!("{good}{bad}").as_bytes()).unwrap();
    let third = read_response(&mut s);
    let fourth = read_response(&mut s);
    assert!(third.starts_with("HTTP/1.1 200"), "{third}");
    assert!(fourth.starts_with("HTTP/1.1 401"), "{fourth}");
    assert_eq!(backend.count(), 2, "the two good requests, nothing else");

    fn read_response(s: &mut std::net::TcpStream) -> String {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).unwrap();
            buf.push(byte[0]);
        }
        let head = String::from_utf8(buf).unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap();
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).unwrap();
        head + &String::from_utf8(body).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_failures_are_502_or_504_and_never_wedge_the_proxy() {
    let backend = CsmlBackend::start(Behaviour::Status(500, String::new())).await;
    let garbage = RawBackend::start(b"this is not http\r\n\r\n").await;
    let dead = RefusedPort::new();
    let mut cfg = csml_backend_toml("bot", backend.addr, "");
    cfg += &csml_backend_toml("garbage", garbage.addr, "");
    cfg += &csml_backend_toml("dead", dead.addr, "");
    cfg += r#"
[[routes]]
name = "chat"
path = "/chat"
ingress = "haptik"
backend = "bot"

[[routes.businesses]]
id = 66
backend = "garbage"

[[routes.businesses]]
id = 99
backend = "dead"
"#;
    // Spawned: whether the process survives is part of the point.
    let mut proxy = SpawnedProxy::start(&config_with(&cfg));
    let check = |status: StatusCode, err: &Value, want: u16, needle: &str| {
        assert_eq!(status.as_u16(), want, "{err}");
        let msg = err["error_message"].as_str().unwrap();
        assert!(msg.contains(needle), "{msg}");
    };
    let (s, _, e) = post(&proxy, "/chat", &AUTH, haptik_body("u", "x", 1)).await;
    check(s, &e, 502, "HTTP 500");
    // Fixed messages that say what was wrong, never the bot's own text.
    backend.set(Behaviour::Answer("<html>oops</html>".into()));
    let (s, _, e) = post(&proxy, "/chat", &AUTH, haptik_body("u", "x", 1)).await;
    check(
        s,
        &e,
        502,
        "the backend answer is not a CSML answer: expected a JSON object with a `messages` array",
    );
    assert!(!e.to_string().contains("oops"), "{e}");
    backend.set(Behaviour::Answer(
        r#"{"messages":[{"payload":{"content_type":"error","content":{"error":"bot crashed"}}}]}"#
            .into(),
    ));
    let (s, _, e) = post(&proxy, "/chat", &AUTH, haptik_body("u", "x", 1)).await;
    check(s, &e, 502, "the bot reported an error");
    assert_eq!(e["error_message"], "the bot reported an error");
    assert!(!e.to_string().contains("bot crashed"), "{e}");
    let (s, _, e) = post(&proxy, "/chat", &AUTH, haptik_body("u", "x", 66)).await;
    check(s, &e, 502, "");
    let (s, _, e) = post(&proxy, "/chat", &AUTH, haptik_body("u", "x", 99)).await;
    check(s, &e, 502, "unreachable");
    backend.set(Behaviour::Slow(
        Duration::from_secs(3),
        csml_answer("r", &[]),
    ));
    let started = std::time::Instant::now();
    let (s, _, e) = post(&proxy, "/chat", &AUTH, haptik_body("u", "x", 1)).await;
    check(s, &e, 504, "1500 ms");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "timed out at the configured 1.5 s"
    );
    // The proxy is alive and serves again once the backend recovers.
    backend.set(Behaviour::Answer(csml_answer(
        "r",
        &[json!({"content_type":"text","content":{"text":"back"}})],
    )));
    let (s, _, body) = post(&proxy, "/chat", &AUTH, haptik_body("u", "x", 1)).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body[0]["bot_messages"], json!(["back"]));
    assert!(proxy.alive());

    // Metrics saw all of it, with bounded labels only.
    let metrics = client()
        .get(proxy.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        r#"botbridge_backend_errors_total{backend="bot",reason="backend_status"} 1"#,
        r#"botbridge_backend_errors_total{backend="bot",reason="backend_bad_answer"} 1"#,
        r#"botbridge_backend_errors_total{backend="bot",reason="bot_error"} 1"#,
        r#"botbridge_backend_errors_total{backend="bot",reason="backend_timeout"} 1"#,
        r#"botbridge_backend_errors_total{backend="dead",reason="backend_connect"} 1"#,
        r#"botbridge_requests_total{backend_dialect="csml",ingress="haptik",route="chat",source="backend",status_class="2xx"} 1"#,
    ] {
        assert!(metrics.contains(needle), "missing {needle}\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listener_serves_health_and_metrics() {
    let backend = CsmlBackend::start(Behaviour::Answer(csml_answer("r", &[]))).await;
    let proxy = Proxy::start_alone(&config_with(
        &(csml_backend_toml("bot", backend.addr, "") + &route("")),
    ))
    .await;
    let before = scrape(&proxy).await;
    let health = client()
        .get(proxy.admin_url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    for _ in 0..3 {
        post(&proxy, "/chat", &AUTH, haptik_body("u", "x", 1)).await;
    }
    post(
        &proxy,
        "/chat",
        &[("content-type", "application/json")],
        haptik_body("u", "x", 1),
    )
    .await;
    let resp = client()
        .get(proxy.admin_url("/metrics"))
        .send()
        .await
        .unwrap();
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = resp.text().await.unwrap();
    for (series, n) in [
        (
            r#"botbridge_requests_total{backend_dialect="csml",ingress="haptik",route="chat",source="backend",status_class="2xx"}"#,
            3,
        ),
        (
            r#"botbridge_requests_total{backend_dialect="csml",ingress="haptik",route="chat",source="proxy",status_class="4xx"}"#,
            1,
        ),
        (
            r#"botbridge_request_errors_total{reason="unauthorized",route="chat"}"#,
            1,
        ),
        (
            r#"botbridge_request_duration_seconds_count{backend_dialect="csml",ingress="haptik",route="chat"}"#,
            4,
        ),
        (
            r#"botbridge_backend_duration_seconds_count{backend="bot",route="chat"}"#,
            3,
        ),
    ] {
        assert_eq!(grew(&before, &text, series), n, "{series}");
    }
    for needle in [
        r#"botbridge_request_duration_seconds_bucket{backend_dialect="csml",ingress="haptik",route="chat",le="0.005"}"#,
        "botbridge_in_flight_requests 0",
        "botbridge_build_info{version=",
    ] {
        assert!(text.contains(needle), "missing {needle}");
    }
    assert!(!text.contains("acme-token"), "no secret in metrics");
    let resp = client()
        .get(proxy.admin_url("/other"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_no_secrets_or_message_text() {
    let backend = CsmlBackend::start(Behaviour::Answer(csml_answer("r", &[]))).await;
    let mut cfg = config_with(&(csml_backend_toml("bot", backend.addr, "") + &route("")));
    cfg = cfg.replace("filter = \"info\"", "filter = \"info\"\nformat = \"json\"");
    let proxy = SpawnedProxy::start(&cfg);
    let mut headers = AUTH.to_vec();
    headers.push(("x-request-id", "trace-me-123"));
    post(
        &proxy,
        "/chat",
        &headers,
        haptik_body("u", "my secret diary", 1),
    )
    .await;
    std::thread::sleep(Duration::from_millis(200));
    let logs = proxy.logs();
    let access = logs
        .lines()
        .find(|l| l.contains("trace-me-123"))
        .unwrap_or_else(|| panic!("access line:\n{logs}"));
    let v: Value = serde_json::from_str(access).expect("JSON log line");
    assert_eq!(v["status"], 200);
    assert_eq!(v["route"], "chat");
    assert!(v["duration_ms"].as_f64().unwrap() > 0.0);
    for secret in ["acme-token", BACKEND_SECRET, "my secret diary"] {
        assert!(!logs.contains(secret), "{secret} leaked into the logs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_config_serves_the_demo_bot() {
    // The shipped proxy.toml, spawned: the demo credentials warning is in its log.
    let proxy = SpawnedProxy::start(&shipped_config());
    let headers = [
        ("authorization", "Bearer demo-token"),
        ("client-id", "demo-client"),
        ("content-type", "application/json"),
    ];
    let (status, _, body) = post(
        &proxy,
        "/chat",
        &headers,
        haptik_body("user-1", "Hello", 343),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body[0]["bot_messages"],
        json!([
            "Hello from the botbridge demo bot!",
            "Did that reach you?\n[Yes] [No]",
            "You said: Hello"
        ])
    );
    assert_eq!(body[0]["fields"]["business_name"], "haptikwebsitechannel");
    assert!(
        proxy.logs().contains("shipped demo credentials"),
        "the demo credentials are warned about:\n{}",
        proxy.logs()
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn translation_errors_are_counted_and_bodies_logged_only_when_asked() {
    let answer = include_str!("fixtures/csml-engine/run-response-media.json");
    let backend = CsmlBackend::start(Behaviour::Answer(answer.to_string())).await;
    let cfg = config_with(&(csml_backend_toml("bot", backend.addr, "") + &route(""))).replace(
        "filter = \"info\"",
        "filter = \"info\"\nmessage_bodies = true",
    );
    let proxy =
        SpawnedProxy::start_with_env(&cfg, &[("RUST_LOG", "info,botbridge::messages=trace")]);
    // The media answer has one `object` message no Haptik client can show: one dropped message.
    let (status, _, _) = post(
        &proxy,
        "/chat",
        &AUTH,
        haptik_body("u", "tell me about whales", 1),
    )
    .await;
    assert_eq!(status, 200);
    post(&proxy, "/chat", &AUTH, "{not json".to_string()).await;
    backend.set(Behaviour::Answer("[]".into()));
    post(&proxy, "/chat", &AUTH, haptik_body("u", "x", 1)).await;
    let text = client()
        .get(proxy.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (reason, n) in [
        ("dropped_message", 1),
        ("invalid_request", 1),
        ("invalid_answer", 1),
        ("untranslatable", 0),
    ] {
        let series =
            format!("botbridge_translation_errors_total{{reason=\"{reason}\",route=\"chat\"}} {n}");
        assert!(text.contains(&series), "missing {series}");
    }
    // With message_bodies on and the messages target at trace, the bodies are logged…
    std::thread::sleep(Duration::from_millis(200));
    let logs = proxy.logs();
    assert!(
        logs.contains("tell me about whales"),
        "caller body logged:\n{logs}"
    );
    assert!(
        logs.contains("https://example.com/image.jpg"),
        "backend body logged"
    );
    assert!(!logs.contains("acme-token"), "but never credentials");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_answers_are_framed_correctly() {
    // CSML answers framed five ways by raw backends.
    fn answer(text: &str) -> String {
        format!(
            r#"{{"messages":[{{"payload":{{"content_type":"text","content":{{"text":"{text}"}}}}}}]}}"#
        )
    }
    fn leak(v: Vec<u8>) -> &'static [u8] {
        Box::leak(v.into_boxed_slice())
    }
    let body = answer("chunky");
    let (a, rest) = body.split_at(16);
    let (b, c) = rest.split_at(30);
    let mut chunked =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    chunked.extend(
        format!(
            "{:x}\r\n{a}\r\n{:x};ext=1\r\n{b}\r\n{:X}\r\n{c}\r\n0\r\nX-Trailer: t\r\n\r\n",
            a.len(),
            b.len(),
            c.len()
        )
        .into_bytes(),
    );
    let close_delimited = format!(
        "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{}",
        answer("until close")
    );
    let after = answer("after 100");
    let with_continue = format!(
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{after}",
        after.len()
    );
    let truncated = "HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{\"messages\":[";
    let conflicting =
        "HTTP/1.1 200 OK\r\nContent-Length: 10\r\nContent-Length: 12\r\n\r\n{\"messages\":[]}";
    let huge_chunk = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{\r\nffffffffffffffff\r\nx\r\n0\r\n\r\n";
    let switch = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n";
    let cases: [(&'static [u8], Result<&str, &str>); 7] = [
        (leak(chunked), Ok("chunky")),
        (leak(close_delimited.into_bytes()), Ok("until close")),
        (leak(with_continue.into_bytes()), Ok("after 100")),
        (
            truncated.as_bytes(),
            Err("closed the connection within the answer body"),
        ),
        (conflicting.as_bytes(), Err("conflicting Content-Lengths")),
        (huge_chunk.as_bytes(), Err("invalid chunk size")),
        (switch.as_bytes(), Err("switched protocols")),
    ];
    for (reply, want) in cases {
        let backend = RawBackend::start(reply).await;
        let proxy = Proxy::start(&config_with(
            &(csml_backend_toml("bot", backend.addr, "") + &route("")),
        ))
        .await;
        let (status, _, body) = post(&proxy, "/chat", &AUTH, haptik_body("u", "x", 1)).await;
        match want {
            Ok(text) => {
                assert_eq!(status, 200, "{body}");
                assert_eq!(body[0]["bot_messages"], json!([text]));
            }
            Err(needle) => {
                assert_eq!(status, 502, "{body}");
                assert!(
                    body["error_message"].as_str().unwrap().contains(needle),
                    "{body}"
                );
            }
        }
        assert_eq!(*backend.hits.lock().unwrap(), 1, "sent once");
    }
}

/// A backend that answers with keep-alive framing but then closes each connection (as backends do
/// when their keep-alive timeout passes): the pool must notice and never hand the proxy a closed
/// connection, so no request is lost to a 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_the_backend_closed_are_not_reused() {
    let answer = csml_answer("r", &[]);
    let reply = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
        answer.len()
    );
    let backend = RawBackend::start(Box::leak(reply.into_bytes().into_boxed_slice())).await;
    let proxy = Proxy::start(&config_with(
        &(csml_backend_toml("bot", backend.addr, "") + &route("")),
    ))
    .await;
    for i in 0..10 {
        let (status, _, body) = post(
            &proxy,
            "/chat",
            &AUTH,
            haptik_body("u", &format!("m{i}"), 1),
        )
        .await;
        assert_eq!(status, 200, "request {i}: {body}");
        // Let the backend's close arrive before the next request takes a connection.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        *backend.hits.lock().unwrap(),
        10,
        "each request delivered once"
    );
}
