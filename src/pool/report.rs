//! `GET /backends` on the admin listener: each backend's balance, circuit and endpoints, as JSON.
//! Endpoints are shown by address and URL authority (`host:port`), never by path or query, which
//! may carry a backend's credential (a bot dialect's `?token=`).

use serde::Serialize;

use super::{now_ms, Pool, Pools};

#[derive(Serialize)]
struct Report<'a> {
    backends: Vec<BackendReport<'a>>,
}

#[derive(Serialize)]
struct BackendReport<'a> {
    name: &'a str,
    balance: &'static str,
    /// `closed`, `open` or `half_open`.
    circuit: &'static str,
    endpoints: Vec<EndpointReport<'a>>,
}

#[derive(Serialize)]
struct EndpointReport<'a> {
    address: String,
    /// The URL's `host[:port]`.
    host: &'a str,
    /// Can be chosen: healthy and not ejected.
    up: bool,
    /// Passes its active checks (always, without `[backends.health]`).
    healthy: bool,
    ejected: bool,
    in_flight: usize,
    /// Failed exchanges in a row.
    failures: u32,
}

/// The JSON document.
pub fn backends_json(pools: &Pools) -> Vec<u8> {
    let report = Report {
        backends: pools.iter().map(|p| backend(p)).collect(),
    };
    serde_json::to_vec_pretty(&report).expect("a report serializes")
}

fn backend(p: &Pool) -> BackendReport<'_> {
    let now = now_ms();
    let members = p.selector.members();
    let endpoints = (members.iter())
        .map(|m| EndpointReport {
            address: m.addr().to_string(),
            host: &p.urls[m.url].authority,
            up: p.up(m, now),
            healthy: p.selector.healthy(m),
            ejected: m.state.outlier.ejected(now),
            in_flight: m.state.in_flight(),
            failures: m.state.outlier.failures(),
        })
        .collect();
    BackendReport {
        name: &p.name,
        balance: p.settings.balance.as_str(),
        circuit: p.breaker.state_name(),
        endpoints,
    }
}
