//! Idle keep-alive connections to callback receivers, reused by later deliveries to the same
//! checked address.
//!
//! A connection is filed under the exact `SocketAddr` it was opened to after that address passed
//! the credential's checks, with the TLS server name it was verified for. Every attempt still checks
//! the URL, resolves its name and checks every address first ([`super::send::attempt`]); only then
//! is a connection to that same address and server name taken from here. So a name whose DNS
//! changed gets a new connection to its new, checked address, and nothing reaches an address that
//! was not checked for this attempt.
//!
//! Written here rather than taken from hyper-util's pooled client, which files connections by URL
//! authority and resolves names itself: both would skip the per-attempt address check. Bounded:
//! at most [`PER_ADDRESS`] idle connections per key and [`TOTAL`] in all; one idle for longer
//! than [`IDLE_FOR`] is closed rather than reused (receivers commonly close idle connections after
//! 5 s or more).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;

/// Idle connections kept per (address, TLS server name).
pub const PER_ADDRESS: usize = 32;
/// Idle connections kept in all.
pub const TOTAL: usize = 512;
/// How long a connection may sit idle and still be reused.
pub const IDLE_FOR: Duration = Duration::from_secs(4);

/// Where a connection goes: the checked address, and the TLS server name (`None`: plain TCP).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub addr: SocketAddr,
    pub tls_name: Option<String>,
}

/// An HTTP/1.1 connection with nothing in flight.
pub type Sender = SendRequest<Full<Bytes>>;

/// The idle connections, by key.
#[derive(Default)]
pub struct IdlePool {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_key: HashMap<Key, Vec<(Sender, Instant)>>,
    total: usize,
    /// When the connections too old to reuse were last dropped.
    pruned: Option<Instant>,
}

impl IdlePool {
    /// A live idle connection to `key`, the most recently used first; stale ones are dropped.
    pub fn take(&self, key: &Key) -> Option<Sender> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let Inner { by_key, total, .. } = &mut *inner;
        let list = by_key.get_mut(key)?;
        let mut found = None;
        while let Some((sender, since)) = list.pop() {
            *total -= 1;
            if now.duration_since(since) < IDLE_FOR && !sender.is_closed() && sender.is_ready() {
                found = Some(sender);
                break;
            }
        }
        if list.is_empty() {
            by_key.remove(key);
        }
        found
    }

    /// Files a connection whose exchange ended cleanly; refused (closed) when full or closed.
    pub fn put(&self, key: Key, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        // Connections no longer reusable are closed at least every IDLE_FOR while deliveries go
        // on (and at once when the pool is full), not only when their key is asked for again.
        let due = inner
            .pruned
            .is_none_or(|at| now.duration_since(at) >= IDLE_FOR);
        if due || inner.total >= TOTAL {
            inner.prune(now);
            if inner.total >= TOTAL {
                return;
            }
        }
        let list = inner.by_key.entry(key).or_default();
        if list.len() >= PER_ADDRESS {
            return;
        }
        list.push((sender, now));
        inner.total += 1;
    }
}

impl Inner {
    /// Drops the connections that are closed or idle for too long.
    fn prune(&mut self, now: Instant) {
        let mut total = 0;
        self.by_key.retain(|_, list| {
            list.retain(|(s, since)| now.duration_since(*since) < IDLE_FOR && !s.is_closed());
            total += list.len();
            !list.is_empty()
        });
        self.total = total;
        self.pruned = Some(now);
    }
}
