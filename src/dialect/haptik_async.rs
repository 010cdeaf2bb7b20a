//! Haptik's asynchronous side, for callers (pure): the Log Message API's immediate answer and the
//! webhook bodies the bot's replies are delivered in.
//!
//! A Haptik client sends `POST /v1.0/log_message_from_user/` with the synchronous webhook's headers
//! and body; it is answered at once with `{"message_id", "message_body", "created_at",
//! "message_type"}`, and each bot reply is POSTed to the client's `webhook_url` as Haptik's own
//! platform does ("Bot as an API" → "Which information is sent as Webhook Payload?"): one POST per
//! message, `event_name` `message`, signed `X-Hub-Signature: sha1=…`:
//!
//! ```json
//! {"version": "1.0", "timestamp": "2018-10-04T12:41:27.980Z", "user": {"auth_id": "…"},
//!  "business_id": 343, "business_name": "…", "event_name": "message",
//!  "agent": {"id": 1, "name": "…", "profile_image": "…", "is_automated": true, "email": null},
//!  "message": {"id": 1982371, "body": {"text": "Hi", "type": "TEXT", "data": {…}}}}
//! ```
//!
//! The `message.body` is the HSL reply the synchronous HSL answer carries, so a client renders
//! both the same way. User fields the proxy does not know (device, platform, names) are left out.

use std::time::SystemTime;

use serde::Serialize;
use serde_json::Value;

use crate::model::{ChatRequest, Content};

/// The Log Message API's path (a route whose `path` ends so answers Haptik callers at once).
pub const LOG_MESSAGE_PATH: &str = "/log_message_from_user/";

/// Whether a route's path is the Log Message API's.
pub fn is_log_message_path(path: &str) -> bool {
    path.ends_with(LOG_MESSAGE_PATH) || path.ends_with(LOG_MESSAGE_PATH.trim_end_matches('/'))
}

#[derive(Serialize)]
struct AckOut<'a> {
    message_id: u64,
    message_body: &'a str,
    created_at: String,
    message_type: i64,
}

/// The Log Message API's immediate answer to `req`.
pub fn log_message_ack(req: &ChatRequest<'_>, message_id: u64, created: SystemTime) -> Vec<u8> {
    let body = match &req.content {
        Content::Text(t) | Content::Payload(t) | Content::Url(t) => t,
        Content::Media { url, .. } => url,
        Content::FlowTrigger { flow_id, .. } => flow_id,
    };
    serde_json::to_vec(&AckOut {
        message_id,
        message_body: body,
        created_at: humantime::format_rfc3339_millis(created).to_string(),
        message_type: req.message_type,
    })
    .expect("ack serializes")
}

/// Who and where a webhook is about.
#[derive(Debug, Clone, Copy)]
pub struct WebhookContext<'a> {
    pub auth_id: &'a str,
    pub business_id: Option<i64>,
    pub business_name: &'a str,
}

/// The webhook bodies for an answer rendered in the HSL shape (`{"version", "timestamp", "agent",
/// "message": [{"id", "body"}]}`): one per message.
pub fn webhook_bodies(hsl_answer: &[u8], ctx: &WebhookContext<'_>) -> Vec<String> {
    let answer: Value = serde_json::from_slice(hsl_answer).expect("a rendered answer is JSON");
    let mut agent = answer["agent"].clone();
    if let Value::Object(a) = &mut agent {
        a.insert("email".into(), Value::Null);
    }
    let messages = answer["message"].as_array().cloned().unwrap_or_default();
    (messages.into_iter())
        .map(|message| {
            serde_json::json!({
                "version": "1.0",
                "timestamp": answer["timestamp"],
                "user": {"auth_id": ctx.auth_id},
                "business_id": ctx.business_id,
                "business_name": ctx.business_name,
                "event_name": "message",
                "agent": agent,
                "message": message,
            })
            .to_string()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    #[test]
    fn log_message_paths() {
        assert!(is_log_message_path("/v1.0/log_message_from_user/"));
        assert!(is_log_message_path("/haptik/v1.0/log_message_from_user"));
        assert!(!is_log_message_path("/haptik/webhook"));
    }

    #[test]
    fn one_webhook_per_message_with_the_user_and_business() {
        let answer = br#"{"version":"1.0","timestamp":"2024-01-01T00:00:00.000Z","agent":{"id":1,"name":"b","profile_image":"","is_automated":true},"message":[{"id":7,"body":{"text":"a","type":"TEXT","data":{}}},{"id":8,"body":{"text":"b","type":"TEXT","data":{}}}]}"#;
        let ctx = WebhookContext {
            auth_id: "u1",
            business_id: Some(343),
            business_name: "biz",
        };
        let bodies = webhook_bodies(answer, &ctx);
        assert_eq!(bodies.len(), 2);
        let v: Value = serde_json::from_str(&bodies[1]).unwrap();
        assert_eq!(v["event_name"], "message");
        assert_eq!(v["user"]["auth_id"], "u1");
        assert_eq!(v["business_id"], 343);
        assert_eq!(v["message"]["id"], 8);
        assert_eq!(v["message"]["body"]["text"], "b");
        assert_eq!(v["agent"]["email"], Value::Null);
    }

    #[test]
    fn the_ack_repeats_the_message() {
        let req = ChatRequest {
            user_id: Cow::Borrowed("u"),
            content: Content::Text(Cow::Borrowed("hi")),
            business_id: Some(1),
            message_type: 0,
            request_id: None,
            metadata: None,
            raw_payload: None,
            callback_url: None,
        };
        let v: Value =
            serde_json::from_slice(&log_message_ack(&req, 5, SystemTime::UNIX_EPOCH)).unwrap();
        assert_eq!(v["message_id"], 5);
        assert_eq!(v["message_body"], "hi");
        assert_eq!(v["message_type"], 0);
        assert_eq!(v["created_at"], "1970-01-01T00:00:00.000Z");
    }
}
