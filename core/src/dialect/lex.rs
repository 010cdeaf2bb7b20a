//! Amazon Lex V2's runtime, `RecognizeText`, both as a caller dialect and as a bot dialect.
//!
//! `POST /bots/{botId}/botAliases/{botAliasId}/botLocales/{localeId}/sessions/{sessionId}/text`,
//! signed with AWS Signature V4 (service `lex`; [`crate::sigv4`]). The session id is in the path,
//! percent-encoded (`:` is `%3A`); it is the user's id here.
//!
//! Request: `{"text": "…", "sessionState"?: {…}, "requestAttributes"?: {"k": "v"}}`; `text` is 1–1024
//! characters. Answer: `{"messages": [{"contentType": "PlainText"|"SSML"|"ImageResponseCard"|
//! "CustomPayload", "content", "imageResponseCard": {"title", "subtitle", "imageUrl", "buttons":
//! [{"text", "value"}]}}], "sessionState": {"dialogAction": {"type": "Close"|…}, …}, "sessionId"}`.
//! Errors: the status, `x-amzn-ErrorType: <Name>` and `{"message": "…"}`.
//!
//! Callers are verified per `[[clients.lex-v2]]` (access key id → secret): the signature over the
//! whole request, once the body is read ([`LexCaller`]), the date within five minutes of now.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::auth::{
    key_id_digest, AuthReason, ClientCredential, Denied, Grant, Presented, RequestVerifier,
};
use crate::config::{header_safe, ConfigError, SecretSource};
use crate::dialect::bad_answer::{excerpt, Expected};
use crate::dialect::haptik::is_http_url;
use crate::dialect::{
    from_json, path_segment, settings, strict_raw, text_for_bot, AnswerContext, AnswerShape, Bot,
    BotDialect, BotRequestContext, CallerDialect, ClientEntry, Conversation, Conversations,
    Detection, FlowTriggerPolicy, Outgoing, RequestHead, SessionPerUser,
};
use crate::error::{json_error, ProxyError, Reason};
use crate::model::{Button, ChatAnswer, ChatRequest, Content, MediaKind, RawKind, Reply};
use crate::request::WholeRequest;
use crate::sigv4::{self, DayKeys};

/// The dialect's config name.
const NAME: &str = "lex-v2";
/// The most characters Lex takes in `text`.
const MAX_TEXT_CHARS: usize = 1024;
/// How far a caller's `x-amz-date` may be from now, either way (AWS's own window).
const SKEW_SECS: u64 = 300;
/// The most buttons one Lex response card holds.
const MAX_CARD_BUTTONS: usize = 5;
/// The header Lex names its errors in.
const ERROR_TYPE: &str = "x-amzn-errortype";

// ---------------------------------------------------------------------------------------------
// Session ids

/// Whether `s` is a Lex session id as it is: 2–100 of `[0-9a-zA-Z._:-]`.
fn is_session_id(s: &str) -> bool {
    (2..=100).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// The Lex session id of a user: the user id itself when Lex takes it, else `bb-` and 40 hex
/// digits of its SHA-256. Stable, so one user keeps one Lex session, on any instance.
pub fn session_id(user_id: &str) -> Cow<'_, str> {
    if is_session_id(user_id) {
        Cow::Borrowed(user_id)
    } else {
        let digest = hex::encode(Sha256::digest(user_id.as_bytes()));
        Cow::Owned(format!("bb-{}", &digest[..40]))
    }
}

/// The session id in a `RecognizeText` path (`…/bots/{botId}/botAliases/{botAliasId}/botLocales/
/// {localeId}/sessions/{sessionId}/text`, below any prefix an SDK's endpoint URL adds), decoded
/// and checked.
pub fn session_from_path(path: &str) -> Result<String, ProxyError> {
    let segments: Vec<&str> = path.rsplit('/').take(9).collect();
    let shape = matches!(
        segments.as_slice(),
        ["text", s, "sessions", l, "botLocales", a, "botAliases", b, "bots"]
            if ![b, a, l, s].iter().any(|x| x.is_empty())
    );
    if !shape {
        return Err(ProxyError::new(
            404,
            Reason::NotFound,
            "expected /bots/{botId}/botAliases/{botAliasId}/botLocales/{localeId}/sessions/{sessionId}/text",
        ));
    }
    match path_segment(segments[1]) {
        Some(s) if is_session_id(&s) => Ok(s),
        _ => Err(ProxyError::bad_request(
            "invalid sessionId: 2-100 characters of [0-9a-zA-Z._:-]",
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Caller side: a Lex client (boto3's lexv2-runtime) calls the proxy

#[derive(Deserialize)]
struct RequestIn<'a> {
    #[serde(borrow)]
    text: Cow<'a, str>,
    #[serde(borrow, default, rename = "requestAttributes")]
    request_attributes: Option<&'a RawValue>,
    #[serde(default, rename = "sessionState")]
    _session_state: Option<serde::de::IgnoredAny>,
}

/// Parses a `RecognizeText` request: the user is the session in `path`, the text the message,
/// `requestAttributes` (string values) the metadata.
pub fn parse_request<'b>(path: &str, body: &'b [u8]) -> Result<ChatRequest<'b>, ProxyError> {
    let user = session_from_path(path)?;
    let wire: RequestIn<'_> = from_json(body).map_err(|_| json_error::<RequestIn<'_>>(body))?;
    let chars = wire.text.chars().count();
    if chars == 0 || chars > MAX_TEXT_CHARS {
        return Err(ProxyError::bad_request(
            "invalid field `text`: 1-1024 characters",
        ));
    }
    let metadata = wire.request_attributes.filter(|m| m.get() != "null");
    if let Some(m) = metadata {
        // Names as `Cow`: a name with an escape (`"\t…"`) cannot be borrowed as it is written.
        let attrs: Result<BTreeMap<Cow<'_, str>, Cow<'_, str>>, _> = serde_json::from_str(m.get());
        if attrs.is_err() {
            return Err(ProxyError::bad_request(
                "invalid field `requestAttributes`: must map names to strings",
            ));
        }
        strict_raw::check(m, "requestAttributes")?;
    }
    Ok(ChatRequest {
        user_id: Cow::Owned(user),
        content: Content::Text(wire.text),
        business_id: None,
        message_type: 0,
        request_id: None,
        metadata,
        raw_payload: None,
        callback_url: None,
    })
}

#[derive(Serialize)]
struct ButtonOut<'a> {
    text: &'a str,
    value: &'a str,
}

