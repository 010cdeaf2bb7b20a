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

async fn admin_get(proxy: &SpawnedProxy, path: &str) -> (u16, serde_json::Value) {
    let r = reqwest::get(proxy.admin_url(path)).await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

fn sha256(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_configuration_is_kept_by_hash_with_secrets_hidden_and_can_be_rolled_back_to() {
    let a = CsmlBackend::start(Behaviour::Answer(csml_answer("r", &[]))).await;
    let first = config_with(&(csml_backend_toml("bot", a.addr, "") + routes()));
    let proxy = SpawnedProxy::start(&first);
    let first_hash = sha256(&std::fs::read_to_string(&proxy.config_path).unwrap());

    // What runs: its hash, and the file without its secrets.
    let (status, now) = admin_get(&proxy, "/config").await;
    assert_eq!(status, 200, "{now}");
    assert_eq!(now["hash"], first_hash.as_str());
    assert_eq!(now["how"], "start");
    let shown = now["config"].as_str().unwrap();
    assert!(shown.contains("acme-client"), "{shown}");
    assert!(!shown.contains("acme-token"), "a secret is shown: {shown}");

    // A reload with a new token: a second configuration, the first one kept.
    proxy.rewrite_config(&first.replace("token = \"acme-token\"", "token = \"acme-token-2\""));
    assert_eq!(admin_post(&proxy, "/reload").await.0, 200);
    let second_hash = sha256(&std::fs::read_to_string(&proxy.config_path).unwrap());
    assert_eq!(post(&proxy, "acme-client", "acme-token").await, 401);
    let (_, history) = admin_get(&proxy, "/config/history").await;
    let kept = history["configurations"].as_array().unwrap();
    let hashes: Vec<&str> = kept.iter().map(|c| c["hash"].as_str().unwrap()).collect();
    assert_eq!(hashes, [second_hash.as_str(), first_hash.as_str()]);
    assert_eq!(
        (kept[0]["current"].as_bool(), kept[1]["current"].as_bool()),
        (Some(true), Some(false))
    );
    assert!(!history.to_string().contains("acme-token"), "{history}");

    // Back to the first by a prefix of its hash: its token works again, the metric names it.
    let prefix = &first_hash[..12];
    let (status, text) = admin_post(&proxy, &format!("/config/rollback?hash={prefix}")).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains(&first_hash), "{text}");
    assert_eq!(post(&proxy, "acme-client", "acme-token").await, 200);
    assert_eq!(post(&proxy, "acme-client", "acme-token-2").await, 401);
    let metrics = scrape(&proxy).await;
    let info: Vec<&str> = (metrics.lines())
        .filter(|l| l.starts_with("botbridge_config_info{"))
        .collect();
    assert_eq!(
        info,
        [format!("botbridge_config_info{{hash=\"{prefix}\"}} 1").as_str()]
    );
    let ok = "botbridge_config_rollbacks_total{result=\"ok\"}";
    assert_eq!(series_value(&metrics, ok), Some(1.0));
    let (_, now) = admin_get(&proxy, "/config").await;
    assert_eq!(
        (now["hash"].as_str(), now["how"].as_str()),
        (Some(first_hash.as_str()), Some("rollback"))
    );
    assert!(proxy.logs().contains(&format!("hash={first_hash}")));

    // Unknown, too short, or not asked for: refused, nothing changes.
    assert_eq!(
        admin_post(&proxy, "/config/rollback?hash=deadbeefdeadbeef")
            .await
            .0,
        404
    );
    assert_eq!(
        admin_post(
            &proxy,
            &format!("/config/rollback?hash={}", &second_hash[..4])
        )
        .await
        .0,
        404
    );
    assert_eq!(admin_post(&proxy, "/config/rollback").await.0, 400);
    let cross_site = reqwest::Client::new()
        .post(proxy.admin_url(&format!("/config/rollback?hash={second_hash}")))
        .header("origin", "https://elsewhere.example")
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site.status().as_u16(), 403);
    assert_eq!(post(&proxy, "acme-client", "acme-token").await, 200);
    let unknown = "botbridge_config_rollbacks_total{result=\"unknown\"}";
    assert_eq!(series_value(&scrape(&proxy).await, unknown), Some(2.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_home_page_lists_what_the_listener_serves() {
    let a = CsmlBackend::start(Behaviour::Answer(csml_answer("r", &[]))).await;
    let proxy = SpawnedProxy::start(&config_with(
        &(csml_backend_toml("bot", a.addr, "") + routes()),
    ));
    let r = reqwest::get(proxy.admin_url("/")).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let page = r.text().await.unwrap();
    for path in [
        "/metrics",
        "/backends",
        "/migration",
        "/config/history",
        "/config/rollback",
        "/reload",
        "/openapi/haptik.json",
    ] {
        assert!(page.contains(path), "{path} is not on the page:\n{page}");
    }
    let hash = sha256(&std::fs::read_to_string(&proxy.config_path).unwrap());
    assert!(page.contains(&hash), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_under_traffic_restores_the_previous_backend_with_no_failed_request() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let a = CsmlBackend::start(Behaviour::Answer(csml_answer("r", &[]))).await;
    let b = CsmlBackend::start(Behaviour::Answer(csml_answer("r", &[]))).await;
    let first = config_with(&(csml_backend_toml("bot", a.addr, "") + routes()));
    let proxy = Arc::new(SpawnedProxy::start(&first));
    let first_hash = sha256(&std::fs::read_to_string(&proxy.config_path).unwrap());
    let (stop, sent, failed) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let (proxy, stop, sent, failed) =
                (proxy.clone(), stop.clone(), sent.clone(), failed.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if post(&proxy, "acme-client", "acme-token").await != 200 {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The route moves to b by a reload...
    proxy.rewrite_config(&config_with(
        &(csml_backend_toml("bot", b.addr, "") + routes()),
    ));
    assert_eq!(admin_post(&proxy, "/reload").await.0, 200);
    let (from, deadline) = (b.count(), Instant::now() + Duration::from_secs(10));
    while b.count() < from + 20 {
        assert!(
            Instant::now() < deadline,
            "the reload did not move traffic to b"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...and back to a by a rollback, while the callers keep sending.
    let (status, text) = admin_post(&proxy, &format!("/config/rollback?hash={first_hash}")).await;
    assert_eq!(status, 200, "{text}");
    let (a_then, b_then) = (a.count(), b.count());
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for c in callers {
        c.await.unwrap();
    }
    assert!(
        a.count() >= a_then + 20,
        "traffic is back on a: {} -> {}",
        a_then,
        a.count()
    );
    // Requests that started on b's runtime just before the swap may still finish there.
    assert!(
        b.count() <= b_then + 8,
        "b still gets traffic: {} -> {}",
        b_then,
        b.count()
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "of {} requests",
        sent.load(Ordering::Relaxed)
    );
}
