//! Async mode's delivery queue: a caller is answered at once, its bot's replies are POSTed to its
//! callback (a callback URL the caller named, or its client's fixed `webhook_url`) off the caller's
//! path.
//!
//! - Bounded: at most `delivery.queue_size` async requests are accepted and not yet fully delivered
//!   ([`Deliveries::reserve`]), holding at most `delivery.max_pending_bytes` of request and message
//!   bodies; past either a caller gets 503. One credential may hold at most
//!   `max_pending_per_credential` of them and `max_pending_bytes_per_credential` (429 past that: it
//!   cannot starve the others), and one callback host at most `max_pending_per_host` (503).
//! - Ordered: the messages of one request go one after the other, and the requests of one
//!   conversation (callback URL and user) in the order they were accepted (each waits for the one
//!   before it: a lane per conversation).
//! - At least once: every attempt carries the same `idempotency-key` (`<job uuid>.<n>`); connect
//!   errors, timeouts, 408, 429 and 5xx are retried with exponential backoff and jitter (a
//!   `Retry-After` in seconds is honoured) until `delivery.deadline_ms` after the bot answered; what
//!   gives up, and any 3xx or other 4xx, goes to the dead-letter log.
//! - Crashes lose nothing: an async request is answered only once its job is in the [`journal`]
//!   (a file of this process, or a Redis stream every instance shares), and its bot's answer is
//!   journaled before it is delivered; what a process that is gone still owed is taken over by the
//!   next one ([`Deliveries::recover`]). A job whose bot had not answered is never asked again:
//!   what is owed instead is the caller dialect's failure notice, where it has one.
//! - Planned stops: [`Deliveries::shutdown`] lets deliveries finish within the grace period, then
//!   leaves what remains in the journal (released at once to the other instances on Redis), or
//!   with `journal = "off"` writes it to the spool ([`spool`]), which the next process (or the
//!   upgraded one) reads and delivers first.
//!
//! Pure parts: [`ssrf`] (allow-list and address rules), [`sign`] (signatures), [`policy`] (a
//! credential's callback settings), the journal's records. I/O: [`send`] (one attempt),
//! [`deadletter`], [`journal`], [`spool`].

pub mod background;
pub mod deadletter;
pub mod journal;
pub mod keepalive;
pub mod metrics;
pub mod recover;
pub use botbridge_core::delivery::{journal as journal_records, policy, sign, ssrf};
pub mod send;
pub mod spool;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use pingora::connectors::{ConnectorOptions, TransportConnector};
use tokio::sync::{watch, Notify, Semaphore};

use crate::config::delivery::DeliveryConfig;
use crate::otel::Trace;
use crate::shared::redis::SharedRedis;
use botbridge_core::delivery::journal::{JobRecord, PendingMessage};
use deadletter::{now_rfc3339, DeadLetter, DeadLetterLog};
use journal::{Journal, NotJournaled, Stored};
use metrics::DeliveryMetrics;
use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;
use policy::CallbackPolicy;
use send::Outcome;
use ssrf::CallbackUrl;

/// The idempotency header on every delivery.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// Where one async request's messages go.
#[derive(Debug, Clone)]
pub struct Target {
    pub policy: Arc<CallbackPolicy>,
    pub url: CallbackUrl,
    /// The URL as the caller gave it (kept for the spool).
    pub url_text: String,
    /// The request id the caller was answered with.
    pub request_id: String,
    /// The lane its deliveries keep order in: the callback URL and the user.
    pub conversation: String,
    /// The accepted request's span: each attempt's span is its child (a recovered job has none:
    /// its attempts' spans start traces of their own).
    pub trace: Trace,
}

/// One message to deliver.
#[derive(Debug, Clone)]
pub struct Message {
    /// The `idempotency-key` value, the same on every attempt and after a restart.
    pub key: String,
    pub body: String,
    /// Unix milliseconds after which it goes to the dead-letter log.
    pub deadline_ms: u64,
    pub attempts: u32,
}

