//! The public listener: the chat request path, as the named phases [`ChatService::serve`] lists.
//!
//! admit (route, method, dialect, authenticate) → read and parse → to the bot (target, scope,
//! translate, sign) → forward → to the caller. Nothing reaches a backend before the whole body was
//! read, authenticated, validated and translated; every error is rendered in the caller's dialect.
//! Rate limits are checked after `admit` (the credential's) and after `parse` (the end user's), the
//! backend's `max_in_flight` just before `forward` (`crate::limits`).
//! Vendor rules live in the dialects (`crate::dialect`); this file only calls their verbs.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;
use pingora::http::RequestHeader;
use pingora::protocols::http::ServerSession;

use crate::auth::Grant;
use crate::authn::Authenticator;
use crate::channel::Channels;
use crate::config::{Backend, Config, Route, Target};
use crate::conversations::{self, ConversationStore};
use crate::delivery::Deliveries;
use crate::dialect::{
    self, registry, AfterAnswer, AnswerContext, AnswerIds, Bot, BotRequestContext, Caller,
    Conversation, Outgoing, RequestHead,
};
use crate::error::{ProxyError, Reason};
use crate::httpio::{self, Answer, BodyError, Handler};
use crate::limits::{in_flight::BackendSlots, Limiter, Plan};
use crate::metrics::{AccessRecord, LazyRouteMetrics, Metrics};
use crate::migration::shadow::{Job, PrimaryAnswer, ShadowConversation};
use crate::migration::{self, Migration};
use crate::model::{request_id_is_sane, ChatAnswer, ChatRequest};
use crate::otel::{self, Trace};
use crate::pool::{PoolError, Pools};
use crate::shared::redis::SharedRedis;
use crate::tokens::Tokens;
use crate::upstream::{Endpoint, Exchange, RequestBytes, Upstream};
use botbridge_core::request::WholeRequest;

mod async_mode;
mod bot_replies;
mod channel;
mod channel_bot;
mod channel_ops;

const REQUEST_ID: &str = "x-request-id";
const JSON: &str = "application/json";

/// The wall clock the request path reads: once per request, for signing and timestamps. Tests pass
/// their own to check time-dependent rules (signature tolerance) without waiting.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// The chat listener's state: configuration, backend pools and the upstream connections. Cheap to
/// clone (shared state), so async mode can finish a request on its own task (`async_mode`).
#[derive(Clone)]
pub struct ChatService {
    runtime: Arc<ArcSwap<Runtime>>,
    clock: Clock,
    upstream: Arc<Upstream>,
    /// Shadow copies' own pooled client, so they never take the callers' connections.
    shadow_upstream: Arc<Upstream>,
    metrics: &'static Metrics,
    next_message_id: Arc<AtomicU64>,
    user_agent: String,
    deliveries: Deliveries,
    bot_replies: Arc<bot_replies::BotReplies>,
}

/// Everything the request path reads that a configuration reload replaces, swapped as one.
pub struct Runtime {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// foldhash, not std's SipHash: fixed at load, looked up once a request (bench/RESULTS.md).
    routes_by_path: HashMap<String, usize, foldhash::fast::RandomState>,
    /// Routes by `path_prefix`, the longest first.
    routes_by_prefix: Vec<(String, usize)>,
    /// Each backend's pool of endpoints (index as `Config::backends`).
    pub pools: Arc<Pools>,
    /// Caller authentication, with its own (fresh) auth service decision cache.
    pub authn: Arc<Authenticator>,
    route_metrics: Vec<LazyRouteMetrics>,
    /// The dialects `ingress = "auto"` means, for refusals before a route is known.
    auto: Vec<Caller>,
    /// Rate limits (their in-process buckets outlive a reload).
    limits: Limiter,
    /// `max_in_flight` per backend.
    in_flight: BackendSlots,
    /// Access tokens of bots that need them (kept over a reload).
    tokens: Tokens,
    /// The conversations of stateful bots (kept over a reload).
    conversations: Arc<ConversationStore>,
    /// The conversations of channel callers (kept over a reload).
    channels: Arc<Channels>,
    /// Every browser origin a channel credential allows; `None` when no route is a channel.
    channel_origins: Option<Vec<String>>,
    /// `[redis]`, connected once per process and handed from runtime to runtime.
    shared: Option<Arc<SharedRedis>>,
    /// Shadows, canaries and their report (handed over on reload).
    pub migration: Migration,
}

