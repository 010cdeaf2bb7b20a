//! The spool: what a stopping process could not deliver, for the next one.
//!
//! At a graceful stop or upgrade, each pending request becomes one JSON line (its credential by
//! name, its callback URL, request id, conversation and undelivered messages with their idempotency
//! keys and deadlines) in `spool-<pid>-<nanos>.jsonl` in `delivery.spool_dir`, written under a
//! temporary name and renamed, mode 0600. Secrets are not written: the next process finds the
//! credential's signing key and allow-list by name in its own configuration, and checks the URL
//! again. A process claims a spool file by renaming it (only one process can), reads it, deletes it,
//! and delivers its messages before the requests it accepts itself (in the same conversation);
//! it looks at the directory when it starts and every second, so an upgraded process also picks up
//! the file its predecessor writes at the end of the grace period.

use std::collections::VecDeque;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Deliveries, Job, Message, Target};
use crate::config::ClientsConfig;

use super::ssrf::CallbackUrl;

#[derive(Serialize, Deserialize)]
struct SpooledJob {
    credential: String,
    url: String,
    request_id: String,
    conversation: String,
    messages: Vec<SpooledMessage>,
}

#[derive(Serialize, Deserialize)]
struct SpooledMessage {
    key: String,
    body: String,
    deadline_ms: u64,
    attempts: u32,
}

/// Writes the jobs a stop took from the queue; returns the messages written. Jobs whose bot had
/// not answered yet have nothing to write: each is one `shutdown` dead letter.
pub(super) fn write(d: &Deliveries, jobs: Vec<Job>) -> usize {
    let mut lines = Vec::new();
    let mut count = 0;
    for job in jobs {
        let Some(target) = &job.target else {
            let m = Message {
                key: String::new(),
                body: String::new(),
                deadline_ms: 0,
                attempts: 0,
            };
            d.dead_letter(
                (&job.credential, &job.request_id),
                String::new(),
                &m,
                "shutdown",
                "none",
            );
            continue;
        };
        count += job.messages.len();
        let spooled = SpooledJob {
            credential: job.credential.clone(),
            url: target.url_text.clone(),
            request_id: job.request_id.clone(),
            conversation: job.conversation.clone(),
            messages: (job.messages.into_iter())
                .map(|m| SpooledMessage {
                    key: m.key,
                    body: m.body,
                    deadline_ms: m.deadline_ms,
                    attempts: m.attempts,
                })
                .collect(),
        };
        lines.extend(serde_json::to_vec(&spooled).expect("spool entry serializes"));
        lines.push(b'\n');
    }
    if count == 0 {
        return 0;
    }
    let dir = Path::new(&d.0.cfg.spool_dir);
    match write_file(dir, &lines) {
        Ok(path) => {
            d.0.metrics
                .spooled
                .with_label_values(&["written"])
                .inc_by(count as u64);
            d.0.metrics
                .deliveries
                .with_label_values(&["spooled"])
                .inc_by(count as u64);
            tracing::info!(path = %path.display(), messages = count, "pending deliveries spooled");
        }
        Err(e) => {
            tracing::error!(dir = %dir.display(), error = %e, messages = count, "cannot write the spool: these deliveries are lost");
        }
    }
    count
}

fn write_file(dir: &Path, data: &[u8]) -> std::io::Result<PathBuf> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = format!("spool-{}-{nanos}.jsonl", std::process::id());
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    let path = dir.join(name);
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// The spool files waiting in `dir`, oldest first, and their total size.
fn waiting(dir: &Path) -> (Vec<PathBuf>, u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (Vec::new(), 0);
    };
    let mut files: Vec<(PathBuf, u64)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("spool-"))
        .filter_map(|e| Some((e.path(), e.metadata().ok()?.len())))
        .collect();
    files.sort();
    let bytes = files.iter().map(|f| f.1).sum();
    (files.into_iter().map(|f| f.0).collect(), bytes)
}

impl Deliveries {
    /// Claims every spool file in `delivery.spool_dir` and queues its messages (found credentials
    /// only: a delivery whose credential is gone, or whose URL its allow-list no longer takes, is a
    /// `forbidden` dead letter). Returns the messages restored.
    pub fn restore(&self, clients: &ClientsConfig) -> usize {
        let dir = PathBuf::from(&self.0.cfg.spool_dir);
        let (files, bytes) = waiting(&dir);
        self.0.metrics.spool_bytes.set(bytes as i64);
        let mut restored = 0;
        for file in files {
            let claimed = dir.join(format!(
                ".claimed-{}-{}",
                std::process::id(),
                file.file_name().unwrap_or_default().to_string_lossy()
            ));
            if std::fs::rename(&file, &claimed).is_err() {
                continue; // another process claimed it
            }
            let text = std::fs::read_to_string(&claimed).unwrap_or_default();
            let _ = std::fs::remove_file(&claimed);
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                match serde_json::from_str::<SpooledJob>(line) {
                    Ok(job) => restored += self.requeue(job, clients),
                    Err(e) => tracing::error!(error = %e, "unreadable spool line skipped"),
                }
            }
        }
        if restored > 0 {
            self.0
                .metrics
                .spooled
                .with_label_values(&["restored"])
                .inc_by(restored as u64);
            tracing::info!(messages = restored, "spooled deliveries restored");
        }
        self.0.metrics.spool_bytes.set(waiting(&dir).1 as i64);
        restored
    }

    fn requeue(&self, job: SpooledJob, clients: &ClientsConfig) -> usize {
        let messages: VecDeque<Message> = (job.messages.into_iter())
            .map(|m| Message {
                key: m.key,
                body: m.body,
                deadline_ms: m.deadline_ms,
                attempts: m.attempts,
            })
            .collect();
        let policy = clients.callbacks.get(&job.credential).cloned();
        let url = CallbackUrl::parse(&job.url).ok();
        let (Some(policy), Some(url)) = (policy, url) else {
            for m in &messages {
                self.dead_letter(
                    (&job.credential, &job.request_id),
                    String::new(),
                    m,
                    "forbidden",
                    "none",
                );
            }
            return 0;
        };
        let count = messages.len();
        let target = Target {
            url: url.clone(),
            url_text: job.url,
            request_id: job.request_id.clone(),
            policy,
        };
        let ticket = self.reserve_restored(&job.request_id, &job.credential, job.conversation);
        tokio::spawn(ticket.run(std::sync::Arc::new(target), messages, false));
        count
    }
}
