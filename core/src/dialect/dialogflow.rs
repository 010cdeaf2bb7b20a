//! Google Dialogflow CX (REST v3) `detectIntent`, both as a caller dialect and as a bot dialect.
//!
//! `POST /v3/projects/{p}/locations/{l}/agents/{a}/sessions/{session}:detectIntent` with
//! `{"queryInput": {"text": {"text"} | "event": {"event"}, "languageCode"}, "queryParams":
//! {"parameters": {…}}}`; the answer's `queryResult.responseMessages[]` hold `text.text[]`,
//! `payload` (Dialogflow Messenger's `richContent`), `endInteraction`. The session is the user.
//!
//! Bots are called with an OAuth2 access token minted from a service-account key file: an RS256
//! JWT (iss = client_email, scope cloud-platform, aud = the key's `token_uri`, one hour) exchanged
//! with the JWT-bearer grant ([`TokenSource`]; the shell keeps and refreshes the token).
//!
//! Callers (Google's client libraries) send `Authorization: Bearer` with either a self-signed
//! service-account JWT, verified per `[[clients.dialogflow-cx]]` against that account's public key,
//! or a static token configured as is or as its SHA-256. Errors are Google's
//! `{"error": {"code", "message", "status"}}`. Enums are never read, so names and integers
//! (`$alt=json;enum-encoding=int`) are both fine.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::auth::{
    key_id_digest, AuthReason, ClientCredential, Denied, Grant, Presented, RequestVerifier,
};
use crate::config::{ConfigError, SecretSource};
use crate::dialect::bad_answer::{excerpt, Expected};
use crate::dialect::haptik::is_http_url;
use crate::dialect::{
    from_json, path_segment, settings, strict_raw, AnswerContext, AnswerShape, Bot, BotDialect,
    BotRequestContext, CallerDialect, ClientEntry, Conversation, Conversations, Detection,
    Outgoing, RequestHead, SessionPerUser, TokenSource,
};
use crate::error::{json_error, ProxyError, Reason};
use crate::jwt::{self, PrivateKey, PublicKey};
use crate::model::{Button, ChatAnswer, ChatRequest, Content, MediaKind, RawKind, Reply};
use crate::request::WholeRequest;

/// The dialect's config name.
const NAME: &str = "dialogflow-cx";
/// The most characters Dialogflow takes in a session id.
const MAX_SESSION: usize = 36;
/// The scope minted tokens carry.
const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";
/// The audience of a caller's self-signed JWT.
const AUDIENCE: &str = "https://dialogflow.googleapis.com/";
/// How far a caller JWT's times may be off, either way.
const SKEW_SECS: u64 = 60;
/// The longest a caller JWT may live (Google's limit).
const MAX_LIFETIME_SECS: u64 = 3600;

// ---------------------------------------------------------------------------------------------
// Sessions and paths

/// The Dialogflow session id of a user: the user id when it is at most 36 of `[A-Za-z0-9_.:-]`,
/// else `bb-` and 32 hex digits of its SHA-256. Stable, so one user keeps one session everywhere.
pub fn session_id(user_id: &str) -> Cow<'_, str> {
    let fits = !user_id.is_empty()
        && user_id.len() <= MAX_SESSION
        && (user_id.bytes()).all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if fits {
        Cow::Borrowed(user_id)
    } else {
        let digest = hex::encode(Sha256::digest(user_id.as_bytes()));
        Cow::Owned(format!("bb-{}", &digest[..32]))
    }
}

/// The session in a `…/sessions/{session}:detectIntent` path (any environment), percent-decoded.
pub fn session_from_path(path: &str) -> Result<String, ProxyError> {
    let not_found = || {
        ProxyError::new(
            404,
            Reason::NotFound,
            "expected /v3/projects/{project}/locations/{location}/agents/{agent}/sessions/{session}:detectIntent",
        )
    };
    let rest = path.strip_suffix(":detectIntent").ok_or_else(not_found)?;
    let (before, session) = rest.rsplit_once('/').ok_or_else(not_found)?;
    if !before.ends_with("/sessions") || !before.contains("/v3/projects/") {
        return Err(not_found());
    }
    let decoded = path_segment(session).unwrap_or_default();
    if decoded.is_empty() || decoded.chars().count() > MAX_SESSION {
        return Err(ProxyError::bad_request("invalid session: 1-36 characters"));
    }
    Ok(decoded)
}

// ---------------------------------------------------------------------------------------------
// Caller side: a Dialogflow client calls the proxy

#[derive(Deserialize)]
struct RequestIn<'a> {
    #[serde(borrow, rename = "queryInput")]
    query_input: QueryInputIn<'a>,
    #[serde(borrow, default, rename = "queryParams")]
    query_params: Option<QueryParamsIn<'a>>,
}

#[derive(Deserialize)]
struct QueryInputIn<'a> {
    #[serde(borrow, default)]
    text: Option<TextIn<'a>>,
    #[serde(borrow, default)]
    event: Option<EventIn<'a>>,
    #[serde(borrow, default)]
    intent: Option<IntentIn<'a>>,
    #[serde(borrow, default, rename = "languageCode")]
    _language_code: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct TextIn<'a> {
    #[serde(borrow)]
    text: Cow<'a, str>,
}

#[derive(Deserialize)]
struct EventIn<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
}

#[derive(Deserialize)]
struct IntentIn<'a> {
    #[serde(borrow)]
    intent: Cow<'a, str>,
}

