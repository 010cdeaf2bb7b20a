//! Rasa's REST channel (`POST /webhooks/rest/webhook`), both as a caller dialect and as a bot dialect.
//!
//! Field names are those of `RestInput` (`rasa/core/channels/rest.py`) and `CollectingOutputChannel`
//! (`rasa/core/channels/channel.py`) in RasaHQ/rasa.
//!
//! Request: `{"sender": "<user id>", "message": "<text>", "metadata"?: {…}}`. Rasa itself turns a
//! numeric `sender` into a string, so the proxy accepts an integer there too. A `message` that starts
//! with `/` is what a Rasa client sends for a button click (the button's payload, e.g.
//! `/affirm` or `/inform{"x":1}`): it becomes [`Content::Payload`], with the slash kept, so it reaches a
//! Rasa bot unchanged; any other message is text. `input_channel` and other keys are ignored.
//!
//! Answer: a JSON array, one object per bot message, each with `recipient_id` and any of `text`,
//! `image` (a URL), `buttons` (`[{"title", "payload"}]`), `attachment`, `custom` (any JSON). The proxy
//! never asks for `?stream=true`.
//!
//! Errors to a Rasa caller take the shape of Rasa's HTTP API errors (see [`render_error`]).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::auth::{token_digest, token_presented, ClientCredential, Denied, Grant, Presented};
use crate::config::{ConfigError, SecretSource};
use crate::dialect::bad_answer::{excerpt, Expected};
use crate::dialect::haptik::is_http_url;
use crate::dialect::{
    from_json, integral, settings, strict_raw, text_for_bot, AnswerContext, Bot, BotDialect,
    BotRequestContext, CallerDialect, ClientEntry, Detection, FlowTriggerPolicy, Outgoing,
    RequestHead,
};
use crate::error::{json_error, ProxyError, Reason};
use crate::model::{Button, ChatAnswer, ChatRequest, Content, MediaKind, Reply};

// ---------------------------------------------------------------------------------------------
// Caller side: a Rasa REST client calls the proxy

#[derive(Deserialize)]
struct RequestIn<'a> {
    #[serde(borrow, deserialize_with = "string_or_integer")]
    sender: Cow<'a, str>,
    #[serde(borrow)]
    message: Cow<'a, str>,
    #[serde(borrow, default)]
    metadata: Option<&'a RawValue>,
}

/// A string, borrowed when it has no escapes, or an integer (also one written `42.0`) as its decimal
/// text (Rasa does `str(sender_id)`).
fn string_or_integer<'de, D: Deserializer<'de>>(d: D) -> Result<Cow<'de, str>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Cow<'de, str>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string or an integer")
        }

        fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Cow::Borrowed(v))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Cow::Owned(v.to_owned()))
        }

        fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(Cow::Owned(v))
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Cow::Owned(v.to_string()))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Cow::Owned(v.to_string()))
        }

        /// A whole number written as `42.0` is the same integer: its digits.
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            match integral(v, 2f64.powi(64)) {
                Some(v) if v < 0.0 => Ok(Cow::Owned((v as i64).to_string())),
                Some(v) => Ok(Cow::Owned((v as u64).to_string())),
                None => Err(E::invalid_type(de::Unexpected::Float(v), &self)),
            }
        }
    }
    d.deserialize_any(V)
}

