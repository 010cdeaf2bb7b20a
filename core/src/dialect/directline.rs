//! Microsoft Bot Framework's Direct Line 3.0, both ways: the wire format as pure functions over
//! bytes and the canonical model. As a caller dialect it is a channel ([`ChannelCaller`]): the
//! conversations, their activity logs, the tokens and the WebSocket stream are the shell's; the
//! paths, the JSON and the errors are here.
//!
//! Field names are those of the Bot Framework Activity schema (`botframework-schema`) and Direct
//! Line 3.0's REST reference; the wire facts that trip clients up are in the vendor notes:
//! - A caller's activity: `{"type": "message", "from": {"id", "name"?}, "text"?, "value"?,
//!   "channelData"?, …}`. A button click arrives as the text of an `imBack`, or as the `value` of a
//!   `postBack` (a string, or any JSON, kept as its JSON text). `channelData` is echoed unchanged
//!   (Web Chat marks a message sent only when its echo carries the same `clientActivityID`).
//! - The bot's activities: `{"type": "message", "from": {"id", "role": "bot"}, "replyToId", "text"?,
//!   "attachments"?: [{"contentType", "content"?, "contentUrl"?}], "suggestedActions"?: {"actions"}}`.
//!   A question is a HeroCard (`application/vnd.microsoft.card.hero`) with `imBack` buttons (or
//!   `postBack` when the payload differs from the title); media are attachments with a
//!   `contentUrl`; a link is its text.
//! - Conversation tokens (`crate::session`): bound to one conversation and user, 1,800 s, signed
//!   with a key derived from the caller's secret, so another instance verifies them without shared
//!   state.
//! - Errors: `{"error": {"code", "message"}}` with Direct Line's codes ([`error_code`]).

use std::borrow::Cow;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub use super::channel::Posted;
pub use crate::session::{TokenError, TokenGrant, TokenKey};

use super::channel::{
    BotCall, BotPage, BotSession, ChannelBot, ChannelCaller, ChannelOp, Stamp, Started, Waits,
};
use super::{
    settings, text_for_bot, AfterAnswer, Bot, BotDialect, BotRequestContext, CallerDialect,
    ClientEntry, Conversation, Conversations, Detection, Outgoing, RequestHead,
};
use crate::auth::{token_digest, ClientCredential, Denied, Grant, Presented, TokenPresented};
use crate::config::{ConfigError, SecretSource};
use crate::dialect::from_json;
use crate::error::{ProxyError, Reason};
use crate::model::{Button, ChatAnswer, ChatRequest, Content, MediaKind, Reply};
use crate::session::ChannelGrant;

/// How long a conversation token lasts when a bot's Direct Line does not say.
const TOKEN_LIFETIME_SECS: u64 = 1_800;

/// The dialect's name.
pub const NAME: &str = "directline";

/// A HeroCard's content type.
pub const HERO_CARD: &str = "application/vnd.microsoft.card.hero";
/// An Adaptive Card's content type.
pub const ADAPTIVE_CARD: &str = "application/vnd.microsoft.card.adaptive";

// ---------------------------------------------------------------------------------------------
// Caller side: a Direct Line client posts an activity

#[derive(Deserialize)]
struct From<'a> {
    #[serde(borrow, default)]
    id: Cow<'a, str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ActivityIn<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    from: Option<From<'a>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    value: Option<&'a RawValue>,
    #[serde(borrow, default)]
    channel_data: Option<&'a RawValue>,
}

/// Reads a caller's activity. `conversation_user` is the user the caller's token was issued for:
/// the activity speaks as that user whatever it names, so one conversation's token cannot speak
/// for someone else. Without one, an activity speaks as the user it names, else as `default_user`
/// (refused if there is none).
pub fn parse_activity<'a>(
    body: &'a [u8],
    conversation_user: Option<&str>,
    default_user: Option<&str>,
) -> Result<Posted<'a>, ProxyError> {
    let a: ActivityIn<'a> =
        from_json(body).map_err(|_| bad_argument("the body is not an activity"))?;
    if a.kind != "message" {
        return Ok(Posted::Other);
    }
    let user: Cow<'a, str> = match (
        a.from.map(|f| f.id).filter(|i| !i.is_empty()),
        conversation_user,
    ) {
        // A token's user speaks, whatever the activity names (Direct Line's own rule for tokens
        // issued for a user: Web Chat names a user of its own).
        (_, Some(owner)) => Cow::Owned(owner.to_owned()),
        (Some(id), None) => id,
        _ => match default_user {
            Some(d) => Cow::Owned(d.to_owned()),
            None => return Err(bad_argument("the activity has no from.id")),
        },
    };
    // A blank value is no value (nothing blank reaches a bot).
    let value = a.value.map(button_value).filter(|v| !v.trim().is_empty());
    let content = match (value, a.text) {
        (Some(v), _) => Content::Payload(v),
        (None, Some(t)) if !t.trim().is_empty() => Content::Text(t),
        _ => return Err(bad_argument("a message activity needs text or a value")),
    };
    Ok(Posted::Message(ChatRequest {
        user_id: user,
        content,
        business_id: None,
        message_type: 0,
        request_id: None,
        // Bots take metadata as an object; other channel data is only echoed.
        metadata: a.channel_data.filter(|d| d.get().starts_with('{')),
        raw_payload: None,
        callback_url: None,
    }))
}

/// A `postBack` button's value: a string as itself, anything else as its JSON text.
fn button_value(v: &RawValue) -> Cow<'_, str> {
    match serde_json::from_str::<Cow<'_, str>>(v.get()) {
        Ok(s) => s,
        Err(_) => Cow::Borrowed(v.get()),
    }
}

fn bad_argument(message: &'static str) -> ProxyError {
    ProxyError::bad_request(message)
}

// ---------------------------------------------------------------------------------------------
// The bot's replies as activities (to a Direct Line caller), and back (from a Direct Line bot)