#[derive(Serialize)]
struct CardOut<'a> {
    title: &'a str,
    #[serde(rename = "imageUrl", skip_serializing_if = "Option::is_none")]
    image_url: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    buttons: Vec<ButtonOut<'a>>,
}

#[derive(Serialize)]
#[serde(tag = "contentType")]
enum MessageOut<'a> {
    PlainText {
        content: Cow<'a, str>,
    },
    ImageResponseCard {
        #[serde(rename = "imageResponseCard")]
        card: CardOut<'a>,
    },
}

/// A card of up to five buttons (Lex's limit) per message; a card's title must not be empty.
fn cards<'a>(title: &'a str, buttons: &'a [Button<'_>], out: &mut Vec<MessageOut<'a>>) {
    let title = if title.is_empty() {
        "Choose one"
    } else {
        title
    };
    for chunk in buttons.chunks(MAX_CARD_BUTTONS) {
        let buttons = (chunk.iter())
            .map(|b| ButtonOut {
                text: &b.title,
                value: b.payload_or_title(),
            })
            .collect();
        out.push(MessageOut::ImageResponseCard {
            card: CardOut {
                title,
                image_url: None,
                buttons,
            },
        });
    }
}

fn message_out<'a>(reply: &'a Reply<'_>, out: &mut Vec<MessageOut<'a>>) {
    let text = |t: Cow<'a, str>| MessageOut::PlainText { content: t };
    match reply {
        Reply::Text(t) => out.push(text(Cow::Borrowed(t))),
        Reply::Question { title, buttons } => cards(title, buttons, out),
        Reply::Button(b) => cards(&b.title, std::slice::from_ref(b), out),
        Reply::Url {
            url, text: label, ..
        } => out.push(text(match label {
            Some(l) if !l.is_empty() => Cow::Owned(format!("{l}: {url}")),
            _ => Cow::Borrowed(url),
        })),
        Reply::Media {
            kind: MediaKind::Image,
            url,
        } => out.push(MessageOut::ImageResponseCard {
            card: CardOut {
                title: "Image",
                image_url: Some(url),
                buttons: Vec::new(),
            },
        }),
        Reply::Media { url, .. } => out.push(text(Cow::Borrowed(url))),
    }
}

#[derive(Serialize)]
struct DialogActionOut {
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct SessionStateOut {
    #[serde(rename = "dialogAction")]
    dialog_action: DialogActionOut,
}

#[derive(Serialize)]
struct AnswerOut<'a> {
    messages: MessagesOut<'a>,
    #[serde(rename = "sessionState")]
    session_state: SessionStateOut,
    #[serde(rename = "sessionId")]
    session_id: &'a str,
}

#[derive(Serialize)]
#[serde(untagged)]
enum MessagesOut<'a> {
    Rendered(Vec<MessageOut<'a>>),
    Raw(&'a [&'a RawValue]),
}

/// Renders the answer as `RecognizeText`'s: a Lex bot's own messages verbatim when it kept them,
/// else each reply as PlainText or an ImageResponseCard; `Close` when the bot ended the
/// conversation, else `ElicitIntent`.
pub fn render_answer(req: &ChatRequest<'_>, answer: &ChatAnswer<'_>) -> Vec<u8> {
    let messages = match &answer.raw {
        Some((RawKind(NAME), raw)) => MessagesOut::Raw(raw),
        _ => {
            let mut out = Vec::with_capacity(answer.replies.len());
            for r in &answer.replies {
                message_out(r, &mut out);
            }
            MessagesOut::Rendered(out)
        }
    };
    let kind = if answer.conversation_end == Some(true) {
        "Close"
    } else {
        "ElicitIntent"
    };
    serde_json::to_vec(&AnswerOut {
        messages,
        session_state: SessionStateOut {
            dialog_action: DialogActionOut { kind },
        },
        session_id: &req.user_id,
    })
    .expect("lex answer serializes")
}

