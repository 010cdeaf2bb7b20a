//! Talking to backends: HTTP/1.1 over pingora's transport (plain TCP or rustls TLS), with a pool of
//! idle keep-alive connections of its own.
//!
//! pingora's own HTTP client writes a request's header and body in two writes and builds a header map
//! first; a proxy whose requests are small and complete before it sends them does better writing the
//! whole request in one write from bytes it built directly ([`RequestBytes`]). The answer is parsed
//! with `httparse`: interim 1xx answers are skipped, the body is framed by `Content-Length`, chunked
//! encoding, or (without either) the end of the connection, and bounded by a size limit. A connection
//! goes back to the pool only when the answer was complete, exactly framed and keep-alive.
//!
//! The pool ([`IdlePool`]) replaces pingora's connection pool, which spawns a watcher task, takes a
//! lock and checks the socket's peer address for every request it pools: here a connection is
//! checked when it is taken out (newest first), with one non-blocking read that tells a connection
//! the backend closed (or that holds unexpected bytes) from a live one (asking the socket itself
//! once the connection has been idle for a second), and connections idle longer than the backend's
//! `pool_idle_timeout_s` are closed instead of used; every peer's are swept each second the pool is
//! used, so connections to backends no longer in use (after a reload) do not linger.
//!
//! One exchange runs within the backend's read timeout (the connect timeout applies inside it).
//! Delivery is at most once: a request is retried (once, on a fresh connection) only when it could not
//! be fully written to a reused connection, since a backend cannot act on a request it never fully
//! received. Once written, a failure is a 502 rather than a risk of the bot seeing the message twice;
//! the check on taking a connection out drops connections the backend closed while idle, and
//! `pool_idle_timeout_s` below the backend's own keep-alive timeout keeps the remaining race (a close
//! in flight while the request is sent) rare.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use pingora::connectors::{ConnectorOptions, TransportConnector};
use pingora::protocols::Stream;
use pingora::upstreams::peer::{HttpPeer, Peer};
use pingora::ErrorType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::Endpoint;
use crate::error::{ProxyError, Reason};

/// Largest answer header block accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most answer headers parsed.
const MAX_HEADERS: usize = 64;

/// A backend's answer: status and whole body.
#[derive(Debug)]
pub struct Exchange {
    pub status: u16,
    pub body: Bytes,
}

/// A complete HTTP/1.1 request, built as bytes: request line, headers, `Content-Length`, body.
///
/// Header names and values must already be safe (values are checked when the configuration is
/// loaded, request ids when they arrive); nothing here re-validates them.
pub struct RequestBytes(Vec<u8>);

impl RequestBytes {
    /// `POST <path> HTTP/1.1`, with room for about `capacity` bytes.
    pub fn post(path: &str, capacity: usize) -> Self {
        let mut v = Vec::with_capacity(capacity + 256);
        v.extend_from_slice(b"POST ");
        v.extend_from_slice(path.as_bytes());
        v.extend_from_slice(b" HTTP/1.1\r\n");
        RequestBytes(v)
    }

    /// Adds a header.
    pub fn header(&mut self, name: &str, value: &str) -> &mut Self {
        self.0.extend_from_slice(name.as_bytes());
        self.0.extend_from_slice(b": ");
        self.0.extend_from_slice(value.as_bytes());
        self.0.extend_from_slice(b"\r\n");
        self
    }

    /// Ends the header block with the body's exact `Content-Length`, then appends the body.
    pub fn body(mut self, body: &[u8]) -> Vec<u8> {
        use std::io::Write;
        // Writing into a Vec cannot fail.
        let _ = write!(self.0, "content-length: {}\r\n\r\n", body.len());
        self.0.extend_from_slice(body);
        self.0
    }
}

/// The pooled client for all backends.
pub struct Upstream {
    connector: TransportConnector,
    idle: IdlePool,
    max_answer_bytes: usize,
}

