//! HTTP plumbing shared by the listeners: reading a bounded request body, writing a whole response
//! with an exact `Content-Length` in one write, and the pingora app glue that serves a connection's
//! requests in turn and keeps it alive only when that is safe.
//!
//! A listener implements [`Handler`] (request in, [`Answer`] out); [`App`] turns it into a pingora app.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::apps::{HttpPersistentSettings, ReusedHttpStream, ServerApp};
use pingora::http::ResponseHeader;
use pingora::protocols::http::{HttpTask, ServerSession};
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;

/// How long an idle client connection is kept open between requests, in seconds.
pub const CLIENT_KEEPALIVE_SECS: u64 = 60;

/// A complete response.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Extra headers (name, value).
    pub headers: Vec<(&'static str, String)>,
    /// False when the connection must close after this answer (e.g. an unread oversized body).
    pub keepalive: bool,
}

impl Answer {
    /// A JSON answer.
    pub fn json(status: u16, body: Vec<u8>) -> Self {
        Answer {
            status,
            content_type: "application/json",
            body,
            headers: Vec::new(),
            keepalive: true,
        }
    }

    /// A plain-text answer.
    pub fn text(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            headers: Vec::new(),
            keepalive: true,
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

/// One listener's request handling.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Handles one request whose header has been read. The handler reads (or discards) the body.
    async fn handle(&self, session: &mut ServerSession) -> Answer;
}

/// Adapts a [`Handler`] to pingora: an HTTP/1.1 server app serving one connection's requests in turn.
///
/// It implements pingora's connection-level [`ServerApp`] rather than its per-request
/// `HttpServerApp`, whose adapter allocates and copies a new boxed future for every request and keeps
/// a 5 KB one per open connection. Here one small future serves the whole connection (it waits in
/// pingora's `read_request` while idle) and the handler's future exists only while a request is in
/// flight; pingora's session still parses requests, frames bodies and decides keep-alive (including
/// pipelined requests, which [`HttpPersistentSettings`] carries over).
pub struct App<H>(pub H);

#[async_trait]
impl<H: Handler> ServerApp for App<H> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let mut session = ServerSession::new_http1(stream);
        session.set_keepalive(Some(CLIENT_KEEPALIVE_SECS));
        if let ServerSession::H1(h1) = &mut session {
            // Requests a client pipelines are answered in order (RFC 9112 9.3.2) instead of
            // closing the connection on the second; the setting carries over to later sessions.
            h1.set_pipelining_enabled(true);
        }
        loop {
            match session.read_request().await {
                Ok(true) => {}
                _ => return None,
            }
            if *shutdown.borrow() {
                // Shutting down: answer this request, then close.
                session.set_keepalive(None);
            }
            let answer = self.0.handle(&mut session).await;
            if !answer.keepalive {
                session.set_keepalive(None);
            }
            if write_answer(&mut session, answer).await.is_err() {
                return None;
            }
            let settings = HttpPersistentSettings::for_session(&session);
            // Boxed: finishing (which may drain an unread body) is a 3.7 KB future that would
            // otherwise be part of every open connection's state, idle or not.
            let reusable = match Box::pin(session.finish()).await {
                Ok(Some(reusable)) => reusable,
                _ => return None,
            };
            let (stream, settings) =
                ReusedHttpStream::from_reusable_stream(reusable, settings).consume();
            session = ServerSession::new_http1(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
        }
    }
}

/// Writes the header and body in one flush, with an exact `Content-Length`.
pub async fn write_answer(session: &mut ServerSession, answer: Answer) -> pingora::Result<()> {
    let mut header = ResponseHeader::build(answer.status, Some(3 + answer.headers.len()))?;
    header.insert_header(http::header::CONTENT_TYPE, answer.content_type)?;
    header.insert_header(http::header::CONTENT_LENGTH, answer.body.len().to_string())?;
    for (name, value) in answer.headers {
        header.insert_header(name, value)?;
    }
    if !answer.keepalive {
        header.insert_header(http::header::CONNECTION, "close")?;
    }
    let tasks = vec![
        HttpTask::Header(Box::new(header), answer.body.is_empty()),
        HttpTask::Body(Some(Bytes::from(answer.body)), true),
    ];
    session.response_duplex_vec(tasks).await.map(|_| ())
}

/// Why a body could not be read.
#[derive(Debug)]
pub enum BodyError {
    /// More than the limit: the connection must not be reused.
    TooLarge,
    /// The client went away or sent a broken body.
    Io(Box<pingora::Error>),
}

/// The declared `Content-Length`, if any and valid.
fn declared_length(session: &ServerSession) -> Option<usize> {
    std::str::from_utf8(session.get_header_bytes(http::header::CONTENT_LENGTH))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Reads the whole request body, refusing more than `limit` bytes (by the declared length up front,
/// and by counting for chunked bodies). A one-chunk body is returned without copying.
pub async fn read_body(session: &mut ServerSession, limit: usize) -> Result<Bytes, BodyError> {
    if declared_length(session).is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge);
    }
    let mut first: Option<Bytes> = None;
    let mut rest: Option<BytesMut> = None;
    let mut total = 0usize;
    while let Some(chunk) = session.read_request_body().await.map_err(BodyError::Io)? {
        total += chunk.len();
        if total > limit {
            return Err(BodyError::TooLarge);
        }
        match (&mut rest, first.take()) {
            (Some(buf), _) => buf.extend_from_slice(&chunk),
            (None, None) => first = Some(chunk),
            (None, Some(head)) => {
                let mut buf = BytesMut::with_capacity(head.len() + chunk.len());
                buf.extend_from_slice(&head);
                buf.extend_from_slice(&chunk);
                rest = Some(buf);
            }
        }
    }
    Ok(match rest {
        Some(buf) => buf.freeze(),
        None => first.unwrap_or_default(),
    })
}

/// Reads and throws away the body so the connection can serve another request. Returns false (close
/// the connection) if the body is larger than `limit` or broken.
pub async fn discard_body(session: &mut ServerSession, limit: usize) -> bool {
    if declared_length(session).is_some_and(|n| n > limit) {
        return false;
    }
    let mut total = 0usize;
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                total += chunk.len();
                if total > limit {
                    return false;
                }
            }
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
}
