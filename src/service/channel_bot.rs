//! The exchange with a channel bot (`dialect::ChannelBot`: a bot reached through a conversation
//! API): one conversation per (backend, user) in the conversation
//! store, started on first use and again when the bot's side says it is gone; its token refreshed
//! when less than `REFRESH_BEFORE` is left; the user's message posted; the conversation read every
//! `poll` until the replies to that message stop coming for `quiet` (or `deadline` passes). The
//! replies become the exchange's body, which the bot dialect's `parse_answer` reads like any
//! answer, so translation, shadows' comparisons and errors work as for every bot.
//!
//! A message is posted once: a post is sent again only to a new conversation, after the bot's side
//! answered that the old one is gone (so it accepted nothing). No reply by the deadline is a 504.
//! Each call goes through the backend's pool (breaker, outlier ejection, timeouts) and counts in
//! the request's backend time. This file names no vendor.

use std::time::{Duration, Instant};

use super::{join_path, pool_error, unix_secs, Call, ChatService, ToBot, JSON, REQUEST_ID};
use crate::dialect::{AfterAnswer, BotCall, BotSession, ChannelBot, Conversation};
use crate::error::{ProxyError, Reason};
use crate::model::ChatRequest;
use crate::upstream::{Endpoint, Exchange, RequestBytes};

/// What takes a channel bot's replies as they arrive (async mode): each read's new ones.
pub(super) type Partial<'a> = dyn FnMut(Vec<Vec<u8>>) + Send + Sync + 'a;

/// A token with less than this left is refreshed before it is used.
const REFRESH_BEFORE: u64 = 300;