/// A backend address as the client needs it: pingora's peer (address, TLS settings, timeouts) and
/// the key its idle connections are pooled under. Built once per configuration.
pub struct BackendPeer {
    peer: HttpPeer,
    /// pingora's reuse hash (address, scheme, SNI, TLS settings): connections are shared only
    /// between identical peers, also across configuration reloads.
    key: u64,
}

/// The peer for an endpoint.
pub fn peer_for(ep: &Endpoint) -> BackendPeer {
    let mut peer = HttpPeer::new(ep.addr, ep.tls, ep.host.clone());
    peer.options.connection_timeout = Some(ep.connect_timeout);
    peer.options.idle_timeout = Some(ep.pool_idle_timeout);
    let key = peer.reuse_hash();
    BackendPeer { peer, key }
}

/// How long a connection may sit idle before taking it out also asks its socket whether the backend
/// closed it. Backends close idle connections after their keep-alive timeout (a second at the very
/// least); one reused sooner is checked against what tokio already knows, at no cost.
const PEEK_AFTER_IDLE: Duration = Duration::from_secs(1);
/// How often every peer's connections are checked for their idle timeout (when the pool is used):
/// also those of backends no longer used, e.g. after a reload moved them.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Idle keep-alive connections, per peer, at most `max_per_peer` each. The newest is taken first
/// (it is the least likely to have been closed by the backend); the oldest are closed first.
struct IdlePool {
    max_per_peer: usize,
    state: Mutex<PoolState>,
}

struct PoolState {
    peers: HashMap<u64, VecDeque<Idle>>,
    last_sweep: Instant,
}

struct Idle {
    stream: Stream,
    since: Instant,
    expires: Instant,
}

