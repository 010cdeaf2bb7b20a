//! CSML's Chat API dialect: requests and answers as a CSML Studio client or bot sends them.
//!
//! Request: `{"client":{"user_id"},"metadata":{…},"request_id","payload":{"content_type","content"}}`.
//! Answer: `{"request_id","interaction_id","messages":[{"conversation_id","direction","interaction_order",
//! "payload"}],"client":{"bot_id","channel_id","user_id"},"received_at","is_authorized"}`.
//! Message payloads become canonical [`Reply`]s; `typing` and `wait` are presentation hints and are
//! skipped, `object`, `payload` and unknown types have no canonical form and are counted as dropped
//! (a CSML caller still gets them, from [`ChatAnswer::raw`]), and an `error` message (how the engine
//! reports a bot error, with HTTP 200) fails the answer.

use std::borrow::Cow;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::auth::{
    ApiKeyAuth, ApiKeyPresented, AuthReason, ClientCredential, Denied, Grant, Presented,
};
use crate::config::{header_safe, ConfigError, SecretSource};
use crate::delivery::policy::{self, CallbackKeys};
use crate::dialect::bad_answer::{excerpt, Expected};
use crate::dialect::haptik::is_http_url;
use crate::dialect::json_in::{once, JsonIn};
use crate::dialect::json_out::JsonOut;
use crate::dialect::{
    from_json, settings, strict_raw, AnswerContext, AnswerShape, Bot, BotDialect,
    BotRequestContext, CallerDialect, ClientEntry, Detection, Outgoing, RequestHead,
};
use crate::error::{json_error, status_phrase, ProxyError, Reason};
use crate::model::{Button, ChatAnswer, ChatRequest, Content, MediaKind, RawKind, Reply};
use crate::signing::{split_key, HmacKey, KeyAuth};

// ---------------------------------------------------------------------------------------------
// Requests

/// The `metadata` object sent to a CSML bot.
pub(crate) enum MetadataOut<'a> {
    /// The caller's own metadata, passed through untouched.
    Raw(&'a RawValue),
    /// Made by the proxy: the Haptik business id, when there is one.
    Made { business_id: Option<i64> },
}

/// The `payload` of a request sent to a CSML bot: the caller's own, or made from the canonical content.
pub(crate) enum PayloadOut<'a> {
    Raw(&'a RawValue),
    Made {
        content_type: &'static str,
        content: ContentOut<'a>,
    },
}

pub(crate) enum ContentOut<'a> {
    Text(&'a str),
    Url(&'a str),
    Payload(&'a str),
    FlowTrigger {
        flow_id: &'a str,
        close_flows: Option<bool>,
    },
}

impl MetadataOut<'_> {
    pub(crate) fn write(&self, out: &mut JsonOut) {
        match self {
            MetadataOut::Raw(raw) => out.value(raw),
            MetadataOut::Made { business_id: None } => out.raw("{}"),
            MetadataOut::Made {
                business_id: Some(id),
            } => out.raw(r#"{"business_id":"#).i64(*id).raw("}"),
        };
    }
}

impl PayloadOut<'_> {
    pub(crate) fn write(&self, out: &mut JsonOut) {
        let (content_type, content) = match self {
            PayloadOut::Raw(raw) => {
                out.value(raw);
                return;
            }
            PayloadOut::Made {
                content_type,
                content,
            } => (content_type, content),
        };
        out.raw(r#"{"content_type":"#)
            .str(content_type)
            .raw(r#","content":{"#);
        match content {
            ContentOut::Text(text) => {
                out.raw(r#""text":"#).str(text);
            }
            ContentOut::Url(url) => {
                out.raw(r#""url":"#).str(url);
            }
            ContentOut::Payload(payload) => {
                out.raw(r#""payload":"#).str(payload);
            }
            ContentOut::FlowTrigger {
                flow_id,
                close_flows,
            } => {
                out.raw(r#""flow_id":"#).str(flow_id);
                if let Some(close) = close_flows {
                    out.raw(r#","close_flows":"#).bool(*close);
                }
            }
        }
        out.raw("}}");
    }
}

/// The metadata and payload of a canonical request, as CSML (Chat API and engine) wants them.
pub(crate) fn request_parts<'a>(req: &'a ChatRequest<'_>) -> (MetadataOut<'a>, PayloadOut<'a>) {
    let (content_type, content) = match &req.content {
        Content::Text(t) => ("text", ContentOut::Text(t)),
        Content::Media { kind, url } => (kind.as_str(), ContentOut::Url(url)),
        Content::Url(url) => ("url", ContentOut::Url(url)),
        Content::Payload(p) => ("payload", ContentOut::Payload(p)),
        Content::FlowTrigger {
            flow_id,
            close_flows,
        } => (
            "flow_trigger",
            ContentOut::FlowTrigger {
                flow_id,
                close_flows: *close_flows,
            },
        ),
    };
    let metadata = match req.metadata {
        Some(raw) => MetadataOut::Raw(raw),
        None => MetadataOut::Made {
            business_id: req.business_id,
        },
    };
    let payload = match req.raw_payload {
        Some(raw) => PayloadOut::Raw(raw),
        None => PayloadOut::Made {
            content_type,
            content,
        },
    };
    (metadata, payload)
}

/// Renders the canonical request as a CSML Chat API request body.
///
/// `metadata` is the caller's own when it sent one (CSML callers), else carries the Haptik
/// `business_id` when there is one.
pub fn render_request(req: &ChatRequest<'_>, request_id: &str) -> Vec<u8> {
    let (metadata, payload) = request_parts(req);
    let mut out = JsonOut::with_capacity(160 + req.user_id.len() + request_id.len());
    out.raw(r#"{"client":{"user_id":"#)
        .str(&req.user_id)
        .raw(r#"},"metadata":"#);
    metadata.write(&mut out);
    out.raw(r#","request_id":"#)
        .str(request_id)
        .raw(r#","payload":"#);
    payload.write(&mut out);
    out.raw("}");
    out.finish()
}

#[derive(Deserialize)]
struct RequestIn<'a> {
    #[serde(borrow)]
    client: ClientIn<'a>,
    #[serde(borrow, default)]
    metadata: Option<&'a RawValue>,
    #[serde(borrow, default)]
    request_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    payload: &'a RawValue,
    /// Async mode: where the bot's messages go (checked against the credential's allow-list by
    /// the shell; never passed on to a bot).
    #[serde(borrow, default)]
    callback_url: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ClientIn<'a> {
    #[serde(borrow)]
    user_id: Cow<'a, str>,
}

#[derive(Deserialize)]
struct PayloadIn<'a> {
    #[serde(borrow)]
    content_type: Cow<'a, str>,
    #[serde(borrow)]
    content: &'a RawValue,
}

#[derive(Deserialize)]
struct PayloadTextIn<'a> {
    #[serde(borrow)]
    payload: Cow<'a, str>,
}

#[derive(Deserialize)]
struct FlowTriggerIn<'a> {
    #[serde(borrow)]
    flow_id: Cow<'a, str>,
    #[serde(default)]
    close_flows: Option<bool>,
}

fn request_content<'a, T: Deserialize<'a>>(raw: &'a RawValue, kind: &str) -> Result<T, ProxyError> {
    serde_json::from_str(raw.get()).map_err(|e| {
        ProxyError::bad_request(format!(
            "invalid field `payload.content` for content_type `{kind}`: {e}"
        ))
    })
}

fn media_kind(kind: &str) -> Option<MediaKind> {
    Some(match kind {
        "image" => MediaKind::Image,
        "video" => MediaKind::Video,
        "audio" => MediaKind::Audio,
        "file" => MediaKind::File,
        _ => return None,
    })
}

/// A field the message is made of: refused when empty, as a bot of another dialect would refuse it
/// (Haptik's `message_body`, Rasa's `message`) or get a message with nothing in it.
fn non_empty<'a>(s: Cow<'a, str>, field: &str) -> Result<Cow<'a, str>, ProxyError> {
    if s.is_empty() {
        return Err(ProxyError::bad_request(format!(
            "invalid field `{field}`: must not be empty"
        )));
    }
    Ok(s)
}

/// Parses a CSML Chat API request body into the canonical request.
///
/// 400s name the field: malformed JSON, missing `client.user_id`, `payload.content_type` or
/// `payload.content`, an unknown content type, content that does not fit its type, an empty text,
/// button payload or flow id, a media or url message without an http(s) `url`, a `metadata` that is
/// not an object, a `metadata` or `payload` a bot's JSON reader would refuse (a number out of range,
/// a lone surrogate escape: both are passed on as written, see `strict_raw`).
pub fn parse_request(body: &[u8]) -> Result<ChatRequest<'_>, ProxyError> {
    let wire: RequestIn<'_> = from_json(body).map_err(|_| json_error::<RequestIn<'_>>(body))?;
    if wire.client.user_id.is_empty() {
        return Err(ProxyError::bad_request(
            "invalid field `client.user_id`: must not be empty",
        ));
    }
    if let Some(m) = wire.metadata {
        if !m.get().starts_with('{') {
            return Err(ProxyError::bad_request(
                "invalid field `metadata`: must be an object",
            ));
        }
        strict_raw::check(m, "metadata")?;
    }
    let payload: PayloadIn<'_> = serde_json::from_str(wire.payload.get())
        .map_err(|e| ProxyError::bad_request(format!("invalid field `payload`: {e}")))?;
    strict_raw::check(wire.payload, "payload")?;
    let raw = payload.content;
    let kind = &*payload.content_type;
    let url_of = |raw| -> Result<Cow<'_, str>, ProxyError> {
        let u: UrlIn<'_> = request_content(raw, kind)?;
        if !is_http_url(&u.url) {
            return Err(ProxyError::bad_request(format!(
                "invalid field `payload.content.url`: not an http(s) URL for content_type `{kind}`"
            )));
        }
        Ok(u.url)
    };
    let content = match kind {
        "text" => Content::Text(non_empty(
            request_content::<TextIn<'_>>(raw, kind)?.text,
            "payload.content.text",
        )?),
        "url" => Content::Url(url_of(raw)?),
        "payload" => Content::Payload(non_empty(
            request_content::<PayloadTextIn<'_>>(raw, kind)?.payload,
            "payload.content.payload",
        )?),
        "flow_trigger" => {
            let f: FlowTriggerIn<'_> = request_content(raw, kind)?;
            Content::FlowTrigger {
                flow_id: non_empty(f.flow_id, "payload.content.flow_id")?,
                close_flows: f.close_flows,
            }
        }
        other => match media_kind(other) {
            Some(kind) => Content::Media {
                kind,
                url: url_of(raw)?,
            },
            None => {
                return Err(ProxyError::bad_request(format!(
                    "invalid field `payload.content_type`: `{other}` is not one of text, image, video, audio, file, url, payload, flow_trigger"
                )))
            }
        },
    };
    Ok(ChatRequest {
        user_id: wire.client.user_id,
        content,
        business_id: None,
        message_type: 0,
        request_id: wire.request_id,
        metadata: wire.metadata,
        raw_payload: Some(wire.payload),
        callback_url: wire.callback_url,
    })
}

// ---------------------------------------------------------------------------------------------
// Answers

/// A CSML answer's envelope; `P` is how each message payload is read: raw (`&RawValue`, kept for a
/// CSML caller) or straight into its type ([`TypedPayload`]).
#[derive(Deserialize)]
#[serde(bound(deserialize = "P: Deserialize<'de>"))]
struct AnswerIn<'a, P> {
    #[serde(borrow)]
    messages: Vec<MessageIn<'a, P>>,
    #[serde(borrow, default)]
    client: Option<AnswerClientIn<'a>>,
    #[serde(default)]
    conversation_end: Option<bool>,
}

#[derive(Deserialize)]
struct AnswerClientIn<'a> {
    #[serde(borrow, default)]
    bot_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    channel_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(bound(deserialize = "P: Deserialize<'de>"))]
