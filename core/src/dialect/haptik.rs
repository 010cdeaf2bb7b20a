//! Haptik's synchronous-webhook dialect: its request body, its two answer shapes, its error body.
//!
//! Request: `{"user":{"auth_id"},"message_body","message_type","business_id"}` (`message_type` 0 text,
//! 1 image URL, 52 document URL; absent means 0).
//!
//! Answers come in two shapes, chosen per route ([`AnswerShape`]):
//! - legacy (the seed): a JSON array with one `api.chatmessaged` object whose `bot_messages` are
//!   strings. Rich replies become text there (see [`reply_text`]): the legacy shape documents
//!   `bot_messages` as strings, so a client written for it never meets an object it cannot read;
//! - HSL (current): `{"version","timestamp","agent","message":[{"id","body": HSL}]}`, where rich
//!   replies keep their structure (see `hsl`).
//!
//! Errors are `{"error_message": "…"}`.

use std::borrow::Cow;
use std::marker::PhantomData;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

use serde_json::value::RawValue;

use serde::de::IgnoredAny;

use crate::auth::Presented;
use crate::auth::{AuthReason, ClientCredential, Denied, IdTokenClient, IdTokenPresented};
use crate::config::{header_safe, ConfigError, SecretSource};
use crate::dialect::bad_answer::{excerpt, Expected};
use crate::dialect::json_out::JsonOut;
use crate::dialect::{
    from_json, haptik_async, hsl, integer, settings, AnswerContext, Bot, BotDialect,
    BotRequestContext, CallerDialect, ClientEntry, Detection, Outgoing, RequestHead,
};
use crate::error::{json_error, ProxyError, Reason};
use crate::model::{Button, ChatAnswer, ChatRequest, Content, MediaKind, RawKind, Reply};

/// Haptik `message_type` for text.
pub const MESSAGE_TYPE_TEXT: i64 = 0;
/// Haptik `message_type` for an image (the body is its URL).
pub const MESSAGE_TYPE_IMAGE: i64 = 1;
/// Haptik `message_type` for a document (the body is its URL).
pub const MESSAGE_TYPE_DOCUMENT: i64 = 52;

#[derive(Deserialize)]
struct RequestWire<'a> {
    #[serde(borrow)]
    user: UserWire<'a>,
    #[serde(borrow)]
    message_body: Cow<'a, str>,
    #[serde(default, deserialize_with = "integer")]
    message_type: i64,
    #[serde(deserialize_with = "integer")]
    business_id: i64,
}

#[derive(Deserialize)]
struct UserWire<'a> {
    #[serde(borrow)]
    auth_id: Cow<'a, str>,
}

/// Parses a Haptik webhook request body into the canonical request.
///
/// Errors are 400s that name the field: malformed JSON, a missing or mistyped field, an empty
/// `user.auth_id` or `message_body`, an unsupported `message_type`, a media message whose body is not an
/// http(s) URL.
pub fn parse_request(body: &[u8]) -> Result<ChatRequest<'_>, ProxyError> {
    let wire: RequestWire<'_> = from_json(body).map_err(|_| json_error::<RequestWire<'_>>(body))?;
    if wire.user.auth_id.is_empty() {
        return Err(ProxyError::bad_request(
            "invalid field `user.auth_id`: must not be empty",
        ));
    }
    if wire.message_body.is_empty() {
        return Err(ProxyError::bad_request(
            "invalid field `message_body`: must not be empty",
        ));
    }
    let content = match wire.message_type {
        MESSAGE_TYPE_TEXT => Content::Text(wire.message_body),
        MESSAGE_TYPE_IMAGE | MESSAGE_TYPE_DOCUMENT => {
            if !is_http_url(&wire.message_body) {
                return Err(ProxyError::bad_request(format!(
                    "invalid field `message_body`: message_type {} needs an http(s) URL",
                    wire.message_type
                )));
            }
            let kind = if wire.message_type == MESSAGE_TYPE_IMAGE {
                MediaKind::Image
            } else {
                MediaKind::File
            };
            Content::Media {
                kind,
                url: wire.message_body,
            }
        }
        other => {
            return Err(ProxyError::bad_request(format!(
            "invalid field `message_type`: {other} is not supported (0 text, 1 image, 52 document)"
        )))
        }
    };
    Ok(ChatRequest {
        user_id: wire.user.auth_id,
        content,
        business_id: Some(wire.business_id),
        message_type: wire.message_type,
        request_id: None,
        metadata: None,
        raw_payload: None,
        callback_url: None,
    })
}

/// Whether `s` looks like an absolute http or https URL.
pub fn is_http_url(s: &str) -> bool {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    matches!(rest, Some(r) if !r.is_empty() && !r.starts_with('/'))
}

/// Which Haptik answer shape a route serves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnswerShape {
    /// The seed's array of `api.chatmessaged` with string `bot_messages`.
    #[default]
    Legacy,
    /// `{"version","timestamp","agent","message":[{"id","body": HSL}]}`.
    Hsl,
}

/// What to do with a CSML `flow_trigger` sent to a Haptik backend, which has no equivalent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowTriggerPolicy {
    /// Refuse it with 422.
    #[default]
    Reject,
    /// Send the flow id as a text message.
    Text,
}

/// The text a Haptik client sees for the user's own message (`fields.body`).
pub fn request_body_text<'b>(content: &'b Content<'_>) -> &'b str {
    match content {
        Content::Text(t) | Content::Url(t) | Content::Payload(t) => t,
        Content::Media { url, .. } => url,
        Content::FlowTrigger { flow_id, .. } => flow_id,
    }
}

/// Renders one reply as a legacy `bot_messages` string.
///
/// - text: the text itself;
/// - question: the title, then each button's label in brackets on one line (`Pick one\n[Yes] [No]`);
///   typing a label back reaches the bot as that label, which CSML buttons accept;
/// - button: `[label]`;
/// - url: `label: URL` (label is the url's text, else its title), or the bare URL;
/// - image, video, audio, file: the bare URL.
pub fn reply_text<'a>(reply: &Reply<'a>) -> Cow<'a, str> {
    match reply {
        Reply::Text(t) => t.clone(),
        Reply::Media { url, .. } => url.clone(),
        _ => {
            let mut s = String::new();
            reply_text_parts(reply, |part| s.push_str(part));
            Cow::Owned(s)
        }
    }
}

/// The pieces of [`reply_text`] in order, for writers that escape as they go.
fn reply_text_parts(reply: &Reply<'_>, mut put: impl FnMut(&str)) {
    match reply {
        Reply::Text(t) => put(t),
        Reply::Question { title, buttons } => {
            put(title);
            for (i, b) in buttons.iter().enumerate() {
                put(if i == 0 { "\n[" } else { " [" });
                put(&b.title);
                put("]");
            }
        }
        Reply::Button(b) => {
            put("[");
            put(&b.title);
            put("]");
        }
        Reply::Url { url, text, title } => match text.as_deref().or(title.as_deref()) {
            Some(label) if !label.is_empty() => {
                put(label);
                put(": ");
                put(url);
            }
            _ => put(url),
        },
        Reply::Media { url, .. } => put(url),
    }
}

