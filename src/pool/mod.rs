//! Backends as pools of endpoints: every address each of a backend's URLs resolves to is an
//! endpoint; a request goes to one chosen by the backend's `balance`, moves to another only when
//! nothing of it was sent, and fails fast while the backend's circuit is open.
//!
//! One concern per file:
//! - `member`: one endpoint (address, peer, state that outlives reloads);
//! - `select`: membership, active health and selection (pingora-load-balancing's health registry
//!   and Ketama ring for `sticky`; `round_robin` and `least_requests` of the project's own);
//! - `health`: the active checks per URL and passive ejection;
//! - `breaker`: the circuit breaker;
//! - `dns`: resolving host names (hickory-resolver);
//! - `keeper`: the background work (health passes, DNS refreshes, series of endpoints);
//! - `report`: `GET /backends`.
//!
//! **The failover rule** ([`Pool::forward`]): a request is sent to at most `tries` endpoints, and
//! moves to the next only when the exchange failed before anything of it was written
//! (`upstream::nothing_sent`: the connection could not be made). Once written, a failure is the
//! caller's answer (502/504): chat messages are not idempotent, so a message is never delivered
//! twice.

pub mod breaker;
pub mod dns;
pub mod health;
pub mod keeper;
pub mod member;
pub mod report;
pub mod select;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;
use pingora_load_balancing::HealthRegistry;

use crate::config::backends::Backend;
use crate::config::dns::DnsSettings;
use crate::config::pool::PoolSettings;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::otel::Trace;
use crate::upstream::{nothing_sent, Endpoint, Exchange, TransportError, Upstream};
use breaker::Breaker;
use health::{ActiveCheck, Thresholds, UrlCheck};
use member::{Member, States};
use select::Selector;

/// Milliseconds on the pools' monotonic clock.
pub fn now_ms() -> u64 {
    ms_at(Instant::now())
}

/// The pools' clock at `t`, for a caller that has already read the clock (a request reads it a few
/// times, not once per use).
pub fn ms_at(t: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    // Starts at 1 s so that 0 can mean "never" in stored times.
    t.saturating_duration_since(epoch).as_millis() as u64 + 1_000
}

/// Why a pool did not deliver a request.
#[derive(Debug)]
pub enum PoolError {
    /// The backend's circuit is open: retry after this long.
    Open { retry_after: Duration },
    /// The exchange failed (on the last endpoint tried).
    Transport(TransportError),
}

/// The pools of one configuration, by backend index.
pub struct Pools {
    pools: Vec<Arc<Pool>>,
    /// The resolver for host names, when a URL has one (made again by the keeper while it cannot
    /// be made: a missing resolver configuration must not stop names from ever resolving).
    resolver: ArcSwapOption<dns::Resolver>,
    /// Whether any URL has a host name, and how to resolve them.
    names: bool,
    dns: DnsSettings,
}

impl Pools {
    /// The pools of `config`; `previous` (the pools being replaced by a reload) hands over the state
    /// of the backends and endpoints that stay.
    pub fn new(config: &Config, previous: Option<&Pools>) -> Self {
        let before_of = by_name(previous);
        let mut resolved = resolve_names(config, &before_of).into_iter();
        let pools = (config.backends.iter())
            .map(|b| {
                let before = before_of.get(b.name.as_str()).copied();
                let addrs = resolved.next().expect("one list per backend");
                Arc::new(Pool::new(b, addrs, before))
            })
            .collect::<Vec<_>>();
        let names = pools.iter().any(|p| p.urls.iter().any(Endpoint::has_name));
        let pools = Pools {
            pools,
            resolver: ArcSwapOption::empty(),
            names,
            dns: config.dns.clone(),
        };
        if names {
            if let Err(e) = pools.make_resolver() {
                tracing::error!(error = %e, "backend names cannot be resolved; trying again every second");
            }
        }
        pools
    }

    /// The resolver, made now if it could not be made before; `None` without names to resolve or
    /// while it still cannot be made.
    fn resolver(&self) -> Option<Arc<dns::Resolver>> {
        match self.resolver.load_full() {
            Some(r) => Some(r),
            None if self.names => self.make_resolver().ok(),
            None => None,
        }
    }

    fn make_resolver(&self) -> Result<Arc<dns::Resolver>, String> {
        let r = Arc::new(dns::Resolver::new(&self.dns)?);
        self.resolver.store(Some(r.clone()));
        Ok(r)
    }

