//! Talking to backends: HTTP/1.1 over pingora's transport (plain TCP or rustls TLS), with a pool of
//! idle keep-alive connections of its own.
//!
//! One concern per file:
//! - `request`: the request, written in one write from bytes built directly ([`RequestBytes`]);
//! - `head` and `answer`: the answer, parsed strictly with `httparse` (at most 3 interim 1xx answers
//!   skipped, a head of at most 64 KiB read, no transfer coding but `chunked`, a malformed chunk
//!   refused at its first wrong byte), the body framed by `Content-Length`, chunked encoding or the
//!   end of the connection, within a size limit;
//! - `pool`: idle keep-alive connections, checked when taken out, expired and swept by idle time;
//! - `exchange`: one request and its answer ([`Upstream::exchange`]) within the backend's read
//!   timeout, delivered at most once; [`nothing_sent`] tells a pool when a failed request may move
//!   to another endpoint;
//! - `endpoint`: where a service is: its URL parsed and its host resolved at load ([`Endpoint`]);
//! - `error`: how an exchange fails ([`TransportError`], by [`TransportKind`]).
//!
//! A connection goes back to the pool only when the answer was complete, exactly framed (no byte
//! after it, and no body declared on a 204 or 304) and keep-alive. No HTTP status is chosen here: the request path picks one from the
//! [`TransportKind`] (`crate::error`).

mod answer;
pub mod endpoint;
mod error;
mod exchange;
mod head;
mod pool;
mod request;

use std::time::Instant;

use bytes::Bytes;
use pingora::upstreams::peer::{HttpPeer, Peer};

pub use endpoint::{Endpoint, EndpointUrl};

pub use error::{TransportError, TransportKind};
pub use exchange::{nothing_sent, Upstream};
pub use request::RequestBytes;

/// A backend's answer: status, whole body, and when it was all read.
#[derive(Debug)]
pub struct Exchange {
    pub status: u16,
    pub body: Bytes,
    /// The clock once the whole answer was read: the end of the backend's time, read once.
    pub answered_at: Instant,
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

/// For the fuzz targets (`fuzz/`) only, not an API: the answer-head parser on a byte slice, as
/// `(head length, status)`; `Ok(None)` while incomplete, `Err` with the refusal.
#[doc(hidden)]
pub fn fuzz_parse_head(buf: &[u8]) -> Result<Option<(usize, u16)>, &'static str> {
    match head::parse_head(buf) {
        Ok(h) => Ok(h.map(|h| (h.len, h.status))),
        Err(f) => Err(fuzz_failure(f)),
    }
}

/// For the fuzz targets only: reads a whole answer (head and body, of at most `max` bytes) off
/// `stream`, and whether the connection could be reused.
#[doc(hidden)]
pub async fn fuzz_read_answer(
    stream: &mut pingora::protocols::Stream,
    max: usize,
) -> Result<(Exchange, bool), &'static str> {
    answer::read_answer(stream, max).await.map_err(fuzz_failure)
}

fn fuzz_failure(f: error::Failure) -> &'static str {
    match f {
        error::Failure::BadAnswer(why) => why,
        error::Failure::TooLarge => "too large",
        _ => "no answer",
    }
}