struct MessageIn<'a, P> {
    #[serde(borrow, default)]
    conversation_id: Option<Cow<'a, str>>,
    payload: P,
}

#[derive(Deserialize)]
struct TextIn<'a> {
    #[serde(borrow)]
    text: Cow<'a, str>,
}

#[derive(Deserialize)]
struct UrlIn<'a> {
    #[serde(borrow)]
    url: Cow<'a, str>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    title: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ButtonIn<'a> {
    #[serde(borrow)]
    title: Cow<'a, str>,
    #[serde(borrow, default)]
    payload: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WrappedButtonIn<'a> {
    #[serde(borrow)]
    content: ButtonIn<'a>,
}

#[derive(Deserialize)]
struct QuestionIn<'a> {
    #[serde(borrow)]
    title: Cow<'a, str>,
    #[serde(borrow, default)]
    buttons: Vec<WrappedButtonIn<'a>>,
}

#[derive(Deserialize)]
struct ErrorIn<'a> {
    #[serde(borrow)]
    error: Cow<'a, str>,
}

impl<'a> From<ButtonIn<'a>> for Button<'a> {
    fn from(b: ButtonIn<'a>) -> Self {
        Button {
            title: b.title,
            payload: b.payload,
        }
    }
}

/// A message payload's content, read into the type its `content_type` names (one table for both
/// ways of reading an answer, below).
enum TypedPayload<'a> {
    Reply(Reply<'a>),
    /// `typing` and `wait`: presentation hints, skipped.
    Hint,
    /// A type with no canonical form (`object`, `payload`, unknown): counted as dropped.
    Unknown,
    /// An `error` message: the bot failed.
    BotError(Cow<'a, str>),
}

/// Reads a payload's `content` as the type `.0` (the payload's `content_type`) names.
struct ContentSeed<'k>(&'k str);

impl<'de> DeserializeSeed<'de> for ContentSeed<'_> {
    type Value = TypedPayload<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<TypedPayload<'de>, D::Error> {
        let reply = match self.0 {
            "text" => Reply::Text(TextIn::deserialize(d)?.text),
            "question" => {
                let q = QuestionIn::deserialize(d)?;
                Reply::Question {
                    title: q.title,
                    buttons: q.buttons.into_iter().map(|b| b.content.into()).collect(),
                }
            }
            "button" => Reply::Button(ButtonIn::deserialize(d)?.into()),
            "url" => {
                let u = UrlIn::deserialize(d)?;
                Reply::Url {
                    url: u.url,
                    text: u.text,
                    title: u.title,
                }
            }
            "typing" | "wait" => {
                IgnoredAny::deserialize(d)?;
                return Ok(TypedPayload::Hint);
            }
            "error" => return Ok(TypedPayload::BotError(ErrorIn::deserialize(d)?.error)),
            other => match media_kind(other) {
                Some(kind) => Reply::Media {
                    kind,
                    url: UrlIn::deserialize(d)?.url,
                },
                None => {
                    IgnoredAny::deserialize(d)?;
                    return Ok(TypedPayload::Unknown);
                }
            },
        };
        Ok(TypedPayload::Reply(reply))
    }
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum PayloadField {
    ContentType,
    Content,
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct Kind<'a>(#[serde(borrow)] Cow<'a, str>);

