//! Channel callers: caller dialects whose conversations the proxy holds. A caller starts a
//! conversation (and gets a token for it), posts its user's activities, and reads the conversation's
//! activities back: its own echoed and the bot's replies, by polling with a watermark or over a
//! stream. The shell keeps the conversation's activity log, the stream and the tokens
//! (`crate::session`); this trait is what is the dialect's: which request asks what, how activities
//! and answers are written, and what its CORS preflight allows.

use crate::error::ProxyError;
use crate::model::{ChatAnswer, ChatRequest};

/// What a request below a channel route's path prefix asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelOp<'p> {
    /// A browser's CORS preflight (any path).
    Preflight,
    /// A token for a new conversation (with the caller's secret).
    GenerateToken,
    /// A fresh token for the token's conversation (with a token).
    RefreshToken,
    /// Start a conversation (with a secret: a new one; with a token: the token's).
    Start,
    /// The conversation again, with a fresh stream address (a reconnect).
    Reconnect(&'p str),
    /// Post an activity to a conversation.
    Post(&'p str),
    /// The conversation's activities after a watermark.
    Read(&'p str),
    /// The conversation's activities as a stream (a WebSocket upgrade).
    Stream(&'p str),
}

/// A started conversation, as the caller is told about it.
#[derive(Debug, Clone, Copy)]
pub struct Started<'a> {
    pub conversation: &'a str,
    pub token: &'a str,
    pub expires_in: u64,
    /// The stream's address (absolute `ws://` or `wss://`), when the answer carries one.
    pub stream_url: Option<&'a str>,
}

/// What a caller's activity asks of the proxy.
#[derive(Debug)]
pub enum Posted<'a> {
    /// A message for the bot: the canonical request (its `metadata` is the activity's own channel
    /// data, passed on as is).
    Message(ChatRequest<'a>),
    /// Another activity (typing, an event): echoed to the conversation, never sent to a bot.
    Other,
}

/// Where an activity sits in its conversation: its id and when it was added.
#[derive(Debug, Clone, Copy)]
pub struct Stamp<'a> {
    pub conversation: &'a str,
    pub id: &'a str,
    /// RFC 3339, UTC.
    pub timestamp: &'a str,
}

/// A channel caller's verbs (see the module doc).
pub trait ChannelCaller: Sync {
    /// What `method` on `below` (the path after the route's prefix, without a leading `/`) asks;
    /// `None`: nothing (404).
    fn operation<'p>(&self, method: &str, below: &'p str) -> Option<ChannelOp<'p>>;
    /// The methods `below` takes (for a 405's `Allow`), `None` if it is no path of the API.
    fn methods(&self, below: &str) -> Option<&'static str>;
    /// The user a token request names (`{"user": {"id"}}`), if any; a body that is not such a
    /// request is refused.
    fn token_user(&self, body: &[u8]) -> Result<Option<String>, ProxyError>;
    /// The answer to a token request.
    fn render_token(&self, s: &Started<'_>) -> Vec<u8>;
    /// The answer to a start or a reconnect.
    fn render_started(&self, s: &Started<'_>) -> Vec<u8>;
    /// Reads a caller's activity; `user` is the user the caller's token was issued for, the one the
    /// activity must speak for (`None`: the activity names its user, else it is `default_user`).
    fn parse_activity<'b>(
        &self,
        body: &'b [u8],
        user: Option<&str>,
        default_user: Option<&str>,
    ) -> Result<Posted<'b>, ProxyError>;
    /// The id the caller gave its activity to recognise it again (a client retrying a post sends
    /// the same), if any: a post seen before is not sent to the bot twice.
    fn client_activity_id(&self, body: &[u8]) -> Option<String>;
    /// The caller's activity as the conversation keeps it (echoed with its channel data unchanged),
    /// with its id, conversation, time and user.
    fn echo(&self, body: &[u8], at: &Stamp<'_>, user: &str) -> Vec<u8>;
    /// The bot's answer as the conversation's activities replying to `reply_to`, one per reply, each
    /// stamped by `stamp(i)`; and how many replies had no rendering.
    fn replies(
        &self,
        answer: &ChatAnswer<'_>,
        reply_to: &str,
        bot_name: &str,
        stamp: &mut dyn FnMut(usize) -> (String, String),
    ) -> Vec<Vec<u8>>;
    /// The answer to a post: the activity's id.
    fn render_posted(&self, id: &str) -> Vec<u8>;
    /// A page of activities (a poll's answer, and each message on the stream).
    fn render_page(&self, activities: &[&[u8]], watermark: &str) -> Vec<u8>;
    /// A conversation's id as the log and the caller see it, from 16 random bytes.
    fn conversation_id(&self, random: [u8; 16]) -> String;
    /// An activity's id: the conversation's and its place in it.
    fn activity_id(&self, conversation: &str, seq: u64) -> String;
    /// The request headers a browser's preflight may ask for.
    fn allowed_headers(&self) -> &'static str;
    /// The path of a conversation's stream below the route's prefix.
    fn stream_path(&self, conversation: &str) -> String;
}

/// One request of a bot exchange through a conversation API: method, path below the backend's URL
/// path, JSON body (empty for none), and the bearer credential it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BotCall {
    pub method: &'static str,
    pub path: String,
    pub body: Vec<u8>,
    pub bearer: String,
}

/// A conversation with a channel bot, as the conversation store keeps it (its cursor, in JSON):
/// the conversation, its token and when that expires (unix seconds), and how far it was read.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BotSession {
    pub conversation: String,
    pub token: String,
    pub expires: u64,
    pub watermark: Option<String>,
}

