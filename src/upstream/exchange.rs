//! One exchange with a backend: a connection (pooled or new), the request, the whole answer.
//!
//! One exchange runs within the backend's read timeout (the connect timeout applies inside it).
//! Delivery is at most once: a request is retried (once, on a fresh connection) only when it could not
//! be fully written to a reused connection, since a backend cannot act on a request it never fully
//! received. Once written, a failure is an error rather than a risk of the bot seeing the message
//! twice; the check on taking a connection out drops connections the backend closed while idle, and
//! `pool_idle_timeout_s` below the backend's own keep-alive timeout keeps the remaining race (a close
//! in flight while the request is sent) rare.

use std::time::Instant;

use pingora::connectors::{ConnectorOptions, TransportConnector};
use pingora::protocols::Stream;
use tokio::io::AsyncWriteExt;

use super::answer::read_answer;
use super::error::{Failure, TransportError, TransportKind};
use super::pool::IdlePool;
use super::Endpoint;
use super::{BackendPeer, Exchange};

/// Whether a failed exchange sent nothing of its request, so it may go to another endpoint of the
/// backend (`crate::pool`): only when no connection could be made (refused, unreachable, TLS, or
/// not within the connect timeout). A pooled connection found closed before the write is retried
/// on a fresh one (`round_trip`); if that cannot be made either, it ends here as a connect failure.
/// Any other failure may come after the request was written, and is never sent again.
pub fn nothing_sent(e: &TransportError) -> bool {
    matches!(
        e.kind,
        TransportKind::Connect | TransportKind::ConnectTimeout
    )
}

/// The pooled client for all backends.
pub struct Upstream {
    connector: TransportConnector,
    idle: IdlePool,
    max_answer_bytes: usize,
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

    /// Sends a complete request (see [`super::RequestBytes`]) and reads the whole answer, within the
    /// endpoint's read timeout.
    pub async fn exchange(
        &self,
        peer: &BackendPeer,
        ep: &Endpoint,
        request: &[u8],
        now: Instant,
    ) -> Result<Exchange, TransportError> {
        let round_trip = self.round_trip(peer, ep, request, now);
        match tokio::time::timeout(ep.read_timeout, round_trip).await {
            Ok(Ok(x)) => Ok(x),
            Ok(Err(f)) => Err(f.into_transport(ep, self.max_answer_bytes)),
            Err(_) => Err(TransportError::timeout(
                TransportKind::Timeout,
                ep.read_timeout,
            )),
        }
    }

    /// An attempt on a pooled connection if there is one, else on a new one; retried once on a new
    /// one only when the request could not be fully written to a pooled one.
    async fn round_trip(
        &self,
        peer: &BackendPeer,
        ep: &Endpoint,
        request: &[u8],
        now: Instant,
    ) -> Result<Exchange, Failure> {
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
    }

    /// A new connection (TCP, and TLS when the endpoint is https), within the connect timeout.
    /// Boxed: connecting (with a TLS handshake) is a large future and, with the pool, a rare one;
    /// inline it would make every request's future larger.
    async fn connect(&self, peer: &BackendPeer) -> Result<Stream, Failure> {
        Box::pin(self.connector.new_stream(&peer.peer))
            .await
            .map_err(Failure::Connect)
    }

    /// Writes the request, reads the answer, and pools the connection when it can carry another.
    async fn attempt(
        &self,
        mut stream: Stream,
        peer: &BackendPeer,
        ep: &Endpoint,
        request: &[u8],
    ) -> Result<Exchange, Failure> {
        stream.write_all(request).await.map_err(Failure::Sending)?;
        stream.flush().await.map_err(Failure::Sending)?;
        let (exchange, reusable) = read_answer(&mut stream, self.max_answer_bytes).await?;
        if reusable {
            (self.idle).put(peer.key, stream, ep.pool_idle_timeout, exchange.answered_at);
        }
        Ok(exchange)
    }
}
