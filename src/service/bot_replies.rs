//! Bots that answer on a webhook of the proxy's (`dialect::ReplyWebhook`, e.g. a bot dialect's
//! `mode = "async"`) on the request path: the proxy's webhook for each such bot, and the requests
//! waiting for its replies.
//!
//! A request to such a bot registers a waiter under (backend, user) before the request is sent;
//! the bot's webhooks (`POST <webhook_path>`, the signature checked by the dialect in constant time,
//! 401 otherwise) hand their message bodies to the waiters of that user; the waiter collects them
//! until none came for `quiet_ms` (or the backend's `read_timeout_ms` ends the whole wait), and the
//! request goes on as if the bot had answered them in one answer of its dialect: to a synchronous
//! caller, or to an async caller's callback. Two requests of one user to one bot at once share the
//! replies (a webhook names only the user, no request id to tell them apart). A reply nobody waits
//! for is answered 200 (so the bot does not retry it) and counted as `unrouted`. Each signed webhook
//! is taken once:
//! one whose body was seen in the last 5 minutes, or whose `timestamp` is more than 5 minutes from
//! now, is answered 200 and dropped (`replayed`, `stale`), so a captured webhook replayed later
//! reaches nobody.
//!
//! Replies never cross callers: a webhook names only the user, so a (backend, user) belongs to the
//! credential and route whose requests wait on it, and stays theirs for the backend's read timeout
//! after the last one ended (a late reply is then dropped as `unrouted`, never handed to someone
//! else). A request of another credential or route for the same user meanwhile is refused with
//! 503 and `Retry-After`, counted as `botbridge_bot_reply_conflicts_total`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use pingora::protocols::http::ServerSession;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::{ChatService, Runtime, ToBot};
use crate::dialect::Bot;
use crate::error::{ProxyError, Reason};
use crate::httpio::{self, Answer};
use crate::limits::CredentialId;
use crate::model::ChatRequest;
use crate::request::WholeRequest;
use crate::upstream::Exchange;

type Key = (String, String);

/// Whose replies a (backend, user) carries: a credential and a route.
type Owner = (CredentialId, String);

/// The requests of one (backend, user) waiting, all of one owner.
struct Waiting {
    owner: Owner,
    /// Each request's id and where its replies go.
    list: Vec<(u64, mpsc::UnboundedSender<String>)>,
    /// Once no request waits: until when late replies may still come (and nobody else may wait).
    held_until: Instant,
}

/// Entries past this many are swept of the ones no longer held, at most once a second.
const SWEEP_ABOVE: usize = 1024;

#[derive(Default)]
struct Table {
    keys: HashMap<Key, Waiting>,
    last_sweep: Option<Instant>,
}

/// How long a webhook's signed body is remembered, and how far its timestamp may be from now.
const REPLAY_WINDOW: Duration = Duration::from_secs(300);
/// Signed bodies remembered at most (about 100 bytes each); past that the oldest are forgotten
/// early, which only a bot sending over 300 webhooks a second for 5 minutes reaches.
const REPLAY_CAPACITY: u64 = 100_000;

/// The requests waiting for async bots' replies, and the webhooks seen lately.
pub(super) struct BotReplies {
    waiters: Mutex<Table>,
    next: AtomicU64,
    /// SHA-256 of each signed webhook body accepted within [`REPLAY_WINDOW`].
    seen: moka::sync::Cache<[u8; 32], ()>,
}

impl Default for BotReplies {
    fn default() -> Self {
        BotReplies {
            waiters: Mutex::default(),
            next: AtomicU64::new(0),
            seen: (moka::sync::Cache::builder())
                .max_capacity(REPLAY_CAPACITY)
                // Twice the window: a webhook dated up to one window ahead (a bot's clock running
                // fast) is still remembered until its timestamp is a window old.
                .time_to_live(2 * REPLAY_WINDOW)
                .build(),
        }
    }
}

/// One request's wait for its replies; unregisters itself when dropped.
pub(super) struct Waiter {
    owner: Arc<BotReplies>,
    key: Key,
    id: u64,
    rx: mpsc::UnboundedReceiver<String>,
    /// The bot, whose dialect makes one answer of the replies.
    bot: Arc<dyn Bot>,
    quiet: Duration,
    /// How long late replies stay this owner's after the wait.
    hold: Duration,
    /// The end of the wait: the backend's read timeout from when the request set off.
    end: Instant,
}

impl BotReplies {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A waiter for the request's replies, when its bot answers on a webhook. Refused (503) while
    /// the user's replies from this bot belong to another credential or route. `owner` is asked
    /// only for such a bot.
    pub(super) fn register(
        self: &Arc<Self>,
        to: &ToBot<'_>,
        req: &ChatRequest<'_>,
        owner: impl FnOnce() -> Owner,
    ) -> Result<Option<Waiter>, ProxyError> {
        let Some(bot) = to.backend.bot.async_replies() else {
            return Ok(None);
        };
        let owner = owner();
        let key = (to.backend.name.clone(), req.user_id.to_string());
        let hold = to.backend.urls[0].endpoint.read_timeout;
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut t = self.lock();
        t.sweep(now);
        let entry = t.keys.entry(key.clone()).or_insert_with(|| Waiting {
            owner: owner.clone(),
            list: Vec::new(),
            held_until: now,
        });
        if entry.owner != owner {
            if !entry.list.is_empty() || entry.held_until > now {
                let wait = entry.held_until.max(now + hold) - now;
                drop(t);
                return Err(conflict(wait));
            }
            entry.owner = owner;
        }
        entry.list.push((id, tx));
        Ok(Some(Waiter {
            owner: self.clone(),
            key,
            id,
            rx,
            bot: to.backend.bot.clone(),
            quiet: bot.quiet(),
            hold,
            end: now + hold,
        }))
    }

