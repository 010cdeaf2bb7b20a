//! The admin listener's home page (`GET /`): what this listener serves, with links to what can be
//! read and the `curl` line for what changes something, the version and the configuration running.

use crate::dialect::registry;
use crate::reload::Reloader;

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
    let mut rows = String::new();
    for (method, path, what, kind) in ENDPOINTS {
        let shown = if *method == "GET" {
            format!("<a href=\"{path}\">{path}</a>")
        } else {
            format!("<code>curl -X POST 'http://&lt;admin&gt;{path}'</code>")
        };
        rows.push_str(&format!(
            "<tr><td>{method}</td><td>{shown}</td><td>{what}</td><td>{}</td></tr>\n",
            guard(kind)
        ));
    }
    let documents: Vec<String> = registry::callers()
        .map(|c| format!("<a href=\"/openapi/{0}.json\">{0}</a>", c.as_str()))
        .collect();
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>botbridge admin</title>\n\
         <style>body{{font:15px system-ui,sans-serif;margin:2em;max-width:70em}}table{{border-collapse:collapse}}\
         td,th{{border-bottom:1px solid #ddd;padding:.35em .7em;text-align:left;vertical-align:top}}\
         code{{font-size:90%}}</style></head>\n<body>\n<h1>botbridge admin</h1>\n\
         <p>Version {version}. Configuration <code>{short}</code> (SHA-256 <code>{hash}</code>), in force since {at}.</p>\n\
         <table><tr><th>method</th><th>endpoint</th><th>what</th><th>needs</th></tr>\n{rows}</table>\n\
         <p>The callers' API documents (OpenAPI): {documents}.</p>\n</body></html>\n",
        version = env!("CARGO_PKG_VERSION"),
        short = crate::reload::short(&hash),
        documents = documents.join(", "),
    )
}
