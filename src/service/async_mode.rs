//! Async mode on the request path: a request with a `callback_url` (any route, any bot), or one to
//! a route whose path makes its dialect's requests async, is checked as far as it can be (callback
//! allow-list and addresses, scope, translation), answered at once, and finished on its own task:
//! the bot exchange, the answer rendered in the caller's dialect and cut into deliveries
//! (`crate::delivery`). What is answered at once and how an answer is cut into deliveries are the
//! caller dialect's (`dialect::AsyncCaller`); this file names no vendor.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

use super::{Admitted, Call, ChatService, Runtime, ServiceIds};
use crate::auth::Grant;
use crate::delivery::ssrf::Refusal;
use crate::delivery::{send, Reservation, Target, Ticket};
use crate::dialect::{AnswerContext, AnswerIds, AnswerShape, AsyncCaller, Caller};
use crate::error::{ProxyError, Reason};
use crate::limits::Plan;
use crate::metrics::AccessRecord;
use crate::model::{ChatAnswer, ChatRequest};

/// What an accepted async request needs on its own task.
struct Pending {
    rt: Arc<Runtime>,
    route: usize,
    ingress: Caller,
    grant: Arc<Grant>,
    body: Bytes,
    request_id: String,
    received: SystemTime,
    /// The request's span: the bot exchange's spans are its children.
    trace: crate::otel::Trace,
}

impl ChatService {
    /// Where an async request's replies go, with the URL and the addresses it resolves to checked;
    /// `None` for a synchronous request. A refusal is a 400 before anything reaches the bot.
    pub(super) async fn async_target(
        &self,
        a: &Admitted<'_>,
        req: &ChatRequest<'_>,
    ) -> Result<Option<Target>, ProxyError> {
        let Some(async_caller) = a.ingress.async_caller() else {
            return Ok(None);
        };
        let by_path = req.callback_url.is_none() && async_caller.path_is_async(&a.route.path);
        if req.callback_url.is_none() && !by_path {
            return Ok(None);
        }
        let dialect = a.ingress.as_str();
        let m = self.deliveries.metrics();
        m.register_dialect(dialect);
        let refuse = |r: Refusal| {
            m.requests.with_label_values(&[dialect, r.as_str()]).inc();
            let message = match (r, by_path, async_caller.not_enabled_message()) {
                (Refusal::NotEnabled, true, Some(m)) => m,
                _ => r.message(),
            };
            ProxyError::new(400, Reason::BadRequest, message)
        };
        let policy = a
            .grant
            .callbacks
            .clone()
            .ok_or_else(|| refuse(Refusal::NotEnabled))?;
        let (url, url_text) = match (&req.callback_url, &policy.webhook) {
            (Some(text), _) => (
                policy.reach.check_url(text).map_err(refuse)?,
                text.to_string(),
            ),
            (None, Some(w)) => (w.clone(), w.to_url()),
            (None, None) => return Err(refuse(Refusal::NotEnabled)),
        };
        send::checked_address(&policy.reach, &url)
            .await
            .map_err(refuse)?;
        Ok(Some(Target {
            conversation: format!("{url_text}\n{}", req.user_id),
            policy,
            url,
            url_text,
            request_id: String::new(),
            trace: crate::otel::Trace::none(),
        }))
    }