/// A button as Direct Line sends it: `imBack` (the title is what the user "says") unless the
/// payload differs from the title, then `postBack` with the payload as its value.
fn card_action(b: &Button<'_>) -> Value {
    match b.payload.as_deref() {
        Some(p) if p != b.title => json!({"type": "postBack", "title": b.title, "value": p}),
        _ => json!({"type": "imBack", "title": b.title, "value": b.title}),
    }
}

/// The content type of a media attachment: a generic one per kind (Web Chat picks its renderer
/// from the type's first part).
fn media_type(kind: MediaKind) -> &'static str {
    match kind {
        MediaKind::Image => "image/*",
        MediaKind::Video => "video/*",
        MediaKind::Audio => "audio/*",
        MediaKind::File => "application/octet-stream",
    }
}

/// The bot's replies as message activities (without `id`, `timestamp`, `conversation` or `from`,
/// which the conversation adds): a text each; a question as a HeroCard with its buttons; a lone
/// button as a HeroCard of one button; media as attachments; a link as its text.
pub fn reply_activities(answer: &ChatAnswer<'_>, reply_to: &str) -> Vec<Value> {
    let message = |mut v: Value| {
        v["type"] = json!("message");
        v["replyToId"] = json!(reply_to);
        v
    };
    let hero = |text: &str, buttons: Vec<Value>| {
        json!({"attachments": [{"contentType": HERO_CARD,
                                "content": {"text": text, "buttons": buttons}}]})
    };
    (answer.replies.iter())
        .map(|r| match r {
            Reply::Text(t) => message(json!({"text": t})),
            Reply::Question { title, buttons } => {
                message(hero(title, buttons.iter().map(card_action).collect()))
            }
            Reply::Button(b) => message(hero("", vec![card_action(b)])),
            Reply::Url { url, text, title } => {
                let label = text.as_deref().or(title.as_deref());
                let t = label.map_or_else(|| url.to_string(), |l| format!("{l}\n{url}"));
                message(json!({"text": t}))
            }
            Reply::Media { kind, url } => message(json!({"attachments": [
                {"contentType": media_type(*kind), "contentUrl": url}]})),
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BotActivityIn<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    reply_to_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    attachments: Vec<AttachmentIn<'a>>,
    #[serde(borrow, default)]
    suggested_actions: Option<SuggestedIn<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AttachmentIn<'a> {
    #[serde(borrow)]
    content_type: Cow<'a, str>,
    #[serde(borrow, default)]
    content_url: Option<Cow<'a, str>>,
    #[serde(default)]
    content: Option<Value>,
}

#[derive(Deserialize)]
struct SuggestedIn<'a> {
    #[serde(borrow, default)]
    actions: Vec<ActionIn<'a>>,
}

#[derive(Deserialize)]
struct ActionIn<'a> {
    #[serde(borrow, default)]
    title: Option<Cow<'a, str>>,
    #[serde(default)]
    value: Option<Value>,
}

/// The bot's replies to activity `reply_to`, from a page of activities (`GET activities`'s
/// `activities`): message activities with that `replyToId`, in order. A text is a text, and with
/// suggested actions a question with those buttons; a HeroCard is a question (its text or title,
/// its buttons); an attachment with a `contentUrl` is media of its type; an Adaptive Card gives its
/// `TextBlock`s' text; anything else is dropped and counted.
pub fn replies_to(activities: &[u8], reply_to: &str) -> Result<ChatAnswer<'static>, ProxyError> {
    let list: Vec<BotActivityIn<'_>> = from_json(activities).map_err(|_| {
        ProxyError::new(
            502,
            Reason::BackendBadAnswer,
            "the bot's activities could not be read",
        )
    })?;
    let mut answer = ChatAnswer::default();
    for a in list.into_iter().filter(|a| a.kind == "message") {
        if a.reply_to_id.as_deref() != Some(reply_to) {
            continue;
        }
        activity_replies(a, &mut answer);
    }
    Ok(answer)
}

/// The replies in a list of the bot's activities (all of them: the shell collected those that
/// reply to the user's message).
pub fn replies_in(activities: &[u8]) -> Result<ChatAnswer<'static>, ProxyError> {
    let list: Vec<BotActivityIn<'_>> = from_json(activities).map_err(|_| {
        ProxyError::new(
            502,
            Reason::BackendBadAnswer,
            "the bot's activities could not be read",
        )
    })?;
    let mut answer = ChatAnswer::default();
    for a in list.into_iter().filter(|a| a.kind == "message") {
        activity_replies(a, &mut answer);
    }
    Ok(answer)
}

fn activity_replies(a: BotActivityIn<'_>, answer: &mut ChatAnswer<'static>) {
    let owned = |c: Cow<'_, str>| Cow::Owned(c.into_owned());
    // Suggested actions none of which reads as a button (no title, no value) leave a plain text.
    let buttons: Vec<Button<'static>> = (a.suggested_actions.map(|s| s.actions))
        .unwrap_or_default()
        .iter()
        .filter_map(button_of)
        .collect();
    match (a.text.filter(|t| !t.is_empty()), buttons.is_empty()) {
        (Some(t), true) => answer.replies.push(Reply::Text(owned(t))),
        (t, false) => answer.replies.push(Reply::Question {
            title: t.map_or(Cow::Borrowed(""), owned),
            buttons,
        }),
        (None, true) => {}
    }
    for at in a.attachments {
        match attachment_reply(at) {
            Some(r) => answer.replies.push(r),
            None => answer.dropped += 1,
        }
    }
}

/// A card action as a button: its title, and its value as the payload when it differs.
fn button_of(a: &ActionIn<'_>) -> Option<Button<'static>> {
    let value = a.value.as_ref().map(|v| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    });
    let title = a.title.as_deref().map(str::to_owned).or(value.clone())?;
    let payload = value.filter(|v| *v != title);
    Some(Button {
        title: Cow::Owned(title),
        payload: payload.map(Cow::Owned),
    })
}