/// An accepted async request in the table: what the spool would take now.
struct Job {
    request_id: String,
    credential: String,
    conversation: String,
    target: Option<Arc<Target>>,
    messages: VecDeque<Message>,
    /// The callback host it is charged to (known once it has a target).
    host: Option<String>,
    /// The bytes it is charged for: its request's body, then its messages' bodies.
    bytes: usize,
    /// Where it is journaled, once it is.
    stored: Option<Stored>,
    /// Its id in the journal (its ticket's; its messages' keys start with it).
    uuid: String,
    /// Its messages done (delivered or dead-lettered) so far.
    done: u32,
}

#[derive(Default)]
struct Table {
    jobs: HashMap<u64, Job>,
    /// Per conversation: the last accepted job and its "done" signal.
    lanes: HashMap<String, (u64, watch::Receiver<bool>)>,
    next_id: u64,
    usage: Usage,
}

/// What the jobs in the table hold, in all and by whom (entries only while above zero).
#[derive(Default)]
struct Usage {
    bytes: usize,
    by_credential: HashMap<String, Share>,
    by_host: HashMap<String, usize>,
}

/// One credential's jobs and their bytes.
#[derive(Default, Clone, Copy)]
struct Share {
    jobs: usize,
    bytes: usize,
}

/// An async request asking for a place in the queue.
pub struct Reservation<'a> {
    pub request_id: &'a str,
    pub credential: &'a str,
    pub conversation: String,
    /// The callback URL's host.
    pub host: &'a str,
    /// What the request holds until its bot answers (its body).
    pub bytes: usize,
}

/// Why an async request got no place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `queue_size` requests pending, or the process is stopping (503).
    QueueFull,
    /// `max_pending_bytes` held (503).
    BytesFull,
    /// The credential holds `max_pending_per_credential` requests or its bytes (429).
    CredentialQuota,
    /// The callback host has `max_pending_per_host` requests pending (503).
    HostQuota,
}

impl Refused {
    /// Every refusal, for pre-registering metric series.
    pub const ALL: [Refused; 4] = [
        Refused::QueueFull,
        Refused::BytesFull,
        Refused::CredentialQuota,
        Refused::HostQuota,
    ];

    /// The `result` label of `botbridge_async_requests_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::QueueFull => "queue_full",
            Refused::BytesFull => "bytes_full",
            Refused::CredentialQuota => "credential_quota",
            Refused::HostQuota => "host_quota",
        }
    }

    /// The status and what the caller is told.
    pub fn status_and_message(self) -> (u16, &'static str) {
        match self {
            Refused::QueueFull | Refused::BytesFull => {
                (503, "too many callbacks pending; try again later")
            }
            Refused::CredentialQuota => (
                429,
                "too many callbacks pending for this credential; try again later",
            ),
            Refused::HostQuota => (
                503,
                "too many callbacks pending for this callback host; try again later",
            ),
        }
    }
}

impl Usage {
    fn charge(&mut self, credential: &str, host: Option<&str>, bytes: usize) {
        self.bytes += bytes;
        let share = self.by_credential.entry(credential.to_owned()).or_default();
        share.jobs += 1;
        share.bytes += bytes;
        if let Some(h) = host {
            *self.by_host.entry(h.to_owned()).or_default() += 1;
        }
    }

    fn uncharge(&mut self, credential: &str, host: Option<&str>, bytes: usize) {
        self.bytes -= bytes;
        if let Some(share) = self.by_credential.get_mut(credential) {
            share.jobs -= 1;
            share.bytes -= bytes;
            if share.jobs == 0 {
                self.by_credential.remove(credential);
            }
        }
        if let Some(h) = host {
            if let Some(n) = self.by_host.get_mut(h) {
                *n -= 1;
                if *n == 0 {
                    self.by_host.remove(h);
                }
            }
        }
    }

    /// Whether one more request of `r` fits `cfg`'s quotas.
    fn admits(&self, cfg: &DeliveryConfig, r: &Reservation<'_>) -> Result<(), Refused> {
        let share = self
            .by_credential
            .get(r.credential)
            .copied()
            .unwrap_or_default();
        if share.jobs >= cfg.max_pending_per_credential
            || share.bytes + r.bytes > cfg.max_pending_bytes_per_credential
        {
            return Err(Refused::CredentialQuota);
        }
        if self.by_host.get(r.host).copied().unwrap_or(0) >= cfg.max_pending_per_host {
            return Err(Refused::HostQuota);
        }
        if self.bytes + r.bytes > cfg.max_pending_bytes {
            return Err(Refused::BytesFull);
        }
        Ok(())
    }
}

