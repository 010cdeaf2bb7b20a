//! HTTP plumbing shared by the listeners: reading a bounded request body, writing a whole response
//! with an exact `Content-Length` in one write, and the pingora app glue that serves a connection's
//! requests in turn and keeps it alive only when that is safe.
//!
//! A listener implements [`Handler`] (request in, [`Answer`] out); [`App`] turns it into a pingora app
//! whose connections are held to the limits of `crate::conn`, and answers the requests that never
//! reach the handler (malformed or oversize heads, timeouts, a full listener).
//!
//! TLS is the app's too, not pingora's listener's: pingora's listener would hold a connection in its
//! handshake for 60 s before the app, and its connection cap, ever saw it. Here a connection takes
//! its place in the table first, so one in its handshake counts against `max_client_connections`
//! and the per-address cap, can be evicted like an idle one, and has its own deadline
//! (`handshake_timeout_ms`); a handshake that fails or times out is counted by close reason.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::apps::{HttpPersistentSettings, ServerApp};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::listeners::tls::Acceptor;
use pingora::protocols::http::{HttpTask, ReusableHttpStream, ServerSession};
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Peek;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use pingora::ErrorType;

use crate::conn::{ClientLimits, ClientStream, Conn, ConnTable, Phase, Refused};
use crate::error::{ProxyError, Reason};
use crate::metrics::CloseReason;

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
    /// For a `101 Switching Protocols`: what serves the connection once the answer is written.
    pub upgrade: Option<Upgrade>,
}

/// What serves an upgraded connection (a WebSocket): handed the connection's stream once the 101 is
/// written, it owns the connection until it returns.
pub struct Upgrade(pub Box<dyn FnOnce(Stream) -> Serving + Send>);

/// The future serving an upgraded connection.
pub type Serving = Pin<Box<dyn Future<Output = ()> + Send>>;

impl std::fmt::Debug for Upgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Upgrade")
    }
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
            upgrade: None,
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
            upgrade: None,
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

    /// The answer to a request the connection layer refuses before [`Handler::handle`] (an oversize
    /// or malformed head, a head deadline, a full listener); `head` is the request head when one
    /// was parsed. Plain text unless the listener renders its own.
    fn head_refusal(&self, head: Option<&RequestHeader>, err: &ProxyError) -> Answer {
        let _ = head;
        Answer::text(err.status, format!("{}\n", err.message))
    }
}

/// Adapts a [`Handler`] to pingora: an HTTP/1.1 server app serving one connection's requests in turn,
/// each connection held to the listener's [`ClientLimits`] (see `crate::conn`).
///
/// It implements pingora's connection-level [`ServerApp`] rather than its per-request
/// `HttpServerApp`, whose adapter allocates and copies a new boxed future for every request and keeps
/// a 5 KB one per open connection. Here one small future serves the whole connection (it waits in
/// pingora's `read_request` while idle) and the handler's future exists only while a request is in
/// flight; pingora's session still parses requests, frames bodies and decides keep-alive (including
/// pipelined requests, which [`HttpPersistentSettings`] carries over). Per request, the loop tells the
/// connection's stream its phase (a few relaxed atomic stores and one clock read); the stream polls
/// its one timer only when a read or write has to wait, and re-arms it only for an earlier deadline.
pub struct App<H> {
    handler: H,
    limits: Arc<ClientLimits>,
    table: Arc<ConnTable>,
    /// Serve HTTPS: each connection's handshake, under the connection's limits.
    tls: Option<Acceptor>,
}

impl<H: Handler> App<H> {
    /// Serves `handler` under `limits`; `listener` names the connection metrics' series.
    pub fn new(listener: &str, handler: H, limits: ClientLimits) -> Self {
        App {
            table: ConnTable::new(listener, limits.max_connections, limits.max_per_address),
            limits: Arc::new(limits),
            handler,
            tls: None,
        }
    }

    /// The same app serving HTTPS with `tls` (the listener itself is plain TCP).
    pub fn with_tls(mut self, tls: Acceptor) -> Self {
        self.tls = Some(tls);
        self
    }

