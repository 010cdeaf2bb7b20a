//! The vendor dialects, one file each, and the types that pick one.
//!
//! Each dialect module offers the same verbs over the canonical model (`crate::model`): parse a
//! request, render a request, parse an answer, render an answer, render an error. [`IngressDialect`]
//! (what a caller speaks) and [`BackendSpec`] (what a bot speaks, with its credentials and
//! parameters) are the one place that picks a module; the request path only calls their methods.
//! [`detect`] tells the two caller dialects apart on a route that accepts both.

pub mod csml;
pub mod csml_engine;
pub mod haptik;
pub mod hsl;
pub mod rasa;

use std::fmt;
use std::time::SystemTime;

use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::error::ProxyError;
use crate::model::{ChatAnswer, ChatRequest, RawKind};
use crate::signing::CsmlAuth;

pub use haptik::{AnswerShape, FlowTriggerPolicy};

/// Deserializes a JSON body. UTF-8 is checked once for the whole body, so serde_json does not check
/// each string again (it does when reading bytes); a body that is not UTF-8 is left to serde_json,
/// whose error says where.
pub(crate) fn from_json<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> serde_json::Result<T> {
    match std::str::from_utf8(body) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(body),
    }
}

/// The dialect a caller speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IngressDialect {
    /// Haptik synchronous-webhook requests.
    Haptik,
    /// CSML Chat API requests.
    Csml,
}

/// What a route accepts from callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteIngress {
    Haptik,
    Csml,
    /// Either, told apart by [`detect`].
    Auto,
}

impl RouteIngress {
    /// The dialect, if the route accepts only one.
    pub fn fixed(self) -> Option<IngressDialect> {
        match self {
            RouteIngress::Haptik => Some(IngressDialect::Haptik),
            RouteIngress::Csml => Some(IngressDialect::Csml),
            RouteIngress::Auto => None,
        }
    }

    /// Whether the route accepts this dialect.
    pub fn accepts(self, d: IngressDialect) -> bool {
        self.fixed().is_none_or(|f| f == d)
    }
}

/// Everything a dialect needs to render an answer, supplied by the shell.
#[derive(Debug, Clone, Copy)]
pub struct AnswerContext<'a> {
    /// The first of a block of process-unique ids reserved for this answer.
    pub message_id: u64,
    /// When the request was received.
    pub received: SystemTime,
    /// The request id sent to the backend (a CSML caller's own `request_id` wins).
    pub request_id: &'a str,
    /// A fresh id for this interaction (CSML `interaction_id`, and `conversation_id` for bots that
    /// report none).
    pub interaction_id: &'a str,
    /// The configured business name (Haptik).
    pub business_name: &'a str,
    /// The configured bot name (Haptik `claim_name`/`agent.name`; CSML `bot_id` for non-CSML bots).
    pub bot_name: &'a str,
    /// CSML `channel_id` for non-CSML bots.
    pub channel_id: &'a str,
    /// The route's Haptik answer shape.
    pub shape: AnswerShape,
}

impl IngressDialect {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            IngressDialect::Haptik => "haptik",
            IngressDialect::Csml => "csml",
        }
    }

    /// Parses a caller's request body.
    pub fn parse_request(self, body: &[u8]) -> Result<ChatRequest<'_>, ProxyError> {
        match self {
            IngressDialect::Haptik => haptik::parse_request(body),
            IngressDialect::Csml => csml::parse_request(body),
        }
    }

    /// Fills in the Haptik business of a request whose caller names none: a CSML caller is addressed
    /// by its credential's business, else the route's. A Haptik caller's own `business_id` stands.
    pub fn settle_business(
        self,
        req: &mut ChatRequest<'_>,
        credential: Option<i64>,
        route: Option<i64>,
    ) {
        if self == IngressDialect::Csml {
            req.business_id = credential.or(route);
        }
    }

    /// How many message ids [`Self::render_answer`] uses.
    pub fn ids_needed(self, answer: &ChatAnswer<'_>) -> u64 {
        match self {
            IngressDialect::Haptik => haptik::ids_needed(answer),
            IngressDialect::Csml => 0,
        }
    }

    /// Renders the bot's answer for the caller.
    pub fn render_answer(
        self,
        req: &ChatRequest<'_>,
        answer: &ChatAnswer<'_>,
        ctx: &AnswerContext<'_>,
    ) -> Vec<u8> {
        match self {
            IngressDialect::Haptik => haptik::render_answer(req, answer, ctx),
            IngressDialect::Csml => csml::render_answer(req, answer, ctx),
        }
    }

    /// Whether rendering `answer` passes the backend's own messages through verbatim (same-dialect
    /// fronting), so nothing the canonical model cannot hold is lost.
    pub fn passes_through(self, answer: &ChatAnswer<'_>, shape: AnswerShape) -> bool {
        matches!(
            (self, answer.raw.as_ref().map(|r| r.0), shape),
            (IngressDialect::Csml, Some(RawKind::CsmlPayload), _)
                | (
                    IngressDialect::Haptik,
                    Some(RawKind::HaptikHsl),
                    AnswerShape::Hsl
                )
        )
    }

    /// Renders an error the way this dialect's own servers do.
    pub fn render_error(self, err: &ProxyError) -> Vec<u8> {
        match self {
            IngressDialect::Haptik => haptik::render_error(err),
            IngressDialect::Csml => csml::render_error(err),
        }
    }
}