/// Parses a Rasa REST channel request body into the canonical request.
///
/// A `message` starting with `/` is a button click (or an intent sent directly) and becomes
/// [`Content::Payload`], slash included; anything else is [`Content::Text`]. `metadata`, when it is an
/// object, is passed on as is; `null` counts as absent.
///
/// 400s name the field: malformed JSON, a missing or mistyped `sender` or `message`, an empty one, a
/// `metadata` that is not an object or that a bot's JSON reader would refuse (a number out of
/// range, a lone surrogate escape: it is passed on as written, see `strict_raw`).
pub fn parse_request(body: &[u8]) -> Result<ChatRequest<'_>, ProxyError> {
    let wire: RequestIn<'_> = from_json(body).map_err(|_| json_error::<RequestIn<'_>>(body))?;
    if wire.sender.is_empty() {
        return Err(ProxyError::bad_request(
            "invalid field `sender`: must not be empty",
        ));
    }
    if wire.message.is_empty() {
        return Err(ProxyError::bad_request(
            "invalid field `message`: must not be empty",
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
    let content = if wire.message.starts_with('/') {
        Content::Payload(wire.message)
    } else {
        Content::Text(wire.message)
    };
    Ok(ChatRequest {
        user_id: wire.sender,
        content,
        business_id: None,
        message_type: 0,
        request_id: None,
        metadata: wire.metadata,
        raw_payload: None,
        callback_url: None,
    })
}

#[derive(Deserialize)]
struct Probe {
    sender: Option<IgnoredAny>,
    message: Option<IgnoredAny>,
}

/// Whether a body looks like a Rasa REST request (has `sender` and `message`), for dialect detection.
pub fn looks_like_request(body: &[u8]) -> bool {
    serde_json::from_slice::<Probe>(body).is_ok_and(|p| p.sender.is_some() && p.message.is_some())
}

/// One bot message as a Rasa REST client reads it.
#[derive(Serialize)]
struct MessageOut<'a> {
    recipient_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    buttons: Option<Vec<ButtonOut<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attachment: Option<&'a str>,
}

#[derive(Serialize)]
struct ButtonOut<'a> {
    title: &'a str,
    payload: &'a str,
}

fn button_out<'a>(b: &'a Button<'_>) -> ButtonOut<'a> {
    ButtonOut {
        title: &b.title,
        payload: b.payload_or_title(),
    }
}

/// The text a Rasa client sees for a link: `label: URL` (the link's text, else its title), or the bare
/// URL. A Rasa message has no link type.
fn url_text<'a>(url: &'a str, text: Option<&str>, title: Option<&str>) -> Cow<'a, str> {
    let non_empty = |s: &&str| !s.is_empty();
    match text.filter(non_empty).or(title.filter(non_empty)) {
        Some(label) => Cow::Owned(format!("{label}: {url}")),
        None => Cow::Borrowed(url),
    }
}

fn message_out<'a>(recipient_id: &'a str, reply: &'a Reply<'_>) -> MessageOut<'a> {
    let mut m = MessageOut {
        recipient_id,
        text: None,
        image: None,
        buttons: None,
        attachment: None,
    };
    match reply {
        Reply::Text(t) => m.text = Some(Cow::Borrowed(t)),
        Reply::Question { title, buttons } => {
            m.text = Some(Cow::Borrowed(title));
            m.buttons = Some(buttons.iter().map(button_out).collect());
        }
        Reply::Button(b) => m.buttons = Some(vec![button_out(b)]),
        Reply::Url { url, text, title } => {
            m.text = Some(url_text(url, text.as_deref(), title.as_deref()));
        }
        Reply::Media {
            kind: MediaKind::Image,
            url,
        } => m.image = Some(url),
        Reply::Media { url, .. } => m.attachment = Some(url),
    }
    m
}

/// Renders the canonical answer as a Rasa REST answer: a JSON array with one message per reply, each
/// addressed to the caller's `sender` (`recipient_id`).
///
/// - text: `{"text"}`;
/// - question: `{"text": title, "buttons": [{"title", "payload"}]}` (a button without a payload
///   sends its title);
/// - a lone button: `{"buttons": [one]}`, no `text`;
/// - url: `{"text": "label: URL"}` (label: the link's text, else its title), or the bare URL;
/// - image: `{"image": URL}`; video, audio, file: `{"attachment": URL}` (the kind is lost).
pub fn render_answer(req: &ChatRequest<'_>, answer: &ChatAnswer<'_>) -> Vec<u8> {
    let messages: Vec<MessageOut<'_>> = answer
        .replies
        .iter()
        .map(|r| message_out(&req.user_id, r))
        .collect();
    serde_json::to_vec(&messages).expect("rasa answer serializes")
}

/// Rasa HTTP API errors carry an object of details; the proxy has none to give.
#[derive(Serialize)]
struct NoDetails {}

#[derive(Serialize)]
struct ErrorOut<'a> {
    status: &'static str,
    message: &'a str,
    reason: &'static str,
    details: NoDetails,
    code: u16,
}

/// Renders an error in the shape of Rasa's HTTP API errors, without Rasa's `version` and `help`:
/// `{"status": "failure", "message": "…", "reason": "<the proxy's reason label>", "details": {},
/// "code": <HTTP status>}`.
pub fn render_error(err: &ProxyError) -> Vec<u8> {
    serde_json::to_vec(&ErrorOut {
        status: "failure",
        message: &err.message,
        reason: err.reason.as_str(),
        details: NoDetails {},
        code: err.status,
    })
    .expect("rasa error serializes")
}