fn attachment_reply(at: AttachmentIn<'_>) -> Option<Reply<'static>> {
    if let Some(url) = at.content_url {
        let kind = match at.content_type.split('/').next() {
            Some("image") => MediaKind::Image,
            Some("video") => MediaKind::Video,
            Some("audio") => MediaKind::Audio,
            _ => MediaKind::File,
        };
        return Some(Reply::Media {
            kind,
            url: Cow::Owned(url.into_owned()),
        });
    }
    let content = at.content?;
    match &*at.content_type {
        HERO_CARD | "application/vnd.microsoft.card.thumbnail" => {
            let text = ["text", "title", "subtitle"].iter().find_map(|k| {
                content
                    .get(k)
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
            });
            let actions: Vec<ActionIn<'_>> = content
                .get("buttons")
                .and_then(|b| Vec::<ActionIn<'_>>::deserialize(b).ok())
                .unwrap_or_default();
            let buttons: Vec<Button<'static>> = actions.iter().filter_map(button_of).collect();
            let text: Cow<'static, str> = Cow::Owned(text.unwrap_or_default().to_owned());
            // A card without buttons is its text; one with neither is nothing (dropped, counted).
            match (buttons.is_empty(), text.is_empty()) {
                (false, _) => Some(Reply::Question {
                    title: text,
                    buttons,
                }),
                (true, false) => Some(Reply::Text(text)),
                (true, true) => None,
            }
        }
        ADAPTIVE_CARD => {
            let mut texts = Vec::new();
            adaptive_texts(&content, &mut texts);
            (!texts.is_empty()).then(|| Reply::Text(Cow::Owned(texts.join("\n"))))
        }
        _ => None,
    }
}

/// The text of every `TextBlock` in an Adaptive Card, in document order.
fn adaptive_texts(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            if o.get("type").and_then(Value::as_str) == Some("TextBlock") {
                if let Some(t) = o
                    .get("text")
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                {
                    out.push(t.to_owned());
                }
            }
            o.values().for_each(|c| adaptive_texts(c, out));
        }
        Value::Array(a) => a.iter().for_each(|c| adaptive_texts(c, out)),
        _ => {}
    }
}

/// The user's message as the activity posted to a Direct Line bot: a text, or a button's payload
/// as both `text` and `value` (a bot reads either), with the caller's metadata as `channelData`.
pub fn user_activity(req: &ChatRequest<'_>, text: &str) -> Value {
    let mut a = json!({"type": "message", "from": {"id": req.user_id, "role": "user"},
                       "text": text});
    if matches!(req.content, Content::Payload(_)) {
        a["value"] = json!(text);
    }
    if let Some(m) = req.metadata {
        if let Ok(v) = serde_json::from_str::<Value>(m.get()) {
            a["channelData"] = v;
        }
    }
    a
}

// ---------------------------------------------------------------------------------------------
// Errors

/// Direct Line's error code for a status: 400 `BadArgument`, 401 `Unauthorized`, 403 `Forbidden`
/// (`TokenExpired` is chosen by the caller of [`render_error_code`]), 404 `NotFound`, 429
/// `TooManyRequests`, 502 `BotRejectedActivity`, 503 `ServiceUnavailable`, 504 `BotTimeout`, else
/// `ServiceError`.
pub fn error_code(status: u16) -> &'static str {
    match status {
        400 | 405 | 413 | 415 | 422 => "BadArgument",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        429 => "TooManyRequests",
        502 => "BotRejectedActivity",
        503 => "ServiceUnavailable",
        504 => "BotTimeout",
        _ => "ServiceError",
    }
}

/// `{"error": {"code", "message"}}` with the code of the error's status (`TokenExpired` for an
/// expired token).
pub fn render_error(err: &ProxyError) -> Vec<u8> {
    let code = match err.reason {
        Reason::TokenExpired => "TokenExpired",
        _ => error_code(err.status),
    };
    render_error_code(code, &err.message)
}

/// `{"error": {"code", "message"}}` with this code.
pub fn render_error_code(code: &str, message: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"error": {"code": code, "message": message}}))
        .expect("an error serializes")
}

// ---------------------------------------------------------------------------------------------
// The caller dialect: a channel

/// Direct Line 3.0 callers (`ingress = "directline"`, `[[clients.directline]]`).
pub struct Directline;

/// `[[clients.directline]]`: one Direct Line caller, by its secret (or the secret's SHA-256 with a
/// `token_secret` of its own).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientConfig {
    secret: Option<SecretSource>,
    secret_sha256: Option<SecretSource>,
    /// What its conversation tokens are signed with (default: the secret itself; required with
    /// `secret_sha256`, whose digest alone must not be enough to mint tokens).
    token_secret: Option<SecretSource>,
    /// Browser origins that may use the secret or its tokens (`*`: any).
    #[serde(default)]
    allowed_origins: Vec<String>,
}

/// The shortest secret taken: tokens are HMACs of it, which a short one would not protect.
const MIN_SECRET_LEN: usize = 16;

/// The secret as `Authorization: Bearer` presents it, and as it is stored: its SHA-256, looked up
/// by [`token_digest`] of that (so `secret` and `secret_sha256` give the same credential).
fn secret_digest(sha: &[u8; 32]) -> [u8; 32] {
    token_digest(NAME, sha)
}

/// The bearer value of `Authorization` (the scheme in any case).
pub fn bearer(authorization: Option<&[u8]>) -> Option<&[u8]> {
    let v = authorization?.trim_ascii();
    (v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ")).then(|| v[7..].trim_ascii())
}

/// Whether a bearer value has the shape of a conversation token (`claims.tag`) rather than a
/// secret (Direct Line secrets have no dot).
pub fn is_token(bearer: &[u8]) -> bool {
    bearer.contains(&b'.')
}

fn check_origin(key: &str, o: &str) -> Result<(), ConfigError> {
    let rest = o
        .strip_prefix("https://")
        .or_else(|| o.strip_prefix("http://"));
    let ok = o == "*" || rest.is_some_and(|r| !r.is_empty() && !r.contains(['/', '?', '#', ' ']));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            format!("{key}.allowed_origins"),
            format!("`{o}` is not an origin: give `https://host[:port]` (no path), or `*`"),
        ))
    }
}