struct Inner {
    cfg: DeliveryConfig,
    message_bodies: bool,
    connections: send::Connections,
    in_flight: Semaphore,
    depth: AtomicUsize,
    table: Mutex<Table>,
    stop: watch::Sender<bool>,
    drained: Notify,
    dead: DeadLetterLog,
    journal: Journal,
    metrics: &'static DeliveryMetrics,
}

/// The delivery queue (cheap to clone: one shared state).
#[derive(Clone)]
pub struct Deliveries(Arc<Inner>);

/// A place in the queue, held by one async request until its messages are delivered, dead-lettered
/// or spooled. Dropping it frees the place and lets the next request of its conversation go.
pub struct Ticket {
    owner: Deliveries,
    id: u64,
    uuid: String,
    previous: Option<watch::Receiver<bool>>,
    done: watch::Sender<bool>,
}

impl Deliveries {
    /// A queue with `cfg`'s limits and journal (on `shared` with `journal = "redis"`);
    /// `message_bodies` puts undelivered bodies in the dead-letter log.
    pub fn new(
        cfg: &DeliveryConfig,
        message_bodies: bool,
        shared: Option<Arc<SharedRedis>>,
    ) -> Self {
        Deliveries(Arc::new(Inner {
            journal: Journal::open(cfg, shared),
            connections: send::Connections {
                connector: TransportConnector::new(Some(ConnectorOptions::new(0))),
                idle: Arc::default(),
            },
            in_flight: Semaphore::new(cfg.max_concurrent),
            depth: AtomicUsize::new(0),
            table: Mutex::new(Table::default()),
            stop: watch::channel(false).0,
            drained: Notify::new(),
            dead: DeadLetterLog::new(cfg),
            metrics: DeliveryMetrics::global(),
            cfg: cfg.clone(),
            message_bodies,
        }))
    }

    /// The settings it runs with.
    pub fn config(&self) -> &DeliveryConfig {
        &self.0.cfg
    }