/// A whole payload in one pass: when `content_type` comes before `content` (as CSML writes it), the
/// content is read straight into its type; otherwise it is kept raw and read once the type is known.
impl<'de: 'a, 'a> Deserialize<'de> for TypedPayload<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PayloadVisitor;
        impl<'de> Visitor<'de> for PayloadVisitor {
            type Value = TypedPayload<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a CSML message payload")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut kind: Option<Cow<'de, str>> = None;
                let mut parsed = None;
                let mut deferred: Option<&'de RawValue> = None;
                while let Some(field) = map.next_key::<PayloadField>()? {
                    match field {
                        PayloadField::ContentType if kind.is_some() => {
                            return Err(de::Error::duplicate_field("content_type"))
                        }
                        PayloadField::ContentType => kind = Some(map.next_value::<Kind<'de>>()?.0),
                        PayloadField::Content if parsed.is_some() || deferred.is_some() => {
                            return Err(de::Error::duplicate_field("content"))
                        }
                        PayloadField::Content => match &kind {
                            Some(k) => parsed = Some(map.next_value_seed(ContentSeed(k))?),
                            None => deferred = Some(map.next_value()?),
                        },
                        PayloadField::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                let kind = kind.ok_or_else(|| de::Error::missing_field("content_type"))?;
                match (parsed, deferred) {
                    (Some(p), _) => Ok(p),
                    (None, Some(raw)) => ContentSeed(&kind)
                        .deserialize(&mut serde_json::Deserializer::from_str(raw.get()))
                        .map_err(de::Error::custom),
                    (None, None) => Err(de::Error::missing_field("content")),
                }
            }
        }
        d.deserialize_map(PayloadVisitor)
    }
}

/// A CSML answer, for the messages about one that is not ([`Expected`]).
const CSML_ANSWER: Expected = Expected {
    name: "CSML",
    shape: "a JSON object with a `messages` array",
    opens: b"{",
    keys: &[
        "messages",
        "client",
        "conversation_end",
        "bot_id",
        "channel_id",
        "conversation_id",
        "payload",
        "content_type",
        "content",
        "text",
        "url",
        "title",
        "buttons",
        "error",
    ],
};

/// Reads one raw message payload into its type, naming the message and field at fault.
fn parse_payload<'a>(payload: &'a RawValue, i: usize) -> Result<TypedPayload<'a>, ProxyError> {
    let p: PayloadIn<'a> = serde_json::from_str(payload.get()).map_err(|_| {
        let at = format!("messages[{i}].payload");
        CSML_ANSWER.part(PhantomData::<PayloadIn<'_>>, payload.get().as_bytes(), &at)
    })?;
    let (kind, content) = (&*p.content_type, p.content.get());
    ContentSeed(kind)
        .deserialize(&mut serde_json::Deserializer::from_str(content))
        .map_err(|_| {
            let at = format!("messages[{i}].payload.content");
            CSML_ANSWER.part(ContentSeed(kind), content.as_bytes(), &at)
        })
}

impl<'a, P> AnswerIn<'a, P> {
    /// The canonical answer: the envelope's fields, and each message's payload read by `read`
    /// (an error fails the answer) and added as a reply, skipped or counted as dropped. An `error`
    /// message fails the answer with what `bot_error` makes of the bot's message.
    fn into_answer<E>(
        self,
        mut read: impl FnMut(usize, P) -> Result<TypedPayload<'a>, E>,
        bot_error: impl Fn(&str) -> E,
    ) -> Result<ChatAnswer<'a>, E> {
        let mut answer = ChatAnswer {
            replies: Vec::with_capacity(self.messages.len()),
            conversation_end: self.conversation_end,
            ..ChatAnswer::default()
        };
        if let Some(c) = self.client {
            answer.bot_id = c.bot_id;
            answer.channel_id = c.channel_id;
        }
        for (i, m) in self.messages.into_iter().enumerate() {
            if answer.conversation_id.is_none() {
                answer.conversation_id = m.conversation_id;
            }
            match read(i, m.payload)? {
                TypedPayload::Reply(r) => answer.replies.push(r),
                TypedPayload::Hint => {}
                TypedPayload::Unknown => answer.dropped += 1,
                TypedPayload::BotError(e) => return Err(bot_error(&e)),
            }
        }
        Ok(answer)
    }
}

/// Parses a successful (2xx) CSML answer body (Chat API or engine `/run`) into the canonical answer.
/// With `keep_raw`, the answer also carries the bot's own message payloads (for a CSML caller, who
/// gets them verbatim).
///
/// A body that is not a CSML answer, or a message whose content does not fit its `content_type`, is a
/// 502 (`backend_bad_answer`) naming the field at fault; an `error` message is a 502 (`bot_error`).
/// Neither message repeats anything the bot wrote: serde's words and the bot's error text are the
/// error's detail, for the debug log.
pub fn parse_answer(body: &[u8], keep_raw: bool) -> Result<ChatAnswer<'_>, ProxyError> {
    if !keep_raw {
        // One pass over the body. Anything wrong is read again step by step below, which names
        // the message and field at fault.
        if let Some(answer) = parse_answer_typed(body) {
            return Ok(answer);
        }
    }
    parse_answer_kept(body)
}

/// The answer in one pass, without the raw payloads: `None` for any answer that is not simply good.
/// [`JsonIn`] reads the common shape; serde_json what it leaves. A body that is not UTF-8 is left
/// to the step-by-step reading, which refuses it (serde_json would pass over bad bytes in a key it
/// ignores).
fn parse_answer_typed(body: &[u8]) -> Option<ChatAnswer<'_>> {
    let text = std::str::from_utf8(body).ok()?;
    let wire = match read_answer(text) {
        Some(wire) => wire,
        None => serde_json::from_str::<AnswerIn<'_, TypedPayload<'_>>>(text).ok()?,
    };
    wire.into_answer(|_, p| Ok(p), |_| ()).ok()
}

/// The envelope and each payload in one pass with [`JsonIn`], as serde reads `AnswerIn` with
/// [`TypedPayload`]s; `None` where serde might read it otherwise (see [`JsonIn`]), including a
/// payload whose `content` comes before its `content_type`.
fn read_answer(text: &str) -> Option<AnswerIn<'_, TypedPayload<'_>>> {
    let mut json = JsonIn::new(text);
    let (mut messages, mut client, mut end) = (None, None, None);
    json.object(|json, key| match key {
        "messages" => once(&mut messages, read_messages(json)),
        "client" => once(&mut client, nullable(json, read_answer_client)),
        "conversation_end" => once(&mut end, nullable(json, JsonIn::bool)),
        _ => json.skip(),
    })?;
    json.end()?;
    Some(AnswerIn {
        messages: messages?,
        client: client.flatten(),
        conversation_end: end.flatten(),
    })
}

/// `null` as `None` (serde's reading of an `Option`), else the value `read` reads.
fn nullable<'a, T>(
    json: &mut JsonIn<'a>,
    read: impl FnOnce(&mut JsonIn<'a>) -> Option<T>,
) -> Option<Option<T>> {
    if json.null() {
        return Some(None);
    }
    read(json).map(Some)
}

fn read_messages<'a>(json: &mut JsonIn<'a>) -> Option<Vec<MessageIn<'a, TypedPayload<'a>>>> {
    // Answers carry a few messages: room for them without growing.
    let mut messages = Vec::with_capacity(4);
    json.array(|json| {
        let (mut conversation_id, mut payload) = (None, None);
        json.object(|json, key| match key {
            "conversation_id" => once(&mut conversation_id, nullable(json, JsonIn::string)),
            "payload" => once(&mut payload, read_payload(json)),
            _ => json.skip(),
        })?;
        messages.push(MessageIn {
            conversation_id: conversation_id.flatten(),
            payload: payload?,
        });
        Some(())
    })?;
    Some(messages)
}

fn read_answer_client<'a>(json: &mut JsonIn<'a>) -> Option<AnswerClientIn<'a>> {
    let (mut bot_id, mut channel_id) = (None, None);
    json.object(|json, key| match key {
        "bot_id" => once(&mut bot_id, nullable(json, JsonIn::string)),
        "channel_id" => once(&mut channel_id, nullable(json, JsonIn::string)),
        _ => json.skip(),
    })?;
    Some(AnswerClientIn {
        bot_id: bot_id.flatten(),
        channel_id: channel_id.flatten(),
    })
}