/// Renders the canonical answer in the route's Haptik shape.
pub fn render_answer(
    req: &ChatRequest<'_>,
    answer: &ChatAnswer<'_>,
    ctx: &AnswerContext<'_>,
) -> Vec<u8> {
    let first_id = ctx.ids.message_ids(ids_needed(answer));
    match ctx.shape {
        AnswerShape::Legacy => render_legacy(req, answer, ctx, first_id),
        AnswerShape::Hsl => render_hsl(answer, ctx, first_id),
    }
}

/// How many message ids [`render_answer`] reserves.
pub fn ids_needed(answer: &ChatAnswer<'_>) -> u64 {
    let n = match &answer.raw {
        Some((RawKind(NAME), raw)) => raw.len(),
        _ => answer.replies.len(),
    };
    n.max(1) as u64
}

#[derive(Serialize)]
struct HslAnswerOut<'a> {
    version: &'static str,
    timestamp: String,
    agent: AgentOut<'a>,
    message: Vec<HslMessageOut<'a>>,
}

#[derive(Serialize)]
struct AgentOut<'a> {
    id: u32,
    name: &'a str,
    profile_image: &'static str,
    is_automated: bool,
}

#[derive(Serialize)]
struct HslMessageOut<'a> {
    id: u64,
    body: HslBody<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum HslBody<'a> {
    Raw(&'a RawValue),
    Made(hsl::HslOut<'a>),
}

/// A 31-bit number that stays the same for the same bytes, on every instance and release: the legacy
/// `coll_id` of a user and the HSL agent id of a bot name. These ids (and the legacy `id_hash`) only
/// need to be stable and spread, not secret: xxh3, a specified non-cryptographic hash, instead of
/// the SHA-256 used before took the path from 95.2k to 88.0k instructions per request (callgrind,
/// `bench/callgrind.sh`; four SHA-256 blocks gone) and 0.7 µs of CPU per request (bench).
fn stable_u31(bytes: &[u8]) -> u32 {
    (xxh3_64(bytes) >> 33) as u32
}

/// The current shape. A Haptik backend's own HSL bodies are passed through verbatim.
fn render_hsl(answer: &ChatAnswer<'_>, ctx: &AnswerContext<'_>, first_id: u64) -> Vec<u8> {
    let bodies: Vec<HslBody<'_>> = match &answer.raw {
        Some((RawKind(NAME), raw)) => raw.iter().map(|b| HslBody::Raw(b)).collect(),
        _ => answer
            .replies
            .iter()
            .map(|r| HslBody::Made(hsl::render(r)))
            .collect(),
    };
    // A Haptik backend's own agent keeps its name; otherwise the route's bot name.
    let name = answer.bot_id.as_deref().unwrap_or(ctx.bot_name);

    let out = HslAnswerOut {
        version: "1.0",
        timestamp: crate::timefmt::rfc3339_millis(ctx.received),
        agent: AgentOut {
            id: stable_u31(name.as_bytes()),
            name,
            profile_image: "",
            is_automated: true,
        },
        message: bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| HslMessageOut {
                id: first_id + i as u64,
                body,
            })
            .collect(),
    };
    serde_json::to_vec(&out).expect("haptik hsl answer serializes")
}

