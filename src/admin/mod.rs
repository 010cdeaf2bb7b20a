//! The admin listener: `GET /metrics` (Prometheus text format), `GET /healthz`, `GET /backends`
//! (each backend's endpoints and state, JSON), `GET /migration` and `/migration.json` (the shadow
//! comparisons' report, `crate::migration::page`), `POST /auth-cache/clear` (forget every cached
//! auth service decision), `POST /reload` (reload `proxy.toml`, as `SIGHUP` does) and
//! `GET /openapi/<dialect>.json` (the callers' API documents, `docs/openapi/`), and with the Redis
//! delivery journal `GET /deliveries/dead-letters` (the newest dead letters, `?count=`) and
//! `POST /deliveries/dead-letters/replay?id=…` (deliver them again); `GET /config`,
//! `GET /config/history` and `POST /config/rollback?hash=…` (`config_history`); `GET /` lists them
//! all (`home`).
//!
//! It runs as its own pingora service with its own thread, so a busy chat listener does not starve
//! scrapes, and it is meant to listen on a private address. With no `[admin] token`, a request whose
//! `Host` is a name other than `localhost` or one of `allowed_hosts` is refused with 421 (a web page
//! whose name was re-pointed at this listener, DNS rebinding, must not read it). The two mutating
//! endpoints refuse cross-site requests (403: a web page open on the operator's machine must not
//! trigger them) and, with `[admin] token` set, require it as a bearer token (401), as the dead
//! letters do; the reads (`/metrics`, `/backends`, `/migration`) require it only with
//! `metrics_token_required`; `/healthz` is always open. Every answer says `X-Content-Type-Options: nosniff`.

mod config_history;
mod home;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use async_trait::async_trait;
use pingora::http::RequestHeader;
use pingora::protocols::http::ServerSession;
use prometheus::{Encoder, TextEncoder};

use crate::config::admin::AdminLock;
use crate::delivery::recover::Requeued;
use crate::delivery::Deliveries;
use crate::dialect::registry;
use crate::error::ProxyError;
use crate::httpio::{self, Answer, Handler};
use crate::metrics::Metrics;
use crate::migration::{fleet, page, report};
use crate::reload::Reloader;

/// Serves metrics, health and cache control.
pub struct AdminService {
    reloader: Arc<Reloader>,
    deliveries: Deliveries,
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Metrics,
    Healthz,
    /// `GET /backends`: each backend's endpoints and their state.
    Backends,
    Migration,
    MigrationJson,
    /// `GET /openapi/<dialect>.json`: a caller dialect's API document, built in.
    OpenApi(&'static str),
    ClearAuthCache,
    Reload,
    /// `GET /deliveries/dead-letters`
    DeadLetters,
    /// `POST /deliveries/dead-letters/replay`
    Replay,
    /// `GET /`: the list of endpoints.
    Home,
    /// `GET /config`
    Config,
    /// `GET /config/history`
    ConfigHistory,
    /// `POST /config/rollback`
    Rollback,
    /// `/metrics` or `/healthz` with another method than GET/HEAD.
    WrongMethod,
    NotFound,
}

impl Endpoint {
    fn of(method: &http::Method, path: &str) -> Endpoint {
        let get = method == http::Method::GET || method == http::Method::HEAD;
        let post = method == http::Method::POST;
        match (path, get, post) {
            ("/metrics", true, _) => Endpoint::Metrics,
            ("/healthz", true, _) => Endpoint::Healthz,
            ("/backends", true, _) => Endpoint::Backends,
            ("/migration", true, _) => Endpoint::Migration,
            ("/migration.json", true, _) => Endpoint::MigrationJson,
            ("/auth-cache/clear", _, true) => Endpoint::ClearAuthCache,
            ("/reload", _, true) => Endpoint::Reload,
            ("/deliveries/dead-letters", true, _) => Endpoint::DeadLetters,
            ("/deliveries/dead-letters/replay", _, true) => Endpoint::Replay,
            ("/", true, _) => Endpoint::Home,
            ("/config", true, _) => Endpoint::Config,
            ("/config/history", true, _) => Endpoint::ConfigHistory,
            ("/config/rollback", _, true) => Endpoint::Rollback,
            ("/metrics" | "/healthz" | "/migration" | "/migration.json", false, _) => {
                Endpoint::WrongMethod
            }
            (path, true, _) => match api_document(path) {
                Some(document) => Endpoint::OpenApi(document),
                None => Endpoint::NotFound,
            },
            _ => Endpoint::NotFound,
        }
    }