impl Runtime {
    /// Builds the runtime of a configuration and creates its metric series. On a reload, `previous`
    /// is the runtime being replaced (it hands over what must outlive a reload: the replay guard,
    /// the rate limit buckets, the requests in flight per backend, the Redis connection and the
    /// state of backends and endpoints that stay).
    pub fn new(config: Arc<Config>, previous: Option<&Runtime>) -> Self {
        let metrics = Metrics::global();
        // A backend's series (errors, pool, conversation restarts, token fetches) are made with the
        // series of the first route that reaches it, at that route's first request
        // (`RouteMetrics`).
        let shared = match previous {
            Some(p) => p.shared.clone(),
            None => config.process.redis.as_ref().map(SharedRedis::start),
        };
        for r in config.routes.iter().filter(|r| r.fallback.is_some()) {
            for b in r.backends().into_iter().filter(|&b| Some(b) != r.fallback) {
                let labels = [r.name.as_str(), config.backends[b].name.as_str()];
                metrics.pool.fallbacks.with_label_values(&labels);
            }
        }
        Runtime {
            limits: Limiter::new(
                &config.rate_limits,
                previous.map(|p| &p.limits),
                shared.clone(),
            ),
            in_flight: BackendSlots::new(&config.backends, previous.map(|p| &p.in_flight)),
            tokens: Tokens::new(&config),
            conversations: match previous {
                Some(p) => p.conversations.clone(),
                None => ConversationStore::new(&config.process.conversations, shared.clone()),
            },
            channels: match previous {
                Some(p) => p.channels.clone(),
                None => Channels::new(&config.process.conversations, shared.clone()),
            },
            channel_origins: channel::channel_origins(&config),
            routes_by_path: (config.routes.iter().enumerate())
                .filter(|(_, r)| !r.prefix)
                .map(|(i, r)| (r.path.clone(), i))
                .collect(),
            routes_by_prefix: prefixes(&config),
            pools: Arc::new(Pools::new(&config, previous.map(|p| &*p.pools))),
            authn: Arc::new(
                Authenticator::new(config.clone(), previous.map(|p| &*p.authn))
                    .with_shared(shared.clone()),
            ),
            route_metrics: (config.routes.iter())
                .map(|_| LazyRouteMetrics::default())
                .collect(),
            auto: registry::callers().filter(|c| c.in_auto()).collect(),
            migration: {
                let m = Migration::new(&config, previous.map(|p| &p.migration));
                if let (None, Some(s)) = (previous, &shared) {
                    crate::migration::fleet::start_publishing(s, m.report_arc());
                }
                m
            },
            config,
            shared,
        }
    }

    /// The shared Redis, with `[redis]`.
    pub fn shared(&self) -> Option<&Arc<SharedRedis>> {
        self.shared.as_ref()
    }

    /// The route of a path: the one with this exact path, else the longest prefix it starts with.
    fn route_for(&self, path: &str) -> Option<usize> {
        if let Some(&i) = self.routes_by_path.get(path) {
            return Some(i);
        }
        (self.routes_by_prefix.iter())
            .find(|(p, _)| path.starts_with(p.as_str()))
            .map(|&(_, i)| i)
    }

    /// Tells the other instances to clear their auth caches (with `[redis]`; else nothing to do).
    pub fn publish_cache_clear(&self) {
        if let Some(s) = &self.shared {
            s.publish_clear();
        }
    }
}

/// The routes that take a path prefix, the longest prefix first.
fn prefixes(config: &Config) -> Vec<(String, usize)> {
    let mut out: Vec<(String, usize)> = (config.routes.iter().enumerate())
        .filter(|(_, r)| r.prefix)
        .map(|(i, r)| (r.path.clone(), i))
        .collect();
    out.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    out
}

/// A request head as the dialects see it.
pub(crate) struct Head<'a>(pub(crate) &'a RequestHeader);

impl RequestHead for Head<'_> {
    fn method(&self) -> &str {
        self.0.method.as_str()
    }
    fn path(&self) -> &str {
        self.0.uri.path()
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.0.headers.get(name).map(|v| v.as_bytes())
    }
    fn query(&self) -> Option<&str> {
        self.0.uri.query()
    }
}

/// One request on its way through the phases, borrowed by each of them (as pingora's `CTX`) instead
/// of a growing list of arguments: the runtime it started on, when it arrived, and the access
/// record every phase adds to.
struct Call<'r> {
    rt: &'r Arc<Runtime>,
    /// The wall clock when the request's head was read: read once, later times derived from it.
    received: SystemTime,
    /// The monotonic clock at the same moment.
    arrived: Instant,
    out: AccessRecord,
    /// The conversation the request went to a stateful bot in (set by `forward`).
    conversation: Option<Conversation>,
    /// In async mode, what takes a channel bot's replies as they arrive (`channel_bot`).
    partial: Option<&'r mut channel_bot::Partial<'r>>,
    /// The request's span (nothing without `[tracing]`).
    trace: Trace,
}

/// What admission established: the route, the caller's dialect and credential, and the body if
/// detection had to read it.
struct Admitted<'r> {
    route: &'r Route,
    ingress: Caller,
    grant: Arc<Grant>,
    body: Option<Bytes>,
    /// The rate limits the request is subject to.
    limits: Plan<'r>,
}

/// A request ready for a bot: the target, the backend (the target's, or the route's fallback), the
/// body in its dialect and when it was signed.
struct ToBot<'r> {
    /// The route's target, or the canary's for a user among its share.
    target: Cow<'r, Target>,
    /// Index into `Config::backends`.
    index: usize,
    backend: &'r Backend,
    body: Vec<u8>,
    signed_at: u64,
}

/// Which backend a request is rendered for: the target's, or the route's fallback for it.
struct Destination<'r> {
    target: Cow<'r, Target>,
    /// Index into `Config::backends`.
    index: usize,
    signed_at: u64,
}

/// Message and interaction ids for one answer, drawn from the service's counter on demand.
struct ServiceIds<'a>(&'a AtomicU64);

impl AnswerIds for ServiceIds<'_> {
    fn message_ids(&self, count: u64) -> u64 {
        self.0.fetch_add(count, Ordering::Relaxed)
    }
    fn interaction_id(&self) -> String {
        uuid::Uuid::new_v4().to_string()
    }
}

impl Call<'_> {
    /// The request's id (empty until admission gave it one).
    fn request_id(&self) -> &str {
        self.out.request_id.as_deref().unwrap_or_default()
    }
}

impl ChatService {
    /// Builds the service on a (reloadable) runtime, on the system clock.
    pub fn new(runtime: Arc<ArcSwap<Runtime>>) -> Self {
        Self::with_clock(runtime, Arc::new(SystemTime::now))
    }