#[derive(Deserialize)]
struct QueryParamsIn<'a> {
    #[serde(borrow, default)]
    parameters: Option<&'a RawValue>,
}

/// Parses a `detectIntent` request: the user is the session in `path`; a text is a text, an event
/// a flow trigger, an intent a click on its name; `queryParams.parameters` is the metadata.
pub fn parse_request<'b>(path: &str, body: &'b [u8]) -> Result<ChatRequest<'b>, ProxyError> {
    let user = session_from_path(path)?;
    let wire: RequestIn<'_> = from_json(body).map_err(|_| json_error::<RequestIn<'_>>(body))?;
    let q = wire.query_input;
    let content = match (q.text, q.event, q.intent) {
        (Some(t), None, None) if !t.text.is_empty() => Content::Text(t.text),
        (None, Some(e), None) if !e.event.is_empty() => Content::FlowTrigger {
            flow_id: e.event,
            close_flows: None,
        },
        (None, None, Some(i)) if !i.intent.is_empty() => Content::Payload(i.intent),
        _ => return Err(ProxyError::bad_request(
            "invalid field `queryInput`: give exactly one non-empty `text`, `event` or `intent`",
        )),
    };
    let metadata = (wire.query_params.and_then(|p| p.parameters)).filter(|m| m.get() != "null");
    if let Some(m) = metadata {
        if !m.get().starts_with('{') {
            return Err(ProxyError::bad_request(
                "invalid field `queryParams.parameters`: must be an object",
            ));
        }
        strict_raw::check(m, "queryParams.parameters")?;
    }
    Ok(ChatRequest {
        user_id: Cow::Owned(user),
        content,
        business_id: None,
        message_type: 0,
        request_id: None,
        metadata,
        raw_payload: None,
        callback_url: None,
    })
}

/// One reply as Dialogflow response messages (Dialogflow Messenger's rich content for the rest).
fn message_out(reply: &Reply<'_>, out: &mut Vec<Value>) {
    let rich = |item: Value| json!({"payload": {"richContent": [[item]]}});
    match reply {
        Reply::Text(t) => out.push(json!({"text": {"text": [t]}})),
        Reply::Question { title, buttons } => {
            if !title.is_empty() {
                out.push(json!({"text": {"text": [title]}}));
            }
            let options: Vec<Value> = buttons.iter().map(|b| json!({"text": b.title})).collect();
            out.push(rich(json!({"type": "chips", "options": options})));
        }
        Reply::Button(b) => out.push(rich(
            json!({"type": "chips", "options": [{"text": b.title}]}),
        )),
        Reply::Url { url, text, title } => {
            let label = text.as_deref().or(title.as_deref()).unwrap_or(url);
            out.push(rich(json!({"type": "button", "text": label, "link": url})));
        }
        Reply::Media {
            kind: MediaKind::Image,
            url,
        } => out.push(rich(
            json!({"type": "image", "rawUrl": url, "accessibilityText": "image"}),
        )),
        Reply::Media { kind, url } => out.push(rich(
            json!({"type": "button", "text": format!("Open {}", kind.as_str()), "link": url}),
        )),
    }
}

#[derive(Serialize)]
struct AnswerOut<'a> {
    #[serde(rename = "responseId")]
    response_id: &'a str,
    #[serde(rename = "queryResult")]
    query_result: QueryResultOut<'a>,
}

#[derive(Serialize)]
struct QueryResultOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(rename = "responseMessages")]
    response_messages: MessagesOut<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum MessagesOut<'a> {
    Rendered(Vec<Value>),
    Raw(&'a [&'a RawValue]),
}

/// Renders the answer as a `DetectIntentResponse`: a Dialogflow bot's own messages verbatim when
/// kept, else each reply as a text or rich content, and `endInteraction` when the bot ended the
/// conversation.
pub fn render_answer(req: &ChatRequest<'_>, answer: &ChatAnswer<'_>, response_id: &str) -> Vec<u8> {
    let messages = match &answer.raw {
        Some((RawKind(NAME), raw)) => MessagesOut::Raw(raw),
        _ => {
            let mut out = Vec::with_capacity(answer.replies.len() + 1);
            for r in &answer.replies {
                message_out(r, &mut out);
            }
            if answer.conversation_end == Some(true) {
                out.push(json!({"endInteraction": {}}));
            }
            MessagesOut::Rendered(out)
        }
    };
    let text = match &req.content {
        Content::Text(t) => Some(t.as_ref()),
        _ => None,
    };
    serde_json::to_vec(&AnswerOut {
        response_id,
        query_result: QueryResultOut {
            text,
            response_messages: messages,
        },
    })
    .expect("dialogflow answer serializes")
}

/// Google's canonical name for a status.
fn status_name(err: &ProxyError) -> &'static str {
    match err.status {
        400 | 413 | 415 | 422 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        405 => "UNIMPLEMENTED",
        408 | 504 => "DEADLINE_EXCEEDED",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        502 | 503 => "UNAVAILABLE",
        _ => "INTERNAL",
    }
}

/// `{"error": {"code", "message", "status"}}`, as Google APIs answer errors.
pub fn render_error(err: &ProxyError) -> Vec<u8> {
    serde_json::to_vec(&json!({"error": {
        "code": err.status,
        "message": err.message,
        "status": status_name(err),
    }}))
    .expect("dialogflow error serializes")
}