    fn mutating(self) -> bool {
        matches!(
            self,
            Endpoint::ClearAuthCache | Endpoint::Reload | Endpoint::Replay | Endpoint::Rollback
        )
    }
}

/// The API document at `/openapi/<dialect>.json`, if `path` names a caller dialect.
fn api_document(path: &str) -> Option<&'static str> {
    let name = path.strip_prefix("/openapi/")?.strip_suffix(".json")?;
    registry::caller(name).map(|c| c.api_document())
}

impl AdminService {
    /// The admin listener, acting on the runtime the reloader manages.
    pub fn new(reloader: Arc<Reloader>, deliveries: Deliveries) -> Self {
        home::note_start();
        AdminService {
            reloader,
            deliveries,
        }
    }

    /// The 421, 403 or 401 this request gets, if any: the `Host` first (only without a token),
    /// then cross-site checks (they hold with or without a token), then the token.
    fn refusal(
        &self,
        session: &ServerSession,
        endpoint: Endpoint,
        has_body: bool,
    ) -> Option<Answer> {
        let runtime = self.reloader.runtime();
        let lock: &AdminLock = &runtime.config.admin_lock;
        let header = |name: &str| session.req_header().headers.get(name).map(|v| v.as_bytes());
        let listen = runtime.config.process.admin.listen;
        let open = !lock.locked() && endpoint != Endpoint::Healthz;
        if open && !host_allowed(host(session.req_header()), listen, &lock.allowed_hosts) {
            return Some(refuse("foreign_host", 421, FOREIGN_HOST));
        }
        if endpoint.mutating() {
            let request = CrossSite {
                origin: header("origin"),
                fetch_site: header("sec-fetch-site"),
                content_type: header("content-type"),
                has_body,
            };
            if let Some(why) = request.why(listen) {
                return Some(refuse("cross_site", 403, why));
            }
        }
        let reads = matches!(
            endpoint,
            Endpoint::Metrics
                | Endpoint::Backends
                | Endpoint::Migration
                | Endpoint::MigrationJson
                | Endpoint::Home
        );
        // Dead letters carry what users were told, the configuration how everything is wired:
        // always behind the token, when there is one.
        let guarded = endpoint.mutating()
            || matches!(
                endpoint,
                Endpoint::DeadLetters | Endpoint::Config | Endpoint::ConfigHistory
            )
            || (reads && lock.metrics_token_required);
        if guarded && !lock.opens(bearer(header("authorization"))) {
            let answer = refuse("unauthorized", 401, "missing or wrong admin token");
            return Some(answer.with_header("www-authenticate", "Bearer"));
        }
        None
    }

    async fn serve(&self, endpoint: Endpoint, query: Option<&str>) -> Answer {
        match endpoint {
            Endpoint::DeadLetters => self.dead_letters(query).await,
            Endpoint::Replay => self.replay(query).await,
            Endpoint::Metrics => metrics(),
            Endpoint::Home => Answer {
                content_type: "text/html; charset=utf-8",
                ..Answer::text(200, home::page(&self.reloader))
            }
            .with_header("content-security-policy", home::CSP),
            Endpoint::Config => config_history::current(&self.reloader),
            Endpoint::ConfigHistory => config_history::history(&self.reloader),
            Endpoint::Rollback => {
                config_history::rollback(&self.reloader, query_values(query, "hash").next())
            }
            Endpoint::Healthz => Answer::text(200, "ok\n"),
            Endpoint::Backends => {
                let pools = &self.reloader.runtime().pools;
                Answer::json(200, crate::pool::report::backends_json(pools))
            }
            Endpoint::Migration | Endpoint::MigrationJson => self.migration(endpoint).await,
            Endpoint::OpenApi(document) => Answer::json(200, document.into()),
            Endpoint::ClearAuthCache => {
                let runtime = self.reloader.runtime();
                runtime.authn.clear_cache();
                runtime.publish_cache_clear();
                tracing::info!("auth cache cleared");
                Answer::text(200, "cleared\n")
            }
            Endpoint::Reload => match self.reloader.reload() {
                Ok(()) => Answer::text(200, "reloaded\n"),
                Err(e) => Answer::text(400, format!("not reloaded: {e}\n")),
            },
            Endpoint::WrongMethod => {
                Answer::text(405, "method not allowed\n").with_header("allow", "GET")
            }
            Endpoint::NotFound => Answer::text(404, "not found\n"),
        }
    }
}

