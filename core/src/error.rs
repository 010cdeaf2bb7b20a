//! The one error type of the request path: an HTTP status, a reason from a fixed set, and a message
//! safe to show the caller.
//!
//! Every failure, from a bad header to a dead backend, becomes a [`ProxyError`]; the caller's dialect
//! renders it (`dialect::Dialect::render_error`). The [`Reason`] is what metrics and logs record, so it is
//! a closed set; the message never carries a secret.

use std::borrow::Cow;
use std::fmt;

/// Why a request failed, as a bounded label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No route for this path.
    NotFound,
    /// The route exists but not for this method.
    MethodNotAllowed,
    /// The body is not declared as JSON.
    UnsupportedMediaType,
    /// The body is larger than the configured limit.
    BodyTooLarge,
    /// The body is not valid JSON, or a field is missing or mistyped.
    BadRequest,
    /// Missing or wrong credentials.
    Unauthorized,
    /// The request names a business (or other target) that no backend serves.
    UnknownTarget,
    /// The request cannot be expressed in the backend's dialect.
    Untranslatable,
    /// The backend could not be reached (refused, reset, DNS, TLS).
    BackendConnect,
    /// The backend did not answer in time.
    BackendTimeout,
    /// The backend answered with a non-success status.
    BackendStatus,
    /// The backend answered something that is not a valid answer in its dialect.
    BackendBadAnswer,
    /// The backend's bot reported an error of its own.
    BotError,
    /// The proxy could not do its part (e.g. a configured value that cannot be sent).
    Internal,
    /// The caller's credential may not reach this route or business.
    Forbidden,
    /// The auth service could not be asked (down, slow, bad answer).
    AuthUnavailable,
    /// Over a rate limit (429).
    RateLimited,
    /// Redis failed and the feature's `on_redis_error` is `deny` (503).
    RedisUnavailable,
    /// The request head or body did not arrive within its deadline.
    RequestTimeout,
    /// The request head is larger than the configured limit, or has too many headers.
    HeaderTooLarge,
    /// Every client connection the listener may hold is busy, or the backend already has
    /// `max_in_flight` requests from this instance (503).
    Overloaded,
    /// The backend's circuit is open (every endpoint down, or too many failures): failed fast.
    CircuitOpen,
    /// Async mode's delivery queue is full (or the process is stopping).
    QueueFull,
    /// The bot's credentials (an access token from its token endpoint) could not be obtained.
    BackendCredentials,
    /// A token the proxy issued (a channel's conversation token) is past its expiry.
    TokenExpired,
}

impl Reason {
    /// Every reason, for pre-registering metric series.
    pub const ALL: [Reason; 25] = [
        Reason::NotFound,
        Reason::MethodNotAllowed,
        Reason::UnsupportedMediaType,
        Reason::BodyTooLarge,
        Reason::BadRequest,
        Reason::Unauthorized,
        Reason::UnknownTarget,
        Reason::Untranslatable,
        Reason::BackendConnect,
        Reason::BackendTimeout,
        Reason::BackendStatus,
        Reason::BackendBadAnswer,
        Reason::BotError,
        Reason::Internal,
        Reason::Forbidden,
        Reason::AuthUnavailable,
        Reason::RateLimited,
        Reason::RedisUnavailable,
        Reason::RequestTimeout,
        Reason::HeaderTooLarge,
        Reason::Overloaded,
        Reason::CircuitOpen,
        Reason::QueueFull,
        Reason::BackendCredentials,
        Reason::TokenExpired,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NotFound => "not_found",
            Reason::MethodNotAllowed => "method_not_allowed",
            Reason::UnsupportedMediaType => "unsupported_media_type",
            Reason::BodyTooLarge => "body_too_large",
            Reason::BadRequest => "bad_request",
            Reason::Unauthorized => "unauthorized",
            Reason::UnknownTarget => "unknown_target",
            Reason::Untranslatable => "untranslatable",
            Reason::BackendConnect => "backend_connect",
            Reason::BackendTimeout => "backend_timeout",
            Reason::BackendStatus => "backend_status",
            Reason::BackendBadAnswer => "backend_bad_answer",
            Reason::BotError => "bot_error",
            Reason::Internal => "internal",
            Reason::Forbidden => "forbidden",
            Reason::AuthUnavailable => "auth_unavailable",
            Reason::RateLimited => "rate_limited",
            Reason::RedisUnavailable => "redis_unavailable",
            Reason::RequestTimeout => "request_timeout",
            Reason::HeaderTooLarge => "header_too_large",
            Reason::Overloaded => "overloaded",
            Reason::CircuitOpen => "circuit_open",
            Reason::QueueFull => "queue_full",
            Reason::BackendCredentials => "backend_credentials",
            Reason::TokenExpired => "token_expired",
        }
    }

    /// Whether the backend, rather than the caller, caused this.
    pub fn is_backend(self) -> bool {
        matches!(
            self,
            Reason::BackendConnect
                | Reason::BackendTimeout
                | Reason::BackendStatus
                | Reason::BackendBadAnswer
                | Reason::BotError
                | Reason::CircuitOpen
                | Reason::BackendCredentials
        )
    }
}

