//! The dead-letter log: one JSON line per message that gave up, appended to
//! `delivery.dead_letter_path` (created with mode 0600). The message body is written only with
//! `[log] message_bodies` (it is what the bot said to a user); the URL without its query.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

/// One line of the log.
#[derive(Debug, Serialize)]
pub struct DeadLetter<'a> {
    /// When it gave up (RFC 3339).
    pub at: String,
    /// The credential the delivery was for (`<dialect>:<name>`).
    pub credential: &'a str,
    /// The receiver, without the URL's query.
    pub url: String,
    pub idempotency_key: &'a str,
    pub request_id: &'a str,
    /// `deadline`, `rejected`, `redirect`, `forbidden` or `shutdown`.
    pub reason: &'static str,
    /// The last attempt's outcome (`none` if none was made).
    pub last_outcome: &'static str,
    pub attempts: u32,
    /// The body that was not delivered, with `[log] message_bodies` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<&'a str>,
}

/// The log file, appended to under a lock (a line is written in one call).
#[derive(Debug)]
pub struct DeadLetterLog {
    path: PathBuf,
    lock: Mutex<()>,
}

impl DeadLetterLog {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        DeadLetterLog {
            path: path.into(),
            lock: Mutex::new(()),
        }
    }

    /// Appends one line; a failure to write is logged (the metric still counts the message).
    pub fn append(&self, entry: &DeadLetter<'_>) {
        let mut line = serde_json::to_vec(entry).expect("dead letter serializes");
        line.push(b'\n');
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
            .and_then(|mut f| f.write_all(&line));
        if let Err(e) = written {
            tracing::error!(path = %self.path.display(), error = %e, "cannot write the dead-letter log");
        }
    }
}

/// Now, as RFC 3339 with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}