    /// The pool of the backend at this index.
    pub fn get(&self, backend: usize) -> &Pool {
        &self.pools[backend]
    }

    /// Every pool, in configuration order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.pools.iter()
    }
}

/// The pools being replaced, by backend name (a reload of 10,000 backends looks each up once).
fn by_name(previous: Option<&Pools>) -> HashMap<&str, &Pool> {
    (previous.iter())
        .flat_map(|p| p.pools.iter())
        .map(|p| (p.name.as_str(), &**p))
        .collect()
}

/// The addresses of every backend's URLs as its pool starts: an IP address is its own; the names
/// of all backends are resolved together (with `[dns]`). A name that does not resolve keeps the
/// addresses the pool being replaced had for it (on a reload), else has none until a refresh
/// finds some (the pool answers 503 meanwhile); counted and logged either way.
fn resolve_names(config: &Config, before_of: &HashMap<&str, &Pool>) -> Vec<Vec<Vec<SocketAddr>>> {
    let names: Vec<(String, u16)> = (config.backends.iter())
        .flat_map(|b| b.urls.iter().map(|u| &u.endpoint))
        .filter(|ep| ep.has_name())
        .map(|ep| (ep.host.clone(), ep.addr.port()))
        .collect();
    let mut found = dns::resolve_all(&config.dns, &names).into_iter();
    let m = &Metrics::global().pool;
    (config.backends.iter())
        .map(|b| {
            let before = before_of.get(b.name.as_str()).copied();
            (b.urls.iter().enumerate())
                .map(|(i, u)| {
                    if !u.endpoint.has_name() {
                        return u.addrs.clone();
                    }
                    let result = found.next().expect("one result per name");
                    let label = if result.is_ok() { "ok" } else { "error" };
                    (m.dns_resolutions.with_label_values(&[&b.name, label])).inc();
                    result.unwrap_or_else(|e| {
                        let kept = before.and_then(|p| p.addrs_of(&u.endpoint, i));
                        tracing::warn!(backend = %b.name, host = %u.endpoint.host, error = %e, kept = ?kept, "backend name did not resolve as its pool starts; it is tried again every second until it does");
                        kept.unwrap_or_default()
                    })
                })
                .collect()
        })
        .collect()
}

/// The active health of a pool: its registry (shared across reloads) and the thresholds in force.
struct Active {
    registry: Arc<HealthRegistry>,
    thresholds: Arc<Thresholds>,
    interval: Duration,
}

impl Active {
    /// A new registry whose check is each endpoint's URL's own.
    fn new(backend: &str, thresholds: (usize, usize), interval: Duration) -> Self {
        let thresholds = Arc::new(ArcSwap::from_pointee(thresholds));
        let registry = Arc::new(HealthRegistry::new());
        registry.set_health_check(Box::new(ActiveCheck {
            backend: backend.to_string(),
            thresholds: thresholds.clone(),
        }));
        Active {
            registry,
            thresholds,
            interval,
        }
    }

    /// The same registry (endpoints keep their health) under a reloaded configuration's settings.
    fn carried_over(&self, thresholds: (usize, usize), interval: Duration) -> Self {
        self.thresholds.store(Arc::new(thresholds));
        Active {
            registry: self.registry.clone(),
            thresholds: self.thresholds.clone(),
            interval,
        }
    }
}

/// One backend's endpoints.
pub struct Pool {
    pub name: String,
    settings: Arc<PoolSettings>,
    /// One per URL, at its first address.
    urls: Vec<Endpoint>,
    /// The active check of each URL, with `[backends.health]`.
    checks: Vec<Option<Arc<UrlCheck>>>,
    /// The addresses each URL has now.
    addrs: Mutex<Vec<Vec<SocketAddr>>>,
    selector: Selector,
    active: Option<Active>,
    breaker: Arc<Breaker>,
    states: Arc<States>,
    /// When the next health pass and DNS refresh are due, and whether one is running.
    next_check_ms: AtomicU64,
    checking: AtomicBool,
    next_dns_ms: AtomicU64,
    resolving: AtomicBool,
}

