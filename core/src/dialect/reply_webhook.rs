//! Bots that answer on a webhook of the proxy's instead of in their HTTP answer (pure): where their
//! replies arrive, how a reply is checked and read, and how the replies to one request become one
//! answer the bot's dialect reads. The bot dialect that has such bots implements [`ReplyWebhook`];
//! the shell serves the webhook and routes the replies to the requests waiting for them.

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::request::WholeRequest;

/// One webhook a bot sent: the user it is for and, when it carries a message, that message in the
/// bot dialect's own shape (other events carry none).
#[derive(Debug, PartialEq, Eq)]
pub struct WebhookReply {
    /// The user, as the bot's requests named it (`ChatRequest::user_id`).
    pub user_id: String,
    pub body: Option<String>,
    /// When the bot sent it, if it says so readably.
    pub sent_at: Option<SystemTime>,
}

/// Why a webhook request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebhookRefusal {
    pub status: u16,
    /// The `result` label it is counted under (`bad_signature`, `bad_request`).
    pub result: &'static str,
    /// What the bot is told, in [`ReplyWebhook::error_body`].
    pub message: &'static str,
}

/// A configured bot whose replies arrive on the proxy's webhook.
pub trait ReplyWebhook: Send + Sync + fmt::Debug {
    /// The webhook's path on the chat listener.
    fn path(&self) -> &str;
    /// Replies to one request are complete once none came for this long.
    fn quiet(&self) -> Duration;
    /// Checks a webhook request's signature (in constant time) and reads its body.
    fn read(&self, req: &WholeRequest<'_>) -> Result<WebhookReply, WebhookRefusal>;
    /// The replies collected for one request, as one answer the bot's dialect parses.
    fn collected_answer(&self, bodies: &[String]) -> Vec<u8>;
    /// The body of a refusal the bot is sent, in its dialect's error shape.
    fn error_body(&self, message: &str) -> Vec<u8>;
}
