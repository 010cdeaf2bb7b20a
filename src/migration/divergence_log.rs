//! The divergence log: differing (and failed) shadow pairs as JSON lines, size-capped and rotated;
//! and the record both it and the report page show.
//!
//! One line per sampled divergence: time, request id, route, verdict, and both canonical answers.
//! Message text, links and button labels appear only with `[log] message_bodies` on (they are what
//! the bots said to users, often quoting them); otherwise each message is its kind and length.
//!
//! The file is a [`RotatingFile`]: created with mode 0600 (it can hold message text), never opened
//! through a symlink, rotated at its cap.

use serde::Serialize;

use super::compare::{kind, Verdict};
use crate::config::migration::DivergenceLogConfig;
use crate::metrics::migration::MigrationMetrics;
use crate::model::{ChatAnswer, Reply};
use crate::rotating_file::RotatingFile;

/// One differing pair, as logged and as the report page lists it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Divergence {
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    pub request_id: String,
    pub route: String,
    pub verdict: Verdict,
    pub primary: Vec<MessageView>,
    /// The shadow's messages; absent when it gave no answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<Vec<MessageView>>,
    /// Why the shadow gave no answer (a request-path reason such as `backend_timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_error: Option<std::borrow::Cow<'static, str>>,
}

/// One message of a canonical answer: its kind and text length, and with message bodies on, its
/// text, link and buttons.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct MessageView {
    pub kind: std::borrow::Cow<'static, str>,
    /// Characters of its text (a question's title, a link's or media's URL).
    pub length: usize,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub buttons: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<ChoiceView>,
}

/// A button, with message bodies on.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ChoiceView {
    pub title: String,
    pub payload: String,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The messages of an answer as views; with `bodies`, with their text.
pub fn views(answer: &ChatAnswer<'_>, bodies: bool) -> Vec<MessageView> {
    answer.replies.iter().map(|r| view(r, bodies)).collect()
}

fn view(r: &Reply<'_>, bodies: bool) -> MessageView {
    let (text, buttons): (&str, Vec<&crate::model::Button<'_>>) = match r {
        Reply::Text(t) => (t, Vec::new()),
        Reply::Question { title, buttons } => (title, buttons.iter().collect()),
        Reply::Button(b) => (&b.title, vec![b]),
        Reply::Url { url, .. } | Reply::Media { url, .. } => (url, Vec::new()),
    };
    let choices = buttons.iter().map(|b| ChoiceView {
        title: b.title.to_string(),
        payload: b.payload_or_title().to_owned(),
    });
    MessageView {
        kind: kind(r).into(),
        length: text.chars().count(),
        buttons: buttons.len(),
        text: bodies.then(|| text.to_owned()),
        choices: if bodies {
            choices.collect()
        } else {
            Vec::new()
        },
    }
}

/// The divergence log file ([`RotatingFile`]: private, capped, rotated).
pub struct DivergenceLog {
    config: DivergenceLogConfig,
    file: RotatingFile,
}

impl DivergenceLog {
    pub fn new(config: DivergenceLogConfig) -> Self {
        let file = RotatingFile::new("divergences", config.path.clone(), config.rotation);
        DivergenceLog { config, file }
    }

    /// Its settings (a reload keeps the log when they are unchanged).
    pub fn config(&self) -> &DivergenceLogConfig {
        &self.config
    }

    /// Appends one record; a failure is counted and logged, never passed on. Writes are short
    /// appends of rare lines (differences only), made on the shadow's task.
    pub fn write(&self, record: &Divergence) {
        let mut line = serde_json::to_vec(record).expect("a divergence serializes");
        line.push(b'\n');
        let result = self.file.append(&line);
        let label = if result.is_ok() { "ok" } else { "error" };
        MigrationMetrics::global()
            .log_writes
            .with_label_values(&[label])
            .inc();
        if let Err(e) = result {
            tracing::warn!(path = %self.config.path.display(), error = %e, "cannot write the divergence log");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use super::*;
    use crate::config::rotation::Rotation;
    use crate::model::Button;

    fn record(text: &str) -> Divergence {
        let answer = ChatAnswer {
            replies: vec![Reply::Text(Cow::Borrowed(text))],
            ..ChatAnswer::default()
        };
        Divergence {
            time: "2026-01-01T00:00:00.000Z".into(),
            request_id: "r".into(),
            route: "chat".into(),
            verdict: Verdict::TextDiffers,
            primary: views(&answer, false),
            shadow: None,
            shadow_error: Some("backend_timeout".into()),
        }
    }

    #[test]
    fn messages_are_redacted_to_kinds_and_lengths_without_bodies() {
        let q = Reply::Question {
            title: Cow::Borrowed("Sure?"),
            buttons: vec![Button {
                title: Cow::Borrowed("Yes"),
                payload: None,
            }],
        };
        let redacted = serde_json::to_string(&view(&q, false)).unwrap();
        assert_eq!(redacted, r#"{"kind":"question","length":5,"buttons":1}"#);
        let full = serde_json::to_string(&view(&q, true)).unwrap();
        assert!(full.contains(r#""text":"Sure?""#) && full.contains(r#""payload":"Yes""#));
    }

    #[test]
    fn the_log_rotates_at_its_cap_between_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("divergences.jsonl");
        let log = DivergenceLog::new(DivergenceLogConfig {
            path: path.clone(),
            rotation: Rotation {
                max_bytes: 4096,
                files: 2,
            },
        });
        for i in 0..200 {
            log.write(&record(&format!("message {i}")));
        }
        let size = |p: &Path| std::fs::metadata(p).unwrap().len();
        assert!(size(&path) <= 4096);
        let first = dir.path().join("divergences.jsonl.1");
        assert!(size(&first) <= 4096 && size(&first) > 3000);
        assert!(dir.path().join("divergences.jsonl.2").exists());
        assert!(!dir.path().join("divergences.jsonl.3").exists());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "it can hold message text: private");
        for f in [&path, &first] {
            for line in std::fs::read_to_string(f).unwrap().lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                assert_eq!(v["primary"][0]["kind"], "text");
                assert_eq!(v["shadow_error"], "backend_timeout");
            }
        }
    }
}