/// One `[[clients.dialogflow-cx]]` service account: its public key checks its self-signed JWTs.
pub struct ServiceAccountCaller {
    email: String,
    key: PublicKey,
}

impl fmt::Debug for ServiceAccountCaller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccountCaller")
            .field("email", &self.email)
            .finish_non_exhaustive()
    }
}

fn unauthenticated(reason: AuthReason, message: &'static str) -> Denied {
    Denied::new(reason, message)
}

/// The bearer token of a request head, if any.
fn bearer(head: &dyn RequestHead) -> Option<&str> {
    let v = std::str::from_utf8(head.header("authorization")?)
        .ok()?
        .trim();
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl ServiceAccountCaller {
    /// Checks the claims of a verified token at `now`: issued by this account, for Dialogflow,
    /// current.
    fn check_claims(&self, claims: &jwt::Claims, now: u64) -> Result<(), Denied> {
        let text = |n: &str| claims.get(n).and_then(Value::as_str);
        if text("iss") != Some(&self.email) || text("sub").is_some_and(|s| s != self.email) {
            return Err(unauthenticated(
                AuthReason::Invalid,
                "the token's issuer is not this service account",
            ));
        }
        let for_dialogflow = match text("aud") {
            Some(aud) => aud.trim_end_matches('/') == AUDIENCE.trim_end_matches('/'),
            None => text("scope").is_some_and(|s| {
                s.split(' ')
                    .any(|s| s == CLOUD_PLATFORM || s.ends_with("/auth/dialogflow"))
            }),
        };
        if !for_dialogflow {
            return Err(unauthenticated(
                AuthReason::Invalid,
                "the token is not for Dialogflow (aud or scope)",
            ));
        }
        let (iat, exp) = (jwt::seconds(claims, "iat"), jwt::seconds(claims, "exp"));
        let current = matches!((iat, exp), (Some(i), Some(e))
            if i <= now.saturating_add(SKEW_SECS) && now <= e.saturating_add(SKEW_SECS) && e.saturating_sub(i) <= MAX_LIFETIME_SECS);
        if !current {
            return Err(unauthenticated(
                AuthReason::Expired,
                "the token is expired or not yet valid",
            ));
        }
        Ok(())
    }
}

impl RequestVerifier for ServiceAccountCaller {
    fn verify(&self, req: &WholeRequest<'_>, now: u64) -> Result<(), Denied> {
        let token = bearer(req.head).ok_or_else(|| {
            unauthenticated(
                AuthReason::Missing,
                "Request is missing required authentication credential",
            )
        })?;
        let claims = jwt::verify(token, &self.key).map_err(|e| match e {
            jwt::JwtError::BadSignature => unauthenticated(
                AuthReason::BadSignature,
                "the token's signature does not verify",
            ),
            _ => unauthenticated(
                AuthReason::Malformed,
                "the bearer token is not an RS256 JWT",
            ),
        })?;
        self.check_claims(&claims, now)
    }
}

/// The key a static token is filed under: its SHA-256, so the token itself is never kept.
fn static_token_id(sha256_hex: &str) -> String {
    format!("token:sha256:{sha256_hex}")
}

/// The key a service account is filed under. Its own namespace, apart from static tokens': a JWT
/// can name any issuer, and an issuer must only ever find a grant with a key to check it.
fn service_account_id(email: &str) -> String {
    format!("service-account:{email}")
}

// ---------------------------------------------------------------------------------------------
// Bot side: the proxy calls a Dialogflow CX agent

/// The metadata as `queryParams.parameters`, with the Haptik business as `business_id`.
fn parameters(req: &ChatRequest<'_>) -> Option<Value> {
    let mut map = match req.metadata.map(|m| serde_json::from_str::<Value>(m.get())) {
        Some(Ok(Value::Object(m))) => m,
        _ => serde_json::Map::new(),
    };
    if let Some(b) = req.business_id {
        map.entry("business_id").or_insert(Value::from(b));
    }
    (!map.is_empty()).then_some(Value::Object(map))
}

/// Renders the canonical request as a `detectIntent` body: a text (a click's payload, a link's or
/// media's URL) as `text`, a flow trigger as an `event`.
pub fn render_request(req: &ChatRequest<'_>, language: &str) -> Vec<u8> {
    let input = match &req.content {
        Content::Text(t) | Content::Payload(t) | Content::Url(t) => json!({"text": {"text": t}}),
        Content::Media { url, .. } => json!({"text": {"text": url}}),
        Content::FlowTrigger { flow_id, .. } => json!({"event": {"event": flow_id}}),
    };
    let mut query_input = input;
    query_input["languageCode"] = Value::from(language);
    let mut body = json!({"queryInput": query_input});
    if let Some(p) = parameters(req) {
        body["queryParams"] = json!({"parameters": p});
    }
    serde_json::to_vec(&body).expect("dialogflow request serializes")
}

#[derive(Deserialize)]
struct AnswerIn<'a> {
    #[serde(borrow, rename = "queryResult")]
    query_result: QueryResultIn<'a>,
}

#[derive(Deserialize)]
struct QueryResultIn<'a> {
    #[serde(borrow, default, rename = "responseMessages")]
    response_messages: Vec<&'a RawValue>,
}