/// Dead letters listed at most.
const DEAD_LETTERS_MAX: usize = 1_000;

/// The values of `name` in a query string.
fn query_values<'q>(query: Option<&'q str>, name: &'q str) -> impl Iterator<Item = String> + 'q {
    (query.unwrap_or_default().split('&'))
        .filter_map(move |pair| pair.strip_prefix(name)?.strip_prefix('='))
        .map(|v| String::from_utf8_lossy(&crate::auth::percent_decode(v)).into_owned())
}

impl AdminService {
    /// The newest dead letters of the shared journal: URLs without their query, bodies only with
    /// `[log] message_bodies`.
    async fn dead_letters(&self, query: Option<&str>) -> Answer {
        let Some(journal) = self.deliveries.journal().shared().cloned() else {
            return no_dead_letter_store();
        };
        let count = (query_values(query, "count").next())
            .and_then(|c| c.parse::<usize>().ok())
            .unwrap_or(100)
            .clamp(1, DEAD_LETTERS_MAX);
        let Ok(entries) = journal.dead_letters(count, None).await else {
            return Answer::json(503, br#"{"error":"redis is unavailable"}"#.to_vec());
        };
        let bodies = self.reloader.runtime().config.message_bodies;
        let list: Vec<serde_json::Value> = (entries.into_iter())
            .map(|e| {
                let mut f = e.fields;
                if let Some(o) = f.as_object_mut() {
                    let redacted = o.remove("redacted_url").unwrap_or_default();
                    o.insert("url".into(), redacted);
                    o.remove("conversation");
                    if !bodies {
                        o.remove("body");
                    }
                    o.insert("id".into(), e.id.into());
                }
                f
            })
            .collect();
        let body = serde_json::json!({"store": "redis", "dead_letters": list});
        Answer::json(200, body.to_string().into_bytes())
    }

    /// Delivers the dead letters named by `id` again (journaled first, same idempotency keys).
    async fn replay(&self, query: Option<&str>) -> Answer {
        let Some(journal) = self.deliveries.journal().shared().cloned() else {
            return no_dead_letter_store();
        };
        let ids: Vec<String> = query_values(query, "id").take(DEAD_LETTERS_MAX).collect();
        if ids.is_empty() {
            return Answer::json(
                400,
                br#"{"error":"name the dead letters to replay: ?id=<id>"}"#.to_vec(),
            );
        }
        let clients = self.reloader.runtime().config.clients.clone();
        let (mut replayed, mut missing, mut refused) = (Vec::new(), Vec::new(), Vec::new());
        for id in ids {
            // A stream id is `<ms>-<seq>`; anything else is not one (and is not sent to Redis).
            let well_formed = id.split_once('-').is_some_and(|(ms, seq)| {
                [ms, seq]
                    .iter()
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            });
            if !well_formed {
                missing.push(id);
                continue;
            }
            let Ok(found) = journal.dead_letters(1, Some(&id)).await else {
                return Answer::json(503, br#"{"error":"redis is unavailable"}"#.to_vec());
            };
            let Some(letter) = found.into_iter().next() else {
                missing.push(id);
                continue;
            };
            // Taken off the list first: of two replays at once, only one delivers it again.
            if !journal.forget_dead(&id).await.unwrap_or(false) {
                missing.push(id);
                continue;
            }
            match self.deliveries.replay(&letter.fields, &clients).await {
                Requeued::Queued(_) => replayed.push(id),
                Requeued::Foreign | Requeued::Failed => {
                    journal.dead_letter(letter.fields);
                    refused.push(id)
                }
            }
        }
        tracing::info!(
            replayed = replayed.len(),
            missing = missing.len(),
            refused = refused.len(),
            "dead letters replayed"
        );
        let body =
            serde_json::json!({"replayed": replayed, "missing": missing, "refused": refused});
        Answer::json(200, body.to_string().into_bytes())
    }

    /// The report of the fleet (with `[redis]`), else of this instance.
    async fn migration(&self, endpoint: Endpoint) -> Answer {
        let rt = self.reloader.runtime();
        let local = rt.migration.report();
        let gathered = match rt.shared() {
            Some(shared) => fleet::gather(shared, local).await,
            None => None,
        };
        let report = match gathered {
            Some(g) => {
                let data = |route: &str| report::merged(g.routes.get(route).cloned()?);
                page::report(&rt.config, data, g.fleet.clone())
            }
            None => {
                let own = fleet::InstanceRow {
                    name: "this instance".into(),
                    this: true,
                    pairs: (rt.config.routes.iter())
                        .map(|r| local.pairs(&r.name))
                        .sum(),
                    last_seen: humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                        .to_string(),
                };
                let fleet = fleet::Fleet {
                    source: "local",
                    instances: vec![own],
                };
                page::report(&rt.config, |route| local.route(route), fleet)
            }
        };
        match endpoint {
            Endpoint::MigrationJson => Answer::json(200, page::json(&report)),
            _ => Answer {
                content_type: "text/html; charset=utf-8",
                ..Answer::text(200, page::html(&report))
            }
            .with_header("content-security-policy", page::CSP),
        }
    }
}

#[async_trait]
impl Handler for AdminService {
    async fn handle(&self, session: &mut ServerSession) -> Answer {
        let body = httpio::read_body(session, 64 * 1024).await;
        let keep = body.is_ok();
        // An unreadable or oversized body counts as a body (it is not empty).
        let has_body = body.map_or(true, |b| !b.is_empty());
        let req = session.req_header();
        let endpoint = Endpoint::of(&req.method, req.uri.path());
        let mut answer = match self.refusal(session, endpoint, has_body) {
            Some(refused) => refused,
            None => {
                let query = req.uri.query().map(str::to_owned);
                self.serve(endpoint, query.as_deref()).await
            }
        };
        answer.keepalive &= keep;
        answer.with_header("x-content-type-options", "nosniff")
    }

    fn head_refusal(&self, _head: Option<&RequestHeader>, err: &ProxyError) -> Answer {
        Answer::text(err.status, format!("{}\n", err.message))
            .with_header("x-content-type-options", "nosniff")
    }
}

fn metrics() -> Answer {
    let encoder = TextEncoder::new();
    let mut buf = Vec::with_capacity(16 * 1024);
    match encoder.encode(&prometheus::gather(), &mut buf) {
        Ok(()) => Answer {
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            ..Answer::text(200, buf)
        },
        Err(e) => Answer::text(500, format!("cannot encode metrics: {e}\n")),
    }
}

fn no_dead_letter_store() -> Answer {
    let message = "dead letters are kept for replay with the Redis delivery journal only; this \
                   instance's are in its delivery.dead_letter_path";
    let body = serde_json::json!({ "error": message }).to_string();
    Answer::json(404, body.into_bytes())
}

/// A short JSON refusal, counted and logged (never with a header's value).
fn refuse(reason: &'static str, status: u16, message: &str) -> Answer {
    Metrics::global()
        .admin_refusals
        .with_label_values(&[reason])
        .inc();
    tracing::warn!(reason, message, "admin request refused");
    let body = serde_json::json!({ "error": message }).to_string();
    Answer::json(status, body.into_bytes())
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(value: Option<&[u8]>) -> Option<&[u8]> {
    let value = value?;
    let (scheme, token) = value.split_at(value.iter().position(|&b| b == b' ')?);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| token.trim_ascii())
}

/// The headers that tell a browser's cross-site request from an operator's tool.
struct CrossSite<'a> {
    origin: Option<&'a [u8]>,
    fetch_site: Option<&'a [u8]>,
    content_type: Option<&'a [u8]>,
    has_body: bool,
}

impl CrossSite<'_> {
    /// Why this request looks cross-site, if it does. curl and scripts send no `Origin` and no
    /// `Sec-Fetch-Site`; a browser always sends `Origin` on a POST. A body that is not JSON is what
    /// a plain HTML form can send without a CORS preflight (a JSON one needs the preflight, which
    /// this listener never grants).
    fn why(&self, listen: SocketAddr) -> Option<&'static str> {
        if self.origin.is_some_and(|o| !own_origin(o, listen)) {
            return Some("cross-site request refused: foreign Origin");
        }
        let same =
            |s: &[u8]| s.eq_ignore_ascii_case(b"same-origin") || s.eq_ignore_ascii_case(b"none");
        if self.fetch_site.is_some_and(|s| !same(s)) {
            return Some("cross-site request refused: Sec-Fetch-Site is not same-origin");
        }
        if self.has_body && !self.content_type.is_some_and(is_json) {
            return Some("refused: a request body must be empty or application/json");
        }
        None
    }
}