// ---------------------------------------------------------------------------------------------
// Bot side: the proxy calls a Rasa bot

#[derive(Serialize)]
struct RequestOut<'a> {
    sender: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<MetadataOut<'a>>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum MetadataOut<'a> {
    /// The caller's own metadata (a CSML or Rasa caller), untouched.
    Raw(&'a RawValue),
    /// Made by the proxy: the Haptik business the message is for.
    Business { business_id: i64 },
}

/// Renders the canonical request as a Rasa REST channel request.
///
/// `message` is the text, or a button click's payload as is; a url or media message sends its URL
/// (the kind is lost). A flow trigger has no Rasa equivalent: refused with 422, or sent as its flow id,
/// as `flow` says. `metadata` is the caller's own when it sent one; else `{"business_id": N}` when
/// the request has a business (a Haptik caller); else it is left out, as Rasa's own clients do.
pub fn render_request(
    req: &ChatRequest<'_>,
    flow: FlowTriggerPolicy,
) -> Result<Vec<u8>, ProxyError> {
    let message = text_for_bot(req, flow, "a Rasa bot")?;
    let metadata = match (req.metadata, req.business_id) {
        (Some(raw), _) => Some(MetadataOut::Raw(raw)),
        (None, Some(business_id)) => Some(MetadataOut::Business { business_id }),
        (None, None) => None,
    };
    let out = RequestOut {
        sender: &req.user_id,
        message,
        metadata,
    };
    Ok(serde_json::to_vec(&out).expect("rasa request serializes"))
}

/// One message of a Rasa bot's answer. `recipient_id` and unknown keys are not read.
///
/// Optional strings are [`Str`]s: serde borrows a `Cow` directly in a field, not inside an `Option`.
#[derive(Deserialize)]
struct MessageIn<'a> {
    #[serde(borrow, default)]
    text: Option<Str<'a>>,
    #[serde(borrow, default)]
    image: Option<Str<'a>>,
    #[serde(borrow, default)]
    buttons: Option<Vec<ButtonIn<'a>>>,
    #[serde(borrow, default)]
    attachment: Option<&'a RawValue>,
    #[serde(default)]
    custom: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct ButtonIn<'a> {
    #[serde(borrow)]
    title: Cow<'a, str>,
    #[serde(borrow, default)]
    payload: Option<Str<'a>>,
}

/// A string, borrowed from the body when it has no escapes.
#[derive(Deserialize)]
struct Str<'a>(#[serde(borrow)] Cow<'a, str>);

/// A Rasa answer, for the messages about one that is not ([`Expected`]): its keys are those of
/// [`MessageIn`] and [`ButtonIn`], the only map keys an error path may name.
const RASA_ANSWER: Expected = Expected {
    name: "Rasa",
    shape: "a JSON array of messages",
    opens: b"[",
    keys: &[
        "text",
        "image",
        "buttons",
        "attachment",
        "custom",
        "title",
        "payload",
    ],
};

