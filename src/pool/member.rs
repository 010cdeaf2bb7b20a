//! One endpoint of a pool: an address of one of the backend's URLs, what the request path needs to
//! reach it, and its [`EndpointState`] (requests in flight, passive ejection, series), which outlives
//! configuration reloads and DNS changes for as long as the address stays in the pool.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use pingora_load_balancing::Backend as LbBackend;

use super::health::{Outlier, UrlCheck};
use crate::metrics::{EndpointMetrics, Metrics};
use crate::upstream::{peer_for, BackendPeer, Endpoint};

/// One endpoint, as one configuration generation sees it.
pub struct Member {
    /// The URL's endpoint at this address.
    pub endpoint: Endpoint,
    pub peer: BackendPeer,
    /// Which of the backend's URLs this address came from.
    pub url: usize,
    /// The active check of its URL, when the backend has `[backends.health]`.
    pub check: Option<Arc<UrlCheck>>,
    pub state: Arc<EndpointState>,
    /// Whether it passed its active checks when they last ran (always, without them): read by every
    /// selection, written by the pool after each pass (`Selector::refresh_health`).
    pub(super) healthy: AtomicBool,
}

impl Member {
    /// The member for `addr` of the URL `template` (index `url`).
    pub fn new(
        url: usize,
        template: &Endpoint,
        addr: SocketAddr,
        check: Option<Arc<UrlCheck>>,
        state: Arc<EndpointState>,
    ) -> Self {
        let endpoint = template.at(addr);
        Member {
            peer: peer_for(&endpoint),
            endpoint,
            url,
            check,
            state,
            healthy: AtomicBool::new(true),
        }
    }

    /// The address.
    pub fn addr(&self) -> SocketAddr {
        self.endpoint.addr
    }

    /// pingora-load-balancing's identity of the address (for its health and selection), made when
    /// asked: only a pool with a balancer asks, and keeping one in every member cost 136 bytes.
    pub fn lb(&self) -> LbBackend {
        LbBackend {
            addr: pingora::protocols::l4::socket::SocketAddr::Inet(self.addr()),
            weight: 1,
            ext: Default::default(),
        }
    }

    /// Counts a request in flight on this endpoint until the guard is dropped.
    pub fn enter(&self) -> InFlight<'_> {
        self.state.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(&self.state)
    }
}

/// What an endpoint keeps across reloads and DNS changes.
pub struct EndpointState {
    pub addr: SocketAddr,
    in_flight: AtomicUsize,
    pub outlier: Outlier,
    backend: Arc<str>,
    /// Its series, made when it is first chosen (or checked): a backend nobody calls holds none.
    metrics: OnceLock<EndpointMetrics>,
}

impl EndpointState {
    /// Its series, made now (`up` at 1) if they were not.
    pub fn series(&self) -> &EndpointMetrics {
        self.metrics.get_or_init(|| {
            let m = (Metrics::global().pool).endpoint(&self.backend, &self.addr.to_string());
            m.up.set(1);
            m
        })
    }

    /// Its series if they were made.
    pub fn made_series(&self) -> Option<&EndpointMetrics> {
        self.metrics.get()
    }

    /// Requests being sent to or answered by this endpoint now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// A request in flight on an endpoint.
pub struct InFlight<'a>(&'a EndpointState);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A backend's endpoint states by address, shared by the pools of successive configurations, so an
/// address that stays keeps its state and there is never more than one state (and one set of
/// series) per address. The series of an address no pool holds any more are removed here, under
/// the lock that creates a new state: a state's series are made only while it is held, and a new
/// state for the address is made only after the old one's series are gone, so a removal never
/// races a re-creation.
pub struct States {
    backend: Arc<str>,
    map: Mutex<HashMap<SocketAddr, Weak<EndpointState>>>,
}

impl States {
    /// The states of the backend named `backend`.
    pub fn new(backend: &str) -> Self {
        States {
            backend: backend.into(),
            map: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Weak<EndpointState>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state of `addr`, the existing one if any pool still holds it.
    pub fn get(&self, addr: SocketAddr) -> Arc<EndpointState> {
        let mut map = self.lock();
        if let Some(s) = map.get(&addr).and_then(Weak::upgrade) {
            return s;
        }
        self.sweep_locked(&mut map);
        let state = Arc::new(EndpointState {
            addr,
            in_flight: AtomicUsize::new(0),
            outlier: Outlier::default(),
            backend: self.backend.clone(),
            metrics: OnceLock::new(),
        });
        map.insert(addr, Arc::downgrade(&state));
        state
    }

    /// Forgets the addresses no pool holds any more, and removes their series.
    pub fn sweep(&self) {
        self.sweep_locked(&mut self.lock());
    }

    fn sweep_locked(&self, map: &mut HashMap<SocketAddr, Weak<EndpointState>>) {
        map.retain(|addr, w| {
            let alive = w.strong_count() > 0;
            if !alive {
                (Metrics::global().pool).remove_endpoint(&self.backend, &addr.to_string());
            }
            alive
        });
    }
}