/// The 421's words (never the `Host` itself).
const FOREIGN_HOST: &str =
    "misdirected request: this Host is not the admin listener's (see [admin] allowed_hosts)";

/// The host a request names: its target's authority (absolute form), else its `Host` header.
fn host(req: &RequestHeader) -> Option<&[u8]> {
    match req.uri.authority() {
        Some(a) => Some(a.as_str().as_bytes()),
        None => req.headers.get("host").map(|v| v.as_bytes()),
    }
}

/// Whether a tokenless listener answers a request naming `host` (port aside): `localhost`, a name
/// on `allowed_hosts`, or an IP address that is loopback, the listener's own, or any on a wildcard
/// listener (an address cannot be re-pointed, a name can). No `Host` at all is accepted: every
/// browser sends one.
fn host_allowed(host: Option<&[u8]>, listen: SocketAddr, allowed: &[String]) -> bool {
    let Some(host) = host else {
        return true;
    };
    let Ok(authority) = http::uri::Authority::try_from(host) else {
        return false;
    };
    if authority.as_str().contains('@') {
        return false;
    }
    let name = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name == "localhost" || allowed.contains(&name) {
        return true;
    }
    name.parse::<IpAddr>()
        .is_ok_and(|ip| ip.is_loopback() || ip == listen.ip() || listen.ip().is_unspecified())
}

