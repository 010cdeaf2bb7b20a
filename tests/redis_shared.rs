//! Several instances, one policy: three real `botbridge` processes on one real `redis-server`
//! (`common/redis.rs`) share their rate limits, their CSML replay guard and their auth cache clears;
//! and when Redis is killed under load, each feature does what its `on_redis_error` says, no instance
//! falls over, and all go back to Redis by themselves once it returns.
//!
//! Spawned binaries: three instances need three processes. Every wait is bounded by a deadline.

mod common;
#[path = "common/redis.rs"]
mod redis_server;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use redis_server::RedisServer;
use reqwest::header::HeaderMap;
use serde_json::{json, Value};
use tokio::net::TcpListener;

type Headers = Vec<(&'static str, String)>;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// POSTs to `path`; the status, headers and JSON body.
async fn post(
    proxy: &SpawnedProxy,
    path: &str,
    headers: &Headers,
    body: &str,
) -> (u16, HeaderMap, Value) {
    send_with_headers(proxy, path, headers, body).await
}

fn haptik(client: &str, token: &str) -> Headers {
    vec![
        ("authorization", format!("Bearer {token}")),
        ("client-id", client.to_string()),
    ]
}

/// A signed CSML request's headers for the configured signed caller, at `ts`.
fn signed(ts: u64) -> Headers {
    let (key, sig) = csml_sign(CSML_CALLER_KEY, CSML_CALLER_SECRET, ts);
    vec![("x-api-key", key), ("x-api-signature", sig)]
}

fn csml_body(user: &str) -> String {
    json!({"client": {"user_id": user}, "payload": {"content_type": "text", "content": {"text": "hi"}}})
        .to_string()
}

fn answer() -> Behaviour {
    Behaviour::Answer(csml_answer(
        "r",
        &[json!({"content_type":"text","content":{"text":"ok"}})],
    ))
}

/// The test config: the common clients (`acme_limit` on `acme`, `hashed_limit` on `hashed`), a
/// `/chat` route for Haptik and CSML callers with `route` keys, and `tail` (`[redis]` and more).
fn config(
    backend: &CsmlBackend,
    acme_limit: &str,
    hashed_limit: &str,
    route: &str,
    tail: &str,
) -> String {
    config_with(&format!(
        "{}\n[[routes]]\nname = \"chat\"\npath = \"/chat\"\ningress = [\"haptik\", \"csml\"]\nbackend = \"bot\"\n{route}\n{tail}\n",
        csml_backend_toml("bot", backend.addr, "")
    ))
    .replace(
        "token = \"acme-token\"",
        &format!("token = \"acme-token\"\n{acme_limit}"),
    )
    .replace(
        "name = \"hashed\"",
        &format!("name = \"hashed\"\n{hashed_limit}"),
    )
}

/// Starts one instance per config, in parallel.
fn instances(configs: &[String]) -> Vec<Arc<SpawnedProxy>> {
    std::thread::scope(|s| {
        let started: Vec<_> = (configs.iter())
            .map(|c| s.spawn(move || Arc::new(SpawnedProxy::start(c))))
            .collect();
        started.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// `total` requests, `concurrency` at a time, the i-th to instance `i % n` with the headers and body
/// `request(i)` gives: (instance, status) of each.
async fn load<R>(
    proxies: &[Arc<SpawnedProxy>],
    total: usize,
    concurrency: usize,
    request: R,
) -> Vec<(usize, u16)>
where
    R: Fn(usize) -> (Headers, String) + Send + Sync + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let results = Arc::new(Mutex::new(Vec::new()));
    let request = Arc::new(request);
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (next, results, proxies) = (next.clone(), results.clone(), proxies.to_vec());
            let request = request.clone();
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return;
                    }
                    let at = i % proxies.len();
                    let (headers, body) = request(i);
                    let status = post(&proxies[at], "/chat", &headers, &body).await.0;
                    results.lock().unwrap().push((at, status));
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let r = results.lock().unwrap().clone();
    r
}

async fn metric(proxy: &SpawnedProxy, series: &str) -> f64 {
    series_value(&scrape(proxy).await, series).unwrap_or_else(|| panic!("no series {series}"))
}

/// Polls `check` until it holds, failing after `limit`; returns how long it took.
async fn within<F, Fut>(limit: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_on_one_redis_hold_one_limit_within_5_percent() {
    let redis = RedisServer::start();
    let backend = CsmlBackend::start(answer()).await;
    // A generous timeout: this test is about sharing, and a fallback would hand out local buckets.
    let tail = format!("[redis]\nurl = \"{}\"\ntimeout_ms = 2000", redis.url());
    let cfg = config(
        &backend,
        "rate_limit = { requests = 100, per_seconds = 3600 }",
        "",
        "user_rate_limit = { requests = 10, per_seconds = 3600 }",
        &tail,
    );
    let proxies = instances(&[cfg.clone(), cfg.clone(), cfg]);

    // 300 requests of one credential, each from a new user: only the credential's limit binds.
    let started = Instant::now();
    let results = load(&proxies, 300, 12, |i| {
        (
            haptik("acme-client", "acme-token"),
            haptik_body(&format!("user-{i}"), "hi", 1),
        )
    })
    .await;
    let elapsed = started.elapsed();
    let ok = results.iter().filter(|r| r.1 == 200).count();
    let limited = results.iter().filter(|r| r.1 == 429).count();
    println!("a shared limit of 100 per hour: {ok} of 300 let through in {elapsed:?}");
    assert_eq!(ok + limited, 300, "only 200s and 429s: {results:?}");
    // One token per 36 s comes back: at most that many more than the burst.
    let refilled = (elapsed.as_secs() / 36) as usize;
    assert!((100..=100 + refilled).contains(&ok), "{ok}");
    assert!(ok.abs_diff(100) <= 5, "within 5% of the limit: {ok}");
    for i in 0..3 {
        assert!(results.contains(&(i, 200)), "instance {i} let some through");
    }
    assert_eq!(
        backend.count(),
        ok,
        "only what was let through reached the bot"
    );

    // One user in a loop, spread over the three: 10 in all, not 10 per instance.
    let results = load(&proxies, 30, 6, |_| {
        (
            haptik("hashed-client", "hashed-token"),
            haptik_body("looping", "hi", 1),
        )
    })
    .await;
    let ok = results.iter().filter(|r| r.1 == 200).count();
    assert_eq!(ok, 10, "{results:?}");

    // Over the limit, a CSML caller gets CSML's error shape, with Retry-After and RateLimit.
    for _ in 0..10 {
        let (status, _, body) = post(
            &proxies[0],
            "/chat",
            &vec![("x-api-key", CSML_PLAIN_KEY.into())],
            &csml_body("looping"),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, h, body) = post(
        &proxies[1],
        "/chat",
        &vec![("x-api-key", CSML_PLAIN_KEY.into())],
        &csml_body("looping"),
    )
    .await;
    assert_eq!(
        (status, &body["statusCode"], &body["error"]),
        (429, &json!(429), &json!("Too Many Requests")),
        "{body}"
    );
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((300..=360).contains(&retry), "one token per 360 s: {retry}");
    assert_eq!(h["ratelimit-policy"], "\"user\";q=10;w=3600");
    let (status, h, body) = post(
        &proxies[2],
        "/chat",
        &haptik("hashed-client", "hashed-token"),
        &haptik_body("looping", "hi", 1),
    )
    .await;
    assert_eq!(status, 429);
    assert!(
        body["error_message"]
            .as_str()
            .unwrap()
            .contains("this user"),
        "{body}"
    );
    assert!(h.contains_key("retry-after"));

    for (i, p) in proxies.iter().enumerate() {
        let fell_back = metric(
            p,
            "botbridge_redis_fallbacks_total{action=\"local\",feature=\"limits\"}",
        )
        .await;
        assert_eq!(fell_back, 0.0, "instance {i} never fell back");
        assert_eq!(metric(p, "botbridge_redis_up").await, 1.0);
    }
    let keys = redis.command(&["KEYS", "botbridge:rl:*"]);
    assert!(
        keys.starts_with('*') && !keys.starts_with("*0"),
        "buckets live in Redis: {keys}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_checks_share_script_calls_and_the_count_stays_exact() {
    let redis = RedisServer::start();
    let backend = CsmlBackend::start(answer()).await;
    let tail = format!("[redis]\nurl = \"{}\"\ntimeout_ms = 2000", redis.url());
    let cfg = config(
        &backend,
        "rate_limit = { requests = 150, per_seconds = 3600 }",
        "",
        "",
        &tail,
    );
    let proxies = instances(&[cfg]);
    // 400 requests of one credential, 64 at a time: exactly the limit's 150 pass (a token comes
    // back every 24 s, so at most one more in a slow run).
    let results = load(&proxies, 400, 64, |i| {
        (
            haptik("acme-client", "acme-token"),
            haptik_body(&format!("user-{i}"), "hi", 1),
        )
    })
    .await;
    let ok = results.iter().filter(|r| r.1 == 200).count();
    let limited = results.iter().filter(|r| r.1 == 429).count();
    assert_eq!(ok + limited, 400, "{results:?}");
    assert!((150..=151).contains(&ok), "{ok}");
    assert_eq!(backend.count(), ok);
    let fell_back = "botbridge_redis_fallbacks_total{action=\"local\",feature=\"limits\"}";
    assert_eq!(metric(&proxies[0], fell_back).await, 0.0);
    // Each request's check went to Redis, but far fewer script calls carried them.
    let calls = metric(
        &proxies[0],
        "botbridge_redis_duration_seconds_count{op=\"rate_limit\"}",
    )
    .await;
    assert!(
        calls > 0.0 && calls < 200.0,
        "400 checks in {calls} script calls"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_signed_request_replayed_to_another_instance_is_refused() {
    let redis = RedisServer::start();
    let backend = CsmlBackend::start(answer()).await;
    let tail = format!("[redis]\nurl = \"{}\"\ntimeout_ms = 2000", redis.url());
    let cfg = config(&backend, "", "", "", &tail).replace(
        "csml_tolerance_secs = 300",
        "csml_tolerance_secs = 300\ncsml_replay_guard = true",
    );
    let proxies = instances(&[cfg.clone(), cfg.clone(), cfg]);
    let now = unix_now();
    let (a, b, c) = (&proxies[0], &proxies[1], &proxies[2]);
    let first = signed(now);
    assert_eq!(post(a, "/chat", &first, &csml_body("u")).await.0, 200);
    for (name, p) in [("b", b), ("c", c), ("a", a)] {
        let (status, _, body) = post(p, "/chat", &first, &csml_body("u")).await;
        assert_eq!(status, 401, "replayed to {name}: {body}");
        assert_eq!(
            body["message"],
            "this signed request was already used: sign each request anew"
        );
    }
    let second = signed(now - 1);
    assert_eq!(
        post(b, "/chat", &second, &csml_body("u")).await.0,
        200,
        "a new signature passes"
    );
    assert_eq!(post(c, "/chat", &second, &csml_body("u")).await.0, 401);
    assert_eq!(backend.count(), 2);
    let keys = redis.command(&["KEYS", "botbridge:replay:*"]);
    assert!(keys.starts_with("*2"), "two signatures recorded: {keys}");
}

/// A test auth service: `svc-client-<n>` with `svc-token` is valid while `valid` is set.
struct AuthService {
    url: String,
    valid: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl AuthService {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/verify", listener.local_addr().unwrap());
        let valid = Arc::new(AtomicBool::new(true));
        let v = valid.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let v = v.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let v = v.clone();
                        async move {
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let q: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            let known = (q["client_id"].as_str())
                                .is_some_and(|c| c.starts_with("svc-client-"));
                            let ok = known && q["token"] == "svc-token" && v.load(Ordering::SeqCst);
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
                                json!({"valid": ok}).to_string(),
                            ))))
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        AuthService { url, valid, task }
    }
}

impl Drop for AuthService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cache_clear_or_a_reload_on_one_instance_reaches_the_others_within_a_second() {
    let redis = RedisServer::start();
    let backend = CsmlBackend::start(answer()).await;
    let svc = AuthService::start().await;
    let tail = format!(
        "[auth_service]\nurl = \"{}\"\npositive_ttl_s = 300\n[redis]\nurl = \"{}\"\ntimeout_ms = 2000",
        svc.url,
        redis.url()
    );
    let cfg = config(&backend, "", "", "", &tail);
    let proxies = instances(&[cfg.clone(), cfg.clone(), cfg]);
    let body = haptik_body("u", "hi", 1);
    for (n, what, endpoint) in [
        (1, "a cache clear", "/auth-cache/clear"),
        (2, "a reload", "/reload"),
    ] {
        // A credential of its own per round: the last round's refusals are cached.
        let user = haptik(&format!("svc-client-{n}"), "svc-token");
        svc.valid.store(true, Ordering::SeqCst);
        for (i, p) in proxies.iter().enumerate() {
            let (status, _, answer) = post(p, "/chat", &user, &body).await;
            assert_eq!(status, 200, "{what}: valid and cached at {i}: {answer}");
        }
        // Revoked at the service: the instances keep serving their cached decision...
        svc.valid.store(false, Ordering::SeqCst);
        assert_eq!(
            post(&proxies[1], "/chat", &user, &body).await.0,
            200,
            "{what}: still cached"
        );
        // ...until one of them is told to forget.
        let answer = client()
            .post(proxies[0].admin_url(endpoint))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "{what}");
        let told = Instant::now();
        for p in &proxies[1..] {
            within(
                Duration::from_secs(1).saturating_sub(told.elapsed()),
                what,
                || async { post(p, "/chat", &user, &body).await.0 == 401 },
            )
            .await;
        }
        println!(
            "{what} reached both other instances in {:?}",
            told.elapsed()
        );
        assert_eq!(post(&proxies[0], "/chat", &user, &body).await.0, 401);
    }
    assert_eq!(
        metric(
            &proxies[0],
            "botbridge_auth_cache_clear_messages_total{direction=\"published\"}"
        )
        .await,
        2.0
    );
    assert_eq!(
        metric(
            &proxies[1],
            "botbridge_auth_cache_clear_messages_total{direction=\"received\"}"
        )
        .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_under_load_each_feature_does_as_configured_and_all_recover() {
    let mut redis = RedisServer::start();
    let backend = CsmlBackend::start(answer()).await;
    let redis_table = |limits: &str, replay: &str| {
        format!(
            "[redis]\nurl = \"{}\"\ntimeout_ms = 500\nbackoff_ms = 200\nlimits = {{ on_redis_error = \"{limits}\" }}\nreplay_guard = {{ on_redis_error = \"{replay}\" }}",
            redis.url()
        )
    };
    let cfg = |limits, replay| {
        config(
            &backend,
            "rate_limit = { requests = 100000, per_seconds = 1 }",
            "rate_limit = { requests = 2, per_seconds = 3600 }",
            "",
            &redis_table(limits, replay),
        )
        .replace(
            "csml_tolerance_secs = 300",
            "csml_tolerance_secs = 300\ncsml_replay_guard = true",
        )
    };
    // a: the defaults (limits local, replay guard deny); b: limits deny, guard local; c: both allow.
    let proxies = instances(&[
        cfg("local", "deny"),
        cfg("deny", "local"),
        cfg("allow", "allow"),
    ]);
    let (a, b, c) = (&proxies[0], &proxies[1], &proxies[2]);
    let acme = haptik("acme-client", "acme-token");
    let tight = haptik("hashed-client", "hashed-token");
    let body = haptik_body("u", "hi", 1);
    for p in &proxies {
        within(Duration::from_secs(10), "connected to redis", || async {
            metric(p, "botbridge_redis_up").await == 1.0
        })
        .await;
        assert_eq!(post(p, "/chat", &acme, &body).await.0, 200);
    }

    // A steady load over all three while Redis dies and comes back.
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let load: Vec<_> = (0..3)
        .map(|i| {
            let (p, stop, seen, acme, body) = (
                proxies[i].clone(),
                stop.clone(),
                seen.clone(),
                acme.clone(),
                body.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let status = post(&p, "/chat", &acme, &body).await.0;
                    seen.lock().unwrap().push((i, status));
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.kill();
    let killed_at = seen.lock().unwrap().len();

    // Limits: a falls back to its own buckets, b refuses (503, the caller's dialect), c lets through.
    let (status, h, err) = post(b, "/chat", &acme, &body).await;
    assert_eq!(
        (status, &err["error_message"]),
        (
            503,
            &json!("the rate limiter is unavailable; try again later")
        )
    );
    assert_eq!(h["retry-after"], "1");
    for _ in 0..2 {
        assert_eq!(post(a, "/chat", &tight, &body).await.0, 200);
    }
    assert_eq!(
        post(a, "/chat", &tight, &body).await.0,
        429,
        "a's own bucket of 2 is spent"
    );
    for _ in 0..4 {
        assert_eq!(
            post(c, "/chat", &tight, &body).await.0,
            200,
            "c lets every request through"
        );
    }
    // The replay guard: a refuses (503 in CSML's shape), b guards alone, c lets replays through.
    let now = unix_now();
    let (status, _, err) = post(a, "/chat", &signed(now), &csml_body("u")).await;
    assert_eq!((status, &err["statusCode"]), (503, &json!(503)), "{err}");
    assert_eq!(
        err["message"],
        "the replay guard is unavailable; try again later"
    );
    assert_eq!(post(b, "/chat", &signed(now), &csml_body("u")).await.0, 200);
    assert_eq!(
        post(b, "/chat", &signed(now), &csml_body("u")).await.0,
        401,
        "b's own guard"
    );
    assert_eq!(
        post(c, "/chat", &signed(now - 1), &csml_body("u")).await.0,
        200
    );
    assert_eq!(
        post(c, "/chat", &signed(now - 1), &csml_body("u")).await.0,
        200,
        "allowed unchecked"
    );
    let restarted_at = seen.lock().unwrap().len();

    redis.restart();
    // Back to Redis without a restart: each instance finds it again on its own (after its back-off,
    // through its own calls: the load keeps them coming)...
    for p in &proxies {
        within(Duration::from_secs(10), "back on redis", || async {
            metric(p, "botbridge_redis_up").await == 1.0
        })
        .await;
    }
    // ...then b's limiter answers again, and a's guard is shared again.
    within(
        Duration::from_secs(10),
        "b's limiter back on redis",
        || async { post(b, "/chat", &acme, &body).await.0 == 200 },
    )
    .await;
    let fresh = signed(now - 2);
    within(
        Duration::from_secs(10),
        "a's guard back on redis",
        || async { post(a, "/chat", &fresh, &csml_body("u")).await.0 == 200 },
    )
    .await;
    assert_eq!(
        post(c, "/chat", &fresh, &csml_body("u")).await.0,
        401,
        "c sees a's signature in Redis"
    );
    assert_eq!(
        post(b, "/chat", &fresh, &csml_body("u")).await.0,
        401,
        "so does b"
    );
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }

    let seen = seen.lock().unwrap().clone();
    for i in 0..3 {
        let served = |range: &[(usize, u16)]| range.iter().filter(|r| r.0 == i).count();
        assert!(
            served(&seen[killed_at..restarted_at]) > 0,
            "instance {i} kept serving while redis was down"
        );
        assert!(
            served(&seen[restarted_at..]) > 0,
            "instance {i} kept serving after"
        );
    }
    println!(
        "under load: {} answers, {} while redis was down",
        seen.len(),
        restarted_at - killed_at
    );
    for (i, status) in &seen {
        let allowed: &[u16] = if *i == 1 { &[200, 503] } else { &[200] };
        assert!(
            allowed.contains(status),
            "instance {i} answered {status} under load"
        );
    }
    for (i, p) in proxies.iter().enumerate() {
        assert_eq!(
            client()
                .get(p.admin_url("/healthz"))
                .send()
                .await
                .unwrap()
                .status(),
            200,
            "instance {i} alive"
        );
        assert_eq!(
            metric(p, "botbridge_redis_up").await,
            1.0,
            "instance {i} back on redis"
        );
        assert!(
            metric(
                p,
                "botbridge_redis_errors_total{op=\"rate_limit\",reason=\"connection\"}"
            )
            .await
                + metric(
                    p,
                    "botbridge_redis_errors_total{op=\"rate_limit\",reason=\"timeout\"}"
                )
                .await
                > 0.0
        );
    }
    let fallbacks = |feature: &str, action: &str| {
        format!("botbridge_redis_fallbacks_total{{action=\"{action}\",feature=\"{feature}\"}}")
    };
    assert!(metric(a, &fallbacks("limits", "local")).await > 0.0);
    assert!(metric(a, &fallbacks("replay_guard", "deny")).await > 0.0);
    assert!(metric(b, &fallbacks("limits", "deny")).await > 0.0);
    assert!(metric(b, &fallbacks("replay_guard", "local")).await > 0.0);
    assert!(metric(c, &fallbacks("limits", "allow")).await > 0.0);
    assert!(metric(c, &fallbacks("replay_guard", "allow")).await > 0.0);
}
