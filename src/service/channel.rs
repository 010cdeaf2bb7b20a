//! Channel routes on the request path: a route whose caller dialect is a channel
//! (`dialect::ChannelCaller`) serves that dialect's own API below its
//! path prefix. Callers start conversations and get tokens for them (`crate::session`), post their
//! user's activities, and read the conversation back by polling or over a WebSocket stream
//! (`crate::channel`).
//!
//! A posted message goes the way of every chat request (limits, scope, translation, the bot
//! exchange with its fallback, the conversation of a stateful bot, the shadow); the post is answered
//! once the bot has answered, with the activity's id, and the user's echo and the bot's replies join
//! the conversation together. A failing bot is the dialect's error for it, and nothing joins.
//!
//! Browsers: a preflight is allowed for the origins some channel credential allows; every answer to
//! such an origin carries `Access-Control-Allow-Origin`, and a credential used from an origin it does
//! not allow is refused (403). This file names no vendor.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pingora::protocols::http::ServerSession;

use super::{request_id, unix_secs, Admitted, Call, ChatService, Head, Runtime};
use crate::auth::Grant;
use crate::channel;
use crate::channel::stream::{self, Follow};
use crate::dialect::{Caller, ChannelCaller, ChannelOp, Posted, RequestHead, Stamp, Started};
use crate::error::{ProxyError, Reason};
use crate::httpio::{self, Answer, Upgrade};
use crate::model::ChatRequest;
use crate::session::{ChannelGrant, TokenGrant};
use crate::timefmt;

/// How long a conversation token lasts (as the channel dialect's own service issues them).
pub const TOKEN_LIFETIME_SECS: u64 = 1_800;
/// The most activities a poll answers with.
const PAGE: usize = 500;

/// A channel route a request goes to: its index and its dialect's verbs.
#[derive(Clone, Copy)]
pub(super) struct ChannelRoute {
    pub index: usize,
    pub ingress: Caller,
    pub verbs: &'static dyn ChannelCaller,
}

/// Who is calling: the credential and, with a token, what the token grants.
struct Authed {
    grant: Arc<Grant>,
    channel: Arc<ChannelGrant>,
    token: Option<(String, TokenGrant)>,
}

impl Authed {
    /// Refuses a token for another conversation (a secret reaches any).
    fn may_use(&self, conversation: &str) -> Result<(), ProxyError> {
        match &self.token {
            Some((_, t)) if t.conversation != conversation => Err(ProxyError::new(
                403,
                Reason::Forbidden,
                "the token is for another conversation",
            )),
            _ => Ok(()),
        }
    }
}

impl Runtime {
    /// The channel route of a request path, if it goes to one.
    pub(super) fn channel_route(&self, path: &str) -> Option<ChannelRoute> {
        self.channel_origins.as_ref()?;
        let index = self.route_for(path)?;
        let ingress = self.config.routes[index].fixed()?;
        let verbs = ingress.get().channel()?;
        Some(ChannelRoute {
            index,
            ingress,
            verbs,
        })
    }