    /// A TLS connection's handshake, within `handshake_timeout` and until the connection is
    /// evicted: the decrypted stream, or None when it failed (the reason is recorded).
    async fn handshake(&self, tls: &Acceptor, stream: Stream, conn: &Conn) -> Option<Stream> {
        // pingora's TCP listener hands over its own stream type, which the handshake wraps.
        let l4 = stream.into_any().downcast::<L4Stream>().ok()?;
        let handshake = tokio::time::timeout(self.limits.handshake_timeout, tls.tls_handshake(*l4));
        tokio::select! {
            done = handshake => match done {
                Ok(Ok(tls_stream)) => Some(Box::new(tls_stream)),
                Ok(Err(e)) => {
                    // A client that leaves before the end (a port probe, a closed tab) is no failure.
                    // pingora keeps only the text of the TLS library's error: tokio-rustls says
                    // "tls handshake eof" for it.
                    if !e.to_string().contains("handshake eof") {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        conn.close_for(CloseReason::TlsHandshakeFailed);
                    }
                    None
                }
                Err(_) => {
                    conn.close_for(CloseReason::TlsHandshakeTimeout);
                    None
                }
            },
            () = conn.evicted() => None,
        }
    }

    /// Reads the next request head. False: the connection is done (the client left, a deadline
    /// passed, or the request was refused and answered).
    async fn read_head(&self, session: &mut ServerSession, conn: &Conn) -> bool {
        let refusal = match session.read_request().await {
            Ok(true) => match self.over_limits(session) {
                None => return true,
                Some(r) => r,
            },
            Ok(false) => return false,
            Err(e) => match HeadRefusal::for_error(&e, conn) {
                Some(r) => r,
                None => return false,
            },
        };
        // Boxed: a rare path whose state would otherwise be part of every connection's future.
        Box::pin(self.refuse(session, conn, refusal)).await;
        false
    }

    /// A parsed head over the limits pingora's parser does not apply itself.
    fn over_limits(&self, session: &ServerSession) -> Option<HeadRefusal> {
        if session.req_header().headers.len() > self.limits.max_headers {
            return Some(HeadRefusal::too_many_headers());
        }
        // Bytes the reads' budget did not see: a head that came pipelined behind a body.
        let size = session
            .as_http1()
            .map_or(0, |h| h.get_headers_raw_bytes().len());
        (size > self.limits.max_header_bytes).then(HeadRefusal::too_large)
    }

    /// Answers a refused request in the handler's words, then closes (lingering if the client may
    /// still be sending).
    async fn refuse(&self, session: &mut ServerSession, conn: &Conn, refusal: HeadRefusal) {
        conn.close_for(refusal.reason);
        tracing::debug!(reason = refusal.reason.as_str(), "request refused");
        let mut answer = self
            .handler
            .head_refusal(parsed_head(session), &refusal.error);
        answer.keepalive = false;
        session.set_keepalive(None);
        conn.set_phase(Phase::Answer);
        if write_answer(session, answer).await.is_ok() {
            if refusal.linger {
                conn.linger_on_close();
            }
            session.shutdown().await;
        }
    }

    /// At the cap with every connection busy, or at the source address's cap: a 503, written at
    /// once without reading the request. A TLS connection is closed instead: answering it would
    /// take a handshake, the work a flood of connections should not get.
    async fn refuse_connection(&self, stream: Stream, why: Refused) {
        if self.tls.is_some() {
            return;
        }
        let mut session = ServerSession::new_http1(stream);
        let message = match why {
            Refused::Full => "too many connections; try again later",
            Refused::AddressFull => "too many connections from this address; try again later",
        };
        let err = ProxyError::new(503, Reason::Overloaded, message);
        let mut answer = self.handler.head_refusal(None, &err);
        answer.keepalive = false;
        let write = write_answer(&mut session, answer);
        let _ = tokio::time::timeout(self.limits.write_timeout, write).await;
    }
}

#[async_trait]
impl<H: Handler> ServerApp for App<H> {
    /// Serves the connection on a task of its own, and lets pingora's end. pingora's per-connection
    /// task is sized for its largest state, a TLS handshake (8.8 KB by a heap profile), which every
    /// open connection carried for its whole life; this task holds only the connection's own state.
    /// It runs on the same runtime as pingora's would, so shutdown and upgrade treat it alike.
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let (app, shutdown) = (self.clone(), shutdown.clone());
        crate::memory::tidy_this_thread();
        tokio::spawn(async move { app.serve(stream, &shutdown).await });
        None
    }
}