impl CallerDialect for Directline {
    fn name(&self) -> &'static str {
        NAME
    }

    /// A bare bearer token, as several dialects' callers send: named explicitly on a route.
    fn in_auto(&self) -> bool {
        false
    }

    fn detect(&self, _head: &dyn RequestHead) -> Detection {
        Detection::No
    }

    fn credential_hint(&self) -> &'static str {
        "Direct Line (Authorization: Bearer <secret or token>)"
    }

    fn detect_body(&self, _body: &[u8]) -> bool {
        false
    }

    /// A secret: presented as its SHA-256, looked up by [`secret_digest`]. (Conversation tokens
    /// are checked by the shell with the key their claims point at.)
    fn credential<'h>(&self, head: &'h dyn RequestHead) -> Result<Presented<'h>, Denied> {
        let secret = bearer(head.header("authorization")).filter(|b| !b.is_empty());
        let secret = secret.ok_or_else(|| {
            Denied::new(
                crate::auth::AuthReason::Missing,
                "missing Authorization: Bearer <secret or token>",
            )
        })?;
        let sha: [u8; 32] = Sha256::digest(secret).into();
        Ok(Presented::Token(TokenPresented {
            dialect: NAME,
            token: Cow::Owned(sha.to_vec()),
        }))
    }

    fn client(
        &self,
        key: &str,
        name: &str,
        table: toml::Table,
    ) -> Result<ClientEntry, ConfigError> {
        let c: ClientConfig = settings(key, table)?;
        let mut demo = None;
        let strong = |k: &str, s: &str| {
            if s.len() < MIN_SECRET_LEN
                || s.contains('.')
                || !s.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(ConfigError::new(
                    format!("{key}.{k}"),
                    format!("must be at least {MIN_SECRET_LEN} visible characters, without `.` (tokens have dots)"),
                ));
            }
            Ok(())
        };
        let token_secret = match &c.token_secret {
            Some(t) => {
                let t = t.resolve(&format!("{key}.token_secret"))?;
                strong("token_secret", &t)?;
                Some(t)
            }
            None => None,
        };
        let (sha, signing): ([u8; 32], String) = match (&c.secret, &c.secret_sha256) {
            (Some(s), None) => {
                let secret = s.resolve(&format!("{key}.secret"))?;
                strong("secret", &secret)?;
                if secret == "demo-directline-secret" {
                    demo = Some(format!("directline secret of {name}"));
                }
                let sha = Sha256::digest(secret.as_bytes()).into();
                (sha, token_secret.unwrap_or(secret))
            }
            (None, Some(h)) => {
                let k = format!("{key}.secret_sha256");
                let mut digest = [0u8; 32];
                hex::decode_to_slice(h.resolve(&k)?.trim(), &mut digest).map_err(|_| {
                    ConfigError::new(&k, "must be 64 hex digits (a SHA-256 digest)")
                })?;
                let signing = token_secret.ok_or_else(|| {
                    ConfigError::new(
                        format!("{key}.token_secret"),
                        "required with `secret_sha256`: the key conversation tokens are signed with",
                    )
                })?;
                (digest, signing)
            }
            _ => {
                return Err(ConfigError::new(
                    key,
                    "give exactly one of `secret` or `secret_sha256`",
                ))
            }
        };
        for o in &c.allowed_origins {
            check_origin(key, o)?;
        }
        let grant = Grant {
            channel: Some(std::sync::Arc::new(ChannelGrant {
                key: TokenKey::new(signing.as_bytes()),
                allowed_origins: c.allowed_origins,
            })),
            ..Grant::named(name)
        };
        Ok(ClientEntry {
            credential: ClientCredential::Token {
                digest: secret_digest(&sha),
                grant,
            },
            demo,
        })
    }

    /// Not used: a Direct Line caller's requests go through its conversations ([`ChannelCaller`]).
    fn parse_request<'b>(
        &self,
        _path: &str,
        _body: &'b [u8],
    ) -> Result<ChatRequest<'b>, ProxyError> {
        Err(ProxyError::new(
            404,
            Reason::NotFound,
            "not a Direct Line path",
        ))
    }

    /// The replies as activities (a conversation stamps them; see [`ChannelCaller::replies`]).
    fn render_answer(
        &self,
        req: &ChatRequest<'_>,
        answer: &ChatAnswer<'_>,
        _ctx: &super::AnswerContext<'_>,
    ) -> Vec<u8> {
        let _ = req;
        serde_json::to_vec(&reply_activities(answer, "")).expect("activities serialize")
    }

    fn render_error(&self, err: &ProxyError) -> Vec<u8> {
        render_error(err)
    }

    fn api_document(&self) -> &'static str {
        include_str!("../../../docs/openapi/directline.json")
    }

    fn channel(&self) -> Option<&dyn ChannelCaller> {
        Some(self)
    }
}

/// `{"user": {"id"}}` of a token request.
#[derive(Deserialize)]
struct TokenRequest<'a> {
    #[serde(borrow)]
    user: Option<From<'a>>,
}

/// The conversation and the caller's token, as `tokens/*` and `conversations` answer them.
fn started_json(s: &Started<'_>) -> Value {
    let mut v = json!({"conversationId": s.conversation, "token": s.token,
                       "expires_in": s.expires_in});
    if let Some(u) = s.stream_url {
        v["streamUrl"] = json!(u);
    }
    v
}