    /// Builds the service on a (reloadable) runtime and the given wall clock.
    pub fn with_clock(runtime: Arc<ArcSwap<Runtime>>, clock: Clock) -> Self {
        let server = runtime.load().config.process.server.clone();
        let start_id = clock()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        let config = runtime.load_full().config.clone();
        let shared = runtime.load().shared.clone();
        let deliveries = Deliveries::new(&config.process.delivery, config.message_bodies, shared);
        ChatService {
            shadow_upstream: Arc::new(Upstream::new(
                server.upstream_pool_size,
                server.max_answer_bytes,
            )),
            upstream: Arc::new(Upstream::new(
                server.upstream_pool_size,
                server.max_answer_bytes,
            )),
            metrics: Metrics::global(),
            next_message_id: Arc::new(AtomicU64::new(start_id)),
            deliveries,
            bot_replies: Arc::default(),
            user_agent: format!("botbridge/{}", env!("CARGO_PKG_VERSION")),
            runtime,
            clock,
        }
    }

    /// The async delivery queue (the server stops it gracefully and feeds it the spool).
    pub fn deliveries(&self) -> Deliveries {
        self.deliveries.clone()
    }

    /// The request path, phase by phase. Returns the answer body on success.
    async fn serve(
        &self,
        cx: &mut Call<'_>,
        session: &mut ServerSession,
    ) -> Result<Vec<u8>, ProxyError> {
        let rt = cx.rt;
        let mut admitted = self.admit(cx, session).await?;
        // A credential checked over the whole request spends its rate only once checked: its key
        // id alone is no secret, and must not let anyone drain the key's bucket.
        let checked_later = admitted.grant.verifier.is_some();
        if !admitted.limits.is_empty() && !checked_later {
            rt.limits.admit(&admitted.limits).await?;
        }
        let body = match admitted.body.take() {
            Some(b) => b,
            None => self.read_body(cx, session).await?,
        };
        if admitted.grant.verifier.is_some() {
            let whole = WholeRequest {
                head: &Head(session.req_header()),
                body: &body,
            };
            let now = unix_secs(cx.received);
            (rt.authn).verify_whole(admitted.ingress, &admitted.grant, &whole, now)?;
            if !admitted.limits.is_empty() {
                rt.limits.admit(&admitted.limits).await?;
            }
        }
        let req = self.parse(cx, &admitted, session.req_header().uri.path(), &body)?;
        if !admitted.limits.is_empty() {
            (rt.limits.admit_user(&admitted.limits, &req.user_id)).await?;
        }
        // Async mode (a caller's callback URL or a client's webhook): answered now, the bot later.
        if let Some(target) = self.async_target(&admitted, &req).await? {
            return self.accept_async(cx, admitted, &req, &body, target).await;
        }
        let (to_bot, exchange) = self.exchange_for(cx, &admitted, &req).await?;
        let (answer, after) = (self.to_caller(cx, &admitted, &req, &to_bot, &exchange))
            .inspect_err(|e| log_unusable_answer(rt, to_bot.backend, e, cx.request_id()))?;
        if let Some(after) = after {
            let keep = rt
                .conversations
                .keep(&to_bot.backend.name, &req.user_id, after);
            Box::pin(keep).await;
        }
        self.shadow(cx, &admitted, &req, &to_bot, &exchange);
        Ok(answer)
    }

    /// [`ChatService::serve`], with the request's span as the current context when it is sampled
    /// (boxed then: the wrapper would otherwise grow every request's future).
    async fn serve_traced(
        &self,
        cx: &mut Call<'_>,
        session: &mut ServerSession,
        trace: &Trace,
    ) -> Result<Vec<u8>, ProxyError> {
        if trace.is_sampled() {
            Box::pin(trace.scope(self.serve(cx, session))).await
        } else {
            self.serve(cx, session).await
        }
    }

