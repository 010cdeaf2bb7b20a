//! [`ClientStream`]: an accepted client stream that enforces its connection's deadlines, the request
//! head's byte budget, eviction and the lingering close on every read and write.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, Take};
use tokio::time::{Instant, Sleep};

use super::{ClientLimits, Conn, Phase, LINGER_BYTES, LINGER_TIME};
use crate::metrics::CloseReason;

/// A client stream held to its connection's limits. Reads while a request head is awaited or read
/// are capped at the head budget (`max_header_bytes`, through tokio's [`Take`]); a read or write
/// that has to wait past its phase's deadline fails with `TimedOut` and records why.
#[derive(Debug)]
pub struct ClientStream {
    inner: Take<Stream>,
    conn: Arc<Conn>,
    limits: Arc<ClientLimits>,
    accepted: Instant,
    /// The phase `deadline` belongs to.
    phase: Phase,
    /// None until an operation of the phase has to wait (then: now + the phase's timeout).
    deadline: Option<Instant>,
    /// One timer for the connection's life, created at the first wait and re-armed per phase.
    timer: Option<Pin<Box<Sleep>>>,
    /// The waker the timer was last polled with.
    timer_waker: Option<Waker>,
    /// A lingering close in progress (see [`ClientStream::poll_linger`]).
    linger: Option<Linger>,
    /// Bytes read by [`Peek::try_peek`], read again before anything else.
    peeked: Vec<u8>,
}

/// At most this much is read at once by [`Peek::try_peek`]: what pingora's head reads ask for.
const PEEK_READ: usize = 4096;

impl ClientStream {
    /// Wraps a just-accepted stream.
    pub fn new(inner: Stream, conn: Arc<Conn>, limits: Arc<ClientLimits>) -> Self {
        let accepted = Instant::now();
        ClientStream {
            inner: inner.take(limits.max_header_bytes as u64),
            deadline: Some(accepted + limits.header_timeout),
            phase: Phase::Fresh,
            timer: None,
            timer_waker: None,
            linger: None,
            peeked: Vec::new(),
            accepted,
            conn,
            limits,
        }
    }

    /// Picks up a phase the serving task announced: a new deadline and, for a request head, a
    /// fresh budget.
    fn sync_phase(&mut self) -> Phase {
        let phase = self.conn.phase();
        if phase != self.phase {
            self.phase = phase;
            self.deadline = match phase {
                Phase::Fresh => Some(self.accepted + self.limits.header_timeout),
                Phase::Linger => Some(Instant::now() + LINGER_TIME),
                _ => None,
            };
            let budget = match phase {
                Phase::Fresh | Phase::Idle => self.limits.max_header_bytes as u64,
                Phase::Head => self.inner.limit(),
                _ => u64::MAX,
            };
            self.inner.set_limit(budget);
        }
        phase
    }

    /// The first byte of a request arrived: the head's deadline starts (on a new connection it
    /// started at the accept).
    fn head_started(&mut self) {
        self.conn.set_phase(Phase::Head);
        if self.phase == Phase::Idle {
            self.deadline = None;
        }
        self.phase = Phase::Head;
    }

    fn timeout(&self) -> Duration {
        match self.phase {
            Phase::Fresh | Phase::Head => self.limits.header_timeout,
            Phase::Idle => self.limits.keepalive_timeout,
            Phase::Body => self.limits.body_timeout,
            Phase::Answer => self.limits.write_timeout,
            Phase::Linger => LINGER_TIME,
            Phase::Upgraded => super::UPGRADED_TIME,
        }
    }

