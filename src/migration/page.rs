//! `GET /migration` (an HTML page) and `GET /migration.json` on the admin listener: per route with a
//! shadow or a canary, the match rate over the last hour (an inline SVG chart), the verdicts, the
//! mismatches by message kind, both bots' p50/p99 and the latest divergences side by side.
//!
//! Server-rendered: plain HTML and SVG with inline styles, no script, nothing fetched (the answer's
//! Content-Security-Policy forbids it), so it needs no build step and works offline. Every text
//! from the configuration or a bot is HTML-escaped.

use std::fmt::Write;
use std::time::SystemTime;

use serde::Serialize;

use super::divergence_log::{Divergence, MessageView};
use super::fleet::Fleet;
use super::report::{RouteData, STEP_SECS};
use crate::config::{Config, Route};

/// The JSON answer.
#[derive(Serialize)]
pub struct MigrationReport<'a> {
    pub generated_at: String,
    /// Whether divergences show message text (`[log] message_bodies`).
    pub message_bodies: bool,
    pub step_seconds: u64,
    /// Whose comparisons it sums: every instance on Redis, or this one.
    pub fleet: Fleet,
    pub routes: Vec<RouteReport<'a>>,
}

/// One route with a shadow or a canary.
#[derive(Serialize)]
pub struct RouteReport<'a> {
    pub route: &'a str,
    pub path: &'a str,
    /// The bots that answer the route's callers (the canary aside).
    pub primary: Vec<Bot<'a>>,
    pub shadow: Option<Bot<'a>>,
    pub canary: Option<Bot<'a>>,
    /// What the shadow's comparisons found (absent before the first copy).
    pub report: Option<RouteData>,
}

/// A bot and, for a shadow or canary, its share of the users.
#[derive(Serialize)]
pub struct Bot<'a> {
    pub backend: &'a str,
    pub dialect: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<u8>,
}

/// The report of every route with a shadow or a canary, in configuration order.
pub fn report<'a>(
    config: &'a Config,
    data: impl Fn(&str) -> Option<RouteData>,
    fleet: Fleet,
) -> MigrationReport<'a> {
    let bot = |b: usize, percent| Bot {
        backend: &config.backends[b].name,
        dialect: config.backends[b].bot.dialect(),
        percent,
    };
    let primaries = |r: &Route| {
        let canary = r.canary.as_ref().map(|c| c.backend);
        let all = r.backends().into_iter().filter(|b| Some(*b) != canary);
        all.map(|b| bot(b, None)).collect()
    };
    let routes = (config.routes.iter())
        .filter(|r| r.shadow.is_some() || r.canary.is_some())
        .map(|r| RouteReport {
            route: &r.name,
            path: &r.path,
            primary: primaries(r),
            shadow: r.shadow.as_ref().map(|s| bot(s.backend, Some(s.percent))),
            canary: r.canary.as_ref().map(|c| bot(c.backend, Some(c.percent))),
            report: data(&r.name),
        })
        .collect();
    MigrationReport {
        generated_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        message_bodies: config.message_bodies,
        step_seconds: STEP_SECS,
        fleet,
        routes,
    }
}

/// `/migration.json`.
pub fn json(r: &MigrationReport<'_>) -> Vec<u8> {
    serde_json::to_vec_pretty(r).expect("the report serializes")
}

/// The Content-Security-Policy of the page: its own inline styles, nothing else.
pub const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:";

