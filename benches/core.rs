//! Micro-benchmarks of the pure core: one request's translation for each dialect pair (parse the
//! caller's body, render the backend's, parse the backend's answer, render the caller's), caller
//! verification (Bearer, CSML HMAC pre-keyed and re-keyed, a cached auth service decision) and CSML
//! signing, and the in-process rate limiter (a credential and a per-user limit, two buckets). Run with
//! `cargo bench --bench core`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use botbridge::auth::{
    verify_api_key, ApiKeyAuth, ApiKeyClients, Grant, IdTokenClient, IdTokenClients, Scope,
};
use botbridge::dialect::csml::presented as csml_presented;
use botbridge::dialect::haptik;
use botbridge::dialect::registry::{self, CSML, HAPTIK};
use botbridge::dialect::{
    AnswerContext, AnswerShape, Bot, BotRequestContext, Caller, FixedIds, FlowTriggerPolicy,
};
use botbridge::signing::HmacKey;
use criterion::{criterion_group, criterion_main, Criterion};

const HAPTIK_REQ: &[u8] = br#"{"user":{"auth_id":"user-4711"},"message_body":"Hello, I would like to know my order status","message_type":0,"business_id":343}"#;
const CSML_REQ: &[u8] = br#"{"client":{"user_id":"user-4711"},"metadata":{"firstname":"Ada"},"request_id":"r-1","payload":{"content_type":"text","content":{"text":"Hello, I would like to know my order status"}}}"#;
const CSML_ANSWER: &str = include_str!("../tests/fixtures/csml-engine/run-response-hello.json");
const HSL_ANSWER: &[u8] = br#"{"version":"1.0","timestamp":"2018-10-04T12:41:27.980Z","agent":{"id":4415,"name":"gogo","profile_image":"","is_automated":true},"message":[{"id":1,"body":{"text":"Hello there!","type":"TEXT","data":{"quick_replies":[]}}},{"id":2,"body":{"text":"What is your name?","type":"TEXT","data":{"quick_replies":[{"actionable_text":"Alice","is_default":0,"type":"TEXT_ONLY","payload":{"message":"Alice","gogo_message":""}}]}}}]}"#;

fn ctx(shape: AnswerShape) -> AnswerContext<'static> {
    AnswerContext {
        ids: &FixedIds(1, "iid"),
        received: SystemTime::now(),
        request_id: "r-1",
        business_name: "biz",
        bot_name: "bot",
        route_name: "chan",
        business_id: None,
        shape,
    }
}

/// One full translation: caller body → backend body, backend answer → caller answer.
fn round_trip(
    ingress: Caller,
    spec: &dyn Bot,
    request: &[u8],
    answer: &[u8],
    shape: AnswerShape,
) -> usize {
    let req = ingress.parse_request("/", request).unwrap();
    let up = spec
        .render_request(
            &req,
            &BotRequestContext {
                request_id: "r-1",
                business_id: req.business_id.or(Some(343)),
                flow_trigger: FlowTriggerPolicy::Reject,
            },
        )
        .unwrap();
    let parsed = spec.parse_answer(200, answer, ingress.keeps_raw()).unwrap();
    up.len() + ingress.render_answer(&req, &parsed, &ctx(shape)).len()
}

/// A bot of `dialect` configured from a settings table written as TOML.
fn bot(dialect: &str, settings: &str) -> Box<dyn Bot> {
    registry::bot_dialect(dialect)
        .unwrap()
        .configure("backends[0]", toml::from_str(settings).unwrap())
        .unwrap()
}

