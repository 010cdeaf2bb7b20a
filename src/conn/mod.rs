//! Client connections held to limits: deadlines for the request head, the body, the idle keep-alive
//! wait and the answer, a budget for the head's size, a cap on open connections that makes room by
//! closing the longest-idle one, and a lingering close after a refused body.
//!
//! [`ClientStream`] wraps each accepted stream and enforces the deadlines and the head budget on
//! every read and write; the serving loop (`httpio::App`) tells it which phase of a request the
//! connection is in through the shared [`Conn`]. [`ConnTable`] admits connections and evicts idle ones.
//!
//! Why a stream wrapper rather than pingora's own timeouts: pingora's HTTP/1 session applies its
//! keep-alive timeout and read timeout to each read, not to the head or body as a whole (a client
//! dripping a byte at a time never trips them), replaces the keep-alive timeout with "none" once it
//! has read a request (`respect_keepalive`), and can only refuse a head at 1 MiB. Wrapping
//! `read_request` in a `tokio::time::timeout` could bound the head but cannot tell the idle wait from
//! the head's arrival, nor bound its size. The wrapper sees every byte: one timer per connection,
//! polled only when a read or write has to wait and re-armed only for an earlier deadline.
//!
//! Measured on the translating path (`bench/callgrind.sh`, release build, 10,000 requests): 690
//! instructions more per request than without these limits (90,690 against 90,000, +0.8%); about
//! 0.4 KB more per open connection (resident with 1,000 idle keep-alive connections: 29.7 MB
//! against 28.9 MB).

mod stream;
mod table;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use atomic_waker::AtomicWaker;

pub use stream::ClientStream;
pub use table::{ConnGuard, ConnTable, Refused};

use crate::config::ServerConfig;
use crate::metrics::CloseReason;

/// How long a lingering close reads and discards what a refused client still sends.
pub const LINGER_TIME: Duration = Duration::from_secs(5);
/// How much a lingering close reads and discards at most (enough for a client that sends a whole
/// body of several MiB before it reads the refusal).
pub const LINGER_BYTES: u64 = 16 * 1024 * 1024;

/// What the connection layer holds each client connection to (`[server]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// The whole request head: from the accept on a new connection, else from its first byte.
    pub header_timeout: Duration,
    /// The whole request body, from its first read.
    pub body_timeout: Duration,
    /// Idle after an answer, until the next request's first byte.
    pub keepalive_timeout: Duration,
    /// The whole answer, from its first write that has to wait.
    pub write_timeout: Duration,
    /// Bytes read from the socket while reading a request head.
    pub max_header_bytes: usize,
    /// Header lines of a request.
    pub max_headers: usize,
    /// Open connections of the listener.
    pub max_connections: usize,
    /// Open connections from one source address (an IPv6 /64); 0 for no cap.
    pub max_per_address: usize,
    /// A TLS handshake, from the accept.
    pub handshake_timeout: Duration,
}

impl Default for ClientLimits {
    /// `[server]`'s defaults (docs/book/src/configuration.md).
    fn default() -> Self {
        ClientLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_connections: 4096,
            max_per_address: 512,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

impl ClientLimits {
    /// The limits `[server]` configures for the chat listener.
    pub fn from_config(s: &ServerConfig) -> Self {
        ClientLimits {
            header_timeout: Duration::from_millis(s.header_timeout_ms),
            body_timeout: Duration::from_millis(s.body_timeout_ms),
            keepalive_timeout: Duration::from_millis(s.keepalive_timeout_ms),
            write_timeout: Duration::from_millis(s.write_timeout_ms),
            max_header_bytes: s.max_header_bytes,
            max_headers: s.max_headers,
            max_connections: s.max_client_connections,
            max_per_address: s.max_connections_per_address,
            handshake_timeout: Duration::from_millis(s.handshake_timeout_ms),
        }
    }

    /// The limits of a private listener (admin, demo bots): the same deadlines and head limits,
    /// its own connection cap, and no per-address cap (its clients are few, or the proxy itself).
    pub fn private_listener(self, max_connections: usize) -> Self {
        ClientLimits {
            max_connections,
            max_per_address: 0,
            ..self
        }
    }

    /// Lowers the connection cap to what the process's open-file limit allows, with a warning: each
    /// client connection may hold a backend connection too, so the cap is kept below half the
    /// limit (minus a few descriptors for listeners, logs and the runtime). A cap above the limit
    /// would let `accept` fail with "too many open files" before the cap could make room.
    pub fn fit_open_file_limit(self) -> Self {
        let Some(files) = open_file_limit() else {
            return self;
        };
        let fits = (files.saturating_sub(64) / 2).max(1);
        if self.max_connections <= fits {
            return self;
        }
        tracing::warn!(
            configured = self.max_connections,
            open_file_limit = files,
            using = fits,
            "server.max_client_connections is more than the open-file limit allows; raise the \
             limit (ulimit -n) to use it"
        );
        // Only the connection cap changes: the per-address cap stays.
        ClientLimits {
            max_connections: fits,
            ..self
        }
    }
}

/// The soft `RLIMIT_NOFILE`, if it can be read and is finite.
fn open_file_limit() -> Option<usize> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through a valid pointer to a local.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (rc == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur as usize)
}

/// Where a connection is in its request cycle; its stream picks the deadline from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Accepted, no byte of a request yet (deadline: accept + header timeout).
    Fresh = 0,
    /// After an answer, no byte of the next request yet (deadline: keep-alive timeout).
    Idle = 1,
    /// Reading a request head (deadline: header timeout).
    Head = 2,
    /// Handling the request and reading its body (deadline: body timeout).
    Body = 3,
    /// Writing the answer (deadline: write timeout).
    Answer = 4,
    /// A lingering close (deadline: [`LINGER_TIME`]).
    Linger = 5,
    /// Switched to another protocol (a WebSocket), whose server keeps its own liveness and closes
    /// it (deadline: [`UPGRADED_TIME`] after it first waits).
    Upgraded = 6,
}