fn read_payload<'a>(json: &mut JsonIn<'a>) -> Option<TypedPayload<'a>> {
    let (mut kind, mut content, mut deferred) = (None::<Cow<'a, str>>, None, None);
    json.object(|json, key| match (key, kind.as_deref()) {
        ("content_type", _) => once(&mut kind, json.string()),
        _ if key == "content" && (content.is_some() || deferred.is_some()) => None,
        ("content", Some(kind)) => once(&mut content, read_content(json, kind)),
        // Content before its type (as in the vendor's own example): read once the type is known.
        ("content", None) => once(&mut deferred, json.skip_raw()),
        _ => json.skip(),
    })?;
    let kind = kind?;
    match (content, deferred) {
        (Some(content), _) => Some(content),
        (None, Some(raw)) => {
            let mut json = JsonIn::new(raw);
            let content = read_content(&mut json, &kind)?;
            json.end().map(|_| content)
        }
        (None, None) => None,
    }
}

/// A payload's `content` as the type `kind` names, as [`ContentSeed`] reads it.
fn read_content<'a>(json: &mut JsonIn<'a>, kind: &str) -> Option<TypedPayload<'a>> {
    let reply = match kind {
        "text" => Reply::Text(read_fields(json, "text", [])?.0),
        "question" => {
            let (mut title, mut buttons) = (None, None);
            json.object(|json, key| match key {
                "title" => once(&mut title, json.string()),
                "buttons" => once(&mut buttons, read_buttons(json)),
                _ => json.skip(),
            })?;
            Reply::Question {
                title: title?,
                buttons: buttons.unwrap_or_default(),
            }
        }
        "button" => Reply::Button(read_button(json)?),
        "url" => {
            let (url, [text, title]) = read_fields(json, "url", ["text", "title"])?;
            Reply::Url { url, text, title }
        }
        "typing" | "wait" => return json.skip().map(|_| TypedPayload::Hint),
        "error" => return Some(TypedPayload::BotError(read_fields(json, "error", [])?.0)),
        other => match media_kind(other) {
            Some(kind) => Reply::Media {
                kind,
                url: read_fields(json, "url", ["text", "title"])?.0,
            },
            None => return json.skip().map(|_| TypedPayload::Unknown),
        },
    };
    Some(TypedPayload::Reply(reply))
}

/// A required string field and `N` optional ones, as [`read_fields`] reads them.
type Fields<'a, const N: usize> = (Cow<'a, str>, [Option<Cow<'a, str>>; N]);

/// An object of string fields: `required`, and each of `optional` (`null` is absent); any other key
/// passed over.
fn read_fields<'a, const N: usize>(
    json: &mut JsonIn<'a>,
    required: &str,
    optional: [&str; N],
) -> Option<Fields<'a, N>> {
    let mut first = None;
    let mut rest: [Option<Option<Cow<'a, str>>>; N] = std::array::from_fn(|_| None);
    json.object(|json, key| {
        if key == required {
            return once(&mut first, json.string());
        }
        match optional.iter().position(|name| *name == key) {
            Some(i) => once(&mut rest[i], nullable(json, JsonIn::string)),
            None => json.skip(),
        }
    })?;
    Some((first?, rest.map(Option::flatten)))
}

fn read_button<'a>(json: &mut JsonIn<'a>) -> Option<Button<'a>> {
    let (title, [payload]) = read_fields(json, "title", ["payload"])?;
    Some(Button { title, payload })
}

/// A question's `buttons`: each `{"content": <button>}`, other keys passed over.
fn read_buttons<'a>(json: &mut JsonIn<'a>) -> Option<Vec<Button<'a>>> {
    let mut buttons = Vec::with_capacity(4);
    json.array(|json| {
        let mut content = None;
        json.object(|json, key| match key {
            "content" => once(&mut content, read_button(json)),
            _ => json.skip(),
        })?;
        buttons.push(content?);
        Some(())
    })?;
    Some(buttons)
}

/// The answer read envelope first, then each payload, keeping the payloads raw.
fn parse_answer_kept(body: &[u8]) -> Result<ChatAnswer<'_>, ProxyError> {
    let wire: AnswerIn<'_, &RawValue> =
        from_json(body).map_err(|_| CSML_ANSWER.body::<AnswerIn<'_, &RawValue>>(body))?;
    let mut raw = Vec::with_capacity(wire.messages.len());
    let mut answer = wire.into_answer(
        |i, payload| {
            raw.push(payload);
            parse_payload(payload, i)
        },
        |e| ProxyError::new(502, Reason::BotError, "the bot reported an error").with_detail(e),
    )?;
    answer.raw = Some((RawKind(NAME), raw));
    Ok(answer)
}

#[derive(Serialize)]
struct AnswerOut<'a> {
    request_id: &'a str,
    interaction_id: &'a str,
    messages: Vec<MessageOut<'a>>,
    client: AnswerClientOut<'a>,
    received_at: String,
    is_authorized: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    conversation_end: Option<bool>,
}

#[derive(Serialize)]
struct AnswerClientOut<'a> {
    bot_id: &'a str,
    channel_id: &'a str,
    user_id: &'a str,
}

#[derive(Serialize)]
struct MessageOut<'a> {
    conversation_id: &'a str,
    direction: &'static str,
    interaction_order: u32,
    payload: PayloadAny<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum PayloadAny<'a> {
    Raw(&'a RawValue),
    Made(ReplyOut<'a>),
}

#[derive(Serialize)]
#[serde(tag = "content_type", content = "content", rename_all = "lowercase")]
enum ReplyOut<'a> {
    Text {
        text: &'a str,
    },
    Question {
        title: &'a str,
        buttons: Vec<ButtonEnvelope<'a>>,
    },
    Button(ButtonOut<'a>),
    Url {
        url: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        text: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        title: Option<&'a str>,
    },
    Image {
        url: &'a str,
    },
    Video {
        url: &'a str,
    },
    Audio {
        url: &'a str,
    },
    File {
        url: &'a str,
    },
}

#[derive(Serialize)]
struct ButtonEnvelope<'a> {
    content_type: &'static str,
    content: ButtonOut<'a>,
}

#[derive(Serialize)]
struct ButtonOut<'a> {
    title: &'a str,
    payload: &'a str,
    accepts: [&'a str; 2],
}

fn button_out<'a>(b: &'a Button<'_>) -> ButtonOut<'a> {
    let payload = b.payload_or_title();
    ButtonOut {
        title: &b.title,
        payload,
        accepts: [&b.title, payload],
    }
}

/// Renders one canonical reply as a CSML message payload.
fn reply_out<'a>(r: &'a Reply<'_>) -> ReplyOut<'a> {
    match r {
        Reply::Text(t) => ReplyOut::Text { text: t },
        Reply::Question { title, buttons } => ReplyOut::Question {
            title,
            buttons: buttons
                .iter()
                .map(|b| ButtonEnvelope {
                    content_type: "button",
                    content: button_out(b),
                })
                .collect(),
        },
        Reply::Button(b) => ReplyOut::Button(button_out(b)),
        Reply::Url { url, text, title } => ReplyOut::Url {
            url,
            text: text.as_deref(),
            title: title.as_deref(),
        },
        Reply::Media { kind, url } => match kind {
            MediaKind::Image => ReplyOut::Image { url },
            MediaKind::Video => ReplyOut::Video { url },
            MediaKind::Audio => ReplyOut::Audio { url },
            MediaKind::File => ReplyOut::File { url },
        },
    }
}