impl IdlePool {
    fn new(max_per_peer: usize) -> Self {
        IdlePool {
            max_per_peer,
            state: Mutex::new(PoolState {
                peers: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        // Nothing panics while the lock is held with the queues half changed.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A live idle connection to the peer, if there is one. Connections past their idle timeout,
    /// closed by the backend, or holding bytes nobody asked for are closed instead (after the lock
    /// is released).
    fn take(&self, key: u64, now: Instant) -> Option<Stream> {
        let mut closing = Vec::new();
        let found = loop {
            let mut idle = {
                let mut state = self.lock();
                state.sweep_if_due(now, &mut closing);
                let Some(queue) = state.peers.get_mut(&key) else {
                    break None;
                };
                expire(queue, now, &mut closing);
                match queue.pop_back() {
                    Some(idle) => idle,
                    None => break None,
                }
            };
            let ask_socket = now.saturating_duration_since(idle.since) >= PEEK_AFTER_IDLE;
            if usable(&mut idle.stream, ask_socket) {
                break Some(idle.stream);
            }
            closing.push(idle);
        };
        drop(closing);
        found
    }

    /// Keeps a connection whose last answer was complete, for the next request to the peer, until
    /// it has been idle for `max_idle`.
    fn put(&self, key: u64, stream: Stream, max_idle: Duration, now: Instant) {
        if self.max_per_peer == 0 {
            return;
        }
        let mut closing = Vec::new();
        {
            let mut state = self.lock();
            state.sweep_if_due(now, &mut closing);
            let queue = state.peers.entry(key).or_default();
            expire(queue, now, &mut closing);
            if queue.len() >= self.max_per_peer {
                closing.extend(queue.pop_front());
            }
            queue.push_back(Idle {
                stream,
                since: now,
                expires: now + max_idle,
            });
        }
        drop(closing);
    }

    #[cfg(test)]
    fn len(&self, key: u64) -> usize {
        self.lock().peers.get(&key).map_or(0, VecDeque::len)
    }
}

impl PoolState {
    /// At most once per [`SWEEP_EVERY`]: every peer's expired connections, and empty queues.
    fn sweep_if_due(&mut self, now: Instant, closing: &mut Vec<Idle>) {
        if now.saturating_duration_since(self.last_sweep) < SWEEP_EVERY {
            return;
        }
        self.last_sweep = now;
        self.peers.retain(|_, queue| {
            expire(queue, now, closing);
            !queue.is_empty()
        });
    }
}

/// Moves the connections at the old end of a queue whose idle timeout has passed to `closing`.
fn expire(queue: &mut VecDeque<Idle>, now: Instant, closing: &mut Vec<Idle>) {
    while queue.front().is_some_and(|i| i.expires <= now) {
        closing.extend(queue.pop_front());
    }
}

/// Whether an idle connection can carry a request: a read that does not wait must find nothing to
/// read. End of stream (the backend closed it), an error, or unexpected bytes all mean it cannot.
/// First what the stream itself holds and what tokio knows of the socket (no system call when tokio
/// knows it is quiet); then, with `ask_socket`, the socket itself, for a close tokio's event loop
/// has not yet seen.
fn usable(stream: &mut Stream, ask_socket: bool) -> bool {
    let mut byte = [0u8; 1];
    // `unconstrained`: tokio's cooperative budget must not turn a ready read into a pending one.
    let read = tokio::task::unconstrained(stream.read(&mut byte));
    let mut read = std::pin::pin!(read);
    let mut cx = Context::from_waker(Waker::noop());
    if !matches!(read.as_mut().poll(&mut cx), Poll::Pending) {
        return false;
    }
    !ask_socket || socket_quiet(stream.id())
}

/// `recv(MSG_PEEK | MSG_DONTWAIT)` of one byte: whether the socket has nothing to read and is not
/// closed. Nothing is consumed.
fn socket_quiet(fd: i32) -> bool {
    let mut byte = 0u8;
    // SAFETY: `fd` is the socket of a stream the caller holds open; the buffer is one valid byte.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
}

/// How an attempt failed.
enum Failure {
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
    fn safe_to_retry(&self) -> bool {
        matches!(self, Failure::Sending(_))
    }
}

/// How the answer body is framed.
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

impl Upstream {
    /// A client keeping at most `pool_size` idle connections per backend address, reading answers of at most
    /// `max_answer_bytes`.
    pub fn new(pool_size: usize, max_answer_bytes: usize) -> Self {
        Upstream {
            // Connections are pooled here (IdlePool), not in the connector.
            connector: TransportConnector::new(Some(ConnectorOptions::new(1))),
            idle: IdlePool::new(pool_size),
            max_answer_bytes,
        }
    }

    /// Sends a complete request (see [`RequestBytes`]) and reads the whole answer.
    pub async fn exchange(
        &self,
        peer: &BackendPeer,
        ep: &Endpoint,
        request: &[u8],
        now: Instant,
    ) -> Result<Exchange, ProxyError> {
        let round_trip = async {
            let pooled = self.idle.take(peer.key, now);
            let reused = pooled.is_some();
            let stream = match pooled {
                Some(s) => s,
                None => self.connect(peer).await?,
            };
            match self.attempt(stream, peer, ep, request).await {
                Err(f) if reused && f.safe_to_retry() => {
                    tracing::debug!(backend = %ep.name, "pooled connection was closed by the backend; retrying on a new one");
                    // Rare: boxed, so the common path's future stays small.
                    Box::pin(async {
                        let stream = self.connect(peer).await?;
                        self.attempt(stream, peer, ep, request).await
                    })
                    .await
                }
                other => other,
            }
        };
        match tokio::time::timeout(ep.read_timeout, round_trip).await {
            Ok(Ok(x)) => Ok(x),
            Ok(Err(f)) => Err(failure_to_error(f, ep, self.max_answer_bytes)),
            Err(_) => Err(timeout_error(ep.read_timeout)),
        }
    }

    /// A new connection (TCP, and TLS when the endpoint is https), within the connect timeout.
    /// Boxed: connecting (with a TLS handshake) is a large future and, with the pool, a rare one;
    /// inline it would make every request's future larger.
    async fn connect(&self, peer: &BackendPeer) -> Result<Stream, Failure> {
        Box::pin(self.connector.new_stream(&peer.peer))
            .await
            .map_err(Failure::Connect)
    }

    async fn attempt(
        &self,
        mut stream: Stream,
        peer: &BackendPeer,
        ep: &Endpoint,
        request: &[u8],
    ) -> Result<Exchange, Failure> {
        stream.write_all(request).await.map_err(Failure::Sending)?;
        stream.flush().await.map_err(Failure::Sending)?;
        let mut buf = BytesMut::with_capacity(4096);
        // Whether any answer byte arrived: until then a failure may be a connection closed while idle.
        let mut answered = false;
        loop {
            // Interim answers (100 Continue, 103 Early Hints) precede the real one.
            while let Some((len, status, framing, keep_alive)) = parse_head(&buf)? {
                buf.advance(len);
                if status == 101 {
                    // A protocol switch was never asked for; the connection cannot be used as HTTP.
                    return Err(Failure::BadAnswer("the backend switched protocols"));
                }
                if (100..200).contains(&status) {
                    continue;
                }
                let framing = if status == 204 || status == 304 {
                    Framing::Length(0)
                } else {
                    framing
                };
                return self
                    .finish(stream, peer, ep, buf, status, framing, keep_alive)
                    .await;
            }
            if buf.len() > MAX_HEAD_BYTES {
                return Err(Failure::BadAnswer("the answer header is too large"));
            }
            match read_more(&mut stream, &mut buf).await {
                Ok(0) if !answered => {
                    return Err(Failure::NoAnswer(std::io::ErrorKind::UnexpectedEof.into()))
                }
                Ok(0) => {
                    return Err(Failure::BadAnswer(
                        "the backend closed the connection within the answer header",
                    ))
                }
                Ok(_) => answered = true,
                Err(e) if !answered => return Err(Failure::NoAnswer(e)),
                Err(_) => {
                    return Err(Failure::BadAnswer(
                        "the connection failed within the answer",
                    ))
                }
            }
        }
    }

    /// Reads the body after the head and returns the connection to the pool when it can be reused.
    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        mut stream: Stream,
        peer: &BackendPeer,
        ep: &Endpoint,
        mut buf: BytesMut,
        status: u16,
        framing: Framing,
        mut keep_alive: bool,
    ) -> Result<Exchange, Failure> {
        let max = self.max_answer_bytes;
        let body = match framing {
            Framing::Length(n) => {
                if n > max {
                    return Err(Failure::TooLarge);
                }
                while buf.len() < n {
                    if read_body_more(&mut stream, &mut buf).await? == 0 {
                        return Err(Failure::BadAnswer(
                            "the backend closed the connection within the answer body",
                        ));
                    }
                }
                // Bytes beyond the declared body would corrupt the next exchange on this connection.
                keep_alive &= buf.len() == n;
                buf.split_to(n).freeze()
            }
            Framing::Chunked => read_chunked(&mut stream, &mut buf, max).await?,
            Framing::UntilClose => {
                keep_alive = false;
                while read_body_more(&mut stream, &mut buf).await? > 0 {
                    if buf.len() > max {
                        return Err(Failure::TooLarge);
                    }
                }
                buf.split().freeze()
            }
        };
        if keep_alive && buf.is_empty() {
            self.idle
                .put(peer.key, stream, ep.pool_idle_timeout, Instant::now());
        }
        Ok(Exchange { status, body })
    }
}

/// Reads what is available into `buf`; 0 means end of stream.
async fn read_more(stream: &mut Stream, buf: &mut BytesMut) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(4096);
    }
    stream.read_buf(buf).await
}

/// [`read_more`] within an answer body, where any failure means a broken answer.
async fn read_body_more(stream: &mut Stream, buf: &mut BytesMut) -> Result<usize, Failure> {
    read_more(stream, buf)
        .await
        .map_err(|_| Failure::BadAnswer("the connection failed within the answer"))
}

/// Parses an answer head: `(length, status, framing, keep-alive)`, or `None` if incomplete.
fn parse_head(buf: &[u8]) -> Result<Option<(usize, u16, Framing, bool)>, Failure> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => {
            return Err(Failure::BadAnswer(
                "the backend did not answer with valid HTTP",
            ))
        }
    };
    let status = resp.code.unwrap_or(0);
    let mut keep_alive = resp.version == Some(1);
    let mut length = None;
    let mut chunked = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = h.value.trim_ascii();
            let n = (!v.is_empty() && v.len() <= 19 && v.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(v).ok()?.parse::<usize>().ok())
                .flatten()
                .ok_or(Failure::BadAnswer(
                    "the answer has an invalid Content-Length",
                ))?;
            if length.is_some_and(|l| l != n) {
                return Err(Failure::BadAnswer(
                    "the answer has conflicting Content-Lengths",
                ));
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = h
                .value
                .split(|&b| b == b',')
                .next_back()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            if !chunked {
                return Err(Failure::BadAnswer(
                    "the answer uses a transfer encoding other than chunked",
                ));
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let t = token.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if t.eq_ignore_ascii_case(b"keep-alive") && resp.version == Some(0) {
                    keep_alive = true;
                }
            }
        }
    }
    // RFC 9112 6.3: chunked wins over Content-Length, and such a message must not be reused.
    let framing = match (chunked, length) {
        (true, Some(_)) => {
            keep_alive = false;
            Framing::Chunked
        }
        (true, None) => Framing::Chunked,
        (false, Some(n)) => Framing::Length(n),
        (false, None) => Framing::UntilClose,
    };
    Ok(Some((len, status, framing, keep_alive)))
}