    /// The metrics (also to register a dialect's series).
    pub fn metrics(&self) -> &'static DeliveryMetrics {
        self.0.metrics
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.0.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a place for an async request, or says why not: the queue is full or the process is
    /// stopping, or a quota of its credential, its callback host or the bytes held is reached.
    pub fn reserve(&self, r: Reservation<'_>) -> Result<Ticket, Refused> {
        let cap = self.0.cfg.queue_size;
        let taken = self
            .0
            .depth
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                (d < cap).then_some(d + 1)
            });
        if taken.is_err() || *self.0.stop.borrow() {
            if taken.is_ok() {
                self.release();
            }
            return Err(Refused::QueueFull);
        }
        let mut t = self.table();
        // Checked again under the table's lock: a stop that drained the table meanwhile would
        // otherwise leave this request accepted but neither delivered nor spooled.
        if *self.0.stop.borrow() {
            drop(t);
            self.release();
            return Err(Refused::QueueFull);
        }
        if let Err(why) = t.usage.admits(&self.0.cfg, &r) {
            drop(t);
            self.release();
            return Err(why);
        }
        Ok(self.enqueue(
            &mut t,
            r.request_id,
            r.credential,
            r.conversation,
            Some(r.host),
            r.bytes,
        ))
    }

    /// A place for a job read back from a journal or the spool (`job`: its id, which its keys
    /// start with): it was accepted already, so no limit applies.
    fn reserve_restored(&self, job: &JobRecord, stored: Option<Stored>) -> Ticket {
        self.0.depth.fetch_add(1, Ordering::AcqRel);
        let mut t = self.table();
        let conversation = job.conversation.clone();
        let mut ticket = self.enqueue(
            &mut t,
            &job.request_id,
            &job.credential,
            conversation,
            None,
            0,
        );
        if let Some(j) = t.jobs.get_mut(&ticket.id) {
            j.stored = stored;
            j.uuid = job.job.clone();
        }
        ticket.uuid = job.job.clone();
        ticket
    }

    /// The journal.
    pub fn journal(&self) -> &Journal {
        &self.0.journal
    }

    fn enqueue(
        &self,
        t: &mut Table,
        request_id: &str,
        credential: &str,
        conversation: String,
        host: Option<&str>,
        bytes: usize,
    ) -> Ticket {
        self.0.metrics.queue_depth.inc();
        let uuid = uuid::Uuid::new_v4().to_string();
        let (done, done_rx) = watch::channel(false);
        t.next_id += 1;
        let id = t.next_id;
        let previous = (t.lanes.insert(conversation.clone(), (id, done_rx))).map(|(_, rx)| rx);
        t.usage.charge(credential, host, bytes);
        t.jobs.insert(
            id,
            Job {
                request_id: request_id.to_owned(),
                credential: credential.to_owned(),
                conversation,
                target: None,
                messages: VecDeque::new(),
                host: host.map(str::to_owned),
                bytes,
                stored: None,
                uuid: uuid.clone(),
                done: 0,
            },
        );
        Ticket {
            owner: self.clone(),
            id,
            uuid,
            previous,
            done,
        }
    }

    fn release(&self) {
        self.0.depth.fetch_sub(1, Ordering::AcqRel);
        self.0.drained.notify_waiters();
    }

    /// Async requests accepted and not yet fully delivered.
    pub fn depth(&self) -> usize {
        self.0.depth.load(Ordering::Acquire)
    }

    fn stopping(&self) -> bool {
        *self.0.stop.borrow()
    }

    /// One message gave up: counted and logged (and, with the shared journal, kept with what a
    /// replay needs: `replay` is the URL as given and the conversation).
    fn dead_letter(
        &self,
        job: (&str, &str),
        url: String,
        m: &Message,
        reason: &'static str,
        last: &'static str,
        replay: Option<(&str, &str)>,
    ) {
        let (credential, request_id) = job;
        if let (Some(r), Some((url_text, conversation))) = (self.0.journal.shared(), replay) {
            r.dead_letter(serde_json::json!({
                "at": now_rfc3339(), "credential": credential, "url": url_text,
                "redacted_url": url, "conversation": conversation, "request_id": request_id,
                "idempotency_key": m.key, "reason": reason, "last_outcome": last,
                "attempts": m.attempts, "body": m.body, "deadline_ms": m.deadline_ms,
            }));
        }
        self.0
            .metrics
            .dead_letters
            .with_label_values(&[reason])
            .inc();
        self.0
            .metrics
            .deliveries
            .with_label_values(&["dead_lettered"])
            .inc();
        tracing::warn!(
            credential,
            request_id,
            reason,
            last_outcome = last,
            attempts = m.attempts,
            "delivery gave up"
        );
        self.0.dead.append(&DeadLetter {
            at: now_rfc3339(),
            credential,
            url,
            idempotency_key: &m.key,
            request_id,
            reason,
            last_outcome: last,
            attempts: m.attempts,
            body: self.0.message_bodies.then_some(m.body.as_str()),
        });
    }

    /// A graceful stop: waits until every accepted request is delivered or `deadline` comes, then
    /// stops the deliveries and writes what remains to the spool. Returns the messages spooled.
    pub async fn shutdown(&self, deadline: Instant) -> usize {
        loop {
            let drained = self.0.drained.notified();
            if self.depth() == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline.into(), drained)
                .await
                .is_err()
            {
                break;
            }
        }
        // Stopped and taken under the table's lock: a request that finishes meanwhile either left the
        // table before (delivered) or is taken here (spooled, and maybe delivered too: at least once).
        let mut jobs: Vec<(u64, Job)> = {
            let mut t = self.table();
            self.0.stop.send_replace(true);
            t.jobs.drain().collect()
        };
        if self.0.journal.enabled() {
            // The journal has them: the next process (any instance, on Redis) takes them over.
            let held: Vec<Stored> = (jobs.iter())
                .filter_map(|(_, j)| j.stored.clone())
                .collect();
            let owed = (jobs.iter())
                .map(|(_, j)| j.messages.len().max(1))
                .sum::<usize>();
            self.0.journal.close(&held).await;
            if !jobs.is_empty() {
                tracing::info!(
                    jobs = jobs.len(),
                    messages = owed,
                    "pending deliveries left in the journal for the next process"
                );
            }
            return owed;
        }
        // In the order they were accepted, so the next process keeps each conversation's order.
        jobs.sort_unstable_by_key(|(id, _)| *id);
        spool::write(self, jobs.into_iter().map(|(_, j)| j).collect())
    }
}