/// Lex's name for an error, from what the proxy knows of it.
fn error_type(err: &ProxyError) -> &'static str {
    match (err.status, err.reason) {
        (_, Reason::Forbidden) => "AccessDeniedException",
        (401 | 403, _) => "UnrecognizedClientException",
        (404, _) => "ResourceNotFoundException",
        (409, _) => "ConflictException",
        (429, _) => "ThrottlingException",
        (502 | 504, _) => "BadGatewayException",
        (503, _) => "ServiceUnavailableException",
        (500..=599, _) => "InternalServerException",
        _ => "ValidationException",
    }
}

#[derive(Serialize)]
struct ErrorOut<'a> {
    message: &'a str,
}

/// `{"message": "…"}`, as Lex writes its errors (its name is in `x-amzn-ErrorType`).
pub fn render_error(err: &ProxyError) -> Vec<u8> {
    serde_json::to_vec(&ErrorOut {
        message: &err.message,
    })
    .expect("lex error serializes")
}

/// A refusal of a signed request: 403 with Lex's name for it.
fn refused(reason: AuthReason, kind: &'static str, message: &'static str) -> Denied {
    Denied {
        reason,
        error: ProxyError::new(403, Reason::Unauthorized, message).with_header(ERROR_TYPE, kind),
    }
}

/// One `[[clients.lex-v2]]` credential: its secret, which checks the signature of its requests.
pub struct LexCaller {
    /// The secret, with the signing key of the last day and region callers signed for.
    keys: DayKeys,
}

impl fmt::Debug for LexCaller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LexCaller { secret: <redacted> }")
    }
}

impl LexCaller {
    /// A key with its secret.
    pub fn new(secret: impl Into<String>) -> Self {
        LexCaller {
            keys: DayKeys::new(secret),
        }
    }

    /// The access key id a request was signed with (`None` when it is not SigV4-signed).
    pub fn key_id<'a>(req: &WholeRequest<'a>) -> Option<&'a str> {
        let auth = req.head.header("authorization")?;
        let auth = sigv4::parse_authorization(std::str::from_utf8(auth).ok()?)?;
        Some(auth.access_key_id)
    }
}

impl RequestVerifier for LexCaller {
    fn verify(&self, req: &WholeRequest<'_>, now: u64) -> Result<(), Denied> {
        let auth = req
            .header_str("authorization")
            .and_then(sigv4::parse_authorization)
            .ok_or_else(incomplete)?;
        let date = req.header_str("x-amz-date").ok_or_else(incomplete)?;
        let signed_at = sigv4::parse_amz_date(date).ok_or_else(incomplete)?;
        if signed_at.abs_diff(now) > SKEW_SECS {
            return Err(refused(
                AuthReason::Expired,
                "InvalidSignatureException",
                "Signature expired: the request's X-Amz-Date is more than 5 minutes from the server's time",
            ));
        }
        if auth.scope.service != "lex" || auth.scope.date != &date[..8] {
            return Err(bad_signature());
        }
        let names: Vec<&str> = auth.signed_headers.split(';').collect();
        if !names.contains(&"host") {
            return Err(bad_signature());
        }
        let mut headers = Vec::with_capacity(names.len());
        for name in &names {
            headers.push((*name, req.header_str(name).ok_or_else(bad_signature)?));
        }
        let request = sigv4::Request {
            method: req.head.method(),
            path: req.head.path(),
            query: req.head.query(),
            headers: &headers,
            body: req.body,
        };
        let expected = self.keys.key(&auth.scope).sign(&request, date, &auth.scope);
        if sigv4::signature_matches(&expected, auth.signature) {
            Ok(())
        } else {
            Err(bad_signature())
        }
    }
}

fn incomplete() -> Denied {
    refused(
        AuthReason::Malformed,
        "IncompleteSignatureException",
        "Authorization must be AWS4-HMAC-SHA256 with Credential, SignedHeaders and Signature, and X-Amz-Date must be set",
    )
}

fn bad_signature() -> Denied {
    refused(
        AuthReason::BadSignature,
        "InvalidSignatureException",
        "The request signature we calculated does not match the signature you provided",
    )
}

// ---------------------------------------------------------------------------------------------
// Bot side: the proxy calls a Lex V2 bot

#[derive(Serialize)]
struct RequestOut<'a> {
    text: &'a str,
    #[serde(
        rename = "requestAttributes",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    request_attributes: BTreeMap<Cow<'a, str>, Cow<'a, str>>,
}

/// The request's metadata as Lex's string attributes: strings as they are, other values as their
/// JSON text; a Haptik business as `business_id`.
fn attributes<'a>(req: &'a ChatRequest<'_>) -> BTreeMap<Cow<'a, str>, Cow<'a, str>> {
    let mut out = BTreeMap::new();
    if let Some(raw) = req.metadata {
        let map: BTreeMap<Cow<'a, str>, &'a RawValue> =
            serde_json::from_str(raw.get()).unwrap_or_default();
        for (k, v) in map {
            let value = match serde_json::from_str::<Cow<'a, str>>(v.get()) {
                Ok(s) => s,
                Err(_) => Cow::Borrowed(v.get()),
            };
            out.insert(k, value);
        }
    }
    if let Some(b) = req.business_id {
        out.entry(Cow::Borrowed("business_id"))
            .or_insert_with(|| Cow::Owned(b.to_string()));
    }
    out
}