/// A page read from a channel bot's conversation: the bot's replies to one activity (each an
/// activity's JSON) and the watermark after the page.
#[derive(Debug, Default)]
pub struct BotPage {
    pub replies: Vec<Vec<u8>>,
    pub watermark: Option<String>,
}

/// How long the replies to one message are waited for: read every `poll`, done once no new reply
/// came for `quiet` after the first, and at `deadline` at the latest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waits {
    pub poll: std::time::Duration,
    pub quiet: std::time::Duration,
    pub deadline: std::time::Duration,
}

/// A bot reached through a conversation API (a channel of its own): the proxy starts a conversation
/// per user, posts each message to it, and reads the replies back. The shell runs the calls (and
/// keeps the [`BotSession`] in the conversation store); the dialect writes and reads them. The
/// message posted is the bot's `render_request` body, and what the replies become is read by its
/// `parse_answer` from a JSON array of the reply activities.
pub trait ChannelBot: Sync + Send {
    /// Starts a conversation.
    fn start(&self) -> BotCall;
    /// The conversation an answer to [`ChannelBot::start`] started, at `now`.
    fn started(&self, status: u16, body: &[u8], now: u64) -> Result<BotSession, ProxyError>;
    /// Refreshes the conversation's token.
    fn refresh(&self, s: &BotSession) -> BotCall;
    /// The new token and its expiry, from an answer to [`ChannelBot::refresh`].
    fn refreshed(&self, status: u16, body: &[u8], now: u64) -> Result<(String, u64), ProxyError>;
    /// Posts the user's message (the rendered request).
    fn post(&self, s: &BotSession, activity: &[u8]) -> BotCall;
    /// The posted activity's id, from the answer.
    fn posted(&self, status: u16, body: &[u8]) -> Result<String, ProxyError>;
    /// Reads the conversation after its watermark.
    fn read(&self, s: &BotSession) -> BotCall;
    /// The replies to `reply_to` in a page read.
    fn page(&self, status: u16, body: &[u8], reply_to: &str) -> Result<BotPage, ProxyError>;
    /// Whether an answer with this status says the conversation is gone (expired, unknown), so a
    /// new one is started.
    fn gone(&self, status: u16) -> bool;
    /// How the replies are waited for.
    fn waits(&self) -> Waits;
}
