//! Taking over what processes that are gone still owed: journal files no process holds any more,
//! Redis stream entries no instance has touched for `claim_idle_ms`, and spool files. Each job is
//! queued like a fresh one (in its conversation's lane, with its idempotency keys), after it is in
//! this process's journal; a job of a credential this configuration lacks is left for the process
//! it belongs to.

use std::collections::{HashSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use botbridge_core::delivery::journal::{self as records, End, JobRecord};

use super::journal::{file, JournalMetrics, Stored};
use super::spool;
use super::ssrf::CallbackUrl;
use super::{unix_ms, Deliveries, Message, Target};
use crate::config::ClientsConfig;

/// A job read back and journaled here, ready to queue.
struct Prepared {
    job: JobRecord,
    stored: Option<Stored>,
    policy: Arc<super::policy::CallbackPolicy>,
}

/// What became of a job read back.
pub enum Requeued {
    /// Queued with this many messages (0: nothing was left to deliver).
    Queued(usize),
    /// Not this configuration's: left for its own process.
    Foreign,
    /// It could not be journaled here: left where it was, for the next look.
    Failed,
}

impl Deliveries {
    /// One look for work left by processes that are gone: spool files, journal files, and (on
    /// Redis) entries untouched for `claim_idle_ms`. Returns the messages queued.
    pub async fn recover(&self, clients: &ClientsConfig) -> usize {
        let mut queued = self.restore(clients).await;
        if let Some(f) = self.journal().file() {
            let dir = f.dir().to_path_buf();
            for orphan in file::orphans(&dir) {
                queued += self.take_over_file(orphan, &dir, clients).await;
            }
        }
        queued += self.take_over_entries(clients).await;
        self.promote().await;
        self.count_jobs();
        queued
    }

    /// Sets `botbridge_delivery_journal_jobs{store}` from the jobs held now.
    fn count_jobs(&self) {
        let (mut file, mut redis) = (0, 0);
        for j in self.table().jobs.values() {
            match j.stored {
                Some(Stored::File) => file += 1,
                Some(Stored::Redis(_)) => redis += 1,
                None => {}
            }
        }
        let jobs = &JournalMetrics::global().jobs;
        jobs.with_label_values(&["file"]).set(file);
        jobs.with_label_values(&["redis"]).set(redis);
    }

    /// On Redis: what this process journaled in its file while Redis could not be asked moves to
    /// the stream once it can (the file keeps a `Finished` record), so if this process dies the
    /// other instances take it over; else only a process that opens this `journal_dir` would.
    /// A job whose bot is still answering moves once its answer is journaled (in the file, where the
    /// job is), at a later look.
    async fn promote(&self) {
        let Some(r) = self.journal().shared().cloned() else {
            return;
        };
        let waiting: Vec<(u64, JobRecord)> = {
            let t = self.table();
            (t.jobs.iter())
                .filter(|(_, j)| j.stored == Some(Stored::File))
                .filter_map(|(id, j)| {
                    let target = j.target.as_ref()?;
                    let job = JobRecord {
                        job: j.uuid.clone(),
                        credential: j.credential.clone(),
                        url: target.url_text.clone(),
                        request_id: j.request_id.clone(),
                        conversation: j.conversation.clone(),
                        messages: Some(j.messages.iter().map(Message::pending).collect()),
                        interrupt: Vec::new(),
                        deadline_ms: 0,
                        seq: String::new(),
                    };
                    Some((*id, job))
                })
                .take(256)
                .collect()
        };
        for (id, job) in waiting {
            let Ok(entry) = r.write(&job, None).await else {
                return; // Redis still cannot be asked: the next look
            };
            let mut t = self.table();
            match t.jobs.get_mut(&id) {
                Some(j) if j.stored == Some(Stored::File) => {
                    j.stored = Some(Stored::Redis(entry));
                    drop(t);
                    self.journal().finished(&Stored::File, &job.job);
                    tracing::info!(request_id = %job.request_id, "a delivery journaled in this instance's file while redis was away moved to the shared journal");
                }
                _ => {
                    drop(t);
                    r.finish(&entry); // done meanwhile
                }
            }
        }
    }

    /// Queues what a journal file owed, then removes it (its foreign jobs become a spool file).
    async fn take_over_file(
        &self,
        orphan: file::Orphan,
        dir: &Path,
        clients: &ClientsConfig,
    ) -> usize {
        if orphan.end != End::Clean {
            let end = if matches!(orphan.end, End::Torn(_)) {
                "torn"
            } else {
                "corrupt"
            };
            let m = super::journal::JournalMetrics::global();
            m.damaged.with_label_values(&[end]).inc();
            tracing::warn!(path = %orphan.path.display(), end, "a journal file taken over ends in a damaged record (the last write of a crash): the records before it are delivered");
        }
        // All or nothing: every job is journaled here before any is queued, so a failure leaves
        // the file to the next look without queueing anything twice.
        let (mut prepared, mut foreign) = (Vec::new(), Vec::new());
        for (job, interrupted) in orphan.jobs.iter().cloned() {
            match self.journal_again(job.clone(), None, clients).await {
                Ok(p) => prepared.push((p, interrupted)),
                Err(Requeued::Foreign) => {
                    foreign.push(serde_json::to_string(&job).expect("serializes"))
                }
                Err(_) => {
                    for (p, _) in &prepared {
                        if let Some(s) = &p.stored {
                            self.journal().finished(s, &p.job.job);
                        }
                    }
                    tracing::error!(path = %orphan.path.display(), "a journal file taken over could not be journaled again: left for the next look");
                    return 0;
                }
            }
        }
        let mut queued = 0;
        for (p, interrupted) in prepared {
            if let Requeued::Queued(n) = self.queue(p, interrupted) {
                queued += n;
            }
        }
        if !foreign.is_empty() {
            let lines: Vec<&str> = foreign.iter().map(String::as_str).collect();
            spool::leave(Path::new(&self.0.cfg.spool_dir), &lines, clients);
        }
        tracing::info!(path = %orphan.path.display(), jobs = orphan.jobs.len(), messages = queued, "journal of a process that is gone taken over");
        orphan.remove(dir);
        queued
    }

    /// On Redis: takes over the entries of others left idle for `claim_idle_ms`.
    async fn take_over_entries(&self, clients: &ClientsConfig) -> usize {
        let Some(r) = self.journal().shared().cloned() else {
            return 0;
        };
        let Ok(mut claimed) = r.claim().await else {
            return 0;
        };
        // In the order the jobs were accepted (an answered job's entry is newer than its place).
        claimed.sort_by_key(|c| {
            let seq = c
                .job
                .as_ref()
                .map(|j| j.seq.as_str())
                .filter(|s| !s.is_empty());
            stream_order(seq.unwrap_or(&c.id))
        });
        let mut queued = 0;
        for c in claimed {
            if r.owns(&c.id) {
                continue; // queued here already (its touch failed for a while)
            }
            let Some(raw) = c.job else {
                tracing::error!(entry = %c.id, "unreadable journal entry dropped");
                r.finish(&c.id);
                continue;
            };
            let interrupted = records::interrupted(&raw);
            let Some(job) = records::owed(raw, 0) else {
                r.finish(&c.id);
                self.journal().recovered(&Stored::Redis(c.id), interrupted);
                continue;
            };
            let stored = Some(Stored::Redis(c.id.clone()));
            // Owned (touched) from now on, before it may finish and be acknowledged.
            r.own(&c.id);
            match self.requeue(job, interrupted, stored, clients).await {
                Requeued::Queued(n) => queued += n,
                // Not touched: another instance takes it over once it is idle again.
                Requeued::Foreign => {
                    r.disown(&c.id);
                    foreign_once(&c.id)
                }
                Requeued::Failed => r.disown(&c.id),
            }
        }
        if queued > 0 {
            tracing::info!(
                messages = queued,
                "deliveries of instances that are gone taken over"
            );
        }
        queued
    }

    /// Queues a job read back (`job.messages`: what it still owes). With `stored`, it stays where it
    /// is journaled; else it is journaled here first (when there is a journal).
    pub(super) async fn requeue(
        &self,
        job: JobRecord,
        interrupted: bool,
        stored: Option<Stored>,
        clients: &ClientsConfig,
    ) -> Requeued {
        match self.journal_again(job, stored, clients).await {
            Ok(p) => self.queue(p, interrupted),
            Err(r) => r,
        }
    }

    /// Checks that the job is this configuration's and journals it here (unless `stored`).
    async fn journal_again(
        &self,
        mut job: JobRecord,
        stored: Option<Stored>,
        clients: &ClientsConfig,
    ) -> Result<Prepared, Requeued> {
        if !spool::is_ours(&job, clients) {
            return Err(Requeued::Foreign);
        }
        if job.job.is_empty() {
            job.job = uuid::Uuid::new_v4().to_string();
        }
        let Some(policy) = clients.callbacks.get(&job.credential).cloned() else {
            return Err(Requeued::Foreign);
        };
        let stored = match stored {
            Some(s) => Some(s),
            None if self.journal().enabled() => match self.journal().write(&job, None).await {
                Ok(s) => Some(s),
                Err(_) => return Err(Requeued::Failed),
            },
            None => None,
        };
        Ok(Prepared {
            job,
            stored,
            policy,
        })
    }

    /// Queues a prepared job in its conversation's lane (its delivery on a task of its own).
    fn queue(&self, p: Prepared, interrupted: bool) -> Requeued {
        let Prepared {
            mut job,
            stored,
            policy,
        } = p;
        if let Some(s) = &stored {
            self.journal().recovered(s, interrupted);
        }
        let messages: VecDeque<Message> = (job.messages.take().unwrap_or_default().into_iter())
            .map(Message::from)
            .collect();
        let Ok(url) = CallbackUrl::parse(&job.url) else {
            for m in &messages {
                let who = (job.credential.as_str(), job.request_id.as_str());
                self.dead_letter(who, String::new(), m, "forbidden", "none", None);
            }
            if let Some(s) = &stored {
                self.journal().finished(s, &job.job);
            }
            return Requeued::Queued(0);
        };
        let count = messages.len();
        let target = Target {
            url,
            url_text: job.url.clone(),
            request_id: job.request_id.clone(),
            conversation: job.conversation.clone(),
            policy,
            trace: crate::otel::Trace::none(),
        };
        let ticket = self.reserve_restored(&job, stored);
        tokio::spawn(ticket.run(Arc::new(target), messages, false));
        Requeued::Queued(count)
    }

    /// Queues one dead letter again (the admin API's replay): journaled, then delivered with its
    /// idempotency key, a new deadline and its attempts counted from zero.
    pub async fn replay(&self, letter: &serde_json::Value, clients: &ClientsConfig) -> Requeued {
        let text = |k: &str| {
            letter
                .get(k)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned()
        };
        let job = JobRecord {
            job: uuid::Uuid::new_v4().to_string(),
            credential: text("credential"),
            url: text("url"),
            request_id: text("request_id"),
            conversation: text("conversation"),
            messages: Some(vec![records::PendingMessage {
                key: text("idempotency_key"),
                body: text("body"),
                deadline_ms: unix_ms() + self.0.cfg.deadline_ms,
                attempts: 0,
            }]),
            interrupt: Vec::new(),
            deadline_ms: 0,
            seq: String::new(),
        };
        self.requeue(job, false, None, clients).await
    }
}

/// A stream id (`<ms>-<n>`) as something that sorts in its order.
fn stream_order(id: &str) -> (u64, u64) {
    let (ms, n) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(u64::MAX), n.parse().unwrap_or(0))
}

/// Logs once per entry that another configuration's delivery was left alone.
fn foreign_once(id: &str) {
    static SEEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let mut seen = (SEEN.get_or_init(Default::default).lock()).unwrap_or_else(|e| e.into_inner());
    if seen.len() > 10_000 {
        seen.clear();
    }
    if seen.insert(id.to_owned()) {
        tracing::warn!(entry = %id, "a journaled delivery of a credential this configuration lacks is left for its own instance");
    }
}