    /// An operation has to wait: pending until the phase's deadline, then the error that ends it.
    /// The timer moves earlier at once but later only once it fires: each idle wait of a kept-alive
    /// connection ends later than the last, so most requests re-arm no timer at all. Nor is it
    /// polled again while it holds this task's waker and has not fired (a poll re-registers the
    /// waker: a third of the wrapper's cost per request).
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let deadline = match self.deadline {
            Some(d) => d,
            None => *self.deadline.insert(Instant::now() + self.timeout()),
        };
        let timer =
            (self.timer).get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        let moved = deadline < timer.deadline();
        if moved {
            timer.as_mut().reset(deadline);
        }
        let same_task = (self.timer_waker.as_ref()).is_some_and(|w| w.will_wake(cx.waker()));
        if !moved && same_task && !timer.is_elapsed() {
            return Poll::Pending;
        }
        if !same_task {
            self.timer_waker = Some(cx.waker().clone());
        }
        // Unconstrained: tokio's cooperative budget must not turn this poll into a pending one that
        // registered nothing, since the next one may be skipped.
        while Pin::new(&mut tokio::task::unconstrained(timer.as_mut()))
            .poll(cx)
            .is_ready()
        {
            if timer.deadline() >= deadline {
                let reason = self.phase.timeout_reason();
                self.conn.close_for(reason);
                return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, reason.as_str()));
            }
            timer.as_mut().reset(deadline); // fired at an earlier phase's deadline
        }
        Poll::Pending
    }

    /// Waits with the deadline: the inner operation's result, or the deadline's error.
    fn or_deadline<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => self.poll_deadline(cx).map(Err),
            ready => ready,
        }
    }

    /// A lingering close, polled to its end: send the end of the answer (FIN), then read and
    /// discard what the client still sends, until it closes, for at most [`LINGER_TIME`] and
    /// [`LINGER_BYTES`]. A client still sending a refused body then reads the refusal instead of a
    /// reset. Hand-written as a poll function because pingora closes a connection through
    /// `AsyncWrite::poll_shutdown`, the only hook it offers there.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut linger = match self.linger.take() {
            Some(l) => l,
            None => {
                self.conn.set_phase(Phase::Linger);
                self.sync_phase();
                Linger::default()
            }
        };
        let done = self.poll_linger_steps(cx, &mut linger);
        if done.is_pending() {
            self.linger = Some(linger);
        }
        done
    }

    fn poll_linger_steps(&mut self, cx: &mut Context<'_>, l: &mut Linger) -> Poll<()> {
        if !l.fin_sent {
            let r = Pin::new(self.inner.get_mut()).poll_shutdown(cx);
            if ready!(self.or_deadline(cx, r)).is_err() {
                return Poll::Ready(());
            }
            l.fin_sent = true;
        }
        loop {
            let mut buf = ReadBuf::new(&mut l.scratch);
            let r = Pin::new(&mut self.inner).poll_read(cx, &mut buf);
            let n = match ready!(self.or_deadline(cx, r)) {
                Ok(()) => buf.filled().len() as u64,
                Err(_) => return Poll::Ready(()),
            };
            if n == 0 {
                return Poll::Ready(()); // the client closed: a clean end
            }
            l.read += n;
            if l.read >= LINGER_BYTES {
                self.conn.close_for(CloseReason::LingerLimit);
                return Poll::Ready(());
            }
        }
    }
}

/// A lingering close in progress.
struct Linger {
    fin_sent: bool,
    read: u64,
    scratch: Box<[u8]>,
}

impl Default for Linger {
    fn default() -> Self {
        Linger {
            fin_sent: false,
            read: 0,
            scratch: vec![0u8; 64 * 1024].into_boxed_slice(),
        }
    }
}