    /// Whether some channel credential allows a browser at `origin`.
    fn origin_allowed(&self, origin: &[u8]) -> bool {
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
fn query_param<'a>(head: &'a Head<'_>, name: &str) -> Option<&'a str> {
    (head.query()?.split('&')).find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

/// 16 random bytes.
fn random() -> [u8; 16] {
    crate::conversations::random()
}

fn not_found(what: &'static str) -> ProxyError {
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
            return preflight(rt, session, c.verbs);
        }
        let stream = matches!(op, ChannelOp::Stream(_));
        let a = self.channel_auth(cx, session, c, stream).await?;
        match op {
            ChannelOp::GenerateToken => self.generate_token(cx, session, c, &a).await,
            ChannelOp::RefreshToken => refresh_token(cx, c, &a),
            ChannelOp::Start => self.start(cx, session, c, &a).await,
            ChannelOp::Reconnect(id) => reconnect(cx, session, c, &a, id).await,
            ChannelOp::Post(id) => self.post(cx, session, c, a, id).await,
            ChannelOp::Read(id) => read(cx, session, c, &a, id).await,
            ChannelOp::Stream(id) => open_stream(cx, session, c, &a, id).await,
            ChannelOp::Preflight => unreachable!("answered above"),
        }
    }

    /// The caller: a conversation token (verified by its credential's key), else a secret (as the
    /// dialect presents it). A stream may carry its token in the query (`t`), as stream URLs do.
    async fn channel_auth(
        &self,
        cx: &mut Call<'_>,
        session: &ServerSession,
        c: ChannelRoute,
        stream: bool,
    ) -> Result<Authed, ProxyError> {
        let rt = cx.rt;
        let head = Head(session.req_header());
        let now = unix_secs(cx.received);
        let presented = bearer(&head).or_else(|| {
            stream
                .then(|| query_param(&head, "t").map(str::to_owned))
                .flatten()
        });
        let authed = match presented {
            // Secrets have no dot (the configuration refuses one); tokens do.
            Some(t) if t.contains('.') => {
                let (grant, granted) = rt.authn.session_token(c.ingress, &t, now)?;
                let channel = grant
                    .channel
                    .clone()
                    .expect("a token's grant is a channel's");
                Authed {
                    grant,
                    channel,
                    token: Some((t, granted)),
                }
            }
            _ => {
                let grant = rt.authn.authenticate(c.ingress, &head, now).await?;
                let channel = grant.channel.clone().ok_or_else(|| {
                    ProxyError::new(403, Reason::Forbidden, "not a channel credential")
                })?;
                Authed {
                    grant,
                    channel,
                    token: None,
                }
            }
        };
        if let Some(origin) = head.header("origin") {
            let origin = String::from_utf8_lossy(origin);
            if !authed.channel.allows_origin(&origin) {
                return Err(ProxyError::new(
                    403,
                    Reason::Forbidden,
                    "this credential may not be used from this origin",
                ));
            }
        }
        Ok(authed)
    }

    /// A token for a new conversation, bound to the user the body names (else to none: the
    /// activities name their user).
    async fn generate_token(
        &self,
        cx: &mut Call<'_>,
        session: &mut ServerSession,
        c: ChannelRoute,
        a: &Authed,
    ) -> Result<Answer, ProxyError> {
        if a.token.is_some() {
            return Err(ProxyError::new(
                403,
                Reason::Forbidden,
                "a new token needs the secret, not a token",
            ));
        }
        let limit = cx.rt.config.limits.max_body_bytes;
        let body = httpio::read_body(session, limit)
            .await
            .map_err(|_| ProxyError::bad_request("the request body could not be read"))?;
        let user = c.verbs.token_user(&body)?.unwrap_or_default();
        let conversation = c.verbs.conversation_id(random());
        let token = mint(cx, a, &conversation, &user);
        let s = Started {
            conversation: &conversation,
            token: &token,
            expires_in: TOKEN_LIFETIME_SECS,
            stream_url: None,
        };
        Ok(Answer::json(200, c.verbs.render_token(&s)))
    }

    /// Starts a conversation: a new one with the secret, the token's with a token (201 the first
    /// time, 200 after).
    async fn start(
        &self,
        cx: &mut Call<'_>,
        session: &ServerSession,
        c: ChannelRoute,
        a: &Authed,
    ) -> Result<Answer, ProxyError> {
        let channels = &cx.rt.channels;
        let (conversation, token, created) = match &a.token {
            Some((t, g)) => {
                let created = channels.start(&g.conversation, &g.user).await?;
                (g.conversation.clone(), t.clone(), created)
            }
            None => {
                let conversation = c.verbs.conversation_id(random());
                channels.start(&conversation, "").await?;
                let token = mint(cx, a, &conversation, "");
                (conversation, token, true)
            }
        };
        let url = stream_url(cx, session, c, &conversation, &token);
        let s = Started {
            conversation: &conversation,
            token: &token,
            expires_in: expires_in(cx, a),
            stream_url: Some(&url),
        };
        let status = if created { 201 } else { 200 };
        Ok(Answer::json(status, c.verbs.render_started(&s)))
    }

    /// Posts the caller's activity: a message goes to the bot, and joins the conversation with the
    /// bot's replies once it answered; anything else joins at once.
    async fn post(
        &self,
        cx: &mut Call<'_>,
        session: &mut ServerSession,
        c: ChannelRoute,
        a: Authed,
        id: &str,
    ) -> Result<Answer, ProxyError> {
        a.may_use(id)?;
        let rt = cx.rt;
        let started = rt.channels.user(id).await?;
        let owner = started.ok_or_else(|| not_found("conversation not found"))?;
        let body = self.read_body(cx, session).await?;
        // A token issued for a named user speaks for that user only.
        let user = (a.token.as_ref())
            .map(|(_, g)| g.user.as_str())
            .filter(|u| !u.is_empty());
        // An activity naming no user (with no token's) speaks as the conversation's own.
        let anonymous = format!("dl_{id}");
        let posted = (c.verbs.parse_activity(&body, user, Some(&anonymous))).inspect_err(|_| {
            self.translation_error(&rt.config.routes[c.index], "invalid_request", 1)
        })?;
        let now = timefmt::rfc3339_millis(cx.received);
        let verbs = c.verbs;
        let first = match posted {
            Posted::Other => {
                let user = user.unwrap_or(&owner).to_owned();
                let make = |first| {
                    let aid = verbs.activity_id(id, first);
                    let at = Stamp {
                        conversation: id,
                        id: &aid,
                        timestamp: &now,
                    };
                    vec![verbs.echo(&body, &at, &user)]
                };
                rt.channels.append(id, make).await?
            }
            Posted::Message(req) => {
                let replies = self.ask_bot(cx, c, a.grant.clone(), req).await?;
                let user = replies.user.clone();
                let bot_name = rt.config.routes[c.index].bot_name.clone();
                let make = |first| {
                    let aid = verbs.activity_id(id, first);
                    let at = Stamp {
                        conversation: id,
                        id: &aid,
                        timestamp: &now,
                    };
                    let mut out = vec![verbs.echo(&body, &at, &user)];
                    let mut next =
                        |i: usize| (verbs.activity_id(id, first + 1 + i as u64), now.clone());
                    out.extend(replies.render(verbs, &aid, &bot_name, &mut next));
                    out
                };
                rt.channels.append(id, make).await?
            }
        };
        let first = first.ok_or_else(|| not_found("conversation not found"))?;
        Ok(Answer::json(
            200,
            c.verbs.render_posted(&c.verbs.activity_id(id, first)),
        ))
    }

    /// A message through the chat request path: limits, scope, translation, the exchange (with the
    /// fallback), the bot's conversation, the shadow. The answer, parsed.
    async fn ask_bot(
        &self,
        cx: &mut Call<'_>,
        c: ChannelRoute,
        grant: Arc<Grant>,
        mut req: ChatRequest<'_>,
    ) -> Result<BotReplies, ProxyError> {
        let rt = cx.rt;
        let route = &rt.config.routes[c.index];
        req.business_id = req.business_id.or(grant.business_id).or(route.business_id);
        let limits = rt.limits.plan(route, &grant);
        let admitted = Admitted {
            route,
            ingress: c.ingress,
            grant,
            body: None,
            limits,
        };
        if !admitted.limits.is_empty() {
            rt.limits.admit(&admitted.limits).await?;
            rt.limits.admit_user(&admitted.limits, &req.user_id).await?;
        }
        let (to_bot, exchange) = self.exchange_for(cx, &admitted, &req).await?;
        let (answer, after) = (self.read_answer(cx, &admitted, &to_bot, &exchange))
            .inspect_err(|e| super::log_unusable_answer(rt, to_bot.backend, e, cx.request_id()))?;
        drop(answer);
        if let Some(after) = after {
            let keep = rt
                .conversations
                .keep(&to_bot.backend.name, &req.user_id, after);
            Box::pin(keep).await;
        }
        self.shadow(cx, &admitted, &req, &to_bot, &exchange);
        Ok(BotReplies {
            user: req.user_id.to_string(),
            status: exchange.status,
            body: exchange.body.clone(),
            bot: to_bot.backend.bot.clone(),
        })
    }
}

/// What a bot answered a channel's message, kept to be rendered as the conversation's activities
/// once their places are known.
struct BotReplies {
    user: String,
    status: u16,
    body: Bytes,
    bot: Arc<dyn crate::dialect::Bot>,
}

impl BotReplies {
    /// The replies as activities. Parsed again rather than held: an answer borrows its exchange.
    fn render(
        &self,
        verbs: &dyn ChannelCaller,
        reply_to: &str,
        bot_name: &str,
        next: &mut dyn FnMut(usize) -> (String, String),
    ) -> Vec<Vec<u8>> {
        // Read once already (`read_answer`): cannot fail here.
        match self.bot.parse_answer(self.status, &self.body, false) {
            Ok(answer) => verbs.replies(&answer, reply_to, bot_name, next),
            Err(_) => Vec::new(),
        }
    }
}

/// A fresh token for the token's conversation and user.
fn refresh_token(cx: &Call<'_>, c: ChannelRoute, a: &Authed) -> Result<Answer, ProxyError> {
    let Some((_, g)) = &a.token else {
        return Err(ProxyError::new(
            403,
            Reason::Forbidden,
            "a refresh needs a token, not the secret",
        ));
    };
    let token = mint(cx, a, &g.conversation, &g.user);
    let s = Started {
        conversation: &g.conversation,
        token: &token,
        expires_in: TOKEN_LIFETIME_SECS,
        stream_url: None,
    };
    Ok(Answer::json(200, c.verbs.render_token(&s)))
}

/// A started conversation again, with a fresh stream URL.
async fn reconnect(
    cx: &Call<'_>,
    session: &ServerSession,
    c: ChannelRoute,
    a: &Authed,
    id: &str,
) -> Result<Answer, ProxyError> {
    a.may_use(id)?;
    let started = cx.rt.channels.user(id).await?;
    let user = started.ok_or_else(|| not_found("conversation not found"))?;
    let token = match &a.token {
        Some((t, _)) => t.clone(),
        None => mint(cx, a, id, &user),
    };
    let url = stream_url(cx, session, c, id, &token);
    let s = Started {
        conversation: id,
        token: &token,
        expires_in: expires_in(cx, a),
        stream_url: Some(&url),
    };
    Ok(Answer::json(200, c.verbs.render_started(&s)))
}

/// The conversation's activities after the `watermark` the caller read to.
async fn read(
    cx: &Call<'_>,
    session: &ServerSession,
    c: ChannelRoute,
    a: &Authed,
    id: &str,
) -> Result<Answer, ProxyError> {
    a.may_use(id)?;
    let head = Head(session.req_header());
    let watermark = query_param(&head, "watermark").filter(|w| !w.is_empty());
    channel::metrics().polls.inc();
    let page = cx.rt.channels.after(id, watermark, PAGE).await?;
    let page = page.ok_or_else(|| not_found("conversation not found"))?;
    let refs: Vec<&[u8]> = page.activities.iter().map(|a| &a[..]).collect();
    let body = c.verbs.render_page(&refs, &page.watermark);
    Ok(Answer::json(200, body))
}

/// The stream of a conversation: a WebSocket upgrade, served until the token expires.
async fn open_stream(
    cx: &Call<'_>,
    session: &ServerSession,
    c: ChannelRoute,
    a: &Authed,
    id: &str,
) -> Result<Answer, ProxyError> {
    a.may_use(id)?;
    let started = cx.rt.channels.user(id).await?;
    started.ok_or_else(|| not_found("conversation not found"))?;
    let head = Head(session.req_header());
    let is = |name: &str, want: &str| {
        head.header(name).is_some_and(|v| {
            v.split(|&b| b == b',')
                .any(|p| p.trim_ascii().eq_ignore_ascii_case(want.as_bytes()))
        })
    };
    let key = head.header("sec-websocket-key").filter(|k| !k.is_empty());
    let (true, true, Some(key)) = (is("upgrade", "websocket"), is("connection", "upgrade"), key)
    else {
        return Err(ProxyError::bad_request(
            "the stream needs a WebSocket upgrade",
        ));
    };
    let follow = Follow {
        channels: cx.rt.channels.clone(),
        conversation: id.to_owned(),
        dialect: c.verbs,
        watermark: query_param(&head, "watermark")
            .filter(|w| !w.is_empty())
            .map(str::to_owned),
        until: tokio::time::Instant::now() + Duration::from_secs(expires_in(cx, a)),
    };
    let mut answer = Answer::json(101, Vec::new());
    answer.headers.push(("upgrade", "websocket".into()));
    answer.headers.push(("connection", "Upgrade".into()));
    answer
        .headers
        .push(("sec-websocket-accept", stream::accept_key(key)));
    answer.upgrade = Some(Upgrade(Box::new(move |s| {
        Box::pin(stream::serve(s, follow))
    })));
    Ok(answer)
}

/// A browser's preflight: allowed for an origin some channel credential allows.
fn preflight(
    rt: &Runtime,
    session: &ServerSession,
    verbs: &dyn ChannelCaller,
) -> Result<Answer, ProxyError> {
    let head = session.req_header();
    let origin = head.headers.get("origin").map(|o| o.as_bytes());
    if !origin.is_some_and(|o| rt.origin_allowed(o)) {
        return Err(ProxyError::new(
            403,
            Reason::Forbidden,
            "origin not allowed",
        ));
    }
    let mut answer = Answer::json(200, Vec::new());
    answer.headers.extend([
        (
            "access-control-allow-methods",
            "GET, POST, OPTIONS".to_owned(),
        ),
        (
            "access-control-allow-headers",
            verbs.allowed_headers().to_owned(),
        ),
        ("access-control-max-age", "600".to_owned()),
    ]);
    Ok(answer)
}

/// A token for `conversation` and `user`, signed with the caller's key, for the full lifetime.
fn mint(cx: &Call<'_>, a: &Authed, conversation: &str, user: &str) -> String {
    a.channel.key.mint(&TokenGrant {
        conversation: conversation.to_owned(),
        user: user.to_owned(),
        expires: unix_secs(cx.received) + TOKEN_LIFETIME_SECS,
        credential: a.channel.credential,
    })
}

/// What is left of the caller's token (a secret gets a full lifetime).
fn expires_in(cx: &Call<'_>, a: &Authed) -> u64 {
    match &a.token {
        Some((_, g)) => g.expires.saturating_sub(unix_secs(cx.received)),
        None => TOKEN_LIFETIME_SECS,
    }
}

/// The stream's URL: `ws://` (`wss://` on TLS) at the host the caller asked, below the route.
fn stream_url(
    cx: &Call<'_>,
    session: &ServerSession,
    c: ChannelRoute,
    conversation: &str,
    token: &str,
) -> String {
    let head = session.req_header();
    let tls = (session.digest()).is_some_and(|d| d.ssl_digest.is_some());
    let host = (head.headers.get("host"))
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| session.server_addr().map(|a| a.to_string()))
        .unwrap_or_default();
    let prefix = cx.rt.config.routes[c.index].path.trim_end_matches('/');
    let scheme = if tls { "wss" } else { "ws" };
    let path = c.verbs.stream_path(conversation);
    format!("{scheme}://{host}{prefix}/{path}?t={token}")
}