/// The seed's legacy shape: a one-element JSON array of one `api.chatmessaged`, its keys in the
/// seed's order. Written with [`JsonOut`] (see there why not serde).
fn render_legacy(
    req: &ChatRequest<'_>,
    answer: &ChatAnswer<'_>,
    ctx: &AnswerContext<'_>,
    first_id: u64,
) -> Vec<u8> {
    let mut id_hash = [0u8; 32];
    hex::encode_to_slice(
        xxh3_128(&first_id.to_be_bytes()).to_be_bytes(),
        &mut id_hash,
    )
    .expect("16 bytes are 32 hex digits");
    let id_hash = std::str::from_utf8(&id_hash).expect("hex digits are ASCII");
    let stamp = crate::timefmt::rfc3339(ctx.received, crate::timefmt::Fraction::Millis);
    let stamp = stamp.as_str();
    // About 350 bytes of envelope and 180 per message: one allocation, no growing.
    let mut out = JsonOut::with_capacity(512 + 256 * answer.replies.len());
    out.raw(r#"[{"model":"api.chatmessaged","pk":"#)
        .u64(first_id)
        .raw(r#","fields":{"coll_id":"#)
        .u64(stable_u31(req.user_id.as_bytes()).into())
        .raw(r#","body":"#)
        .str(request_body_text(&req.content))
        .raw(r#","direction":true,"received":false,"active":true,"created_at":"#)
        .str(stamp)
        .raw(r#","modified_at":"#)
        .str(stamp)
        .raw(r#","id_hash":"#)
        .str(id_hash)
        .raw(r#","emailed":false,"ticket_no":0,"agent_name":null,"claim_name":"#)
        .str(ctx.bot_name)
        .raw(r#","app_auto_reply":0,"sort_id":1,"business_via_name":"#)
        .str(ctx.business_name)
        .raw(r#","body_processed":null,"ares_flag":0,"clarification_flag":false,"message_type":"#)
        .i64(req.message_type)
        .raw(r#","conversation_no":1,"id":"#)
        .u64(first_id)
        .raw(r#","business_id":"#)
        .i64(req.business_id.unwrap_or(0))
        .raw(r#","business_name":"#)
        .str(ctx.business_name)
        .raw(r#"},"bot_messages":["#);
    for (i, reply) in answer.replies.iter().enumerate() {
        out.raw(if i == 0 { "" } else { "," }).open_str();
        reply_text_parts(reply, |part| {
            out.fragment(part);
        });
        out.close_str();
    }
    out.raw("]}]");
    out.finish()
}

#[derive(Serialize)]
struct RequestOut<'a> {
    user: UserOut<'a>,
    message_body: &'a str,
    message_type: i64,
    business_id: i64,
}

#[derive(Serialize)]
struct UserOut<'a> {
    auth_id: &'a str,
}

/// Renders the canonical request as a Haptik webhook request for business `business_id`.
///
/// Text and button payloads are text (type 0); an image is type 1 and a file type 52 with the URL as
/// body; video, audio and url have no Haptik type and go as their URL in a text. A flow trigger has
/// no Haptik equivalent: refused with 422, or sent as its flow id, as the route's policy says.
pub fn render_request(
    req: &ChatRequest<'_>,
    business_id: i64,
    flow: FlowTriggerPolicy,
) -> Result<Vec<u8>, ProxyError> {
    let (message_body, message_type): (&str, i64) = match &req.content {
        Content::Text(t) | Content::Payload(t) | Content::Url(t) => (t, MESSAGE_TYPE_TEXT),
        Content::Media {
            kind: MediaKind::Image,
            url,
        } => (url, MESSAGE_TYPE_IMAGE),
        Content::Media {
            kind: MediaKind::File,
            url,
        } => (url, MESSAGE_TYPE_DOCUMENT),
        Content::Media { url, .. } => (url, MESSAGE_TYPE_TEXT),
        Content::FlowTrigger { flow_id, .. } => match flow {
            FlowTriggerPolicy::Text => (flow_id, MESSAGE_TYPE_TEXT),
            FlowTriggerPolicy::Reject => return Err(ProxyError::new(
                422,
                Reason::Untranslatable,
                "flow_trigger has no equivalent for this bot (a Haptik bot); send a text message",
            )),
        },
    };
    let out = RequestOut {
        user: UserOut {
            auth_id: &req.user_id,
        },
        message_body,
        message_type,
        business_id,
    };
    Ok(serde_json::to_vec(&out).expect("haptik request serializes"))
}

#[derive(Deserialize)]
struct ErrorIn<'a> {
    #[serde(borrow)]
    error_message: Cow<'a, str>,
}

#[derive(Deserialize)]
struct LegacyIn<'a> {
    #[serde(borrow, default)]
    bot_messages: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct HslAnswerIn<'a> {
    #[serde(borrow, default)]
    message: Option<Vec<HslMessageIn<'a>>>,
    #[serde(borrow, default)]
    error_message: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    agent: Option<AgentIn<'a>>,
}

#[derive(Deserialize)]
struct HslMessageIn<'a> {
    #[serde(borrow)]
    body: &'a RawValue,
}

#[derive(Deserialize)]
struct AgentIn<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
}

/// A Haptik answer, for the messages about one that is not ([`Expected`]); its HSL bodies are
/// `hsl`'s.
const HAPTIK_ANSWER: Expected = Expected {
    name: "Haptik",
    shape: "the legacy array or an HSL answer object",
    opens: b"[{",
    keys: &[
        "bot_messages",
        "message",
        "error_message",
        "agent",
        "name",
        "body",
    ],
};

/// Parses a Haptik backend's answer: the legacy array, the current HSL shape, or a Haptik error body
/// (`{"error_message"}`, with any status), which becomes an error (see [`refusal`]). An answer that
/// is none of these is a 502 naming the field at fault, never repeating the bot's text.
pub fn parse_answer(status: u16, body: &[u8]) -> Result<ChatAnswer<'_>, ProxyError> {
    if !(200..300).contains(&status) {
        let message = serde_json::from_slice::<ErrorIn<'_>>(body).ok();
        let refused = refusal(status, message.as_ref().map(|e| &*e.error_message));
        return Err(refused.with_detail(excerpt(body)));
    }
    if body.trim_ascii_start().starts_with(b"[") {
        let legacy: Vec<LegacyIn<'_>> =
            from_json(body).map_err(|_| HAPTIK_ANSWER.body::<Vec<LegacyIn<'_>>>(body))?;
        return legacy_answer(legacy);
    }
    // One pass over an object answer: an error body (Haptik sends some with 200) or the HSL shape.
    let current: HslAnswerIn<'_> =
        from_json(body).map_err(|_| HAPTIK_ANSWER.body::<HslAnswerIn<'_>>(body))?;
    if let Some(message) = current.error_message {
        return Err(refusal(status, Some(&message)).with_detail(&*message));
    }
    let messages = current.message.ok_or_else(|| {
        ProxyError::bad_answer("the backend answer is not a Haptik answer: no `message` array")
    })?;
    let mut answer = ChatAnswer::default();
    let mut raw = Vec::with_capacity(messages.len());
    for (i, m) in messages.into_iter().enumerate() {
        if !hsl::parse(m.body, &format!("message[{i}].body"), &mut answer.replies)? {
            answer.dropped += 1;
        }
        raw.push(m.body);
    }
    answer.raw = Some((RawKind(NAME), raw));
    answer.bot_id = current.agent.and_then(|a| a.name);
    Ok(answer)
}

/// The legacy array's `bot_messages`. The legacy shape documents them as strings, so a rich reply
/// arrives as an HSL object encoded in a string: a string that holds an HSL object is read as that
/// reply; any other string (JSON-looking or not) is text.
fn legacy_answer(legacy: Vec<LegacyIn<'_>>) -> Result<ChatAnswer<'_>, ProxyError> {
    let mut answer = ChatAnswer::default();
    for (i, m) in legacy.into_iter().flat_map(|l| l.bot_messages).enumerate() {
        let at = format!("bot_messages[{i}]");
        if m.get().starts_with('"') {
            let text: Cow<'_, str> = serde_json::from_str(m.get()).map_err(|_| {
                HAPTIK_ANSWER.part(PhantomData::<Cow<'_, str>>, m.get().as_bytes(), &at)
            })?;
            match hsl_in_string(&text) {
                Some(replies) => answer.replies.extend(replies),
                None => answer.replies.push(Reply::Text(text)),
            }
        } else if !hsl::parse(m, &at, &mut answer.replies)? {
            answer.dropped += 1;
        }
    }
    Ok(answer)
}

/// The replies of a string that holds an HSL object (`{"text", "type", "data"}` with a known type);
/// `None` for anything else, which stays text.
fn hsl_in_string(text: &str) -> Option<Vec<Reply<'static>>> {
    let trimmed = text.trim();
    if !(trimmed.starts_with('{') && trimmed.ends_with('}')) {
        return None;
    }
    let raw: &RawValue = serde_json::from_str(trimmed).ok()?;
    let mut replies = Vec::new();
    match hsl::parse(raw, "bot_messages", &mut replies) {
        Ok(true) if !replies.is_empty() => Some(replies.into_iter().map(reply_owned).collect()),
        _ => None,
    }
}

/// A reply that owns its strings (one parsed from a temporary string).
fn reply_owned(r: Reply<'_>) -> Reply<'static> {
    let own = |c: Cow<'_, str>| Cow::Owned(c.into_owned());
    let button = |b: Button<'_>| Button {
        title: own(b.title),
        payload: b.payload.map(own),
    };
    match r {
        Reply::Text(t) => Reply::Text(own(t)),
        Reply::Question { title, buttons } => Reply::Question {
            title: own(title),
            buttons: buttons.into_iter().map(button).collect(),
        },
        Reply::Button(b) => Reply::Button(button(b)),
        Reply::Url { url, text, title } => Reply::Url {
            url: own(url),
            text: text.map(own),
            title: title.map(own),
        },
        Reply::Media { kind, url } => Reply::Media {
            kind,
            url: own(url),
        },
    }
}

/// The dialect's name, in configuration, metrics and the auth service's queries.
pub const NAME: &str = "haptik";

/// Haptik's message for a missing `client-id` header.
pub const MSG_CLIENT_ID_MISSING: &str = "client_id missing in headers";
/// Haptik's message for a missing bearer token.
pub const MSG_TOKEN_MISSING: &str = "token missing in headers";
/// Haptik's message for credentials that do not match.
pub const MSG_INVALID: &str = "invalid authorization details";

/// Reads a Haptik caller's credentials from its headers: `Authorization: Bearer <token>`, and
/// `client-id` or (as one real client sends it) `client_id`.
pub fn presented<'h>(
    header: impl Fn(&str) -> Option<&'h [u8]>,
) -> Result<IdTokenPresented<'h>, Denied> {
    let client_id = header("client-id")
        .or_else(|| header("client_id"))
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| Denied::new(AuthReason::Missing, MSG_CLIENT_ID_MISSING))?;
    let value = header("authorization")
        .map(<[u8]>::trim_ascii)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Denied::new(AuthReason::Missing, MSG_TOKEN_MISSING))?;
    if value.eq_ignore_ascii_case(b"bearer") {
        return Err(Denied::new(AuthReason::Missing, MSG_TOKEN_MISSING));
    }
    if value.len() < 7 || !value[..7].eq_ignore_ascii_case(b"bearer ") {
        return Err(Denied::new(AuthReason::Malformed, MSG_INVALID));
    }
    let token = value[7..].trim_ascii();
    if token.is_empty() {
        return Err(Denied::new(AuthReason::Missing, MSG_TOKEN_MISSING));
    }
    Ok(IdTokenPresented {
        dialect: NAME,
        client_id,
        token,
        invalid: MSG_INVALID,
    })
}

/// Haptik's documented messages about the caller's request, with the status they come with.
const CALLER_REFUSALS: [(&str, u16, Reason); 2] = [
    ("user is not registered", 403, Reason::Forbidden),
    ("invalid business_id provided", 400, Reason::UnknownTarget),
];

/// Haptik's documented messages about the proxy's own credentials.
const CREDENTIAL_REFUSALS: [&str; 6] = [
    MSG_INVALID,
    MSG_CLIENT_ID_MISSING,
    "invalid client_id in headers",
    MSG_TOKEN_MISSING,
    "invalid token provided",
    "invalid authorization details provided",
];

/// What a Haptik bot's refusal becomes. One about the caller's request (a documented message, or a
/// 400/404/422) reaches the caller with the bot's status and a message from Haptik's documented
/// vocabulary or a fixed one; one about the proxy's credentials, or anything else, is a 502. The
/// bot's own free text never reaches the caller.
pub fn refusal(status: u16, message: Option<&str>) -> ProxyError {
    let message = message.map(str::trim).unwrap_or_default();
    if let Some((m, default_status, reason)) = CALLER_REFUSALS
        .iter()
        .find(|(m, ..)| message.eq_ignore_ascii_case(m))
    {
        let status = if (400..500).contains(&status) {
            status
        } else {
            *default_status
        };
        return ProxyError::new(status, *reason, *m);
    }
    if message.starts_with("business ") && message.ends_with(" is inactive") {
        let status = if (400..500).contains(&status) {
            status
        } else {
            403
        };
        return ProxyError::new(status, Reason::UnknownTarget, "the business is inactive");
    }
    // About the proxy's own credentials: a 502 naming the documented message (our copy of it).
    if let Some(m) = CREDENTIAL_REFUSALS
        .iter()
        .find(|m| message.eq_ignore_ascii_case(m))
    {
        return ProxyError::new(
            502,
            Reason::BackendStatus,
            format!("the backend refused the request (HTTP {status}): {m}"),
        );
    }
    match status {
        400 | 404 | 422 => ProxyError::new(
            status,
            Reason::BadRequest,
            "the bot refused the request as invalid",
        ),
        _ => ProxyError::new(
            502,
            Reason::BackendStatus,
            format!("the backend refused the request (HTTP {status})"),
        ),
    }
}

#[derive(Serialize)]
struct ErrorWire<'a> {
    error_message: &'a str,
}

/// Renders an error the way Haptik does: `{"error_message": "…"}`.
pub fn render_error(err: &ProxyError) -> Vec<u8> {
    serde_json::to_vec(&ErrorWire {
        error_message: &err.message,
    })
    .expect("haptik error serializes")
}

// ---------------------------------------------------------------------------------------------
// The dialect interface

/// Haptik, as callers and bots speak it.
pub struct Haptik;

/// `[[clients.haptik]]`: one Haptik caller. Give `token` or `token_sha256`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientConfig {
    /// The `client-id` header it sends.
    client_id: String,
    /// Its bearer token (only its SHA-256 is kept).
    token: Option<SecretSource>,
    /// Or the token's SHA-256, as 64 hex digits.
    token_sha256: Option<SecretSource>,
    /// Where the bot's replies to its Log Message API requests are POSTed (absent: no async mode).
    webhook_url: Option<String>,
    /// The key of those webhooks' `X-Hub-Signature` (required with `webhook_url`).
    webhook_secret: Option<SecretSource>,
    /// Accept an `http://` `webhook_url` (default: https only).
    #[serde(default)]
    allow_http_callbacks: bool,
    /// Let webhooks reach loopback, private and link-local addresses (default: refused).
    #[serde(default)]
    allow_private_callbacks: bool,
}

/// A Haptik bot's settings (`dialect = "haptik"`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BotConfig {
    /// The bearer token the proxy sends.
    token: Option<SecretSource>,
    /// The `client-id` the proxy sends.
    client_id: Option<String>,
    /// `sync` (default): the bot answers in its HTTP answer; `async`: it is sent the Log Message API
    /// request and its replies come to the proxy's `webhook_path`.
    #[serde(default)]
    mode: haptik_async::BotMode,
    /// Async bots: the path on the chat listener the bot's webhooks are POSTed to.
    webhook_path: Option<String>,
    /// Async bots: the key of those webhooks' `X-Hub-Signature`.
    webhook_secret: Option<SecretSource>,
    /// Async bots: how long after a reply with no further one the replies count as complete
    /// (milliseconds, default 1000); the backend's `read_timeout_ms` bounds the whole wait.
    quiet_ms: Option<u64>,
}