/// A failed request: what to answer and why.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyError {
    /// The HTTP status to answer with.
    pub status: u16,
    /// Why, as a bounded label.
    pub reason: Reason,
    /// A message for the caller; never contains a secret.
    pub message: Cow<'static, str>,
    /// What only the debug log may show, and only with `[log] message_bodies` on: a parser's own
    /// words or a bot's text, which can quote what users wrote. Never rendered to the caller, and
    /// left out of `Debug`.
    pub detail: Option<Box<str>>,
    /// Headers the answer carries besides the body (`Retry-After` and the `RateLimit` fields of a
    /// 429); empty for most errors.
    pub headers: Vec<(&'static str, String)>,
}

impl ProxyError {
    /// A new error with the given status, reason and message.
    pub fn new(status: u16, reason: Reason, message: impl Into<Cow<'static, str>>) -> Self {
        ProxyError {
            status,
            reason,
            message: message.into(),
            detail: None,
            headers: Vec::new(),
        }
    }

    /// The same error with `detail` for the debug log (see [`ProxyError::detail`]); an empty one
    /// is none.
    pub fn with_detail(mut self, detail: impl Into<Box<str>>) -> Self {
        let detail = detail.into();
        self.detail = (!detail.is_empty()).then_some(detail);
        self
    }

    /// The same error with a header on its answer.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// 400: the body is malformed or a field is missing or mistyped.
    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(400, Reason::BadRequest, message)
    }

    /// 401: missing or wrong credentials.
    pub fn unauthorized(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(401, Reason::Unauthorized, message)
    }

    /// 502: the backend answered something unusable.
    pub fn bad_answer(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(502, Reason::BackendBadAnswer, message)
    }
}

/// The reason phrase of a status code (`Unauthorized`), for error bodies that carry one.
pub fn status_phrase(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error")
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status,
            self.reason.as_str(),
            self.message
        )
    }
}

impl fmt::Debug for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyError")
            .field("status", &self.status)
            .field("reason", &self.reason)
            .field("message", &self.message)
            .finish_non_exhaustive()
    }
}

impl std::error::Error for ProxyError {}

/// Turns a JSON parse failure into a 400 whose message names the offending field.
///
/// The fast path parses without tracking the path; only on failure is the body parsed again with
/// `serde_path_to_error` to learn which field was wrong.
pub fn json_error<'de, T: serde::Deserialize<'de>>(body: &'de [u8]) -> ProxyError {
    match body.trim_ascii_start().first() {
        Some(b'{') => {}
        None => return ProxyError::bad_request("the request body is empty"),
        Some(b'[' | b'"' | b't' | b'f' | b'n' | b'-' | b'0'..=b'9') => {
            return ProxyError::bad_request("invalid body: expected a JSON object")
        }
        Some(_) => {}
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(_) => ProxyError::bad_request("malformed JSON body"),
        Err(err) => {
            let path = err.path().to_string();
            let inner = err.into_inner();
            if inner.is_syntax() || inner.is_eof() {
                ProxyError::bad_request(format!("malformed JSON body: {inner}"))
            } else if path == "." {
                ProxyError::bad_request(format!("invalid body: {inner}"))
            } else {
                ProxyError::bad_request(format!("invalid field `{path}`: {inner}"))
            }
        }
    }
}
