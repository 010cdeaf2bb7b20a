//! The delivery journal: an async request is answered only once what it owes its receiver is
//! written down where a crash cannot take it, and whatever a dead process still owed is delivered by
//! the next one.
//!
//! - `journal = "file"` (the default without `[redis]`): this process's append-only file
//!   ([`file`]); files of processes that are gone are taken over at start and every second after.
//! - `journal = "redis"` (the default with `[redis]`): a stream shared by every instance ([`redis`]);
//!   while Redis cannot be asked, `[redis.deliveries] on_redis_error` says whether a new async request
//!   is journaled in this instance's file instead (`local`, the default) or refused with 503
//!   (`deny`).
//! - `journal = "off"`: nothing is written; a crash loses what is pending (a planned stop spools it).
//!
//! What a job records and how a journal replays is the core's (`botbridge_core::delivery::journal`).

pub mod file;
pub mod redis;

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use botbridge_core::delivery::journal::{JobRecord, Record};
use prometheus::{
    register_histogram_vec, register_int_counter_vec, register_int_gauge_vec, HistogramVec,
    IntCounterVec, IntGaugeVec,
};

use crate::config::delivery::{DeliveryConfig, JournalKind};
use crate::config::redis::OnRedisError;
use crate::metrics::shared::{Feature, SharedMetrics};
use crate::shared::redis::SharedRedis;
use file::FileJournal;
use redis::RedisJournal;

/// Where a job is journaled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    File,
    /// The stream entry's id.
    Redis(String),
}

impl Stored {
    fn store(&self) -> &'static str {
        match self {
            Stored::File => "file",
            Stored::Redis(_) => "redis",
        }
    }
}

/// A job could not be journaled (the caller gets 503).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotJournaled;

/// The journal's metrics.
pub struct JournalMetrics {
    /// `botbridge_delivery_journal_writes_total{store, result}`: `ok` or `error`.
    pub writes: IntCounterVec,
    /// `botbridge_delivery_journal_write_duration_seconds{store}`: until durable.
    pub duration: HistogramVec,
    /// `botbridge_delivery_journal_recovered_total{store, state}`: jobs taken over from a process
    /// that is gone, `answered` or `interrupted` (its bot had not answered: its failure notice).
    pub recovered: IntCounterVec,
    /// `botbridge_delivery_journal_damaged_total{end}`: journal files taken over whose end was
    /// `torn` (a write the crash cut short) or `corrupt` (a checksum that does not match).
    pub damaged: IntCounterVec,
    /// `botbridge_delivery_journal_jobs{store}`: jobs this process holds, by where they are journaled
    /// (with Redis, `file` ones die with this machine until it starts again: see `promote`).
    pub jobs: IntGaugeVec,
}

impl JournalMetrics {
    pub fn global() -> &'static JournalMetrics {
        static M: OnceLock<JournalMetrics> = OnceLock::new();
        M.get_or_init(|| {
            let counter = |name: &str, help: &str, labels: &[&str]| {
                register_int_counter_vec!(name, help, labels).expect("metric registers once")
            };
            let m = JournalMetrics {
                writes: counter(
                    "botbridge_delivery_journal_writes_total",
                    "Jobs written to the delivery journal before their callers were answered (or their bots' answers), by store and result",
                    &["store", "result"],
                ),
                duration: register_histogram_vec!(
                    "botbridge_delivery_journal_write_duration_seconds",
                    "Time until a journal write is durable, by store",
                    &["store"],
                    crate::metrics::shared::REDIS_BUCKETS.to_vec()
                )
                .expect("metric registers once"),
                recovered: counter(
                    "botbridge_delivery_journal_recovered_total",
                    "Jobs taken over from a process that is gone, by store and state",
                    &["store", "state"],
                ),
                damaged: counter(
                    "botbridge_delivery_journal_damaged_total",
                    "Journal files taken over whose end was torn or corrupt",
                    &["end"],
                ),
                jobs: register_int_gauge_vec!(
                    "botbridge_delivery_journal_jobs",
                    "Jobs this process holds, by the store they are journaled in (counted each second)",
                    &["store"]
                )
                .expect("metric registers once"),
            };
            for store in ["file", "redis"] {
                m.duration.with_label_values(&[store]);
                m.jobs.with_label_values(&[store]);
                for r in ["ok", "error"] {
                    m.writes.with_label_values(&[store, r]);
                }
                for s in ["answered", "interrupted"] {
                    m.recovered.with_label_values(&[store, s]);
                }
            }
            for e in ["torn", "corrupt"] {
                m.damaged.with_label_values(&[e]);
            }
            m
        })
    }
}

/// The journal of this process.
pub struct Journal {
    kind: JournalKind,
    file: Option<FileJournal>,
    redis: Option<Arc<RedisJournal>>,
    on_redis_error: OnRedisError,
    metrics: &'static JournalMetrics,
}