/// A configured Haptik bot: its credentials, the header value built once.
struct HaptikBot {
    authorization: String,
    client_id: String,
    replies: Option<haptik_async::AsyncBot>,
}

impl std::fmt::Debug for HaptikBot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HaptikBot")
            .field("client_id", &self.client_id)
            .field("token", &"<redacted>")
            .finish()
    }
}

#[derive(Deserialize)]
struct ShapeProbe {
    message_body: Option<IgnoredAny>,
    payload: Option<IgnoredAny>,
    client: Option<IgnoredAny>,
}

fn is_bearer(v: &[u8]) -> bool {
    v.len() >= 7 && v[..7].eq_ignore_ascii_case(b"bearer ")
}

impl CallerDialect for Haptik {
    fn api_document(&self) -> &'static str {
        include_str!("../../../docs/openapi/haptik.json")
    }

    fn async_caller(&self) -> Option<&dyn crate::dialect::AsyncCaller> {
        Some(&haptik_async::LogMessageApi)
    }

    fn name(&self) -> &'static str {
        "haptik"
    }

    /// `Authorization: Bearer` with a client id is Haptik; a bare bearer token might be.
    fn detect(&self, head: &dyn RequestHead) -> Detection {
        match head.header("authorization") {
            Some(a) if is_bearer(a) => {
                if head
                    .header("client-id")
                    .or(head.header("client_id"))
                    .is_some()
                {
                    Detection::Yes
                } else {
                    Detection::Maybe
                }
            }
            _ => Detection::No,
        }
    }

    fn names_business(&self) -> bool {
        true
    }

    fn credential_hint(&self) -> &'static str {
        "Haptik (Authorization: Bearer + client-id)"
    }

    fn detect_body(&self, body: &[u8]) -> bool {
        serde_json::from_slice::<ShapeProbe>(body)
            .is_ok_and(|p| p.message_body.is_some() && p.client.is_none() && p.payload.is_none())
    }

    fn credential<'h>(&self, head: &'h dyn RequestHead) -> Result<Presented<'h>, Denied> {
        presented(|name| head.header(name)).map(Presented::ClientToken)
    }

    fn client(
        &self,
        key: &str,
        name: &str,
        table: toml::Table,
    ) -> Result<ClientEntry, ConfigError> {
        let c: ClientConfig = settings(key, table)?;
        if c.client_id.trim().is_empty() {
            return Err(ConfigError::new(
                format!("{key}.client_id"),
                "must not be empty",
            ));
        }
        let mut demo = None;
        let client = match (&c.token, &c.token_sha256) {
            (Some(t), None) => {
                let token = t.resolve(&format!("{key}.token"))?;
                if token == "demo-token" {
                    demo = Some(format!("haptik client {}", c.client_id));
                }
                IdTokenClient::with_token(name, token.as_bytes())
            }
            (None, Some(h)) => {
                let k = format!("{key}.token_sha256");
                let mut digest = [0u8; 32];
                hex::decode_to_slice(h.resolve(&k)?.trim(), &mut digest).map_err(|_| {
                    ConfigError::new(&k, "must be 64 hex digits (a SHA-256 digest)")
                })?;
                IdTokenClient::with_token_sha256(name, digest)
            }
            _ => {
                return Err(ConfigError::new(
                    key,
                    "give exactly one of `token` or `token_sha256`",
                ))
            }
        };
        let secret = (c.webhook_secret.as_ref())
            .map(|s| s.resolve(&format!("{key}.webhook_secret")))
            .transpose()?;
        let callbacks = crate::delivery::policy::fixed_webhook(
            NAME,
            key,
            name,
            c.webhook_url.as_deref(),
            secret,
            c.allow_http_callbacks,
            c.allow_private_callbacks,
        )?;
        let client = client.with_callbacks(callbacks);
        Ok(ClientEntry {
            credential: ClientCredential::ClientToken {
                client_id: c.client_id,
                client,
            },
            demo,
        })
    }

    fn parse_request<'b>(
        &self,
        _path: &str,
        body: &'b [u8],
    ) -> Result<ChatRequest<'b>, ProxyError> {
        parse_request(body)
    }

    fn passes_through(&self, answer: &ChatAnswer<'_>, shape: AnswerShape) -> bool {
        shape == AnswerShape::Hsl && matches!(answer.raw.as_ref().map(|r| r.0), Some(RawKind(NAME)))
    }

    fn render_answer(
        &self,
        req: &ChatRequest<'_>,
        answer: &ChatAnswer<'_>,
        ctx: &AnswerContext<'_>,
    ) -> Vec<u8> {
        render_answer(req, answer, ctx)
    }

    fn render_error(&self, err: &ProxyError) -> Vec<u8> {
        render_error(err)
    }
}