    /// To the bot and back: the request translated and signed, the exchange, and on an open
    /// circuit the route's fallback instead.
    async fn exchange_for<'r>(
        &self,
        cx: &mut Call<'r>,
        admitted: &Admitted<'r>,
        req: &ChatRequest<'_>,
    ) -> Result<(ToBot<'r>, Exchange), ProxyError> {
        let to_bot = self.to_bot(cx, admitted, req)?;
        let collect = self.forward_and_collect(cx, admitted, &to_bot, req);
        match collect.await {
            Err(e) if e.reason == Reason::CircuitOpen && admitted.route.fallback.is_some() => {
                self.fall_back(cx, admitted, req, &to_bot).await
            }
            result => Ok((to_bot, result?)),
        }
    }

    /// Admit: route by path, POST only, tell the caller's dialect, authenticate from the headers
    /// (no body is read for a caller we do not know, unless only its shape can tell the dialect).
    async fn admit<'r>(
        &self,
        cx: &mut Call<'r>,
        session: &mut ServerSession,
    ) -> Result<Admitted<'r>, ProxyError> {
        let (rt, out): (&'r Runtime, _) = (cx.rt, &mut cx.out);
        let head = Head(session.req_header());
        let Some(route_idx) = rt.route_for(head.0.uri.path()) else {
            // Refused in the dialect the headers tell, among all that `auto` takes.
            out.ingress = registry::detect_by_head(&rt.auto, &head);
            return Err(ProxyError::new(
                404,
                Reason::NotFound,
                "no route for this path",
            ));
        };
        out.route = Some(route_idx);
        let route = &rt.config.routes[route_idx];
        out.ingress = route
            .fixed()
            .or_else(|| registry::detect_by_head(&route.ingress, &head));
        if head.0.method != http::Method::POST {
            return Err(ProxyError::new(
                405,
                Reason::MethodNotAllowed,
                "only POST is allowed here",
            ));
        }
        let max_queue = rt.config.limits.max_queue;
        if crate::overload::shed(max_queue) {
            out.retry_after = Some(crate::overload::retry_after(max_queue));
            return Err(ProxyError::new(
                503,
                Reason::Overloaded,
                "the proxy is over capacity; try again later",
            ));
        }
        out.request_id = Some(request_id(head.0));
        let (ingress, body) = match out.ingress {
            Some(d) => (d, None),
            None => self.detect_by_body(cx, route, session).await?,
        };
        let head = Head(session.req_header());
        let authenticating = rt
            .authn
            .authenticate(ingress, &head, unix_secs(cx.received));
        let grant = if cx.trace.is_sampled() {
            let attributes = || vec![KeyValue::new("botbridge.caller_dialect", ingress.as_str())];
            let why = |e: &crate::auth::Denied| e.error.reason.as_str();
            let kind = SpanKind::Internal;
            let traced = otel::in_span("authenticate", kind, attributes, why, authenticating);
            Box::pin(traced).await?
        } else {
            authenticating.await?
        };
        tracing::trace!(caller = &*grant.name, "caller authenticated");
        let limits = rt.limits.plan(route, &grant);
        Ok(Admitted {
            route,
            ingress,
            grant,
            body,
            limits,
        })
    }

    /// A caller that sent no credential header at all on a route that takes several dialects: the
    /// body's shape tells which dialect to refuse it in.
    async fn detect_by_body(
        &self,
        cx: &mut Call<'_>,
        route: &Route,
        session: &mut ServerSession,
    ) -> Result<(Caller, Option<Bytes>), ProxyError> {
        let body = self.read_body(cx, session).await?;
        let d = registry::detect_by_body(&route.ingress, &body).ok_or_else(|| {
            let hints: Vec<&str> = route.ingress.iter().map(|c| c.credential_hint()).collect();
            ProxyError::bad_request(format!(
                "cannot tell the request's dialect: send {}",
                hints.join(" or ")
            ))
        })?;
        cx.out.ingress = Some(d);
        Ok((d, Some(body)))
    }

    /// Read and parse: the caller's body in its dialect, addressed to a business.
    fn parse<'b>(
        &self,
        cx: &mut Call<'_>,
        a: &Admitted<'_>,
        path: &str,
        body: &'b [u8],
    ) -> Result<ChatRequest<'b>, ProxyError> {
        let out = &mut cx.out;
        if cx.rt.config.message_bodies {
            tracing::trace!(target: "botbridge::messages", request_id = out.request_id.as_deref(), from = "caller", body = %String::from_utf8_lossy(body));
        }
        let mut req = (a.ingress.parse_request(path, body))
            .inspect_err(|_| self.translation_error(a.route, "invalid_request", 1))?;
        // A caller that names no business is addressed by its credential's, else the route's.
        req.business_id = req
            .business_id
            .or(a.grant.business_id)
            .or(a.route.business_id);
        if let Some(rid) = req.caller_request_id() {
            out.request_id = Some(rid.to_owned());
        }
        Ok(req)
    }

    /// To the bot: pick the target, check the credential's scope, translate and sign.
    fn to_bot<'r>(
        &self,
        cx: &mut Call<'r>,
        a: &Admitted<'r>,
        req: &ChatRequest<'_>,
    ) -> Result<ToBot<'r>, ProxyError> {
        let rt: &'r Runtime = cx.rt;
        let target = a.route.target(req.business_id).ok_or_else(|| {
            ProxyError::new(400, Reason::UnknownTarget, "invalid business_id provided")
        })?;
        let route_index = cx.out.route.unwrap_or_default();
        let target = (rt.migration).canary(route_index, a.route, target, &req.user_id);
        // Least privilege: the credential reaches only its routes and businesses.
        (a.grant.scope.check(&a.route.name, req.business_id))
            .inspect_err(|d| rt.authn.denied(a.ingress, d.reason))?;
        // Signed at the moment of sending, after the caller's body has been read.
        let signed_at = unix_secs(cx.received + cx.arrived.elapsed());
        let to = Destination {
            index: target.backend,
            target,
            signed_at,
        };
        self.render_for(cx, a, req, to)
    }

    /// The request in the dialect of one backend (the target's, or the route's fallback).
    fn render_for<'r>(
        &self,
        cx: &mut Call<'r>,
        a: &Admitted<'r>,
        req: &ChatRequest<'_>,
        to: Destination<'r>,
    ) -> Result<ToBot<'r>, ProxyError> {
        let (rt, out): (&'r Runtime, _) = (cx.rt, &mut cx.out);
        let Destination {
            target,
            index,
            signed_at,
        } = to;
        out.backend = Some(index);
        let backend = &rt.config.backends[index];
        let ctx = BotRequestContext {
            request_id: out.request_id.as_deref().unwrap_or_default(),
            business_id: req.business_id,
            flow_trigger: a.route.flow_trigger,
        };
        let body = (backend.bot.render_request(req, &ctx))
            .inspect_err(|_| self.translation_error(a.route, "untranslatable", 1))?;
        Ok(ToBot {
            target,
            index,
            backend,
            body,
            signed_at,
        })
    }

    /// The whole request for one endpoint of the backend. Header values are checked when the
    /// configuration is loaded and request ids when they arrive.
    fn request_bytes(
        &self,
        ep: &Endpoint,
        to: &ToBot<'_>,
        request_id: &str,
        (path, token): (Option<&str>, Option<&str>),
        request: &Trace,
    ) -> Vec<u8> {
        let bot = &*to.backend.bot;
        let at = (path, to.signed_at, token);
        // A sampled request's current span is the try's (`Pool::attempt`); one not sampled has no
        // current span, and its own context goes on.
        let current = Trace::current();
        let trace = if current.is_some() { &current } else { request };
        self.signed_request(ep, bot, &to.body, request_id, at, trace)
    }

    /// `body` for `ep` (at `path` below its URL's path, when the bot gave one), with the headers
    /// every bot request has and `bot`'s signature over the whole request, signed at `signed_at`
    /// (with its access token, for a bot that needs one).
    fn signed_request(
        &self,
        ep: &Endpoint,
        bot: &dyn Bot,
        body: &[u8],
        request_id: &str,
        (path, signed_at, token): (Option<&str>, u64, Option<&str>),
        trace: &Trace,
    ) -> Vec<u8> {
        let joined;
        let target = match path {
            Some(p) => {
                joined = join_path(&ep.path, p);
                joined.as_str()
            }
            None => ep.path.as_str(),
        };
        let mut up = RequestBytes::post(target, body.len());
        up.header("host", &ep.authority)
            .header("content-type", JSON)
            .header("accept", JSON)
            .header("user-agent", &self.user_agent)
            .header(REQUEST_ID, request_id);
        trace.headers(&mut |name, value| {
            up.header(name, value);
        });
        let out = Outgoing {
            unix_secs: signed_at,
            method: "POST",
            authority: &ep.authority,
            target,
            content_type: JSON,
            body,
            token,
        };
        bot.sign(&out, &mut |name, value| {
            up.header(name, value);
        });
        up.body(body)
    }

    /// Forward: the request to one endpoint of the backend's pool (another only if nothing was
    /// sent), keyed by the user for `sticky`; the status of a failure is chosen from its kind
    /// (`ProxyError::from`), 503 while the backend's circuit is open.
    async fn forward(
        &self,
        cx: &mut Call<'_>,
        to: &ToBot<'_>,
        req: &ChatRequest<'_>,
    ) -> Result<Exchange, ProxyError> {
        let rt = cx.rt;
        let _slot = rt.in_flight.enter(to.index)?;
        // Boxed: the fetch's future is as large as an exchange's, and inline it would grow every
        // request's future (and its copies), tokens or not.
        let token = match rt.tokens.keeper(to.index) {
            Some(k) => Some(
                (Box::pin(k.get()).await)
                    .inspect_err(|e| self.backend_error(to.backend, e.reason))?,
            ),
            None => None,
        };
        let conversation = match to.backend.bot.conversations() {
            Some(rules) => {
                let current = rt
                    .conversations
                    .current(&to.backend.name, rules, &req.user_id);
                Some(Box::pin(current).await?)
            }
            None => None,
        };
        if let (Some(bot), Some(current)) = (to.backend.bot.channel(), &conversation) {
            let partial = cx.partial.take();
            return Box::pin(self.converse(cx, to, req, bot, current, partial)).await;
        }
        let path = to.backend.bot.target(req, conversation.as_ref());
        cx.conversation = conversation;
        let out = &mut cx.out;
        let started = Instant::now();
        let request_id = out.request_id.as_deref().unwrap_or_default();
        let at = (path.as_deref(), token.as_deref());
        let trace = &cx.trace;
        let build = |ep: &Endpoint| self.request_bytes(ep, to, request_id, at, trace);
        let result = (rt.pools.get(to.index))
            .forward(&self.upstream, req.user_id.as_bytes(), build, started)
            .await;
        let ended = result
            .as_ref()
            .map_or_else(|_| Instant::now(), |x| x.answered_at);
        out.backend_time = Some(ended.saturating_duration_since(started));
        let exchange = result
            .map_err(|e| pool_error(e, out))
            .inspect_err(|e| self.backend_error(to.backend, e.reason))?;
        if let (401, Some(t)) = (exchange.status, &token) {
            rt.tokens.keeper(to.index).inspect(|k| k.refused(t));
        }
        out.from_backend = true;
        if rt.config.message_bodies {
            tracing::trace!(target: "botbridge::messages", request_id = out.request_id.as_deref(), from = "backend", body = %String::from_utf8_lossy(&exchange.body));
        }
        Ok(exchange)
    }

    /// The primary's circuit is open: the route's fallback bot gets the request instead, in its own
    /// dialect, and its answer is translated as usual.
    async fn fall_back<'r>(
        &self,
        cx: &mut Call<'r>,
        a: &Admitted<'r>,
        req: &ChatRequest<'_>,
        primary: &ToBot<'r>,
    ) -> Result<(ToBot<'r>, Exchange), ProxyError> {
        let fallback = a.route.fallback.expect("checked by the caller");
        cx.out.retry_after = None;
        (self.metrics.pool.fallbacks)
            .with_label_values(&[&a.route.name, &primary.backend.name])
            .inc();
        let to = Destination {
            target: primary.target.clone(),
            index: fallback,
            signed_at: primary.signed_at,
        };
        let to = self.render_for(cx, a, req, to)?;
        let exchange = self.forward(cx, &to, req).await?;
        Ok((to, exchange))
    }

    /// Forward, and for a bot that answers on the proxy's webhook (`dialect::ReplyWebhook`), its
    /// replies.
    async fn forward_and_collect(
        &self,
        cx: &mut Call<'_>,
        a: &Admitted<'_>,
        to: &ToBot<'_>,
        req: &ChatRequest<'_>,
    ) -> Result<Exchange, ProxyError> {
        let owner = || (a.grant.limits.id, a.route.name.clone());
        let waiter = self.bot_replies.register(to, req, owner)?;
        let exchange = self.forward(cx, to, req).await?;
        match waiter {
            Some(w) => w.collect(exchange).await,
            None => Ok(exchange),
        }
    }

    /// Shadow: for a user the route's shadow samples, the same canonical request rendered and
    /// signed for the shadow bot and handed, with the primary's answer bytes, to a task off the
    /// caller's path (`crate::migration`). Costs nothing for routes without a shadow.
    fn shadow(
        &self,
        cx: &Call<'_>,
        a: &Admitted<'_>,
        req: &ChatRequest<'_>,
        to: &ToBot<'_>,
        exchange: &Exchange,
    ) {
        let (rt, out) = (cx.rt, &cx.out);
        let route = out.route.unwrap_or_default();
        let Some(target) = rt.migration.sampled(route, &req.user_id, to.target.backend) else {
            return;
        };
        let request_id = out.request_id.as_deref().unwrap_or_default();
        let copy = migration::shadow_request(target, req);
        let ctx = BotRequestContext {
            request_id,
            business_id: copy.business_id,
            flow_trigger: a.route.flow_trigger,
        };
        let signed_at = unix_secs((self.clock)());
        let index = target.settings.backend;
        let span = cx.trace.child("shadow copy", SpanKind::Client);
        span.set(|| {
            vec![KeyValue::new(
                "botbridge.backend",
                target.backend.name.clone(),
            )]
        });
        let bot = &*target.backend.bot;
        let conversation = (bot.conversations()).map(|c| ShadowConversation {
            store: rt.conversations.clone(),
            current: (rt.conversations)
                .peek(&target.backend.name, &copy.user_id)
                .unwrap_or_else(|| c.first(&copy.user_id)),
            user: copy.user_id.to_string(),
        });
        let request = (bot.render_request(&copy, &ctx)).and_then(|body| {
            let ep = rt.pools.get(index).first_endpoint().ok_or_else(|| {
                ProxyError::new(
                    502,
                    Reason::BackendConnect,
                    "the shadow bot has no address yet",
                )
            })?;
            let path = bot.target(&copy, conversation.as_ref().map(|c| &c.current));
            let token = rt.tokens.peek(index);
            let at = (path.as_deref(), signed_at, token.as_deref());
            let bytes = self.signed_request(&ep, bot, &body, request_id, at, &span);
            Ok((ep, bytes))
        });
        let primary = PrimaryAnswer {
            bot: to.backend.bot.clone(),
            status: exchange.status,
            body: exchange.body.clone(),
            latency: out.backend_time.unwrap_or_default(),
        };
        let job = Job {
            request,
            request_id: request_id.to_owned(),
            primary,
            conversation,
            trace: span,
        };
        rt.migration.offer(target, job, &self.shadow_upstream);
    }

    /// To the caller: the bot's answer read in its dialect and rendered in the caller's.
    fn to_caller(
        &self,
        cx: &Call<'_>,
        a: &Admitted<'_>,
        req: &ChatRequest<'_>,
        to: &ToBot<'_>,
        exchange: &Exchange,
    ) -> Result<(Vec<u8>, Option<AfterAnswer>), ProxyError> {
        let (answer, after) = self.read_answer(cx, a, to, exchange)?;
        let ctx = AnswerContext {
            ids: &ServiceIds(&self.next_message_id),
            received: cx.received,
            request_id: cx.request_id(),
            business_name: &to.target.business_name,
            bot_name: &a.route.bot_name,
            route_name: &a.route.name,
            business_id: req.business_id,
            shape: a.route.answer_shape,
        };
        Ok((a.ingress.render_answer(req, &answer, &ctx), after))
    }

    /// The bot's answer read in its dialect (refusals and lost messages counted), and what it does
    /// to the conversation of a stateful bot.
    fn read_answer<'e>(
        &self,
        cx: &Call<'_>,
        a: &Admitted<'_>,
        to: &ToBot<'_>,
        exchange: &'e Exchange,
    ) -> Result<(ChatAnswer<'e>, Option<AfterAnswer>), ProxyError> {
        let keep_raw = a.ingress.keeps_raw();
        let answer = (to
            .backend
            .bot
            .parse_answer(exchange.status, &exchange.body, keep_raw))
        .inspect_err(|e| {
            if e.reason.is_backend() {
                self.backend_error(to.backend, e.reason);
            }
            if e.reason == Reason::BackendBadAnswer {
                self.translation_error(a.route, "invalid_answer", 1);
            }
        })?;
        if answer.dropped > 0 && !a.ingress.passes_through(&answer, a.route.answer_shape) {
            self.translation_error(a.route, "dropped_message", answer.dropped as u64);
            tracing::debug!(
                dropped = answer.dropped,
                "backend messages with no rendering for this caller"
            );
        }
        let after = after_answer(cx, to, &answer);
        Ok((answer, after))
    }

    /// Checks the content type, then reads the whole body up to the limit.
    async fn read_body(
        &self,
        cx: &mut Call<'_>,
        session: &mut ServerSession,
    ) -> Result<Bytes, ProxyError> {
        let ct = session.req_header().headers.get(http::header::CONTENT_TYPE);
        if !is_json(ct.map(|v| v.as_bytes())) {
            return Err(ProxyError::new(
                415,
                Reason::UnsupportedMediaType,
                "Content-Type must be application/json",
            ));
        }
        self.read_any_body(cx, session).await
    }

    /// Reads the whole body up to the limit, whatever its content type (an optional one).
    async fn read_any_body(
        &self,
        cx: &mut Call<'_>,
        session: &mut ServerSession,
    ) -> Result<Bytes, ProxyError> {
        let limit = cx.rt.config.limits.max_body_bytes;
        let body = httpio::read_body(session, limit)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge => ProxyError::new(
                    413,
                    Reason::BodyTooLarge,
                    format!("the request body is larger than {limit} bytes"),
                ),
                BodyError::TimedOut => ProxyError::new(
                    408,
                    Reason::RequestTimeout,
                    "the request body took too long",
                ),
                BodyError::Io(_) => ProxyError::bad_request("the request body could not be read"),
            })?;
        cx.out.bytes_in = body.len();
        Ok(body)
    }

    fn translation_error(&self, route: &Route, reason: &str, n: u64) {
        self.metrics
            .translation_errors
            .with_label_values(&[&route.name, reason])
            .inc_by(n);
    }

    fn backend_error(&self, backend: &Backend, reason: Reason) {
        self.metrics
            .backend_errors
            .with_label_values(&[&backend.name, reason.as_str()])
            .inc();
    }

    /// The answer to a failed request, in the caller's dialect; the connection stays usable only if
    /// the unread body could be drained.
    async fn refusal(
        &self,
        cx: &mut Call<'_>,
        session: &mut ServerSession,
        err: ProxyError,
    ) -> Answer {
        let (rt, out) = (cx.rt, &mut cx.out);
        out.error = Some(err.reason);
        let mut a = error_answer(out.ingress, &err);
        if err.reason == Reason::MethodNotAllowed && !err.headers.iter().any(|(n, _)| *n == "allow")
        {
            a = a.with_header("allow", "POST");
        }
        a.headers.extend(err.headers);
        if let Some(wait) = (out.retry_after)
            .filter(|_| matches!(err.reason, Reason::CircuitOpen | Reason::Overloaded))
        {
            a = a.with_header("retry-after", retry_after_secs(wait).to_string());
        }
        // An unread body must be drained before the connection can serve another request; one
        // already found oversized, or past its deadline, is not read any further (the connection
        // closes; after a 413 it lingers, see `httpio::App`).
        if matches!(err.reason, Reason::BodyTooLarge | Reason::RequestTimeout) {
            a.keepalive = false;
        } else if !session.is_body_done() {
            a.keepalive = httpio::discard_body(session, rt.config.limits.max_body_bytes).await;
        }
        a
    }
}