    /// Checks the request as the synchronous path would (scope, translation), takes a place in the
    /// delivery queue (503 when full), journals it (503 when it cannot be), answers and leaves the
    /// rest to its own task.
    pub(super) async fn accept_async<'r>(
        &self,
        cx: &mut Call<'r>,
        a: Admitted<'r>,
        req: &ChatRequest<'_>,
        body: &Bytes,
        mut target: Target,
    ) -> Result<Vec<u8>, ProxyError> {
        self.to_bot(cx, &a, req)?;
        let (received, request_id) = (cx.received, cx.request_id().to_owned());
        let dialect = a.ingress.as_str();
        let m = self.deliveries.metrics();
        let reservation = Reservation {
            request_id: &request_id,
            credential: &target.policy.credential,
            conversation: target.conversation.clone(),
            host: &target.url.host,
            bytes: body.len(),
        };
        let ticket = match self.deliveries.reserve(reservation) {
            Ok(ticket) => ticket,
            Err(why) => {
                m.requests.with_label_values(&[dialect, why.as_str()]).inc();
                let (status, message) = why.status_and_message();
                return Err(ProxyError::new(status, Reason::QueueFull, message)
                    .with_header("retry-after", "1"));
            }
        };
        target.request_id = request_id.clone();
        target.trace = cx.trace.clone();
        let empty = self.empty_answer(&a, req, &request_id, received);
        let interrupt = match self.deliveries.journal().enabled() {
            true => interrupt_notice(&a, &empty),
            false => Vec::new(),
        };
        if ticket.journal_accepted(&target, interrupt).await.is_err() {
            m.requests
                .with_label_values(&[dialect, "not_journaled"])
                .inc();
            let message = "the request could not be recorded for delivery; try again later";
            return Err(
                ProxyError::new(503, Reason::QueueFull, message).with_header("retry-after", "1")
            );
        }
        m.requests.with_label_values(&[dialect, "accepted"]).inc();
        let ack = self.async_ack(&a, req, empty, received);
        let pending = Pending {
            rt: cx.rt.clone(),
            route: cx.out.route.unwrap_or_default(),
            ingress: a.ingress,
            grant: a.grant.clone(),
            body: body.clone(),
            request_id,
            received,
            trace: cx.trace.clone(),
        };
        let me = self.clone();
        tokio::spawn(async move { me.finish_async(pending, ticket, target).await });
        Ok(ack)
    }

    /// The immediate answer, the caller dialect's (an empty envelope, an acknowledgement), from
    /// its rendering of an answer with no replies.
    fn async_ack(
        &self,
        a: &Admitted<'_>,
        req: &ChatRequest<'_>,
        empty: Vec<u8>,
        received: SystemTime,
    ) -> Vec<u8> {
        let id = self
            .next_message_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        async_of(a).ack(req, empty, id, received)
    }

    /// The caller dialect's rendering of an answer with no replies.
    fn empty_answer(
        &self,
        a: &Admitted<'_>,
        req: &ChatRequest<'_>,
        request_id: &str,
        received: SystemTime,
    ) -> Vec<u8> {
        let ctx = self.answer_context(a, req, request_id, received, AnswerShape::Hsl);
        a.ingress.render_answer(req, &ChatAnswer::default(), &ctx)
    }

    fn answer_context<'c>(
        &'c self,
        a: &'c Admitted<'_>,
        req: &ChatRequest<'_>,
        request_id: &'c str,
        received: SystemTime,
        shape: AnswerShape,
    ) -> AnswerContext<'c> {
        let target = a.route.target(req.business_id);
        AnswerContext {
            ids: self,
            received,
            request_id,
            business_name: target.map_or("", |t| t.business_name.as_str()),
            bot_name: &a.route.bot_name,
            route_name: &a.route.name,
            business_id: req.business_id,
            shape,
        }
    }

    /// On its own task: the bot exchange, the answer cut into deliveries, the deliveries.
    async fn finish_async(self, p: Pending, ticket: Ticket, target: Target) {
        let rt = &p.rt;
        let a = Admitted {
            route: &rt.config.routes[p.route],
            ingress: p.ingress,
            grant: p.grant.clone(),
            body: None,
            limits: Plan::none(), // checked when the request was accepted
        };
        let mut cx = Call {
            rt,
            received: p.received,
            arrived: std::time::Instant::now(),
            out: AccessRecord {
                request_id: Some(p.request_id.clone()),
                route: Some(p.route),
                ..AccessRecord::default()
            },
            conversation: None,
            partial: None,
            trace: p.trace.clone(),
        };
        // Async mode's dialects (a caller's callback URL, a client's webhook) read no ids from
        // the path, so the route's stands in for the one the request came to.
        let Ok(req) = self.parse(&mut cx, &a, &a.route.path, &p.body) else {
            return ticket.abandon(); // parsed once already: cannot fail
        };
        // A channel bot's replies are delivered as they arrive, each batch in its own place in the
        // conversation's queue (the first in the request's), in order.
        let mut ticket = Some(ticket);
        let mut stream = |replies: Vec<Vec<u8>>| {
            let bodies = self.batch_deliveries(&a, &req, &p, replies);
            self.deliver_batch(&mut ticket, &target, bodies);
        };
        let streams = (a.route.target(req.business_id))
            .is_some_and(|t| rt.config.backends[t.backend].bot.channel().is_some());
        if streams {
            cx.partial = Some(&mut stream);
        }
        let answer = p.trace.scope(self.bot_answer(&mut cx, &a, &req, &p)).await;
        drop(cx);
        let bodies = match answer {
            Ok(bodies) => bodies,
            Err(e) => {
                let empty = self.empty_answer(&a, &req, &p.request_id, p.received);
                match async_of(&a).failure_deliveries(&empty, &e) {
                    Some(bodies) => bodies,
                    None => {
                        tracing::debug!(request_id = %p.request_id, reason = e.reason.as_str(), "async request's bot failed: nothing to deliver");
                        return; // the place (if still held) is freed with it
                    }
                }
            }
        };
        if bodies.is_empty() {
            return;
        }
        self.deliver_batch(&mut ticket, &target, bodies);
    }

    /// A batch of a channel bot's replies as the bodies of deliveries, in the caller's dialect.
    fn batch_deliveries(
        &self,
        a: &Admitted<'_>,
        req: &ChatRequest<'_>,
        p: &Pending,
        replies: Vec<Vec<u8>>,
    ) -> Vec<String> {
        let Some(t) = a.route.target(req.business_id) else {
            return Vec::new();
        };
        let bot = &p.rt.config.backends[t.backend].bot;
        let body = format!(
            "[{}]",
            (replies.iter().map(|r| String::from_utf8_lossy(r)))
                .collect::<Vec<_>>()
                .join(",")
        );
        let Ok(answer) = bot.parse_answer(200, body.as_bytes(), a.ingress.keeps_raw()) else {
            return Vec::new();
        };
        let ctx = self.answer_context(a, req, &p.request_id, p.received, AnswerShape::Hsl);
        let rendered = a.ingress.render_answer(req, &answer, &ctx);
        async_of(a).partial_deliveries(req, &rendered, ctx.business_name)
    }

    /// Delivers `bodies` in `ticket`'s place (taking it), else in a new place after it; a batch
    /// the queue has no room for is counted and dropped.
    fn deliver_batch(&self, ticket: &mut Option<Ticket>, target: &Target, bodies: Vec<String>) {
        let ticket = match ticket.take() {
            Some(t) => t,
            None => {
                let reservation = Reservation {
                    request_id: &target.request_id,
                    credential: &target.policy.credential,
                    conversation: target.conversation.clone(),
                    host: &target.url.host,
                    bytes: 0,
                };
                match self.deliveries.reserve(reservation) {
                    Ok(t) => t,
                    Err(why) => {
                        tracing::warn!(
                            reason = why.as_str(),
                            "a bot's later replies could not be queued for delivery"
                        );
                        return;
                    }
                }
            }
        };
        // On a task of its own: this one's state (the bot exchange's, the request's body) is freed
        // while the deliveries wait for their receiver.
        tokio::spawn(ticket.deliver(target.clone(), bodies));
    }

    /// The bot's answer as the bodies of the deliveries, in the caller's dialect.
    async fn bot_answer<'r>(
        &self,
        cx: &mut Call<'r>,
        a: &Admitted<'r>,
        req: &ChatRequest<'_>,
        p: &Pending,
    ) -> Result<Vec<String>, ProxyError> {
        let to_bot = self.to_bot(cx, a, req)?;
        let exchange = self.forward_and_collect(cx, a, &to_bot, req).await?;
        let answer = (to_bot.backend.bot)
            .parse_answer(exchange.status, &exchange.body, a.ingress.keeps_raw())
            .inspect_err(|e| {
                if e.reason.is_backend() {
                    self.backend_error(to_bot.backend, e.reason);
                }
            })?;
        if let Some(after) = super::after_answer(cx, &to_bot, &answer) {
            let keep = (cx.rt.conversations).keep(&to_bot.backend.name, &req.user_id, after);
            Box::pin(keep).await;
        }
        // The route's shadow gets its copy as on the synchronous path.
        self.shadow(cx, a, req, &to_bot, &exchange);
        // Deliveries carry the current (HSL) shape, whatever shape the route answers synchronously.
        let ctx = self.answer_context(a, req, &p.request_id, p.received, AnswerShape::Hsl);
        let rendered = a.ingress.render_answer(req, &answer, &ctx);
        Ok(async_of(a).deliveries(req, &rendered, ctx.business_name))
    }
}

/// What is delivered if the process dies before the bot's answer is journaled: the caller
/// dialect's failure notice (for a 503 `interrupted`), if it has one. The bot is never asked again.
fn interrupt_notice(a: &Admitted<'_>, empty: &[u8]) -> Vec<String> {
    let e = ProxyError::new(
        503,
        Reason::Internal,
        "the proxy stopped before the bot answered; send the message again",
    );
    async_of(a)
        .failure_deliveries(empty, &e)
        .unwrap_or_default()
}

/// The async mode of an admitted async request's dialect (checked by `async_target`).
fn async_of<'a>(a: &Admitted<'a>) -> &'a dyn AsyncCaller {
    a.ingress
        .get()
        .async_caller()
        .expect("only a dialect with an async mode is admitted as async")
}

/// Message and interaction ids for answers rendered on an async request's own task.
impl AnswerIds for ChatService {
    fn message_ids(&self, count: u64) -> u64 {
        ServiceIds(&self.next_message_id).message_ids(count)
    }
    fn interaction_id(&self) -> String {
        ServiceIds(&self.next_message_id).interaction_id()
    }
}
