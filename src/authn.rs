//! Authenticating callers at run time: configured credentials first, then the auth service behind a
//! moka decision cache, then the replay guard of signed API keys; every decision counted.
//!
//! The cache is keyed by a SHA-256 of the presented credential (never the credential itself). A valid
//! answer lives `positive_ttl`, an invalid one `negative_ttl`; concurrent misses for one credential
//! share a single call (moka's `try_get_with`). When the service is down or slower than its timeout,
//! the caller gets 503 in its own dialect (fail closed), unless a decision that was valid within the
//! `serve_stale` window is still remembered. The verdict rules themselves are pure (`auth`).
//!
//! With `[redis]`, the replay guard is shared: a signature this instance has not seen is recorded in
//! Redis with `SET NX PX` too, so a replay to any instance is refused (`[redis.replay_guard]
//! on_redis_error` decides when Redis fails), and a cache clear another instance published empties
//! this cache before its next look-up (`shared::redis`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use moka::future::Cache;
use moka::notification::RemovalCause;
use moka::Expiry;

use crate::auth::{
    self, grant_from_verdict, ApiKeyPresented, AuthQuery, AuthReason, AuthVerdict, Denied, Grant,
    IdTokenPresented, Presented, TokenPresented,
};
use crate::config::redis::OnRedisError;
use crate::config::{AuthServiceConfig, Config};
use crate::dialect::{registry, Caller, RequestHead};
use crate::error::{ProxyError, Reason};
use crate::metrics::shared::{Feature, SharedMetrics};
use crate::metrics::Metrics;
use crate::shared::redis::{Op, SharedRedis};
use crate::upstream::Endpoint;
use crate::upstream::{self, RequestBytes, TransportKind, Upstream};
use botbridge_core::request::WholeRequest;
use botbridge_core::session::{self, TokenError, TokenGrant};

/// A cached auth service decision.
#[derive(Clone)]
enum Decision {
    Allowed(Arc<Grant>),
    Denied,
}

struct DecisionExpiry {
    positive: Duration,
    negative: Duration,
}

impl Expiry<[u8; 32], Decision> for DecisionExpiry {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Decision,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(match value {
            Decision::Allowed(_) => self.positive,
            Decision::Denied => self.negative,
        })
    }
}

/// The auth service client with its caches.
struct Service {
    /// As configured: a host name in it is resolved when the authenticator is made (and again by
    /// a call, while it does not resolve); loading a configuration does no DNS.
    endpoint: Endpoint,
    /// The endpoint at its address, with its peer, once known.
    reached: ArcSwapOption<(Endpoint, upstream::BackendPeer)>,
    dns: crate::config::dns::DnsSettings,
    upstream: Upstream,
    bearer: Option<String>,
    decisions: Cache<[u8; 32], Decision>,
    /// `auth_cache_requests{result="hit"}` and `{result="miss"}`, resolved once.
    cache_hit: prometheus::IntCounter,
    cache_miss: prometheus::IntCounter,
    /// Valid grants remembered for `positive_ttl + serve_stale`, used only when the service fails.
    stale: Option<Cache<[u8; 32], Arc<Grant>>>,
}

impl Service {
    /// The endpoint at its address: known, or resolved now (a name that did not resolve when the
    /// authenticator was made); `None` while it does not resolve.
    async fn reach(&self) -> Option<Arc<(Endpoint, upstream::BackendPeer)>> {
        if let Some(r) = self.reached.load_full() {
            return Some(r);
        }
        let resolver = crate::pool::dns::Resolver::new(&self.dns).ok()?;
        let (host, port) = (&self.endpoint.host, self.endpoint.addr.port());
        let addrs = resolver.resolve(host, port).await.ok()?;
        let ep = self.endpoint.at(addrs[0]);
        let reached = Arc::new((ep.clone(), upstream::peer_for(&ep)));
        self.reached.store(Some(reached.clone()));
        Some(reached)
    }
}

