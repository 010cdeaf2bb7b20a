//! Resolving backend host names with hickory-resolver: every IPv4 and IPv6 address a name has, from
//! the name servers `[dns]` lists (else the system's configuration), within `[dns] timeout_ms`.
//!
//! Nothing is cached between resolutions: a name is asked again every `dns_refresh_s`, so a change
//! is followed within that time whatever TTL the answer carried. What to do when a name stops
//! resolving (keep its last addresses) is the pool's decision, not this file's.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;

use crate::config::dns::DnsSettings;

/// A resolver for backend names.
pub struct Resolver {
    inner: TokioResolver,
    timeout: Duration,
}

impl Resolver {
    /// A resolver asking `settings.servers` (UDP, then TCP for truncated answers), or the system's
    /// name servers when there are none.
    pub fn new(settings: &DnsSettings) -> Result<Self, String> {
        let mut builder = if settings.servers.is_empty() {
            TokioResolver::builder_tokio()
                .map_err(|e| format!("cannot read the system's resolver configuration: {e}"))?
        } else {
            let mut config = ResolverConfig::new();
            for &addr in &settings.servers {
                config.add_name_server(NameServerConfig::new(addr, Protocol::Udp));
                config.add_name_server(NameServerConfig::new(addr, Protocol::Tcp));
            }
            let mut b =
                TokioResolver::builder_with_config(config, TokioConnectionProvider::default());
            // The servers named are the whole truth: no hosts file beside them.
            b.options_mut().use_hosts_file = ResolveHosts::Never;
            b
        };
        tune(builder.options_mut(), settings.timeout);
        Ok(Resolver {
            inner: builder.build(),
            timeout: settings.timeout,
        })
    }

    /// Every address `host` has now, with `port`, sorted; an error if there is none.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        // Each resolution asks the servers afresh (see the module's comment).
        self.inner.clear_cache();
        let lookup = tokio::time::timeout(self.timeout, self.inner.lookup_ip(host))
            .await
            .map_err(|_| format!("no answer within {} ms", self.timeout.as_millis()))?
            .map_err(|e| match e.is_no_records_found() {
                true => "no such name, or no address for it".to_string(),
                false => e.to_string(),
            })?;
        let mut addrs: Vec<SocketAddr> =
            lookup.iter().map(|ip| SocketAddr::new(ip, port)).collect();
        addrs.sort_unstable();
        addrs.dedup();
        if addrs.is_empty() {
            return Err("no address".into());
        }
        Ok(addrs)
    }
}

/// Both address families, a bounded time per query, and a cache that never outlives a refresh.
fn tune(opts: &mut ResolverOpts, timeout: Duration) {
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    opts.attempts = 2;
    opts.timeout = (timeout / 2).max(Duration::from_millis(100));
    opts.positive_max_ttl = Some(Duration::from_secs(1));
    opts.negative_max_ttl = Some(Duration::from_secs(1));
}

/// Resolves every `(host, port)` once, all at the same time, blocking the caller (a pool starting,
/// which is not async): on a thread of its own with its own small runtime, so it works inside or
/// outside a tokio runtime. One result per name, in order.
pub fn resolve_all(
    settings: &DnsSettings,
    names: &[(String, u16)],
) -> Vec<Result<Vec<SocketAddr>, String>> {
    if names.is_empty() {
        return Vec::new();
    }
    let failed = |e: String| names.iter().map(|_| Err(e.clone())).collect();
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return failed(format!("cannot start a resolver: {e}")),
            };
            rt.block_on(async {
                let resolver = match Resolver::new(settings) {
                    Ok(r) => r,
                    Err(e) => return failed(e),
                };
                let each = names.iter().map(|(h, p)| resolver.resolve(h, *p));
                futures_util::future::join_all(each).await
            })
        })
        .join()
        .unwrap_or_else(|_| failed("the resolver failed".into()))
    })
}