fn translation(c: &mut Criterion) {
    let csml = bot("csml", "api_key = \"k\"\napi_secret = \"s\"");
    let haptik = bot("haptik", "token = \"t\"\nclient_id = \"c\"");
    let engine = bot("csml-engine", "bot_id = \"b\"\nchannel_id = \"ch\"");
    let mut g = c.benchmark_group("translate");
    type Case<'a> = (
        &'a str,
        Caller,
        &'a dyn Bot,
        &'a [u8],
        &'a [u8],
        AnswerShape,
    );
    let cases: [Case; 6] = [
        (
            "haptik_to_csml",
            HAPTIK,
            &*csml,
            HAPTIK_REQ,
            CSML_ANSWER.as_bytes(),
            AnswerShape::Legacy,
        ),
        (
            "haptik_to_haptik_hsl",
            HAPTIK,
            &*haptik,
            HAPTIK_REQ,
            HSL_ANSWER,
            AnswerShape::Hsl,
        ),
        (
            "haptik_to_engine",
            HAPTIK,
            &*engine,
            HAPTIK_REQ,
            CSML_ANSWER.as_bytes(),
            AnswerShape::Legacy,
        ),
        (
            "csml_to_csml",
            CSML,
            &*csml,
            CSML_REQ,
            CSML_ANSWER.as_bytes(),
            AnswerShape::Legacy,
        ),
        (
            "csml_to_haptik_hsl",
            CSML,
            &*haptik,
            CSML_REQ,
            HSL_ANSWER,
            AnswerShape::Legacy,
        ),
        (
            "csml_to_engine",
            CSML,
            &*engine,
            CSML_REQ,
            CSML_ANSWER.as_bytes(),
            AnswerShape::Legacy,
        ),
    ];
    for (name, ingress, spec, req, answer, shape) in cases {
        g.bench_function(name, |b| {
            b.iter(|| round_trip(ingress, spec, black_box(req), black_box(answer), shape))
        });
    }
    g.finish();

    // The four steps of the benchmark's own path (a Haptik caller, a CSML bot) one by one.
    let mut g = c.benchmark_group("haptik_to_csml_steps");
    let haptik = HAPTIK;
    let req = haptik.parse_request("/", HAPTIK_REQ).unwrap();
    let up_ctx = BotRequestContext {
        request_id: "r-1",
        business_id: Some(343),
        flow_trigger: FlowTriggerPolicy::Reject,
    };
    let answer = csml
        .parse_answer(200, CSML_ANSWER.as_bytes(), false)
        .unwrap();
    let legacy = ctx(AnswerShape::Legacy);
    g.bench_function("parse_haptik_request", |b| {
        b.iter(|| haptik.parse_request("/", black_box(HAPTIK_REQ)).unwrap())
    });
    g.bench_function("render_csml_request", |b| {
        b.iter(|| csml.render_request(black_box(&req), &up_ctx).unwrap())
    });
    g.bench_function("parse_csml_answer", |b| {
        b.iter(|| {
            csml.parse_answer(200, black_box(CSML_ANSWER.as_bytes()), false)
                .unwrap()
        })
    });
    g.bench_function("parse_csml_answer_keeping_payloads", |b| {
        b.iter(|| {
            csml.parse_answer(200, black_box(CSML_ANSWER.as_bytes()), true)
                .unwrap()
        })
    });
    g.bench_function("render_haptik_answer", |b| {
        b.iter(|| haptik.render_answer(&req, black_box(&answer), &legacy))
    });
    g.finish();
}

