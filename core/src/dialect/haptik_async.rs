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
//!
//! And for bots: a Haptik backend with `mode = "async"` is sent the Log Message API request (at its
//! configured URL, with the same body and headers); its replies arrive as such webhooks on the
//! proxy's `webhook_path`, signed with `webhook_secret`, and are read here ([`webhook_reply`]) and
//! collected into one HSL answer ([`collected_answer`]) for whoever waits.

use std::time::SystemTime;

use serde::Serialize;
use serde_json::Value;

use crate::config::ConfigError;
use crate::delivery::sign::verify_hub_signature;
use crate::dialect::{ReplyWebhook, WebhookRefusal, WebhookReply};
use crate::model::{ChatRequest, Content};
use crate::request::WholeRequest;

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
        created_at: crate::timefmt::rfc3339_millis(created),
        message_type: req.message_type,
    })
    .expect("ack serializes")
}

/// Haptik's async mode for callers: the Log Message API's path, its acknowledgement, and one
/// webhook per reply.
pub struct LogMessageApi;

impl crate::dialect::AsyncCaller for LogMessageApi {
    fn path_is_async(&self, route_path: &str) -> bool {
        is_log_message_path(route_path)
    }

    fn not_enabled_message(&self) -> Option<&'static str> {
        Some("this client has no webhook_url for the Log Message API")
    }

    fn ack(
        &self,
        req: &ChatRequest<'_>,
        _empty: Vec<u8>,
        id: u64,
        received: SystemTime,
    ) -> Vec<u8> {
        log_message_ack(req, id, received)
    }

    fn deliveries(&self, req: &ChatRequest<'_>, rendered: &[u8], business: &str) -> Vec<String> {
        let hook = WebhookContext {
            auth_id: &req.user_id,
            business_id: req.business_id,
            business_name: business,
        };
        webhook_bodies(rendered, &hook)
    }
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

/// `mode` of a Haptik backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BotMode {
    #[default]
    Sync,
    Async,
}

/// A Haptik bot's async settings, as written.
#[derive(Debug, Default)]
pub struct AsyncBotKeys {
    pub mode: BotMode,
    pub webhook_path: Option<String>,
    pub webhook_secret: Option<String>,
    pub quiet_ms: Option<u64>,
}

/// Where an async Haptik bot's replies arrive and how they are checked.
#[derive(Clone, PartialEq, Eq)]
pub struct AsyncBot {
    /// The path on the chat listener.
    pub webhook_path: String,
    /// The key of `X-Hub-Signature`.
    pub secret: Vec<u8>,
    /// Replies are complete once none came for this long.
    pub quiet: std::time::Duration,
}

impl std::fmt::Debug for AsyncBot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncBot")
            .field("webhook_path", &self.webhook_path)
            .field("secret", &"<redacted>")
            .field("quiet", &self.quiet)
            .finish()
    }
}

/// Reads a Haptik backend's async settings (`key` names the table); `None` for `mode = "sync"`.
pub fn async_bot(key: &str, k: AsyncBotKeys) -> Result<Option<AsyncBot>, ConfigError> {
    if k.mode == BotMode::Sync {
        for (name, set) in [
            ("webhook_path", k.webhook_path.is_some()),
            ("webhook_secret", k.webhook_secret.is_some()),
            ("quiet_ms", k.quiet_ms.is_some()),
        ] {
            if set {
                return Err(ConfigError::new(
                    format!("{key}.{name}"),
                    "only used with `mode = \"async\"`",
                ));
            }
        }
        return Ok(None);
    }
    let required =
        |f: &str| ConfigError::new(format!("{key}.{f}"), "required with `mode = \"async\"`");
    let path = k.webhook_path.ok_or_else(|| required("webhook_path"))?;
    if !path.starts_with('/') || path.contains('?') {
        return Err(ConfigError::new(
            format!("{key}.webhook_path"),
            "must be a path starting with `/`, without a query",
        ));
    }
    let secret = k
        .webhook_secret
        .filter(|s| !s.is_empty())
        .ok_or_else(|| required("webhook_secret"))?;
    let quiet_ms = crate::config::nonzero(&format!("{key}.quiet_ms"), k.quiet_ms.unwrap_or(1000))?;
    Ok(Some(AsyncBot {
        webhook_path: path,
        secret: secret.into_bytes(),
        quiet: std::time::Duration::from_millis(quiet_ms),
    }))
}

