//! The admin listener's home page (`GET /`): the version, uptime and configuration running, the
//! listeners, each route with its callers' dialects and its backends, what this listener serves (links
//! to what can be read, the `curl` line for what changes something) and the callers' API documents.
//! Rendered here, with no script and nothing fetched but the page.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use crate::config::Config;
use crate::dialect::registry;
use crate::migration::page::esc;
use crate::reload::Reloader;

static STARTED: OnceLock<SystemTime> = OnceLock::new();

/// Notes when the process started (the admin service calls it once, at start).
pub fn note_start() {
    STARTED.get_or_init(SystemTime::now);
}

fn uptime() -> Duration {
    let started = *STARTED.get_or_init(SystemTime::now);
    let up = SystemTime::now()
        .duration_since(started)
        .unwrap_or_default();
    Duration::from_secs(up.as_secs())
}

/// One row per route: path, callers' dialects, backends and their dialects.
fn route_rows(config: &Config) -> String {
    let mut rows = String::new();
    for r in &config.routes {
        let callers: Vec<&str> = r.ingress.iter().map(|c| c.as_str()).collect();
        let backends: Vec<String> = (r.backends().into_iter())
            .map(|i| {
                let b = &config.backends[i];
                format!("{} ({})", esc(&b.name), b.bot.dialect())
            })
            .collect();
        let path = if r.prefix {
            format!("{}…", r.path)
        } else {
            r.path.clone()
        };
        rows.push_str(&format!(
            "<tr data-route=\"{name}\"><td>{name}</td><td><code>{path}</code></td><td>{callers}</td><td>{backends}</td></tr>\n",
            name = esc(&r.name),
            path = esc(&path),
            callers = callers.join(", "),
            backends = backends.join(", "),
        ));
    }
    rows
}

/// The page's Content-Security-Policy: nothing but its own inline style.
pub const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// (method, path, what it is, what guards it)
const ENDPOINTS: &[(&str, &str, &str, &str)] = &[
    ("GET", "/healthz", "liveness: <code>ok</code>", "open"),
    ("GET", "/metrics", "Prometheus metrics", "read"),
    (
        "GET",
        "/backends",
        "each backend's endpoints and their state (JSON)",
        "read",
    ),
    (
        "GET",
        "/migration",
        "the shadow comparisons' report (and <code>/migration.json</code>)",
        "read",
    ),
    (
        "GET",
        "/config",
        "the configuration running, secrets hidden, with its hash (JSON)",
        "token",
    ),
    (
        "GET",
        "/config/history",
        "the configurations kept, newest first (JSON)",
        "token",
    ),
    (
        "GET",
        "/deliveries/dead-letters",
        "the newest dead letters, <code>?count=</code> (Redis journal)",
        "token",
    ),
    (
        "POST",
        "/reload",
        "reload the configuration file (as SIGHUP does)",
        "change",
    ),
    (
        "POST",
        "/config/rollback?hash=…",
        "apply a kept configuration again",
        "change",
    ),
    (
        "POST",
        "/auth-cache/clear",
        "forget every cached auth service decision",
        "change",
    ),
    (
        "POST",
        "/deliveries/dead-letters/replay?id=…",
        "deliver dead letters again",
        "change",
    ),
];

fn guard(kind: &str) -> &'static str {
    match kind {
        "open" => "always open",
        "read" => "the admin token with <code>metrics_token_required</code>",
        "token" => "the admin token, when one is set",
        _ => "the admin token, when one is set; refused cross-site",
    }
}

/// The page.
pub fn page(reloader: &Reloader) -> String {
    let history = reloader.history();
    let (hash, at) = history.last().map_or((String::new(), String::new()), |l| {
        let at = humantime::format_rfc3339_seconds(l.at).to_string();
        (l.source.hash.clone(), at)
    });
    let runtime = reloader.runtime();
    let config = &runtime.config;
    let server = &config.process.server;
    let scheme = if server.tls { "https" } else { "http" };
    // Dead letters are kept for the admin API with the Redis journal only.
    let shared_journal = config.process.redis.is_some()
        && config.process.delivery.journal == crate::config::delivery::JournalKind::Redis;
    let mut endpoints = String::new();
    for (method, path, what, kind) in ENDPOINTS {
        let answers = shared_journal || !path.starts_with("/deliveries");
        let shown = match (*method, answers) {
            ("GET", true) => format!("<a href=\"{path}\">{path}</a>"),
            ("GET", false) => format!("<code>{path}</code> (not with this journal)"),
            _ => format!("<code>curl -X POST 'http://&lt;admin&gt;{path}'</code>"),
        };
        endpoints.push_str(&format!(
            "<tr><td>{method}</td><td>{shown}</td><td>{what}</td><td>{}</td></tr>\n",
            guard(kind)
        ));
    }
    let documents: Vec<String> = registry::callers()
        .map(|c| format!("<a href=\"/openapi/{0}.json\">{0}</a>", c.as_str()))
        .collect();
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>botbridge admin</title>\n\
         <style>body{{font:15px system-ui,sans-serif;margin:2em;max-width:75em}}table{{border-collapse:collapse;margin-bottom:1.5em}}\
         td,th{{border-bottom:1px solid #ddd;padding:.35em .7em;text-align:left;vertical-align:top}}\
         code{{font-size:90%}}</style></head>\n<body>\n<h1>botbridge admin</h1>\n\
         <p id=\"about\">Version <span id=\"version\">{version}</span>, up <span id=\"uptime\">{uptime}</span>. \
         Configuration <a href=\"/config\"><code>{short}</code></a> (SHA-256 <code id=\"hash\">{hash}</code>), in force since {at}.</p>\n\
         <h2>Listeners</h2>\n<table><tr><th>what</th><th>address</th></tr>\n\
         <tr><td>chat</td><td><code id=\"chat-listener\">{scheme}://{chat}</code></td></tr>\n\
         <tr><td>admin</td><td><code id=\"admin-listener\">http://{admin}</code></td></tr></table>\n\
         <h2>Routes</h2>\n<table id=\"routes\"><tr><th>route</th><th>path</th><th>callers</th><th>backends</th></tr>\n{routes}</table>\n\
         <h2>This listener</h2>\n<table><tr><th>method</th><th>endpoint</th><th>what</th><th>needs</th></tr>\n{endpoints}</table>\n\
         <p>The callers' API documents (OpenAPI): {documents}.</p>\n</body></html>\n",
        version = env!("CARGO_PKG_VERSION"),
        uptime = humantime::format_duration(uptime()),
        short = crate::reload::short(&hash),
        chat = server.listen,
        admin = config.process.admin.listen,
        routes = route_rows(config),
        documents = documents.join(", "),
    )
}