/// Parses a Rasa bot's answer (any status) into the canonical answer.
///
/// Per message, in this order: `text` alone is a text; `text` with `buttons` is a question (titled
/// with the text, or untitled when there is no text); an `image` that is an http(s) URL is an image;
/// an `attachment` that is an http(s) URL string is a file. A non-URL `image` or `attachment`, any
/// `custom`, and a message with nothing the proxy reads each count once in [`ChatAnswer::dropped`].
/// An empty array is an answer with no replies.
///
/// A non-2xx status is a 502 (`backend_status`), a body that is not a Rasa answer a 502
/// (`backend_bad_answer`); neither message repeats anything from the bot's body.
pub fn parse_answer(status: u16, body: &[u8]) -> Result<ChatAnswer<'_>, ProxyError> {
    if !(200..300).contains(&status) {
        return Err(ProxyError::new(
            502,
            Reason::BackendStatus,
            format!("the backend answered HTTP {status}"),
        )
        .with_detail(excerpt(body)));
    }
    let messages: Vec<MessageIn<'_>> =
        from_json(body).map_err(|_| RASA_ANSWER.body::<Vec<MessageIn<'_>>>(body))?;
    let mut answer = ChatAnswer {
        replies: Vec::with_capacity(messages.len()),
        ..ChatAnswer::default()
    };
    for m in messages {
        let before = (answer.replies.len(), answer.dropped);
        let buttons = m.buttons.filter(|b| !b.is_empty());
        match (m.text, buttons) {
            (text, Some(buttons)) => answer.replies.push(Reply::Question {
                title: text.map(|t| t.0).unwrap_or_default(),
                buttons: buttons
                    .into_iter()
                    .map(|b| Button {
                        title: b.title,
                        payload: b.payload.map(|p| p.0),
                    })
                    .collect(),
            }),
            (Some(Str(text)), None) => answer.replies.push(Reply::Text(text)),
            (None, None) => {}
        }
        if let Some(Str(url)) = m.image {
            if is_http_url(&url) {
                answer.replies.push(Reply::Media {
                    kind: MediaKind::Image,
                    url,
                });
            } else {
                answer.dropped += 1;
            }
        }
        if let Some(raw) = m.attachment {
            match serde_json::from_str::<Str<'_>>(raw.get()) {
                Ok(Str(url)) if is_http_url(&url) => answer.replies.push(Reply::Media {
                    kind: MediaKind::File,
                    url,
                }),
                _ => answer.dropped += 1,
            }
        }
        if m.custom.is_some() {
            answer.dropped += 1;
        }
        if before == (answer.replies.len(), answer.dropped) {
            answer.dropped += 1;
        }
    }
    Ok(answer)
}

// ---------------------------------------------------------------------------------------------
// The dialect interface

/// Rasa's REST channel, as callers and bots speak it.
pub struct Rasa;

/// `[[clients.rasa]]`: one Rasa caller, known by its token (`?token=` or `Authorization: Bearer`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientConfig {
    /// Its token (only a digest is kept).
    token: SecretSource,
}

/// A Rasa bot's settings (`dialect = "rasa"`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BotConfig {
    /// Rasa's `--auth-token`, sent as `?token=`.
    token: Option<SecretSource>,
}

/// A configured Rasa bot.
struct RasaBot {
    token: Option<String>,
}