impl ChannelCaller for Directline {
    fn operation<'p>(&self, method: &str, below: &'p str) -> Option<ChannelOp<'p>> {
        if method == "OPTIONS" {
            return Some(ChannelOp::Preflight);
        }
        let parts: Vec<&'p str> = below.trim_end_matches('/').split('/').collect();
        let id = |s: &'p str| (!s.is_empty()).then_some(s);
        match (method, parts.as_slice()) {
            ("POST", ["tokens", "generate"]) => Some(ChannelOp::GenerateToken),
            ("POST", ["tokens", "refresh"]) => Some(ChannelOp::RefreshToken),
            ("POST", ["conversations"]) => Some(ChannelOp::Start),
            ("GET", ["conversations", c]) => id(c).map(ChannelOp::Reconnect),
            ("POST", ["conversations", c, "activities"]) => id(c).map(ChannelOp::Post),
            ("GET", ["conversations", c, "activities"]) => id(c).map(ChannelOp::Read),
            ("GET", ["conversations", c, "stream"]) => id(c).map(ChannelOp::Stream),
            _ => None,
        }
    }

    fn methods(&self, below: &str) -> Option<&'static str> {
        let parts: Vec<&str> = below.trim_end_matches('/').split('/').collect();
        match parts.as_slice() {
            ["tokens", "generate" | "refresh"] | ["conversations"] => Some("POST, OPTIONS"),
            ["conversations", c] if !c.is_empty() => Some("GET, OPTIONS"),
            ["conversations", c, "activities"] if !c.is_empty() => Some("GET, POST, OPTIONS"),
            ["conversations", c, "stream"] if !c.is_empty() => Some("GET, OPTIONS"),
            _ => None,
        }
    }

    fn token_user(&self, body: &[u8]) -> Result<Option<String>, ProxyError> {
        if body.trim_ascii().is_empty() {
            return Ok(None);
        }
        let r: TokenRequest<'_> = from_json(body)
            .map_err(|_| bad_argument("the body is not a token request ({\"user\": {\"id\"}})"))?;
        Ok(r.user.map(|u| u.id.into_owned()).filter(|u| !u.is_empty()))
    }

    fn render_token(&self, s: &Started<'_>) -> Vec<u8> {
        let s = Started {
            stream_url: None,
            ..*s
        };
        serde_json::to_vec(&started_json(&s)).expect("JSON serializes")
    }

    fn render_started(&self, s: &Started<'_>) -> Vec<u8> {
        serde_json::to_vec(&started_json(s)).expect("JSON serializes")
    }

    fn parse_activity<'b>(
        &self,
        body: &'b [u8],
        user: Option<&str>,
        default_user: Option<&str>,
    ) -> Result<Posted<'b>, ProxyError> {
        parse_activity(body, user, default_user)
    }

    /// `channelData.clientActivityID` (Web Chat's and DirectLineJS's), 1 to 128 characters.
    fn client_activity_id(&self, body: &[u8]) -> Option<String> {
        #[derive(Deserialize)]
        struct Data<'a> {
            #[serde(borrow, rename = "clientActivityID")]
            id: Option<Cow<'a, str>>,
        }
        #[derive(Deserialize)]
        struct Activity<'a> {
            #[serde(borrow, rename = "channelData")]
            data: Option<Data<'a>>,
        }
        let a: Activity<'_> = from_json(body).ok()?;
        let id = a.data?.id?;
        (!id.is_empty() && id.len() <= 128).then(|| id.into_owned())
    }

    /// The caller's activity as kept: only the fields a client reads back (a caller cannot make
    /// the conversation keep anything else), its user and its place stamped.
    fn echo(&self, body: &[u8], at: &Stamp<'_>, user: &str) -> Vec<u8> {
        const KEPT: [&str; 8] = [
            "type",
            "text",
            "value",
            "channelData",
            "locale",
            "textFormat",
            "name",
            "attachments",
        ];
        let a: Value = serde_json::from_slice(body).unwrap_or_else(|_| json!({}));
        let mut kept = serde_json::Map::new();
        for k in KEPT {
            if let Some(v) = a.get(k).filter(|v| !v.is_null()) {
                kept.insert(k.to_owned(), v.clone());
            }
        }
        let name = a.pointer("/from/name").filter(|n| n.is_string()).cloned();
        let mut kept = Value::Object(kept);
        kept["from"] = json!({"id": user, "role": "user"});
        if let Some(n) = name {
            kept["from"]["name"] = n;
        }
        stamp(&mut kept, at);
        serde_json::to_vec(&kept).expect("JSON serializes")
    }

    fn replies(
        &self,
        answer: &ChatAnswer<'_>,
        reply_to: &str,
        bot_name: &str,
        next: &mut dyn FnMut(usize) -> (String, String),
    ) -> Vec<Vec<u8>> {
        let conversation = reply_to.split('|').next().unwrap_or_default();
        (reply_activities(answer, reply_to).into_iter().enumerate())
            .map(|(i, mut a)| {
                let (id, timestamp) = next(i);
                a["from"] = json!({"id": bot_name, "name": bot_name, "role": "bot"});
                let at = Stamp {
                    conversation,
                    id: &id,
                    timestamp: &timestamp,
                };
                stamp(&mut a, &at);
                serde_json::to_vec(&a).expect("JSON serializes")
            })
            .collect()
    }

    fn render_posted(&self, id: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({"id": id})).expect("JSON serializes")
    }

    fn render_page(&self, activities: &[&[u8]], watermark: &str) -> Vec<u8> {
        let size: usize = activities.iter().map(|a| a.len() + 1).sum();
        let mut out = Vec::with_capacity(size + watermark.len() + 32);
        out.extend_from_slice(b"{\"activities\":[");
        for (i, a) in activities.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(a);
        }
        out.extend_from_slice(b"],\"watermark\":");
        out.extend_from_slice(json!(watermark).to_string().as_bytes());
        out.push(b'}');
        out
    }

    fn conversation_id(&self, random: [u8; 16]) -> String {
        URL_SAFE_NO_PAD.encode(random).replace(['-', '_'], "0")
    }

    fn activity_id(&self, conversation: &str, seq: u64) -> String {
        format!("{conversation}|{seq:07}")
    }

    fn allowed_headers(&self) -> &'static str {
        "authorization, content-type, x-ms-bot-agent, x-requested-with, x-request-id"
    }

    fn stream_path(&self, conversation: &str) -> String {
        format!("conversations/{conversation}/stream")
    }
}

