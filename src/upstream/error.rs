//! How an exchange fails: the [`Failure`] of one attempt (which says whether a retry is safe) and
//! the [`TransportError`] the caller gets, whose [`TransportKind`] says what went wrong.
//!
//! The error's `detail` is the message for the caller (safe to show, as today's). No HTTP status is
//! chosen here: the request path picks one from the kind (`crate::error`).

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use pingora::ErrorType;

use super::Endpoint;
use crate::error::{ProxyError, Reason};

/// What went wrong talking to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// No connection could be made (refused, reset, DNS, TLS).
    Connect,
    /// Connecting (with a TLS handshake) took longer than the connect timeout.
    ConnectTimeout,
    /// No complete answer within the read timeout.
    Timeout,
    /// The connection ended (or failed) before any answer: no complete answer on it.
    Closed,
    /// The answer broke off or is not valid HTTP/1.1.
    BadAnswer,
    /// The answer is larger than allowed.
    TooLarge,
}

/// A failed exchange: its kind, and a message for the caller that never carries a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportError {
    pub kind: TransportKind,
    pub detail: Cow<'static, str>,
}

impl TransportError {
    fn new(kind: TransportKind, detail: impl Into<Cow<'static, str>>) -> Self {
        TransportError {
            kind,
            detail: detail.into(),
        }
    }

    /// No answer within `after` (`Timeout`, or `ConnectTimeout`).
    pub(super) fn timeout(kind: TransportKind, after: Duration) -> Self {
        let ms = after.as_millis();
        Self::new(kind, format!("the backend did not answer within {ms} ms"))
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for TransportError {}

/// How an attempt failed.
pub(super) enum Failure {
    /// Getting a connection failed.
    Connect(Box<pingora::Error>),
    /// The request could not be fully written: the backend cannot have acted on it.
    Sending(std::io::Error),
    /// No answer byte arrived (end of stream or an error): on a reused connection this is the
    /// backend having closed it while idle.
    NoAnswer(std::io::Error),
    /// The answer broke off or is not valid HTTP/1.1.
    BadAnswer(&'static str),
    /// The answer is larger than allowed.
    TooLarge,
}

impl Failure {
    pub(super) fn safe_to_retry(&self) -> bool {
        matches!(self, Failure::Sending(_))
    }

    /// The caller's error (logging the cause, which the caller does not see). `max` is the answer
    /// size limit.
    pub(super) fn into_transport(self, ep: &Endpoint, max: usize) -> TransportError {
        match self {
            Failure::TooLarge => TransportError::new(
                TransportKind::TooLarge,
                format!("the backend's answer is larger than {max} bytes"),
            ),
            Failure::BadAnswer(why) => {
                tracing::debug!(backend = %ep.name, why, "backend answer unusable");
                TransportError::new(TransportKind::BadAnswer, why)
            }
            Failure::Sending(e) | Failure::NoAnswer(e) => {
                tracing::debug!(backend = %ep.name, error = %e, "backend exchange failed");
                TransportError::new(
                    TransportKind::Closed,
                    "the backend closed the connection without a complete answer",
                )
            }
            Failure::Connect(e) => {
                tracing::debug!(backend = %ep.name, error = %e, "cannot connect to the backend");
                match e.etype() {
                    ErrorType::ConnectTimedout | ErrorType::TLSHandshakeTimedout => {
                        TransportError::timeout(
                            TransportKind::ConnectTimeout,
                            ep.connect_timeout.min(ep.read_timeout),
                        )
                    }
                    _ => TransportError::new(TransportKind::Connect, "the backend is unreachable"),
                }
            }
        }
    }
}

/// The request path picks the status of a failed backend exchange here, from its transport kind:
/// 504 when the backend did not answer (or connect) in time, else 502. The message is the
/// transport's own.
impl From<TransportError> for ProxyError {
    fn from(e: TransportError) -> Self {
        let (status, reason) = match e.kind {
            TransportKind::Timeout | TransportKind::ConnectTimeout => (504, Reason::BackendTimeout),
            TransportKind::Connect | TransportKind::Closed => (502, Reason::BackendConnect),
            TransportKind::BadAnswer | TransportKind::TooLarge => (502, Reason::BackendBadAnswer),
        };
        ProxyError::new(status, reason, e.detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_kinds_pick_the_status_and_reason() {
        let cases = [
            (TransportKind::Connect, 502, Reason::BackendConnect),
            (TransportKind::ConnectTimeout, 504, Reason::BackendTimeout),
            (TransportKind::Timeout, 504, Reason::BackendTimeout),
            (TransportKind::Closed, 502, Reason::BackendConnect),
            (TransportKind::BadAnswer, 502, Reason::BackendBadAnswer),
            (TransportKind::TooLarge, 502, Reason::BackendBadAnswer),
        ];
        for (kind, status, reason) in cases {
            let e = ProxyError::from(TransportError {
                kind,
                detail: "the message".into(),
            });
            assert_eq!(
                (e.status, e.reason, &*e.message),
                (status, reason, "the message"),
                "{kind:?}"
            );
        }
    }
}