impl fmt::Debug for RasaBot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RasaBot")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl CallerDialect for Rasa {
    fn api_document(&self) -> &'static str {
        include_str!("../../../docs/openapi/rasa.json")
    }

    fn name(&self) -> &'static str {
        "rasa"
    }

    /// A bare bearer token is also what a Haptik caller without its client id sends, so Rasa
    /// callers are told apart only on routes that name this dialect.
    fn in_auto(&self) -> bool {
        false
    }

    /// A `?token=`, or a bearer token without a client id.
    fn detect(&self, head: &dyn RequestHead) -> Detection {
        let query_token = head
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv.starts_with("token=")));
        let bearer = head
            .header("authorization")
            .is_some_and(|a| a.len() > 7 && a[..7].eq_ignore_ascii_case(b"bearer "));
        let client_id = head
            .header("client-id")
            .or(head.header("client_id"))
            .is_some();
        if query_token || (bearer && !client_id) {
            Detection::Yes
        } else {
            Detection::No
        }
    }

    fn credential_hint(&self) -> &'static str {
        "Rasa (?token= or Authorization: Bearer)"
    }

    fn detect_body(&self, body: &[u8]) -> bool {
        looks_like_request(body)
    }

    fn credential<'h>(&self, head: &'h dyn RequestHead) -> Result<Presented<'h>, Denied> {
        token_presented("rasa", head.header("authorization"), head.query()).map(Presented::Token)
    }

    fn client(
        &self,
        key: &str,
        name: &str,
        table: toml::Table,
    ) -> Result<ClientEntry, ConfigError> {
        let c: ClientConfig = settings(key, table)?;
        let token = c.token.resolve(&format!("{key}.token"))?;
        let demo = (token == "demo-rasa-token").then(|| format!("rasa token of {name}"));
        let grant = Grant::named(name);
        Ok(ClientEntry {
            credential: ClientCredential::Token {
                digest: token_digest("rasa", token.as_bytes()),
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

    fn render_answer(
        &self,
        req: &ChatRequest<'_>,
        answer: &ChatAnswer<'_>,
        _ctx: &AnswerContext<'_>,
    ) -> Vec<u8> {
        render_answer(req, answer)
    }

    fn render_error(&self, err: &ProxyError) -> Vec<u8> {
        render_error(err)
    }
}

impl BotDialect for Rasa {
    fn name(&self) -> &'static str {
        "rasa"
    }

    fn keys(&self) -> &'static [&'static str] {
        &["token"]
    }

    fn configure(&self, key: &str, table: toml::Table) -> Result<Box<dyn Bot>, ConfigError> {
        let c: BotConfig = settings(key, table)?;
        let token = match c.token {
            Some(t) => Some(t.resolve(&format!("{key}.token"))?),
            None => None,
        };
        Ok(Box::new(RasaBot { token }))
    }
}

impl Bot for RasaBot {
    fn dialect(&self) -> &'static str {
        "rasa"
    }

    fn query_param(&self) -> Option<(&'static str, &str)> {
        self.token.as_deref().map(|t| ("token", t))
    }

    fn render_request(
        &self,
        req: &ChatRequest<'_>,
        ctx: &BotRequestContext<'_>,
    ) -> Result<Vec<u8>, ProxyError> {
        render_request(req, ctx.flow_trigger)
    }

    /// Rasa's REST channel takes no header credential (its token travels in the URL).
    fn sign(&self, _out: &Outgoing<'_>, _add: &mut dyn FnMut(&'static str, &str)) {}

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
    use serde_json::{json, Value};

    fn request(content: Content<'static>) -> ChatRequest<'static> {
        ChatRequest {
            user_id: "u-1".into(),
            content,
            business_id: None,
            message_type: 0,
            request_id: None,
            metadata: None,
            raw_payload: None,
            callback_url: None,
        }
    }

    #[test]
    fn parses_text_slash_payloads_and_metadata() {
        let req =
            parse_request(br#"{"sender":"u-1","message":"hello","metadata":{"k":[1,2]}}"#).unwrap();
        assert_eq!(req.user_id, "u-1");
        assert!(matches!(req.user_id, Cow::Borrowed(_)));
        assert_eq!(req.content, Content::Text("hello".into()));
        assert_eq!(req.metadata.map(RawValue::get), Some(r#"{"k":[1,2]}"#));
        assert_eq!(
            (req.business_id, req.message_type, &req.request_id),
            (None, 0, &None)
        );
        assert!(req.raw_payload.is_none());

        let req = parse_request(br#"{"sender":"u","message":"/inform{\"x\":1}"}"#).unwrap();
        assert_eq!(req.content, Content::Payload(r#"/inform{"x":1}"#.into()));
        assert!(req.metadata.is_none());
        let req = parse_request(br#"{"sender":"u","message":"a / b","metadata":null}"#).unwrap();
        assert_eq!(req.content, Content::Text("a / b".into()));
        assert!(req.metadata.is_none());
        // Rasa turns a numeric sender into a string; so does the proxy.
        let req = parse_request(br#"{"sender":42,"message":"hi"}"#).unwrap();
        assert_eq!(req.user_id, "42");
    }

    /// Found by the schemathesis check: a sender written `42.0` (an integer to JSON Schema) was
    /// refused. Whole numbers are their digits, up to `u64::MAX`, whichever way they are written.
    #[test]
    fn integral_senders_are_their_digits() {
        for (sender, id) in [
            ("42.0", "42"),
            ("-7e0", "-7"),
            ("18446744073709551615", "18446744073709551615"),
            ("-9223372036854775808", "-9223372036854775808"),
            ("-4186881670350958.0", "-4186881670350958"),
        ] {
            let body = format!(r#"{{"sender":{sender},"message":"hi"}}"#);
            assert_eq!(
                parse_request(body.as_bytes()).unwrap().user_id,
                id,
                "{sender}"
            );
        }
        for bad in [
            "4.5",
            "2e19",
            "-1e19",
            "-9223372036854775809",
            "18446744073709551616",
        ] {
            let body = format!(r#"{{"sender":{bad},"message":"hi"}}"#);
            let err = parse_request(body.as_bytes()).unwrap_err();
            assert!(err.message.contains("`sender`"), "{bad}: {}", err.message);
        }
    }

    #[test]
    fn request_errors_name_the_field() {
        let cases: [(&[u8], &str); 9] = [
            (b"{not json", "malformed JSON"),
            (b"", "empty"),
            (br#"["sender"]"#, "JSON object"),
            (br#"{"message":"hi"}"#, "`sender`"),
            (br#"{"sender":"u"}"#, "`message`"),
            (br#"{"sender":"","message":"hi"}"#, "`sender`"),
            (br#"{"sender":"u","message":""}"#, "`message`"),
            (br#"{"sender":"u","message":7}"#, "`message`"),
            (
                br#"{"sender":"u","message":"hi","metadata":[1]}"#,
                "`metadata`",
            ),
        ];
        for (body, needle) in cases {
            let err = parse_request(body).unwrap_err();
            assert_eq!((err.status, err.reason), (400, Reason::BadRequest));
            assert!(err.message.contains(needle), "{needle} -> {}", err.message);
        }
        let err = parse_request(br#"{"sender":true,"message":"hi"}"#).unwrap_err();
        assert!(err.message.contains("`sender`"), "{}", err.message);
    }

    /// Found by the `request_rasa` fuzz target: `metadata` is passed on as written, and a number
    /// out of range (or a lone surrogate) in it made a bot request the bot's reader refuses.
    #[test]
    fn metadata_a_bot_could_not_read_is_refused() {
        let cases: [&[u8]; 3] = [
            br#"{"sender":"u","message":"hi","metadata":{"a":1e400}}"#,
            br#"{"sender":"u","message":"hi","metadata":{"a":[{"b":-1E+999}]}}"#,
            br#"{"sender":"u","message":"hi","metadata":{"\udc00":1}}"#,
        ];
        for body in cases {
            let err = parse_request(body).unwrap_err();
            assert_eq!((err.status, err.reason), (400, Reason::BadRequest));
            assert!(
                err.message.starts_with("invalid field `metadata`: "),
                "{}",
                err.message
            );
        }
    }

    #[test]
    fn tells_rasa_bodies_from_others() {
        assert!(looks_like_request(br#"{"sender":"u","message":"hi"}"#));
        assert!(looks_like_request(
            br#"{"message":"hi","metadata":{},"sender":"u"}"#
        ));
        assert!(!looks_like_request(br#"{"sender":"u"}"#));
        assert!(!looks_like_request(include_bytes!(
            "../../../tests/fixtures/haptik/seed-request.json"
        )));
        assert!(!looks_like_request(include_bytes!(
            "../../../tests/fixtures/csml/seed-request.json"
        )));
        assert!(!looks_like_request(b"not json"));
        assert!(!looks_like_request(br#"[{"sender":"u","message":"hi"}]"#));
    }

    #[test]
    fn renders_every_reply_kind() {
        let req = request(Content::Text("hi".into()));
        let yes = Button {
            title: "Yes".into(),
            payload: Some("/affirm".into()),
        };
        let no = Button {
            title: "No".into(),
            payload: None,
        };
        let url = |text: Option<&'static str>, title: Option<&'static str>| Reply::Url {
            url: "https://e.test".into(),
            text: text.map(Into::into),
            title: title.map(Into::into),
        };
        let media = |kind| Reply::Media {
            kind,
            url: "https://e.test/m".into(),
        };
        let answer = ChatAnswer {
            replies: vec![
                Reply::Text("plain".into()),
                Reply::Question {
                    title: "Sure?".into(),
                    buttons: vec![yes.clone(), no],
                },
                Reply::Button(yes),
                url(Some("Example"), Some("T")),
                url(None, Some("T")),
                url(Some(""), None),
                media(MediaKind::Image),
                media(MediaKind::Video),
                media(MediaKind::Audio),
                media(MediaKind::File),
            ],
            ..ChatAnswer::default()
        };
        let v: Value = serde_json::from_slice(&render_answer(&req, &answer)).unwrap();
        let r = "u-1";
        assert_eq!(
            v,
            json!([
                {"recipient_id": r, "text": "plain"},
                {"recipient_id": r, "text": "Sure?", "buttons": [
                    {"title": "Yes", "payload": "/affirm"}, {"title": "No", "payload": "No"}]},
                {"recipient_id": r, "buttons": [{"title": "Yes", "payload": "/affirm"}]},
                {"recipient_id": r, "text": "Example: https://e.test"},
                {"recipient_id": r, "text": "T: https://e.test"},
                {"recipient_id": r, "text": "https://e.test"},
                {"recipient_id": r, "image": "https://e.test/m"},
                {"recipient_id": r, "attachment": "https://e.test/m"},
                {"recipient_id": r, "attachment": "https://e.test/m"},
                {"recipient_id": r, "attachment": "https://e.test/m"},
            ])
        );
        assert_eq!(render_answer(&req, &ChatAnswer::default()), b"[]".to_vec());
    }

    #[test]
    fn error_body_mirrors_rasas_http_api() {
        let body = render_error(&ProxyError::bad_request("invalid field `sender`: x"));
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            json!({"status":"failure","message":"invalid field `sender`: x",
                   "reason":"bad_request","details":{},"code":400})
        );
    }

    #[test]
    fn renders_requests_for_a_rasa_bot() {
        let render = |req: &ChatRequest<'_>| -> Value {
            serde_json::from_slice(&render_request(req, FlowTriggerPolicy::Reject).unwrap())
                .unwrap()
        };
        assert_eq!(
            render(&request(Content::Text("hi".into()))),
            json!({"sender":"u-1","message":"hi"})
        );
        assert_eq!(
            render(&request(Content::Payload("BOB".into())))["message"],
            "BOB"
        );
        assert_eq!(
            render(&request(Content::Url("https://e.test".into())))["message"],
            "https://e.test"
        );
        for kind in [
            MediaKind::Image,
            MediaKind::Video,
            MediaKind::Audio,
            MediaKind::File,
        ] {
            let req = request(Content::Media {
                kind,
                url: "https://e.test/m".into(),
            });
            assert_eq!(render(&req)["message"], "https://e.test/m");
        }
        // Metadata: the caller's own, else the Haptik business, else none.
        let caller = parse_request(br#"{"sender":"u","message":"hi","metadata":{"a":1}}"#).unwrap();
        assert_eq!(
            render(&caller),
            json!({"sender":"u","message":"hi","metadata":{"a":1}})
        );
        let mut haptik = request(Content::Text("hi".into()));
        haptik.business_id = Some(343);
        assert_eq!(render(&haptik)["metadata"], json!({"business_id":343}));
        // A Rasa request goes to a Rasa bot unchanged.
        let body = br#"{"sender":"u","message":"/affirm","metadata":{"a":[1,{"b":null}]}}"#;
        let same =
            render_request(&parse_request(body).unwrap(), FlowTriggerPolicy::Reject).unwrap();
        assert_eq!(same, body.to_vec());
    }

    #[test]
    fn flow_triggers_follow_the_policy() {
        let req = request(Content::FlowTrigger {
            flow_id: "onboarding".into(),
            close_flows: Some(true),
        });
        let err = render_request(&req, FlowTriggerPolicy::Reject).unwrap_err();
        assert_eq!((err.status, err.reason), (422, Reason::Untranslatable));
        let v: Value =
            serde_json::from_slice(&render_request(&req, FlowTriggerPolicy::Text).unwrap())
                .unwrap();
        assert_eq!(v, json!({"sender":"u-1","message":"onboarding"}));
    }

    #[test]
    fn parses_every_message_kind() {
        let body = br#"[
            {"recipient_id":"u","text":"Hi"},
            {"recipient_id":"u","text":"Sure?","buttons":[{"title":"Yes","payload":"/affirm"},{"title":"No"}]},
            {"recipient_id":"u","buttons":[{"title":"Go","payload":"/go","type":"postback"}]},
            {"recipient_id":"u","text":"Look","image":"https://e.test/i.png"},
            {"recipient_id":"u","attachment":"https://e.test/d.pdf"},
            {"recipient_id":"u","text":"Cheers","buttons":[]}
        ]"#;
        let a = parse_answer(200, body).unwrap();
        let button = |title: &'static str, payload: Option<&'static str>| Button {
            title: title.into(),
            payload: payload.map(Into::into),
        };
        assert_eq!(
            a.replies,
            vec![
                Reply::Text("Hi".into()),
                Reply::Question {
                    title: "Sure?".into(),
                    buttons: vec![button("Yes", Some("/affirm")), button("No", None)],
                },
                Reply::Question {
                    title: "".into(),
                    buttons: vec![button("Go", Some("/go"))],
                },
                Reply::Text("Look".into()),
                Reply::Media {
                    kind: MediaKind::Image,
                    url: "https://e.test/i.png".into()
                },
                Reply::Media {
                    kind: MediaKind::File,
                    url: "https://e.test/d.pdf".into()
                },
                Reply::Text("Cheers".into()),
            ]
        );
        assert_eq!(a.dropped, 0);
        assert!(a.raw.is_none());
        // Strings without escapes are borrowed from the body, not copied.
        let borrowed = |c: &Cow<'_, str>| matches!(c, Cow::Borrowed(_));
        assert!(matches!(&a.replies[0], Reply::Text(t) if borrowed(t)));
        let Reply::Question { title, buttons } = &a.replies[1] else {
            unreachable!()
        };
        assert!(borrowed(title) && borrowed(&buttons[0].title));
        assert!(buttons[0].payload.as_ref().is_some_and(borrowed));
        assert!(matches!(&a.replies[4], Reply::Media { url, .. } if borrowed(url)));
        assert!(matches!(&a.replies[5], Reply::Media { url, .. } if borrowed(url)));
        assert!(parse_answer(200, b" [] ").unwrap().replies.is_empty());
    }

    #[test]
    fn counts_what_it_cannot_translate() {
        let body = br#"[
            {"recipient_id":"u","custom":{"kind":"carousel","items":[1,2]}},
            {"recipient_id":"u","text":"kept","custom":{"x":1}},
            {"recipient_id":"u","attachment":{"type":"video","payload":{"src":"https://e.test/v"}}},
            {"recipient_id":"u","attachment":"not a url"},
            {"recipient_id":"u","image":"data:image/png;base64,AAAA"},
            {"recipient_id":"u","elements":[{"title":"t"}]},
            {"recipient_id":"u","text":null,"custom":null}
        ]"#;
        let a = parse_answer(200, body).unwrap();
        assert_eq!(a.replies, vec![Reply::Text("kept".into())]);
        assert_eq!(a.dropped, 7);
    }

    #[test]
    fn failures_are_502s_with_fixed_messages() {
        const SECRET: &str = "s3cr3t-bot-detail";
        let e = parse_answer(500, format!(r#"{{"message":"{SECRET}"}}"#).as_bytes()).unwrap_err();
        assert_eq!((e.status, e.reason), (502, Reason::BackendStatus));
        assert_eq!(e.message, "the backend answered HTTP 500");
        let e = parse_answer(404, b"").unwrap_err();
        assert_eq!(e.message, "the backend answered HTTP 404");

        let cases: [(String, &str); 7] = [
            (format!(r#"{{"text":"{SECRET}"}}"#), "expected a JSON array"),
            (format!("<html>{SECRET}</html>"), "expected a JSON array"),
            (String::new(), "expected a JSON array"),
            (format!(r#"[{{"text":"{SECRET}""#), "not valid JSON"),
            (format!(r#"["{SECRET}"]"#), "`[0]`"),
            (
                format!(r#"[{{"text":"ok"}},{{"text":["{SECRET}"]}}]"#),
                "`[1].text`",
            ),
            (
                format!(r#"[{{"buttons":[{{"title":"a","payload":{{"{SECRET}":1}}}}]}}]"#),
                "`[0].buttons[0].payload`",
            ),
        ];
        for (body, needle) in cases {
            let e = parse_answer(200, body.as_bytes()).unwrap_err();
            assert_eq!((e.status, e.reason), (502, Reason::BackendBadAnswer), "{e}");
            assert!(e.message.contains(needle), "{needle} -> {}", e.message);
            assert!(!e.message.contains(SECRET), "{}", e.message);
        }
        // Keys the bot made up are never named, even next to the field at fault.
        let e =
            parse_answer(200, format!(r#"[{{"{SECRET}":1,"image":5}}]"#).as_bytes()).unwrap_err();
        assert!(!e.message.contains(SECRET), "{}", e.message);
    }

    #[test]
    fn an_answer_survives_a_round_trip() {
        let req = request(Content::Text("hi".into()));
        let answer = ChatAnswer {
            replies: vec![
                Reply::Text("a".into()),
                Reply::Question {
                    title: "q".into(),
                    buttons: vec![Button {
                        title: "Yes".into(),
                        payload: Some("/affirm".into()),
                    }],
                },
                Reply::Media {
                    kind: MediaKind::Image,
                    url: "https://e.test/i.png".into(),
                },
                Reply::Media {
                    kind: MediaKind::File,
                    url: "https://e.test/f".into(),
                },
            ],
            ..ChatAnswer::default()
        };
        let body = render_answer(&req, &answer);
        let back = parse_answer(200, &body).unwrap();
        assert_eq!(back.replies, answer.replies);
        assert_eq!(back.dropped, 0);
    }
}