impl BotDialect for Haptik {
    fn name(&self) -> &'static str {
        "haptik"
    }

    fn keys(&self) -> &'static [&'static str] {
        &[
            "token",
            "client_id",
            "mode",
            "webhook_path",
            "webhook_secret",
            "quiet_ms",
        ]
    }

    fn configure(&self, key: &str, table: toml::Table) -> Result<Box<dyn Bot>, ConfigError> {
        let c: BotConfig = settings(key, table)?;
        let required =
            |f: &str| ConfigError::new(format!("{key}.{f}"), "required by dialect `haptik`");
        let token = c
            .token
            .ok_or_else(|| required("token"))?
            .resolve(&format!("{key}.token"))?;
        header_safe(&format!("{key}.token"), &token)?;
        let client_id = c
            .client_id
            .filter(|c| !c.is_empty())
            .ok_or_else(|| required("client_id"))?;
        header_safe(&format!("{key}.client_id"), &client_id)?;
        let secret = (c.webhook_secret.as_ref())
            .map(|s| s.resolve(&format!("{key}.webhook_secret")))
            .transpose()?;
        let keys = haptik_async::AsyncBotKeys {
            mode: c.mode,
            webhook_path: c.webhook_path,
            webhook_secret: secret,
            quiet_ms: c.quiet_ms,
        };
        Ok(Box::new(HaptikBot {
            authorization: format!("Bearer {token}"),
            client_id,
            replies: haptik_async::async_bot(key, keys)?,
        }))
    }
}