/// Renders the canonical request as a `RecognizeText` body. A button click sends its payload, a
/// link or media its URL; a flow trigger is refused (422) or sent as its flow id, as `flow` says.
pub fn render_request(
    req: &ChatRequest<'_>,
    flow: FlowTriggerPolicy,
) -> Result<Vec<u8>, ProxyError> {
    let text = text_for_bot(req, flow, "a Lex bot")?;
    if text.chars().count() > MAX_TEXT_CHARS {
        return Err(ProxyError::new(
            422,
            Reason::Untranslatable,
            "a Lex bot takes at most 1024 characters of text",
        ));
    }
    let out = RequestOut {
        text,
        request_attributes: attributes(req),
    };
    Ok(serde_json::to_vec(&out).expect("lex request serializes"))
}

#[derive(Deserialize)]
struct AnswerIn<'a> {
    #[serde(borrow, default)]
    messages: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default, rename = "sessionState")]
    session_state: Option<SessionStateIn<'a>>,
}

#[derive(Deserialize)]
struct SessionStateIn<'a> {
    #[serde(borrow, default, rename = "dialogAction")]
    dialog_action: Option<DialogActionIn<'a>>,
}

#[derive(Deserialize)]
struct DialogActionIn<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
}

#[derive(Deserialize)]
struct MessageIn<'a> {
    #[serde(borrow, rename = "contentType")]
    content_type: Cow<'a, str>,
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "imageResponseCard")]
    card: Option<CardIn<'a>>,
}

#[derive(Deserialize)]
struct CardIn<'a> {
    #[serde(borrow)]
    title: Cow<'a, str>,
    #[serde(borrow, default, rename = "imageUrl")]
    image_url: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    buttons: Option<Vec<ButtonIn<'a>>>,
}

#[derive(Deserialize)]
struct ButtonIn<'a> {
    #[serde(borrow)]
    text: Cow<'a, str>,
    #[serde(borrow)]
    value: Cow<'a, str>,
}

/// A Lex answer, for the messages about one that is not.
const LEX_ANSWER: Expected = Expected {
    name: "Lex",
    shape: "a JSON object with a `messages` array",
    opens: b"{",
    keys: &[
        "messages",
        "sessionState",
        "dialogAction",
        "type",
        "contentType",
        "content",
        "imageResponseCard",
        "title",
        "imageUrl",
        "buttons",
        "text",
        "value",
    ],
};

/// SSML as the text a user would hear: the markup removed.
fn ssml_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_tag = false;
    for c in s.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.trim().to_owned()
}

/// One Lex message into the canonical replies; false when it has none (counted as dropped).
fn reply_in<'a>(m: MessageIn<'a>, replies: &mut Vec<Reply<'a>>) -> bool {
    match (m.content_type.as_ref(), m.content, m.card) {
        ("PlainText", Some(t), _) if !t.is_empty() => replies.push(Reply::Text(t)),
        ("SSML", Some(t), _) => replies.push(Reply::Text(Cow::Owned(ssml_text(&t)))),
        ("ImageResponseCard", _, Some(card)) => {
            if let Some(url) = card.image_url.filter(|u| is_http_url(u)) {
                replies.push(Reply::Media {
                    kind: MediaKind::Image,
                    url,
                });
            }
            let buttons: Vec<Button<'a>> = (card.buttons.unwrap_or_default().into_iter())
                .map(|b| Button {
                    title: b.text,
                    payload: Some(b.value),
                })
                .collect();
            if buttons.is_empty() {
                replies.push(Reply::Text(card.title));
            } else {
                replies.push(Reply::Question {
                    title: card.title,
                    buttons,
                });
            }
        }
        _ => return false,
    }
    true
}

/// Parses a `RecognizeText` answer (any status). PlainText and SSML are texts, an
/// ImageResponseCard its image and a question with its buttons; a CustomPayload (or anything else)
/// is kept only for a Lex caller (`keep_raw`) and otherwise counted as dropped. `dialogAction`
/// `Close` ends the conversation. A non-2xx status or a body that is not a Lex answer is a 502
/// whose message repeats nothing the bot wrote.
pub fn parse_answer(
    status: u16,
    body: &[u8],
    keep_raw: bool,
) -> Result<ChatAnswer<'_>, ProxyError> {
    if !(200..300).contains(&status) {
        return Err(ProxyError::new(
            502,
            Reason::BackendStatus,
            format!("the backend answered HTTP {status}"),
        )
        .with_detail(excerpt(body)));
    }
    let wire: AnswerIn<'_> = from_json(body).map_err(|_| LEX_ANSWER.body::<AnswerIn<'_>>(body))?;
    let raw = wire.messages.unwrap_or_default();
    let mut answer = ChatAnswer {
        replies: Vec::with_capacity(raw.len()),
        ..ChatAnswer::default()
    };
    for (i, m) in raw.iter().enumerate() {
        let message: MessageIn<'_> = serde_json::from_str(m.get()).map_err(|_| {
            LEX_ANSWER.part(
                std::marker::PhantomData::<MessageIn<'_>>,
                m.get().as_bytes(),
                &format!("messages[{i}]"),
            )
        })?;
        if !reply_in(message, &mut answer.replies) {
            answer.dropped += 1;
        }
    }
    let action = wire.session_state.and_then(|s| s.dialog_action);
    answer.conversation_end = action.map(|a| a.kind == "Close");
    if keep_raw {
        answer.raw = Some((RawKind(NAME), raw));
    }
    Ok(answer)
}

