//! Reloading the configuration while running: SIGHUP and POST /reload, what changes, what does not.
//! On the spawned binary: the file is rewritten under a running process, which is signalled.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn routes() -> &'static str {
    r#"
[[routes]]
name = "chat"
path = "/chat"
ingress = "auto"
backend = "bot"
"#
}

async fn post(proxy: &SpawnedProxy, client: &str, token: &str) -> u16 {
    reqwest::Client::new()
        .post(proxy.url("/chat"))
        .header("authorization", format!("Bearer {token}"))
        .header("client-id", client)
        .header("content-type", "application/json")
        .body(haptik_body("u", "hi", 1))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn admin_post(proxy: &SpawnedProxy, path: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(proxy.admin_url(path))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn reloads(proxy: &SpawnedProxy, result: &str) -> u64 {
    let text = reqwest::get(proxy.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!("botbridge_config_reloads_total{{result=\"{result}\"}}");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_new_credentials_and_routes() {
    let a = CsmlBackend::start(Behaviour::Answer(csml_answer("r", &[]))).await;
    let b = CsmlBackend::start(Behaviour::Answer(csml_answer("r", &[]))).await;
    let base = csml_backend_toml("bot", a.addr, "") + routes();
    let proxy = SpawnedProxy::start(&config_with(&base));
    assert_eq!(post(&proxy, "new-client", "new-token").await, 401);
    assert_eq!(post(&proxy, "acme-client", "acme-token").await, 200);
    assert_eq!(a.count(), 1);

    // A new caller, and the route's backend moved to b.
    let changed = config_with(&(csml_backend_toml("bot", b.addr, "") + routes())).replace(
        "[[clients.haptik]]\nname = \"acme\"",
        "[[clients.haptik]]\nname = \"newcomer\"\nclient_id = \"new-client\"\ntoken = \"new-token\"\n\n[[clients.haptik]]\nname = \"acme\"",
    );
    proxy.rewrite_config(&changed);
    proxy.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while post(&proxy, "new-client", "new-token").await != 200 {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not apply the new config:\n{}",
            proxy.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(b.count(), 1, "the route now leads to the new backend");
    assert_eq!(post(&proxy, "acme-client", "acme-token").await, 200);
    assert_eq!((a.count(), b.count()), (1, 2));
    assert_eq!(reloads(&proxy, "ok").await, 1);
    assert!(proxy.logs().contains("configuration reloaded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_or_restart_only_change_is_refused_and_changes_nothing() {
    let a = CsmlBackend::start(Behaviour::Answer(csml_answer("r", &[]))).await;
    let base = config_with(&(csml_backend_toml("bot", a.addr, "") + routes()));
    let proxy = SpawnedProxy::start(&base);
    // A broken file: refused with the key named; the proxy keeps serving the old config.
    proxy.rewrite_config(&base.replace("backend = \"bot\"", "backend = \"nope\""));
    let (status, text) = admin_post(&proxy, "/reload").await;
    assert_eq!(status, 400);
    assert!(text.contains("routes[0].backend"), "{text}");
    assert_eq!(post(&proxy, "acme-client", "acme-token").await, 200);
    // More worker threads need a restart.
    proxy.rewrite_config(&base.replace("threads = 1", "threads = 2"));
    let (status, text) = admin_post(&proxy, "/reload").await;
    assert_eq!(status, 400);
    assert!(
        text.contains("server.threads cannot change while running"),
        "{text}"
    );
    // SIGHUP with a broken file: counted, logged, nothing changes.
    proxy.rewrite_config("this is not toml [");
    proxy.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while reloads(&proxy, "error").await < 3 {
        assert!(Instant::now() < deadline, "SIGHUP reload error not counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(post(&proxy, "acme-client", "acme-token").await, 200);
    assert_eq!(reloads(&proxy, "ok").await, 0);
    // The original file reloads fine.
    proxy.rewrite_config(&base);
    assert_eq!(admin_post(&proxy, "/reload").await.0, 200);
    assert_eq!(reloads(&proxy, "ok").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_clears_the_auth_cache() {
    // A tiny auth service that vouches for one credential and counts calls.
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let calls = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/verify", listener.local_addr().unwrap());
    let c = calls.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let c = c.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |_req: hyper::Request<hyper::body::Incoming>| {
                        c.fetch_add(1, Ordering::SeqCst);
                        async {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from(r#"{"valid":true}"#)),
                            ))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let a = CsmlBackend::start(Behaviour::Answer(csml_answer("r", &[]))).await;
    let cfg = config_with(&(csml_backend_toml("bot", a.addr, "") + routes()))
        + &format!("\n[auth_service]\nurl = \"{url}\"\npositive_ttl_s = 600\n");
    let proxy = SpawnedProxy::start(&cfg);
    for _ in 0..3 {
        assert_eq!(post(&proxy, "svc-client", "svc-token").await, 200);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "cached");
    assert_eq!(admin_post(&proxy, "/reload").await.0, 200);
    assert_eq!(post(&proxy, "svc-client", "svc-token").await, 200);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the reload started a fresh cache"
    );
}
