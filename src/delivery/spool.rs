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
//!
//! A process claims only what is its own: a file that is a symlink, not a regular file or not owned
//! by the proxy's user is never read, and a delivery whose credential this configuration lacks, or
//! whose callback URL that credential may not reach (the spool records no route: a delivery needs
//! only its credential and URL), is left in the directory for the process it belongs to (a file of
//! only such deliveries untouched; the others' lines of a mixed file in a new spool file). Each
//! such file is counted in `botbridge_delivery_spool_files_skipped_total{reason}` (`untrusted`,
//! `foreign`) and logged once, by name and message count (never its content).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use botbridge_core::delivery::journal::JobRecord as SpooledJob;
use prometheus::{register_int_counter_vec, IntCounterVec};

use super::recover::Requeued;
use super::{Deliveries, Job, Message};
use crate::config::{private_dir, ClientsConfig};

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
                None,
            );
            continue;
        };
        count += job.messages.len();
        let spooled = SpooledJob {
            job: String::new(),
            credential: job.credential.clone(),
            url: target.url_text.clone(),
            request_id: job.request_id.clone(),
            conversation: job.conversation.clone(),
            messages: Some(job.messages.iter().map(Message::pending).collect()),
            interrupt: Vec::new(),
            deadline_ms: 0,
            seq: String::new(),
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

/// `botbridge_delivery_spool_files_skipped_total{reason}`, registered on first use.
fn skipped_files() -> &'static IntCounterVec {
    static M: OnceLock<IntCounterVec> = OnceLock::new();
    M.get_or_init(|| {
        let m = register_int_counter_vec!(
            "botbridge_delivery_spool_files_skipped_total",
            "Spool files left unread: untrusted (symlink, not ours) or foreign (credential or URL not in this configuration)",
            &["reason"]
        )
        .expect("metric registers once");
        for reason in ["untrusted", "foreign"] {
            m.with_label_values(&[reason]);
        }
        m
    })
}

/// The spool files this process has left alone, each with the configuration it judged them by
/// (its address: a reload, which may add a credential, has them judged again).
fn skipped() -> std::sync::MutexGuard<'static, HashMap<PathBuf, usize>> {
    static SEEN: OnceLock<Mutex<HashMap<PathBuf, usize>>> = OnceLock::new();
    let seen = SEEN.get_or_init(Default::default);
    seen.lock().unwrap_or_else(|e| e.into_inner())
}

fn config_id(clients: &ClientsConfig) -> usize {
    clients as *const ClientsConfig as usize
}

/// Counts and logs a file left alone, once per file and configuration.
fn skip_once(file: &Path, clients: &ClientsConfig, reason: &'static str, messages: usize) {
    let id = config_id(clients);
    if skipped().insert(file.to_path_buf(), id) == Some(id) {
        return;
    }
    skipped_files().with_label_values(&[reason]).inc();
    tracing::warn!(path = %file.display(), reason, messages, "spool file left for the process it belongs to");
}

/// The messages of these spool lines.
fn messages(lines: &[&str]) -> usize {
    (lines.iter())
        .filter_map(|l| serde_json::from_str::<SpooledJob>(l).ok())
        .map(|j| j.messages.map_or(0, |m| m.len()))
        .sum()
}

/// Reads a spool file that is a regular file of the proxy's user, never through a symlink.
fn read_trusted(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() || meta.uid() != private_dir::euid() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "not a regular file owned by the proxy's user",
        ));
    }
    let mut text = String::new();
    f.read_to_string(&mut text)?;
    Ok(text)
}

/// Whether this configuration has the job's credential and that credential may reach its URL.
pub(super) fn is_ours(job: &SpooledJob, clients: &ClientsConfig) -> bool {
    let Some(policy) = clients.callbacks.get(&job.credential) else {
        return false;
    };
    let webhook = policy.webhook.as_ref().map(|w| w.to_url());
    webhook.as_deref() == Some(job.url.as_str()) || policy.reach.check_url(&job.url).is_ok()
}

/// A spool file's lines: the jobs this process may claim, and the others' lines as written.
fn partition<'a>(text: &'a str, clients: &ClientsConfig) -> (Vec<SpooledJob>, Vec<&'a str>) {
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<SpooledJob>(line) {
            Ok(job) if is_ours(&job, clients) => ours.push(job),
            Ok(_) => theirs.push(line),
            Err(e) => tracing::error!(error = %e, "unreadable spool line skipped"),
        }
    }
    (ours, theirs)
}

/// Writes the others' lines of a claimed file back as a spool file of their own.
pub(super) fn leave(dir: &Path, lines: &[&str], clients: &ClientsConfig) {
    let data: String = lines.iter().map(|l| format!("{l}\n")).collect();
    match write_file(dir, data.as_bytes()) {
        Ok(path) => skip_once(&path, clients, "foreign", messages(lines)),
        Err(e) => {
            tracing::error!(dir = %dir.display(), error = %e, "cannot leave other processes' spooled deliveries: they are lost")
        }
    }
}

impl Deliveries {
    /// Claims every spool file in `delivery.spool_dir` with deliveries of this configuration's
    /// credentials, and queues those (the others are left, see the module docs). Returns the
    /// messages restored.
    pub async fn restore(&self, clients: &ClientsConfig) -> usize {
        let dir = PathBuf::from(&self.0.cfg.spool_dir);
        let (files, bytes) = waiting(&dir);
        self.0.metrics.spool_bytes.set(bytes as i64);
        let mut restored = 0;
        for f in files {
            if skipped().get(f.as_path()) != Some(&config_id(clients)) {
                restored += self.restore_file(&dir, &f, clients).await;
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

    /// Claims one file if it holds deliveries of ours; returns the messages queued (journaled again
    /// first, when there is a journal).
    async fn restore_file(&self, dir: &Path, file: &Path, clients: &ClientsConfig) -> usize {
        let text = match read_trusted(file) {
            Ok(t) => t,
            Err(_) => {
                skip_once(file, clients, "untrusted", 0);
                return 0;
            }
        };
        let (ours, theirs) = partition(&text, clients);
        if ours.is_empty() && !theirs.is_empty() {
            skip_once(file, clients, "foreign", messages(&theirs));
            return 0;
        }
        let claimed = dir.join(format!(
            ".claimed-{}-{}",
            std::process::id(),
            file.file_name().unwrap_or_default().to_string_lossy()
        ));
        if std::fs::rename(file, &claimed).is_err() {
            return 0; // another process claimed it
        }
        if !theirs.is_empty() {
            leave(dir, &theirs, clients);
        }
        let (mut queued, mut failed) = (0, String::new());
        for job in ours {
            let line = serde_json::to_string(&job).expect("serializes");
            match self.requeue(job, false, None, clients).await {
                Requeued::Queued(n) => queued += n,
                Requeued::Foreign | Requeued::Failed => failed += &(line + "\n"),
            }
        }
        // What could not be journaled again goes back to the spool, for the next look.
        if !failed.is_empty() {
            if let Err(e) = write_file(dir, failed.as_bytes()) {
                tracing::error!(dir = %dir.display(), error = %e, "cannot put spooled deliveries back: they are lost");
            }
        }
        // Removed once what it held is queued (and journaled again): a crash before leaves the
        // claimed file, which is not read again (its deliveries are in the journal).
        let _ = std::fs::remove_file(&claimed);
        queued
    }
}
