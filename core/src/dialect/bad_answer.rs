//! What a caller is told about a bot answer the proxy cannot use: a fixed message that names what
//! was wrong (not JSON, the wrong shape, or which field, as a path made of the proxy's own field
//! names and indices), never anything the bot wrote. serde's own words, which quote the bot's
//! values, and the bot's text ride along as the error's `detail` ([`ProxyError::detail`]), which only
//! the debug log shows, and only with `[log] message_bodies` on.

use serde::de::DeserializeSeed;
use serde_path_to_error::{Path, Segment, Track};

use crate::error::ProxyError;

/// The longest excerpt of a bot's body kept as an error's detail.
const EXCERPT_CHARS: usize = 200;

/// What one dialect's answer looks like, for the messages about one that is not.
pub(crate) struct Expected {
    /// The dialect as messages name it: `CSML` gives "not a CSML answer".
    pub name: &'static str,
    /// What the whole body must be: "a JSON object with a `messages` array".
    pub shape: &'static str,
    /// The bytes such a body can start with (after white space).
    pub opens: &'static [u8],
    /// Every key of the dialect's answer types: the only keys a path may name, so a message never
    /// carries a key the bot made up (a path stops before one).
    pub keys: &'static [&'static str],
}

impl Expected {
    /// The 502 for a whole body that does not parse as `T`.
    pub(crate) fn body<'de, T: serde::Deserialize<'de>>(&self, body: &'de [u8]) -> ProxyError {
        match body.trim_ascii_start().first() {
            Some(b) if self.opens.contains(b) => self.part(std::marker::PhantomData::<T>, body, ""),
            _ => self
                .wrong(format!("expected {}", self.shape))
                .with_detail(excerpt(body)),
        }
    }

    /// The 502 for the part `text` of an answer, found at `at` (a path the proxy made, such as
    /// `messages[1].payload`, or "" for the whole body), that `seed` cannot read: parsed again with
    /// the path tracked, to say where it is wrong.
    pub(crate) fn part<'de, S: DeserializeSeed<'de>>(
        &self,
        seed: S,
        text: &'de [u8],
        at: &str,
    ) -> ProxyError {
        let mut de = serde_json::Deserializer::from_slice(text);
        let mut track = Track::new();
        let read = seed.deserialize(serde_path_to_error::Deserializer::new(&mut de, &mut track));
        let err = match read.and_then(|_| de.end()) {
            Ok(()) => return self.wrong(format!("expected {}", self.shape)),
            Err(e) => e,
        };
        let path = track.path();
        let detail = format!(
            "{at}{}{path}: {err}",
            if at.is_empty() { "" } else { " / " }
        );
        if err.is_syntax() || err.is_eof() {
            return ProxyError::bad_answer("the backend answer is not valid JSON")
                .with_detail(detail);
        }
        let serde_says = err.to_string();
        let problem = self.problem(&serde_says);
        let message = match safe_path(at, &path, self.keys) {
            p if p.is_empty() && problem == WRONG_TYPE => format!("expected {}", self.shape),
            p if p.is_empty() => format!("the body {problem}"),
            p => format!("`{p}` {problem}"),
        };
        self.wrong(message).with_detail(detail)
    }

    fn wrong(&self, what: String) -> ProxyError {
        ProxyError::bad_answer(format!(
            "the backend answer is not a {} answer: {what}",
            self.name
        ))
    }

    /// What serde found wrong, in fixed words: only a field name of the proxy's own is repeated.
    fn problem(&self, serde_says: &str) -> String {
        let named = |prefix: &str| {
            let name = serde_says.strip_prefix(prefix)?.split('`').next()?;
            self.keys.iter().find(|k| **k == name)
        };
        if let Some(name) = named("missing field `") {
            format!("is missing the field `{name}`")
        } else if let Some(name) = named("duplicate field `") {
            format!("has the field `{name}` twice")
        } else if serde_says.starts_with("invalid type") {
            WRONG_TYPE.to_owned()
        } else {
            "has an invalid value".to_owned()
        }
    }
}

const WRONG_TYPE: &str = "has the wrong type";

/// `at` followed by the path's indices and known keys, up to the first segment that is neither.
fn safe_path(at: &str, path: &Path, keys: &[&str]) -> String {
    let mut out = at.to_owned();
    for segment in path {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } if keys.contains(&key.as_str()) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            _ => break,
        }
    }
    out
}

/// The start of a bot's body, for an error's detail (never for its message).
pub(crate) fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(body.trim_ascii())
        .chars()
        .take(EXCERPT_CHARS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::marker::PhantomData;

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Answer {
        messages: Vec<Message>,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Message {
        text: String,
    }

    const TEST: Expected = Expected {
        name: "Test",
        shape: "an object with `messages`",
        opens: b"{",
        keys: &["messages", "text"],
    };

    const SECRET: &str = "SECRET-value";

    fn message(body: &str) -> ProxyError {
        let e = TEST.body::<Answer>(body.as_bytes());
        assert_eq!(e.status, 502);
        assert!(!e.message.contains(SECRET), "{}", e.message);
        e
    }

    #[test]
    fn messages_name_the_problem_in_fixed_words() {
        let prefix = "the backend answer is not a Test answer: ";
        let cases = [
            (
                format!("<html>{SECRET}"),
                "expected an object with `messages`",
            ),
            (
                format!("[\"{SECRET}\"]"),
                "expected an object with `messages`",
            ),
            (
                format!(r#"{{"messages":"{SECRET}"}}"#),
                "`messages` has the wrong type",
            ),
            (
                format!(r#"{{"messages":[{{"text":"a"}},{{"text":["{SECRET}"]}}]}}"#),
                "`messages[1].text` has the wrong type",
            ),
            (
                format!(r#"{{"messages":[{{"{SECRET}":1}}]}}"#),
                "`messages[0]` is missing the field `text`",
            ),
            (
                r#"{"messages":[],"messages":[]}"#.to_owned(),
                "the body has the field `messages` twice",
            ),
            (
                format!(r#"{{"{SECRET}":1}}"#),
                "the body is missing the field `messages`",
            ),
        ];
        for (body, want) in cases {
            assert_eq!(message(&body).message, format!("{prefix}{want}"), "{body}");
        }
    }

    #[test]
    fn broken_json_is_named_as_such_and_serde_words_stay_in_the_detail() {
        let e = message(&format!(r#"{{"messages":[{{"text":"{SECRET}"#));
        assert_eq!(e.message, "the backend answer is not valid JSON");
        let e = message(r#"{"messages":[]} trailing"#);
        assert_eq!(e.message, "the backend answer is not valid JSON");
        let e = message(&format!(r#"{{"messages":"{SECRET}"}}"#));
        assert!(e.detail.as_deref().unwrap().contains(SECRET));
        assert!(!format!("{e:?} {e}").contains(SECRET), "{e:?}");
    }

    #[test]
    fn keys_the_bot_made_up_end_the_path() {
        // A syntax error inside a key the bot made up: its key is never named.
        let e = TEST.part(
            PhantomData::<Message>,
            format!(r#"{{"{SECRET}":[1,}}"#).as_bytes(),
            "messages[3]",
        );
        assert_eq!(e.message, "the backend answer is not valid JSON");
        let path: Path = {
            let mut de = serde_json::Deserializer::from_str(r#"{"SECRET":{"text":1}}"#);
            let mut track = Track::new();
            let _ = std::collections::HashMap::<String, Message>::deserialize(
                serde_path_to_error::Deserializer::new(&mut de, &mut track),
            );
            track.path()
        };
        assert_eq!(safe_path("messages[3]", &path, TEST.keys), "messages[3]");
    }
}