const STYLE: &str = "body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1100px;\
padding:1.5em;color:#1d232a;background:#f6f7f9}h1{margin:0 0 .2em}h2{margin:0}h3{margin:1.2em 0 .4em}\
.meta,.bots{color:#55606b}section{background:#fff;border:1px solid #dde2e7;border-radius:8px;\
padding:1.2em 1.4em;margin:1.4em 0}.stats{display:flex;gap:2.5em;margin:1em 0;flex-wrap:wrap}\
.big{font-size:2.2em;font-weight:600}.good{color:#1a7f37}.fair{color:#9a6700}.poor{color:#cf222e}\
.grid{display:flex;gap:2em;flex-wrap:wrap;align-items:flex-start}table{border-collapse:collapse}\
th,td{text-align:left;padding:.25em .7em;border-bottom:1px solid #eceff2;vertical-align:top}\
td.n{text-align:right;font-variant-numeric:tabular-nums}.bar{display:inline-block;height:.7em;\
background:#8a99a8;border-radius:2px}ol{margin:0;padding-left:1.3em}.kind{font-weight:600}\
.empty{color:#55606b;font-style:italic}code{font-size:.92em}";

/// `/migration`.
pub fn html(r: &MigrationReport<'_>) -> String {
    let mut h = String::with_capacity(16 * 1024);
    h.push_str("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">");
    // No favicon request: the page loads nothing but itself.
    h.push_str("<link rel=\"icon\" href=\"data:,\">");
    let _ = write!(
        h,
        "<title>botbridge: migration report</title><style>{STYLE}</style></head><body>"
    );
    let _ =
        write!(
        h,
        "<h1>Migration report</h1><p class=\"meta\">Generated {} (reload the page to update) · \
         the same data as <a href=\"/migration.json\">JSON</a> · {}</p>",
        esc(&r.generated_at),
        if r.message_bodies { "message text shown ([log] message_bodies)" } else {
            "message text redacted to kinds and lengths"
        }
    );
    fleet_line(&mut h, &r.fleet);
    if r.routes.is_empty() {
        h.push_str(
            "<p class=\"empty\">No route has a <code>shadow</code> or a <code>canary</code>.</p>",
        );
    }
    for route in &r.routes {
        section(&mut h, route);
    }
    h.push_str("</body></html>\n");
    h
}

fn section(h: &mut String, r: &RouteReport<'_>) {
    let _ = write!(
        h,
        "<section class=\"route\" data-route=\"{0}\"><h2>{0} <code>{1}</code></h2><p class=\"bots\">",
        esc(r.route),
        esc(r.path)
    );
    let names: Vec<String> = r.primary.iter().map(bot).collect();
    let _ = write!(h, "primary {}", names.join(", "));
    if let Some(s) = &r.shadow {
        let _ = write!(
            h,
            " · shadow {}, {}% of users",
            bot(s),
            s.percent.unwrap_or(0)
        );
    }
    if let Some(c) = &r.canary {
        let _ = write!(
            h,
            " · canary {}, answering {}% of users",
            bot(c),
            c.percent.unwrap_or(0)
        );
    }
    h.push_str("</p>");
    match (&r.shadow, &r.report) {
        (None, _) => {
            h.push_str("<p class=\"empty\">No shadow on this route: nothing is compared.</p>")
        }
        (Some(_), None) => h.push_str("<p class=\"empty\">No copy sent to the shadow yet.</p>"),
        (Some(_), Some(d)) => body(h, d),
    }
    h.push_str("</section>");
}

fn bot(b: &Bot<'_>) -> String {
    format!("<b>{}</b> ({})", esc(b.backend), b.dialect)
}

fn body(h: &mut String, d: &RouteData) {
    let rate = d.match_rate.map_or("–".to_owned(), pct);
    let class = match d.match_rate {
        Some(x) if x >= 0.95 => "good",
        Some(x) if x >= 0.8 => "fair",
        _ => "poor",
    };
    let _ = write!(
        h,
        "<div class=\"stats\"><div><span class=\"big {class}\" data-match-rate>{rate}</span><br>match \
         over {} pairs</div><div><span class=\"big\">{}</span><br>texts byte-identical</div><div>\
         <span class=\"big\">{}</span><br>copies sent, {} dropped (queue full)</div></div>",
        d.pairs,
        d.exact_rate.map_or("–".to_owned(), pct),
        d.copies_sent,
        d.copies_dropped
    );
    chart(h, d);
    h.push_str("<div class=\"grid\">");
    verdicts(h, d);
    kinds(h, d);
    latency(h, d);
    h.push_str("</div>");
    latest(h, &d.latest);
}

/// The match rate per step over the last hour, as an SVG line with a dot per step.
fn chart(h: &mut String, d: &RouteData) {
    const W: f64 = 1000.0;
    const H: f64 = 200.0;
    const LEFT: f64 = 48.0;
    const BOTTOM: f64 = 24.0;
    let end = d.series.last().map_or(0, |p| p.t + STEP_SECS);
    let start = end.saturating_sub(3600);
    let x = |t: u64| {
        LEFT + (t.saturating_sub(start) as f64 + STEP_SECS as f64 / 2.0) / 3600.0 * (W - LEFT - 8.0)
    };
    let y = |rate: f64| 8.0 + (1.0 - rate) * (H - BOTTOM - 8.0);
    let _ = write!(
        h,
        "<h3>Match rate, last hour ({STEP_SECS}-second steps)</h3><svg viewBox=\"0 0 {W} {H}\" \
         width=\"100%\" role=\"img\" aria-label=\"match rate over the last hour\" \
         xmlns=\"http://www.w3.org/2000/svg\" font-size=\"12\" fill=\"#55606b\">"
    );
    for (rate, label) in [(1.0, "100%"), (0.5, "50%"), (0.0, "0%")] {
        let _ = write!(
            h,
            "<line x1=\"{LEFT}\" x2=\"{W}\" y1=\"{0}\" y2=\"{0}\" stroke=\"#dde2e7\"/>\
             <text x=\"{1}\" y=\"{2}\" text-anchor=\"end\">{label}</text>",
            y(rate),
            LEFT - 6.0,
            y(rate) + 4.0
        );
    }
    for t in [start, start + 1800, end] {
        let _ = write!(
            h,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{} UTC</text>",
            x(t).min(W - 40.0),
            H - 6.0,
            clock(t)
        );
    }
    let points: Vec<String> = (d.series.iter())
        .map(|p| format!("{:.1},{:.1}", x(p.t), y(p.matches as f64 / p.pairs as f64)))
        .collect();
    let _ = write!(
        h,
        "<polyline fill=\"none\" stroke=\"#0969da\" stroke-width=\"2\" points=\"{}\"/>",
        points.join(" ")
    );
    for (p, xy) in d.series.iter().zip(&points) {
        let (cx, cy) = xy.split_once(',').expect("x,y");
        let _ = write!(
            h,
            "<circle cx=\"{cx}\" cy=\"{cy}\" r=\"3\" fill=\"#0969da\"><title>{} UTC: {} of {} pairs \
             match</title></circle>",
            clock(p.t),
            p.matches,
            p.pairs
        );
    }
    h.push_str("</svg>");
}

fn verdicts(h: &mut String, d: &RouteData) {
    h.push_str(
        "<div><h3>Verdicts</h3><table><tr><th>verdict</th><th>pairs</th><th>share</th></tr>",
    );
    for v in &d.verdicts {
        let share = if d.pairs == 0 {
            0.0
        } else {
            v.count as f64 / d.pairs as f64
        };
        let _ = write!(
            h,
            "<tr><td><code>{}</code></td><td class=\"n\">{}</td><td class=\"n\">{} \
             <span class=\"bar\" style=\"width:{:.0}px\"></span></td></tr>",
            v.verdict.as_str(),
            v.count,
            pct(share),
            share * 80.0
        );
    }
    h.push_str("</table></div>");
}

fn kinds(h: &mut String, d: &RouteData) {
    h.push_str(
        "<div><h3>Messages by kind</h3><table><tr><th>kind</th><th>compared</th><th>differing</th>\
         <th>mismatch</th></tr>",
    );
    for k in &d.kinds {
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            k.kind,
            k.compared,
            k.differing,
            pct(k.differing as f64 / k.compared as f64)
        );
    }
    h.push_str("</table></div>");
}