impl Bot for HaptikBot {
    fn dialect(&self) -> &'static str {
        "haptik"
    }

    /// Every Haptik request names a business.
    fn needs_business(&self) -> bool {
        true
    }

    fn render_request(
        &self,
        req: &ChatRequest<'_>,
        ctx: &BotRequestContext<'_>,
    ) -> Result<Vec<u8>, ProxyError> {
        let business_id = ctx.business_id.ok_or_else(|| {
            ProxyError::new(
                400,
                Reason::UnknownTarget,
                "no business_id for this Haptik bot: the credential or route must name one",
            )
        })?;
        render_request(req, business_id, ctx.flow_trigger)
    }

    fn async_replies(&self) -> Option<&dyn crate::dialect::ReplyWebhook> {
        self.replies.as_ref().map(|r| r as _)
    }

    fn sign(&self, _out: &Outgoing<'_>, add: &mut dyn FnMut(&'static str, &str)) {
        add("authorization", &self.authorization);
        add("client-id", &self.client_id);
    }

    fn parse_answer<'b>(
        &self,
        status: u16,
        body: &'b [u8],
        _keep_raw: bool,
    ) -> Result<ChatAnswer<'b>, ProxyError> {
        parse_answer(status, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::FixedIds;
    use crate::model::Button;
    use serde_json::Value;
    use std::time::{Duration, UNIX_EPOCH};

    const SEED_REQUEST: &str = include_str!("../../../tests/fixtures/haptik/seed-request.json");
    const SEED_RESPONSE: &str = include_str!("../../../tests/fixtures/haptik/seed-response.json");

    #[test]
    fn parses_the_seed_request() {
        let req = parse_request(SEED_REQUEST.as_bytes()).unwrap();
        assert_eq!(req.user_id, "<AUTH_ID>");
        assert_eq!(req.content, Content::Text("<MESSAGE_BODY>".into()));
        assert_eq!(req.business_id, Some(343));
        assert_eq!(req.message_type, 0);
    }

    #[test]
    fn message_type_defaults_to_text_and_image_needs_a_url() {
        let req = parse_request(br#"{"user":{"auth_id":"u"},"message_body":"hi","business_id":1}"#)
            .unwrap();
        assert_eq!(req.content, Content::Text("hi".into()));
        let req = parse_request(
            br#"{"user":{"auth_id":"u"},"message_body":"https://x.test/a.png","message_type":1,"business_id":1}"#,
        )
        .unwrap();
        assert_eq!(
            req.content,
            Content::Media {
                kind: MediaKind::Image,
                url: "https://x.test/a.png".into()
            }
        );
        let err = parse_request(
            br#"{"user":{"auth_id":"u"},"message_body":"not a url","message_type":1,"business_id":1}"#,
        )
        .unwrap_err();
        assert_eq!(err.status, 400);
        assert!(err.message.contains("message_body"), "{}", err.message);
    }

    /// Found by the schemathesis check: JSON Schema's `integer` (the OpenAPI document) includes
    /// `343.0`, which serde's `i64` refused.
    #[test]
    fn integers_may_be_written_with_a_fraction() {
        let req = parse_request(
            br#"{"user":{"auth_id":"u"},"message_body":"hi","message_type":0.0,"business_id":3.43e2}"#,
        )
        .unwrap();
        assert_eq!((req.business_id, req.message_type), (Some(343), 0));
        for bad in [
            "343.5",
            "1e19",
            "-1e19",
            "-9223372036854775809",
            "9223372036854775808",
        ] {
            let body =
                format!(r#"{{"user":{{"auth_id":"u"}},"message_body":"hi","business_id":{bad}}}"#);
            let err = parse_request(body.as_bytes()).unwrap_err();
            assert!(
                err.message.contains("`business_id`"),
                "{bad}: {}",
                err.message
            );
        }
    }

    #[test]
    fn errors_name_the_field() {
        let cases: [(&[u8], &str); 7] = [
            (b"{not json", "malformed JSON"),
            (br#"{"message_body":"hi","business_id":1}"#, "`user`"),
            (
                br#"{"user":{},"message_body":"hi","business_id":1}"#,
                "`auth_id`",
            ),
            (
                br#"{"user":{"auth_id":5},"message_body":"hi","business_id":1}"#,
                "`user.auth_id`",
            ),
            (
                br#"{"user":{"auth_id":"u"},"business_id":1}"#,
                "`message_body`",
            ),
            (
                br#"{"user":{"auth_id":"u"},"message_body":"hi","business_id":"343"}"#,
                "`business_id`",
            ),
            (
                br#"{"user":{"auth_id":"u"},"message_body":"hi","message_type":9,"business_id":1}"#,
                "`message_type`",
            ),
        ];
        for (body, needle) in cases {
            let err = parse_request(body).unwrap_err();
            assert_eq!(err.status, 400);
            assert!(
                err.message.contains(needle),
                "{:?} -> {}",
                needle,
                err.message
            );
        }
    }

    #[test]
    fn legacy_ids_are_stable_per_user_and_unique_per_message() {
        let fields = |user: &str, first_id: u64| {
            let body = format!(
                r#"{{"user":{{"auth_id":"{user}"}},"message_body":"Hi","message_type":0,"business_id":1}}"#
            );
            let req = parse_request(body.as_bytes()).unwrap();
            let answer = ChatAnswer {
                replies: vec![Reply::Text("Hello".into())],
                ..ChatAnswer::default()
            };
            let ctx = AnswerContext {
                ids: &FixedIds(first_id, "iid"),
                received: UNIX_EPOCH,
                business_name: "b",
                bot_name: "bot",
                request_id: "rid",
                route_name: "r",
                business_id: None,
                shape: AnswerShape::Legacy,
            };
            let v: Value = serde_json::from_slice(&render_answer(&req, &answer, &ctx)).unwrap();
            let f = &v[0]["fields"];
            let id_hash = f["id_hash"].as_str().unwrap().to_owned();
            (f["coll_id"].as_u64().unwrap(), id_hash)
        };
        let (a1, h1) = fields("user-a", 1);
        let (a2, h2) = fields("user-a", 2);
        let (b1, h1b) = fields("user-b", 1);
        assert_eq!(a1, a2, "coll_id is the user's, whatever the message");
        assert_ne!(a1, b1, "another user, another coll_id");
        assert!(a1 < 1 << 31 && b1 < 1 << 31, "31 bits, as Haptik's");
        assert_ne!(h1, h2, "id_hash is the message's");
        assert_eq!(h1, h1b, "and depends on the message id alone");
        for h in [&h1, &h2] {
            assert!(
                h.len() == 32
                    && h.bytes()
                        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            );
        }
        // The same on every instance and release: pinned values (xxh3 is specified).
        assert_eq!(
            (a1, h1.as_str()),
            (1882690700, "5e79ae406e85355c521c17117323b0ae")
        );
    }

    #[test]
    fn every_reply_kind_reaches_bot_messages_as_its_text_with_any_characters() {
        let odd =
            "quote \" backslash \\ newline \n tab \t bell \u{7} é 🙂 and enough to span words";
        let button = |t: &str| Button {
            title: t.to_owned().into(),
            payload: None,
        };
        let answer = ChatAnswer {
            replies: vec![
                Reply::Text(odd.into()),
                Reply::Question {
                    title: odd.into(),
                    buttons: vec![button("Y\"es"), button(odd)],
                },
                Reply::Button(button(odd)),
                Reply::Url {
                    url: "https://x.example/a?b=\"c\"".into(),
                    text: Some(odd.into()),
                    title: None,
                },
                Reply::Media {
                    kind: MediaKind::Image,
                    url: "https://x.example/i.png".into(),
                },
            ],
            ..ChatAnswer::default()
        };
        let body = serde_json::json!({"user": {"auth_id": odd}, "message_body": odd,
            "message_type": 0, "business_id": 1});
        let body = serde_json::to_vec(&body).unwrap();
        let req = parse_request(&body).unwrap();
        let ctx = AnswerContext {
            ids: &FixedIds(7, "iid"),
            received: UNIX_EPOCH,
            business_name: odd,
            bot_name: odd,
            request_id: "rid",
            route_name: "r",
            business_id: None,
            shape: AnswerShape::Legacy,
        };
        let v: Value = serde_json::from_slice(&render_answer(&req, &answer, &ctx)).unwrap();
        let want: Vec<String> = answer
            .replies
            .iter()
            .map(|r| reply_text(r).into())
            .collect();
        assert_eq!(v[0]["bot_messages"], serde_json::json!(want));
        for key in ["body", "claim_name", "business_name", "business_via_name"] {
            assert_eq!(v[0]["fields"][key], odd, "{key}");
        }
        assert_eq!(v[0]["fields"]["created_at"], "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn renders_the_seed_shape() {
        let req = parse_request(
            br#"{"user":{"auth_id":"u-1"},"message_body":"Hi","message_type":0,"business_id":494}"#,
        )
        .unwrap();
        let answer = ChatAnswer {
            replies: vec![Reply::Text("Hello there!".into())],
            ..ChatAnswer::default()
        };
        let ctx = AnswerContext {
            ids: &FixedIds(2581793992, "iid"),
            received: UNIX_EPOCH + Duration::from_millis(1_564_385_739_221),
            business_name: "haptikwebsitechannel",
            bot_name: "gogo",
            request_id: "rid",
            route_name: "chan",
            business_id: None,
            shape: AnswerShape::Legacy,
        };
        let ours: Value = serde_json::from_slice(&render_answer(&req, &answer, &ctx)).unwrap();
        let seed: Value = serde_json::from_str(SEED_RESPONSE).unwrap();
        // Same keys, same types, everywhere the seed has them.
        assert_same_shape(&seed, &ours, "$");
        let f = &ours[0]["fields"];
        assert_eq!(f["body"], "Hi");
        assert_eq!(f["created_at"], "2019-07-29T07:35:39.221Z");
        assert_eq!(f["created_at"], seed[0]["fields"]["created_at"]);
        assert_eq!(f["business_id"], 494);
        assert_eq!(f["business_name"], "haptikwebsitechannel");
        assert_eq!(f["claim_name"], "gogo");
        assert_eq!(f["id"], 2581793992u64);
        assert_eq!(ours[0]["pk"], 2581793992u64);
        assert_eq!(ours[0]["bot_messages"], seed[0]["bot_messages"]);
    }

    fn assert_same_shape(seed: &Value, ours: &Value, at: &str) {
        match (seed, ours) {
            (Value::Object(s), Value::Object(o)) => {
                for (k, v) in s {
                    let got = o.get(k).unwrap_or_else(|| panic!("{at}.{k} missing"));
                    assert_same_shape(v, got, &format!("{at}.{k}"));
                }
                assert_eq!(s.len(), o.len(), "{at}: extra keys");
            }
            (Value::Array(s), Value::Array(o)) => {
                assert_eq!(s.len(), o.len(), "{at}: array length");
                for (i, (a, b)) in s.iter().zip(o).enumerate() {
                    assert_same_shape(a, b, &format!("{at}[{i}]"));
                }
            }
            (Value::Number(_), Value::Number(_))
            | (Value::String(_), Value::String(_))
            | (Value::Bool(_), Value::Bool(_))
            | (Value::Null, Value::Null) => {}
            _ => panic!("{at}: seed has {seed}, we have {ours}"),
        }
    }

    #[test]
    fn rich_replies_render_as_documented_text() {
        let bob = Button {
            title: "Bob".into(),
            payload: Some("BOB".into()),
        };
        let cases = [
            (Reply::Text("plain".into()), "plain"),
            (
                Reply::Question {
                    title: "Who?".into(),
                    buttons: vec![
                        Button {
                            title: "Alice".into(),
                            payload: None,
                        },
                        bob.clone(),
                    ],
                },
                "Who?\n[Alice] [Bob]",
            ),
            (Reply::Button(bob), "[Bob]"),
            (
                Reply::Url {
                    url: "https://e.test".into(),
                    text: Some("Example".into()),
                    title: Some("T".into()),
                },
                "Example: https://e.test",
            ),
            (
                Reply::Url {
                    url: "https://e.test".into(),
                    text: None,
                    title: Some("T".into()),
                },
                "T: https://e.test",
            ),
            (
                Reply::Url {
                    url: "https://e.test".into(),
                    text: None,
                    title: None,
                },
                "https://e.test",
            ),
            (
                Reply::Media {
                    kind: MediaKind::Video,
                    url: "https://e.test/v.mp4".into(),
                },
                "https://e.test/v.mp4",
            ),
        ];
        for (reply, want) in cases {
            assert_eq!(reply_text(&reply), want);
        }
    }

    #[test]
    fn renders_requests_for_a_haptik_bot() {
        let req = crate::dialect::csml::parse_request(
            br#"{"client":{"user_id":"u"},"payload":{"content_type":"payload","content":{"payload":"BOB"}}}"#,
        )
        .unwrap();
        let out: Value =
            serde_json::from_slice(&render_request(&req, 343, FlowTriggerPolicy::Reject).unwrap())
                .unwrap();
        assert_eq!(
            out,
            serde_json::json!({"user":{"auth_id":"u"},"message_body":"BOB","message_type":0,"business_id":343})
        );
        let flow = crate::dialect::csml::parse_request(include_bytes!(
            "../../../tests/fixtures/csml/seed-flow-trigger-request.json"
        ))
        .unwrap();
        let err = render_request(&flow, 1, FlowTriggerPolicy::Reject).unwrap_err();
        assert_eq!((err.status, err.reason), (422, Reason::Untranslatable));
        let out: Value =
            serde_json::from_slice(&render_request(&flow, 1, FlowTriggerPolicy::Text).unwrap())
                .unwrap();
        assert_eq!(out["message_body"], "some-flow-id");
    }

    #[test]
    fn parses_both_answer_shapes_and_errors() {
        // The seed's own legacy answer.
        let a = parse_answer(200, SEED_RESPONSE.as_bytes()).unwrap();
        assert_eq!(a.replies, vec![Reply::Text("Hello there!".into())]);
        assert!(a.raw.is_none());
        // The current shape, from the vendor's documentation.
        let current = br#"{"version":"1.0","timestamp":"2018-10-04T12:41:27.980Z","agent":{"id":4415,"name":"gogo","profile_image":"x","is_automated":true},"message":[{"id":1982371,"body":{"text":"Hi","type":"TEXT","data":{"quick_replies":[]}}}]}"#;
        let a = parse_answer(200, current).unwrap();
        assert_eq!(a.replies, vec![Reply::Text("Hi".into())]);
        assert_eq!(a.bot_id.as_deref(), Some("gogo"));
        assert_eq!(a.raw.as_ref().map(|r| r.1.len()), Some(1));
        // Errors, with any status.
        for status in [200, 401, 403] {
            let e =
                parse_answer(status, br#"{"error_message":"invalid token provided"}"#).unwrap_err();
            assert_eq!(e.status, 502);
            assert!(
                e.message.contains("invalid token provided"),
                "{}",
                e.message
            );
        }
        assert_eq!(
            parse_answer(500, b"").unwrap_err().reason,
            Reason::BackendStatus
        );
        assert_eq!(
            parse_answer(200, b"nope").unwrap_err().reason,
            Reason::BackendBadAnswer
        );
    }

    #[test]
    fn answers_that_are_not_haptik_name_the_field_never_the_bot() {
        const SECRET: &str = "SECRET-haptik";
        let not = "the backend answer is not a Haptik answer: ";
        let cases = [
            (
                format!("<p>{SECRET}</p>"),
                format!("{not}expected the legacy array or an HSL answer object"),
            ),
            (
                format!(r#"[{{"bot_messages":"{SECRET}"}}]"#),
                format!("{not}`[0].bot_messages` has the wrong type"),
            ),
            (
                format!(r#"{{"message":[{{"body":{{"text":"{SECRET}"}}}}]}}"#),
                format!("{not}`message[0].body` is missing the field `type`"),
            ),
            (
                format!(
                    r#"{{"message":[{{"body":{{"text":"a","type":"TEXT","data":
                    {{"quick_replies":[{{"actionable_text":["{SECRET}"]}}]}}}}}}]}}"#
                ),
                format!("{not}`message[0].body.data.quick_replies[0].actionable_text` has the wrong type"),
            ),
            (
                format!(r#"{{"message":[{{"body":"{SECRET}"}}]}}"#),
                format!("{not}`message[0].body` has the wrong type"),
            ),
        ];
        for (body, want) in cases {
            let e = parse_answer(200, body.as_bytes()).unwrap_err();
            assert_eq!(
                (e.status, e.reason, &*e.message),
                (502, Reason::BackendBadAnswer, &*want),
                "{body}"
            );
        }
        // A bot's own error text is only the detail.
        let e =
            parse_answer(500, format!(r#"{{"error_message":"{SECRET}"}}"#).as_bytes()).unwrap_err();
        assert!(!e.message.contains(SECRET), "{}", e.message);
        assert!(e.detail.as_deref().unwrap().contains(SECRET));
    }

    #[test]
    fn renders_the_current_shape() {
        let req = parse_request(SEED_REQUEST.as_bytes()).unwrap();
        let answer = ChatAnswer {
            replies: vec![
                Reply::Text("Hi".into()),
                Reply::Media {
                    kind: MediaKind::Image,
                    url: "https://e.test/i.png".into(),
                },
            ],
            ..ChatAnswer::default()
        };
        let ctx = AnswerContext {
            ids: &FixedIds(10, "iid"),
            received: UNIX_EPOCH + Duration::from_millis(1_538_656_887_980),
            business_name: "b",
            bot_name: "gogo",
            request_id: "rid",
            route_name: "chan",
            business_id: None,
            shape: AnswerShape::Hsl,
        };
        let v: Value = serde_json::from_slice(&render_answer(&req, &answer, &ctx)).unwrap();
        assert_eq!(v["version"], "1.0");
        assert_eq!(v["timestamp"], "2018-10-04T12:41:27.980Z");
        assert_eq!(v["agent"]["name"], "gogo");
        assert_eq!(v["agent"]["is_automated"], true);
        assert_eq!(v["message"][0]["id"], 10);
        assert_eq!(v["message"][1]["id"], 11);
        assert_eq!(
            v["message"][0]["body"],
            serde_json::json!({"text":"Hi","type":"TEXT","data":{"quick_replies":[]}})
        );
        assert_eq!(v["message"][1]["body"]["type"], "CAROUSEL");
        assert_eq!(ids_needed(&answer), 2);
    }

    /// From the `answer_hsl` fuzz target: a Haptik bot's own HSL bodies reach a Haptik caller
    /// verbatim, escapes included, even a lone surrogate (`"\udbbb"`) in a field the proxy does not
    /// read: the JSON grammar allows it (and most parsers read it); serde_json's strict string
    /// decoding would refuse it. The caller gets exactly what the bot said, as without the proxy.
    #[test]
    fn own_hsl_bodies_pass_through_verbatim_odd_escapes_included() {
        let body = br#"{"version":"1.0","message":[{"id":1,"body":{"text":"Hi","type":"TEXT","x":"\udbbb\r"}}]}"#;
        let answer = parse_answer(200, body).unwrap();
        assert_eq!(answer.replies, vec![Reply::Text("Hi".into())]);
        let req = parse_request(SEED_REQUEST.as_bytes()).unwrap();
        let ctx = AnswerContext {
            ids: &FixedIds(10, "iid"),
            received: UNIX_EPOCH,
            business_name: "b",
            bot_name: "gogo",
            request_id: "rid",
            route_name: "chan",
            business_id: None,
            shape: AnswerShape::Hsl,
        };
        let out = render_answer(&req, &answer, &ctx);
        let out = std::str::from_utf8(&out).unwrap();
        assert!(
            out.contains(r#""body":{"text":"Hi","type":"TEXT","x":"\udbbb\r"}"#),
            "{out}"
        );
    }

    #[test]
    fn error_body_is_haptiks() {
        let body = render_error(&ProxyError::unauthorized("invalid authorization details"));
        assert_eq!(
            body,
            br#"{"error_message":"invalid authorization details"}"#
        );
    }

    #[test]
    fn url_check() {
        assert!(is_http_url("https://a.b/c"));
        assert!(is_http_url("http://a"));
        assert!(!is_http_url("https://"));
        assert!(!is_http_url("ftp://a"));
        assert!(!is_http_url("http:///x"));
    }

    #[test]
    fn a_legacy_string_holding_hsl_is_that_reply() {
        let hsl = r#"{"text":"Pick","type":"TEXT","data":{"quick_replies":[{"actionable_text":"Yes","is_default":0,"type":"TEXT_ONLY","payload":{"message":"YES","gogo_message":""}}]}}"#;
        let body = serde_json::to_vec(&serde_json::json!([{
            "bot_messages": [hsl, "{\"looks\": \"like json\"}", "{not json", "plain"]
        }]))
        .unwrap();
        let a = parse_answer(200, &body).unwrap();
        assert_eq!(
            a.replies,
            vec![
                Reply::Question {
                    title: "Pick".into(),
                    buttons: vec![Button {
                        title: "Yes".into(),
                        payload: Some("YES".into())
                    }]
                },
                Reply::Text("{\"looks\": \"like json\"}".into()),
                Reply::Text("{not json".into()),
                Reply::Text("plain".into()),
            ]
        );
    }

    #[test]
    fn refusals_about_the_caller_keep_their_status_and_never_the_bots_text() {
        let e = refusal(403, Some("user is not registered"));
        assert_eq!(
            (e.status, e.reason, &*e.message),
            (403, Reason::Forbidden, "user is not registered")
        );
        let e = refusal(400, Some("Invalid business_id provided"));
        assert_eq!((e.status, e.reason), (400, Reason::UnknownTarget));
        assert_eq!(e.message, "invalid business_id provided");
        let e = refusal(403, Some("business \"343\" is inactive"));
        assert_eq!((e.status, &*e.message), (403, "the business is inactive"));
        let e = refusal(400, Some("SECRET free text"));
        assert_eq!(
            (e.status, &*e.message),
            (400, "the bot refused the request as invalid")
        );
        for (status, msg) in [
            (401, "invalid authorization details"),
            (403, "invalid token provided"),
        ] {
            let e = refusal(status, Some(msg));
            assert_eq!(e.status, 502, "{msg}");
        }
        let e = refusal(401, Some("SECRET"));
        assert_eq!(e.status, 502);
        assert!(!e.message.contains("SECRET"));
        assert_eq!(refusal(500, None).status, 502);
    }
}
