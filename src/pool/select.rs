//! Choosing an endpoint: once a pool has more than one address or active checks,
//! pingora-load-balancing's `LoadBalancer` holds its membership and active health, and selects with
//! `Consistent` for `sticky` (Ketama, keyed by the user id: only the users of an endpoint that goes
//! down move, to the next endpoint on the ring); a pool of one address without checks has none. `round_robin`
//! and `least_requests` (fewest in flight) are the project's own, over the same membership and
//! health: pingora's `RoundRobin` selection, with its health lookup (a hash of the backend and a map
//! lookup per candidate), cost 2.1k instructions per request under callgrind even for a pool of one,
//! where a counter over the members and a health flag each member keeps cost a few dozen.
//!
//! Every selection skips endpoints that fail their active checks, are ejected, or were already tried
//! by this request.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_load_balancing::discovery::ServiceDiscovery;
use pingora_load_balancing::selection::{Consistent, RoundRobin};
use pingora_load_balancing::{Backend as LbBackend, Backends, HealthRegistry, LoadBalancer};

use super::member::Member;
use crate::config::pool::Balance;

/// Ring points per endpoint in pingora's Ketama continuum (it places 160 per unit of weight): the
/// bound on the steps needed to find every distinct endpoint on the ring.
const KETAMA_POINTS: usize = 160;

/// A pool's membership, health and selection.
///
/// The balancer is made only once a pool needs one: more than one endpoint, or active checks. Most
/// backends are one address without `[backends.health]`, and pingora's `LoadBalancer` (its
/// `Backends` set, the discovery's copy of it, a health registry and the selection's tables) held
/// about 5 KB for each of them (massif, 2,000 routes each with its own backend).
pub struct Selector {
    balance: Balance,
    /// The active health (shared across reloads), with `[backends.health]`.
    registry: Option<Arc<HealthRegistry>>,
    /// Boxed: about 190 bytes that a pool without a balancer would hold empty.
    balancer: OnceLock<Box<Balancer>>,
    /// The endpoints, for `least_requests`, reports and a pool without a balancer (the same
    /// `Member`s the balancer holds).
    members: ArcSwap<Vec<Arc<Member>>>,
    /// Where `least_requests` starts looking, so ties are spread.
    next: AtomicUsize,
}

/// pingora-load-balancing's selection over the members.
struct Balancer {
    kind: Kind,
    /// What the balancer's discovery returns on its next update.
    discovered: Arc<ArcSwap<BTreeSet<LbBackend>>>,
}

enum Kind {
    RoundRobin(LoadBalancer<RoundRobin>),
    Sticky(LoadBalancer<Consistent>),
    LeastRequests(LoadBalancer<RoundRobin>),
}

/// The membership as the balancer's discovery sees it: what [`Selector::set_members`] stored.
struct Discovered(Arc<ArcSwap<BTreeSet<LbBackend>>>);

#[async_trait]
impl ServiceDiscovery for Discovered {
    async fn discover(
        &self,
    ) -> pingora::Result<(BTreeSet<LbBackend>, std::collections::HashMap<u64, bool>)> {
        Ok((BTreeSet::clone(&self.0.load()), Default::default()))
    }
}

impl Balancer {
    fn new(balance: Balance, registry: Option<&Arc<HealthRegistry>>) -> Self {
        let discovered = Arc::new(ArcSwap::from_pointee(BTreeSet::new()));
        let view = || {
            let d = Box::new(Discovered(discovered.clone()));
            match registry {
                Some(r) => Backends::new_with_health_registry(d, r.clone()),
                None => Backends::new(d),
            }
        };
        let kind = match balance {
            Balance::RoundRobin => Kind::RoundRobin(LoadBalancer::from_backends(view())),
            Balance::Sticky => Kind::Sticky(LoadBalancer::from_backends(view())),
            Balance::LeastRequests => Kind::LeastRequests(LoadBalancer::from_backends(view())),
        };
        Balancer { kind, discovered }
    }

    /// Gives the balancer `members` (its selection is rebuilt at once).
    fn update(&self, members: &[Arc<Member>]) {
        let set: BTreeSet<LbBackend> = (members.iter())
            .map(|m| {
                let mut b = m.lb();
                b.ext.insert(m.clone());
                b
            })
            .collect();
        self.discovered.store(Arc::new(set));
        let update = match &self.kind {
            Kind::RoundRobin(lb) | Kind::LeastRequests(lb) => now(lb.update()),
            Kind::Sticky(lb) => now(lb.update()),
        };
        // The discovery above neither waits nor fails.
        debug_assert!(matches!(update, Some(Ok(()))));
    }