impl<H: Handler> App<H> {
    /// One client connection, request after request, until it closes.
    async fn serve(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) {
        let source = (stream.get_socket_digest())
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let guard = match self.table.admit(source) {
            Ok(guard) => guard,
            Err(why) => {
                // Boxed, as every rare path here: its state would be part of every connection's.
                Box::pin(self.refuse_connection(stream, why)).await;
                return;
            }
        };
        let conn = &*guard.conn;
        let stream = match &self.tls {
            None => stream,
            Some(tls) => match Box::pin(self.handshake(tls, stream, conn)).await {
                Some(stream) => stream,
                None => return,
            },
        };
        let mut stream = ClientStream::new(stream, guard.conn.clone(), self.limits.clone());
        // However the wait ends (bytes, the end of the stream, a deadline), the head read that
        // follows meets it again and handles it.
        let _ = stream.try_peek(&mut [0u8; 1]).await;
        let mut session = ServerSession::new_http1(Box::new(stream));
        // Reuse allowed with no timer of pingora's: the connection's stream keeps the deadlines.
        session.set_keepalive(Some(0));
        if let ServerSession::H1(h1) = &mut session {
            // Requests a client pipelines are answered in order (RFC 9112 9.3.2) instead of
            // closing the connection on the second; the setting carries over to later sessions.
            h1.set_pipelining_enabled(true);
        }
        loop {
            session.set_read_timeout(None);
            if !self.read_head(&mut session, conn).await {
                return;
            }
            conn.set_phase(Phase::Body);
            if *shutdown.borrow() {
                // Shutting down: answer this request, then close.
                session.set_keepalive(None);
            }
            let mut answer = self.handler.handle(&mut session).await;
            if let Some(upgrade) = answer.upgrade.take() {
                return Box::pin(upgraded(session, answer, upgrade, conn)).await;
            }
            if !answer.keepalive {
                session.set_keepalive(None);
            }
            conn.set_phase(Phase::Answer);
            if write_answer(&mut session, answer).await.is_err() {
                return;
            }
            linger_if_unread(&mut session, conn);
            let settings = HttpPersistentSettings::for_session(&session);
            let reusable = if finishes_at_once(&mut session) {
                finish_now(session)
            } else {
                // Boxed: finishing (which may drain an unread body) is a 3.7 KB future that
                // would otherwise be part of every open connection's state, idle or not.
                Box::pin(session.finish()).await.ok().flatten()
            };
            let Some(reusable) = reusable else {
                return;
            };
            conn.set_idle(self.table.now());
            session = next_session(reusable, settings).await;
        }
    }
}

/// A `101 Switching Protocols` written, the connection handed to what serves the new protocol,
/// with no deadline of the listener's (the upgrade's server keeps its own liveness).
async fn upgraded(mut session: ServerSession, answer: Answer, upgrade: Upgrade, conn: &Conn) {
    conn.set_phase(Phase::Upgraded);
    let Ok(mut header) = ResponseHeader::build(answer.status, Some(answer.headers.len())) else {
        return;
    };
    for (name, value) in answer.headers {
        if header.insert_header(name, value).is_err() {
            return;
        }
    }
    if session
        .write_response_header(Box::new(header))
        .await
        .is_err()
    {
        return;
    }
    let ServerSession::H1(h1) = session else {
        return;
    };
    let mut stream = h1.into_inner();
    if tokio::io::AsyncWriteExt::flush(&mut stream).await.is_err() {
        return;
    }
    (upgrade.0)(stream).await;
}

/// Whether pingora's `finish` completes without waiting: after a whole answer (written and flushed
/// by [`write_answer`]) on a keep-alive connection whose request body was all read, it has nothing
/// to flush, drain or close.
fn finishes_at_once(session: &mut ServerSession) -> bool {
    session.get_keepalive().is_some() && session.is_body_done()
}

/// pingora's `finish`, polled once in place when [`finishes_at_once`]. Why: boxed, its 3.7 KB future
/// was allocated and copied for every request (the largest copy on the request path in a profile).
/// Should it ever wait all the same, the connection closes: its answer is already written whole.
fn finish_now(session: ServerSession) -> Option<ReusableHttpStream> {
    let finish = std::pin::pin!(session.finish());
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::future::Future::poll(finish, &mut cx) {
        std::task::Poll::Ready(Ok(reusable)) => reusable,
        _ => None,
    }
}

