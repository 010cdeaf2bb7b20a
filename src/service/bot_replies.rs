//! Async Haptik bots (`mode = "async"`) on the request path: the proxy's webhook for each such bot,
//! and the requests waiting for its replies.
//!
//! A request to such a bot registers a waiter under (backend, user) before the Log Message API
//! request is sent; the bot's webhooks (`POST <webhook_path>`, `X-Hub-Signature` checked in constant
//! time, 401 otherwise) hand their HSL bodies to the waiters of that user; the waiter collects them
//! until none came for `quiet_ms` (or the backend's `read_timeout_ms` ends the whole wait), and the
//! request goes on as if the bot had answered them in one HSL answer: to a synchronous caller, or
//! to an async caller's callback. Two requests of one user to one bot at once share the replies
//! (Haptik's own API has no request id to tell them apart). A reply nobody waits for is answered
//! 200 (so the bot does not retry it) and counted as `unrouted`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pingora::protocols::http::ServerSession;
use tokio::sync::mpsc;

use super::{ChatService, Runtime, ToBot};
use crate::delivery::sign::verify_hub_signature;
use crate::dialect::haptik_async::{collected_answer, webhook_reply};
use crate::error::{ProxyError, Reason};
use crate::httpio::{self, Answer};
use crate::model::ChatRequest;
use crate::upstream::Exchange;

type Key = (String, String);
/// The requests waiting, by (backend, user): each with its id and where its replies go.
type Waiting = HashMap<Key, Vec<(u64, mpsc::UnboundedSender<String>)>>;

/// The requests waiting for async bots' replies.
#[derive(Default)]
pub(super) struct BotReplies {
    waiters: Mutex<Waiting>,
    next: AtomicU64,
}

/// One request's wait for its replies; unregisters itself when dropped.
pub(super) struct Waiter {
    owner: Arc<BotReplies>,
    key: Key,
    id: u64,
    rx: mpsc::UnboundedReceiver<String>,
    quiet: Duration,
    /// The end of the wait: the backend's read timeout from when the request set off.
    end: Instant,
}

impl BotReplies {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A waiter for the request's replies, when its bot answers on a webhook.
    pub(super) fn register(
        self: &Arc<Self>,
        to: &ToBot<'_>,
        req: &ChatRequest<'_>,
    ) -> Option<Waiter> {
        let bot = to.backend.bot.async_replies()?;
        let key = (to.backend.name.clone(), req.user_id.to_string());
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().entry(key.clone()).or_default().push((id, tx));
        Some(Waiter {
            owner: self.clone(),
            key,
            id,
            rx,
            quiet: bot.quiet,
            end: Instant::now() + to.backend.urls[0].endpoint.read_timeout,
        })
    }

    /// Hands a reply to every request of the user waiting on this backend; false if none waits.
    fn route(&self, backend: &str, auth_id: &str, body: String) -> bool {
        let waiters = self.lock();
        let Some(list) = waiters.get(&(backend.to_owned(), auth_id.to_owned())) else {
            return false;
        };
        list.iter()
            .fold(false, |any, (_, tx)| tx.send(body.clone()).is_ok() || any)
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut w = self.owner.lock();
        if let Some(list) = w.get_mut(&self.key) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                w.remove(&self.key);
            }
        }
    }
}

impl Waiter {
    /// After the Log Message API's acknowledgement: the replies, as one HSL answer. A refusal from
    /// the bot is passed on as it came (the dialect reads its error).
    pub(super) async fn collect(mut self, ack: Exchange) -> Result<Exchange, ProxyError> {
        if !(200..300).contains(&ack.status) {
            return Ok(ack);
        }
        let end = self.end;
        let mut bodies = Vec::new();
        loop {
            let wait = match bodies.is_empty() {
                true => end.saturating_duration_since(Instant::now()),
                false => self
                    .quiet
                    .min(end.saturating_duration_since(Instant::now())),
            };
            match tokio::time::timeout(wait, self.rx.recv()).await {
                Ok(Some(body)) => bodies.push(body),
                _ => break,
            }
        }
        if bodies.is_empty() {
            return Err(ProxyError::new(
                504,
                Reason::BackendTimeout,
                "the bot sent no reply in time",
            ));
        }
        Ok(Exchange {
            status: 200,
            body: Bytes::from(collected_answer(&bodies)),
            answered_at: Instant::now(),
        })
    }
}

impl ChatService {
    /// The webhook of an async Haptik bot, when the path is one (routes' paths come first).
    pub(super) async fn bot_webhook(
        &self,
        rt: &Runtime,
        session: &mut ServerSession,
    ) -> Option<Answer> {
        let path = session.req_header().uri.path();
        if rt.routes_by_path.contains_key(path) {
            return None;
        }
        let backend = (rt.config.backends.iter()).find(|b| {
            b.bot
                .async_replies()
                .is_some_and(|a| a.webhook_path == path)
        })?;
        let bot = backend.bot.async_replies()?;
        let m = self.deliveries.metrics();
        let answer = |status: u16, result: &str, msg: &str| {
            m.bot_webhooks.with_label_values(&[result]).inc();
            Answer::json(
                status,
                serde_json::json!({ "error_message": msg })
                    .to_string()
                    .into_bytes(),
            )
        };
        if session.req_header().method != http::Method::POST {
            return Some(
                answer(405, "bad_request", "only POST is allowed here")
                    .with_header("allow", "POST"),
            );
        }
        let Ok(body) = httpio::read_body(session, rt.config.limits.max_body_bytes).await else {
            return Some(answer(
                400,
                "bad_request",
                "the request body could not be read",
            ));
        };
        let sig = session
            .req_header()
            .headers
            .get("x-hub-signature")
            .map(|v| v.as_bytes());
        if !verify_hub_signature(&bot.secret, &body, sig) {
            return Some(answer(401, "bad_signature", "invalid X-Hub-Signature"));
        }
        let Some(reply) = webhook_reply(&body) else {
            return Some(answer(400, "bad_request", "not a Haptik webhook body"));
        };
        let routed = match reply.body {
            Some(b) => self.bot_replies.route(&backend.name, &reply.auth_id, b),
            None => true, // another event (chat_pinned, chat_complete): nothing to hand on
        };
        let result = if routed { "routed" } else { "unrouted" };
        m.bot_webhooks.with_label_values(&[result]).inc();
        Some(Answer::json(200, b"{}".to_vec()))
    }
}