    /// Sets each member's health flag from the registry.
    fn read_health(&self, members: &[Arc<Member>]) {
        for m in members {
            m.healthy
                .store(self.backends().ready(&m.lb()), Ordering::Relaxed);
        }
    }

    fn backends(&self) -> &Backends {
        match &self.kind {
            Kind::RoundRobin(lb) | Kind::LeastRequests(lb) => lb.backends(),
            Kind::Sticky(lb) => lb.backends(),
        }
    }
}

impl Selector {
    /// An empty selector; `registry` holds the active health (shared across reloads), if any.
    pub fn new(balance: Balance, registry: Option<Arc<HealthRegistry>>) -> Self {
        Selector {
            balance,
            registry,
            balancer: OnceLock::new(),
            members: ArcSwap::from_pointee(Vec::new()),
            next: AtomicUsize::new(0),
        }
    }

    /// Replaces the membership (selection is rebuilt at once). The balancer is made the first time
    /// the pool has more than one endpoint or has active checks, and kept from then on; it is given
    /// its members before it is published, so no selection ever finds it empty.
    pub fn set_members(&self, members: Vec<Arc<Member>>) {
        let needs = members.len() > 1 || self.registry.is_some();
        let mut made = false;
        let balancer = match self.balancer.get() {
            Some(b) => Some(b),
            None if needs => Some(self.balancer.get_or_init(|| {
                made = true;
                let b = Balancer::new(self.balance, self.registry.as_ref());
                b.update(&members);
                Box::new(b)
            })),
            None => None,
        };
        if let Some(b) = balancer {
            if !made {
                b.update(&members);
            }
            b.read_health(&members);
        }
        self.members.store(Arc::new(members));
    }

    /// The current endpoints.
    pub fn members(&self) -> Arc<Vec<Arc<Member>>> {
        self.members.load_full()
    }

    /// Whether the endpoint passed its active checks when they last ran (always, without them).
    pub fn healthy(&self, m: &Member) -> bool {
        m.healthy.load(Ordering::Relaxed)
    }

    /// Reads each member's health from the balancer's registry (after a pass of the active checks,
    /// and on every tick of the keeper: the registry outlives reloads). `round_robin` and
    /// `least_requests` see an endpoint's new health when the pass that found it ends (within the
    /// checks' timeout); `sticky` reads the registry itself.
    pub fn refresh_health(&self) {
        if let Some(b) = self.balancer.get() {
            b.read_health(&self.members.load());
        }
    }

    /// An endpoint for a request with this key (the user id, for `sticky`) that `usable` accepts.
    pub fn select(&self, key: &[u8], usable: impl Fn(&Member) -> bool) -> Option<Arc<Member>> {
        let n = self.members.load().len();
        let accept = |b: &LbBackend, healthy: bool| healthy && member(b).is_some_and(|m| usable(m));
        let Some(balancer) = self.balancer.get() else {
            // One endpoint, no active checks (or a second one arriving just now).
            return self.members.load().iter().find(|m| usable(m)).cloned();
        };
        let chosen = match &balancer.kind {
            Kind::RoundRobin(_) => return self.round_robin(usable),
            Kind::Sticky(lb) => lb.select_with(key, KETAMA_POINTS * n + 1, accept),
            Kind::LeastRequests(_) => return self.least_requests(usable),
        };
        chosen.as_ref().and_then(member).cloned()
    }

    /// The next healthy, usable endpoint in turn.
    fn round_robin(&self, usable: impl Fn(&Member) -> bool) -> Option<Arc<Member>> {
        let members = self.members.load();
        let chosen = self.in_turn(&members).find(|m| usable(m)).cloned();
        chosen
    }

    /// The usable endpoint with the fewest requests in flight, the first found from a rotating start
    /// among equals.
    fn least_requests(&self, usable: impl Fn(&Member) -> bool) -> Option<Arc<Member>> {
        let members = self.members.load();
        (self.in_turn(&members))
            .filter(|m| usable(m))
            .min_by_key(|m| m.state.in_flight())
            .cloned()
    }

    /// The healthy members, from a start that moves on at every call.
    fn in_turn<'m>(&self, members: &'m [Arc<Member>]) -> impl Iterator<Item = &'m Arc<Member>> {
        let n = members.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(move |i| &members[(start + i) % n])
            .filter(|m| m.healthy.load(Ordering::Relaxed))
    }
}

/// The pool's member behind a balancer's backend.
fn member(b: &LbBackend) -> Option<&Arc<Member>> {
    b.ext.get::<Arc<Member>>()
}

/// Polls a future that is known not to wait (the balancer's update over [`Discovered`]).
fn now<F: Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}