impl Pool {
    fn new(b: &Backend, addrs: Vec<Vec<SocketAddr>>, before: Option<&Pool>) -> Self {
        let active = b.pool.health.as_ref().map(|h| {
            let thresholds = (h.healthy_after, h.unhealthy_after);
            match before.and_then(|p| p.active.as_ref()) {
                Some(a) => a.carried_over(thresholds, h.interval),
                None => Active::new(&b.name, thresholds, h.interval),
            }
        });
        let urls: Vec<Endpoint> = b.urls.iter().map(|u| u.endpoint.clone()).collect();
        let checks = (urls.iter())
            .map(|ep| {
                b.pool
                    .health
                    .as_ref()
                    .map(|h| Arc::new(UrlCheck::new(ep, h)))
            })
            .collect();
        let pool = Pool {
            name: b.name.clone(),
            selector: Selector::new(b.pool.balance, active.as_ref().map(|a| a.registry.clone())),
            settings: b.pool.clone(),
            urls,
            checks,
            addrs: Mutex::new(addrs),
            active,
            breaker: before.map_or_else(|| Arc::new(Breaker::new(&b.name)), |p| p.breaker.clone()),
            states: before.map_or_else(|| Arc::new(States::new(&b.name)), |p| p.states.clone()),
            next_check_ms: AtomicU64::new(0),
            checking: AtomicBool::new(false),
            next_dns_ms: AtomicU64::new(0),
            resolving: AtomicBool::new(false),
        };
        let addrs = pool.lock_addrs().clone();
        pool.rebuild(&addrs, &[]);
        pool.next_dns_ms
            .store(pool.next_refresh(&addrs), Ordering::Relaxed);
        pool
    }

    /// When names are resolved next: in a second while a name has no address, else after
    /// `dns_refresh_s`.
    fn next_refresh(&self, addrs: &[Vec<SocketAddr>]) -> u64 {
        let missing = (self.urls.iter().zip(addrs)).any(|(u, a)| u.has_name() && a.is_empty());
        let wait = match missing {
            true => Duration::from_secs(1),
            false => self.settings.dns_refresh,
        };
        now_ms() + wait.as_millis() as u64
    }

    /// The addresses this pool has for the URL at `index`, if it is the same URL (host and port).
    fn addrs_of(&self, url: &Endpoint, index: usize) -> Option<Vec<SocketAddr>> {
        let same = self.urls.get(index)?;
        let same = same.host == url.host && same.addr.port() == url.addr.port();
        same.then(|| self.lock_addrs()[index].clone())
            .filter(|a| !a.is_empty())
    }

    /// The endpoint of the first member now (for shadow copies, which take no part in balancing);
    /// `None` while the pool has none.
    pub fn first_endpoint(&self) -> Option<Endpoint> {
        let members = self.selector.members();
        Some(members.first()?.endpoint.clone())
    }