impl Ticket {
    /// The idempotency key of message `n` of this request.
    fn key(&self, n: usize) -> String {
        format!("{}.{n}", self.uuid)
    }

    /// This request as the journal records it: where it goes (no messages yet, no notice).
    fn record(&self, target: &Target, conversation: String) -> JobRecord {
        JobRecord {
            job: self.uuid.clone(),
            credential: target.policy.credential.clone(),
            url: target.url_text.clone(),
            request_id: target.request_id.clone(),
            conversation,
            messages: None,
            interrupt: Vec::new(),
            deadline_ms: 0,
            seq: String::new(),
        }
    }

    /// Journals the accepted request (to be answered only once this succeeds): where it goes, and
    /// `interrupt`, the caller dialect's failure notice, owed instead if the bot's answer is never
    /// journaled. Without a journal, nothing to do.
    pub async fn journal_accepted(
        &self,
        target: &Target,
        interrupt: Vec<String>,
    ) -> Result<(), NotJournaled> {
        let d = &self.owner;
        if !d.0.journal.enabled() {
            return Ok(());
        }
        let Some(conversation) = d.table().jobs.get(&self.id).map(|j| j.conversation.clone())
        else {
            return Err(NotJournaled);
        };
        let record = JobRecord {
            interrupt,
            deadline_ms: unix_ms() + d.0.cfg.deadline_ms,
            ..self.record(target, conversation)
        };
        let stored = d.0.journal.write(&record, None).await?;
        match d.table().jobs.get_mut(&self.id) {
            Some(j) => j.stored = Some(stored),
            None => {
                // A stop took the queue meanwhile: not accepted after all (the caller gets 503).
                d.0.journal.finished(&stored, &self.uuid);
                return Err(NotJournaled);
            }
        }
        Ok(())
    }

    /// Journals the bot's answer (replacing the accepted request), before it is delivered. A
    /// failure is logged and counted: the delivery goes on (a crash would then deliver the
    /// failure notice instead).
    async fn journal_answered(&self, target: &Target, messages: Vec<PendingMessage>) {
        let d = &self.owner;
        let Some((conversation, prev)) =
            (d.table().jobs.get(&self.id)).map(|j| (j.conversation.clone(), j.stored.clone()))
        else {
            return;
        };
        let record = JobRecord {
            messages: Some(messages),
            ..self.record(target, conversation)
        };
        match d.0.journal.write(&record, prev.as_ref()).await {
            Ok(stored) => match d.table().jobs.get_mut(&self.id) {
                Some(j) => j.stored = Some(stored),
                None => d.0.journal.finished(&stored, &self.uuid),
            },
            Err(_) => {
                tracing::warn!(request_id = %target.request_id, "a bot's answer could not be journaled: delivered without")
            }
        }
    }

    /// Delivers `bodies` to `target`, in order, after the conversation's earlier requests. The
    /// messages join the request's place at once, so a stop from then on spools them; the returned
    /// future does the delivering (on a task of its own, typically).
    pub fn deliver(
        self,
        target: Target,
        bodies: Vec<String>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let deadline_ms = unix_ms() + self.owner.0.cfg.deadline_ms;
        let messages = (bodies.into_iter().enumerate())
            .map(|(n, body)| Message {
                key: self.key(n),
                body,
                deadline_ms,
                attempts: 0,
            })
            .collect::<VecDeque<Message>>();
        // As the journal records them: taken before the messages move into the queue's table.
        let journaled = (self.owner.0.journal.enabled())
            .then(|| messages.iter().map(Message::pending).collect());
        let target = Arc::new(target);
        let attached = self.attach(&target, messages);
        async move {
            if attached {
                if let Some(pending) = journaled {
                    self.journal_answered(&target, pending).await;
                }
                self.run_attached(target, true).await
            }
        }
    }

    /// The bot could not be asked (or answered nothing usable): nothing to deliver.
    pub fn abandon(self) {}

    async fn run(self, target: Arc<Target>, messages: VecDeque<Message>, timed: bool) {
        if self.attach(&target, messages) {
            self.run_attached(target, timed).await
        }
    }