/// Renders an error for a caller whose dialect is unknown: readable as either (`error_message` for
/// Haptik clients, `statusCode`/`error`/`message` for CSML clients).
pub fn render_error_for_either(err: &ProxyError) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "error_message": err.message,
        "statusCode": err.status,
        "error": crate::error::status_phrase(err.status),
        "message": err.message,
    }))
    .expect("error serializes")
}

#[derive(Deserialize)]
struct ShapeProbe {
    message_body: Option<IgnoredAny>,
    payload: Option<IgnoredAny>,
    client: Option<IgnoredAny>,
}

/// Tells the caller's dialect on a route that accepts both: `x-api-key` means CSML, `Authorization:
/// Bearer` means Haptik; without either, the body's shape decides (`message_body` → Haptik, `client`
/// and `payload` → CSML). `None` when nothing fits.
pub fn detect(
    has_api_key: bool,
    authorization: Option<&[u8]>,
    body: Option<&[u8]>,
) -> Option<IngressDialect> {
    if has_api_key {
        return Some(IngressDialect::Csml);
    }
    if authorization.is_some_and(|a| a.len() >= 7 && a[..7].eq_ignore_ascii_case(b"bearer ")) {
        return Some(IngressDialect::Haptik);
    }
    let probe: ShapeProbe = serde_json::from_slice(body?).ok()?;
    match (probe.message_body, probe.client, probe.payload) {
        (Some(_), None, None) => Some(IngressDialect::Haptik),
        (None, Some(_), Some(_)) => Some(IngressDialect::Csml),
        _ => None,
    }
}

/// The dialect a backend bot speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendDialect {
    /// CSML Chat API (`POST …/api/chat`).
    Csml,
    /// Haptik synchronous webhook.
    Haptik,
    /// The open-source CSML engine (`POST /run`).
    CsmlEngine,
}

impl BackendDialect {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendDialect::Csml => "csml",
            BackendDialect::Haptik => "haptik",
            BackendDialect::CsmlEngine => "csml-engine",
        }
    }
}

/// A backend's dialect with its credentials and parameters.
#[derive(Clone)]
pub enum BackendSpec {
    /// CSML Chat API, signed or plain key.
    Csml { auth: CsmlAuth },
    /// Haptik webhook with the backend's own bearer token and client id.
    Haptik { token: String, client_id: String },
    /// CSML engine `/run` with configured ids and an optional plain `X-Api-Key`.
    CsmlEngine {
        bot_id: String,
        channel_id: String,
        api_key: Option<String>,
    },
}

impl fmt::Debug for BackendSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendSpec::Csml { auth } => f.debug_struct("Csml").field("auth", auth).finish(),
            BackendSpec::Haptik { client_id, .. } => f
                .debug_struct("Haptik")
                .field("client_id", client_id)
                .field("token", &"<redacted>")
                .finish(),
            BackendSpec::CsmlEngine {
                bot_id, channel_id, ..
            } => f
                .debug_struct("CsmlEngine")
                .field("bot_id", bot_id)
                .field("channel_id", channel_id)
                .finish_non_exhaustive(),
        }
    }
}

/// What a route adds to a request for its backend.
#[derive(Debug, Clone, Copy)]
pub struct BackendRequestContext<'a> {
    /// The request id to send.
    pub request_id: &'a str,
    /// The Haptik business to address (the caller's, its credential's, or the route's).
    pub business_id: Option<i64>,
    /// What to do with a flow trigger sent to a Haptik bot.
    pub flow_trigger: FlowTriggerPolicy,
}

