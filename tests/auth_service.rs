//! The auth service, the decision cache, least privilege, the replay guard and log hygiene, against a
//! real auth service over loopback (a small hyper server that counts its calls).
//!
//! In-process; the tests that count metrics (process-wide here) start their proxy alone and count
//! differences between scrapes. Log hygiene is checked on the spawned binary's log.

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

const SERVICE_BEARER: &str = "auth-service-bearer";

#[derive(Clone, Debug)]
enum Mode {
    Normal,
    /// Refuse every credential.
    DenyAll,
    Slow(Duration),
    Status(u16),
}

/// The test auth service: knows a few credentials, answers `{"valid": false}` for the rest.
struct AuthMock {
    url: String,
    calls: Arc<Mutex<Vec<Value>>>,
    mode: Arc<Mutex<Mode>>,
    task: tokio::task::JoinHandle<()>,
}

fn verdict(q: &Value) -> Value {
    match (
        q["dialect"].as_str(),
        q["client_id"].as_str(),
        q["token"].as_str(),
        q["key"].as_str(),
    ) {
        (Some("haptik"), Some("svc-client"), Some("svc-token"), _) => {
            json!({"valid": true, "name": "svc-haptik"})
        }
        (Some("haptik"), Some("scoped-client"), Some("scoped-token"), _) => {
            json!({"valid": true, "name": "scoped", "routes": ["other"]})
        }
        (Some("csml"), _, _, Some("svc-key")) => {
            json!({"valid": true, "name": "svc-csml", "secret": "svc-secret", "business_id": 77, "businesses": [77]})
        }
        (Some("csml"), _, _, Some("svc-plain")) => json!({"valid": true, "auth": "plain"}),
        _ => json!({"valid": false}),
    }
}

impl AuthMock {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/verify", listener.local_addr().unwrap());
        let calls = Arc::new(Mutex::new(Vec::new()));
        let mode = Arc::new(Mutex::new(Mode::Normal));
        let (c, m) = (calls.clone(), mode.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (c, m) = (c.clone(), m.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (c, m) = (c.clone(), m.clone());
                        async move {
                            let authorized = req
                                .headers()
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                == Some(&format!("Bearer {SERVICE_BEARER}")[..]);
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let q: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            c.lock().unwrap().push(q.clone());
                            let mode = m.lock().unwrap().clone();
                            let (status, out) = match mode {
                                _ if !authorized => (401, json!({"error": "who are you"})),
                                Mode::Normal => (200, verdict(&q)),
                                Mode::DenyAll => (200, json!({"valid": false})),
                                Mode::Slow(d) => {
                                    tokio::time::sleep(d).await;
                                    (200, verdict(&q))
                                }
                                Mode::Status(s) => (s, json!({})),
                            };
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(out.to_string())))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        AuthMock {
            url,
            calls,
            mode,
            task,
        }
    }

