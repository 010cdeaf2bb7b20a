//! The dead-letter log: one JSON line per message that gave up, appended to
//! `delivery.dead_letter_path`, a [`RotatingFile`] (mode 0600, never through a symlink, rotated at
//! `delivery.dead_letter_max_bytes`, `delivery.dead_letter_files` kept), so a flood of failures
//! cannot fill the disk. The message body is written only with `[log] message_bodies` (it is what
//! the bot said to a user); the URL without its query.

use std::time::SystemTime;

use serde::Serialize;

use crate::config::delivery::DeliveryConfig;
use crate::rotating_file::RotatingFile;

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

/// The log file.
pub struct DeadLetterLog(RotatingFile);

impl DeadLetterLog {
    /// The log at `cfg.dead_letter_path` with `cfg.dead_letter_rotation`.
    pub fn new(cfg: &DeliveryConfig) -> Self {
        let path = cfg.dead_letter_path.clone().into();
        DeadLetterLog(RotatingFile::new(
            "dead_letters",
            path,
            cfg.dead_letter_rotation,
        ))
    }

    /// Appends one line; a failure is counted and logged (the dead-letter metric still counts the
    /// message).
    pub fn append(&self, entry: &DeadLetter<'_>) {
        let mut line = serde_json::to_vec(entry).expect("dead letter serializes");
        line.push(b'\n');
        if let Err(e) = self.0.append(&line) {
            tracing::error!(path = %self.0.path().display(), error = %e, "cannot write the dead-letter log");
        }
    }
}

/// Now, as RFC 3339 with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}