#[async_trait]
impl Handler for ChatService {
    async fn handle(&self, session: &mut ServerSession) -> Answer {
        let started = Instant::now();
        let _in_flight = InFlight::enter(self.metrics);
        let rt = self.runtime.load_full();
        if let Some(answer) = self.bot_webhook(&rt, session).await {
            return answer;
        }
        let trace = Trace::server("chat request", &session.req_header().headers);
        let mut cx = Call {
            rt: &rt,
            received: (self.clock)(),
            arrived: started,
            out: AccessRecord::default(),
            conversation: None,
            partial: None,
            trace: trace.clone(),
        };
        let channel = rt.channel_route(session.req_header().uri.path());
        let mut answer = match channel {
            None => match self.serve_traced(&mut cx, session, &trace).await {
                Ok(body) => Answer::json(200, body),
                Err(err) => self.refusal(&mut cx, session, err).await,
            },
            Some(c) => {
                let serving = Box::pin(self.serve_channel(&mut cx, session, c));
                let mut a = match trace.scope(serving).await {
                    Ok(a) => a,
                    Err(err) => self.refusal(&mut cx, session, err).await,
                };
                rt.cors(session.req_header(), &mut a);
                a
            }
        };
        let took = started.elapsed();
        let mut out = cx.out;
        if trace.is_sampled() {
            end_request_span(&trace, &rt, &out, session.req_header(), answer.status);
            out.trace_id = trace.trace_id();
        }
        out.record(
            self.metrics,
            &rt.config,
            &rt.route_metrics,
            answer.status,
            answer.body.len(),
            took,
        );
        if let Some(id) = out.request_id {
            answer = answer.with_header(REQUEST_ID, id);
        }
        answer
    }