    fn lock_addrs(&self) -> std::sync::MutexGuard<'_, Vec<Vec<SocketAddr>>> {
        self.addrs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the members for these addresses (per URL; an address already seen under an earlier URL
    /// is not repeated), keeping the `Member`s in `keep` whose address stays.
    fn rebuild(&self, addrs: &[Vec<SocketAddr>], keep: &[Arc<Member>]) {
        let mut members: Vec<Arc<Member>> = Vec::new();
        for (url, list) in addrs.iter().enumerate() {
            for &addr in list {
                if members.iter().any(|m| m.addr() == addr) {
                    continue;
                }
                let member = match keep.iter().find(|m| m.addr() == addr) {
                    Some(m) => m.clone(),
                    None => Arc::new(Member::new(
                        url,
                        &self.urls[url],
                        addr,
                        self.checks[url].clone(),
                        self.states.get(addr),
                    )),
                };
                members.push(member);
            }
        }
        self.selector.set_members(members);
    }

    /// Sends one request (built for each endpoint tried by `request`) and reads its answer,
    /// following the failover rule (see the module's documentation). `key` is the user id, which
    /// `sticky` hashes; `started` is the clock read by the caller as it set off.
    pub async fn forward(
        &self,
        upstream: &Upstream,
        key: &[u8],
        request: impl Fn(&Endpoint) -> Vec<u8>,
        started: Instant,
    ) -> Result<Exchange, PoolError> {
        let s = &self.settings;
        let permit = (self.breaker.admit(ms_at(started)))
            .map_err(|retry_after| PoolError::Open { retry_after })?;
        let mut tried: Vec<Arc<Member>> = Vec::new();
        let mut last: Option<TransportError> = None;
        let mut now = started;
        loop {
            let now_ms = ms_at(now);
            let usable = |m: &Member| {
                !m.state.outlier.ejected(now_ms) && !tried.iter().any(|t| t.addr() == m.addr())
            };
            let Some(m) = self.selector.select(key, usable) else {
                return Err(match last {
                    None => PoolError::Open {
                        retry_after: permit.no_endpoint(now_ms, &s.breaker),
                    },
                    Some(e) => {
                        permit.finish(true, now_ms, &s.breaker);
                        PoolError::Transport(e)
                    }
                });
            };
            let result = self.attempt(upstream, &m, &request, now).await;
            // The answer's arrival is the clock after a success; a failure reads it again.
            now = result
                .as_ref()
                .map_or_else(|_| Instant::now(), |x| x.answered_at);
            self.observe(&m, failed(&result), ms_at(now));
            match result {
                Err(e) if nothing_sent(&e) && tried.len() + 1 < s.tries as usize => {
                    tracing::debug!(backend = %self.name, endpoint = %m.addr(), "nothing was sent; trying another endpoint");
                    // Found now, not held: failovers are rare, backends many.
                    (Metrics::global().pool.failovers)
                        .with_label_values(&[&self.name])
                        .inc();
                    tried.push(m);
                    last = Some(e);
                }
                r => {
                    permit.finish(failed(&r), ms_at(now), &s.breaker);
                    return r.map_err(PoolError::Transport);
                }
            }
        }
    }

    /// One exchange with one endpoint, counted in flight.
    async fn attempt(
        &self,
        upstream: &Upstream,
        m: &Member,
        request: &impl Fn(&Endpoint) -> Vec<u8>,
        now: Instant,
    ) -> Result<Exchange, TransportError> {
        m.state.series().selections.inc();
        let span = Trace::current().child("bot exchange", SpanKind::Client);
        if span.is_sampled() {
            // Boxed: inline, the traced exchange would grow every request's future.
            return Box::pin(self.traced_attempt(upstream, m, request, now, span)).await;
        }
        let bytes = request(&m.endpoint);
        let _in_flight = m.enter();
        upstream.exchange(&m.peer, &m.endpoint, &bytes, now).await
    }

    /// [`Pool::attempt`] in a span of its own, the request built inside it (so its `traceparent`
    /// names this try).
    async fn traced_attempt(
        &self,
        upstream: &Upstream,
        m: &Member,
        request: &impl Fn(&Endpoint) -> Vec<u8>,
        now: Instant,
        span: Trace,
    ) -> Result<Exchange, TransportError> {
        span.set(|| {
            vec![
                KeyValue::new("botbridge.backend", self.name.to_string()),
                KeyValue::new("server.address", m.endpoint.authority.clone()),
                KeyValue::new("network.peer.address", m.addr().to_string()),
            ]
        });
        let result = span
            .scope(async {
                let bytes = request(&m.endpoint);
                let _in_flight = m.enter();
                upstream.exchange(&m.peer, &m.endpoint, &bytes, now).await
            })
            .await;
        match &result {
            Ok(x) => span.set(|| {
                vec![KeyValue::new(
                    "http.response.status_code",
                    i64::from(x.status),
                )]
            }),
            Err(e) => span.fail(&e.to_string()),
        }
        span.end();
        result
    }

    /// Passive ejection: an endpoint that keeps failing is left out for a while, unless it is the
    /// last one up.
    fn observe(&self, m: &Member, failed: bool, now: u64) {
        let others_up = || {
            self.selector
                .members()
                .iter()
                .any(|o| o.addr() != m.addr() && self.up(o, now))
        };
        if let Some(length) = m
            .state
            .outlier
            .record(failed, &self.settings.outlier, now, others_up)
        {
            let series = m.state.series();
            series.ejections.inc();
            series.up.set(0);
            tracing::warn!(backend = %self.name, endpoint = %m.addr(), seconds = length.as_secs(), "endpoint ejected after consecutive failures");
        }
    }

    /// Whether an endpoint may be chosen now.
    fn up(&self, m: &Member, now: u64) -> bool {
        self.selector.healthy(m) && !m.state.outlier.ejected(now)
    }
}

/// A failed exchange, for ejection and the breaker: no answer, or a 5xx.
fn failed(r: &Result<Exchange, TransportError>) -> bool {
    r.as_ref().map_or(true, |x| x.status >= 500)
}