    /// Whether a signed webhook may be taken: sent within [`REPLAY_WINDOW`] of now (when it says
    /// when), and its body not taken before. A captured webhook replayed later gets `Err`, the
    /// label it is counted under.
    fn first_use(&self, body: &[u8], sent_at: Option<SystemTime>) -> Result<(), &'static str> {
        let now = SystemTime::now();
        let off = sent_at.map(|t| match now.duration_since(t) {
            Ok(ago) => ago,
            Err(ahead) => ahead.duration(),
        });
        if off.is_some_and(|d| d > REPLAY_WINDOW) {
            return Err("stale");
        }
        let digest: [u8; 32] = Sha256::digest(body).into();
        match self.seen.entry(digest).or_insert(()).is_fresh() {
            true => Ok(()),
            false => Err("replayed"),
        }
    }

    /// Hands a reply to every request of the user waiting on this backend; false if none waits.
    fn route(&self, backend: &str, auth_id: &str, body: String) -> bool {
        let t = self.lock();
        let Some(w) = t.keys.get(&(backend.to_owned(), auth_id.to_owned())) else {
            return false;
        };
        (w.list.iter()).fold(false, |any, (_, tx)| tx.send(body.clone()).is_ok() || any)
    }
}

impl Table {
    /// Forgets the (backend, user)s nobody waits on or holds any more, when there are many.
    fn sweep(&mut self, now: Instant) {
        let due = self
            .last_sweep
            .is_none_or(|at| now - at >= Duration::from_secs(1));
        if self.keys.len() > SWEEP_ABOVE && due {
            self.keys
                .retain(|_, w| !w.list.is_empty() || w.held_until > now);
            self.last_sweep = Some(now);
        }
    }
}

/// The refusal of a request whose user's replies belong to another caller for `wait` more.
fn conflict(wait: Duration) -> ProxyError {
    crate::delivery::metrics::DeliveryMetrics::global()
        .reply_conflicts
        .inc();
    ProxyError::new(
        503,
        Reason::Overloaded,
        "the bot is still answering this user for another caller; try again later",
    )
    .with_header("retry-after", wait.as_secs().max(1).to_string())
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut t = self.owner.lock();
        if let Some(w) = t.keys.get_mut(&self.key) {
            w.list.retain(|(id, _)| *id != self.id);
            w.held_until = w.held_until.max(Instant::now() + self.hold);
        }
    }
}

impl Waiter {
    /// The replies as one answer in the bot's dialect.
    fn collected(&self, bodies: &[String]) -> Vec<u8> {
        (self.bot.async_replies()).map_or_else(Vec::new, |b| b.collected_answer(bodies))
    }

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
            body: Bytes::from(self.collected(&bodies)),
            answered_at: Instant::now(),
        })
    }
}

impl ChatService {
    /// The webhook of a bot that answers on one, when the path is one (routes' paths come first).
    pub(super) async fn bot_webhook(
        &self,
        rt: &Runtime,
        session: &mut ServerSession,
    ) -> Option<Answer> {
        let path = session.req_header().uri.path();
        if rt.routes_by_path.contains_key(path) {
            return None;
        }
        let backend = (rt.config.backends.iter())
            .find(|b| b.bot.async_replies().is_some_and(|a| a.path() == path))?;
        let bot = backend.bot.async_replies()?;
        let m = self.deliveries.metrics();
        let answer = |status: u16, result: &str, msg: &str| {
            m.bot_webhooks.with_label_values(&[result]).inc();
            Answer::json(status, bot.error_body(msg))
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
        let head = super::Head(session.req_header());
        let reply = match bot.read(&WholeRequest {
            head: &head,
            body: &body,
        }) {
            Ok(reply) => reply,
            Err(r) => return Some(answer(r.status, r.result, r.message)),
        };
        if let Err(result) = self.bot_replies.first_use(&body, reply.sent_at) {
            // 200 all the same: a bot retrying a reply it sent must not retry forever.
            m.bot_webhooks.with_label_values(&[result]).inc();
            return Some(Answer::json(200, b"{}".to_vec()));
        }
        let routed = match reply.body {
            Some(b) => self.bot_replies.route(&backend.name, &reply.user_id, b),
            None => true, // another event (chat_pinned, chat_complete): nothing to hand on
        };
        let result = if routed { "routed" } else { "unrouted" };
        m.bot_webhooks.with_label_values(&[result]).inc();
        Some(Answer::json(200, b"{}".to_vec()))
    }
}