impl std::fmt::Debug for Linger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (f.debug_struct("Linger"))
            .field("fin_sent", &self.fin_sent)
            .field("read", &self.read)
            .finish()
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.peeked.is_empty() {
            return this.poll_read_limited(cx, buf);
        }
        let n = this.peeked.len().min(buf.remaining());
        buf.put_slice(&this.peeked[..n]);
        if n == this.peeked.len() {
            this.peeked = Vec::new(); // nothing held while idle
        } else {
            this.peeked.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl ClientStream {
    /// A read from the client under the phase's limits (every read but that of peeked bytes).
    fn poll_read_limited(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let phase = self.sync_phase();
        if phase.is_waiting() && self.conn.is_evicted() {
            return Poll::Ready(Ok(())); // end of stream: no request is cut
        }
        if phase.reads_head() && self.inner.limit() == 0 {
            self.conn.close_for(CloseReason::HeaderTooLarge);
            return Poll::Ready(Err(io::Error::other("request head over max_header_bytes")));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        match read {
            Poll::Ready(Ok(())) if phase.is_waiting() && buf.filled().len() > before => {
                self.head_started();
                read
            }
            Poll::Pending if phase.is_waiting() => {
                self.conn.waker.register(cx.waker());
                if self.conn.is_evicted() {
                    return Poll::Ready(Ok(()));
                }
                self.or_deadline(cx, read)
            }
            _ => self.or_deadline(cx, read),
        }
    }

    /// Reads until `want` bytes are peeked: the first read of at most [`PEEK_READ`] bytes goes
    /// through a buffer on the stack, so nothing is allocated before the client sends.
    fn poll_peek(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<()>> {
        while self.peeked.len() < want {
            // Not zeroed: a read only writes into it (zeroing 4 KiB twice per request was 8k
            // instructions under callgrind).
            let mut scratch = [MaybeUninit::<u8>::uninit(); PEEK_READ];
            let mut buf = ReadBuf::uninit(&mut scratch);
            ready!(self.poll_read_limited(cx, &mut buf))?;
            if buf.filled().is_empty() {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            self.peeked.extend_from_slice(buf.filled());
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.sync_phase();
        let r = Pin::new(this.inner.get_mut()).poll_write(cx, buf);
        this.or_deadline(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.sync_phase();
        let r = Pin::new(this.inner.get_mut()).poll_write_vectored(cx, bufs);
        this.or_deadline(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.get_ref().is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.sync_phase();
        let r = Pin::new(this.inner.get_mut()).poll_flush(cx);
        this.or_deadline(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.conn.lingers() {
            return this.poll_linger(cx).map(Ok);
        }
        this.sync_phase();
        let r = Pin::new(this.inner.get_mut()).poll_shutdown(cx);
        this.or_deadline(cx, r)
    }
}

#[async_trait]
impl Shutdown for ClientStream {
    /// The same as `AsyncWrite::poll_shutdown` (which pingora's HTTP session calls): a lingering
    /// close when the serving task asked for one, else a plain shutdown within the write deadline.
    async fn shutdown(&mut self) {
        let _ = AsyncWriteExt::shutdown(self).await;
    }
}

// What pingora asks of a stream beyond I/O: all answered by the wrapped stream.

impl UniqueID for ClientStream {
    fn id(&self) -> UniqueIDType {
        self.inner.get_ref().id()
    }
}

impl Ssl for ClientStream {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ref().get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ref().get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<pingora::protocols::ALPN> {
        self.inner.get_ref().selected_alpn_proto()
    }
}

impl GetTimingDigest for ClientStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_ref().get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_ref().get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_ref().get_write_pending_time()
    }
}

impl GetProxyDigest for ClientStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_ref().get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.get_mut().set_proxy_digest(digest)
    }
}

impl GetSocketDigest for ClientStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_ref().get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.get_mut().set_socket_digest(digest)
    }
}

/// Waits, under the connection's limits, until `buf.len()` bytes have arrived, and copies them into
/// `buf` without consuming them. The serving loop waits this way for each request's first byte
/// before pingora's session reads the head: pingora allocates a 4 KiB head buffer when that read
/// starts, which every idle keep-alive connection then held (4 MB per 1,000; `bench/bench.py`).
#[async_trait]
impl Peek for ClientStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        std::future::poll_fn(|cx| self.poll_peek(cx, buf.len())).await?;
        buf.copy_from_slice(&self.peeked[..buf.len()]);
        Ok(true)
    }
}