impl Journal {
    /// The journal `cfg` asks for. The file is opened at once (a failure is logged: every async
    /// request then gets 503 until the process is restarted with a usable `journal_dir`).
    pub fn open(cfg: &DeliveryConfig, shared: Option<Arc<SharedRedis>>) -> Journal {
        let metrics = JournalMetrics::global();
        if cfg.journal == JournalKind::Off {
            return Journal {
                kind: JournalKind::Off,
                file: None,
                redis: None,
                on_redis_error: OnRedisError::Deny,
                metrics,
            };
        }
        let dir = std::path::Path::new(&cfg.journal_dir);
        let file = match FileJournal::open(dir, cfg.journal_fsync) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "cannot open the delivery journal: async requests are refused");
                None
            }
        };
        let on_redis_error =
            (shared.as_ref()).map_or(OnRedisError::Local, |s| s.settings().deliveries_on_error);
        let idle = std::time::Duration::from_millis(cfg.claim_idle_ms);
        let redis = (cfg.journal == JournalKind::Redis)
            .then_some(shared)
            .flatten()
            .map(|s| Arc::new(RedisJournal::new(s, idle)));
        if let Some(r) = &redis {
            r.start_touching();
        }
        Journal {
            kind: cfg.journal,
            file,
            redis,
            on_redis_error,
            metrics,
        }
    }

    /// Whether jobs are journaled.
    pub fn enabled(&self) -> bool {
        self.kind != JournalKind::Off
    }

    /// The file journal, if any.
    pub fn file(&self) -> Option<&FileJournal> {
        self.file.as_ref()
    }

    /// The shared journal, if any.
    pub fn shared(&self) -> Option<&Arc<RedisJournal>> {
        self.redis.as_ref()
    }

    /// Writes `job` durably, where it was written before (`prev`) or, for a new job, on Redis if
    /// configured (this instance's file when Redis cannot be asked and `on_redis_error = "local"`).
    pub async fn write(
        &self,
        job: &JobRecord,
        prev: Option<&Stored>,
    ) -> Result<Stored, NotJournaled> {
        match (prev, &self.redis) {
            (Some(Stored::Redis(id)), Some(r)) => {
                // It replaces the accepted entry: it keeps that entry's place in the order.
                let mut job = job.clone();
                if job.seq.is_empty() {
                    job.seq = id.clone();
                }
                self.to_redis(r, &job, Some(id)).await
            }
            (None, Some(r)) => match self.to_redis(r, job, None).await {
                Ok(s) => Ok(s),
                Err(e) => {
                    SharedMetrics::global().fallback(Feature::Deliveries, self.on_redis_error);
                    match self.on_redis_error {
                        OnRedisError::Local => self.to_file(job).await,
                        _ => Err(e),
                    }
                }
            },
            _ => self.to_file(job).await,
        }
    }

    async fn to_redis(
        &self,
        r: &RedisJournal,
        job: &JobRecord,
        replaces: Option<&str>,
    ) -> Result<Stored, NotJournaled> {
        let started = Instant::now();
        let written = r.write(job, replaces).await;
        self.count("redis", started, written.is_ok());
        written.map(Stored::Redis).map_err(|_| NotJournaled)
    }

    async fn to_file(&self, job: &JobRecord) -> Result<Stored, NotJournaled> {
        let Some(f) = &self.file else {
            self.count("file", Instant::now(), false);
            return Err(NotJournaled);
        };
        let started = Instant::now();
        let ok = f.write(&Record::Job(job.clone())).await;
        self.count("file", started, ok);
        ok.then_some(Stored::File).ok_or(NotJournaled)
    }

    fn count(&self, store: &str, started: Instant, ok: bool) {
        let m = self.metrics;
        m.duration
            .with_label_values(&[store])
            .observe(started.elapsed().as_secs_f64());
        let result = if ok { "ok" } else { "error" };
        m.writes.with_label_values(&[store, result]).inc();
    }

    /// Notes that the first `upto` messages of `job` are done (the file journal's; on Redis a job
    /// taken over is delivered again from its first message, with the same keys).
    pub fn done(&self, stored: &Stored, job: &str, upto: u32) {
        if let (Stored::File, Some(f)) = (stored, &self.file) {
            f.note(&Record::Done {
                job: job.to_owned(),
                upto,
            });
        }
    }

    /// Notes that nothing more is owed for `job`.
    pub fn finished(&self, stored: &Stored, job: &str) {
        match (stored, &self.file, &self.redis) {
            (Stored::File, Some(f), _) => f.note(&Record::Finished {
                job: job.to_owned(),
            }),
            (Stored::Redis(id), _, Some(r)) => r.finish(id),
            _ => {}
        }
    }

    /// Counts a job taken over from a process that is gone.
    pub fn recovered(&self, stored: &Stored, interrupted: bool) {
        let state = if interrupted {
            "interrupted"
        } else {
            "answered"
        };
        let store = stored.store();
        self.metrics
            .recovered
            .with_label_values(&[store, state])
            .inc();
    }

    /// A graceful stop: Redis entries still held are released to the other instances at once, the
    /// file is synced and closed (the next process takes it over).
    pub async fn close(&self, held: &[Stored]) {
        if let Some(r) = &self.redis {
            let ids: Vec<String> = (held.iter())
                .filter_map(|s| match s {
                    Stored::Redis(id) => Some(id.clone()),
                    Stored::File => None,
                })
                .collect();
            r.release(&ids).await;
        }
        if let Some(f) = &self.file {
            f.close().await;
        }
    }
}