    /// Puts the messages and their target in the request's place (charged for their bytes and to
    /// the target's host from now on). False when a stop took the table first: they are
    /// dead-lettered, too late for the spool.
    fn attach(&self, target: &Arc<Target>, messages: VecDeque<Message>) -> bool {
        let d = &self.owner;
        let mut t = d.table();
        let Some(job) = t.jobs.get_mut(&self.id) else {
            drop(t);
            for m in &messages {
                let job = (
                    target.policy.credential.as_str(),
                    target.request_id.as_str(),
                );
                d.dead_letter(job, target.url.redacted(), m, "shutdown", "none", None);
            }
            return false;
        };
        let (credential, host, bytes) = (job.credential.clone(), job.host.take(), job.bytes);
        job.target = Some(target.clone());
        job.bytes = messages.iter().map(|m| m.body.len()).sum();
        job.host = Some(target.url.host.clone());
        job.messages = messages;
        let now_bytes = job.bytes;
        t.usage.uncharge(&credential, host.as_deref(), bytes);
        t.usage
            .charge(&credential, Some(&target.url.host), now_bytes);
        true
    }

    /// Delivers the attached messages, after the conversation's earlier requests.
    async fn run_attached(mut self, target: Arc<Target>, timed: bool) {
        let d = self.owner.clone();
        if let Some(mut prev) = self.previous.take() {
            let mut stop = d.0.stop.subscribe();
            tokio::select! {
                _ = prev.wait_for(|done| *done) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
        let ready = Instant::now();
        while let Some(m) = d.front(self.id) {
            match d.deliver_one(&target, m).await {
                Some(true) if timed => d.0.metrics.latency.observe(ready.elapsed().as_secs_f64()),
                Some(_) => {}
                None => return, // stopping: the spool has it
            }
            d.pop_front(self.id, &self.uuid);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut t = self.owner.table();
        let mut finished = None;
        if let Some(job) = t.jobs.remove(&self.id) {
            t.usage
                .uncharge(&job.credential, job.host.as_deref(), job.bytes);
            if t.lanes
                .get(&job.conversation)
                .is_some_and(|(id, _)| *id == self.id)
            {
                t.lanes.remove(&job.conversation);
            }
            // Delivered, dead-lettered or abandoned: nothing more is owed. (A job a stop took
            // from the table is not here: the journal keeps it for the next process.)
            finished = job.stored;
        }
        drop(t);
        if let Some(stored) = finished {
            self.owner.0.journal.finished(&stored, &self.uuid);
        }
        self.done.send_replace(true);
        self.owner.0.metrics.queue_depth.dec();
        self.owner.release();
    }
}

impl Deliveries {
    fn front(&self, id: u64) -> Option<Message> {
        self.table().jobs.get(&id)?.messages.front().cloned()
    }

    fn pop_front(&self, id: u64, uuid: &str) {
        let mut t = self.table();
        let Some(job) = t.jobs.get_mut(&id) else {
            return;
        };
        job.messages.pop_front();
        job.done += 1;
        let (stored, done) = (job.stored.clone(), job.done);
        drop(t);
        if let Some(s) = stored {
            self.0.journal.done(&s, uuid, done);
        }
    }

    /// Delivers one message until it succeeds or gives up: `Some(true)` delivered, `Some(false)`
    /// dead-lettered, `None` stopped (left for the spool).
    async fn deliver_one(&self, target: &Target, mut m: Message) -> Option<bool> {
        let mut stop = self.0.stop.subscribe();
        let mut delay = Duration::from_millis(self.0.cfg.retry_initial_ms);
        let max = Duration::from_millis(self.0.cfg.retry_max_ms);
        let job = (
            target.policy.credential.as_str(),
            target.request_id.as_str(),
        );
        loop {
            if self.stopping() {
                return None;
            }
            let last = m.attempts;
            let attempt = tokio::select! {
                a = self.attempt(target, &m) => a,
                _ = stop.wait_for(|s| *s) => return None,
            };
            m.attempts = last + 1;
            self.0
                .metrics
                .attempts
                .with_label_values(&[attempt.outcome.as_str()])
                .inc();
            if attempt.outcome == Outcome::Delivered {
                self.0
                    .metrics
                    .deliveries
                    .with_label_values(&["delivered"])
                    .inc();
                return Some(true);
            }
            let reason = dead_reason(attempt.outcome);
            let remaining = Duration::from_millis(m.deadline_ms.saturating_sub(unix_ms()));
            let wait = attempt.retry_after.unwrap_or_else(|| jitter(delay));
            if reason.is_some() || remaining.is_zero() || wait > remaining {
                let reason = reason.unwrap_or("deadline");
                self.dead_letter(
                    job,
                    target.url.redacted(),
                    &m,
                    reason,
                    attempt.outcome.as_str(),
                    Some((&target.url_text, &target.conversation)),
                );
                return Some(false);
            }
            self.0
                .metrics
                .retries
                .with_label_values(&[attempt.outcome.as_str()])
                .inc();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => return None,
            }
            delay = (delay * 2).min(max);
        }
    }

    /// One signed attempt, within the concurrency limit.
    async fn attempt(&self, target: &Target, m: &Message) -> send::Attempt {
        let _permit = self.0.in_flight.acquire().await.expect("never closed");
        let body = Bytes::copy_from_slice(m.body.as_bytes());
        let mut headers = target.policy.signer.headers(unix_ms() / 1000, &body);
        headers.push((IDEMPOTENCY_HEADER, m.key.clone()));
        headers.push(("x-request-id", target.request_id.clone()));
        let span = match target.trace.is_some() {
            true => target.trace.child("async delivery", SpanKind::Client),
            false => Trace::root("async delivery", SpanKind::Client),
        };
        span.set(|| {
            vec![
                KeyValue::new("botbridge.request_id", target.request_id.clone()),
                KeyValue::new("server.address", target.url.host.clone()),
                KeyValue::new("botbridge.idempotency_key", m.key.clone()),
                KeyValue::new("botbridge.delivery.attempt", i64::from(m.attempts) + 1),
            ]
        });
        span.headers(&mut |name, value| match name {
            "traceparent" => headers.push(("traceparent", value.to_owned())),
            "tracestate" => headers.push(("tracestate", value.to_owned())),
            _ => {}
        });
        let timeout = Duration::from_millis(self.0.cfg.timeout_ms);
        let reach = &target.policy.reach;
        // Boxed: the connection's and the exchange's state (several KB) exists only while an
        // attempt runs (at most `max_concurrent`), not in every pending request's task while it
        // waits for its turn or its retry.
        let attempt = Box::pin(send::attempt(
            &self.0.connections,
            reach,
            &target.url,
            &headers,
            body,
            timeout,
        ))
        .await;
        if span.is_sampled() {
            span.set(|| {
                vec![KeyValue::new(
                    "botbridge.delivery.outcome",
                    attempt.outcome.as_str(),
                )]
            });
            if attempt.outcome != Outcome::Delivered {
                span.fail(attempt.outcome.as_str());
            }
            span.end();
        }
        attempt
    }
}

impl Message {
    /// As journaled.
    fn pending(&self) -> PendingMessage {
        PendingMessage {
            key: self.key.clone(),
            body: self.body.clone(),
            deadline_ms: self.deadline_ms,
            attempts: self.attempts,
        }
    }
}

impl From<PendingMessage> for Message {
    fn from(m: PendingMessage) -> Message {
        Message {
            key: m.key,
            body: m.body,
            deadline_ms: m.deadline_ms,
            attempts: m.attempts,
        }
    }
}

/// The dead-letter reason of an outcome that is not retried; `None` for retryable ones.
fn dead_reason(o: Outcome) -> Option<&'static str> {
    match o {
        Outcome::Rejected => Some("rejected"),
        Outcome::Redirect => Some("redirect"),
        Outcome::Forbidden => Some("forbidden"),
        _ => None,
    }
}

/// A delay between half and all of `d` (jitter spreads the retries of many deliveries that failed
/// at once).
fn jitter(d: Duration) -> Duration {
    let ms = d.as_millis() as u64;
    Duration::from_millis(ms / 2 + fastrand::u64(0..=ms / 2))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_and_whole() {
        for _ in 0..100 {
            let j = jitter(Duration::from_millis(1000));
            assert!((500..=1000).contains(&(j.as_millis() as u64)), "{j:?}");
        }
    }
}
