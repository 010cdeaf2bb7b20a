//! Channel routes on the request path: a route whose caller dialect is a channel
//! (`dialect::ChannelCaller`) serves that dialect's own API below its path prefix. Callers start
//! conversations and get tokens for them (`crate::session`), post their user's activities, and read
//! the conversation back by polling or over a WebSocket stream (`crate::channel`).
//!
//! - Who: a conversation token (bound to one conversation, route and user: an activity posted with
//!   it speaks as that user whatever it names), else the credential's secret (its activities name
//!   their user). Either way the credential's scope is checked, and a conversation belongs to the
//!   route and credential that started it (any other gets a 404).
//! - Limits: the credential's and the user's rate limits apply to every request that changes
//!   something (tokens, starts, posts of any kind, streams opened); polls and reconnects read, and
//!   are bounded by page sizes instead.
//! - A posted message goes the way of every chat request (scope, translation, the bot exchange with
//!   its fallback, the conversation of a stateful bot, the shadow); the post is answered once the
//!   bot has answered, with the activity's id, and the user's echo and the bot's replies join the
//!   conversation together. A failing bot is the dialect's error for it, and nothing joins.
//! - Browsers: a preflight is allowed for the origins some channel credential allows; every answer
//!   to such an origin carries `Access-Control-Allow-Origin`, and a credential used from an origin
//!   it does not allow is refused (403).
//!
//! The operations themselves are in `channel_ops`. This file names no vendor.

use std::sync::Arc;

use pingora::protocols::http::ServerSession;

use super::{request_id, unix_secs, Call, ChatService, Head, Runtime};
use crate::auth::Grant;
use crate::dialect::{Caller, ChannelCaller, ChannelOp, RequestHead};
use crate::error::{ProxyError, Reason};
use crate::httpio::Answer;
use crate::session::{ChannelGrant, TokenGrant};

/// How long a conversation token lasts (as the channel dialect's own service issues them).
pub const TOKEN_LIFETIME_SECS: u64 = 1_800;

/// A channel route a request goes to: its index and its dialect's verbs.
#[derive(Clone, Copy)]
pub(super) struct ChannelRoute {
    pub index: usize,
    pub ingress: Caller,
    pub verbs: &'static dyn ChannelCaller,
}

/// Who is calling: the credential, who owns what it starts, and, with a token, what it grants.
pub(super) struct Authed {
    pub grant: Arc<Grant>,
    pub channel: Arc<ChannelGrant>,
    /// The route and credential key a conversation it starts belongs to.
    pub owner: String,
    pub token: Option<(String, TokenGrant)>,
}

impl Authed {
    /// Refuses a token for another conversation (a secret reaches any of its own).
    pub fn may_use(&self, conversation: &str) -> Result<(), ProxyError> {
        match &self.token {
            Some((_, t)) if t.conversation != conversation => Err(ProxyError::new(
                403,
                Reason::Forbidden,
                "the token is for another conversation",
            )),
            _ => Ok(()),
        }
    }

    /// The user a token speaks for.
    pub fn token_user(&self) -> Option<&str> {
        self.token.as_ref().map(|(_, g)| g.user.as_str())
    }
}

impl Runtime {
    /// The channel route of a request path, if it goes to one.
    pub(super) fn channel_route(&self, path: &str) -> Option<ChannelRoute> {
        self.channel_origins.as_ref()?;
        // Only the channel routes' prefixes are looked at (most requests go elsewhere), and the
        // route that takes the path must be that one.
        let (_, index) = (self.routes_by_prefix.iter())
            .find(|(p, i)| path.starts_with(p.as_str()) && self.is_channel(*i))?;
        let index = (self.route_for(path) == Some(*index)).then_some(*index)?;
        let ingress = self.config.routes[index].fixed()?;
        let verbs = ingress.get().channel()?;
        Some(ChannelRoute {
            index,
            ingress,
            verbs,
        })
    }

    fn is_channel(&self, route: usize) -> bool {
        let r = &self.config.routes[route];
        r.prefix && r.fixed().is_some_and(|c| c.get().channel().is_some())
    }

    /// Whether some channel credential allows a browser at `origin`.
    pub(super) fn origin_allowed(&self, origin: &[u8]) -> bool {
        let origins = self.channel_origins.as_deref().unwrap_or_default();
        (origins.iter()).any(|o| o == "*" || o.as_bytes().eq_ignore_ascii_case(origin))
    }

    /// The CORS headers of an answer to a browser at an allowed origin.
    pub(super) fn cors(&self, head: &pingora::http::RequestHeader, answer: &mut Answer) {
        let Some(origin) = head.headers.get("origin") else {
            return;
        };
        if self.origin_allowed(origin.as_bytes()) {
            if let Ok(o) = origin.to_str() {
                answer
                    .headers
                    .push(("access-control-allow-origin", o.to_owned()));
                answer.headers.push(("vary", "Origin".to_owned()));
            }
        }
    }
}

/// Every origin a channel credential of `config` allows; `None` when no route is a channel.
pub(super) fn channel_origins(config: &crate::config::Config) -> Option<Vec<String>> {
    let any =
        (config.routes.iter()).any(|r| r.fixed().is_some_and(|c| c.get().channel().is_some()));
    any.then(|| {
        (config.clients.credentials.tokens.grants())
            .filter_map(|g| g.channel.as_ref())
            .flat_map(|c| c.allowed_origins.iter().cloned())
            .collect()
    })
}

