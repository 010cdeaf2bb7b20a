//! The shadow sender: copies of a route's requests for its shadow bot, off the caller's path.
//!
//! The request path hands over a [`Job`] (the copy, already rendered and signed for the shadow, and
//! the primary's answer bytes) once the caller's answer is ready; [`ShadowTarget::offer`] spawns a
//! task for it on the shadow thread (one for the process, apart from the listeners' threads, so no
//! caller's request ever waits behind a copy's work) or, when the route already has `max_in_flight`
//! copies in flight and `max_queued` waiting, drops it and counts it. The task makes the exchange with its own pooled client, reads
//! both answers into the canonical model, compares them and records the outcome
//! (`super::Recorder`). Nothing here can delay or fail the caller: its answer does not wait for the
//! task, and every failure of the shadow is a verdict (`shadow_error`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use prometheus::{IntCounter, IntGauge};
use tokio::sync::{mpsc, Semaphore};

use super::compare::compare;
use super::Recorder;
use crate::config::migration::Shadow;
use crate::config::Backend;
use crate::dialect::Bot;
use crate::error::ProxyError;
use crate::metrics::migration::MigrationMetrics;
use crate::upstream::{Endpoint, Upstream};

/// The primary bot's answer to the same request, as it came.
pub struct PrimaryAnswer {
    pub bot: Arc<dyn Bot>,
    pub status: u16,
    /// The answer body (a reference-counted view of the bytes read, not a copy).
    pub body: Bytes,
    /// The primary exchange's duration.
    pub latency: Duration,
}

/// One copy for the shadow.
pub struct Job {
    /// The complete request for the shadow bot with the endpoint it goes to (the first of the
    /// shadow backend's pool now), or why it cannot be sent.
    pub request: Result<(Endpoint, Vec<u8>), ProxyError>,
    pub request_id: String,
    pub primary: PrimaryAnswer,
    /// For a stateful shadow bot: the conversation the copy went in, so its answer moves it on.
    pub conversation: Option<ShadowConversation>,
    /// The copy's span (a child of the request's; nothing without `[tracing]`), ended when the
    /// shadow bot has answered.
    pub trace: crate::otel::Trace,
}

/// The conversation of a copy to a stateful shadow bot. Shadow conversations are kept in this
/// instance's memory only (`ConversationStore::keep_here`): a shadow is an experiment, and its
/// copies must never wait on Redis.
pub struct ShadowConversation {
    pub store: Arc<crate::conversations::ConversationStore>,
    pub user: String,
    pub current: botbridge_core::dialect::Conversation,
}

/// A route's shadow bot, with the bounds of its queue.
pub struct ShadowTarget {
    pub route: String,
    pub settings: Shadow,
    pub backend: Backend,
    /// Copies in flight or waiting.
    pending: AtomicUsize,
    slots: Semaphore,
    /// Divergences seen, for sampling the log.
    divergences: AtomicU64,
    /// This route's series, resolved once: the caller's path hashes no labels.
    sent: IntCounter,
    dropped: IntCounter,
    pending_gauge: IntGauge,
}

impl ShadowTarget {
    pub fn new(route: &str, settings: Shadow, backend: Backend) -> Self {
        let m = MigrationMetrics::global();
        m.register_shadow(route);
        ShadowTarget {
            sent: m.shadow_requests.with_label_values(&[route, "sent"]),
            dropped: m.shadow_requests.with_label_values(&[route, "dropped"]),
            pending_gauge: m.shadow_pending.with_label_values(&[route]),
            route: route.to_owned(),
            slots: Semaphore::new(settings.max_in_flight),
            settings,
            backend,
            pending: AtomicUsize::new(0),
            divergences: AtomicU64::new(0),
        }
    }

    /// Sends the copy off the caller's path, or drops it when the route's queue is full.
    pub fn offer(self: &Arc<Self>, job: Job, upstream: &Arc<Upstream>, recorder: &Arc<Recorder>) {
        let cap = self.settings.max_in_flight + self.settings.max_queued;
        if self.pending.fetch_add(1, Ordering::AcqRel) >= cap {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            self.dropped.inc();
            recorder.report.copy(&self.route, false);
            return;
        }
        self.sent.inc();
        let pending = Pending::enter(self.clone());
        let (upstream, recorder) = (upstream.clone(), recorder.clone());
        // The taker lives as long as the process: a send does not fail.
        let _ = inbox().send(Box::pin(async move {
            let me = &pending.0;
            recorder.report.copy(&me.route, true);
            // The semaphore is never closed.
            let Ok(_slot) = me.slots.acquire().await else {
                return;
            };
            me.run(job, &upstream, &recorder).await;
        }));
    }