/// Decodes a chunked body from `buf` and the stream, up to `max` bytes of data.
async fn read_chunked(
    stream: &mut Stream,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Bytes, Failure> {
    let mut body = BytesMut::new();
    loop {
        let line = read_line(stream, buf).await?;
        let size_hex = line[..]
            .split(|&b| b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        // Hex digits only (no sign), and few enough that no arithmetic below can overflow.
        let size = std::str::from_utf8(size_hex)
            .ok()
            .filter(|s| !s.is_empty() && s.len() <= 8 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|s| usize::from_str_radix(s, 16).ok())
            .ok_or(Failure::BadAnswer("the answer has an invalid chunk size"))?;
        if size == 0 {
            // Trailers, if any, up to the empty line.
            while !read_line(stream, buf).await?.is_empty() {}
            return Ok(body.freeze());
        }
        if size > max.saturating_sub(body.len()) {
            return Err(Failure::TooLarge);
        }
        while buf.len() < size + 2 {
            if read_body_more(stream, buf).await? == 0 {
                return Err(Failure::BadAnswer(
                    "the backend closed the connection within a chunk",
                ));
            }
        }
        body.extend_from_slice(&buf[..size]);
        if &buf[size..size + 2] != b"\r\n" {
            return Err(Failure::BadAnswer("a chunk does not end with CRLF"));
        }
        buf.advance(size + 2);
    }
}

/// Takes one CRLF-terminated line (without the CRLF) from `buf`, reading more as needed.
async fn read_line(stream: &mut Stream, buf: &mut BytesMut) -> Result<BytesMut, Failure> {
    loop {
        if let Some(pos) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = buf.split_to(pos);
            buf.advance(2);
            return Ok(line);
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(Failure::BadAnswer("a chunk line is too long"));
        }
        if read_body_more(stream, buf).await? == 0 {
            return Err(Failure::BadAnswer(
                "the backend closed the connection within the chunked body",
            ));
        }
    }
}

fn timeout_error(after: Duration) -> ProxyError {
    ProxyError::new(
        504,
        Reason::BackendTimeout,
        format!("the backend did not answer within {} ms", after.as_millis()),
    )
}

fn failure_to_error(f: Failure, ep: &Endpoint, max: usize) -> ProxyError {
    match f {
        Failure::TooLarge => {
            ProxyError::bad_answer(format!("the backend's answer is larger than {max} bytes"))
        }
        Failure::BadAnswer(why) => {
            tracing::debug!(backend = %ep.name, why, "backend answer unusable");
            ProxyError::bad_answer(why)
        }
        Failure::Sending(e) | Failure::NoAnswer(e) => {
            tracing::debug!(backend = %ep.name, error = %e, "backend exchange failed");
            ProxyError::new(
                502,
                Reason::BackendConnect,
                "the backend closed the connection without a complete answer",
            )
        }
        Failure::Connect(e) => {
            tracing::debug!(backend = %ep.name, error = %e, "cannot connect to the backend");
            match e.etype() {
                ErrorType::ConnectTimedout | ErrorType::TLSHandshakeTimedout => {
                    timeout_error(ep.connect_timeout.min(ep.read_timeout))
                }
                _ => ProxyError::new(502, Reason::BackendConnect, "the backend is unreachable"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loopback connection: the pool's side as a pingora stream, and the backend's side.
    async fn pair() -> (Stream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let stream: Stream = Box::new(pingora::protocols::l4::stream::Stream::from(client));
        (stream, server)
    }

    /// The connection's identity (its file descriptor, unique among open connections).
    fn conn_id(s: &Stream) -> i32 {
        s.id()
    }

    /// The pool closed the connection: its backend side reads end of stream.
    async fn assert_closed(server: &mut tokio::net::TcpStream) {
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(2), server.read(&mut buf))
            .await
            .expect("closed promptly")
            .unwrap();
        assert_eq!(n, 0);
    }

    const IDLE: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn the_pool_hands_back_live_connections_newest_first() {
        let pool = IdlePool::new(2);
        let (a, _sa) = pair().await;
        let (b, _sb) = pair().await;
        let (c, _sc) = pair().await;
        let (pb, pc) = (conn_id(&b), conn_id(&c));
        let now = Instant::now();
        pool.put(7, a, IDLE, now);
        pool.put(7, b, IDLE, now);
        pool.put(7, c, IDLE, now);
        // At most two per peer: the oldest went.
        assert_eq!(pool.len(7), 2);
        assert!(pool.take(8, now).is_none(), "another peer has none");
        assert_eq!(conn_id(&pool.take(7, now).unwrap()), pc);
        assert_eq!(conn_id(&pool.take(7, now).unwrap()), pb);
        assert!(pool.take(7, now).is_none());
    }

    #[tokio::test]
    async fn connections_closed_by_the_backend_or_holding_bytes_are_not_reused() {
        use tokio::io::AsyncWriteExt;
        let pool = IdlePool::new(8);
        let (closed, server_closed) = pair().await;
        let (chatty, mut server_chatty) = pair().await;
        let (live, _server_live) = pair().await;
        let live_id = conn_id(&live);
        let now = Instant::now();
        pool.put(1, live, IDLE, now);
        pool.put(1, closed, IDLE, now);
        pool.put(1, chatty, IDLE, now);
        drop(server_closed);
        server_chatty
            .write_all(b"HTTP/1.1 200 OK\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The two newest are unusable; the live one underneath is found.
        let got = pool.take(1, Instant::now()).expect("the live connection");
        assert_eq!(conn_id(&got), live_id);
        assert_eq!(pool.len(1), 0);
    }

    #[tokio::test]
    async fn connections_idle_past_the_timeout_are_closed_not_used() {
        let pool = IdlePool::new(8);
        let (old, mut server_old) = pair().await;
        let (fresh, _server_fresh) = pair().await;
        let fresh_id = conn_id(&fresh);
        let t0 = Instant::now();
        pool.put(1, old, Duration::from_secs(5), t0);
        pool.put(
            1,
            fresh,
            Duration::from_secs(5),
            t0 + Duration::from_secs(4),
        );
        // At t0 + 6 s the first has been idle 6 s (closed), the second 2 s (kept).
        let later = t0 + Duration::from_secs(6);
        assert_eq!(conn_id(&pool.take(1, later).unwrap()), fresh_id);
        assert!(pool.take(1, later).is_none());
        // The expired connection was really closed: its backend side reads end of stream.
        assert_closed(&mut server_old).await;
    }

    #[tokio::test]
    async fn a_close_tokio_has_not_seen_yet_is_caught_at_the_socket() {
        let pool = IdlePool::new(8);
        let (conn, server) = pair().await;
        let t0 = Instant::now();
        pool.put(1, conn, IDLE, t0);
        drop(server);
        // Block the thread: tokio's event loop does not run, so it has not seen the close.
        std::thread::sleep(Duration::from_millis(50));
        // Idle for longer than PEEK_AFTER_IDLE: the socket itself is asked.
        assert!(pool.take(1, t0 + Duration::from_secs(2)).is_none());
        assert_eq!(pool.len(1), 0);
    }

    #[tokio::test]
    async fn connections_of_peers_no_longer_used_are_swept() {
        let pool = IdlePool::new(8);
        let (old, mut server_old) = pair().await;
        let (other, _server_other) = pair().await;
        let t0 = Instant::now();
        pool.put(1, old, Duration::from_secs(1), t0);
        // Only another peer is used from now on; its use sweeps peer 1's expired connection.
        pool.put(2, other, IDLE, t0 + Duration::from_secs(3));
        assert_eq!(pool.len(1), 0);
        assert_eq!(pool.len(2), 1);
        assert_closed(&mut server_old).await;
    }

    #[tokio::test]
    async fn a_pool_of_size_zero_keeps_nothing() {
        let pool = IdlePool::new(0);
        let (a, _s) = pair().await;
        pool.put(1, a, IDLE, Instant::now());
        assert_eq!(pool.len(1), 0);
    }

    #[test]
    fn request_bytes_are_one_complete_request() {
        let mut r = RequestBytes::post("/api/chat", 10);
        r.header("host", "bot:8080").header("x-api-key", "k");
        let bytes = r.body(b"{\"a\":1}");
        assert_eq!(
            bytes,
            b"POST /api/chat HTTP/1.1\r\nhost: bot:8080\r\nx-api-key: k\r\ncontent-length: 7\r\n\r\n{\"a\":1}"
        );
    }

    #[test]
    fn heads_are_framed_by_the_rfc() {
        let head = |s: &str| match parse_head(s.as_bytes()) {
            Ok(Some((len, status, framing, ka))) => {
                let f = match framing {
                    Framing::Length(n) => format!("len {n}"),
                    Framing::Chunked => "chunked".into(),
                    Framing::UntilClose => "close".into(),
                };
                Ok((len, status, f, ka))
            }
            Ok(None) => Err("partial"),
            Err(_) => Err("bad"),
        };
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
            Ok((38, 200, "len 5".into(), true))
        );
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                .unwrap()
                .2,
            "chunked"
        );
        assert_eq!(head("HTTP/1.1 200 OK\r\n\r\n").unwrap().2, "close");
        assert!(
            !head("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
                .unwrap()
                .3
        );
        assert!(
            !head("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
                .unwrap()
                .3
        );
        assert!(
            head("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n")
                .unwrap()
                .3
        );
        // Chunked and a length: chunked wins, and the connection is not reused.
        let both =
            head("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n")
                .unwrap();
        assert_eq!((both.2.as_str(), both.3), ("chunked", false));
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"),
            Err("partial")
        );
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"),
            Err("bad")
        );
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Err("bad")
        );
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Err("bad")
        );
        assert_eq!(head("not http at all\r\n\r\n"), Err("bad"));
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n"),
            Err("bad"),
            "digits only"
        );
    }
}
