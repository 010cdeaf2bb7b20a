//! The vendor dialects behind one interface, and the registry that picks one by its config name.
//!
//! Every vendor is one file with the same verbs over the canonical model (`crate::model`):
//! - [`CallerDialect`], what a caller speaks: detect it, read its credential, parse its request,
//!   render an answer, render an error;
//! - [`BotDialect`], what a bot speaks: read its settings from its `[[backends]]` table into a
//!   configured [`Bot`], which renders a request, signs it, and parses the bot's answer.
//!
//! This file only declares the verbs and dispatches; no vendor's rule lives here. [`registry`] lists
//! the implementations: adding a vendor is one new file plus one line there. `bad_answer` words the
//! errors about a bot answer that cannot be used, for every bot dialect alike.

mod bad_answer;
pub mod channel;
pub mod csml;
pub mod csml_engine;
pub mod dialogflow;
pub mod directline;
pub mod haptik;
pub mod haptik_async;
pub mod hsl;
mod json_in;
mod json_out;
pub mod lex;
pub mod rasa;
pub mod registry;
mod reply_webhook;
mod strict_raw;

use std::fmt;
use std::time::SystemTime;

use crate::auth::{Denied, Presented};
use crate::config::ConfigError;
use crate::error::ProxyError;
use crate::model::{self, ChatAnswer, ChatRequest};

pub use crate::request::RequestHead;
pub use channel::{
    BotCall, BotPage, BotSession, ChannelBot, ChannelCaller, ChannelOp, Posted, Stamp, Started,
    Waits,
};
pub use haptik::{AnswerShape, FlowTriggerPolicy};
pub use registry::{bot_dialect, caller, callers, Caller};
pub use reply_webhook::{ReplyWebhook, WebhookRefusal, WebhookReply};

/// Deserializes a JSON body. UTF-8 is checked once for the whole body, so serde_json does not check
/// each string again (it does when reading bytes); a body that is not UTF-8 is left to serde_json,
/// whose error says where.
pub(crate) fn from_json<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> serde_json::Result<T> {
    match std::str::from_utf8(body) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(body),
    }
}

/// A path segment `%XX`-decoded (for ids vendors put in their paths); `None` if an escape is
/// malformed or the result is not UTF-8.
pub(crate) fn path_segment(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            let (h, l) = (hex(*b.get(i + 1)?)?, hex(*b.get(i + 2)?)?);
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// What a bot that takes text alone gets for a request: the text, a click's payload, a link's or a
/// medium's URL; a flow trigger as its flow id, or refused with 422 naming `bot` (`a Rasa bot`), as
/// the route's `flow` says.
pub(crate) fn text_for_bot<'a>(
    req: &'a ChatRequest<'_>,
    flow: FlowTriggerPolicy,
    bot: &str,
) -> Result<&'a str, ProxyError> {
    match &req.content {
        model::Content::Text(t) | model::Content::Payload(t) | model::Content::Url(t) => Ok(t),
        model::Content::Media { url, .. } => Ok(url),
        model::Content::FlowTrigger { flow_id, .. } => match flow {
            FlowTriggerPolicy::Text => Ok(flow_id),
            FlowTriggerPolicy::Reject => Err(ProxyError::new(
                422,
                crate::error::Reason::Untranslatable,
                format!("flow_trigger has no equivalent for this bot ({bot}); send a text message"),
            )),
        },
    }
}

/// Reads a JSON integer, also one written with a fraction or an exponent (`343.0`, `3.43e2`): JSON
/// has one number type, and JSON Schema's `integer` (the API documents in `docs/openapi/`) includes
/// them. Any other number is refused.
pub(crate) fn integer<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = i64;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an integer")
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<i64, E> {
            Ok(v)
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<i64, E> {
            i64::try_from(v)
                .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<i64, E> {
            integral(v, 2f64.powi(63))
                .map(|v| v as i64)
                .ok_or_else(|| E::invalid_type(serde::de::Unexpected::Float(v), &self))
        }
    }
    d.deserialize_any(V)
}

/// `v` when it is a whole number in `(-2^63, below)`. An integer literal beyond the 64-bit range
/// reaches a visitor as a float rounded to `±2^63` or `2^64` or further, so the bounds are open:
/// `-9223372036854775809` is refused, not read as `i64::MIN`. (Exact parsing, serde_json's
/// `float_roundtrip`, keeps `4186881670350958.0` from being read as `…958.5`.)
pub(crate) fn integral(v: f64, below: f64) -> Option<f64> {
    (v.fract() == 0.0 && v > -(2f64.powi(63)) && v < below).then_some(v)
}

