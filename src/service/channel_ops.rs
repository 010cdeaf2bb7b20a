//! The operations of a channel route (see `channel` for who may call and what is checked first):
//! tokens, starts and reconnects, posts (a message through the chat path), polls, and streams.
//! This file names no vendor.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pingora::protocols::http::ServerSession;

use super::channel::{not_found, query_param, Authed, ChannelRoute, TOKEN_LIFETIME_SECS};
use super::{unix_secs, Admitted, Call, ChatService, Head, Runtime};
use crate::channel::{self, stream, Claim};
use crate::dialect::{ChannelCaller, Posted, RequestHead, Stamp, Started};
use crate::error::{ProxyError, Reason};
use crate::httpio::{Answer, Upgrade};
use crate::model::ChatRequest;
use crate::session::TokenGrant;
use crate::timefmt;

/// The most activities a poll answers with.
const PAGE: usize = 500;
/// The most bytes of a caller's activity a conversation keeps (its echo): a message of several
/// pages of text fits; a conversation's budget takes a handful at least.
const MAX_ACTIVITY_BYTES: usize = 32 << 10;

/// 16 random bytes.
fn random() -> [u8; 16] {
    crate::conversations::random()
}

/// A user id for a token whose caller named none.
fn new_user() -> String {
    format!("dl_{}", hex::encode(&random()[..8]))
}

impl ChatService {
    /// A token for a new conversation, bound to the user the body names (else to a new one).
    pub(super) async fn generate_token(
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
        let body = self.read_any_body(cx, session).await?;
        let user = c.verbs.token_user(&body)?.unwrap_or_else(new_user);
        let conversation = c.verbs.conversation_id(random());
        let token = mint(cx, c, a, &conversation, &user);
        let s = Started {
            conversation: &conversation,
            token: &token,
            expires_in: TOKEN_LIFETIME_SECS,
            stream_url: None,
        };
        Ok(Answer::json(200, c.verbs.render_token(&s)))
    }

    /// Posts the caller's activity: a message goes to the bot, and joins the conversation with the
    /// bot's replies once it answered; anything else joins at once.
    pub(super) async fn post(
        &self,
        cx: &mut Call<'_>,
        session: &mut ServerSession,
        c: ChannelRoute,
        a: Authed,
        id: &str,
    ) -> Result<Answer, ProxyError> {
        a.may_use(id)?;
        let rt = cx.rt;
        let started = rt.channels.user(id, &a.owner).await?;
        started.ok_or_else(|| not_found("conversation not found"))?;
        let body = self.read_body(cx, session).await?;
        // With a token, the activity speaks as the token's user; with the secret, as the user it
        // names, else as the conversation's own anonymous one.
        let anonymous = format!("dl_{id}");
        let posted = (c
            .verbs
            .parse_activity(&body, a.token_user(), Some(&anonymous)))
        .inspect_err(|_| {
            self.translation_error(&rt.config.routes[c.index], "invalid_request", 1)
        })?;
        // What the conversation keeps of an activity is held to MAX_ACTIVITY_BYTES.
        let at = Stamp {
            conversation: id,
            id: &c.verbs.activity_id(id, u64::MAX),
            timestamp: "0000-00-00T00:00:00.000Z",
        };
        if c.verbs
            .echo(&body, &at, a.token_user().unwrap_or(&anonymous))
            .len()
            > MAX_ACTIVITY_BYTES
        {
            return Err(ProxyError::new(
                413,
                Reason::BodyTooLarge,
                format!("an activity keeps at most {MAX_ACTIVITY_BYTES} bytes"),
            ));
        }
        // A post seen before (a client retrying) is answered with what it got, never sent twice.
        let client_id = c.verbs.client_activity_id(&body);
        if let Some(cid) = &client_id {
            match rt.channels.claim(id, cid).await? {
                Claim::New => {}
                Claim::Done(aid) => return Ok(Answer::json(200, c.verbs.render_posted(&aid))),
                Claim::InFlight => {
                    return Err(ProxyError::new(
                        409,
                        Reason::BadRequest,
                        "this activity is still being answered",
                    ))
                }
            }
        }
        let first = self
            .post_claimed(cx, c, &a, id, &body, posted, &anonymous)
            .await;
        let aid = first.as_ref().ok().map(|f| c.verbs.activity_id(id, *f));
        if let Some(cid) = &client_id {
            rt.channels.settle(id, cid, aid.as_deref()).await;
        }
        first?;
        Ok(Answer::json(
            200,
            c.verbs.render_posted(&aid.unwrap_or_default()),
        ))
    }

