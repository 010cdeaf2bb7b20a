//! The built-in demo bot: a CSML Chat API backend at `POST /api/chat`, so the default `proxy.toml`
//! works out of the box.
//!
//! It checks the caller's `x-api-key`/`x-api-signature` exactly as a CSML server would (the proxy's
//! re-signing is therefore exercised on every demo request) and answers with three messages: a text,
//! a question with two buttons, and an echo of what the user sent.

use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::dialect::csml;
use crate::error::ProxyError;
use crate::httpio::{self, Answer, Handler};
use crate::model::{ChatRequest, Content};
use crate::signing::CsmlKey;

/// How far a signature's timestamp may be from the demo bot's clock.
pub const TOLERANCE_SECS: u64 = 300;

/// The demo bot.
pub struct DemoBot {
    key: CsmlKey,
}

impl DemoBot {
    /// A demo bot accepting requests signed with `key`.
    pub fn new(key: CsmlKey) -> Self {
        DemoBot { key }
    }
}

/// What the demo bot says to a request: the CSML answer body.
pub fn answer(req: &ChatRequest<'_>, request_id: &str, received_at: SystemTime) -> Vec<u8> {
    let echo = match &req.content {
        Content::Text(t) => format!("You said: {t}"),
        Content::Payload(p) => format!("You clicked: {p}"),
        Content::Media { kind, url } => format!("You sent a {}: {url}", kind.as_str()),
        Content::Url(u) => format!("You shared a link: {u}"),
        Content::FlowTrigger { flow_id, .. } => format!("You asked for the flow {flow_id}"),
    };
    let conversation_id = uuid::Uuid::new_v4().to_string();
    let message = |content_type: &str, content: serde_json::Value| {
        json!({
            "conversation_id": conversation_id,
            "direction": "SEND",
            "interaction_order": 0,
            "payload": {"content_type": content_type, "content": content}
        })
    };
    let body = json!({
        "request_id": request_id,
        "interaction_id": uuid::Uuid::new_v4().to_string(),
        "messages": [
            message("text", json!({"text": "Hello from the botbridge demo bot!"})),
            message("question", json!({
                "title": "Did that reach you?",
                "buttons": [
                    {"content_type": "button", "content": {"title": "Yes", "payload": "YES", "accepts": ["Yes", "YES"]}},
                    {"content_type": "button", "content": {"title": "No", "payload": "NO", "accepts": ["No", "NO"]}}
                ]
            })),
            message("text", json!({"text": echo})),
        ],
        "client": {"bot_id": "demo-bot", "channel_id": "demo-channel", "user_id": req.user_id},
        "received_at": humantime::format_rfc3339_millis(received_at).to_string(),
        "is_authorized": true
    });
    serde_json::to_vec(&body).expect("demo answer serializes")
}

fn error(err: ProxyError) -> Answer {
    Answer::json(err.status, csml::render_error(&err))
}

#[async_trait]
impl Handler for DemoBot {
    async fn handle(&self, session: &mut ServerSession) -> Answer {
        let req = session.req_header();
        if req.uri.path() != "/api/chat" {
            let keep = httpio::discard_body(session, 64 * 1024).await;
            let mut a = error(ProxyError::new(
                404,
                crate::error::Reason::NotFound,
                "not found",
            ));
            a.keepalive = keep;
            return a;
        }
        let now = SystemTime::now();
        let unix = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let key = req
            .headers
            .get("x-api-key")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        let sig = req.headers.get("x-api-signature").map(|v| v.as_bytes());
        let verified = self.key.verify(key, sig, unix, TOLERANCE_SECS);
        let body = match httpio::read_body(session, 64 * 1024).await {
            Ok(b) => b,
            Err(_) => {
                let mut a = error(ProxyError::bad_request("unreadable or oversized body"));
                a.keepalive = false;
                return a;
            }
        };
        if let Err(why) = verified {
            return error(ProxyError::unauthorized(format!(
                "invalid API key or signature ({why:?})"
            )));
        }
        match csml::parse_request(&body) {
            Ok(chat) => {
                let request_id = chat
                    .request_id
                    .as_deref()
                    .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
                Answer::json(200, answer(&chat, &request_id, now))
            }
            Err(e) => error(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_answer_is_a_csml_answer_with_an_echo() {
        let req = csml::parse_request(
            br#"{"client":{"user_id":"u"},"metadata":{},"payload":{"content_type":"text","content":{"text":"ping"}}}"#,
        )
        .unwrap();
        let body = answer(&req, "r-1", UNIX_EPOCH);
        let parsed = csml::parse_answer(&body).unwrap();
        assert_eq!(parsed.replies.len(), 3);
        assert_eq!(
            parsed.replies[2],
            crate::model::Reply::Text("You said: ping".into())
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["request_id"], "r-1");
        assert_eq!(v["client"]["user_id"], "u");
        assert_eq!(v["received_at"], "1970-01-01T00:00:00.000Z");
    }
}
