//! Access tokens of bots that need one (`dialect::TokenSource`, e.g. OAuth2 tokens), obtained
//! at their token endpoint by this shell, never once per request:
//!
//! - a token is reused until [`EXPIRY_MARGIN`] before it expires;
//! - once less than a quarter of its lifetime is left, one task refreshes it in the background while
//!   requests keep using it;
//! - with no usable token, the first request fetches one and the others wait for that fetch
//!   (single flight);
//! - a token the bot refuses (401) is dropped, so the next request fetches another;
//! - a failed fetch is retried only after a backoff (1 s doubling to [`MAX_BACKOFF`]); requests in
//!   between fail at once with a 502 in the caller's dialect, with a fixed message
//!   ([`Reason::BackendCredentials`]), and nothing is sent to the bot.
//!
//! Counted in `botbridge_token_fetches_total{backend, result}` (`ok`, `error`) and
//! `botbridge_token_fetch_duration_seconds{backend}`. A reload starts new keepers (one fetch per
//! backend after it): a changed key file must never keep minting with the old key. A token
//! endpoint named by host is resolved (with `[dns]`) at each fetch, so it follows its DNS.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use prometheus::{register_histogram_vec, register_int_counter_vec, HistogramVec, IntCounterVec};

use crate::config::{Backend, Config};
use crate::dialect::Bot;
use crate::error::{ProxyError, Reason};
use crate::pool::dns::Resolver;
use crate::upstream::endpoint::Endpoint;
use crate::upstream::{self, BackendPeer, RequestBytes, Upstream};

/// A token is not used in its last minute (clocks differ, requests take time).
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(60);
/// The longest wait between failed fetches.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The token series, registered once.
struct TokenMetrics {
    fetches: IntCounterVec,
    duration: HistogramVec,
}

/// Creates the fetch series of a backend whose bot mints tokens, at zero (for dashboards and
/// alerts), with its first route's series.
pub fn register_backend(name: &str) {
    for result in ["ok", "error"] {
        metrics().fetches.with_label_values(&[name, result]);
    }
}

fn metrics() -> &'static TokenMetrics {
    static M: OnceLock<TokenMetrics> = OnceLock::new();
    M.get_or_init(|| TokenMetrics {
        fetches: register_int_counter_vec!(
            "botbridge_token_fetches_total",
            "Access token fetches at a bot's token endpoint, by backend and result (ok, error).",
            &["backend", "result"]
        )
        .expect("register token fetches"),
        duration: register_histogram_vec!(
            "botbridge_token_fetch_duration_seconds",
            "Time to get an access token from a bot's token endpoint.",
            &["backend"],
            vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
        )
        .expect("register token fetch duration"),
    })
}

/// A token and when it stops being usable.
struct Minted {
    token: Arc<str>,
    usable_until: Instant,
    /// When the background refresh starts.
    refresh_at: Instant,
}

/// The longest lifetime a token endpoint's answer is taken at (a larger `expires_in` is read as
/// this: the token is simply refreshed sooner).
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Clears a keeper's `refreshing` flag when the refresh task ends, however it ends.
struct Refreshing<'a>(&'a AtomicBool);

impl Drop for Refreshing<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Why the last fetch failed, and when the next may be tried.
#[derive(Default)]
struct Backoff {
    failures: u32,
    retry_at: Option<Instant>,
}

/// One backend's token: the current one, the single fetch in flight, the backoff.
pub struct Keeper {
    backend: String,
    bot: Arc<dyn Bot>,
    endpoint: Endpoint,
    /// For an endpoint at an IP address; a name is resolved at each fetch (one an hour).
    peer: BackendPeer,
    resolver: Option<Arc<Resolver>>,
    upstream: &'static Upstream,
    current: ArcSwapOption<Minted>,
    fetch: tokio::sync::Mutex<Backoff>,
    refreshing: AtomicBool,
}

/// Every backend's keeper (`None` for bots without tokens), by backend index.
pub struct Tokens {
    keepers: Vec<Option<Arc<Keeper>>>,
}

impl Tokens {
    /// The keepers of a configuration: one per backend with a token endpoint (resolved at load).
    pub fn new(config: &Config) -> Self {
        let names = (config.backends.iter())
            .any(|b| b.token_endpoint.as_ref().is_some_and(Endpoint::has_name));
        let resolver = names
            .then(|| Resolver::new(&config.dns))
            .and_then(|r| {
                r.inspect_err(|e| tracing::error!(error = %e, "token endpoints will not resolve"))
                    .ok()
            })
            .map(Arc::new);
        let keepers = (config.backends.iter())
            .map(|b| {
                let endpoint = b.token_endpoint.clone()?;
                Some(Arc::new(Keeper::new(b, endpoint, resolver.clone())))
            })
            .collect();
        Tokens { keepers }
    }

    /// The keeper of backend `index`'s token (`None` for a bot that needs none): its `get` is the
    /// token, fetched if there is no usable one. (A plain lookup first, so a request to a bot
    /// without tokens builds no future for this.)
    pub fn keeper(&self, index: usize) -> Option<&Arc<Keeper>> {
        self.keepers.get(index).and_then(Option::as_ref)
    }

    /// The current token without waiting (for shadow copies); starts a fetch when there is none.
    pub fn peek(&self, index: usize) -> Option<Arc<str>> {
        let k = self.keepers.get(index)?.as_ref()?;
        let token = k.usable(Instant::now());
        if token.is_none() {
            k.refresh_in_background();
        }
        token
    }
}

/// The one client every token endpoint is reached with (its idle connections are kept per
/// address). One per keeper cost ~165 KB each (a TLS connector with its own copy of the system's
/// root certificates): 47 MB for 2,000 routes with a token-minting bot in every seventh.
fn token_upstream() -> &'static Upstream {
    static UPSTREAM: OnceLock<Upstream> = OnceLock::new();
    UPSTREAM.get_or_init(|| Upstream::new(4, 64 * 1024))
}