fn latency(h: &mut String, d: &RouteData) {
    let ms = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.1} ms"));
    h.push_str(
        "<div><h3>Backend latency</h3><table><tr><th>bot</th><th>p50</th><th>p99</th><th>samples</th></tr>",
    );
    for (side, p) in [
        ("primary", &d.latency_ms.primary),
        ("shadow", &d.latency_ms.shadow),
    ] {
        let _ = write!(
            h,
            "<tr><td>{side}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            ms(p.p50),
            ms(p.p99),
            p.samples
        );
    }
    h.push_str("</table></div>");
}

fn latest(h: &mut String, list: &[Divergence]) {
    h.push_str("<h3>Latest divergences</h3>");
    if list.is_empty() {
        h.push_str("<p class=\"empty\">None: every pair matched.</p>");
        return;
    }
    h.push_str("<table><tr><th>when, request, verdict</th><th>primary</th><th>shadow</th></tr>");
    for d in list {
        let shadow = match (&d.shadow, &d.shadow_error) {
            (Some(m), _) => messages(m),
            (None, e) => format!(
                "<span class=\"poor\">no answer: {}</span>",
                esc(e.as_deref().unwrap_or("unknown"))
            ),
        };
        let _ = write!(
            h,
            "<tr><td>{}<br><code>{}</code><br><code>{}</code></td><td>{}</td><td>{shadow}</td></tr>",
            esc(&d.time),
            esc(&d.request_id),
            d.verdict.as_str(),
            messages(&d.primary)
        );
    }
    h.push_str("</table>");
}