/// `Authorization: Bearer <value>`'s value.
fn bearer(head: &Head<'_>) -> Option<String> {
    let v = head.header("authorization")?.trim_ascii();
    let v =
        (v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ")).then(|| v[7..].trim_ascii())?;
    std::str::from_utf8(v).ok().map(str::to_owned)
}

/// A query parameter's value (tokens and watermarks need no decoding).
pub(super) fn query_param<'a>(head: &'a Head<'_>, name: &str) -> Option<&'a str> {
    (head.query()?.split('&')).find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

pub(super) fn not_found(what: &'static str) -> ProxyError {
    ProxyError::new(404, Reason::NotFound, what)
}

impl ChatService {
    /// A request to a channel route, answered by the operation its method and path ask for.
    pub(super) async fn serve_channel(
        &self,
        cx: &mut Call<'_>,
        session: &mut ServerSession,
        c: ChannelRoute,
    ) -> Result<Answer, ProxyError> {
        let rt = cx.rt;
        let route = &rt.config.routes[c.index];
        cx.out.route = Some(c.index);
        cx.out.ingress = Some(c.ingress);
        let head = session.req_header();
        cx.out.request_id = Some(request_id(head));
        let path = head.uri.path().to_owned();
        let below = (path.strip_prefix(route.path.as_str()))
            .unwrap_or_default()
            .trim_start_matches('/');
        let op = c.verbs.operation(head.method.as_str(), below);
        let op = op.ok_or_else(|| match c.verbs.methods(below) {
            Some(allow) => ProxyError::new(
                405,
                Reason::MethodNotAllowed,
                "this method is not allowed here",
            )
            .with_header("allow", allow),
            None => not_found("no such operation on this channel"),
        })?;
        if op == ChannelOp::Preflight {
            return super::channel_ops::preflight(rt, session, c.verbs);
        }
        let a = self.channel_auth(cx, session, c, op).await?;
        self.channel_op(cx, session, c, a, op).await
    }

    /// The caller: a conversation token (verified by the key it names, for this route), else a
    /// secret (as the dialect presents it); then its origin, its scope and, for what changes
    /// something, its rate limits. A stream may carry its token in the query (`t`), as stream URLs
    /// do.
    async fn channel_auth(
        &self,
        cx: &mut Call<'_>,
        session: &ServerSession,
        c: ChannelRoute,
        op: ChannelOp<'_>,
    ) -> Result<Authed, ProxyError> {
        let rt = cx.rt;
        let route = &rt.config.routes[c.index];
        let head = Head(session.req_header());
        let now = unix_secs(cx.received);
        let stream = matches!(op, ChannelOp::Stream(_));
        let presented = bearer(&head).or_else(|| {
            stream
                .then(|| query_param(&head, "t").map(str::to_owned))
                .flatten()
        });
        let (grant, token) = match presented {
            // Secrets have no dot (the configuration refuses one); tokens do.
            Some(t) if t.contains('.') => {
                let lifetime = TOKEN_LIFETIME_SECS;
                let (grant, granted) = rt.authn.session_token(c.ingress, &t, now, lifetime)?;
                if granted.route != route.name {
                    return Err(ProxyError::new(
                        403,
                        Reason::Forbidden,
                        "the token is for another route",
                    ));
                }
                (grant, Some((t, granted)))
            }
            _ => (rt.authn.authenticate(c.ingress, &head, now).await?, None),
        };
        let channel = (grant.channel.clone())
            .ok_or_else(|| ProxyError::new(403, Reason::Forbidden, "not a channel credential"))?;
        if let Some(origin) = head.header("origin") {
            if !channel.allows_origin(&String::from_utf8_lossy(origin)) {
                return Err(ProxyError::new(
                    403,
                    Reason::Forbidden,
                    "this credential may not be used from this origin",
                ));
            }
        }
        (grant.scope.check(&route.name, route.business_id))
            .inspect_err(|d| rt.authn.denied(c.ingress, d.reason))?;
        let a = Authed {
            owner: format!("{}\n{}", route.name, hex::encode(channel.key.id())),
            grant,
            channel,
            token,
        };
        if !matches!(op, ChannelOp::Read(_) | ChannelOp::Reconnect(_)) {
            let plan = rt.limits.plan(route, &a.grant);
            rt.limits.admit(&plan).await?;
            // A secret's requests share one bucket per credential where users have their own.
            let user = a.token_user().unwrap_or_default();
            rt.limits.admit_user(&plan, user).await?;
        }
        Ok(a)
    }

    /// The operation, for an authenticated caller.
    async fn channel_op(
        &self,
        cx: &mut Call<'_>,
        session: &mut ServerSession,
        c: ChannelRoute,
        a: Authed,
        op: ChannelOp<'_>,
    ) -> Result<Answer, ProxyError> {
        use super::channel_ops as ops;
        match op {
            ChannelOp::GenerateToken => self.generate_token(cx, session, c, &a).await,
            ChannelOp::RefreshToken => ops::refresh_token(cx, c, &a),
            ChannelOp::Start => ops::start(cx, session, c, &a).await,
            ChannelOp::Reconnect(id) => ops::reconnect(cx, session, c, &a, id).await,
            ChannelOp::Post(id) => self.post(cx, session, c, a, id).await,
            ChannelOp::Read(id) => ops::read(cx, session, c, &a, id).await,
            ChannelOp::Stream(id) => ops::open_stream(cx, session, c, &a, id).await,
            ChannelOp::Preflight => unreachable!("answered before authentication"),
        }
    }
}
