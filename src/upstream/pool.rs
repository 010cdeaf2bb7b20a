//! The idle connection pool: keep-alive connections per peer, checked when taken out.
//!
//! It replaces pingora's connection pool, which spawns a watcher task, takes a lock and checks the
//! socket's peer address for every request it pools: here a connection is checked when it is taken
//! out (newest first), with one non-blocking read that tells a connection the backend closed (or
//! that holds unexpected bytes) from a live one (asking the socket itself once the connection has
//! been idle for a second), and connections idle longer than the backend's `pool_idle_timeout_s`
//! are closed instead of used; every peer's are swept each second the pool is used, so connections
//! to backends no longer in use (after a reload) do not linger.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use pingora::protocols::Stream;
use tokio::io::AsyncReadExt;

/// How long a connection may sit idle before taking it out also asks its socket whether the backend
/// closed it. Backends close idle connections after their keep-alive timeout (a second at the very
/// least); one reused sooner is checked against what tokio already knows, at no cost.
const PEEK_AFTER_IDLE: Duration = Duration::from_secs(1);
/// How often every peer's connections are checked for their idle timeout (when the pool is used):
/// also those of backends no longer used, e.g. after a reload moved them.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Idle keep-alive connections, per peer, at most `max_per_peer` each. The newest is taken first
/// (it is the least likely to have been closed by the backend); the oldest are closed first.
pub(super) struct IdlePool {
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
    pub(super) fn new(max_per_peer: usize) -> Self {
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
    pub(super) fn take(&self, key: u64, now: Instant) -> Option<Stream> {
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
    pub(super) fn put(&self, key: u64, stream: Stream, max_idle: Duration, now: Instant) {
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
}