/// Whose comparisons the page sums.
fn fleet_line(h: &mut String, f: &Fleet) {
    let rows: Vec<String> = (f.instances.iter())
        .map(|i| {
            let this = if i.this { " (this one)" } else { "" };
            format!("{}{this}: {} pairs", esc(&i.name), i.pairs)
        })
        .collect();
    let whose = match f.source {
        "redis" => format!("Comparisons of {} instances (on Redis)", f.instances.len()),
        _ => "Comparisons of this instance only".to_owned(),
    };
    let _ = write!(h, "<p class=\"meta\">{whose}: {}</p>", rows.join(" · "));
}

fn messages(list: &[MessageView]) -> String {
    let mut out = String::from("<ol>");
    for m in list {
        let _ = write!(out, "<li><span class=\"kind\">{}</span> ", esc(&m.kind));
        match &m.text {
            Some(t) => {
                let _ = write!(out, "{}", esc(t));
            }
            None => {
                let _ = write!(out, "({} characters)", m.length);
            }
        }
        if !m.choices.is_empty() {
            let titles: Vec<String> = m
                .choices
                .iter()
                .map(|c| format!("[{}]", esc(&c.title)))
                .collect();
            let _ = write!(out, " {}", titles.join(" "));
        } else if m.buttons > 0 {
            let _ = write!(out, " with {} buttons", m.buttons);
        }
        out.push_str("</li>");
    }
    out.push_str("</ol>");
    out
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// `HH:MM` of a Unix time, UTC.
fn clock(t: u64) -> String {
    format!("{:02}:{:02}", t % 86_400 / 3600, t % 3600 / 60)
}

/// HTML-escapes text for element content and quoted attribute values (the admin pages'). Written
/// here: five characters, no crate needed.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc("<b>\"x\" & 'y'</b>"),
            "&lt;b&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/b&gt;"
        );
    }

    #[test]
    fn an_empty_report_says_so() {
        let r = MigrationReport {
            generated_at: "now".into(),
            message_bodies: false,
            step_seconds: STEP_SECS,
            fleet: Fleet {
                source: "local",
                instances: Vec::new(),
            },
            routes: Vec::new(),
        };
        let page = html(&r);
        assert!(page.contains("No route has a"));
        assert!(page.contains("Comparisons of this instance only"));
    }
}
