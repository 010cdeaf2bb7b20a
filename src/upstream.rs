//! Talking to backends: pooled keep-alive HTTP/1.1 (plain or rustls TLS) through pingora's connector.
//!
//! One [`Upstream`] serves all backends. An exchange sends one complete request with an exact
//! `Content-Length` and reads the whole answer up to a size limit, all within the backend's read
//! timeout (the connect timeout applies inside it). A pooled connection the backend closed while idle
//! fails before any answer byte; only that case is retried, once, on a fresh connection.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::connectors::http::v1::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::http::RequestHeader;
use pingora::protocols::http::v1::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, RetryType};

use crate::config::Endpoint;
use crate::error::{ProxyError, Reason};

/// A backend's answer: status and whole body.
#[derive(Debug)]
pub struct Exchange {
    pub status: u16,
    pub body: Bytes,
}

/// The pooled client for all backends.
pub struct Upstream {
    connector: Connector,
    max_answer_bytes: usize,
}

/// The pingora peer for a backend (built once at start).
pub fn peer_for(backend: &Endpoint) -> HttpPeer {
    let mut peer = HttpPeer::new(backend.addr, backend.tls, backend.host.clone());
    peer.options.connection_timeout = Some(backend.connect_timeout);
    peer.options.read_timeout = Some(backend.read_timeout);
    peer.options.write_timeout = Some(backend.read_timeout);
    peer.options.idle_timeout = Some(backend.pool_idle_timeout);
    peer
}

enum Failure {
    /// The request was not fully delivered, so the backend cannot have acted on it.
    Sending(Box<Error>),
    /// The request was delivered but no answer header arrived.
    AwaitingAnswer(Box<Error>),
    /// Failed while reading the answer.
    DuringAnswer(Box<Error>),
    /// The answer is larger than allowed.
    TooLarge,
}

impl Failure {
    /// Whether sending again on a new connection cannot make the bot see the message twice: the
    /// request never fully left, or pingora judged the failure to be a reused connection the
    /// backend had already closed (end of stream or an OS error before any answer byte).
    fn safe_to_retry(&self) -> bool {
        match self {
            Failure::Sending(_) => true,
            Failure::AwaitingAnswer(e) => {
                matches!(e.retry, RetryType::ReusedOnly | RetryType::Decided(true))
            }
            Failure::DuringAnswer(_) | Failure::TooLarge => false,
        }
    }
}

impl Upstream {
    /// A client keeping at most `pool_size` idle connections, reading answers of at most
    /// `max_answer_bytes`.
    pub fn new(pool_size: usize, max_answer_bytes: usize) -> Self {
        Upstream {
            connector: Connector::new(Some(ConnectorOptions::new(pool_size))),
            max_answer_bytes,
        }
    }

    /// Sends `header` + `body` to the backend and reads its whole answer.
    pub async fn exchange(
        &self,
        peer: &HttpPeer,
        backend: &Endpoint,
        header: RequestHeader,
        body: Bytes,
    ) -> Result<Exchange, ProxyError> {
        let round_trip = async {
            let (session, reused) = self
                .connector
                .get_http_session(peer)
                .await
                .map_err(Failure::Sending)?;
            // Keep a copy of the header only when a retry is possible (a reused connection).
            let spare = reused.then(|| header.clone());
            match (
                self.attempt(session, peer, backend, header, &body).await,
                spare,
            ) {
                (Err(f), Some(header)) if f.safe_to_retry() => {
                    tracing::debug!(backend = %backend.name, "pooled connection was closed by the backend; retrying on a new one");
                    let (session, _) = self
                        .connector
                        .get_http_session(peer)
                        .await
                        .map_err(Failure::Sending)?;
                    self.attempt(session, peer, backend, header, &body).await
                }
                (result, _) => result,
            }
        };
        match tokio::time::timeout(backend.read_timeout, round_trip).await {
            Ok(Ok(x)) => Ok(x),
            Ok(Err(f)) => Err(failure_to_error(f, backend, self.max_answer_bytes)),
            Err(_) => Err(timeout_error(backend.read_timeout)),
        }
    }

    async fn attempt(
        &self,
        mut session: HttpSession,
        peer: &HttpPeer,
        backend: &Endpoint,
        header: RequestHeader,
        body: &Bytes,
    ) -> Result<Exchange, Failure> {
        session
            .write_request_header(Box::new(header))
            .await
            .map_err(Failure::Sending)?;
        session.write_body(body).await.map_err(Failure::Sending)?;
        session.finish_body().await.map_err(Failure::Sending)?;
        // Interim answers (100 Continue, 103 Early Hints) precede the real one.
        let status = loop {
            session
                .read_response()
                .await
                .map_err(Failure::AwaitingAnswer)?;
            match session.get_status() {
                Some(s) if s.is_informational() && s.as_u16() != 101 => continue,
                s => break s.map_or(0, |s| s.as_u16()),
            }
        };
        let mut buf = BytesMut::new();
        let mut too_large = false;
        while let Some(chunk) = session
            .read_body_ref()
            .await
            .map_err(Failure::DuringAnswer)?
        {
            if buf.len() + chunk.len() > self.max_answer_bytes {
                too_large = true;
                break;
            }
            buf.extend_from_slice(chunk);
        }
        if too_large {
            session.shutdown().await;
            return Err(Failure::TooLarge);
        }
        self.connector
            .release_http_session(session, peer, Some(backend.pool_idle_timeout))
            .await;
        Ok(Exchange {
            status,
            body: buf.freeze(),
        })
    }
}

fn timeout_error(after: Duration) -> ProxyError {
    ProxyError::new(
        504,
        Reason::BackendTimeout,
        format!("the backend did not answer within {} ms", after.as_millis()),
    )
}

fn failure_to_error(f: Failure, backend: &Endpoint, max: usize) -> ProxyError {
    let e = match f {
        Failure::TooLarge => {
            return ProxyError::bad_answer(format!(
                "the backend's answer is larger than {max} bytes"
            ))
        }
        Failure::Sending(e) | Failure::AwaitingAnswer(e) | Failure::DuringAnswer(e) => e,
    };
    tracing::debug!(backend = %backend.name, error = %e, "backend exchange failed");
    match e.etype() {
        ErrorType::ConnectTimedout | ErrorType::TLSHandshakeTimedout => {
            timeout_error(backend.connect_timeout.min(backend.read_timeout))
        }
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => timeout_error(backend.read_timeout),
        ErrorType::InvalidHTTPHeader | ErrorType::H1Error => {
            ProxyError::bad_answer("the backend did not answer with valid HTTP")
        }
        ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError
        | ErrorType::TLSHandshakeFailure
        | ErrorType::InvalidCert
        | ErrorType::HandshakeError
        | ErrorType::SocketError
        | ErrorType::BindError => {
            ProxyError::new(502, Reason::BackendConnect, "the backend is unreachable")
        }
        _ => ProxyError::new(
            502,
            Reason::BackendConnect,
            "the backend closed the connection without a complete answer",
        ),
    }
}