#[derive(serde::Deserialize)]
struct WebhookIn<'a> {
    #[serde(borrow)]
    user: WebhookUserIn<'a>,
    #[serde(default)]
    event_name: Option<String>,
    #[serde(borrow, default)]
    message: Option<WebhookMessageIn<'a>>,
    #[serde(default)]
    timestamp: Option<String>,
}

#[derive(serde::Deserialize)]
struct WebhookUserIn<'a> {
    #[serde(borrow)]
    auth_id: std::borrow::Cow<'a, str>,
}

#[derive(serde::Deserialize)]
struct WebhookMessageIn<'a> {
    #[serde(borrow)]
    body: &'a serde_json::value::RawValue,
}

/// Reads a webhook body an async Haptik bot sent: the user (`user.auth_id`) and, for a `message`
/// event, the HSL body; `sent_at` is its RFC 3339 `timestamp`. `None` when it is not one.
pub fn webhook_reply(body: &[u8]) -> Option<WebhookReply> {
    let w: WebhookIn<'_> = serde_json::from_slice(body).ok()?;
    let is_message = w.event_name.as_deref().is_none_or(|e| e == "message");
    Some(WebhookReply {
        user_id: w.user.auth_id.into_owned(),
        body: w
            .message
            .filter(|_| is_message)
            .map(|m| m.body.get().to_owned()),
        sent_at: (w.timestamp.as_deref()).and_then(|t| humantime::parse_rfc3339_weak(t).ok()),
    })
}

/// The replies collected for one request, as an HSL answer the Haptik dialect reads.
pub fn collected_answer(bodies: &[String]) -> Vec<u8> {
    let mut out = String::from(r#"{"version":"1.0","message":["#);
    for (i, b) in bodies.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(r#"{"body":"#);
        out.push_str(b);
        out.push('}');
    }
    out.push_str("]}");
    out.into_bytes()
}

impl ReplyWebhook for AsyncBot {
    fn path(&self) -> &str {
        &self.webhook_path
    }

    fn quiet(&self) -> std::time::Duration {
        self.quiet
    }

    fn read(&self, req: &WholeRequest<'_>) -> Result<WebhookReply, WebhookRefusal> {
        let sig = req.head.header("x-hub-signature");
        if !verify_hub_signature(&self.secret, req.body, sig) {
            return Err(WebhookRefusal {
                status: 401,
                result: "bad_signature",
                message: "invalid X-Hub-Signature",
            });
        }
        webhook_reply(req.body).ok_or(WebhookRefusal {
            status: 400,
            result: "bad_request",
            message: "not a Haptik webhook body",
        })
    }

    fn collected_answer(&self, bodies: &[String]) -> Vec<u8> {
        collected_answer(bodies)
    }

    fn error_body(&self, message: &str) -> Vec<u8> {
        serde_json::json!({ "error_message": message })
            .to_string()
            .into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    #[test]
    fn webhooks_in_are_read_and_collected_into_an_answer() {
        let w = webhook_reply(br#"{"user":{"auth_id":"u"},"event_name":"message","message":{"id":1,"body":{"text":"hi","type":"TEXT","data":{}}}}"#).unwrap();
        assert_eq!(w.user_id, "u");
        let answer = collected_answer(&[w.body.unwrap()]);
        let parsed = crate::dialect::haptik::parse_answer(200, &answer).unwrap();
        assert_eq!(parsed.replies.len(), 1);
        let w = webhook_reply(br#"{"user":{"auth_id":"u"},"event_name":"chat_complete"}"#).unwrap();
        assert_eq!(w.body, None);
        assert_eq!(webhook_reply(b"nope"), None);
    }

    #[test]
    fn async_bot_settings_name_the_key() {
        let e = async_bot(
            "b",
            AsyncBotKeys {
                mode: BotMode::Async,
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(e.key, "b.webhook_path");
        let e = async_bot(
            "b",
            AsyncBotKeys {
                quiet_ms: Some(5),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(e.key, "b.quiet_ms");
        let ok = AsyncBotKeys {
            mode: BotMode::Async,
            webhook_path: Some("/h".into()),
            webhook_secret: Some("s".into()),
            quiet_ms: None,
        };
        assert_eq!(
            async_bot("b", ok).unwrap().unwrap().quiet,
            std::time::Duration::from_secs(1)
        );
    }

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