    /// A request refused before it reached [`ChatService::serve`] (malformed framing, an oversize
    /// head, a timeout, a full listener), in the caller's dialect if its head tells it, else readable
    /// by every dialect.
    fn head_refusal(&self, head: Option<&RequestHeader>, err: &ProxyError) -> Answer {
        let rt = self.runtime.load();
        error_answer(head.and_then(|h| caller_of(&rt, h)), err)
    }
}

/// The request span's attributes, and its end.
fn end_request_span(
    trace: &Trace,
    rt: &Runtime,
    out: &AccessRecord,
    head: &RequestHeader,
    status: u16,
) {
    trace.set(|| {
        let mut a = vec![
            KeyValue::new("http.request.method", head.method.to_string()),
            KeyValue::new("url.path", head.uri.path().to_owned()),
            KeyValue::new("http.response.status_code", i64::from(status)),
        ];
        if let Some(r) = out.route {
            a.push(KeyValue::new(
                "botbridge.route",
                rt.config.routes[r].name.clone(),
            ));
        }
        if let Some(i) = out.ingress {
            a.push(KeyValue::new("botbridge.caller_dialect", i.as_str()));
        }
        if let Some(b) = out.backend {
            a.push(KeyValue::new(
                "botbridge.backend",
                rt.config.backends[b].name.clone(),
            ));
        }
        if let Some(id) = &out.request_id {
            a.push(KeyValue::new("botbridge.request_id", id.clone()));
        }
        if let Some(reason) = out.error {
            a.push(KeyValue::new("error.type", reason.as_str()));
        }
        a
    });
    if status >= 500 {
        trace.fail(out.error.map_or("server error", |r| r.as_str()));
    }
    trace.end();
}