// ---------------------------------------------------------------------------------------------
// The dialect interface

/// Amazon Lex V2's runtime, as callers and bots speak it.
pub struct Lex;

/// `[[clients.lex-v2]]`: one AWS access key allowed to call the proxy.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientConfig {
    access_key_id: String,
    secret_access_key: SecretSource,
}

/// A Lex bot's settings (`dialect = "lex-v2"`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BotConfig {
    region: String,
    bot_id: String,
    bot_alias_id: String,
    locale_id: String,
    access_key_id: String,
    secret_access_key: SecretSource,
    session_token: Option<SecretSource>,
}

/// A configured Lex bot: where its sessions live and the credentials requests are signed with.
struct LexBot {
    region: String,
    /// `/bots/{botId}/botAliases/{aliasId}/botLocales/{localeId}/sessions/`.
    sessions: String,
    access_key_id: String,
    session_token: Option<String>,
    /// The secret, with the current day's signing key (deriving it is four HMACs, about a third
    /// of a signature's instructions: bench/RESULTS.md).
    keys: DayKeys,
}

impl fmt::Debug for LexBot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LexBot")
            .field("region", &self.region)
            .field("sessions", &self.sessions)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Checks an id that goes into the bot's path: Lex's ids are letters, digits, `_` and `-`.
fn path_id(key: &str, value: &str) -> Result<(), ConfigError> {
    let ok = !value.is_empty()
        && value.len() <= 100
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    ok.then_some(())
        .ok_or_else(|| ConfigError::new(key, "must be 1-100 letters, digits, `_` or `-`"))
}

impl CallerDialect for Lex {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Lex callers use Lex's own paths, so they are told apart by the route, not among `auto`.
    fn in_auto(&self) -> bool {
        false
    }

    fn detect(&self, head: &dyn RequestHead) -> Detection {
        match head.header("authorization") {
            Some(a) if a.starts_with(sigv4::ALGORITHM.as_bytes()) => Detection::Yes,
            _ => Detection::No,
        }
    }

    fn credential_hint(&self) -> &'static str {
        "Lex V2 (Authorization: AWS4-HMAC-SHA256)"
    }

    fn detect_body(&self, _body: &[u8]) -> bool {
        false
    }

    fn credential<'h>(&self, head: &'h dyn RequestHead) -> Result<Presented<'h>, Denied> {
        let Some(value) = head.header("authorization") else {
            return Err(refused(
                AuthReason::Missing,
                "MissingAuthenticationTokenException",
                "Missing Authentication Token",
            ));
        };
        let auth = std::str::from_utf8(value)
            .ok()
            .and_then(sigv4::parse_authorization)
            .ok_or_else(incomplete)?;
        Ok(Presented::KeyId {
            dialect: NAME,
            key_id: Cow::Borrowed(auth.access_key_id),
        })
    }

    fn client(
        &self,
        key: &str,
        name: &str,
        table: toml::Table,
    ) -> Result<ClientEntry, ConfigError> {
        let c: ClientConfig = settings(key, table)?;
        let secret = c
            .secret_access_key
            .resolve(&format!("{key}.secret_access_key"))?;
        if c.access_key_id.is_empty() || c.access_key_id.contains(['/', ' ', ',']) {
            return Err(ConfigError::new(
                format!("{key}.access_key_id"),
                "must be an access key id (no `/`, `,` or spaces)",
            ));
        }
        let demo = (secret == "demo-lex-secret").then(|| format!("lex-v2 key of {name}"));
        let grant = Grant {
            verifier: Some(Arc::new(LexCaller::new(secret))),
            ..Grant::named(name)
        };
        Ok(ClientEntry {
            credential: ClientCredential::Token {
                digest: key_id_digest(NAME, &c.access_key_id),
                grant,
            },
            demo,
        })
    }

    fn parse_request<'b>(&self, path: &str, body: &'b [u8]) -> Result<ChatRequest<'b>, ProxyError> {
        parse_request(path, body)
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
        _ctx: &AnswerContext<'_>,
    ) -> Vec<u8> {
        render_answer(req, answer)
    }

    fn render_error(&self, err: &ProxyError) -> Vec<u8> {
        render_error(err)
    }

    /// Lex refuses credentials with 403, never 401.
    fn error_status(&self, err: &ProxyError) -> u16 {
        if err.status == 401 {
            403
        } else {
            err.status
        }
    }

    fn error_headers(&self, err: &ProxyError, add: &mut dyn FnMut(&'static str, &str)) {
        if !err.headers.iter().any(|(n, _)| *n == ERROR_TYPE) {
            add(ERROR_TYPE, error_type(err));
        }
    }

    fn api_document(&self) -> &'static str {
        include_str!("../../../docs/openapi/lex-v2.json")
    }
}