/// An unread body behind a closing answer (a 413, or a refusal before the body): the close lingers
/// so the client reads the answer rather than a reset. Not after a deadline: that client is slow.
fn linger_if_unread(session: &mut ServerSession, conn: &Conn) {
    if session.get_keepalive().is_none() && conn.close_reason().is_none() && !session.is_body_done()
    {
        conn.linger_on_close();
    }
}

/// The session of a kept-alive connection's next request, made once the request's first byte is
/// here (or the wait ended): pingora's session allocates its head buffer as soon as it starts
/// reading, and an idle connection should hold none (see `ClientStream`'s `Peek`).
async fn next_session(
    reusable: ReusableHttpStream,
    settings: HttpPersistentSettings,
) -> ServerSession {
    let (mut stream, pipelined) = reusable.into_parts();
    if pipelined.is_none() {
        let _ = stream.try_peek(&mut [0u8; 1]).await;
    }
    let mut session = ServerSession::new_http1(stream);
    settings.apply_to_session(&mut session);
    if let Some(prefix) = pipelined {
        session.set_pipelined_prefix(prefix);
    }
    session
}

/// A request the connection layer refuses before its handler sees it.
struct HeadRefusal {
    error: ProxyError,
    reason: CloseReason,
    /// Whether the client may still be sending (the rest of a head, or a body).
    linger: bool,
}

impl HeadRefusal {
    fn too_large() -> Self {
        HeadRefusal {
            error: ProxyError::new(431, Reason::HeaderTooLarge, "the request head is too large"),
            reason: CloseReason::HeaderTooLarge,
            linger: true,
        }
    }

    fn too_many_headers() -> Self {
        HeadRefusal {
            error: ProxyError::new(
                431,
                Reason::HeaderTooLarge,
                "the request has too many headers",
            ),
            reason: CloseReason::TooManyHeaders,
            linger: true,
        }
    }

    /// The refusal for a head pingora could not read, if it deserves an answer: a head that
    /// timed out after its first byte (408), ran over the byte budget or pingora's header count
    /// (431), or cannot be parsed or framed (400: a malformed line, conflicting `Content-Length`s,
    /// a `Transfer-Encoding` other than chunked). None when the client left or was evicted.
    fn for_error(e: &pingora::Error, conn: &Conn) -> Option<Self> {
        match conn.close_reason() {
            Some(CloseReason::HeaderTimeout) => Some(HeadRefusal {
                error: ProxyError::new(
                    408,
                    Reason::RequestTimeout,
                    "the request head took too long",
                ),
                reason: CloseReason::HeaderTimeout,
                linger: false,
            }),
            Some(CloseReason::HeaderTooLarge) => Some(Self::too_large()),
            Some(_) => None,
            None if e.root_cause().downcast_ref() == Some(&httparse::Error::TooManyHeaders) => {
                Some(Self::too_many_headers())
            }
            None if e.etype == ErrorType::InvalidHTTPHeader => Some(HeadRefusal {
                error: ProxyError::bad_request("malformed request head or framing"),
                reason: CloseReason::BadFraming,
                linger: true,
            }),
            None => None,
        }
    }
}

/// The request head, if pingora parsed one before refusing the request (bad framing is found after
/// parsing). pingora has no accessor that does not panic without one; its request summary names
/// the method only once a head was parsed.
fn parsed_head(session: &ServerSession) -> Option<&RequestHeader> {
    let h1 = session.as_http1()?;
    (!h1.request_summary().starts_with("- ")).then(|| h1.req_header())
}

/// Writes the header and body in one flush, with an exact `Content-Length`.
pub async fn write_answer(session: &mut ServerSession, answer: Answer) -> pingora::Result<()> {
    let mut header = ResponseHeader::build(answer.status, Some(3 + answer.headers.len()))?;
    header.insert_header(http::header::CONTENT_TYPE, answer.content_type)?;
    let length = http::HeaderValue::from(answer.body.len());
    header.insert_header(http::header::CONTENT_LENGTH, length)?;
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
    /// The body did not arrive within the body deadline (`server.body_timeout_ms`).
    TimedOut,
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
    while let Some(chunk) = session.read_request_body().await.map_err(body_error)? {
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

/// A failed body read: a timeout of the connection's stream, or anything else.
fn body_error(e: Box<pingora::Error>) -> BodyError {
    let cause = e.root_cause().downcast_ref::<std::io::Error>();
    if cause.is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut) {
        BodyError::TimedOut
    } else {
        BodyError::Io(e)
    }
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