    /// The exchange, both answers read, compared and recorded.
    async fn run(&self, job: Job, upstream: &Upstream, recorder: &Recorder) {
        let started = Instant::now();
        let (exchange, latency) = match &job.request {
            // Copies go to the shadow backend's first endpoint (its pool's failover and health are
            // the primary path's concern; a shadow that fails is only counted).
            Ok((ep, bytes)) => {
                let peer = crate::upstream::peer_for(ep);
                let x = upstream.exchange(&peer, ep, bytes, started).await;
                match &x {
                    Ok(x) => (job.trace).set(|| {
                        vec![opentelemetry::KeyValue::new(
                            "http.response.status_code",
                            i64::from(x.status),
                        )]
                    }),
                    Err(e) => job.trace.fail(&e.to_string()),
                }
                job.trace.end();
                (Some(x.map_err(ProxyError::from)), Some(started.elapsed()))
            }
            Err(_) => (None, None),
        };
        let p = &job.primary;
        // The caller already got this answer, so it parses again (off the caller's path).
        let Ok(primary) = p.bot.parse_answer(p.status, &p.body, false) else {
            return;
        };
        let shadow = match (&job.request, &exchange) {
            (Err(e), _) => Err(e.clone()),
            (Ok(_), Some(Ok(x))) => self.backend.bot.parse_answer(x.status, &x.body, false),
            (Ok(_), Some(Err(e))) => Err(e.clone()),
            (Ok(_), None) => unreachable!("an exchange is made for every rendered request"),
        };
        if let (Some(c), Ok(answer)) = (&job.conversation, &shadow) {
            if let Some(rules) = self.backend.bot.conversations() {
                let after = rules.after(&c.current, answer, crate::conversations::random());
                c.store.keep_here(&self.backend.name, &c.user, after);
            }
        }
        let comparison = compare(&primary, shadow.as_ref().ok());
        let log = comparison.verdict != super::compare::Verdict::Match && self.log_this_one();
        let outcome = super::report::Outcome {
            at: SystemTime::now(),
            comparison: &comparison,
            primary_latency: p.latency,
            shadow_latency: latency,
        };
        let answers = super::Answers {
            primary: &primary,
            shadow: shadow.as_ref().map_err(|e| e.reason),
        };
        recorder.record(self, &job.request_id, &outcome, &answers, log);
    }

    /// Whether this divergence goes to the log: `log_percent` of them, spread evenly.
    fn log_this_one(&self) -> bool {
        let n = self.divergences.fetch_add(1, Ordering::Relaxed) + 1;
        let p = u64::from(self.settings.log_percent);
        (n * p) / 100 != ((n - 1) * p) / 100
    }
}

/// The runtime shadow copies run on: one thread, started on first use and kept for the life of the
/// process. A shadow that cannot keep up fills its routes' queues (dropped copies are counted);
/// the listeners' threads only hand copies over.
fn shadow_thread() -> &'static tokio::runtime::Runtime {
    static SHADOW: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    SHADOW.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("botbridge-shadow")
            .enable_all()
            .build()
            .expect("the shadow thread starts")
    })
}

/// A copy's whole task, as handed over.
type Copy = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// How long the shadow thread lets copies gather before it starts the next ones, while copies keep
/// coming. Handing each copy over on its own woke the shadow thread once per copy: in the 100%
/// shadow benchmark the listener thread paid the wake-up and the shadow thread about a third of its
/// time parking and waking (bench/RESULTS.md, "Shadow copies handed over in batches"). A copy
/// starts at most this much later; the caller is never waiting for it.
const GATHER: Duration = Duration::from_millis(1);

/// The process's hand-over to the shadow thread, its taker started there on first use (the thread
/// first: if it cannot start, no hand-over is made, and the next copy tries again).
fn inbox() -> &'static mpsc::UnboundedSender<Copy> {
    static INBOX: OnceLock<mpsc::UnboundedSender<Copy>> = OnceLock::new();
    let thread = shadow_thread();
    INBOX.get_or_init(|| {
        let (tx, rx) = mpsc::unbounded_channel();
        thread.spawn(take_copies(rx));
        tx
    })
}

/// The shadow thread's taker: waits for a copy, starts every copy queued, then lets copies gather
/// for [`GATHER`] before it looks again. A copy queued while it gathers wakes nothing; only one
/// queued while it waits on the empty queue does. Bounded by the routes' `Pending` counts.
async fn take_copies(mut rx: mpsc::UnboundedReceiver<Copy>) {
    let mut copies = Vec::new();
    while rx.recv_many(&mut copies, usize::MAX).await > 0 {
        for copy in copies.drain(..) {
            tokio::spawn(copy);
        }
        tokio::time::sleep(GATHER).await;
    }
}

/// Counts a copy as pending for as long as its task lives (also if the task is dropped).
struct Pending(Arc<ShadowTarget>);

impl Pending {
    fn enter(t: Arc<ShadowTarget>) -> Self {
        t.pending_gauge.inc();
        Pending(t)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
        self.0.pending_gauge.dec();
    }
}