/// How sure a dialect is that a request's headers are its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Detection {
    /// Nothing of this dialect.
    No,
    /// Could be this dialect (e.g. a bare bearer token several dialects use).
    Maybe,
    /// This dialect's own credential header.
    Yes,
}

/// The ids an answer may need, handed out by the shell on demand (so a dialect that needs none
/// costs nothing).
pub trait AnswerIds {
    /// Reserves `count` consecutive process-unique message ids; returns the first.
    fn message_ids(&self, count: u64) -> u64;
    /// A fresh id for this interaction.
    fn interaction_id(&self) -> String;
}

/// Fixed ids, for tests and the demo bots.
#[derive(Debug, Clone, Copy)]
pub struct FixedIds<'a>(pub u64, pub &'a str);

impl AnswerIds for FixedIds<'_> {
    fn message_ids(&self, _count: u64) -> u64 {
        self.0
    }
    fn interaction_id(&self) -> String {
        self.1.to_owned()
    }
}

/// Everything a dialect needs to render an answer, supplied by the shell.
#[derive(Clone, Copy)]
pub struct AnswerContext<'a> {
    /// Where message and interaction ids come from.
    pub ids: &'a dyn AnswerIds,
    /// When the request was received.
    pub received: SystemTime,
    /// The request id sent to the backend (a caller's own `request_id` wins).
    pub request_id: &'a str,
    /// The configured business name (Haptik).
    pub business_name: &'a str,
    /// The configured bot name (Haptik `claim_name`/`agent.name`; CSML `bot_id` for non-CSML bots).
    pub bot_name: &'a str,
    /// The route's name (a CSML `channel_id` when no business is known).
    pub route_name: &'a str,
    /// The business the request was addressed to.
    pub business_id: Option<i64>,
    /// The route's Haptik answer shape.
    pub shape: AnswerShape,
}

impl fmt::Debug for AnswerContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnswerContext")
            .field("request_id", &self.request_id)
            .field("route_name", &self.route_name)
            .finish_non_exhaustive()
    }
}

/// One configured caller credential, read from a `[[clients.<dialect>]]` table by its dialect.
#[derive(Debug)]
pub struct ClientEntry {
    /// The credential as the authenticator stores it.
    pub credential: crate::auth::ClientCredential,
    /// Whether it is a shipped demo credential (warned about at start), named for the warning.
    pub demo: Option<String>,
}