impl ChatService {
    /// The whole exchange for one message (see the module doc).
    pub(super) async fn converse(
        &self,
        cx: &mut Call<'_>,
        to: &ToBot<'_>,
        req: &ChatRequest<'_>,
        bot: &dyn ChannelBot,
        current: &Conversation,
        partial: Option<&mut Partial<'_>>,
    ) -> Result<Exchange, ProxyError> {
        let now = unix_secs(cx.received + cx.arrived.elapsed());
        // A conversation used with the secret (no token of its own) does not expire here.
        let kept = (current.cursor.as_deref())
            .and_then(|c| serde_json::from_str::<BotSession>(c).ok())
            .filter(|s| s.token.is_empty() || s.expires > now + 5);
        let mut session = match kept {
            Some(s) if !s.token.is_empty() && s.expires < now + REFRESH_BEFORE => {
                self.refresh(cx, to, req, bot, s).await?
            }
            Some(s) => s,
            None => self.start_with(cx, to, req, bot).await?,
        };
        let mut posted = self.call(cx, to, req, bot.post(&session, &to.body)).await?;
        if bot.gone(posted.status) {
            session = self.start_with(cx, to, req, bot).await?;
            posted = self.call(cx, to, req, bot.post(&session, &to.body)).await?;
        }
        let result = bot.posted(posted.status, &posted.body);
        let id = result.inspect_err(|e| self.backend_error(to.backend, e.reason))?;
        let replies = self
            .replies(cx, to, req, bot, &mut session, &id, partial)
            .await;
        let record = Conversation {
            id: session.conversation.clone(),
            cursor: serde_json::to_string(&session).ok(),
        };
        let keep =
            (cx.rt.conversations).keep(&to.backend.name, &req.user_id, AfterAnswer::Update(record));
        Box::pin(keep).await;
        let (replies, handed) = replies?;
        if replies.is_empty() && !handed {
            self.backend_error(to.backend, Reason::BackendTimeout);
            return Err(ProxyError::new(
                504,
                Reason::BackendTimeout,
                "the bot did not answer in time",
            ));
        }
        let mut body = b"[".to_vec();
        for (i, r) in replies.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(r);
        }
        body.push(b']');
        Ok(Exchange {
            status: 200,
            body: body.into(),
            answered_at: Instant::now(),
        })
    }

    /// Reads the conversation until the replies to `id` stop coming (or the deadline), moving the
    /// session's watermark on. With `partial`, each read's new replies are handed to it at once
    /// (async mode delivers them as they arrive) and not returned; the flag says whether any were.
    #[allow(clippy::too_many_arguments)]
    async fn replies(
        &self,
        cx: &mut Call<'_>,
        to: &ToBot<'_>,
        req: &ChatRequest<'_>,
        bot: &dyn ChannelBot,
        session: &mut BotSession,
        id: &str,
        mut partial: Option<&mut Partial<'_>>,
    ) -> Result<(Vec<Vec<u8>>, bool), ProxyError> {
        let waits = bot.waits();
        let deadline = Instant::now() + waits.deadline;
        let limit = cx.rt.config.process.server.max_answer_bytes;
        let (mut replies, mut size, mut last_new) = (Vec::<Vec<u8>>::new(), 0, None::<Instant>);
        let (mut seen, mut handed) = (Vec::<Vec<u8>>::new(), false);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let call = self.call(cx, to, req, bot.read(session));
            let read = match tokio::time::timeout(left, call).await {
                Ok(read) => read?,
                Err(_) => return Ok((replies, handed)),
            };
            let page = (bot.page(read.status, &read.body, id))
                .inspect_err(|e| self.backend_error(to.backend, e.reason))?;
            if page.watermark.is_some() {
                session.watermark = page.watermark;
            }
            let now = Instant::now();
            // A reply read again (a bot whose watermark does not move) counts once.
            for r in page.replies {
                if seen.contains(&r) {
                    continue;
                }
                seen.push(r.clone());
                size += r.len();
                if size > limit {
                    self.backend_error(to.backend, Reason::BackendBadAnswer);
                    return Err(ProxyError::new(
                        502,
                        Reason::BackendBadAnswer,
                        format!("the bot's replies are larger than {limit} bytes"),
                    ));
                }
                replies.push(r);
                last_new = Some(now);
            }
            if let Some(hand) = partial.as_deref_mut().filter(|_| !replies.is_empty()) {
                hand(std::mem::take(&mut replies));
                handed = true;
            }
            let quiet = last_new.is_some_and(|t| now >= t + waits.quiet);
            if quiet || now >= deadline {
                return Ok((replies, handed));
            }
            let wait = waits.poll.min(deadline.saturating_duration_since(now));
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
    }

    /// A new conversation with the bot.
    async fn start_with(
        &self,
        cx: &mut Call<'_>,
        to: &ToBot<'_>,
        req: &ChatRequest<'_>,
        bot: &dyn ChannelBot,
    ) -> Result<BotSession, ProxyError> {
        let answer = self.call(cx, to, req, bot.start()).await?;
        let now = unix_secs(cx.received + cx.arrived.elapsed());
        (bot.started(answer.status, &answer.body, now))
            .inspect_err(|e| self.backend_error(to.backend, e.reason))
    }

    /// The session with a fresh token; a new conversation if the refresh is refused.
    async fn refresh(
        &self,
        cx: &mut Call<'_>,
        to: &ToBot<'_>,
        req: &ChatRequest<'_>,
        bot: &dyn ChannelBot,
        mut session: BotSession,
    ) -> Result<BotSession, ProxyError> {
        let answer = self.call(cx, to, req, bot.refresh(&session)).await?;
        let now = unix_secs(cx.received + cx.arrived.elapsed());
        match bot.refreshed(answer.status, &answer.body, now) {
            Ok((token, expires)) => {
                (session.token, session.expires) = (token, expires);
                Ok(session)
            }
            Err(_) => self.start_with(cx, to, req, bot).await,
        }
    }

    /// One call to the bot through its pool, its time added to the request's backend time.
    async fn call(
        &self,
        cx: &mut Call<'_>,
        to: &ToBot<'_>,
        req: &ChatRequest<'_>,
        call: BotCall,
    ) -> Result<Exchange, ProxyError> {
        let started = Instant::now();
        let request_id = cx.out.request_id.clone().unwrap_or_default();
        let build = |ep: &Endpoint| {
            let target = join_path(&ep.path, &call.path);
            let mut up = RequestBytes::new(call.method, &target, call.body.len());
            up.header("host", &ep.authority)
                .header("accept", JSON)
                .header("user-agent", &self.user_agent)
                .header(REQUEST_ID, &request_id)
                .header("authorization", &format!("Bearer {}", call.bearer));
            if !call.body.is_empty() {
                up.header("content-type", JSON);
            }
            up.body(&call.body)
        };
        let result = (cx.rt.pools.get(to.index))
            .forward(&self.upstream, req.user_id.as_bytes(), build, started)
            .await;
        let out = &mut cx.out;
        let took = started.elapsed();
        out.backend_time = Some(out.backend_time.unwrap_or_default() + took);
        let exchange = result
            .map_err(|e| pool_error(e, out))
            .inspect_err(|e| self.backend_error(to.backend, e.reason))?;
        out.from_backend = true;
        Ok(exchange)
    }
}