impl BotDialect for Lex {
    fn name(&self) -> &'static str {
        NAME
    }

    fn keys(&self) -> &'static [&'static str] {
        &[
            "region",
            "bot_id",
            "bot_alias_id",
            "locale_id",
            "access_key_id",
            "secret_access_key",
            "session_token",
        ]
    }

    fn configure(&self, key: &str, table: toml::Table) -> Result<Box<dyn Bot>, ConfigError> {
        let c: BotConfig = settings(key, table)?;
        path_id(&format!("{key}.bot_id"), &c.bot_id)?;
        path_id(&format!("{key}.bot_alias_id"), &c.bot_alias_id)?;
        path_id(&format!("{key}.locale_id"), &c.locale_id)?;
        path_id(&format!("{key}.region"), &c.region)?;
        let secret = c
            .secret_access_key
            .resolve(&format!("{key}.secret_access_key"))?;
        let session_token = match c.session_token {
            Some(t) => Some(t.resolve(&format!("{key}.session_token"))?),
            None => None,
        };
        // Both travel in headers: nothing a header cannot hold (a stray newline from a file).
        header_safe(&format!("{key}.access_key_id"), &c.access_key_id)?;
        if let Some(t) = &session_token {
            header_safe(&format!("{key}.session_token"), t)?;
        }
        Ok(Box::new(LexBot {
            region: c.region,
            sessions: format!(
                "/bots/{}/botAliases/{}/botLocales/{}/sessions/",
                c.bot_id, c.bot_alias_id, c.locale_id
            ),
            access_key_id: c.access_key_id,
            session_token,
            keys: DayKeys::new(secret),
        }))
    }
}

/// One session per user: the user's own ([`session_id`]) until the bot ends it, then a fresh one.
const SESSIONS: SessionPerUser = SessionPerUser(session_id);