/// What a caller speaks. Implementations are unit structs listed in [`registry`].
pub trait CallerDialect: Sync + Send + 'static {
    /// The name in the config (`ingress = "…"`, `[[clients.<name>]]`) and in metric labels.
    fn name(&self) -> &'static str;
    /// Whether its requests name their own Haptik business (else the credential's or the route's
    /// is used).
    fn names_business(&self) -> bool {
        false
    }
    /// Whether `ingress = "auto"` includes this dialect. Dialects whose credentials another
    /// dialect's could be mistaken for stay out and are named explicitly instead.
    fn in_auto(&self) -> bool {
        true
    }
    /// How sure this dialect is, from the request head alone, that the caller speaks it.
    fn detect(&self, head: &dyn RequestHead) -> Detection;
    /// How a caller of this dialect shows its credential, for the error when no dialect could be
    /// told (`Haptik (Authorization: Bearer + client-id)`).
    fn credential_hint(&self) -> &'static str;
    /// Whether a body has this dialect's request shape (when no header told).
    fn detect_body(&self, body: &[u8]) -> bool;
    /// The credential the caller presented (authenticate, step one; the shell checks it).
    fn credential<'h>(&self, head: &'h dyn RequestHead) -> Result<Presented<'h>, Denied>;
    /// Reads a `[[clients.<name>]]` table's own credential keys into the credential of caller
    /// `name`; the keys every table shares (`name`, `business_id`, `routes`, `businesses`, rate
    /// limits) are read once by the shell and are not in `table`.
    fn client(&self, key: &str, name: &str, table: toml::Table)
        -> Result<ClientEntry, ConfigError>;
    /// Parses a caller's request: its path as sent (dialects that put ids there read them) and
    /// its body.
    fn parse_request<'b>(&self, path: &str, body: &'b [u8]) -> Result<ChatRequest<'b>, ProxyError>;
    /// Whether a bot's own message objects in this dialect's format should be kept for rendering
    /// verbatim (same-vendor fronting loses nothing).
    fn keeps_raw(&self) -> bool {
        false
    }
    /// Whether rendering `answer` passes the bot's own messages through verbatim, so nothing the
    /// canonical model cannot hold is lost (then dropped messages are not translation errors).
    fn passes_through(&self, _answer: &ChatAnswer<'_>, _shape: AnswerShape) -> bool {
        false
    }
    /// Renders the bot's answer for the caller.
    fn render_answer(
        &self,
        req: &ChatRequest<'_>,
        answer: &ChatAnswer<'_>,
        ctx: &AnswerContext<'_>,
    ) -> Vec<u8>;
    /// Renders an error the way this dialect's own servers do.
    fn render_error(&self, err: &ProxyError) -> Vec<u8>;
    /// The status this dialect's servers answer `err` with (most keep the proxy's).
    fn error_status(&self, err: &ProxyError) -> u16 {
        err.status
    }
    /// Headers this dialect's servers add to an error (e.g. Lex's `x-amzn-ErrorType`).
    fn error_headers(&self, _err: &ProxyError, _add: &mut dyn FnMut(&'static str, &str)) {}
    /// Its callers' OpenAPI document (`docs/openapi/<name>.json`), served by the admin listener.
    fn api_document(&self) -> &'static str;
    /// Its async mode (answered at once, the bot's answer delivered later), if it has one.
    fn async_caller(&self) -> Option<&dyn AsyncCaller> {
        None
    }
    /// Its channel verbs, for a dialect whose conversations the proxy holds (`channel`).
    fn channel(&self) -> Option<&dyn ChannelCaller> {
        None
    }
}

/// A caller dialect's async mode: which requests ask for it, what they are answered at once, and
/// how the bot's answer becomes the bodies POSTed to the caller's receiver. The shell checks the
/// receiver (the request's `callback_url`, else the credential's webhook), queues, signs and sends.
pub trait AsyncCaller: Sync {
    /// Whether requests to a route at `route_path` ask for async mode by the path alone (Haptik's
    /// Log Message API); a request with a `callback_url` always does.
    fn path_is_async(&self, _route_path: &str) -> bool {
        false
    }
    /// The refusal when the credential has no receiver for a request the path made async, in this
    /// dialect's words (else the generic one).
    fn not_enabled_message(&self) -> Option<&'static str> {
        None
    }
    /// The immediate answer. `empty` is this dialect's rendering of an answer with no replies;
    /// `message_id` a fresh id; `received` when the request came.
    fn ack(
        &self,
        req: &ChatRequest<'_>,
        empty: Vec<u8>,
        message_id: u64,
        received: SystemTime,
    ) -> Vec<u8>;
    /// The deliveries of an answer rendered in this dialect (HSL shape for Haptik), for a route
    /// whose business is shown as `business_name`.
    fn deliveries(
        &self,
        req: &ChatRequest<'_>,
        rendered: &[u8],
        business_name: &str,
    ) -> Vec<String>;
    /// The deliveries of a part of an answer, delivered while the bot is still answering (a
    /// channel bot's replies as they arrive): as [`AsyncCaller::deliveries`], without anything
    /// that closes the answer (which comes with its last part).
    fn partial_deliveries(
        &self,
        req: &ChatRequest<'_>,
        rendered: &[u8],
        business_name: &str,
    ) -> Vec<String> {
        self.deliveries(req, rendered, business_name)
    }
    /// The deliveries telling the receiver the bot failed, from `empty` (as for [`AsyncCaller::ack`]);
    /// `None`: nothing is delivered.
    fn failure_deliveries(&self, _empty: &[u8], _err: &ProxyError) -> Option<Vec<String>> {
        None
    }
}

/// What a route adds to a request for its backend.
#[derive(Debug, Clone, Copy)]
pub struct BotRequestContext<'a> {
    /// The request id to send.
    pub request_id: &'a str,
    /// The Haptik business to address (the caller's, its credential's, or the route's).
    pub business_id: Option<i64>,
    /// What to do with a flow trigger sent to a bot that has no such thing.
    pub flow_trigger: FlowTriggerPolicy,
}