/// Why an auth service call failed (a bounded label).
#[derive(Debug)]
struct ServiceError(&'static str);

/// Authenticates callers; shared by the chat listener and the admin listener.
pub struct Authenticator {
    config: Arc<Config>,
    service: Option<Service>,
    replay: Option<Arc<moka::sync::Cache<[u8; 32], ()>>>,
    metrics: &'static Metrics,
    /// `allowed/ok` per caller dialect (by registry index), resolved once (the per-request case).
    allowed: Vec<prometheus::IntCounter>,
    /// `[redis]`: the shared replay guard and the cache clears of other instances.
    shared: Option<Arc<SharedRedis>>,
    /// The count of other instances' cache clears this cache has applied.
    clears_seen: AtomicU64,
    /// Channel credentials by the id of their token key (`crate::session`).
    channel_keys: std::collections::HashMap<[u8; 16], Arc<Grant>>,
}

impl Authenticator {
    /// Builds the authenticator for a configuration. On a reload, `previous` hands over the replay
    /// guard (when the tolerance is unchanged), so a signature used just before cannot be replayed just
    /// after; the decision cache always starts empty.
    pub fn new(config: Arc<Config>, previous: Option<&Authenticator>) -> Self {
        let metrics = Metrics::global();
        let dialects = registry::caller_names();
        metrics.register_auth(&dialects, config.auth_service.is_some());
        let service = config
            .auth_service
            .as_ref()
            .map(|c| Self::service(c, &config.dns, metrics));
        let tolerance = config.clients.credentials.api_keys.tolerance_secs();
        let replay = config.clients.replay_guard.then(|| {
            previous
                .and_then(|p| {
                    p.replay.as_ref().filter(|_| {
                        p.config.clients.credentials.api_keys.tolerance_secs() == tolerance
                    })
                })
                .cloned()
                .unwrap_or_else(|| {
                    Arc::new(
                        moka::sync::Cache::builder()
                            .max_capacity(1_000_000)
                            // A timestamp is only accepted within ±tolerance, so a signature can only
                            // be replayed for 2 × tolerance after it was first accepted.
                            .time_to_live(Duration::from_secs(2 * tolerance + 1))
                            .build(),
                    )
                })
        });
        let allowed = registry::callers()
            .map(|d| {
                metrics
                    .auth_decisions
                    .with_label_values(&[d.as_str(), "allowed", "ok"])
            })
            .collect();
        let channel_keys = (config.clients.credentials.tokens.grants())
            .filter_map(|g| g.channel.as_ref().map(|c| (c.key.id(), g.clone())))
            .collect();
        Authenticator {
            config,
            service,
            replay,
            metrics,
            allowed,
            shared: None,
            clears_seen: AtomicU64::new(0),
            channel_keys,
        }
    }

    /// The same authenticator on the shared Redis, when there is one.
    pub fn with_shared(mut self, shared: Option<Arc<SharedRedis>>) -> Self {
        self.clears_seen = AtomicU64::new(shared.as_ref().map_or(0, |s| s.clears()));
        self.shared = shared;
        self
    }

    /// Applies the cache clears other instances published since the last look-up.
    fn apply_remote_clears(&self) {
        let Some(shared) = &self.shared else { return };
        let published = shared.clears();
        if self.clears_seen.load(Ordering::Acquire) != published
            && self.clears_seen.swap(published, Ordering::AcqRel) != published
        {
            self.clear_cache();
        }
    }

    fn service(
        c: &AuthServiceConfig,
        dns: &crate::config::dns::DnsSettings,
        metrics: &'static Metrics,
    ) -> Service {
        let decisions = Cache::builder()
            .max_capacity(c.max_entries)
            .expire_after(DecisionExpiry {
                positive: c.positive_ttl,
                negative: c.negative_ttl,
            })
            .eviction_listener(move |_key, _value, cause| {
                let cause = match cause {
                    RemovalCause::Expired => "expired",
                    RemovalCause::Size => "size",
                    RemovalCause::Explicit => "explicit",
                    RemovalCause::Replaced => "replaced",
                };
                metrics
                    .auth_cache_evictions
                    .with_label_values(&[cause])
                    .inc();
            })
            .build();
        let stale = c.serve_stale.map(|window| {
            Cache::builder()
                .max_capacity(c.max_entries)
                .time_to_live(c.positive_ttl + window)
                .build()
        });
        let reached = match c.endpoint.has_name() {
            false => Some(c.endpoint.clone()),
            true => {
                let name = [(c.endpoint.host.clone(), c.endpoint.addr.port())];
                let found = crate::pool::dns::resolve_all(dns, &name).pop();
                match found.expect("one result per name") {
                    Ok(addrs) => Some(c.endpoint.at(addrs[0])),
                    Err(e) => {
                        tracing::warn!(error = %e, "the auth service's name did not resolve; each call tries again");
                        None
                    }
                }
            }
        };
        Service {
            reached: ArcSwapOption::from(
                reached.map(|ep| Arc::new((ep.clone(), upstream::peer_for(&ep)))),
            ),
            endpoint: c.endpoint.clone(),
            dns: dns.clone(),
            upstream: Upstream::new(64, 64 * 1024),
            bearer: c.bearer.clone(),
            decisions,
            cache_hit: metrics.auth_cache_requests.with_label_values(&["hit"]),
            cache_miss: metrics.auth_cache_requests.with_label_values(&["miss"]),
            stale,
        }
    }

    /// Forgets every auth service decision (admin `POST /auth-cache/clear`, and on reload).
    pub fn clear_cache(&self) {
        if let Some(s) = &self.service {
            s.decisions.invalidate_all();
            if let Some(stale) = &s.stale {
                stale.invalidate_all();
            }
        }
    }

    /// Authenticates a caller of `dialect` from its request head at `now` (unix seconds): the
    /// dialect reads the credential, then it is checked by its kind.
    pub async fn authenticate(
        &self,
        dialect: Caller,
        head: &dyn RequestHead,
        now: u64,
    ) -> Result<Arc<Grant>, Denied> {
        let result = match dialect.credential(head) {
            Ok(Presented::ClientToken(p)) => self.id_token(p).await,
            Ok(Presented::ApiKey(p)) => self.api_key(p, now).await,
            Ok(Presented::Token(p)) => self.token(p).await,
            Ok(Presented::KeyId { dialect, key_id }) => self.key_id(dialect, &key_id),
            Err(d) => Err(d),
        };
        match result {
            Ok((grant, false)) => {
                // A credential over the whole request is counted once its signature is checked.
                if grant.verifier.is_none() {
                    self.allowed[dialect.index()].inc();
                }
                Ok(grant)
            }
            Ok((grant, true)) => {
                self.count(dialect, "allowed", "stale");
                Ok(grant)
            }
            Err(d) => {
                self.denied(dialect, d.reason);
                Err(d)
            }
        }
    }

    /// A conversation token a channel caller of `dialect` presents (`crate::session`): the key its
    /// claims name verifies it at `now` (one expiring more than `lifetime` ahead is refused). Expired: 403 `TokenExpired`; anything
    /// else wrong: 403. Counted like every other decision.
    pub fn session_token(
        &self,
        dialect: Caller,
        token: &str,
        now: u64,
        lifetime: u64,
    ) -> Result<(Arc<Grant>, TokenGrant), ProxyError> {
        let grant = session::token_key_id(token).and_then(|kid| self.channel_keys.get(&kid));
        let checked = grant.ok_or(TokenError::Invalid).and_then(|g| {
            let key = &g.channel.as_ref().expect("a channel key's grant").key;
            key.verify(token, now, lifetime).map(|t| (g.clone(), t))
        });
        match checked {
            Ok(ok) => {
                self.allowed[dialect.index()].inc();
                Ok(ok)
            }
            Err(TokenError::Expired) => {
                self.denied(dialect, AuthReason::Expired);
                Err(ProxyError::new(403, Reason::TokenExpired, "Token expired"))
            }
            Err(TokenError::Invalid) => {
                self.denied(dialect, AuthReason::Invalid);
                Err(ProxyError::new(403, Reason::Forbidden, "Invalid token"))
            }
        }
    }

    /// Counts a refusal decided elsewhere (scope checks) or here.
    pub fn denied(&self, dialect: Caller, reason: AuthReason) {
        self.count(dialect, reason.result(), reason.as_str());
    }

    fn count(&self, dialect: Caller, result: &str, reason: &str) {
        self.metrics
            .auth_decisions
            .with_label_values(&[dialect.as_str(), result, reason])
            .inc();
    }

    /// A bare token: the configured ones, else the auth service.
    async fn token(&self, p: TokenPresented<'_>) -> Result<(Arc<Grant>, bool), Denied> {
        let tokens = &self.config.clients.credentials.tokens;
        match (tokens.lookup(&p), &self.service) {
            (Some(g), _) => Ok((g.clone(), false)),
            (None, Some(svc)) => {
                let query = AuthQuery::token(p.dialect, &p.token).ok_or_else(invalid_token)?;
                match Box::pin(self.ask(svc, p.digest(), &query)).await? {
                    (Decision::Allowed(g), stale) => Ok((g, stale)),
                    (Decision::Denied, _) => Err(invalid_token()),
                }
            }
            (None, None) => Err(invalid_token()),
        }
    }

    /// A signing key's id: only the configured ones (the auth service is not asked for keys whose
    /// secret it would have to hand over). The signature itself is checked once the body is read
    /// (`Grant::verifier`).
    fn key_id(&self, dialect: &str, key_id: &str) -> Result<(Arc<Grant>, bool), Denied> {
        let tokens = &self.config.clients.credentials.tokens;
        match tokens.by_digest(&auth::key_id_digest(dialect, key_id)) {
            Some(g) => Ok((g.clone(), false)),
            None => Err(Denied {
                reason: AuthReason::Invalid,
                error: ProxyError::unauthorized(
                    "The security token included in the request is invalid (unknown access key id)",
                ),
            }),
        }
    }

    /// Checks a credential that covers the whole request (`Grant::verifier`) once the body is read;
    /// counted like the head's checks.
    pub fn verify_whole(
        &self,
        dialect: Caller,
        grant: &Grant,
        req: &WholeRequest<'_>,
        now: u64,
    ) -> Result<(), Denied> {
        let Some(v) = &grant.verifier else {
            return Ok(());
        };
        match v.verify(req, now) {
            Ok(()) => {
                self.allowed[dialect.index()].inc();
                Ok(())
            }
            Err(d) => {
                self.denied(dialect, d.reason);
                Err(d)
            }
        }
    }

    /// A client id and token: the configured client if its id is configured, else the auth service.
    async fn id_token(&self, p: IdTokenPresented<'_>) -> Result<(Arc<Grant>, bool), Denied> {
        let clients = &self.config.clients.credentials.client_tokens;
        match &self.service {
            Some(svc) if !clients.knows(p.client_id) => {
                let query = AuthQuery::id_token(&p).ok_or_else(|| p.refused())?;
                match Box::pin(self.ask(svc, p.digest(), &query)).await? {
                    (Decision::Allowed(g), stale) => Ok((g, stale)),
                    (Decision::Denied, _) => Err(p.refused()),
                }
            }
            _ => clients.check(&p).map(|g| (g, false)),
        }
    }

    /// An API key: the configured ones, else the auth service; then its signature and the replay
    /// guard.
    async fn api_key(
        &self,
        p: ApiKeyPresented<'_>,
        now: u64,
    ) -> Result<(Arc<Grant>, bool), Denied> {
        let clients = &self.config.clients.credentials.api_keys;
        let digest = p.digest();
        let (grant, stale) = match (clients.by_digest(&digest), &self.service) {
            (Some(g), _) => (g.clone(), false),
            (None, Some(svc)) => {
                let query = AuthQuery::api_key(&p).ok_or_else(invalid_api_key)?;
                match Box::pin(self.ask(svc, digest, &query)).await? {
                    (Decision::Allowed(g), stale) => (g, stale),
                    (Decision::Denied, _) => return Err(invalid_api_key()),
                }
            }
            (None, None) => return Err(invalid_api_key()),
        };
        auth::verify_api_key(&grant, &p, now, clients.tolerance_secs())?;
        // Only a verified signature is remembered, so forged ones cannot fill the guard.
        if let (Some(replay), Some(_)) = (&self.replay, p.timestamp) {
            self.first_use(replay, p.replay_digest()).await?;
        }
        Ok((grant, stale))
    }

    /// The replay guard: refuses a signed request seen before, here or (with `[redis]`) at any
    /// instance. What Redis accepts is remembered here too, so the `local` fallback knows it.
    async fn first_use(
        &self,
        local: &moka::sync::Cache<[u8; 32], ()>,
        digest: [u8; 32],
    ) -> Result<(), Denied> {
        let first_here = || local.entry(digest).or_insert(()).is_fresh();
        let Some(shared) = &self.shared else {
            return first_here().then_some(()).ok_or_else(replayed);
        };
        let key = shared.key("replay", &digest);
        let ttl_ms = (2 * self.config.clients.credentials.api_keys.tolerance_secs() + 1) * 1000;
        let first = shared
            .call(Op::ReplayGuard, |mut conn| async move {
                (redis::cmd("SET")
                    .arg(key)
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_ms))
                .query_async::<Option<String>>(&mut conn)
                .await
            })
            .await;
        match first {
            Ok(Some(_)) => {
                local.insert(digest, ());
                Ok(())
            }
            Ok(None) => Err(replayed()),
            Err(_) => replay_fallback(shared.settings().replay_guard_on_error, first_here),
        }
    }

    /// Asks the service (through the cache) about one credential. The flag tells a grant served from
    /// the stale copy while the service failed.
    async fn ask(
        &self,
        svc: &Service,
        key: [u8; 32],
        query: &AuthQuery<'_>,
    ) -> Result<(Decision, bool), Denied> {
        self.apply_remote_clears();
        if let Some(d) = svc.decisions.get(&key).await {
            svc.cache_hit.inc();
            return Ok((d, false));
        }
        svc.cache_miss.inc();
        // Concurrent misses for the same key wait for this one call; errors are not cached.
        let call = crate::otel::in_span(
            "auth service",
            opentelemetry::trace::SpanKind::Client,
            || {
                vec![opentelemetry::KeyValue::new(
                    "server.address",
                    svc.endpoint.authority.clone(),
                )]
            },
            |e: &ServiceError| e.0,
            self.call(svc, query),
        );
        match svc.decisions.try_get_with(key, call).await {
            Ok(decision) => {
                if let Some(stale) = &svc.stale {
                    match &decision {
                        Decision::Allowed(g) => stale.insert(key, g.clone()).await,
                        // A credential the service now refuses must not come back from the stale copy.
                        Decision::Denied => stale.invalidate(&key).await,
                    }
                }
                Ok((decision, false))
            }
            Err(e) => {
                tracing::warn!(reason = e.0, "auth service unavailable");
                if let Some(g) = match &svc.stale {
                    Some(stale) => stale.get(&key).await,
                    None => None,
                } {
                    return Ok((Decision::Allowed(g), true));
                }
                Err(Denied {
                    reason: AuthReason::Unavailable,
                    error: ProxyError::new(
                        503,
                        Reason::AuthUnavailable,
                        "the authentication service is unavailable; try again later",
                    ),
                })
            }
        }
    }

    /// One call to the auth service.
    async fn call(&self, svc: &Service, query: &AuthQuery<'_>) -> Result<Decision, ServiceError> {
        let body = serde_json::to_vec(query).expect("auth query serializes");
        let mut request = RequestBytes::post(&svc.endpoint.path, body.len());
        request
            .header("host", &svc.endpoint.authority)
            .header("content-type", "application/json")
            .header("accept", "application/json");
        let bearer = svc.bearer.as_ref().map(|b| format!("Bearer {b}"));
        if let Some(b) = &bearer {
            request.header("authorization", b);
        }
        crate::otel::Trace::current().headers(&mut |name, value| {
            request.header(name, value);
        });
        let request = request.body(&body);
        let started = Instant::now();
        let Some(reached) = svc.reach().await else {
            self.metrics
                .auth_service_errors
                .with_label_values(&["connect"])
                .inc();
            return Err(ServiceError("connect"));
        };
        let (endpoint, peer) = &*reached;
        let result = svc
            .upstream
            .exchange(peer, endpoint, &request, started)
            .await;
        self.metrics
            .auth_service_duration
            .observe(started.elapsed().as_secs_f64());
        let fail = |reason: &'static str| {
            self.metrics
                .auth_service_errors
                .with_label_values(&[reason])
                .inc();
            ServiceError(reason)
        };
        let answer = result.map_err(|e| {
            fail(match e.kind {
                TransportKind::Timeout | TransportKind::ConnectTimeout => "timeout",
                TransportKind::Connect | TransportKind::Closed => "connect",
                TransportKind::BadAnswer | TransportKind::TooLarge => "bad_answer",
            })
        })?;
        if answer.status != 200 {
            return Err(fail("status"));
        }
        let verdict: AuthVerdict =
            serde_json::from_slice(&answer.body).map_err(|_| fail("bad_answer"))?;
        match grant_from_verdict(query, verdict) {
            Ok(Some(g)) => Ok(Decision::Allowed(Arc::new(g))),
            Ok(None) => Ok(Decision::Denied),
            Err(why) => {
                tracing::warn!(problem = %why, "the auth service's answer is unusable");
                Err(fail("bad_answer"))
            }
        }
    }
}