    fn calls(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    fn set(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
    }
}

impl Drop for AuthMock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn config(backend: &CsmlBackend, service_url: &str, service: &str, clients_extra: &str) -> String {
    let mut cfg = csml_backend_toml("bot", backend.addr, "");
    cfg += r#"
[[routes]]
name = "chat"
path = "/chat"
ingress = "auto"
backend = "bot"

[[routes]]
name = "other"
path = "/other"
ingress = "auto"
backend = "bot"
"#;
    cfg += &format!(
        r#"
[auth_service]
url = "{service_url}"
bearer = "{SERVICE_BEARER}"
{service}
"#
    );
    config_with(&cfg).replace(
        "csml_tolerance_secs = 300",
        &format!("csml_tolerance_secs = 300\n{clients_extra}"),
    )
}

fn haptik(client: &str, token: &str) -> Vec<(&'static str, String)> {
    vec![
        ("authorization", format!("Bearer {token}")),
        ("client-id", client.to_string()),
    ]
}

fn csml_signed(key: &str, secret: &str) -> Vec<(&'static str, String)> {
    let (k, s) = csml_sign(key, secret, unix_now());
    vec![("x-api-key", k), ("x-api-signature", s)]
}

fn csml_text() -> String {
    json!({"client":{"user_id":"u"},"payload":{"content_type":"text","content":{"text":"hi"}}})
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_hit_makes_no_call() {
    let backend = CsmlBackend::start(Behaviour::Answer(csml_answer("r", &[]))).await;
    let svc = AuthMock::start().await;
    let proxy = Proxy::start_alone(&config(&backend, &svc.url, "positive_ttl_s = 60", "")).await;
    let before = scrape(&proxy).await;
    for _ in 0..5 {
        let (status, body) = send(
            &proxy,
            "/chat",
            &haptik("svc-client", "svc-token"),
            &haptik_body("u", "hi", 1),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(svc.calls(), 1, "one call, then four cache hits");
    assert_eq!(
        svc.calls.lock().unwrap()[0],
        json!({"dialect":"haptik","client_id":"svc-client","token":"svc-token"})
    );
    // Configured credentials never reach the service.
    let (status, _) = send(
        &proxy,
        "/chat",
        &haptik("acme-client", "acme-token"),
        &haptik_body("u", "hi", 1),
    )
    .await;
    assert_eq!(status, 200);
    // A CSML key the service vouches for: its secret comes back and the proxy checks the signature.
    for _ in 0..3 {
        let (status, body) = send(
            &proxy,
            "/chat",
            &csml_signed("svc-key", "svc-secret"),
            &csml_text(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = send(
        &proxy,
        "/chat",
        &csml_signed("svc-key", "wrong-secret"),
        &csml_text(),
    )
    .await;
    assert_eq!(
        (status, body["message"].as_str()),
        (401, Some("invalid signature"))
    );
    assert_eq!(svc.calls(), 2, "one call per credential");
    // The service's business mapping routes the CSML caller: business 77.
    assert_eq!(
        backend.requests().last().unwrap().json()["metadata"],
        json!({"business_id": 77})
    );
    let m = scrape(&proxy).await;
    assert_eq!(
        grew(
            &before,
            &m,
            "botbridge_auth_cache_requests_total{result=\"hit\"}"
        ),
        4 + 3
    );
    assert_eq!(
        grew(
            &before,
            &m,
            "botbridge_auth_cache_requests_total{result=\"miss\"}"
        ),
        2
    );
    assert_eq!(
        grew(&before, &m, "botbridge_auth_service_duration_seconds_count"),
        2
    );
    assert_eq!(
        grew(
            &before,
            &m,
            "botbridge_auth_decisions_total{dialect=\"haptik\",reason=\"ok\",result=\"allowed\"}"
        ),
        6
    );
    assert_eq!(grew(&before, &m, "botbridge_auth_decisions_total{dialect=\"csml\",reason=\"bad_signature\",result=\"denied\"}"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_expire_after_their_ttls() {
    let backend = CsmlBackend::start(Behaviour::Answer(csml_answer("r", &[]))).await;
    let svc = AuthMock::start().await;
    let proxy = Proxy::start_alone(&config(
        &backend,
        &svc.url,
        "positive_ttl_s = 2\nnegative_ttl_s = 1",
        "",
    ))
    .await;
    let before = scrape(&proxy).await;
    let unknown = haptik("nobody", "nothing");
    let body = haptik_body("u", "hi", 1);
    let (status, err) = send(&proxy, "/chat", &unknown, &body).await;
    assert_eq!(
        (status, err["error_message"].as_str()),
        (401, Some("invalid authorization details"))
    );
    let (status, _) = send(&proxy, "/chat", &unknown, &body).await;
    assert_eq!((status, svc.calls()), (401, 1), "the refusal is cached");
    let (status, _) = send(&proxy, "/chat", &haptik("svc-client", "svc-token"), &body).await;
    assert_eq!((status, svc.calls()), (200, 2));
    tokio::time::sleep(Duration::from_millis(1300)).await;
    // Past the negative TTL, still within the positive one.
    send(&proxy, "/chat", &unknown, &body).await;
    assert_eq!(svc.calls(), 3, "the refusal expired after negative_ttl_s");
    send(&proxy, "/chat", &haptik("svc-client", "svc-token"), &body).await;
    assert_eq!(svc.calls(), 3, "the grant is still cached");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    send(&proxy, "/chat", &haptik("svc-client", "svc-token"), &body).await;
    assert_eq!(svc.calls(), 4, "the grant expired after positive_ttl_s");
    // Clearing the cache (admin) forgets everything.
    let resp = reqwest::Client::new()
        .post(proxy.admin_url("/auth-cache/clear"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    send(&proxy, "/chat", &haptik("svc-client", "svc-token"), &body).await;
    assert_eq!(svc.calls(), 5);
    assert!(
        grew(
            &before,
            &scrape(&proxy).await,
            "botbridge_auth_cache_evictions_total{cause=\"explicit\"}"
        ) >= 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_misses_make_one_call() {
    let backend = CsmlBackend::start(Behaviour::Answer(csml_answer("r", &[]))).await;
    let svc = AuthMock::start().await;
    svc.set(Mode::Slow(Duration::from_millis(300)));
    let proxy = Proxy::start(&config(&backend, &svc.url, "timeout_ms = 3000", "")).await;
    let proxy = Arc::new(proxy);
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let proxy = proxy.clone();
        tasks.push(tokio::spawn(async move {
            send(
                &proxy,
                "/chat",
                &haptik("stranger", "guess"),
                &haptik_body("u", "hi", 1),
            )
            .await
            .0
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 401);
    }
    assert_eq!(
        svc.calls(),
        1,
        "single flight: one call for 100 concurrent misses"
    );
    assert_eq!(backend.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_or_slow_service_fails_closed_in_the_callers_dialect() {
    let backend = CsmlBackend::start(Behaviour::Answer(csml_answer("r", &[]))).await;
    let down = RefusedPort::new();
    let dead = format!("http://{}/verify", down.addr);
    let proxy = Proxy::start_alone(&config(&backend, &dead, "timeout_ms = 300", "")).await;
    let before = scrape(&proxy).await;
    let (status, err) = send(
        &proxy,
        "/chat",
        &haptik("svc-client", "svc-token"),
        &haptik_body("u", "hi", 1),
    )
    .await;
    assert_eq!(status, 503);
    assert!(err["error_message"]
        .as_str()
        .unwrap()
        .contains("authentication service is unavailable"));
    let (status, err) = send(
        &proxy,
        "/chat",
        &csml_signed("svc-key", "svc-secret"),
        &csml_text(),
    )
    .await;
    assert_eq!((status, err["statusCode"].as_u64()), (503, Some(503)));
    // Configured credentials keep working without the service.
    let (status, _) = send(
        &proxy,
        "/chat",
        &haptik("acme-client", "acme-token"),
        &haptik_body("u", "hi", 1),
    )
    .await;
    assert_eq!(status, 200);
    let m = scrape(&proxy).await;
    assert_eq!(
        grew(
            &before,
            &m,
            "botbridge_auth_service_errors_total{reason=\"connect\"}"
        ),
        2
    );
    assert_eq!(grew(&before, &m, "botbridge_auth_decisions_total{dialect=\"haptik\",reason=\"unavailable\",result=\"error\"}"), 1);
    drop(proxy);

    let svc = AuthMock::start().await;
    svc.set(Mode::Slow(Duration::from_secs(3)));
    let proxy = Proxy::start_alone(&config(&backend, &svc.url, "timeout_ms = 300", "")).await;
    let before = scrape(&proxy).await;
    let started = Instant::now();
    let (status, _) = send(
        &proxy,
        "/chat",
        &haptik("svc-client", "svc-token"),
        &haptik_body("u", "hi", 1),
    )
    .await;
    assert_eq!(status, 503);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "gave up at the 300 ms timeout"
    );
    assert_eq!(
        grew(
            &before,
            &scrape(&proxy).await,
            "botbridge_auth_service_errors_total{reason=\"timeout\"}"
        ),
        1
    );
    // Errors are not cached: once the service answers again, so does the proxy.
    svc.set(Mode::Normal);
    let (status, _) = send(
        &proxy,
        "/chat",
        &haptik("svc-client", "svc-token"),
        &haptik_body("u", "hi", 1),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        backend.count(),
        2,
        "only the configured and the recovered caller reached the bot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_stale_keeps_recent_grants_working_while_the_service_is_down() {
    let backend = CsmlBackend::start(Behaviour::Answer(csml_answer("r", &[]))).await;
    let svc = AuthMock::start().await;
    let proxy = Proxy::start_alone(&config(
        &backend,
        &svc.url,
        "positive_ttl_s = 1\nnegative_ttl_s = 1\nserve_stale_s = 60\ntimeout_ms = 300",
        "",
    ))
    .await;
    let before = scrape(&proxy).await;
    let body = haptik_body("u", "hi", 1);
    let (status, _) = send(&proxy, "/chat", &haptik("svc-client", "svc-token"), &body).await;
    assert_eq!(status, 200);
    svc.set(Mode::Status(500));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, _) = send(&proxy, "/chat", &haptik("svc-client", "svc-token"), &body).await;
    assert_eq!(status, 200, "recently valid: served stale");
    let (status, _) = send(
        &proxy,
        "/chat",
        &haptik("scoped-client", "scoped-token"),
        &body,
    )
    .await;
    assert_eq!(status, 503, "never seen: fail closed");
    let m = scrape(&proxy).await;
    let stale_allowed = grew(
        &before,
        &m,
        r#"botbridge_auth_decisions_total{dialect="haptik",reason="stale",result="allowed"}"#,
    ) == 1;
    // Once the service refuses the credential, the stale copy is gone: a later outage does not let
    // it back in.
    svc.set(Mode::DenyAll);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, _) = send(&proxy, "/chat", &haptik("svc-client", "svc-token"), &body).await;
    assert_eq!(status, 401, "refused by the service");
    svc.set(Mode::Status(500));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, _) = send(&proxy, "/chat", &haptik("svc-client", "svc-token"), &body).await;
    assert_eq!(status, 503, "a refused credential is not served stale");
    assert!(stale_allowed, "one stale decision counted");
    assert_eq!(grew(&before, &m, "botbridge_auth_decisions_total{dialect=\"haptik\",reason=\"stale\",result=\"allowed\"}"), 1);
    assert!(
        grew(
            &before,
            &m,
            "botbridge_auth_service_errors_total{reason=\"status\"}"
        ) >= 2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_reach_only_their_scope() {
    let backend = CsmlBackend::start(Behaviour::Answer(csml_answer("r", &[]))).await;
    let svc = AuthMock::start().await;
    let mut cfg = config(&backend, &svc.url, "", "");
    // A configured Haptik client limited to route "other" and business 5.
    cfg = cfg.replace(
        "name = \"acme\"\nclient_id = \"acme-client\"\ntoken = \"acme-token\"",
        "name = \"acme\"\nclient_id = \"acme-client\"\ntoken = \"acme-token\"\nroutes = [\"other\"]\nbusinesses = [5]",
    );
    let proxy = Proxy::start_alone(&cfg).await;
    let before = scrape(&proxy).await;
    let acme = haptik("acme-client", "acme-token");
    let (status, _) = send(&proxy, "/other", &acme, &haptik_body("u", "hi", 5)).await;
    assert_eq!(status, 200);
    let (status, err) = send(&proxy, "/chat", &acme, &haptik_body("u", "hi", 5)).await;
    assert_eq!(status, 403);
    assert_eq!(
        err["error_message"],
        "this credential may not reach route `chat`"
    );
    let (status, err) = send(&proxy, "/other", &acme, &haptik_body("u", "hi", 6)).await;
    assert_eq!(
        (status, err["error_message"].as_str()),
        (403, Some("this credential may not reach business 6"))
    );
    // A scope from the auth service.
    let (status, _) = send(
        &proxy,
        "/chat",
        &haptik("scoped-client", "scoped-token"),
        &haptik_body("u", "hi", 1),
    )
    .await;
    assert_eq!(status, 403);
    // A CSML key the service limits to business 77, which is also the business it maps to: allowed.
    let (status, _) = send(
        &proxy,
        "/chat",
        &csml_signed("svc-key", "svc-secret"),
        &csml_text(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(backend.count(), 2, "nothing out of scope reached the bot");
    let m = scrape(&proxy).await;
    assert_eq!(grew(&before, &m, "botbridge_auth_decisions_total{dialect=\"haptik\",reason=\"out_of_scope\",result=\"denied\"}"), 3);
    assert_eq!(
        grew(
            &before,
            &m,
            "botbridge_request_errors_total{reason=\"forbidden\",route=\"chat\"}"
        ),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csml_scope_refusals_are_csml_errors() {
    let backend = CsmlBackend::start(Behaviour::Answer(csml_answer("r", &[]))).await;
    let svc = AuthMock::start().await;
    let cfg = config(&backend, &svc.url, "", "").replace(
        "name = \"signed\"\nkey = \"csml-caller-key\"",
        "name = \"signed\"\nkey = \"csml-caller-key\"\nroutes = [\"other\"]",
    );
    let proxy = Proxy::start(&cfg).await;
    let (status, err) = send(
        &proxy,
        "/chat",
        &csml_signed(CSML_CALLER_KEY, CSML_CALLER_SECRET),
        &csml_text(),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(err["statusCode"], 403);
    assert_eq!(err["error"], "Forbidden");
    let (status, _) = send(
        &proxy,
        "/other",
        &csml_signed(CSML_CALLER_KEY, CSML_CALLER_SECRET),
        &csml_text(),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_are_refused_when_the_guard_is_on() {
    let backend = CsmlBackend::start(Behaviour::Answer(csml_answer("r", &[]))).await;
    let svc = AuthMock::start().await;
    let proxy =
        Proxy::start_alone(&config(&backend, &svc.url, "", "csml_replay_guard = true")).await;
    let before = scrape(&proxy).await;
    let signed = csml_signed(CSML_CALLER_KEY, CSML_CALLER_SECRET);
    let (status, _) = send(&proxy, "/chat", &signed, &csml_text()).await;
    assert_eq!(status, 200);
    let (status, err) = send(&proxy, "/chat", &signed, &csml_text()).await;
    assert_eq!(status, 401);
    assert!(
        err["message"].as_str().unwrap().contains("already used"),
        "{err}"
    );
    // The same signature in upper-case hex is the same signature.
    let upper: Vec<(&str, String)> = signed
        .iter()
        .map(|(k, v)| match v.strip_prefix("sha256=") {
            Some(hex) => (*k, format!("sha256={}", hex.to_uppercase())),
            None => (*k, v.clone()),
        })
        .collect();
    let (status, _) = send(&proxy, "/chat", &upper, &csml_text()).await;
    assert_eq!(status, 401, "a replay in another hex case");
    // A configuration reload keeps the guard.
    let resp = reqwest::Client::new()
        .post(proxy.admin_url("/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (status, _) = send(&proxy, "/chat", &signed, &csml_text()).await;
    assert_eq!(status, 401, "a replay right after a reload");
    // A fresh signature (another timestamp) is fine; a forged one is refused without filling the guard.
    let (k, s) = csml_sign(CSML_CALLER_KEY, CSML_CALLER_SECRET, unix_now() - 7);
    let (status, _) = send(
        &proxy,
        "/chat",
        &[("x-api-key", k.clone()), ("x-api-signature", s.clone())],
        &csml_text(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(backend.count(), 2, "the replay never reached the bot");
    let m = scrape(&proxy).await;
    assert_eq!(grew(&before, &m, "botbridge_auth_decisions_total{dialect=\"csml\",reason=\"replayed\",result=\"denied\"}"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs_at_trace_level() {
    let csml_bot = CsmlBackend::start(Behaviour::Answer(csml_answer(
        "r",
        &[json!({"content_type":"text","content":{"text":"ok"}})],
    )))
    .await;
    let haptik_bot = CsmlBackend::start_checking(
        Check::HaptikBearer,
        Behaviour::Answer(include_str!("fixtures/haptik/seed-response.json").into()),
    )
    .await;
    let svc = AuthMock::start().await;
    let mut cfg = config(&csml_bot, &svc.url, "", "");
    cfg += &format!(
        r#"
[[backends]]
name = "hbot"
dialect = "haptik"
url = "http://{}/hook"
token = "{HAPTIK_BACKEND_TOKEN}"
client_id = "{HAPTIK_BACKEND_CLIENT}"

[[routes]]
name = "to-haptik"
path = "/to-haptik"
ingress = "auto"
backend = "hbot"
business_id = 9
"#,
        haptik_bot.addr
    );
    // Spawned: its log is what this test reads.
    let proxy = SpawnedProxy::start_with_env(&cfg, &[("RUST_LOG", "trace")]);
    let signed = csml_signed(CSML_CALLER_KEY, CSML_CALLER_SECRET);
    let svc_signed = csml_signed("svc-key", "svc-secret");
    type Sent<'a> = (&'a str, Vec<(&'a str, String)>, String);
    let requests: Vec<Sent> = vec![
        (
            "/chat",
            haptik("acme-client", "acme-token"),
            haptik_body("u", "my diary entry", 1),
        ),
        (
            "/chat",
            haptik("svc-client", "svc-token"),
            haptik_body("u", "hi", 1),
        ),
        (
            "/chat",
            haptik("acme-client", "wrong-token-guess"),
            haptik_body("u", "hi", 1),
        ),
        ("/chat", signed.clone(), csml_text()),
        ("/chat", svc_signed.clone(), csml_text()),
        (
            "/chat",
            vec![("x-api-key", CSML_PLAIN_KEY.to_string())],
            csml_text(),
        ),
        (
            "/to-haptik",
            haptik("acme-client", "acme-token"),
            haptik_body("u", "hi", 1),
        ),
    ];
    for (path, headers, body) in &requests {
        let (status, _) = send(&proxy, path, headers, body).await;
        assert!(status == 200 || status == 401, "{path}: {status}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logs = proxy.logs();
    assert!(
        logs.contains("TRACE"),
        "the proxy really logged at trace level"
    );
    assert!(logs.contains("caller authenticated"));
    let secrets = [
        "acme-token",
        "wrong-token-guess",
        "svc-token",
        "svc-secret",
        CSML_CALLER_SECRET,
        CSML_PLAIN_KEY,
        BACKEND_SECRET,
        HAPTIK_BACKEND_TOKEN,
        SERVICE_BEARER,
        "hashed-token",
        "my diary entry",
    ];
    for secret in secrets {
        assert!(!logs.contains(secret), "{secret} appeared in the logs");
    }
    for (_, v) in signed.iter().chain(&svc_signed) {
        if let Some(hex) = v.strip_prefix("sha256=") {
            assert!(
                !logs.contains(hex),
                "a caller's signature appeared in the logs"
            );
        }
    }
    for r in csml_bot.requests() {
        let sig = r.header("x-api-signature").unwrap();
        assert!(
            !logs.contains(&sig[7..]),
            "the proxy's own signature appeared in the logs"
        );
    }
}