/// A bot dialect: reads a backend's settings into a configured [`Bot`].
pub trait BotDialect: Sync + Send + 'static {
    /// The name in the config (`dialect = "…"`) and in metric labels.
    fn name(&self) -> &'static str;
    /// The `[[backends]]` keys this dialect reads (beyond the ones every backend has). A key of
    /// another dialect is refused by name.
    fn keys(&self) -> &'static [&'static str];
    /// Reads the dialect's settings (`key` names the table for errors).
    fn configure(&self, key: &str, settings: toml::Table) -> Result<Box<dyn Bot>, ConfigError>;
}

/// A request to a bot as its signature sees it: everything but the signature's own headers.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// When it is sent (unix seconds).
    pub unix_secs: u64,
    pub method: &'static str,
    /// The `Host` header.
    pub authority: &'a str,
    /// The path and query as sent (split by [`Outgoing::path`] and [`Outgoing::query`] only for a
    /// signature that needs them: most do not).
    pub target: &'a str,
    pub content_type: &'static str,
    pub body: &'a [u8],
    /// The bot's current access token, for a bot with a [`TokenSource`] (the shell fetches it).
    pub token: Option<&'a str>,
}

impl Outgoing<'_> {
    /// The path, without the query.
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(self.target, |(p, _)| p)
    }
    /// The query, if any.
    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
    }
}

/// A credential a bot's requests need that is obtained over the network: an OAuth2 access token
/// minted at a token endpoint. The dialect says what to send and how to read the answer; the shell
/// fetches it, keeps it until shortly before it expires, refreshes it ahead of time (one fetch at a
/// time) and backs off after a failure.
pub trait TokenSource: Send + Sync + fmt::Debug {
    /// The token endpoint (`http(s)://…`).
    fn token_url(&self) -> &str;
    /// The `application/x-www-form-urlencoded` body to POST there at `unix_secs`.
    fn token_request(&self, unix_secs: u64) -> Vec<u8>;
    /// The endpoint's answer: the token and its lifetime in seconds, or why it is not one (fixed
    /// words: the endpoint's body is never repeated).
    fn parse_token(&self, status: u16, body: &[u8]) -> Result<(String, u64), &'static str>;
}

/// One conversation of a user with a stateful bot, as the shell keeps it per (backend, user): the
/// vendor's session or conversation id, and where the user has read up to (a cursor), if the vendor
/// has one.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Conversation {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// What an answer does to the conversation it was given in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterAnswer {
    /// Nothing changes.
    Keep,
    /// The conversation goes on with this record (a new cursor).
    Update(Conversation),
    /// The bot ended it: the user's next message starts this new one.
    Restart(Conversation),
}

/// The conversation rules of a bot that keeps state per user under an id of its own (a session in
/// the path). The dialect says what a conversation is; the shell keeps them (in memory with a TTL
/// and a bound, or on Redis for every instance) and hands the current one to [`Bot::target`].
pub trait Conversations: Send + Sync + fmt::Debug {
    /// The conversation of a user the store keeps none for: derived from the user id alone, so
    /// every instance agrees on it without asking anyone.
    fn first(&self, user: &str) -> Conversation;
    /// A fresh conversation, from 16 random bytes the shell draws.
    fn fresh(&self, random: [u8; 16]) -> Conversation;
    /// What `answer`, given in `current`, does to it: by default, a conversation the bot ended is
    /// followed by a fresh one.
    fn after(
        &self,
        _current: &Conversation,
        answer: &ChatAnswer<'_>,
        random: [u8; 16],
    ) -> AfterAnswer {
        match answer.conversation_end {
            Some(true) => AfterAnswer::Restart(self.fresh(random)),
            _ => AfterAnswer::Keep,
        }
    }
}