/// Redis failed: what `[redis.replay_guard] on_redis_error` says, counted. `first_here` asks this
/// instance's own guard.
fn replay_fallback(action: OnRedisError, first_here: impl FnOnce() -> bool) -> Result<(), Denied> {
    SharedMetrics::global().fallback(Feature::ReplayGuard, action);
    match action {
        OnRedisError::Local => first_here().then_some(()).ok_or_else(replayed),
        OnRedisError::Allow => Ok(()),
        OnRedisError::Deny => Err(Denied {
            reason: AuthReason::Unavailable,
            error: ProxyError::new(
                503,
                Reason::RedisUnavailable,
                "the replay guard is unavailable; try again later",
            )
            .with_header("retry-after", "1"),
        }),
    }
}

fn replayed() -> Denied {
    Denied {
        reason: AuthReason::Replayed,
        error: ProxyError::unauthorized(
            "this signed request was already used: sign each request anew",
        ),
    }
}

fn invalid_token() -> Denied {
    Denied {
        reason: AuthReason::Invalid,
        error: ProxyError::unauthorized("invalid token"),
    }
}

fn invalid_api_key() -> Denied {
    Denied {
        reason: AuthReason::Invalid,
        error: ProxyError::unauthorized(auth::MSG_INVALID_API_KEY),
    }
}