/// An activity's place in its conversation, as Direct Line writes it.
fn stamp(a: &mut Value, at: &Stamp<'_>) {
    a["id"] = json!(at.id);
    a["timestamp"] = json!(at.timestamp);
    a["channelId"] = json!("directline");
    a["conversation"] = json!({"id": at.conversation});
}

// ---------------------------------------------------------------------------------------------
// The bot dialect: a Bot Framework bot behind Direct Line

/// `[[backends]]` with `dialect = "directline"`: its Direct Line secret and how its replies are
/// waited for.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BotConfig {
    secret: SecretSource,
    /// How often the conversation is read while replies are awaited (default 200 ms).
    #[serde(default = "default_poll_ms")]
    poll_ms: u64,
    /// Done once no new reply came for this long after the first (default 800 ms).
    #[serde(default = "default_quiet_ms")]
    quiet_ms: u64,
    /// At the latest this long after the message was posted (default 15 s): no reply by then is
    /// a 504.
    #[serde(default = "default_deadline_ms")]
    deadline_ms: u64,
}

fn default_poll_ms() -> u64 {
    200
}
fn default_quiet_ms() -> u64 {
    800
}
fn default_deadline_ms() -> u64 {
    15_000
}

/// A configured Direct Line bot.
pub struct DirectlineBot {
    secret: String,
    waits: Waits,
}

impl std::fmt::Debug for DirectlineBot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectlineBot")
            .field("secret", &"<redacted>")
            .field("waits", &self.waits)
            .finish()
    }
}

/// Its conversations: none until the shell starts one (a [`BotSession`] in the cursor); kept as the
/// shell updates them.
#[derive(Debug)]
struct BotConversations;

impl Conversations for BotConversations {
    fn first(&self, _user: &str) -> Conversation {
        Conversation {
            id: String::new(),
            cursor: None,
        }
    }
    fn fresh(&self, _random: [u8; 16]) -> Conversation {
        self.first("")
    }
    fn after(&self, _c: &Conversation, _a: &ChatAnswer<'_>, _r: [u8; 16]) -> AfterAnswer {
        AfterAnswer::Keep
    }
}

impl BotDialect for Directline {
    fn name(&self) -> &'static str {
        NAME
    }

    fn keys(&self) -> &'static [&'static str] {
        &["secret", "poll_ms", "quiet_ms", "deadline_ms"]
    }

    fn configure(&self, key: &str, table: toml::Table) -> Result<Box<dyn Bot>, ConfigError> {
        let c: BotConfig = settings(key, table)?;
        let secret = c.secret.resolve(&format!("{key}.secret"))?;
        if secret.is_empty() || !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::new(
                format!("{key}.secret"),
                "must be a Direct Line secret (visible ASCII, no spaces)",
            ));
        }
        for (k, v) in [
            ("poll_ms", c.poll_ms),
            ("quiet_ms", c.quiet_ms),
            ("deadline_ms", c.deadline_ms),
        ] {
            if v == 0 {
                return Err(ConfigError::new(
                    format!("{key}.{k}"),
                    "must be greater than 0",
                ));
            }
        }
        let ms = std::time::Duration::from_millis;
        Ok(Box::new(DirectlineBot {
            secret,
            waits: Waits {
                poll: ms(c.poll_ms),
                quiet: ms(c.quiet_ms),
                deadline: ms(c.deadline_ms),
            },
        }))
    }
}

impl Bot for DirectlineBot {
    fn dialect(&self) -> &'static str {
        NAME
    }

    fn conversations(&self) -> Option<&dyn Conversations> {
        Some(&BotConversations)
    }

    fn channel(&self) -> Option<&dyn ChannelBot> {
        Some(self)
    }

    /// The message activity posted: a text, or a button's payload as `text` and `value`.
    fn render_request(
        &self,
        req: &ChatRequest<'_>,
        ctx: &BotRequestContext<'_>,
    ) -> Result<Vec<u8>, ProxyError> {
        let text = text_for_bot(req, ctx.flow_trigger, "a Direct Line bot")?;
        // A blank message is not one Direct Line takes (nor this dialect's callers).
        if text.trim().is_empty() {
            return Err(ProxyError::new(
                400,
                Reason::Untranslatable,
                "a Direct Line bot takes no blank message",
            ));
        }
        Ok(serde_json::to_vec(&user_activity(req, text)).expect("JSON serializes"))
    }

    /// Each call carries its bearer (the shell adds it): nothing else signs the request.
    fn sign(&self, _out: &Outgoing<'_>, _add: &mut dyn FnMut(&'static str, &str)) {}

    /// The replies the shell collected: a JSON array of the bot's activities.
    fn parse_answer<'b>(
        &self,
        status: u16,
        body: &'b [u8],
        _keep_raw: bool,
    ) -> Result<ChatAnswer<'b>, ProxyError> {
        if status != 200 {
            return Err(ProxyError::new(
                502,
                Reason::BackendStatus,
                "the bot failed",
            ));
        }
        replies_in(body)
    }
}

/// `{"conversationId", "token", "expires_in"}` of a start or a refresh.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartedIn {
    conversation_id: Option<String>,
    token: Option<String>,
    #[serde(rename = "expires_in")]
    expires_in: Option<u64>,
}

/// When a bot's token expires: `expires_in` from now, at most a day (whatever the bot says), the
/// usual lifetime when it says nothing.
fn expiry(now: u64, expires_in: Option<u64>) -> u64 {
    now.saturating_add(expires_in.unwrap_or(TOKEN_LIFETIME_SECS).min(86_400))
}

impl DirectlineBot {
    /// The bearer of a conversation's calls: its token, else the secret.
    fn bearer(&self, s: &BotSession) -> String {
        if s.token.is_empty() {
            self.secret.clone()
        } else {
            s.token.clone()
        }
    }
}

fn bot_status(what: &'static str) -> ProxyError {
    ProxyError::new(502, Reason::BackendStatus, what)
}

fn bot_bad(what: &'static str) -> ProxyError {
    ProxyError::new(502, Reason::BackendBadAnswer, what)
}