    /// The post once claimed: its activity (and the bot's replies) added to the conversation;
    /// the first place.
    #[allow(clippy::too_many_arguments)]
    async fn post_claimed(
        &self,
        cx: &mut Call<'_>,
        c: ChannelRoute,
        a: &Authed,
        id: &str,
        body: &[u8],
        posted: Posted<'_>,
        anonymous: &str,
    ) -> Result<u64, ProxyError> {
        let rt = cx.rt;
        let now = timefmt::rfc3339_millis(cx.received);
        let verbs = c.verbs;
        let echo_as = |user: &str, first: u64| {
            let aid = verbs.activity_id(id, first);
            let at = Stamp {
                conversation: id,
                id: &aid,
                timestamp: &now,
            };
            (verbs.echo(body, &at, user), aid)
        };
        let first = match posted {
            Posted::Other => {
                let user = a.token_user().unwrap_or(anonymous).to_owned();
                let make = |first| vec![echo_as(&user, first).0];
                rt.channels.append(id, &a.owner, make).await?
            }
            Posted::Message(req) => {
                let replies = self.ask_bot(cx, c, a.grant.clone(), req).await?;
                let bot_name = rt.config.routes[c.index].bot_name.clone();
                let make = |first| {
                    let (echo, aid) = echo_as(&replies.user, first);
                    let mut next =
                        |i: usize| (verbs.activity_id(id, first + 1 + i as u64), now.clone());
                    let mut out = vec![echo];
                    out.extend(replies.render(verbs, &aid, &bot_name, &mut next));
                    out
                };
                rt.channels.append(id, &a.owner, make).await?
            }
        };
        first.ok_or_else(|| not_found("conversation not found"))
    }