fn unavailable() -> ProxyError {
    ProxyError::new(
        502,
        Reason::BackendCredentials,
        "the bot's credentials could not be obtained; try again later",
    )
}

impl Keeper {
    fn new(b: &Backend, endpoint: Endpoint, resolver: Option<Arc<Resolver>>) -> Self {
        Keeper {
            backend: b.name.clone(),
            bot: b.bot.clone(),
            peer: upstream::peer_for(&endpoint),
            resolver,
            endpoint,
            upstream: token_upstream(),
            current: ArcSwapOption::empty(),
            fetch: tokio::sync::Mutex::new(Backoff::default()),
            refreshing: AtomicBool::new(false),
        }
    }

    /// The bot refused `token` (401): it was revoked or its key deleted before it expired. It is
    /// dropped (unless a newer one replaced it meanwhile), so the next request fetches another
    /// instead of every request failing until it would have expired.
    pub fn refused(&self, token: &str) {
        let current = self.current.load();
        if current.as_ref().is_some_and(|m| &*m.token == token) {
            self.current.compare_and_swap(&current, None);
            tracing::warn!(backend = %self.backend, "the bot refused its access token: a new one is fetched for the next request");
        }
    }

    /// The current token if it is usable at `now` (not in its last minute, or in its last quarter
    /// for a token that lives less than four minutes).
    fn usable(&self, now: Instant) -> Option<Arc<str>> {
        let m = self.current.load();
        let m = m.as_ref()?;
        (now < m.usable_until).then(|| m.token.clone())
    }

    /// The current token, fetched when there is no usable one (see the module's rules).
    pub async fn get(self: &Arc<Self>) -> Result<Arc<str>, ProxyError> {
        let now = Instant::now();
        if let Some(token) = self.usable(now) {
            if self
                .current
                .load()
                .as_ref()
                .is_some_and(|m| now >= m.refresh_at)
            {
                self.refresh_in_background();
            }
            return Ok(token);
        }
        let mut backoff = self.fetch.lock().await;
        if let Some(token) = self.usable(Instant::now()) {
            return Ok(token); // another request's fetch, while this one waited
        }
        if backoff.retry_at.is_some_and(|t| Instant::now() < t) {
            return Err(unavailable());
        }
        self.fetch_now(&mut backoff).await
    }

    /// One task refreshes ahead of expiry; requests meanwhile use the current token.
    fn refresh_in_background(self: &Arc<Self>) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let _flag = Refreshing(&me.refreshing);
            let mut backoff = me.fetch.lock().await;
            let due = backoff.retry_at.is_none_or(|t| Instant::now() >= t);
            if due {
                let _ = me.fetch_now(&mut backoff).await;
            }
        });
    }

    /// Fetches a token (the caller holds the fetch lock) and records the outcome.
    async fn fetch_now(&self, backoff: &mut Backoff) -> Result<Arc<str>, ProxyError> {
        let started = Instant::now();
        let exchange = crate::otel::in_span(
            "token fetch",
            opentelemetry::trace::SpanKind::Client,
            || {
                vec![opentelemetry::KeyValue::new(
                    "botbridge.backend",
                    self.backend.clone(),
                )]
            },
            |e: &&'static str| *e,
            self.exchange(started),
        );
        let result = exchange.await;
        let m = metrics();
        m.duration
            .with_label_values(&[&self.backend])
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok((token, lifetime)) => {
                m.fetches.with_label_values(&[&self.backend, "ok"]).inc();
                let token: Arc<str> = token.into();
                let lifetime = Duration::from_secs(lifetime).min(MAX_LIFETIME);
                let margin = EXPIRY_MARGIN.min(lifetime / 4);
                self.current.store(Some(Arc::new(Minted {
                    token: token.clone(),
                    usable_until: started + (lifetime - margin),
                    refresh_at: started + lifetime * 3 / 4,
                })));
                *backoff = Backoff::default();
                Ok(token)
            }
            Err(why) => {
                m.fetches.with_label_values(&[&self.backend, "error"]).inc();
                tracing::warn!(backend = %self.backend, problem = why, "access token fetch failed");
                backoff.failures += 1;
                let wait = Duration::from_secs(1 << backoff.failures.min(6)).min(MAX_BACKOFF);
                backoff.retry_at = Some(Instant::now() + wait);
                Err(unavailable())
            }
        }
    }

    /// One round trip to the token endpoint.
    async fn exchange(&self, started: Instant) -> Result<(String, u64), &'static str> {
        let source = self
            .bot
            .token_source()
            .ok_or("the bot has no token source")?;
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let body = source.token_request(unix);
        let mut request = RequestBytes::post(&self.endpoint.path, body.len());
        request
            .header("host", &self.endpoint.authority)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json");
        let request = request.body(&body);
        let answer = match (&self.resolver, self.endpoint.has_name()) {
            (Some(resolver), true) => {
                let (host, port) = (&self.endpoint.host, self.endpoint.addr.port());
                let addrs = (resolver.resolve(host, port).await)
                    .map_err(|_| "the token endpoint's name did not resolve")?;
                let ep = self.endpoint.at(addrs[0]);
                let peer = upstream::peer_for(&ep);
                self.upstream.exchange(&peer, &ep, &request, started).await
            }
            (None, true) => return Err("the token endpoint's name cannot be resolved"),
            _ => {
                (self.upstream)
                    .exchange(&self.peer, &self.endpoint, &request, started)
                    .await
            }
        }
        .map_err(|_| "the token endpoint could not be reached")?;
        source.parse_token(answer.status, &answer.body)
    }
}