/// A response message: the parts the proxy reads.
#[derive(Deserialize)]
struct MessageIn<'a> {
    #[serde(borrow, default)]
    text: Option<TextsIn<'a>>,
    #[serde(default)]
    payload: Option<Value>,
    #[serde(default, rename = "endInteraction")]
    end_interaction: Option<serde::de::IgnoredAny>,
    #[serde(borrow, default, rename = "outputAudioText")]
    output_audio_text: Option<AudioTextIn<'a>>,
}

#[derive(Deserialize)]
struct TextsIn<'a> {
    #[serde(borrow, default)]
    text: Vec<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct AudioTextIn<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

const DIALOGFLOW_ANSWER: Expected = Expected {
    name: "Dialogflow",
    shape: "a JSON object with `queryResult.responseMessages`",
    opens: b"{",
    keys: &[
        "queryResult",
        "responseMessages",
        "text",
        "payload",
        "endInteraction",
        "outputAudioText",
    ],
};

/// A string field of a rich content item.
fn field<'v>(item: &'v Value, name: &str) -> Option<&'v str> {
    item.get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// One Dialogflow Messenger rich content item as replies; false when it has none.
fn rich_item(item: &Value, replies: &mut Vec<Reply<'static>>) -> bool {
    let owned = |s: &str| Cow::Owned(s.to_owned());
    match field(item, "type") {
        Some("chips") => {
            let buttons: Vec<Button<'static>> = (item.get("options").and_then(Value::as_array))
                .into_iter()
                .flatten()
                .filter_map(|o| field(o, "text"))
                .map(|t| Button {
                    title: owned(t),
                    payload: None,
                })
                .collect();
            if buttons.is_empty() {
                return false;
            }
            // Chips after a text are that text's answers: one question.
            let title = match replies.last() {
                Some(Reply::Text(_)) => match replies.pop() {
                    Some(Reply::Text(t)) => Cow::Owned(t.into_owned()),
                    _ => unreachable!(),
                },
                _ => Cow::Borrowed(""),
            };
            replies.push(Reply::Question { title, buttons });
        }
        Some("image") => match field(item, "rawUrl").filter(|u| is_http_url(u)) {
            Some(url) => replies.push(Reply::Media {
                kind: MediaKind::Image,
                url: owned(url),
            }),
            None => return false,
        },
        Some("button") | Some("info") => {
            let link = field(item, "link").or_else(|| field(item, "actionLink"));
            let label = field(item, "text").or_else(|| field(item, "title"));
            match (link.filter(|u| is_http_url(u)), label) {
                (Some(url), label) => replies.push(Reply::Url {
                    url: owned(url),
                    text: label.map(owned),
                    title: field(item, "subtitle").map(owned),
                }),
                (None, Some(label)) => replies.push(Reply::Text(owned(label))),
                (None, None) => return false,
            }
        }
        Some("description") | Some("accordion") | Some("list") => {
            let lines: Vec<&str> = [field(item, "title"), field(item, "subtitle")]
                .into_iter()
                .flatten()
                .chain(
                    (item.get("text").and_then(Value::as_array))
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str),
                )
                .collect();
            if lines.is_empty() {
                return false;
            }
            replies.push(Reply::Text(Cow::Owned(lines.join("\n"))));
        }
        _ => return false,
    }
    true
}

/// A message's custom payload: Dialogflow Messenger rich content read, anything else dropped.
fn payload_in(payload: &Value, answer: &mut ChatAnswer<'_>) {
    let items = (payload.get("richContent").and_then(Value::as_array))
        .into_iter()
        .flatten()
        .flat_map(|row| row.as_array().into_iter().flatten());
    let mut read_any = false;
    for item in items {
        let mut replies: Vec<Reply<'static>> = std::mem::take(&mut answer.replies)
            .into_iter()
            .map(reply_owned)
            .collect();
        if rich_item(item, &mut replies) {
            read_any = true;
        } else {
            answer.dropped += 1;
        }
        answer.replies = replies;
    }
    if !read_any && payload.get("richContent").is_none() {
        answer.dropped += 1;
    }
}

fn reply_owned(r: Reply<'_>) -> Reply<'static> {
    let o = |c: Cow<'_, str>| Cow::Owned(c.into_owned());
    let button = |b: Button<'_>| Button {
        title: o(b.title),
        payload: b.payload.map(o),
    };
    match r {
        Reply::Text(t) => Reply::Text(o(t)),
        Reply::Question { title, buttons } => Reply::Question {
            title: o(title),
            buttons: buttons.into_iter().map(button).collect(),
        },
        Reply::Button(b) => Reply::Button(button(b)),
        Reply::Url { url, text, title } => Reply::Url {
            url: o(url),
            text: text.map(o),
            title: title.map(o),
        },
        Reply::Media { kind, url } => Reply::Media { kind, url: o(url) },
    }
}