/// The conversations of a bot with one session per user in its paths: the first is the session the
/// dialect derives from the user id (the function held), and once the bot ends one, the next is a
/// fresh `bb-` and 32 hex digits (35 characters, which every such vendor takes).
#[derive(Debug)]
pub(crate) struct SessionPerUser(pub(crate) fn(&str) -> std::borrow::Cow<'_, str>);

impl Conversations for SessionPerUser {
    fn first(&self, user: &str) -> Conversation {
        Conversation {
            id: (self.0)(user).into_owned(),
            cursor: None,
        }
    }

    fn fresh(&self, random: [u8; 16]) -> Conversation {
        Conversation {
            id: format!("bb-{}", hex::encode(random)),
            cursor: None,
        }
    }
}

/// A configured backend's dialect part: its credentials and parameters.
pub trait Bot: Send + Sync + fmt::Debug {
    /// The dialect's name (metric label).
    fn dialect(&self) -> &'static str;
    /// Whether requests need a Haptik-style business id (checked when routes are loaded).
    fn needs_business(&self) -> bool {
        false
    }
    /// For a bot that answers on a webhook of the proxy's instead of in its HTTP answer: that
    /// webhook. `None` for most.
    fn async_replies(&self) -> Option<&dyn ReplyWebhook> {
        None
    }
    /// A query parameter added to the configured URL (e.g. a bot's `?token=`); `None` for most.
    fn query_param(&self) -> Option<(&'static str, &str)> {
        None
    }
    /// The path this request goes to below the configured URL's path, for a bot that puts ids in
    /// its paths (a session), in conversation `conv` for a bot with [`Bot::conversations`]; `None`:
    /// the configured URL as it is.
    fn target(&self, _req: &ChatRequest<'_>, _conv: Option<&Conversation>) -> Option<String> {
        None
    }
    /// The conversation rules of a bot that keeps state per user; `None` for stateless bots.
    fn conversations(&self) -> Option<&dyn Conversations> {
        None
    }
    /// Where its access tokens come from, for a bot that needs one (Dialogflow's OAuth2 tokens).
    fn token_source(&self) -> Option<&dyn TokenSource> {
        None
    }
    /// For a bot reached through a conversation API (a channel of its own): its calls. Such a
    /// bot's [`Bot::conversations`] keep a [`BotSession`] as their cursor.
    fn channel(&self) -> Option<&dyn ChannelBot> {
        None
    }
    /// Renders the request body for the bot, or a 4xx when it cannot be expressed there.
    fn render_request(
        &self,
        req: &ChatRequest<'_>,
        ctx: &BotRequestContext<'_>,
    ) -> Result<Vec<u8>, ProxyError>;
    /// Hands `add` the headers that authenticate the proxy to the bot, for the request `out` (a
    /// signature may cover all of it: AWS SigV4).
    fn sign(&self, out: &Outgoing<'_>, add: &mut dyn FnMut(&'static str, &str));
    /// Parses the bot's answer (any status). With `keep_raw`, a bot of the caller's own vendor
    /// keeps its message objects for a verbatim rendering.
    fn parse_answer<'b>(
        &self,
        status: u16,
        body: &'b [u8],
        keep_raw: bool,
    ) -> Result<ChatAnswer<'b>, ProxyError>;
}

/// Reads a dialect's settings table into its own type, refusing unknown keys with the key named.
pub fn settings<T: serde::de::DeserializeOwned>(
    key: &str,
    settings: toml::Table,
) -> Result<T, ConfigError> {
    let de = toml::Value::Table(settings);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." {
            key.to_string()
        } else {
            format!("{key}.{path}")
        };
        ConfigError::new(at, e.into_inner().to_string())
    })
}

/// Renders an error for a caller whose dialect is unknown: readable as either of the first two
/// dialects' shapes (`error_message` for Haptik clients, `statusCode`/`error`/`message` for CSML
/// clients).
pub fn render_error_for_either(err: &ProxyError) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "error_message": err.message,
        "statusCode": err.status,
        "error": crate::error::status_phrase(err.status),
        "message": err.message,
    }))
    .expect("error serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_decode_strictly() {
        assert_eq!(path_segment("user%3A1.a").as_deref(), Some("user:1.a"));
        assert_eq!(path_segment("caf%C3%A9").as_deref(), Some("café"));
        for bad in ["%+f", "%4", "%zz", "%FF"] {
            assert_eq!(path_segment(bad), None, "{bad}");
        }
    }

    #[test]
    fn either_error_is_readable_by_both() {
        let v: serde_json::Value =
            serde_json::from_slice(&render_error_for_either(&ProxyError::bad_request("x")))
                .unwrap();
        assert_eq!(v["error_message"], "x");
        assert_eq!(v["message"], "x");
        assert_eq!(v["statusCode"], 400);
    }
}