    /// A message through the chat request path: scope, translation, the exchange (with the
    /// fallback), the bot's conversation, the shadow. The answer, parsed. (The rate limits were
    /// checked with the caller.)
    async fn ask_bot(
        &self,
        cx: &mut Call<'_>,
        c: ChannelRoute,
        grant: Arc<crate::auth::Grant>,
        mut req: ChatRequest<'_>,
    ) -> Result<BotReplies, ProxyError> {
        let rt = cx.rt;
        let route = &rt.config.routes[c.index];
        req.business_id = req.business_id.or(grant.business_id).or(route.business_id);
        let admitted = Admitted {
            route,
            ingress: c.ingress,
            grant,
            body: None,
            limits: crate::limits::Plan::none(),
        };
        let (to_bot, exchange) = self.exchange_for(cx, &admitted, &req).await?;
        let (answer, after) = (self.read_answer(cx, &admitted, &to_bot, &exchange))
            .inspect_err(|e| super::log_unusable_answer(rt, to_bot.backend, e, cx.request_id()))?;
        drop(answer);
        if let Some(after) = after {
            let keep = (rt.conversations).keep(&to_bot.backend.name, &req.user_id, after);
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
pub(super) fn refresh_token(
    cx: &Call<'_>,
    c: ChannelRoute,
    a: &Authed,
) -> Result<Answer, ProxyError> {
    let Some((_, g)) = &a.token else {
        return Err(ProxyError::new(
            403,
            Reason::Forbidden,
            "a refresh needs a token, not the secret",
        ));
    };
    let token = mint(cx, c, a, &g.conversation, &g.user);
    let s = Started {
        conversation: &g.conversation,
        token: &token,
        expires_in: TOKEN_LIFETIME_SECS,
        stream_url: None,
    };
    Ok(Answer::json(200, c.verbs.render_token(&s)))
}

/// Starts a conversation: a new one with the secret, the token's with a token (201 the first
/// time, 200 after).
pub(super) async fn start(
    cx: &Call<'_>,
    session: &ServerSession,
    c: ChannelRoute,
    a: &Authed,
) -> Result<Answer, ProxyError> {
    let channels = &cx.rt.channels;
    let (conversation, token, created) = match &a.token {
        Some((t, g)) => {
            let created = channels.start(&g.conversation, &a.owner, &g.user).await?;
            let created = created.ok_or_else(|| not_found("conversation not found"))?;
            (g.conversation.clone(), t.clone(), created)
        }
        None => {
            let conversation = c.verbs.conversation_id(random());
            let user = new_user();
            channels.start(&conversation, &a.owner, &user).await?;
            let token = mint(cx, c, a, &conversation, &user);
            (conversation, token, true)
        }
    };
    let url = stream_url(cx, session, c, &conversation, &token, None);
    let s = Started {
        conversation: &conversation,
        token: &token,
        expires_in: expires_in(cx, a),
        stream_url: Some(&url),
    };
    let status = if created { 201 } else { 200 };
    Ok(Answer::json(status, c.verbs.render_started(&s)))
}

/// A started conversation again, with a fresh stream URL (from the caller's watermark).
pub(super) async fn reconnect(
    cx: &Call<'_>,
    session: &ServerSession,
    c: ChannelRoute,
    a: &Authed,
    id: &str,
) -> Result<Answer, ProxyError> {
    a.may_use(id)?;
    let started = cx.rt.channels.user(id, &a.owner).await?;
    let user = started.ok_or_else(|| not_found("conversation not found"))?;
    let token = match &a.token {
        Some((t, _)) => t.clone(),
        None => mint(cx, c, a, id, &user),
    };
    let head = Head(session.req_header());
    let watermark = query_param(&head, "watermark").filter(|w| !w.is_empty());
    let url = stream_url(cx, session, c, id, &token, watermark);
    let s = Started {
        conversation: id,
        token: &token,
        expires_in: expires_in(cx, a),
        stream_url: Some(&url),
    };
    Ok(Answer::json(200, c.verbs.render_started(&s)))
}

/// The conversation's activities after the `watermark` the caller read to.
pub(super) async fn read(
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
    let page = cx.rt.channels.after(id, &a.owner, watermark, PAGE).await?;
    let page = page.ok_or_else(|| not_found("conversation not found"))?;
    let refs: Vec<&[u8]> = page.activities.iter().map(|a| &a[..]).collect();
    let body = c.verbs.render_page(&refs, &page.watermark);
    Ok(Answer::json(200, body))
}

/// The stream of a conversation: a WebSocket upgrade (version 13), served until the token
/// expires; one per conversation (a new one closes the old), `channel_streams` per instance.
pub(super) async fn open_stream(
    cx: &Call<'_>,
    session: &ServerSession,
    c: ChannelRoute,
    a: &Authed,
    id: &str,
) -> Result<Answer, ProxyError> {
    a.may_use(id)?;
    let started = cx.rt.channels.user(id, &a.owner).await?;
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
    if head.header("sec-websocket-version") != Some(b"13") {
        return Err(
            ProxyError::bad_request("the stream speaks WebSocket version 13")
                .with_header("sec-websocket-version", "13"),
        );
    }
    let claim = cx.rt.channels.claim_stream(id, &a.owner).ok_or_else(|| {
        ProxyError::new(
            503,
            Reason::Overloaded,
            "too many streams are open; retry shortly",
        )
        .with_header("retry-after", "5")
    })?;
    let follow = stream::Follow {
        channels: cx.rt.channels.clone(),
        conversation: id.to_owned(),
        owner: a.owner.clone(),
        dialect: c.verbs,
        watermark: (query_param(&head, "watermark").filter(|w| !w.is_empty())).map(str::to_owned),
        until: tokio::time::Instant::now() + Duration::from_secs(expires_in(cx, a)),
        claim,
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
pub(super) fn preflight(
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

/// A token for `conversation` on this route and `user`, signed with the caller's key, for the
/// full lifetime.
fn mint(cx: &Call<'_>, c: ChannelRoute, a: &Authed, conversation: &str, user: &str) -> String {
    a.channel.key.mint(&TokenGrant {
        conversation: conversation.to_owned(),
        user: user.to_owned(),
        route: cx.rt.config.routes[c.index].name.clone(),
        expires: unix_secs(cx.received) + TOKEN_LIFETIME_SECS,
    })
}

/// What is left of the caller's token (a secret gets a full lifetime).
fn expires_in(cx: &Call<'_>, a: &Authed) -> u64 {
    match &a.token {
        Some((_, g)) => g.expires.saturating_sub(unix_secs(cx.received)),
        None => TOKEN_LIFETIME_SECS,
    }
}

/// The stream's URL: `ws://` (`wss://` on TLS, or behind a proxy that says it took HTTPS) at the
/// host the caller asked, below the route, from `watermark` when given.
fn stream_url(
    cx: &Call<'_>,
    session: &ServerSession,
    c: ChannelRoute,
    conversation: &str,
    token: &str,
    watermark: Option<&str>,
) -> String {
    let head = session.req_header();
    let forwarded_https = (head.headers.get("x-forwarded-proto"))
        .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"));
    let tls = forwarded_https || session.digest().is_some_and(|d| d.ssl_digest.is_some());
    let host = (head.headers.get("host"))
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.contains(['/', '?', '#', '@', ' ']))
        .map(str::to_owned)
        .or_else(|| session.server_addr().map(|a| a.to_string()))
        .unwrap_or_default();
    let prefix = cx.rt.config.routes[c.index].path.trim_end_matches('/');
    let scheme = if tls { "wss" } else { "ws" };
    let path = c.verbs.stream_path(conversation);
    let mut url = format!("{scheme}://{host}{prefix}/{path}?t={token}");
    if let Some(w) = watermark.filter(|w| w.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    {
        url.push_str("&watermark=");
        url.push_str(w);
    }
    url
}