/// Parses a `DetectIntentResponse` (any status). Texts (each line of `text.text`, and
/// `outputAudioText.text`) are texts; rich content chips a question (titled by the text before
/// them), images images, buttons and info cards links; `endInteraction` ends the conversation;
/// other payloads are dropped (kept for a Dialogflow caller with `keep_raw`). A non-2xx status or
/// a body that is not such an answer is a 502 that repeats nothing the bot wrote.
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
    let wire: AnswerIn<'_> =
        from_json(body).map_err(|_| DIALOGFLOW_ANSWER.body::<AnswerIn<'_>>(body))?;
    let raw = wire.query_result.response_messages;
    let mut answer = ChatAnswer::default();
    for (i, m) in raw.iter().enumerate() {
        let message: MessageIn<'_> = serde_json::from_str(m.get()).map_err(|_| {
            DIALOGFLOW_ANSWER.part(
                std::marker::PhantomData::<MessageIn<'_>>,
                m.get().as_bytes(),
                &format!("queryResult.responseMessages[{i}]"),
            )
        })?;
        let before = (answer.replies.len(), answer.dropped);
        for t in message.text.map(|t| t.text).unwrap_or_default() {
            if !t.is_empty() {
                answer.replies.push(Reply::Text(t));
            }
        }
        if let Some(t) = message.output_audio_text.and_then(|a| a.text) {
            answer.replies.push(Reply::Text(t));
        }
        if let Some(p) = &message.payload {
            payload_in(p, &mut answer);
        }
        if message.end_interaction.is_some() {
            answer.conversation_end = Some(true);
        } else if before == (answer.replies.len(), answer.dropped) {
            answer.dropped += 1;
        }
    }
    if keep_raw {
        answer.raw = Some((RawKind(NAME), raw));
    }
    Ok(answer)
}

// ---------------------------------------------------------------------------------------------
// The dialect interface

/// Google Dialogflow CX, as callers and bots speak it.
pub struct Dialogflow;

/// `[[clients.dialogflow-cx]]`: a service account (its JWTs) or a static bearer token.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientConfig {
    client_email: Option<String>,
    public_key_file: Option<String>,
    token: Option<SecretSource>,
    token_sha256: Option<String>,
}

/// A Dialogflow CX agent's settings (`dialect = "dialogflow-cx"`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BotConfig {
    project: String,
    location: String,
    agent: String,
    language_code: String,
    credentials_file: String,
    /// Where tokens are minted, instead of the key file's `token_uri`.
    token_uri: Option<String>,
}

/// The parts of a service-account key file the proxy reads.
#[derive(Deserialize)]
pub struct ServiceAccountFile {
    pub client_email: String,
    pub private_key: String,
    pub private_key_id: Option<String>,
    pub token_uri: String,
}

/// A configured Dialogflow agent: its sessions' path and the key its tokens are minted with.
struct DialogflowBot {
    /// `/v3/projects/{p}/locations/{l}/agents/{a}/sessions/`.
    sessions: String,
    language: String,
    client_email: String,
    key_id: Option<String>,
    key: PrivateKey,
    token_uri: String,
}

impl fmt::Debug for DialogflowBot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DialogflowBot")
            .field("sessions", &self.sessions)
            .field("client_email", &self.client_email)
            .finish_non_exhaustive()
    }
}

fn path_id(key: &str, value: &str) -> Result<(), ConfigError> {
    let ok = !value.is_empty()
        && (value.bytes()).all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    ok.then_some(())
        .ok_or_else(|| ConfigError::new(key, "must be letters, digits, `_`, `-` or `.`"))
}

fn read_file(key: &str, path: &str) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(key, format!("cannot read `{path}`: {e}")))
}

impl CallerDialect for Dialogflow {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Dialogflow callers use Dialogflow's own paths: told apart by the route.
    fn in_auto(&self) -> bool {
        false
    }

    fn detect(&self, head: &dyn RequestHead) -> Detection {
        match (bearer(head), head.header("x-goog-api-client")) {
            (Some(_), Some(_)) => Detection::Yes,
            _ => Detection::No,
        }
    }

    fn credential_hint(&self) -> &'static str {
        "Dialogflow CX (Authorization: Bearer, a service-account JWT or a token)"
    }

    fn detect_body(&self, body: &[u8]) -> bool {
        body.windows(12).any(|w| w == b"\"queryInput\"")
    }

    fn credential<'h>(&self, head: &'h dyn RequestHead) -> Result<Presented<'h>, Denied> {
        let token = bearer(head).filter(|t| !t.is_empty()).ok_or_else(|| {
            unauthenticated(
                AuthReason::Missing,
                "Request is missing required authentication credential",
            )
        })?;
        // A JWT names the service account it claims to be (checked once the body is read); any
        // other token is found by its digest.
        let key_id = match jwt::peek(token) {
            Ok((_, claims)) => match claims.get("iss").and_then(Value::as_str) {
                Some(iss) => Cow::Owned(service_account_id(iss)),
                None => {
                    return Err(unauthenticated(
                        AuthReason::Malformed,
                        "the token has no issuer",
                    ))
                }
            },
            Err(_) => Cow::Owned(static_token_id(&hex::encode(Sha256::digest(
                token.as_bytes(),
            )))),
        };
        Ok(Presented::KeyId {
            dialect: NAME,
            key_id,
        })
    }

    fn client(
        &self,
        key: &str,
        name: &str,
        table: toml::Table,
    ) -> Result<ClientEntry, ConfigError> {
        let c: ClientConfig = settings(key, table)?;
        let (id, verifier, demo): (String, Option<Arc<dyn RequestVerifier>>, _) = match (
            &c.client_email,
            &c.public_key_file,
            &c.token,
            &c.token_sha256,
        ) {
            (Some(email), Some(file), None, None) => {
                let k = format!("{key}.public_key_file");
                let pem = read_file(&k, file)?;
                let public = jwt::public_key_from_pem(&pem).map_err(|e| ConfigError::new(&k, e))?;
                let caller = ServiceAccountCaller {
                    email: email.clone(),
                    key: public,
                };
                (service_account_id(email), Some(Arc::new(caller)), None)
            }
            (None, None, Some(t), None) => {
                let token = t.resolve(&format!("{key}.token"))?;
                let demo = (token == "demo-dialogflow-token")
                    .then(|| format!("dialogflow-cx token of {name}"));
                (
                    static_token_id(&hex::encode(Sha256::digest(token.as_bytes()))),
                    None,
                    demo,
                )
            }
            (None, None, None, Some(h)) => {
                let hex_ok = h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit());
                if !hex_ok {
                    return Err(ConfigError::new(
                        format!("{key}.token_sha256"),
                        "must be 64 hex digits",
                    ));
                }
                (static_token_id(&h.to_ascii_lowercase()), None, None)
            }
            _ => {
                return Err(ConfigError::new(
                    key,
                    "give `client_email` with `public_key_file`, or `token`, or `token_sha256`",
                ))
            }
        };
        Ok(ClientEntry {
            credential: ClientCredential::Token {
                digest: key_id_digest(NAME, &id),
                grant: Grant {
                    verifier,
                    ..Grant::named(name)
                },
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
        ctx: &AnswerContext<'_>,
    ) -> Vec<u8> {
        render_answer(req, answer, ctx.request_id)
    }

    fn render_error(&self, err: &ProxyError) -> Vec<u8> {
        render_error(err)
    }

    fn api_document(&self) -> &'static str {
        include_str!("../../../docs/openapi/dialogflow-cx.json")
    }
}