/// Renders the canonical answer in the CSML Chat API answer shape. A CSML backend's own message
/// payloads are passed through verbatim (nothing is lost CSML to CSML); others are translated.
pub fn render_answer(
    req: &ChatRequest<'_>,
    answer: &ChatAnswer<'_>,
    ctx: &AnswerContext<'_>,
) -> Vec<u8> {
    let interaction_id = ctx.ids.interaction_id();
    let conversation_id = answer.conversation_id.as_deref().unwrap_or(&interaction_id);
    // The bot's channel, else the business the request was for, else the route.
    let channel_id: Cow<'_, str> = match (&answer.channel_id, ctx.business_id) {
        (Some(c), _) => Cow::Borrowed(c),
        (None, Some(b)) => Cow::Owned(b.to_string()),
        (None, None) => Cow::Borrowed(ctx.route_name),
    };
    let message = |payload| MessageOut {
        conversation_id,
        direction: "SEND",
        interaction_order: 0,
        payload,
    };
    let messages = match &answer.raw {
        Some((RawKind(NAME), raw)) => raw.iter().map(|p| message(PayloadAny::Raw(p))).collect(),
        _ => answer
            .replies
            .iter()
            .map(|r| message(PayloadAny::Made(reply_out(r))))
            .collect(),
    };
    let out = AnswerOut {
        request_id: req.request_id.as_deref().unwrap_or(ctx.request_id),
        interaction_id: &interaction_id,
        messages,
        client: AnswerClientOut {
            bot_id: answer.bot_id.as_deref().unwrap_or(ctx.bot_name),
            channel_id: &channel_id,
            user_id: &req.user_id,
        },
        received_at: crate::timefmt::rfc3339_millis(ctx.received),
        is_authorized: true,
        conversation_end: answer.conversation_end,
    };
    serde_json::to_vec(&out).expect("csml answer serializes")
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrorOut<'a> {
    status_code: u16,
    error: &'a str,
    message: &'a str,
}

/// Renders an error in the shape CSML's HTTP servers use:
/// `{"statusCode": 401, "error": "Unauthorized", "message": "…"}`.
pub fn render_error(err: &ProxyError) -> Vec<u8> {
    serde_json::to_vec(&ErrorOut {
        status_code: err.status,
        error: status_phrase(err.status),
        message: &err.message,
    })
    .expect("csml error serializes")
}

// ---------------------------------------------------------------------------------------------
// Async mode (`callback_url`)

/// The POSTs that deliver a rendered answer to a callback, as the CSML engine sends them: the
/// answer's envelope once per message, with that message alone, then the envelope with
/// `"messages": []` and `"conversation_end": true`.
pub fn callback_bodies(rendered: &[u8]) -> Vec<String> {
    message_bodies(rendered, true)
}

/// One POST per message of a rendered answer, and with `close` the closing one.
fn message_bodies(rendered: &[u8], close: bool) -> Vec<String> {
    let mut envelope: serde_json::Value =
        serde_json::from_slice(rendered).expect("a rendered answer is JSON");
    let messages = match envelope.get_mut("messages").map(serde_json::Value::take) {
        Some(serde_json::Value::Array(m)) => m,
        _ => Vec::new(),
    };
    let mut bodies = Vec::with_capacity(messages.len() + 1);
    for m in messages {
        envelope["messages"] = serde_json::Value::Array(vec![m]);
        bodies.push(envelope.to_string());
    }
    if close {
        envelope["messages"] = serde_json::Value::Array(Vec::new());
        envelope["conversation_end"] = serde_json::Value::Bool(true);
        bodies.push(envelope.to_string());
    }
    bodies
}

/// The POSTs for a request whose bot failed: one `error` message (how the CSML engine reports a
/// bot error) with the fixed words the caller would have been answered with, then the closing one.
pub fn callback_error_bodies(empty_answer: &[u8], err: &ProxyError) -> Vec<String> {
    let mut envelope: serde_json::Value =
        serde_json::from_slice(empty_answer).expect("a rendered answer is JSON");
    let conversation_id = envelope["interaction_id"].clone();
    envelope["messages"] = serde_json::json!([{
        "conversation_id": conversation_id,
        "direction": "SEND",
        "interaction_order": 0,
        "payload": {"content_type": "error", "content": {"error": err.message}},
    }]);
    callback_bodies(envelope.to_string().as_bytes())
}

/// CSML's async mode: a request with `callback_url`, answered at once with the empty envelope (as
/// the CSML engine does), its messages POSTed one by one.
struct CsmlCallbacks;

impl crate::dialect::AsyncCaller for CsmlCallbacks {
    fn ack(
        &self,
        _req: &ChatRequest<'_>,
        empty: Vec<u8>,
        _message_id: u64,
        _received: std::time::SystemTime,
    ) -> Vec<u8> {
        empty
    }

    fn deliveries(&self, _req: &ChatRequest<'_>, rendered: &[u8], _business: &str) -> Vec<String> {
        callback_bodies(rendered)
    }

    /// Its messages, without the closing POST (which comes with the last part).
    fn partial_deliveries(
        &self,
        _req: &ChatRequest<'_>,
        rendered: &[u8],
        _business: &str,
    ) -> Vec<String> {
        message_bodies(rendered, false)
    }

    fn failure_deliveries(&self, empty: &[u8], err: &ProxyError) -> Option<Vec<String>> {
        Some(callback_error_bodies(empty, err))
    }
}

// ---------------------------------------------------------------------------------------------
// The dialect interface

/// CSML's Chat API, as callers and bots speak it.
pub struct Csml;

/// How a CSML key is used: `x-api-key: KEY|TS` + `x-api-signature` (`signed`), or `x-api-key: KEY`
/// alone (`plain`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    #[default]
    Signed,
    Plain,
}

/// The dialect's name, in configuration, metrics and the auth service's queries.
pub const NAME: &str = "csml";

/// Reads a CSML caller's `x-api-key` and `x-api-signature` headers.
pub fn presented<'h>(
    header: impl Fn(&str) -> Option<&'h [u8]>,
) -> Result<ApiKeyPresented<'h>, Denied> {
    let api_key = header("x-api-key")
        .map(<[u8]>::trim_ascii)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| Denied::new(AuthReason::Missing, "missing x-api-key header"))?;
    let (key, timestamp) = match split_key(api_key) {
        Some((key, ts)) => (key, Some(ts)),
        None => (api_key, None),
    };
    Ok(ApiKeyPresented {
        dialect: NAME,
        api_key,
        key,
        timestamp,
        signature: header("x-api-signature"),
    })
}

/// `[[clients.csml]]`: one CSML caller.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientConfig {
    /// Its API key.
    key: SecretSource,
    /// `signed` (default) or `plain`.
    #[serde(default)]
    auth: AuthMode,
    /// The API secret of a signed key.
    secret: Option<SecretSource>,
    /// Hosts a `callback_url` may name: exact names or IPs, or `*.domain` (absent: no async mode).
    callback_hosts: Option<Vec<String>>,
    /// Accept `http://` callback URLs (default: https only).
    #[serde(default)]
    allow_http_callbacks: bool,
    /// Let callbacks reach loopback, private and link-local addresses (default: refused).
    #[serde(default)]
    allow_private_callbacks: bool,
    /// The key of deliveries' `x-botbridge-signature` (default: the credential's `secret`; required
    /// for `auth = "plain"` credentials with `callback_hosts`).
    callback_secret: Option<SecretSource>,
}

/// A CSML bot's settings (`dialect = "csml"`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BotConfig {
    /// `signed` (default) or `plain`.
    auth: Option<AuthMode>,
    /// The bot's API key.
    api_key: Option<SecretSource>,
    /// The bot's API secret (signed).
    api_secret: Option<SecretSource>,
}

/// A configured CSML Chat API bot.
#[derive(Debug)]
struct CsmlBot {
    auth: KeyAuth,
}

#[derive(Deserialize)]
struct ShapeProbe {
    message_body: Option<IgnoredAny>,
    payload: Option<IgnoredAny>,
    client: Option<IgnoredAny>,
}

