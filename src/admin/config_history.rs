//! The admin listener's configuration endpoints: `GET /config` (the configuration running, its
//! secrets hidden, with its hash and load time), `GET /config/history` (the ones kept, newest first)
//! and `POST /config/rollback?hash=…` (apply a kept one again; see `crate::reload`).

use std::time::SystemTime;

use serde_json::json;

use crate::httpio::Answer;
use crate::reload::{Loaded, Reloader, RollbackError};

fn entry(l: &Loaded, current: bool, with_text: bool) -> serde_json::Value {
    let mut v = json!({
        "hash": l.source.hash,
        "loaded_at": rfc3339(l.at),
        "how": l.how,
        "current": current,
    });
    if with_text {
        v["config"] = l.source.redacted().into();
    }
    v
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `GET /config`.
pub fn current(reloader: &Reloader) -> Answer {
    let history = reloader.history();
    let Some(now) = history.last() else {
        return Answer::json(
            503,
            br#"{"error":"no configuration recorded yet"}"#.to_vec(),
        );
    };
    Answer::json(200, entry(now, true, true).to_string().into_bytes())
}

/// `GET /config/history`: newest first.
pub fn history(reloader: &Reloader) -> Answer {
    let history = reloader.history();
    let last = history.len().saturating_sub(1);
    let list: Vec<serde_json::Value> = (history.iter().enumerate().rev())
        .map(|(i, l)| entry(l, i == last, true))
        .collect();
    let body = json!({ "kept": crate::reload::HISTORY, "configurations": list });
    Answer::json(200, body.to_string().into_bytes())
}

/// `POST /config/rollback?hash=…`.
pub fn rollback(reloader: &Reloader, hash: Option<String>) -> Answer {
    let Some(hash) = hash else {
        let body = json!({"error": "name the configuration: ?hash=<sha-256, or its first 8 or more hex digits>"});
        return Answer::json(400, body.to_string().into_bytes());
    };
    match reloader.rollback(&hash) {
        Ok(applied) => Answer::json(
            200,
            json!({ "rolled_back_to": applied })
                .to_string()
                .into_bytes(),
        ),
        Err(RollbackError::Unknown) => {
            let body = json!({"error": "no kept configuration has that hash (GET /config/history lists them)"});
            Answer::json(404, body.to_string().into_bytes())
        }
        Err(RollbackError::Invalid(e)) => {
            let body = json!({ "error": format!("not rolled back: {e}") });
            Answer::json(409, body.to_string().into_bytes())
        }
    }
}