impl BotDialect for Dialogflow {
    fn name(&self) -> &'static str {
        NAME
    }

    fn keys(&self) -> &'static [&'static str] {
        &[
            "project",
            "location",
            "agent",
            "language_code",
            "credentials_file",
            "token_uri",
        ]
    }

    fn configure(&self, key: &str, table: toml::Table) -> Result<Box<dyn Bot>, ConfigError> {
        let c: BotConfig = settings(key, table)?;
        path_id(&format!("{key}.project"), &c.project)?;
        path_id(&format!("{key}.location"), &c.location)?;
        path_id(&format!("{key}.agent"), &c.agent)?;
        let k = format!("{key}.credentials_file");
        let text = read_file(&k, &c.credentials_file)?;
        let sa: ServiceAccountFile = serde_json::from_str(&text).map_err(|e| {
            ConfigError::new(
                &k,
                format!("not a service-account key file: {}", e.classify_name()),
            )
        })?;
        let private = jwt::private_key_from_pem(&sa.private_key)
            .map_err(|e| ConfigError::new(&k, format!("private_key: {e}")))?;
        let (token_key, token_uri) = match c.token_uri {
            Some(t) => (format!("{key}.token_uri"), t),
            None => (format!("{k} (token_uri)"), sa.token_uri),
        };
        if !token_uri.starts_with("https://") && !token_uri.starts_with("http://") {
            return Err(ConfigError::new(token_key, "must be an http(s) URL"));
        }
        Ok(Box::new(DialogflowBot {
            sessions: format!(
                "/v3/projects/{}/locations/{}/agents/{}/sessions/",
                c.project, c.location, c.agent
            ),
            language: c.language_code,
            client_email: sa.client_email,
            key_id: sa.private_key_id,
            key: private,
            token_uri,
        }))
    }
}

/// A serde_json error's kind, in fixed words (its message could quote the file).
trait Classify {
    fn classify_name(&self) -> &'static str;
}

impl Classify for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Data => "a field is missing or mistyped",
            _ => "malformed JSON",
        }
    }
}

impl TokenSource for DialogflowBot {
    fn token_url(&self) -> &str {
        &self.token_uri
    }

    /// The JWT-bearer grant: an assertion for the cloud-platform scope, valid one hour.
    fn token_request(&self, unix_secs: u64) -> Vec<u8> {
        let mut claims = jwt::Claims::new();
        claims.insert("iss".into(), Value::from(self.client_email.as_str()));
        claims.insert("sub".into(), Value::from(self.client_email.as_str()));
        claims.insert("scope".into(), Value::from(CLOUD_PLATFORM));
        claims.insert("aud".into(), Value::from(self.token_uri.as_str()));
        claims.insert("iat".into(), Value::from(unix_secs));
        claims.insert("exp".into(), Value::from(unix_secs + 3600));
        let assertion = jwt::sign(&self.key, self.key_id.as_deref(), &claims);
        format!("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}")
            .into_bytes()
    }

    fn parse_token(&self, status: u16, body: &[u8]) -> Result<(String, u64), &'static str> {
        #[derive(Deserialize)]
        struct TokenIn {
            access_token: String,
            expires_in: Option<u64>,
        }
        if !(200..300).contains(&status) {
            return Err("the token endpoint refused the grant");
        }
        let t: TokenIn = serde_json::from_slice(body)
            .map_err(|_| "the token endpoint's answer is not a token")?;
        if t.access_token.is_empty() || t.access_token.bytes().any(|b| !(0x21..=0x7e).contains(&b))
        {
            return Err("the token endpoint's token cannot be sent in a header");
        }
        Ok((t.access_token, t.expires_in.unwrap_or(3600)))
    }
}

/// One session per user: the user's own ([`session_id`]) until the bot ends it, then a fresh one.
const SESSIONS: SessionPerUser = SessionPerUser(session_id);