impl BackendSpec {
    /// The dialect.
    pub fn dialect(&self) -> BackendDialect {
        match self {
            BackendSpec::Csml { .. } => BackendDialect::Csml,
            BackendSpec::Haptik { .. } => BackendDialect::Haptik,
            BackendSpec::CsmlEngine { .. } => BackendDialect::CsmlEngine,
        }
    }

    /// Renders the request body for the backend, or a 4xx when it cannot be expressed there.
    pub fn render_request(
        &self,
        req: &ChatRequest<'_>,
        ctx: &BackendRequestContext<'_>,
    ) -> Result<Vec<u8>, ProxyError> {
        match self {
            BackendSpec::Csml { .. } => Ok(csml::render_request(req, ctx.request_id)),
            BackendSpec::Haptik { .. } => {
                let business_id = ctx.business_id.ok_or_else(|| {
                    ProxyError::new(
                        400,
                        crate::error::Reason::UnknownTarget,
                        "no business_id for this Haptik bot: the credential or route must name one",
                    )
                })?;
                haptik::render_request(req, business_id, ctx.flow_trigger)
            }
            BackendSpec::CsmlEngine {
                bot_id, channel_id, ..
            } => Ok(csml_engine::render_request(
                req,
                ctx.request_id,
                bot_id,
                channel_id,
            )),
        }
    }

    /// Hands `add` the headers that authenticate the proxy to the backend, for a request sent at
    /// `unix_secs`.
    pub fn auth_headers(&self, unix_secs: u64, mut add: impl FnMut(&'static str, &str)) {
        match self {
            BackendSpec::Csml { auth } => auth.headers(unix_secs, add),
            BackendSpec::Haptik { token, client_id } => {
                add("authorization", &format!("Bearer {token}"));
                add("client-id", client_id);
            }
            BackendSpec::CsmlEngine { api_key, .. } => {
                if let Some(k) = api_key {
                    add("x-api-key", k);
                }
            }
        }
    }

    /// Parses the backend's answer (any status) for a caller speaking `caller`: a CSML caller also
    /// gets a CSML bot's own message payloads (see [`ChatAnswer::raw`]); for others they are not kept.
    pub fn parse_answer<'b>(
        &self,
        status: u16,
        body: &'b [u8],
        caller: IngressDialect,
    ) -> Result<ChatAnswer<'b>, ProxyError> {
        let keep_raw = caller == IngressDialect::Csml;
        match self {
            BackendSpec::Csml { .. } => {
                if !(200..300).contains(&status) {
                    return Err(ProxyError::new(
                        502,
                        crate::error::Reason::BackendStatus,
                        format!("the backend answered HTTP {status}"),
                    ));
                }
                csml::parse_answer(body, keep_raw)
            }
            BackendSpec::Haptik { .. } => haptik::parse_answer(status, body),
            BackendSpec::CsmlEngine { .. } => csml_engine::parse_answer(status, body, keep_raw),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_each_dialect_and_neither() {
        use IngressDialect::*;
        assert_eq!(detect(true, None, None), Some(Csml));
        assert_eq!(detect(true, Some(b"Bearer x"), None), Some(Csml));
        assert_eq!(detect(false, Some(b"Bearer x"), None), Some(Haptik));
        assert_eq!(detect(false, Some(b"bearer x"), None), Some(Haptik));
        assert_eq!(detect(false, Some(b"Basic x"), Some(b"{}")), None);
        let haptik = include_bytes!("../../tests/fixtures/haptik/seed-request.json");
        let csml = include_bytes!("../../tests/fixtures/csml/seed-request.json");
        assert_eq!(detect(false, None, Some(haptik)), Some(Haptik));
        assert_eq!(detect(false, None, Some(csml)), Some(Csml));
        assert_eq!(detect(false, None, Some(b"{\"hello\":1}")), None);
        assert_eq!(detect(false, None, Some(b"not json")), None);
        assert_eq!(detect(false, None, None), None);
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

    #[test]
    fn debug_hides_backend_tokens() {
        let s = BackendSpec::Haptik {
            token: "tok-secret".into(),
            client_id: "c".into(),
        };
        assert!(!format!("{s:?}").contains("tok-secret"));
    }
}