impl Bot for LexBot {
    fn dialect(&self) -> &'static str {
        NAME
    }

    /// `…/sessions/{sessionId}/text`, the session the user's ([`session_id`]), `:` escaped.
    fn target(&self, req: &ChatRequest<'_>, conv: Option<&Conversation>) -> Option<String> {
        let session = conv.map_or_else(
            || session_id(&req.user_id),
            |c| Cow::Borrowed(c.id.as_str()),
        );
        let session = session.replace(':', "%3A");
        Some(format!("{}{session}/text", self.sessions))
    }

    fn conversations(&self) -> Option<&dyn Conversations> {
        Some(&SESSIONS)
    }

    fn render_request(
        &self,
        req: &ChatRequest<'_>,
        ctx: &BotRequestContext<'_>,
    ) -> Result<Vec<u8>, ProxyError> {
        render_request(req, ctx.flow_trigger)
    }

    /// SigV4 over the method, path, query, `content-type`, `host`, `x-amz-date` (and the session
    /// token when there is one) and the body.
    fn sign(&self, out: &Outgoing<'_>, add: &mut dyn FnMut(&'static str, &str)) {
        let amz_date = sigv4::amz_date(out.unix_secs);
        let scope = sigv4::Scope {
            date: &amz_date[..8],
            region: &self.region,
            service: "lex",
        };
        let mut headers = vec![
            ("content-type", out.content_type),
            ("host", out.authority),
            ("x-amz-date", amz_date.as_str()),
        ];
        if let Some(t) = &self.session_token {
            headers.push(("x-amz-security-token", t));
        }
        let request = sigv4::Request {
            method: out.method,
            path: out.path(),
            query: out.query(),
            headers: &headers,
            body: out.body,
        };
        let signature = self.keys.key(&scope).sign(&request, &amz_date, &scope);
        let names: Vec<&str> = headers.iter().map(|(n, _)| *n).collect();
        let value = sigv4::authorization(&self.access_key_id, &scope, &names.join(";"), &signature);
        add("x-amz-date", &amz_date);
        if let Some(t) = &self.session_token {
            add("x-amz-security-token", t);
        }
        add("authorization", &value);
    }

    fn parse_answer<'b>(
        &self,
        status: u16,
        body: &'b [u8],
        keep_raw: bool,
    ) -> Result<ChatAnswer<'b>, ProxyError> {
        parse_answer(status, body, keep_raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::AfterAnswer;
    use serde_json::{json, Value};

    const PATH: &str =
        "/bots/ABCDEFGHIJ/botAliases/TSTALIASID/botLocales/en_US/sessions/user%3A1.a/text";

    #[test]
    fn reads_the_session_from_the_path_and_the_text_from_the_body() {
        let body =
            br#"{"text":"hello","requestAttributes":{"plan":"gold"},"sessionState":{"x":1}}"#;
        let req = parse_request(PATH, body).unwrap();
        assert_eq!(req.user_id, "user:1.a");
        assert_eq!(req.content, Content::Text("hello".into()));
        assert_eq!(req.metadata.unwrap().get(), r#"{"plan":"gold"}"#);
    }

    #[test]
    fn refuses_bad_paths_texts_and_attributes() {
        let ok = br#"{"text":"hi"}"#;
        assert_eq!(parse_request("/bots/x/text", ok).unwrap_err().status, 404);
        let below = format!("/to-csml{PATH}");
        assert_eq!(parse_request(&below, ok).unwrap().user_id, "user:1.a");
        let bad_session = PATH.replace("user%3A1.a", "a%20b");
        assert_eq!(parse_request(&bad_session, ok).unwrap_err().status, 400);
        assert!(parse_request(PATH, br#"{"text":""}"#)
            .unwrap_err()
            .message
            .contains("text"));
        let long = format!(r#"{{"text":"{}"}}"#, "x".repeat(1025));
        assert_eq!(
            parse_request(PATH, long.as_bytes()).unwrap_err().status,
            400
        );
        let escaped = br#"{"text":"hi","requestAttributes":{"\td":"1"}}"#;
        assert!(
            parse_request(PATH, escaped).is_ok(),
            "an escaped name is a name"
        );
        let e = parse_request(PATH, br#"{"text":"hi","requestAttributes":{"n":1}}"#).unwrap_err();
        assert!(e.message.contains("requestAttributes"));
    }

    #[test]
    fn session_ids_are_kept_or_hashed_stably() {
        assert_eq!(session_id("user:1.a"), "user:1.a");
        let hashed = session_id("jane doe@example.com");
        assert!(hashed.starts_with("bb-") && hashed.len() == 43);
        assert!(is_session_id(&hashed));
        assert_eq!(hashed, session_id("jane doe@example.com"));
        assert_ne!(hashed, session_id("jane doe@example.org"));
    }

    #[test]
    fn renders_requests_with_string_attributes() {
        let meta: Box<RawValue> = serde_json::from_str(r#"{"plan":"gold","n":2}"#).unwrap();
        let mut req = parse_request(PATH, br#"{"text":"hi"}"#).unwrap();
        req.metadata = Some(&meta);
        req.business_id = Some(7);
        let v: Value =
            serde_json::from_slice(&render_request(&req, FlowTriggerPolicy::Reject).unwrap())
                .unwrap();
        assert_eq!(
            v,
            json!({"text": "hi", "requestAttributes": {"plan": "gold", "n": "2", "business_id": "7"}})
        );
        req.content = Content::FlowTrigger {
            flow_id: "start".into(),
            close_flows: None,
        };
        assert_eq!(
            render_request(&req, FlowTriggerPolicy::Reject)
                .unwrap_err()
                .status,
            422
        );
        let v: Value =
            serde_json::from_slice(&render_request(&req, FlowTriggerPolicy::Text).unwrap())
                .unwrap();
        assert_eq!(v["text"], "start");
    }

    #[test]
    fn parses_every_message_kind() {
        let body = json!({"messages": [
            {"contentType": "PlainText", "content": "Hi"},
            {"contentType": "SSML", "content": "<speak>Hello <break/>there</speak>"},
            {"contentType": "ImageResponseCard", "imageResponseCard": {"title": "Pick", "imageUrl": "https://x/y.png",
                "buttons": [{"text": "A", "value": "a"}]}},
            {"contentType": "CustomPayload", "content": "{\"x\":1}"}
        ], "sessionState": {"dialogAction": {"type": "Close"}, "intent": {"name": "Greet", "slots": {"s": null}}}});
        let bytes = serde_json::to_vec(&body).unwrap();
        let a = parse_answer(200, &bytes, false).unwrap();
        assert_eq!(a.replies[0], Reply::Text("Hi".into()));
        assert_eq!(a.replies[1], Reply::Text("Hello there".into()));
        assert_eq!(
            a.replies[2],
            Reply::Media {
                kind: MediaKind::Image,
                url: "https://x/y.png".into()
            }
        );
        assert_eq!(
            a.replies[3],
            Reply::Question {
                title: "Pick".into(),
                buttons: vec![Button {
                    title: "A".into(),
                    payload: Some("a".into())
                }]
            }
        );
        assert_eq!((a.dropped, a.conversation_end), (1, Some(true)));
        assert!(a.raw.is_none());
        let kept = parse_answer(200, &bytes, true).unwrap();
        assert_eq!(kept.raw.as_ref().unwrap().1.len(), 4);
    }

    #[test]
    fn failures_are_502s_that_repeat_nothing() {
        let e = parse_answer(500, b"secret words", false).unwrap_err();
        assert_eq!((e.status, e.reason), (502, Reason::BackendStatus));
        let e = parse_answer(200, br#"{"messages":[{"content":"secret"}]}"#, false).unwrap_err();
        assert_eq!(e.status, 502);
        assert!(!e.message.contains("secret"), "{}", e.message);
    }

    #[test]
    fn renders_answers_and_passes_its_own_messages_through() {
        let req = parse_request(PATH, br#"{"text":"hi"}"#).unwrap();
        let buttons: Vec<Button> = (0..7)
            .map(|i| Button {
                title: format!("b{i}").into(),
                payload: None,
            })
            .collect();
        let answer = ChatAnswer {
            replies: vec![
                Reply::Text("Hi".into()),
                Reply::Question {
                    title: "".into(),
                    buttons,
                },
            ],
            conversation_end: Some(true),
            ..Default::default()
        };
        let v: Value = serde_json::from_slice(&render_answer(&req, &answer)).unwrap();
        assert_eq!(v["sessionId"], "user:1.a");
        assert_eq!(v["sessionState"]["dialogAction"]["type"], "Close");
        assert_eq!(
            v["messages"][0],
            json!({"contentType": "PlainText", "content": "Hi"})
        );
        assert_eq!(
            v["messages"][1]["imageResponseCard"]["buttons"]
                .as_array()
                .unwrap()
                .len(),
            5
        );
        assert_eq!(
            v["messages"][2]["imageResponseCard"]["buttons"][1],
            json!({"text": "b6", "value": "b6"})
        );
        let own = br#"{"messages":[{"contentType":"CustomPayload","content":"{\"a\":1}"}]}"#;
        let kept = parse_answer(200, own, true).unwrap();
        let v: Value = serde_json::from_slice(&render_answer(&req, &kept)).unwrap();
        assert_eq!(
            v["messages"],
            json!([{"contentType": "CustomPayload", "content": "{\"a\":1}"}])
        );
        assert_eq!(v["sessionState"]["dialogAction"]["type"], "ElicitIntent");
    }

    #[test]
    fn errors_carry_lexs_names() {
        let name = |e: ProxyError| {
            let mut got = String::new();
            Lex.error_headers(&e, &mut |_, v| got = v.to_owned());
            (Lex.error_status(&e), got)
        };
        assert_eq!(
            name(ProxyError::bad_request("x")),
            (400, "ValidationException".into())
        );
        assert_eq!(
            name(ProxyError::unauthorized("x")),
            (403, "UnrecognizedClientException".into())
        );
        assert_eq!(
            name(ProxyError::new(429, Reason::RateLimited, "x")),
            (429, "ThrottlingException".into())
        );
        let v: Value =
            serde_json::from_slice(&render_error(&ProxyError::bad_request("bad"))).unwrap();
        assert_eq!(v, json!({"message": "bad"}));
    }

    struct Head<'a>(&'a [(&'a str, String)], &'a str);

    impl RequestHead for Head<'_> {
        fn method(&self) -> &str {
            "POST"
        }
        fn path(&self) -> &str {
            self.1
        }
        fn header(&self, name: &str) -> Option<&[u8]> {
            self.0
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.as_bytes())
        }
        fn query(&self) -> Option<&str> {
            None
        }
    }

    /// The bot of the PATH fixture, signing with `s3cret`.
    fn test_bot() -> Box<dyn Bot> {
        let table: toml::Table = toml::from_str(
            r#"region = "us-east-1"
            bot_id = "ABCDEFGHIJ"
            bot_alias_id = "TSTALIASID"
            locale_id = "en_US"
            access_key_id = "AKID"
            secret_access_key = "s3cret""#,
        )
        .unwrap();
        BotDialect::configure(&Lex, "backends[0]", table).unwrap()
    }

    /// A user's first session is their own id; once the bot closes it, the next goes to a fresh
    /// session, in the path.
    #[test]
    fn a_closed_session_is_followed_by_a_fresh_one() {
        let bot = test_bot();
        let c = bot.conversations().unwrap();
        let first = c.first("user:1");
        assert_eq!(first.id, "user:1");
        let req = parse_request(PATH, br#"{"text":"hi"}"#).unwrap();
        let closed = br#"{"messages":[],"sessionState":{"dialogAction":{"type":"Close"}}}"#;
        let answer = bot.parse_answer(200, closed, false).unwrap();
        let AfterAnswer::Restart(next) = c.after(&first, &answer, [0xab; 16]) else {
            panic!("a closed session must restart");
        };
        assert_eq!(next.id, format!("bb-{}", "ab".repeat(16)));
        let path = bot.target(&req, Some(&next)).unwrap();
        assert!(
            path.ends_with(&format!("/sessions/{}/text", next.id)),
            "{path}"
        );
        let open = br#"{"messages":[],"sessionState":{"dialogAction":{"type":"ElicitSlot"}}}"#;
        let answer = bot.parse_answer(200, open, false).unwrap();
        assert_eq!(c.after(&next, &answer, [1; 16]), AfterAnswer::Keep);
    }

    /// What the bot side signs, the caller side accepts; any change to what was signed is refused.
    #[test]
    fn a_signed_request_verifies_and_a_changed_one_does_not() {
        let bot = test_bot();
        let req = parse_request(PATH, br#"{"text":"hi"}"#).unwrap();
        let path = bot.target(&req, None).unwrap();
        assert_eq!(path, PATH);
        let body = br#"{"text":"hi"}"#;
        let now = 1_796_589_426;
        let out = Outgoing {
            unix_secs: now,
            method: "POST",
            authority: "127.0.0.1:9",
            target: &path,
            content_type: "application/json",
            body,
            token: None,
        };
        let mut headers = vec![
            ("content-type", "application/json".to_owned()),
            ("host", "127.0.0.1:9".to_owned()),
        ];
        bot.sign(&out, &mut |n, v| headers.push((n, v.to_owned())));
        let caller = LexCaller::new("s3cret");
        let head = Head(&headers, &path);
        assert_eq!(
            caller.verify(&WholeRequest { head: &head, body }, now + 299),
            Ok(())
        );
        let e = caller
            .verify(
                &WholeRequest {
                    head: &head,
                    body: br#"{"text":"ho"}"#,
                },
                now,
            )
            .unwrap_err();
        assert_eq!(e.reason, AuthReason::BadSignature);
        let e = caller
            .verify(&WholeRequest { head: &head, body }, now + 301)
            .unwrap_err();
        assert_eq!((e.reason, e.error.status), (AuthReason::Expired, 403));
        let other = LexCaller::new("other");
        assert!(other
            .verify(&WholeRequest { head: &head, body }, now)
            .is_err());
        let moved = PATH.replace("user%3A1.a", "user%3A2.a");
        let head = Head(&headers, &moved);
        assert!(caller
            .verify(&WholeRequest { head: &head, body }, now)
            .is_err());
    }
}