impl Bot for DialogflowBot {
    fn dialect(&self) -> &'static str {
        NAME
    }

    fn target(&self, req: &ChatRequest<'_>, conv: Option<&Conversation>) -> Option<String> {
        let session = conv.map_or_else(
            || session_id(&req.user_id),
            |c| Cow::Borrowed(c.id.as_str()),
        );
        Some(format!("{}{session}:detectIntent", self.sessions))
    }

    fn conversations(&self) -> Option<&dyn Conversations> {
        Some(&SESSIONS)
    }

    fn token_source(&self) -> Option<&dyn TokenSource> {
        Some(self)
    }

    fn render_request(
        &self,
        req: &ChatRequest<'_>,
        _ctx: &BotRequestContext<'_>,
    ) -> Result<Vec<u8>, ProxyError> {
        Ok(render_request(req, &self.language))
    }

    fn sign(&self, out: &Outgoing<'_>, add: &mut dyn FnMut(&'static str, &str)) {
        if let Some(t) = out.token {
            add("authorization", &format!("Bearer {t}"));
        }
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
    use crate::jwt::tests::TEST_KEY;

    const PATH: &str = "/v3/projects/p/locations/global/agents/a1/sessions/user-1:detectIntent";

    #[test]
    fn reads_text_events_intents_and_parameters() {
        let req = parse_request(PATH, br#"{"queryInput":{"text":{"text":"hi"},"languageCode":"en"},"queryParams":{"parameters":{"plan":"gold"}}}"#).unwrap();
        assert_eq!(req.user_id, "user-1");
        assert_eq!(req.content, Content::Text("hi".into()));
        assert_eq!(req.metadata.unwrap().get(), r#"{"plan":"gold"}"#);
        let ev = parse_request(
            PATH,
            br#"{"queryInput":{"event":{"event":"welcome"},"languageCode":"en"}}"#,
        )
        .unwrap();
        assert_eq!(
            ev.content,
            Content::FlowTrigger {
                flow_id: "welcome".into(),
                close_flows: None
            }
        );
        let env = "/v3/projects/p/locations/l/agents/a/environments/e/sessions/s%3A1:detectIntent";
        assert_eq!(
            parse_request(env, br#"{"queryInput":{"text":{"text":"x"}}}"#)
                .unwrap()
                .user_id,
            "s:1"
        );
        assert_eq!(
            parse_request("/v3/projects/p", b"{}").unwrap_err().status,
            404
        );
        assert_eq!(
            parse_request(PATH, br#"{"queryInput":{}}"#)
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn parses_texts_rich_content_and_the_end() {
        let body = json!({"responseId": "r", "queryResult": {"responseMessages": [
            {"text": {"text": ["Hi", "Pick one"]}},
            {"payload": {"richContent": [[{"type": "chips", "options": [{"text": "A"}, {"text": "B"}]},
                                          {"type": "image", "rawUrl": "https://x/i.png"},
                                          {"type": "info", "title": "Docs", "actionLink": "https://x/d"},
                                          {"type": "mystery"}]]}},
            {"payload": {"custom": 1}},
            {"endInteraction": {}}
        ], "match": {"matchType": 1}}});
        let bytes = serde_json::to_vec(&body).unwrap();
        let a = parse_answer(200, &bytes, false).unwrap();
        assert_eq!(a.replies[0], Reply::Text("Hi".into()));
        assert_eq!(
            a.replies[1],
            Reply::Question {
                title: "Pick one".into(),
                buttons: vec![
                    Button {
                        title: "A".into(),
                        payload: None
                    },
                    Button {
                        title: "B".into(),
                        payload: None
                    }
                ]
            }
        );
        assert_eq!(
            a.replies[2],
            Reply::Media {
                kind: MediaKind::Image,
                url: "https://x/i.png".into()
            }
        );
        assert_eq!(
            a.replies[3],
            Reply::Url {
                url: "https://x/d".into(),
                text: Some("Docs".into()),
                title: None
            }
        );
        assert_eq!((a.dropped, a.conversation_end), (2, Some(true)));
        assert_eq!(
            parse_answer(200, &bytes, true)
                .unwrap()
                .raw
                .unwrap()
                .1
                .len(),
            4
        );
        let e = parse_answer(403, b"secret", false).unwrap_err();
        assert_eq!((e.status, e.reason), (502, Reason::BackendStatus));
    }

    #[test]
    fn renders_requests_answers_and_errors() {
        let meta: Box<RawValue> = serde_json::from_str(r#"{"plan":"gold"}"#).unwrap();
        let mut req = parse_request(PATH, br#"{"queryInput":{"text":{"text":"hi"}}}"#).unwrap();
        req.metadata = Some(&meta);
        req.business_id = Some(7);
        let v: Value = serde_json::from_slice(&render_request(&req, "en")).unwrap();
        assert_eq!(
            v,
            json!({"queryInput": {"text": {"text": "hi"}, "languageCode": "en"},
                             "queryParams": {"parameters": {"plan": "gold", "business_id": 7}}})
        );
        let answer = ChatAnswer {
            replies: vec![Reply::Question {
                title: "Q".into(),
                buttons: vec![Button {
                    title: "Y".into(),
                    payload: None,
                }],
            }],
            conversation_end: Some(true),
            ..Default::default()
        };
        let v: Value = serde_json::from_slice(&render_answer(&req, &answer, "rid")).unwrap();
        assert_eq!(v["responseId"], "rid");
        assert_eq!(
            v["queryResult"]["responseMessages"],
            json!([
            {"text": {"text": ["Q"]}},
            {"payload": {"richContent": [[{"type": "chips", "options": [{"text": "Y"}]}]]}},
            {"endInteraction": {}}])
        );
        let e: Value =
            serde_json::from_slice(&render_error(&ProxyError::unauthorized("no"))).unwrap();
        assert_eq!(
            e,
            json!({"error": {"code": 401, "message": "no", "status": "UNAUTHENTICATED"}})
        );
    }

    #[test]
    fn session_ids_fit_in_36_characters() {
        assert_eq!(session_id("user-1"), "user-1");
        let user = "x".repeat(40);
        let long = session_id(&user);
        assert_eq!(long.len(), 35);
        assert_eq!(long, session_id(&user));
    }

    fn caller() -> ServiceAccountCaller {
        let key = jwt::private_key_from_pem(TEST_KEY).unwrap();
        ServiceAccountCaller {
            email: "c@p.iam.gserviceaccount.com".into(),
            key: key.public(),
        }
    }

    fn token(claims: Value) -> String {
        let key = jwt::private_key_from_pem(TEST_KEY).unwrap();
        let Value::Object(c) = claims else {
            unreachable!()
        };
        jwt::sign(&key, Some("k"), &c)
    }

    #[test]
    fn service_account_jwts_are_checked_for_issuer_audience_and_time() {
        let c = caller();
        let now = 1_800_000_000;
        let good = json!({"iss": "c@p.iam.gserviceaccount.com", "sub": "c@p.iam.gserviceaccount.com",
                          "aud": AUDIENCE, "iat": now, "exp": now + 3600});
        let check = |claims: Value, at: u64| {
            let t = token(claims);
            let claims = jwt::verify(&t, &c.key).unwrap();
            c.check_claims(&claims, at).map_err(|d| d.reason)
        };
        assert_eq!(check(good.clone(), now + 10), Ok(()));
        let mut scoped = good.clone();
        scoped.as_object_mut().unwrap().remove("aud");
        scoped["scope"] = Value::from(CLOUD_PLATFORM);
        assert_eq!(check(scoped, now), Ok(()));
        assert_eq!(
            check(good.clone(), now + 3600 + 61),
            Err(AuthReason::Expired)
        );
        let mut other = good.clone();
        other["iss"] = Value::from("x@y");
        assert_eq!(check(other, now), Err(AuthReason::Invalid));
        let mut aud = good;
        aud["aud"] = Value::from("https://example.com/");
        assert_eq!(check(aud, now), Err(AuthReason::Invalid));
    }

    #[test]
    fn minted_grants_are_jwt_bearer_assertions_for_the_token_uri() {
        let dir = std::env::temp_dir().join(format!("bb-df-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("sa.json");
        let sa = json!({"client_email": "bot@p.iam.gserviceaccount.com", "private_key": TEST_KEY,
                        "private_key_id": "k1", "token_uri": "http://127.0.0.1:9/token"});
        std::fs::write(&file, sa.to_string()).unwrap();
        let table: toml::Table = toml::from_str(&format!(
            "project = \"p\"\nlocation = \"global\"\nagent = \"a\"\nlanguage_code = \"en\"\ncredentials_file = {:?}",
            file.display().to_string()
        )).unwrap();
        let bot = BotDialect::configure(&Dialogflow, "backends[0]", table).unwrap();
        let source = bot.token_source().unwrap();
        let form = String::from_utf8(source.token_request(1000)).unwrap();
        let assertion = form.split("assertion=").nth(1).unwrap();
        let claims = jwt::verify(
            assertion,
            &jwt::private_key_from_pem(TEST_KEY).unwrap().public(),
        )
        .unwrap();
        assert_eq!(claims["aud"], "http://127.0.0.1:9/token");
        assert_eq!(
            (jwt::seconds(&claims, "iat"), jwt::seconds(&claims, "exp")),
            (Some(1000), Some(4600))
        );
        assert!(
            form.starts_with("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&")
        );
        assert_eq!(
            source.parse_token(200, br#"{"access_token":"ya29.x","expires_in":3599}"#),
            Ok(("ya29.x".into(), 3599))
        );
        assert!(source.parse_token(400, b"{}").is_err());
        let req = parse_request(PATH, br#"{"queryInput":{"text":{"text":"x"}}}"#).unwrap();
        assert_eq!(
            bot.target(&req, None).unwrap(),
            "/v3/projects/p/locations/global/agents/a/sessions/user-1:detectIntent"
        );
        // Once the agent ends the interaction, the user's next message goes to a fresh session.
        let rules = bot.conversations().unwrap();
        let first = rules.first("user-1");
        let ended = br#"{"queryResult":{"responseMessages":[{"endInteraction":{}}]}}"#;
        let answer = bot.parse_answer(200, ended, false).unwrap();
        let crate::dialect::AfterAnswer::Restart(next) = rules.after(&first, &answer, [7; 16])
        else {
            panic!("an ended interaction restarts the session");
        };
        assert!(next.id.len() <= 36 && next.id != first.id);
        assert!(bot
            .target(&req, Some(&next))
            .unwrap()
            .contains(&format!("/sessions/{}:", next.id)));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