/// A CSML API key from its source: non-empty (checked there) and without `|`.
pub(crate) fn api_key(key: &str, src: &SecretSource) -> Result<String, ConfigError> {
    let k = src.resolve(key)?;
    if k.contains('|') {
        return Err(ConfigError::new(key, "must not contain `|`"));
    }
    header_safe(key, &k)?;
    Ok(k)
}

impl CallerDialect for Csml {
    fn api_document(&self) -> &'static str {
        include_str!("../../../docs/openapi/csml.json")
    }

    fn async_caller(&self) -> Option<&dyn crate::dialect::AsyncCaller> {
        Some(&CsmlCallbacks)
    }

    fn name(&self) -> &'static str {
        "csml"
    }

    fn detect(&self, head: &dyn RequestHead) -> Detection {
        if head.header("x-api-key").is_some() {
            Detection::Yes
        } else {
            Detection::No
        }
    }

    fn credential_hint(&self) -> &'static str {
        "CSML (x-api-key [+ x-api-signature])"
    }

    fn detect_body(&self, body: &[u8]) -> bool {
        serde_json::from_slice::<ShapeProbe>(body)
            .is_ok_and(|p| p.message_body.is_none() && p.client.is_some() && p.payload.is_some())
    }

    fn credential<'h>(&self, head: &'h dyn RequestHead) -> Result<Presented<'h>, Denied> {
        presented(|name| head.header(name)).map(Presented::ApiKey)
    }

    fn client(
        &self,
        key: &str,
        name: &str,
        table: toml::Table,
    ) -> Result<ClientEntry, ConfigError> {
        let c: ClientConfig = settings(key, table)?;
        let api_key = api_key(&format!("{key}.key"), &c.key)?;
        let mut demo = None;
        let mut api_secret = None;
        let auth = match (c.auth, &c.secret) {
            (AuthMode::Signed, Some(s)) => {
                let secret = s.resolve(&format!("{key}.secret"))?;
                if api_key == "demo-key" && secret == "demo-secret" {
                    demo = Some(format!("csml key {api_key}"));
                }
                let auth =
                    ApiKeyAuth::Signed(Box::new(HmacKey::new(api_key.clone(), secret.as_bytes())));
                api_secret = Some(secret);
                auth
            }
            (AuthMode::Signed, None) => {
                return Err(ConfigError::new(
                    format!("{key}.secret"),
                    "missing: `auth = \"signed\"` needs the secret",
                ))
            }
            (AuthMode::Plain, None) => ApiKeyAuth::Plain,
            (AuthMode::Plain, Some(_)) => {
                return Err(ConfigError::new(
                    format!("{key}.secret"),
                    "not used with `auth = \"plain\"`; remove it",
                ))
            }
        };
        let callback_secret = match &c.callback_secret {
            Some(s) => Some(s.resolve(&format!("{key}.callback_secret"))?),
            None => api_secret,
        };
        let keys = CallbackKeys {
            hosts: c.callback_hosts,
            allow_http: c.allow_http_callbacks,
            allow_private: c.allow_private_callbacks,
            secret: callback_secret,
        };
        let grant = Grant {
            api_key: Some(auth),
            callbacks: policy::callback_hosts(NAME, key, name, keys)?.map(Arc::new),
            ..Grant::named(name)
        };
        Ok(ClientEntry {
            credential: ClientCredential::ApiKey {
                key: api_key,
                grant,
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

    fn keeps_raw(&self) -> bool {
        true
    }

    fn passes_through(&self, answer: &ChatAnswer<'_>, _shape: AnswerShape) -> bool {
        matches!(answer.raw.as_ref().map(|r| r.0), Some(RawKind(NAME)))
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

impl BotDialect for Csml {
    fn name(&self) -> &'static str {
        "csml"
    }

    fn keys(&self) -> &'static [&'static str] {
        &["auth", "api_key", "api_secret"]
    }

    fn configure(&self, key: &str, table: toml::Table) -> Result<Box<dyn Bot>, ConfigError> {
        let c: BotConfig = settings(key, table)?;
        let src = c.api_key.ok_or_else(|| {
            ConfigError::new(format!("{key}.api_key"), "required by dialect `csml`")
        })?;
        let api_key = api_key(&format!("{key}.api_key"), &src)?;
        let auth = match (c.auth.unwrap_or_default(), &c.api_secret) {
            (AuthMode::Signed, Some(s)) => {
                let secret = s.resolve(&format!("{key}.api_secret"))?;
                KeyAuth::signed(HmacKey::new(api_key, secret.as_bytes()))
            }
            (AuthMode::Signed, None) => {
                return Err(ConfigError::new(
                    format!("{key}.api_secret"),
                    "missing: `auth = \"signed\"` needs the API secret",
                ))
            }
            (AuthMode::Plain, None) => KeyAuth::Plain(api_key),
            (AuthMode::Plain, Some(_)) => {
                return Err(ConfigError::new(
                    format!("{key}.api_secret"),
                    "not used with `auth = \"plain\"`; remove it",
                ))
            }
        };
        Ok(Box::new(CsmlBot { auth }))
    }
}

/// What a CSML bot's non-2xx status becomes: a 400 is about the caller's request and reaches the
/// caller as a 400 with a fixed message; anything else (the proxy's key refused, the bot down) is
/// a 502.
pub fn refusal(status: u16) -> ProxyError {
    if status == 400 {
        ProxyError::new(
            400,
            Reason::BadRequest,
            "the bot refused the request as invalid",
        )
    } else {
        ProxyError::new(
            502,
            Reason::BackendStatus,
            format!("the backend answered HTTP {status}"),
        )
    }
}

impl Bot for CsmlBot {
    fn dialect(&self) -> &'static str {
        "csml"
    }

    fn render_request(
        &self,
        req: &ChatRequest<'_>,
        ctx: &BotRequestContext<'_>,
    ) -> Result<Vec<u8>, ProxyError> {
        Ok(render_request(req, ctx.request_id))
    }

    fn sign(&self, out: &Outgoing<'_>, add: &mut dyn FnMut(&'static str, &str)) {
        self.auth.headers(out.unix_secs, add);
    }

    fn parse_answer<'b>(
        &self,
        status: u16,
        body: &'b [u8],
        keep_raw: bool,
    ) -> Result<ChatAnswer<'b>, ProxyError> {
        if !(200..300).contains(&status) {
            return Err(refusal(status).with_detail(excerpt(body)));
        }
        parse_answer(body, keep_raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const SEED_REQUEST: &str = include_str!("../../../tests/fixtures/csml/seed-request.json");
    const SEED_RESPONSE: &str = include_str!("../../../tests/fixtures/csml/seed-response.json");
    const SEED_FLOW: &str =
        include_str!("../../../tests/fixtures/csml/seed-flow-trigger-request.json");
    const ENGINE_HELLO: &str =
        include_str!("../../../tests/fixtures/csml-engine/run-response-hello.json");
    const ENGINE_MEDIA: &str =
        include_str!("../../../tests/fixtures/csml-engine/run-response-media.json");

    #[test]
    fn renders_the_seed_request_shape() {
        let req = ChatRequest {
            user_id: "some-user-id".into(),
            content: Content::Text("Hello".into()),
            business_id: None,
            message_type: 0,
            request_id: None,
            metadata: None,
            raw_payload: None,
            callback_url: None,
        };
        let ours: Value = serde_json::from_slice(&render_request(&req, "random-id")).unwrap();
        let mut seed: Value = serde_json::from_str(SEED_REQUEST).unwrap();
        // The seed's metadata is the client's own; without a business id ours is empty.
        seed["metadata"] = json!({});
        assert_eq!(ours, seed);
    }

    #[test]
    fn seed_requests_round_trip() {
        for text in [SEED_REQUEST, SEED_FLOW] {
            let req = parse_request(text.as_bytes()).unwrap();
            assert_eq!(req.request_id.as_deref(), Some("random-id"));
            let ours: Value = serde_json::from_slice(&render_request(&req, "random-id")).unwrap();
            let seed: Value = serde_json::from_str(text).unwrap();
            assert_eq!(ours, seed);
        }
    }

    /// An answer read by the one-pass reader and by serde, as canonical answers (`None`: refused).
    fn both_readers(body: &str) -> (Option<String>, Option<String>) {
        let show = |w: AnswerIn<'_, TypedPayload<'_>>| {
            let a = w.into_answer(|_, p| Ok::<_, String>(p), |e| e.to_owned());
            format!("{a:?}")
        };
        let ours = read_answer(body).map(show);
        let serde = from_json::<AnswerIn<'_, TypedPayload<'_>>>(body.as_bytes())
            .ok()
            .map(show);
        (ours, serde)
    }

    #[test]
    fn the_one_pass_reader_reads_what_serde_reads() {
        // What CSML writes: the reader must take these itself.
        for body in [SEED_RESPONSE, ENGINE_HELLO, ENGINE_MEDIA] {
            let (ours, serde) = both_readers(body);
            assert!(ours.is_some(), "the one-pass reader gave up on {body}");
            assert_eq!(ours, serde);
        }
        let odd = [
            r#"{"messages":[{"conversation_id":null,"payload":{"content_type":"text","content":{"text":"a\"b\u00e9 \ud83d\ude00","x":[1,{"y":null}]}}}],"client":null,"conversation_end":true}"#,
            r#"{"messages":[{"payload":{"content_type":"question","content":{"title":"Q","buttons":[{"content_type":"button","content":{"title":"Y","payload":null}},{"content":{"title":"N","payload":"n","accepts":["n"]}}]}}}]}"#,
            r#"{"messages":[{"payload":{"content_type":"url","content":{"url":"u","text":null,"title":"T"}}},{"payload":{"content_type":"video","content":{"url":"v"}}},{"payload":{"content_type":"typing","content":{"duration":1.5e3}}},{"payload":{"content_type":"object","content":[1,2]}},{"payload":{"content_type":"error","content":{"error":"boom"}}}],"client":{"bot_id":"b","channel_id":null,"extra":-0}}"#,
            r#" { "messages" : [ ] , "conversation_end" : null } "#,
            r#"{"messages":[{"payload":{"content": {"text":"x"} ,"content_type":"text"}}]}"#,
        ];
        for body in odd {
            let (ours, serde) = both_readers(body);
            assert!(ours.is_some(), "the one-pass reader gave up on {body}");
            assert_eq!(ours, serde, "{body}");
        }
        // What the reader leaves to serde (which reads or refuses it): never read otherwise.
        let left = [
            r#"{"messages":[{"payload":{"content":{"text":"x"},"content":{"text":"x"},"content_type":"text"}}]}"#,
            r#"{"messages":[{"payload":{"content_type":"text","content":["x"]}}]}"#,
            r#"{"messages":[],"messages":[]}"#,
            r#"{"messages":[{"payload":{"content_type":"text","content":{"text":"x","text":"y"}}}]}"#,
            r#"{"messages":[{"payload":{"content_type":"text","content":{"text":null}}}]}"#,
            r#"{"messages":[{"payload":{"content_type":"question","content":{"title":"Q","buttons":null}}}]}"#,
            r#"{"messages":[{"payload":{"content_type":"url","content":{"url":"u","text":1}}}]}"#,
            r#"{"messages":[]} x"#,
            r#"{"messages":[{"payload":{"content_type":"text","content":{"text":"\ud800"}}}]}"#,
            r#"{"client":{}}"#,
        ];
        for body in left {
            let (ours, _) = both_readers(body);
            assert_eq!(ours, None, "{body}");
        }
    }

    #[test]
    fn request_errors_name_the_field() {
        let cases: [(&[u8], &str); 6] = [
            (br#"{"payload":{"content_type":"text","content":{"text":"x"}}}"#, "`client`"),
            (br#"{"client":{"user_id":"u"}}"#, "`payload`"),
            (br#"{"client":{"user_id":"u"},"payload":{"content_type":"nope","content":{}}}"#, "`payload.content_type`"),
            (br#"{"client":{"user_id":"u"},"payload":{"content_type":"text","content":{}}}"#, "`payload.content`"),
            (br#"{"client":{"user_id":"u"},"payload":{"content_type":"image","content":{"url":"x"}}}"#, "`payload.content.url`"),
            (br#"{"client":{"user_id":"u"},"metadata":[],"payload":{"content_type":"text","content":{"text":"x"}}}"#, "`metadata`"),
        ];
        for (body, needle) in cases {
            let err = parse_request(body).unwrap_err();
            assert_eq!(err.status, 400);
            assert!(err.message.contains(needle), "{needle} -> {}", err.message);
        }
    }

    /// Found by fuzzing: JSON the proxy carries to a bot as written (`metadata`, `payload`) passed
    /// the grammar check with a number out of range or a lone surrogate, which the bot's reader
    /// (and the proxy's own) refuses.
    #[test]
    fn raw_json_a_bot_could_not_read_is_refused_by_field() {
        let cases: [(&[u8], &str); 4] = [
            (br#"{"client":{"user_id":"u"},"metadata":{"a":1e400},"payload":{"content_type":"text","content":{"text":"hi"}}}"#, "invalid field `metadata`: number out of range"),
            (br#"{"client":{"user_id":"u"},"metadata":{"a":"\udc00"},"payload":{"content_type":"text","content":{"text":"hi"}}}"#, "invalid field `metadata`: "),
            (br#"{"client":{"user_id":"u"},"payload":{"content_type":"text","content":{"text":"hi","x":-1e400}}}"#, "invalid field `payload`: number out of range"),
            (br#"{"client":{"user_id":"u"},"payload":{"content_type":"text","x":["\ud800"],"content":{"text":"hi"}}}"#, "invalid field `payload`: "),
        ];
        for (body, needle) in cases {
            let err = parse_request(body).unwrap_err();
            assert_eq!((err.status, err.reason), (400, Reason::BadRequest));
            assert!(
                err.message.starts_with(needle),
                "{needle} -> {}",
                err.message
            );
        }
    }

    /// Found by the `request_csml` fuzz target: an empty button payload (or flow id) was accepted and
    /// reached a Haptik or Rasa bot as an empty message, which their own parsers refuse.
    #[test]
    fn empty_payloads_and_flow_ids_are_refused() {
        let cases: [(&[u8], &str); 2] = [
            (br#"{"client":{"user_id":"u"},"payload":{"content_type":"payload","content":{"payload":""}}}"#, "`payload.content.payload`"),
            (br#"{"client":{"user_id":"u"},"payload":{"content_type":"flow_trigger","content":{"flow_id":""}}}"#, "`payload.content.flow_id`"),
        ];
        for (body, field) in cases {
            let err = parse_request(body).unwrap_err();
            assert_eq!(err.status, 400);
            assert_eq!(
                err.message,
                format!("invalid field {field}: must not be empty")
            );
        }
    }

    #[test]
    fn renders_business_id_and_media() {
        let req = ChatRequest {
            user_id: "u".into(),
            content: Content::Media {
                kind: MediaKind::Image,
                url: "https://x.test/i.png".into(),
            },
            business_id: Some(343),
            message_type: 1,
            request_id: None,
            metadata: None,
            raw_payload: None,
            callback_url: None,
        };
        let ours: Value = serde_json::from_slice(&render_request(&req, "r")).unwrap();
        assert_eq!(
            ours,
            json!({"client":{"user_id":"u"},"metadata":{"business_id":343},"request_id":"r",
                   "payload":{"content_type":"image","content":{"url":"https://x.test/i.png"}}})
        );
    }

    /// Parses an answer both ways (one pass without raw payloads, step by step with them) and
    /// checks that they agree; returns the step-by-step result.
    fn parse_answer(body: &[u8]) -> Result<ChatAnswer<'_>, ProxyError> {
        let fast = super::parse_answer(body, false);
        let kept = super::parse_answer(body, true);
        match (&fast, &kept) {
            (Ok(f), Ok(k)) => {
                assert_eq!(f.replies, k.replies);
                assert_eq!(f.dropped, k.dropped);
                assert_eq!(f.conversation_id, k.conversation_id);
                assert_eq!(f.conversation_end, k.conversation_end);
                assert_eq!((&f.bot_id, &f.channel_id), (&k.bot_id, &k.channel_id));
                assert!(f.raw.is_none());
                assert!(k.raw.is_some());
            }
            (Err(f), Err(k)) => assert_eq!(
                (f.status, f.reason, &f.message),
                (k.status, k.reason, &k.message)
            ),
            _ => panic!("the two readings disagree: {fast:?} vs {kept:?}"),
        }
        kept
    }

    #[test]
    fn an_answer_that_is_not_utf8_is_refused_by_both_readings() {
        // A bad byte in a key nobody reads: serde_json alone would take it in one reading only.
        let e = parse_answer(b"{\"messages\":[],\"x\xf9\":1}").unwrap_err();
        assert_eq!((e.status, e.reason), (502, Reason::BackendBadAnswer));
    }

    #[test]
    fn content_is_read_whatever_the_key_order() {
        let a = parse_answer(
            br#"{"messages":[{"payload":{"content":{"text":"first"},"extra":[1,{"a":2}],"content_type":"text"}},
                {"payload":{"content_type":"url","content":{"url":"https://x.test","title":"T"}}},
                {"payload":{"content":{"duration":1},"content_type":"typing"}},
                {"payload":{"content":{"any":"thing"},"content_type":"object"}}]}"#,
        )
        .unwrap();
        assert_eq!(a.replies[0], Reply::Text("first".into()));
        assert!(matches!(&a.replies[1], Reply::Url { title: Some(t), .. } if t == "T"));
        assert_eq!((a.replies.len(), a.dropped), (2, 1));
        // Escaped text is unescaped the same way both readings.
        let a = parse_answer(
            br#"{"messages":[{"payload":{"content_type":"te\u0078t","content":{"text":"a\"b\u00e9"}}}]}"#,
        )
        .unwrap();
        assert_eq!(a.replies[0], Reply::Text("a\"b\u{e9}".into()));
    }

    #[test]
    fn malformed_payloads_fail_both_readings_alike() {
        for body in [
            &br#"{"messages":[{"payload":{"content_type":"text","content_type":"text","content":{"text":"x"}}}]}"#[..],
            br#"{"messages":[{"payload":{"content_type":"text","content":{"text":"x"},"content":{"text":"y"}}}]}"#,
            br#"{"messages":[{"payload":{"content":{"text":"x"}}}]}"#,
            br#"{"messages":[{"payload":{"content_type":"question","content":{"title":"q","buttons":[{"content":{}}]}}}]}"#,
            br#"{"messages":[{"payload":{"content_type":"image","content":{"src":"x"}}}]}"#,
            br#"{"messages":[{"payload":{"content_type":"text","content":{"text":7}}}]}"#,
            br#"{"messages":[{"payload":"text"}]}"#,
            br#"{"messages":[{"payload":{"content_type":"text","content":{"text":"x"}}}],"conversation_end":"yes"}"#,
        ] {
            let err = parse_answer(body).unwrap_err();
            assert_eq!((err.status, err.reason), (502, Reason::BackendBadAnswer), "{err}");
        }
    }

    #[test]
    fn parses_the_seed_answer() {
        let a = parse_answer(SEED_RESPONSE.as_bytes()).unwrap();
        assert_eq!(a.replies, vec![Reply::Text("Some message".into())]);
    }

    #[test]
    fn parses_the_engines_question() {
        let a = parse_answer(ENGINE_HELLO.as_bytes()).unwrap();
        assert_eq!(a.replies.len(), 2);
        assert_eq!(a.replies[0], Reply::Text("Hello there!".into()));
        let Reply::Question { title, buttons } = &a.replies[1] else {
            panic!("not a question: {:?}", a.replies[1]);
        };
        assert_eq!(title, "What is your name?");
        assert_eq!(buttons[0].title, "Alice");
        assert_eq!(buttons[0].payload.as_deref(), Some("Alice"));
        assert_eq!(buttons[1].title, "Bob");
        assert_eq!(buttons[1].payload.as_deref(), Some("BOB_PAYLOAD"));
    }

    #[test]
    fn parses_the_engines_media_and_drops_hints() {
        let a = parse_answer(ENGINE_MEDIA.as_bytes()).unwrap();
        let kinds: Vec<String> = a
            .replies
            .iter()
            .map(|r| match r {
                Reply::Text(_) => "text".to_string(),
                Reply::Media { kind, .. } => kind.as_str().to_string(),
                Reply::Url { .. } => "url".into(),
                Reply::Button(_) => "button".into(),
                Reply::Question { .. } => "question".into(),
            })
            .collect();
        // typing and wait dropped silently; the custom object counted as dropped.
        assert_eq!(
            kinds,
            ["image", "url", "video", "audio", "file", "button", "text"]
        );
        assert_eq!(a.dropped, 1);
        assert_eq!(
            a.replies[1],
            Reply::Url {
                url: "https://example.com".into(),
                text: Some("Example".into()),
                title: Some("Example title".into())
            }
        );
    }

    #[test]
    fn rejects_what_is_not_an_answer_naming_the_field_never_the_bot() {
        const SECRET: &str = "SECRET-csml";
        let not = "the backend answer is not a CSML answer: ";
        let cases = [
            (
                format!("<html>{SECRET}</html>"),
                format!("{not}expected a JSON object with a `messages` array"),
            ),
            (
                format!(r#"{{"{SECRET}":1}}"#),
                format!("{not}the body is missing the field `messages`"),
            ),
            (
                format!(r#"{{"messages":"{SECRET}"}}"#),
                format!("{not}`messages` has the wrong type"),
            ),
            (
                format!(r#"{{"messages":[{{"payload":{{"content_type":"{SECRET}"}}}}]}}"#),
                format!("{not}`messages[0].payload` is missing the field `content`"),
            ),
            (
                format!(
                    r#"{{"messages":[{{"payload":{{"content_type":"text","content":{{"text":"a"}}}}}},
                    {{"payload":{{"content_type":"text","content":{{"text":["{SECRET}"]}}}}}}]}}"#
                ),
                format!("{not}`messages[1].payload.content.text` has the wrong type"),
            ),
            (
                format!(
                    r#"{{"messages":[{{"payload":{{"content_type":"question","content":{{"title":"t",
                    "buttons":[{{"content":{{"{SECRET}":1}}}}]}}}}}}]}}"#
                ),
                format!(
                    "{not}`messages[0].payload.content.buttons[0].content` is missing the field `title`"
                ),
            ),
            (
                format!(r#"{{"messages":[{{"payload":"{SECRET}""#),
                "the backend answer is not valid JSON".to_owned(),
            ),
        ];
        for (body, want) in cases {
            let err = parse_answer(body.as_bytes()).unwrap_err();
            assert_eq!(
                (err.status, err.reason, &*err.message),
                (502, Reason::BackendBadAnswer, &*want),
                "{body}"
            );
            // serde's own words, which quote the bot, stay in the detail for the debug log.
            assert!(err.detail.is_some(), "{body}");
        }
    }

    #[test]
    fn bot_errors_fail_the_answer_with_a_fixed_message() {
        let err = parse_answer(
            br#"{"messages":[{"payload":{"content_type":"error","content":{"error":"SECRET boom"}}}]}"#,
        )
        .unwrap_err();
        assert_eq!(
            (err.status, err.reason, &*err.message),
            (502, Reason::BotError, "the bot reported an error")
        );
        assert_eq!(err.detail.as_deref(), Some("SECRET boom"));
    }
}