/// What the bot's answer does to the conversation the request went in, for a stateful bot.
fn after_answer(cx: &Call<'_>, to: &ToBot<'_>, answer: &ChatAnswer<'_>) -> Option<AfterAnswer> {
    let (current, rules) = (cx.conversation.as_ref()?, to.backend.bot.conversations()?);
    Some(rules.after(current, answer, conversations::random()))
}

/// An error as the caller's dialect answers it (its status, body and own headers), else readable
/// by every dialect. The error's own headers (`Retry-After`, …) are the caller's to add.
fn error_answer(dialect: Option<Caller>, err: &ProxyError) -> Answer {
    let Some(d) = dialect else {
        return Answer::json(err.status, dialect::render_error_for_either(err));
    };
    let mut a = Answer::json(d.error_status(err), d.render_error(err));
    d.error_headers(err, &mut |name, value| {
        a.headers.push((name, value.to_owned()));
    });
    a
}

/// The dialect a request head tells, as admission would tell it: the route's, else among all.
fn caller_of(rt: &Runtime, head: &RequestHeader) -> Option<Caller> {
    let route = rt.route_for(head.uri.path()).map(|i| &rt.config.routes[i]);
    match route {
        Some(r) => r
            .fixed()
            .or_else(|| registry::detect_by_head(&r.ingress, &Head(head))),
        None => registry::detect_by_head(&rt.auto, &Head(head)),
    }
}