/// A page of the bot's conversation.
#[derive(Deserialize)]
struct PageIn<'a> {
    #[serde(borrow, default)]
    activities: Vec<&'a RawValue>,
    watermark: Option<Cow<'a, str>>,
}

/// Just what tells a reply: its type and `replyToId`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReplyHead<'a> {
    #[serde(borrow, rename = "type", default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reply_to_id: Option<Cow<'a, str>>,
}

/// A path segment as it goes into a path (Direct Line ids are URL-safe; anything else is escaped).
fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl ChannelBot for DirectlineBot {
    fn start(&self) -> BotCall {
        BotCall {
            method: "POST",
            path: "/conversations".into(),
            body: Vec::new(),
            bearer: self.secret.clone(),
        }
    }

    fn started(&self, status: u16, body: &[u8], now: u64) -> Result<BotSession, ProxyError> {
        if !(200..300).contains(&status) {
            return Err(bot_status(
                "the bot's Direct Line refused to start a conversation",
            ));
        }
        let s: StartedIn =
            from_json(body).map_err(|_| bot_bad("the bot's conversation could not be read"))?;
        let conversation = s.conversation_id.filter(|c| !c.is_empty());
        let conversation =
            conversation.ok_or_else(|| bot_bad("the bot's conversation has no id"))?;
        let token = s.token.filter(|t| !t.is_empty());
        if token
            .as_deref()
            .is_some_and(|t| !t.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(bot_bad(
                "the bot's conversation token is not a header value",
            ));
        }
        Ok(BotSession {
            conversation,
            // Without a token of its own, the conversation is used with the secret (empty here:
            // the secret is never kept in the conversation store).
            token: token.unwrap_or_default(),
            expires: expiry(now, s.expires_in),
            watermark: None,
        })
    }

    fn refresh(&self, s: &BotSession) -> BotCall {
        BotCall {
            method: "POST",
            path: "/tokens/refresh".into(),
            body: Vec::new(),
            bearer: self.bearer(s),
        }
    }

    fn refreshed(&self, status: u16, body: &[u8], now: u64) -> Result<(String, u64), ProxyError> {
        if status != 200 {
            return Err(bot_status(
                "the bot's Direct Line refused to refresh its token",
            ));
        }
        let s: StartedIn =
            from_json(body).map_err(|_| bot_bad("the refreshed token could not be read"))?;
        let token = s
            .token
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()));
        let token = token.ok_or_else(|| bot_bad("the refresh gave no usable token"))?;
        Ok((token, expiry(now, s.expires_in)))
    }

    fn post(&self, s: &BotSession, activity: &[u8]) -> BotCall {
        BotCall {
            method: "POST",
            path: format!("/conversations/{}/activities", segment(&s.conversation)),
            body: activity.to_vec(),
            bearer: self.bearer(s),
        }
    }

    fn posted(&self, status: u16, body: &[u8]) -> Result<String, ProxyError> {
        if !(200..300).contains(&status) {
            return Err(bot_status("the bot rejected the activity"));
        }
        #[derive(Deserialize)]
        struct Id {
            id: Option<String>,
        }
        let id: Id =
            from_json(body).map_err(|_| bot_bad("the posted activity's id could not be read"))?;
        id.id
            .filter(|i| !i.is_empty())
            .ok_or_else(|| bot_bad("the posted activity has no id"))
    }

    fn read(&self, s: &BotSession) -> BotCall {
        let mut path = format!("/conversations/{}/activities", segment(&s.conversation));
        if let Some(w) = &s.watermark {
            path.push_str("?watermark=");
            path.push_str(&segment(w));
        }
        BotCall {
            method: "GET",
            path,
            body: Vec::new(),
            bearer: self.bearer(s),
        }
    }

    fn page(&self, status: u16, body: &[u8], reply_to: &str) -> Result<BotPage, ProxyError> {
        if status != 200 {
            return Err(bot_status("the bot's conversation could not be read"));
        }
        let p: PageIn<'_> =
            from_json(body).map_err(|_| bot_bad("the bot's activities could not be read"))?;
        let replies = (p.activities.iter())
            .filter(|a| {
                serde_json::from_str::<ReplyHead<'_>>(a.get()).is_ok_and(|h| {
                    h.reply_to_id.as_deref() == Some(reply_to)
                        && h.kind.as_deref() == Some("message")
                })
            })
            .map(|a| a.get().as_bytes().to_vec())
            .collect();
        Ok(BotPage {
            replies,
            watermark: p.watermark.map(Cow::into_owned),
        })
    }

    fn gone(&self, status: u16) -> bool {
        matches!(status, 403 | 404)
    }

    fn waits(&self) -> Waits {
        self.waits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_a_postback_and_other_activities() {
        let body = br#"{"type":"message","from":{"id":"u1","name":"Ann"},"text":"hi",
                        "channelData":{"clientActivityID":"c-1"}}"#;
        let Posted::Message(req) = parse_activity(body, Some("u1"), None).unwrap() else {
            panic!("a message");
        };
        assert_eq!(
            (&*req.user_id, &req.content),
            ("u1", &Content::Text("hi".into()))
        );
        assert_eq!(req.metadata.unwrap().get(), r#"{"clientActivityID":"c-1"}"#);

        let body = br#"{"type":"message","from":{"id":"u1"},"text":"Yes","value":{"pick":1}}"#;
        let Posted::Message(req) = parse_activity(body, None, None).unwrap() else {
            panic!("a message");
        };
        assert_eq!(req.content, Content::Payload(r#"{"pick":1}"#.into()));
        let body = br#"{"type":"message","value":"yes"}"#;
        let Posted::Message(req) = parse_activity(body, Some("u9"), None).unwrap() else {
            panic!("a message");
        };
        assert_eq!(
            (&*req.user_id, &req.content),
            ("u9", &Content::Payload("yes".into()))
        );

        let typing = br#"{"type":"typing","from":{"id":"u1"}}"#;
        assert!(matches!(
            parse_activity(typing, None, None).unwrap(),
            Posted::Other
        ));
    }

    #[test]
    fn a_tokens_user_speaks_whatever_the_activity_names() {
        let body = br#"{"type":"message","from":{"id":"eve"},"text":"hi"}"#;
        let Posted::Message(req) = parse_activity(body, Some("u1"), None).unwrap() else {
            panic!("a message");
        };
        assert_eq!(req.user_id, "u1");
        let Posted::Message(req) = parse_activity(body, None, Some("anon")).unwrap() else {
            panic!("a message");
        };
        assert_eq!(
            req.user_id, "eve",
            "with the secret, the activity names its user"
        );
    }

    #[test]
    fn bad_activities_are_bad_arguments() {
        for (body, words) in [
            (&br#"[1]"#[..], "not an activity"),
            (
                br#"{"type":"message","from":{"id":"u1"}}"#,
                "needs text or a value",
            ),
            (br#"{"type":"message","text":"hi"}"#, "no from.id"),
            (
                br#"{"type":"message","from":{"id":"u"},"value":"  ","text":" "}"#,
                "needs text or a value",
            ),
        ] {
            let e = parse_activity(body, None, None).unwrap_err();
            assert_eq!(e.status, 400);
            assert!(e.message.contains(words), "{}", e.message);
            let v: Value = serde_json::from_slice(&render_error(&e)).unwrap();
            assert_eq!(v["error"]["code"], "BadArgument");
        }
    }

    #[test]
    fn replies_become_activities_and_come_back_the_same() {
        let answer = ChatAnswer {
            replies: vec![
                Reply::Text("Hello".into()),
                Reply::Question {
                    title: "Pick one".into(),
                    buttons: vec![
                        Button {
                            title: "Yes".into(),
                            payload: None,
                        },
                        Button {
                            title: "No".into(),
                            payload: Some("/deny".into()),
                        },
                    ],
                },
                Reply::Media {
                    kind: MediaKind::Image,
                    url: "https://x.test/a.png".into(),
                },
            ],
            ..ChatAnswer::default()
        };
        let activities = reply_activities(&answer, "act-1");
        assert_eq!(
            activities[0],
            json!({"type": "message", "replyToId": "act-1", "text": "Hello"})
        );
        let card = &activities[1]["attachments"][0];
        assert_eq!(card["contentType"], HERO_CARD);
        assert_eq!(
            card["content"]["buttons"][0],
            json!({"type": "imBack", "title": "Yes", "value": "Yes"})
        );
        assert_eq!(
            card["content"]["buttons"][1],
            json!({"type": "postBack", "title": "No", "value": "/deny"})
        );
        assert_eq!(
            activities[2]["attachments"][0]["contentUrl"],
            "https://x.test/a.png"
        );

        let page = serde_json::to_vec(&activities).unwrap();
        let back = replies_to(&page, "act-1").unwrap();
        assert_eq!(back.replies, answer.replies);
        assert_eq!(replies_to(&page, "act-2").unwrap().replies, []);
    }

    #[test]
    fn suggested_actions_without_a_readable_button_leave_the_text() {
        // Found by fuzzing: actions with neither title nor value made a question of no buttons
        // (and no title), which no caller could show and which rendered back as nothing.
        let page = json!([
            {"type": "message", "replyToId": "a", "text": "Size?",
             "suggestedActions": {"actions": [{"type": "imBack", "tit|e": "S"}]}},
            {"type": "message", "replyToId": "a",
             "suggestedActions": {"actions": [{"type": "imBack"}]}}
        ]);
        let a = replies_to(&serde_json::to_vec(&page).unwrap(), "a").unwrap();
        assert_eq!(a.replies, [Reply::Text("Size?".into())]);
        let back = serde_json::to_vec(&reply_activities(&a, "a")).unwrap();
        assert_eq!(replies_to(&back, "a").unwrap().replies, a.replies);
    }

    #[test]
    fn suggested_actions_adaptive_cards_and_unknown_attachments() {
        let page = json!([
            {"type": "typing", "replyToId": "a"},
            {"type": "message", "replyToId": "a", "text": "Size?",
             "suggestedActions": {"actions": [{"type": "imBack", "title": "S", "value": "S"},
                                              {"type": "postBack", "title": "M", "value": {"size": "m"}}]}},
            {"type": "message", "replyToId": "a", "attachments": [
                {"contentType": ADAPTIVE_CARD, "content": {"type": "AdaptiveCard", "body": [
                    {"type": "TextBlock", "text": "Order 42"},
                    {"type": "Container", "items": [{"type": "TextBlock", "text": "ships today"}]}]}},
                {"contentType": "application/vnd.example.thing", "content": {}}]}
        ]);
        let a = replies_to(&serde_json::to_vec(&page).unwrap(), "a").unwrap();
        assert_eq!(
            a.replies,
            [
                Reply::Question {
                    title: "Size?".into(),
                    buttons: vec![
                        Button {
                            title: "S".into(),
                            payload: None
                        },
                        Button {
                            title: "M".into(),
                            payload: Some(r#"{"size":"m"}"#.into())
                        },
                    ],
                },
                Reply::Text("Order 42\nships today".into()),
            ]
        );
        assert_eq!(a.dropped, 1);
        let e = replies_to(b"{}", "a").unwrap_err();
        assert_eq!(
            (e.status, error_code(e.status)),
            (502, "BotRejectedActivity")
        );
    }

    #[test]
    fn the_user_activity_for_a_bot_carries_payloads_as_values() {
        let body =
            br#"{"type":"message","from":{"id":"u1"},"value":"/affirm","channelData":{"k":1}}"#;
        let Posted::Message(req) = parse_activity(body, None, None).unwrap() else {
            panic!("a message");
        };
        let a = user_activity(&req, "/affirm");
        assert_eq!(
            a,
            json!({"type": "message", "from": {"id": "u1", "role": "user"}, "text": "/affirm",
                   "value": "/affirm", "channelData": {"k": 1}})
        );
    }
}
