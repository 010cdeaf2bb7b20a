//! The pools' background work, as one pingora background service: every tick it looks at the pools
//! of the configuration in force and starts what is due, each in its own task so a slow check or
//! resolution never delays another pool's:
//! - an active health pass (`[backends.health] interval_s`);
//! - a DNS refresh of the URLs whose host is a name (`dns_refresh_s`); a name that does not resolve
//!   (error, timeout, no address) keeps its last addresses, and is counted and logged;
//! - the `botbridge_backend_endpoint_up` series, and forgetting endpoints no pool holds any more.
//!
//! Pools replaced by a reload drop out of its view at the next tick.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::{dns::Resolver, now_ms, Pool, Pools};
use crate::metrics::Metrics;

/// How often the keeper looks for due work.
const TICK: Duration = Duration::from_millis(250);

/// The background service; `current` gives the pools in force.
pub struct PoolKeeper<F>(pub F);

#[async_trait]
impl<F> BackgroundService for PoolKeeper<F>
where
    F: Fn() -> Arc<Pools> + Send + Sync + 'static,
{
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => tend(&(self.0)()),
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// One tick over every pool.
fn tend(pools: &Pools) {
    let now = now_ms();
    for pool in pools.iter() {
        pool.show_up(now);
        pool.states.sweep();
        if let Some(active) = &pool.active {
            if due(&pool.next_check_ms, &pool.checking, now, active.interval) {
                let pool = pool.clone();
                tokio::spawn(async move {
                    if let Some(a) = &pool.active {
                        a.registry.run_health_check(true).await;
                    }
                    pool.show_up(now_ms());
                    pool.checking.store(false, Ordering::Release);
                });
            }
        }
        if let Some(resolver) = pools.resolver() {
            let names = pool.urls.iter().any(|u| u.has_name());
            if names
                && due(
                    &pool.next_dns_ms,
                    &pool.resolving,
                    now,
                    pool.settings.dns_refresh,
                )
            {
                let pool = pool.clone();
                tokio::spawn(async move {
                    pool.refresh_dns(&resolver).await;
                    pool.resolving.store(false, Ordering::Release);
                });
            }
        }
    }
}

/// Whether a job is due and not running; if so, marks it running and schedules the next one.
fn due(next_ms: &AtomicU64, running: &AtomicBool, now: u64, every: Duration) -> bool {
    if next_ms.load(Ordering::Relaxed) > now || running.swap(true, Ordering::Acquire) {
        return false;
    }
    next_ms.store(now + every.as_millis() as u64, Ordering::Relaxed);
    true
}

impl Pool {
    /// Reads each endpoint's health after the active checks, and sets its `up` series: made now for a pool with active checks, else only where
    /// the endpoint was chosen before (without checks, only an ejection takes one down).
    fn show_up(&self, now: u64) {
        self.selector.refresh_health();
        for m in self.selector.members().iter() {
            let series = match self.active {
                Some(_) => Some(m.state.series()),
                None => m.state.made_series(),
            };
            if let Some(s) = series {
                s.up.set(i64::from(self.up(m, now)));
            }
        }
    }

    /// Resolves the URLs' names again; a change of addresses rebuilds the membership (endpoints that
    /// stay keep their state), a failure keeps the last addresses.
    async fn refresh_dns(&self, resolver: &Resolver) {
        let m = &Metrics::global().pool;
        let mut addrs = self.lock_addrs().clone();
        let mut changed = false;
        for (i, url) in self.urls.iter().enumerate().filter(|(_, u)| u.has_name()) {
            match resolver.resolve(&url.host, url.addr.port()).await {
                Ok(found) => {
                    m.dns_resolutions
                        .with_label_values(&[&self.name, "ok"])
                        .inc();
                    if found != addrs[i] {
                        tracing::info!(backend = %self.name, host = %url.host, addresses = ?found, "backend name resolves to new addresses");
                        addrs[i] = found;
                        changed = true;
                    }
                }
                Err(e) => {
                    m.dns_resolutions
                        .with_label_values(&[&self.name, "error"])
                        .inc();
                    tracing::warn!(backend = %self.name, host = %url.host, error = %e, "backend name did not resolve; keeping its last addresses");
                }
            }
        }
        if changed {
            *self.lock_addrs() = addrs.clone();
            self.rebuild(&addrs, &self.selector.members());
        }
        (self.next_dns_ms).store(self.next_refresh(&addrs), Ordering::Relaxed);
    }
}