/// The longest an upgraded connection lives: above the longest a channel stream is kept (its
/// token's 1,800 s).
pub const UPGRADED_TIME: std::time::Duration = std::time::Duration::from_secs(3_600);

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Fresh,
            1 => Phase::Idle,
            2 => Phase::Head,
            3 => Phase::Body,
            4 => Phase::Answer,
            6 => Phase::Upgraded,
            _ => Phase::Linger,
        }
    }

    /// Whether no byte of the next request has arrived: the connection may be evicted.
    fn is_waiting(self) -> bool {
        matches!(self, Phase::Fresh | Phase::Idle)
    }

    /// Whether the bytes read now belong to a request head (and count against its budget).
    fn reads_head(self) -> bool {
        matches!(self, Phase::Fresh | Phase::Idle | Phase::Head)
    }

    /// Why a deadline of this phase closes the connection.
    fn timeout_reason(self) -> CloseReason {
        match self {
            Phase::Fresh | Phase::Head => CloseReason::HeaderTimeout,
            Phase::Idle | Phase::Upgraded => CloseReason::IdleTimeout,
            Phase::Body => CloseReason::BodyTimeout,
            Phase::Answer => CloseReason::WriteTimeout,
            Phase::Linger => CloseReason::LingerLimit,
        }
    }
}

/// One connection's state, shared by its serving task, its [`ClientStream`] and the [`ConnTable`].
/// Plain atomics: the task and its stream run on one thread; the table only reads the idle time
/// and claims idle connections.
#[derive(Debug)]
pub struct Conn {
    phase: AtomicU8,
    /// When the connection started waiting for a request (table clock, never 0); 0 while busy.
    idle_since: AtomicU64,
    evicted: AtomicBool,
    /// The task waiting for a request, woken when the connection is evicted.
    waker: AtomicWaker,
    /// The first [`CloseReason`] recorded (its code), 0 for none.
    close: AtomicU8,
    /// Whether closing should linger (read and discard what the client still sends).
    linger: AtomicBool,
}

impl Conn {
    fn new(idle_since: u64) -> Self {
        Conn {
            phase: AtomicU8::new(Phase::Fresh as u8),
            idle_since: AtomicU64::new(idle_since),
            evicted: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            close: AtomicU8::new(0),
            linger: AtomicBool::new(false),
        }
    }

    /// The phase the serving task announced last (or the stream, for a head's first byte).
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Relaxed))
    }

    /// Announces a phase that is not a wait for a request.
    pub fn set_phase(&self, phase: Phase) {
        self.idle_since.store(0, Ordering::Relaxed);
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// Announces the wait for the next request, idle since `now` (the table's clock).
    pub fn set_idle(&self, now: u64) {
        self.phase.store(Phase::Idle as u8, Ordering::Relaxed);
        self.idle_since.store(now, Ordering::Relaxed);
    }

    /// Records why the connection is being closed; the first reason recorded is the one counted.
    pub fn close_for(&self, reason: CloseReason) {
        let _ =
            (self.close).compare_exchange(0, reason.code(), Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The reason recorded, if any.
    pub fn close_reason(&self) -> Option<CloseReason> {
        CloseReason::from_code(self.close.load(Ordering::Relaxed))
    }

    /// Asks the stream to linger when it is shut down.
    pub fn linger_on_close(&self) {
        self.linger.store(true, Ordering::Relaxed);
    }

    fn lingers(&self) -> bool {
        self.linger.load(Ordering::Relaxed)
    }

    fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }

    /// Ready once the connection is evicted (for a wait that reads nothing, e.g. a TLS handshake).
    pub fn evicted(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            if !self.is_evicted() {
                self.waker.register(cx.waker());
            }
            match self.is_evicted() {
                true => std::task::Poll::Ready(()),
                false => std::task::Poll::Pending,
            }
        })
    }

    /// Claims the connection for eviction if it is still idle since `since`; wakes its task.
    fn evict(&self, since: u64) -> bool {
        let claimed = (self.idle_since)
            .compare_exchange(since, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok();
        if claimed {
            self.close_for(CloseReason::Evicted);
            self.evicted.store(true, Ordering::Release);
            self.waker.wake();
        }
        claimed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_limits_are_the_configs_defaults() {
        use crate::config::server::{validate, RawServer};
        let raw: RawServer = toml::from_str("listen = \"127.0.0.1:1\"").unwrap();
        let limits = ClientLimits::from_config(&validate(&raw).unwrap().0);
        assert_eq!(limits, ClientLimits::default());
    }
}