fn verification(c: &mut Criterion) {
    let mut haptik = IdTokenClients::new();
    for i in 0..100 {
        haptik.insert(
            format!("client-{i}"),
            IdTokenClient::with_token(&format!("c{i}"), format!("token-{i}").as_bytes()),
        );
    }
    let bearer = |name: &str| match name {
        "authorization" => Some(&b"Bearer token-42"[..]),
        "client-id" => Some(&b"client-42"[..]),
        _ => None,
    };
    let mut g = c.benchmark_group("verify");
    g.bench_function("bearer_static", |b| {
        b.iter(|| {
            let p = haptik::presented(black_box(bearer)).unwrap();
            haptik.check(&p).unwrap()
        })
    });

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let key = HmacKey::new("csml-key", b"csml-secret");
    let signed = key.sign(now);
    let mut csml = ApiKeyClients::new(300);
    let grant = Grant {
        name: "c".into(),
        business_id: None,
        scope: Scope::shared(Scope::default()),
        api_key: Some(ApiKeyAuth::Signed(Box::new(key.clone()))),
        limits: Default::default(),
        callbacks: None,
        verifier: None,
        channel: None,
    };
    csml.insert("csml-key", grant.clone());
    let headers = |name: &str| match name {
        "x-api-key" => Some(signed.api_key.as_bytes()),
        "x-api-signature" => Some(signed.signature.as_bytes()),
        _ => None,
    };
    // The whole static path: read headers, find the credential by the key's SHA-256, verify.
    g.bench_function("hmac_static_credential", |b| {
        b.iter(|| {
            let p = csml_presented(black_box(headers)).unwrap();
            csml.verify(&p, now).unwrap()
        })
    });
    // The MAC check alone, with the HMAC state keyed once per credential (what the proxy does).
    g.bench_function("hmac_prekeyed_state", |b| {
        b.iter(|| {
            key.verify(
                black_box(signed.api_key.as_bytes()),
                Some(signed.signature.as_bytes()),
                now,
                300,
            )
            .unwrap()
        })
    });
    g.bench_function("hmac_rekeyed_per_request", |b| {
        b.iter(|| {
            // What a proxy without per-credential HMAC state does: key the HMAC from the secret each time.
            let k = HmacKey::new("csml-key", black_box(b"csml-secret"));
            k.verify(
                signed.api_key.as_bytes(),
                Some(signed.signature.as_bytes()),
                now,
                300,
            )
            .unwrap()
        })
    });
    // A credential the auth service vouched for, found in the decision cache (moka), then verified.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let cache: moka::future::Cache<[u8; 32], Arc<Grant>> = moka::future::Cache::builder()
        .time_to_live(Duration::from_secs(60))
        .build();
    let p = csml_presented(headers).unwrap();
    rt.block_on(cache.insert(p.digest(), Arc::new(grant)));
    g.bench_function("hmac_cached_service_decision", |b| {
        b.to_async(&rt).iter(|| async {
            let p = csml_presented(black_box(headers)).unwrap();
            let grant = cache.get(&p.digest()).await.unwrap();
            verify_api_key(&grant, &p, now, 300).unwrap()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("sign");
    g.bench_function("csml_hmac_sign", |b| b.iter(|| key.sign(black_box(now))));
    g.finish();
}

/// The in-process limiter on the request path: the plan after `admit` (the credential's bucket key),
/// then the user's bucket key and both buckets checked after `parse`; and the buckets alone.
fn limits(c: &mut Criterion) {
    use botbridge::limits::{local::LocalBuckets, Bucket, Limiter, RateLimit, Scope as LimitScope};
    let config = botbridge::config::parse(
        r#"
[server]
listen = "127.0.0.1:1"
[admin]
listen = "127.0.0.1:2"
[limits]
# Never hit, however fast the loop runs: a burst of 4 billion.
rate_limit = { requests = 1000000, per_seconds = 1, burst = 4000000000 }
user_rate_limit = { requests = 1000000, per_seconds = 1, burst = 4000000000 }
[[clients.haptik]]
name = "c"
client_id = "cid"
token = "t"
[[backends]]
name = "b"
dialect = "csml"
url = "http://127.0.0.1:3/api/chat"
api_key = "k"
api_secret = "s"
[[routes]]
name = "r"
path = "/chat"
ingress = "haptik"
backend = "b"
"#,
    )
    .unwrap();
    let limiter = Limiter::new(&config.rate_limits, None, None);
    let route = &config.routes[0];
    let grant = config
        .clients
        .credentials
        .client_tokens
        .check(&botbridge::auth::IdTokenPresented {
            dialect: haptik::NAME,
            client_id: b"cid",
            token: b"t",
            invalid: haptik::MSG_INVALID,
        })
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("limits");
    g.bench_function("local_credential_and_user", |b| {
        b.to_async(&rt).iter(|| async {
            let plan = limiter.plan(route, &grant);
            limiter.admit(&plan).await.unwrap();
            limiter
                .admit_user(&plan, black_box("user-4711"))
                .await
                .unwrap();
        })
    });
    let limit = RateLimit {
        requests: 1_000_000,
        per_seconds: 1,
        burst: 4_000_000_000,
    };
    let buckets = [LimitScope::User, LimitScope::Credential].map(|scope| Bucket {
        scope,
        limit,
        key: [scope as u8; 16],
        owner: [0; 16],
        overflow: None,
    });
    let local = LocalBuckets::new();
    g.bench_function("local_two_buckets_alone", |b| {
        b.iter(|| local.check(black_box(&buckets)))
    });
    g.bench_function("no_limit_plan", |b| {
        let unlimited = Limiter::new(&Default::default(), None, None);
        b.iter(|| unlimited.plan(route, &grant).is_empty())
    });
    g.finish();
}

criterion_group!(benches, translation, verification, limits);
criterion_main!(benches);