/// Whether `origin` is the admin listener's own: `http://` and its address and port, or
/// `localhost` on a loopback listener, or any IP address on a wildcard listener. A DNS name other
/// than `localhost` never is: a name can be re-pointed at this machine (DNS rebinding), and the
/// `Host` header is the attacker's too, so neither is compared with it.
fn own_origin(origin: &[u8], listen: SocketAddr) -> bool {
    let Ok(uri) = http::Uri::try_from(origin) else {
        return false;
    };
    if uri.scheme_str() != Some("http") || uri.port_u16().unwrap_or(80) != listen.port() {
        return false;
    }
    let host = uri.host().unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<IpAddr>() {
        Ok(ip) => ip == listen.ip() || listen.ip().is_unspecified(),
        Err(_) => host.eq_ignore_ascii_case("localhost") && listen.ip().is_loopback(),
    }
}

/// Whether a `Content-Type` is `application/json` (parameters aside).
fn is_json(content_type: &[u8]) -> bool {
    let media = content_type.split(|&b| b == b';').next().unwrap_or(b"");
    media.trim_ascii().eq_ignore_ascii_case(b"application/json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_the_listeners_own_origin_is_same_site() {
        let local = listen("127.0.0.1:9090");
        for own in [
            "http://127.0.0.1:9090",
            "http://localhost:9090",
            "HTTP://LOCALHOST:9090",
        ] {
            assert!(own_origin(own.as_bytes(), local), "{own}");
        }
        for foreign in [
            "https://evil.example",
            "http://evil.example:9090",
            "null",
            "http://127.0.0.1:9091",
            "https://127.0.0.1:9090",
            "http://127.0.0.2:9090",
        ] {
            assert!(!own_origin(foreign.as_bytes(), local), "{foreign}");
        }
        assert!(own_origin(b"http://[::1]:9090", listen("[::1]:9090")));
        assert!(own_origin(b"http://10.1.2.3:9090", listen("0.0.0.0:9090")));
        assert!(!own_origin(
            b"http://admin.example:9090",
            listen("0.0.0.0:9090")
        ));
        assert!(!own_origin(
            b"http://localhost:9090",
            listen("10.1.2.3:9090")
        ));
    }

    #[test]
    fn an_open_listener_answers_only_its_own_and_allowed_hosts() {
        let local = listen("127.0.0.1:9090");
        let allowed = ["admin.internal".to_string(), "10.9.9.9".to_string()];
        for own in [
            "localhost",
            "LOCALHOST:9090",
            "localhost.",
            "127.0.0.1",
            "127.0.0.1:9090",
            "127.0.0.2:1",
            "[::1]",
            "[::1]:9090",
            "admin.internal:9090",
            "Admin.Internal",
            "10.9.9.9:9090",
        ] {
            assert!(host_allowed(Some(own.as_bytes()), local, &allowed), "{own}");
        }
        assert!(host_allowed(None, local, &allowed));
        for foreign in [
            "rebound.example",
            "rebound.example:9090",
            "localhost.rebound.example",
            "admin.internal.evil",
            "10.0.0.5:9090",
            "",
            "a b",
            "user@localhost",
        ] {
            assert!(
                !host_allowed(Some(foreign.as_bytes()), local, &allowed),
                "{foreign}"
            );
        }
        let wildcard = listen("0.0.0.0:9090");
        assert!(host_allowed(Some(b"10.0.0.5:9090"), wildcard, &[]));
        assert!(!host_allowed(Some(b"rebound.example"), wildcard, &[]));
        let own = listen("10.0.0.5:9090");
        assert!(host_allowed(Some(b"10.0.0.5:9090"), own, &[]));
        assert!(!host_allowed(Some(b"10.0.0.6:9090"), own, &[]));
    }

    #[test]
    fn forms_and_foreign_fetches_are_cross_site_tools_are_not() {
        let local = listen("127.0.0.1:9090");
        let tool = CrossSite {
            origin: None,
            fetch_site: None,
            content_type: None,
            has_body: false,
        };
        assert_eq!(tool.why(local), None);
        let form = CrossSite {
            content_type: Some(b"application/x-www-form-urlencoded"),
            has_body: true,
            ..tool
        };
        assert!(form.why(local).is_some());
        let json = CrossSite {
            content_type: Some(b"Application/JSON; charset=utf-8"),
            has_body: true,
            ..tool
        };
        assert_eq!(json.why(local), None);
        for site in [&b"cross-site"[..], b"same-site"] {
            let fetch = CrossSite {
                fetch_site: Some(site),
                ..tool
            };
            assert!(fetch.why(local).is_some());
        }
        let direct = CrossSite {
            fetch_site: Some(b"none"),
            origin: Some(b"http://localhost:9090"),
            ..tool
        };
        assert_eq!(direct.why(local), None);
    }

    #[test]
    fn the_bearer_token_is_read_from_its_header() {
        assert_eq!(bearer(Some(b"Bearer abc")), Some(&b"abc"[..]));
        assert_eq!(bearer(Some(b"bearer  abc ")), Some(&b"abc"[..]));
        assert_eq!(bearer(Some(b"Basic abc")), None);
        assert_eq!(bearer(Some(b"Bearer")), None);
        assert_eq!(bearer(None), None);
    }
}