/// Counts a request in flight for as long as it lives, even if its future is dropped.
struct InFlight(&'static Metrics);

impl InFlight {
    fn enter(m: &'static Metrics) -> Self {
        m.in_flight.inc();
        InFlight(m)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

/// The caller's `X-Request-Id` if it is sane (1–128 visible ASCII characters), else a new UUID.
fn request_id(req: &RequestHeader) -> String {
    req.headers
        .get(REQUEST_ID)
        .map(|v| v.as_bytes())
        .filter(|v| request_id_is_sane(v))
        .and_then(|v| std::str::from_utf8(v).ok())
        .map_or_else(new_request_id, str::to_owned)
}

/// A new UUID v4 request id. Written into a buffer of its exact size: `to_string` grows a String
/// from nothing through `fmt`.
fn new_request_id() -> String {
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid::Uuid::new_v4()
        .hyphenated()
        .encode_lower(&mut text)
        .to_owned()
}

/// A bot answer the caller was told about in fixed words only: the debug log says which, and, with
/// `[log] message_bodies` on, what the parser or the bot said (it can quote what users wrote).
fn log_unusable_answer(rt: &Runtime, backend: &Backend, e: &ProxyError, request_id: &str) {
    tracing::debug!(backend = %backend.name, reason = e.reason.as_str(), problem = %e.message, "backend answer unusable");
    if let (true, Some(detail)) = (rt.config.message_bodies, &e.detail) {
        tracing::debug!(target: "botbridge::messages", request_id, backend = %backend.name, detail = &**detail, "why the backend answer is unusable");
    }
}

/// A pool's refusal as the caller's error: 503 with `Retry-After` while the circuit is open, else
/// the transport failure's status.
fn pool_error(e: PoolError, out: &mut AccessRecord) -> ProxyError {
    match e {
        PoolError::Open { retry_after } => {
            out.retry_after = Some(retry_after);
            ProxyError::new(
                503,
                Reason::CircuitOpen,
                format!(
                    "the bot is unavailable (its endpoints are down or failing); retry after {} s",
                    retry_after_secs(retry_after)
                ),
            )
        }
        PoolError::Transport(t) => ProxyError::from(t),
    }
}

/// Whole seconds for `Retry-After`, rounded up, at least 1.
fn retry_after_secs(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000).max(1) as u64
}

/// A bot's own path below a URL's path, before the URL's query: `/base?q` and `/x` give `/base/x?q`.
fn join_path(url_path: &str, below: &str) -> String {
    let (base, query) = match url_path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (url_path, None),
    };
    let mut out = String::with_capacity(url_path.len() + below.len() + 1);
    out.push_str(base.trim_end_matches('/'));
    out.push_str(below);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Whether a Content-Type header declares JSON (`application/json`, any parameters).
fn is_json(content_type: Option<&[u8]>) -> bool {
    let Some(ct) = content_type else { return false };
    let essence = ct
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    essence.eq_ignore_ascii_case(b"application/json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types() {
        assert!(is_json(Some(b"application/json")));
        assert!(is_json(Some(b"Application/JSON; charset=utf-8")));
        assert!(!is_json(Some(b"text/plain")));
        assert!(!is_json(Some(b"application/x-www-form-urlencoded")));
        assert!(!is_json(None));
    }

    #[test]
    fn a_bots_path_goes_below_the_urls_path_and_before_its_query() {
        assert_eq!(join_path("/", "/bots/x/text"), "/bots/x/text");
        assert_eq!(join_path("/lex/?a=1", "/bots/x"), "/lex/bots/x?a=1");
    }
}
