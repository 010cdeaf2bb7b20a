//! The migration report's data: per route, in memory, what the shadow comparisons found, kept across
//! configuration reloads (a reload hands the store over) and lost on restart.
//!
//! Per route: pairs and matches in 10-second steps over the last hour (the match-rate chart), the
//! verdict and per-message-kind counts since start, the last 1,000 exchange times of each bot (for
//! p50/p99), the copies sent and dropped, and the latest divergences. `/migration.json` is a
//! [`RouteReport`] per route; `super::page` draws the same data.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::compare::{Comparison, Verdict, KINDS};
use super::divergence_log::Divergence;

/// The chart's step.
pub const STEP_SECS: u64 = 10;
/// Steps kept: one hour.
const STEPS: usize = 360;
/// Exchange times kept per bot and route, for the percentiles.
const LATENCY_SAMPLES: usize = 1000;
/// Divergences kept per route for the page.
const LATEST: usize = 10;

/// One compared pair, as the report records it.
pub struct Outcome<'a> {
    pub at: SystemTime,
    pub comparison: &'a Comparison,
    pub primary_latency: Duration,
    /// `None` when the shadow was never asked (its dialect cannot express the request).
    pub shadow_latency: Option<Duration>,
}

/// The in-memory report of every route.
#[derive(Default)]
pub struct Report {
    routes: Mutex<HashMap<String, RouteStats>>,
}

/// One route's statistics on one instance (what an instance publishes for the fleet's report).
#[derive(Default, Clone, Serialize, Deserialize)]
pub struct RouteStats {
    /// (step start in Unix seconds, pairs, matches), oldest first.
    steps: VecDeque<(u64, u64, u64)>,
    verdicts: [u64; Verdict::ALL.len()],
    exact: u64,
    /// Per kind in [`KINDS`] order: (compared, differing).
    kinds: [(u64, u64); KINDS.len()],
    primary_ms: VecDeque<f64>,
    shadow_ms: VecDeque<f64>,
    sent: u64,
    dropped: u64,
    latest: VecDeque<Divergence>,
}

impl Report {
    fn with<R>(&self, route: &str, f: impl FnOnce(&mut RouteStats) -> R) -> R {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        if !routes.contains_key(route) {
            routes.insert(route.to_owned(), RouteStats::default());
        }
        f(routes.get_mut(route).expect("inserted above"))
    }

    /// A copy was sent (`true`) or dropped for a full queue.
    pub fn copy(&self, route: &str, sent: bool) {
        self.with(route, |s| match sent {
            true => s.sent += 1,
            false => s.dropped += 1,
        })
    }

    /// Records one compared pair, and the divergence when there is one to show.
    pub fn record(&self, route: &str, o: &Outcome<'_>, divergence: Option<Divergence>) {
        self.with(route, |s| {
            s.count(o);
            if let Some(d) = divergence {
                if s.latest.len() == LATEST {
                    s.latest.pop_front();
                }
                s.latest.push_back(d);
            }
        })
    }

    /// The report of one route as it stands (`None` before its first copy).
    pub fn route(&self, route: &str) -> Option<RouteData> {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes.get(route).map(RouteStats::data)
    }

    /// Every route's statistics, as JSON (what this instance publishes for the fleet).
    pub fn snapshot(&self) -> Vec<(String, String)> {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        (routes.iter())
            .map(|(r, s)| (r.clone(), serde_json::to_string(s).expect("serializes")))
            .collect()
    }

    /// The pairs this instance compared on `route`.
    pub fn pairs(&self, route: &str) -> u64 {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes.get(route).map_or(0, |s| s.verdicts.iter().sum())
    }
}

/// One route's report over several instances' statistics (`None` when none has any).
pub fn merged(stats: Vec<RouteStats>) -> Option<RouteData> {
    let mut all = stats.into_iter();
    let mut acc = all.next()?;
    for s in all {
        acc.merge(s);
    }
    Some(acc.data())
}

impl RouteStats {
    /// The pairs it counts.
    pub fn pairs(&self) -> u64 {
        self.verdicts.iter().sum()
    }

    /// Adds another instance's statistics: counts summed, the chart's steps summed by time, the
    /// exchange times and divergences kept newest and within their caps (over all instances: the
    /// percentiles are of the most recent samples).
    fn merge(&mut self, o: RouteStats) {
        for (a, b) in self.verdicts.iter_mut().zip(o.verdicts) {
            *a += b;
        }
        self.exact += o.exact;
        for (a, b) in self.kinds.iter_mut().zip(o.kinds) {
            a.0 += b.0;
            a.1 += b.1;
        }
        self.sent += o.sent;
        self.dropped += o.dropped;
        let mut steps: std::collections::BTreeMap<u64, (u64, u64)> =
            std::collections::BTreeMap::new();
        for (t, p, m) in self.steps.drain(..).chain(o.steps) {
            let e = steps.entry(t).or_default();
            e.0 += p;
            e.1 += m;
        }
        let newest = steps.keys().next_back().copied().unwrap_or(0);
        self.steps = (steps.into_iter())
            .filter(|(t, _)| t + STEP_SECS * (STEPS as u64) > newest)
            .map(|(t, (p, m))| (t, p, m))
            .collect();
        // Each instance's samples interleaved: the caps keep a share of each.
        self.primary_ms = interleave(&self.primary_ms, &o.primary_ms, LATENCY_SAMPLES * 4);
        self.shadow_ms = interleave(&self.shadow_ms, &o.shadow_ms, LATENCY_SAMPLES * 4);
        let mut latest: Vec<Divergence> = self.latest.drain(..).chain(o.latest).collect();
        latest.sort_by(|a, b| a.time.cmp(&b.time));
        let skip = latest.len().saturating_sub(LATEST);
        self.latest = latest.into_iter().skip(skip).collect();
    }

    fn count(&mut self, o: &Outcome<'_>) {
        let c = o.comparison;
        let verdict = Verdict::ALL.iter().position(|v| *v == c.verdict);
        self.verdicts[verdict.expect("every verdict is listed")] += 1;
        self.exact += u64::from(c.exact);
        for (kind, differs) in &c.messages {
            if let Some(i) = KINDS.iter().position(|k| k == kind) {
                self.kinds[i].0 += 1;
                self.kinds[i].1 += u64::from(*differs);
            }
        }
        push_capped(&mut self.primary_ms, ms(o.primary_latency));
        if let Some(t) = o.shadow_latency {
            push_capped(&mut self.shadow_ms, ms(t));
        }
        let secs = o.at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let step = secs - secs % STEP_SECS;
        let matched = u64::from(c.verdict == Verdict::Match);
        match self.steps.back_mut() {
            Some(last) if last.0 == step => {
                last.1 += 1;
                last.2 += matched;
            }
            // A pair finishing after a later one (a slow shadow) counts in the later step.
            Some(last) if last.0 > step => {
                last.1 += 1;
                last.2 += matched;
            }
            _ => self.steps.push_back((step, 1, matched)),
        }
        while self
            .steps
            .front()
            .is_some_and(|s| s.0 + STEP_SECS * (STEPS as u64) <= step)
        {
            self.steps.pop_front();
        }
    }

    fn data(&self) -> RouteData {
        let pairs: u64 = self.verdicts.iter().sum();
        let rate = |n: u64| (pairs > 0).then(|| n as f64 / pairs as f64);
        RouteData {
            pairs,
            match_rate: rate(self.verdicts[0]),
            exact_rate: rate(self.exact),
            copies_sent: self.sent,
            copies_dropped: self.dropped,
            verdicts: (Verdict::ALL.iter().zip(self.verdicts))
                .map(|(v, count)| VerdictCount { verdict: *v, count })
                .collect(),
            kinds: (KINDS.iter().zip(self.kinds))
                .filter(|(_, (compared, _))| *compared > 0)
                .map(|(kind, (compared, differing))| KindRow {
                    kind,
                    compared,
                    differing,
                })
                .collect(),
            latency_ms: Latency {
                primary: Percentiles::of(&self.primary_ms),
                shadow: Percentiles::of(&self.shadow_ms),
            },
            series: (self.steps.iter())
                .map(|&(t, pairs, matches)| Point { t, pairs, matches })
                .collect(),
            latest: self.latest.iter().rev().cloned().collect(),
        }
    }
}

/// The newest samples of two series, at most `cap` (their order within each kept).
fn interleave(a: &VecDeque<f64>, b: &VecDeque<f64>, cap: usize) -> VecDeque<f64> {
    fn take(q: &VecDeque<f64>, n: usize) -> impl Iterator<Item = f64> + '_ {
        q.iter().skip(q.len().saturating_sub(n)).copied()
    }
    let half = cap / 2;
    let (na, nb) = match (a.len() < half, b.len() < half) {
        (true, _) => (a.len(), cap - a.len()),
        (_, true) => (cap - b.len(), b.len()),
        _ => (half, cap - half),
    };
    take(a, na).chain(take(b, nb)).collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn push_capped(q: &mut VecDeque<f64>, v: f64) {
    if q.len() == LATENCY_SAMPLES {
        q.pop_front();
    }
    q.push_back(v);
}

/// What the report shows of one route's shadow.
#[derive(Debug, Clone, Serialize)]
pub struct RouteData {
    /// Pairs compared since start.
    pub pairs: u64,
    /// Share of pairs with the verdict `match` (a shadow error counts as no match).
    pub match_rate: Option<f64>,
    /// Share of pairs whose texts were byte-identical.
    pub exact_rate: Option<f64>,
    pub copies_sent: u64,
    /// Copies dropped because the route's shadow queue was full.
    pub copies_dropped: u64,
    pub verdicts: Vec<VerdictCount>,
    /// Kinds seen, with how many messages of each were compared and how many differed.
    pub kinds: Vec<KindRow>,
    pub latency_ms: Latency,
    /// Pairs and matches per step, oldest first (steps without pairs are left out).
    pub series: Vec<Point>,
    /// The latest divergences, newest first.
    pub latest: Vec<Divergence>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerdictCount {
    pub verdict: Verdict,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct KindRow {
    pub kind: &'static str,
    pub compared: u64,
    pub differing: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub primary: Percentiles,
    pub shadow: Percentiles,
}

/// p50 and p99 (nearest rank) of the kept samples, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub samples: usize,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

impl Percentiles {
    fn of(samples: &VecDeque<f64>) -> Self {
        let mut v: Vec<f64> = samples.iter().copied().collect();
        v.sort_by(f64::total_cmp);
        let rank = |q: f64| {
            let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len().max(1)) - 1;
            v.get(i).copied()
        };
        Percentiles {
            samples: v.len(),
            p50: rank(0.50),
            p99: rank(0.99),
        }
    }
}

/// One step of the chart: its start (Unix seconds), pairs and matches.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Point {
    pub t: u64,
    pub pairs: u64,
    pub matches: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(verdict: Verdict, at: u64) -> (Comparison, SystemTime) {
        let c = Comparison {
            verdict,
            exact: verdict == Verdict::Match,
            messages: vec![("text", verdict != Verdict::Match)],
        };
        (c, UNIX_EPOCH + Duration::from_secs(at))
    }

    fn record(r: &Report, verdict: Verdict, at: u64, shadow_ms: u64) {
        let (c, at) = pair(verdict, at);
        let o = Outcome {
            at,
            comparison: &c,
            primary_latency: Duration::from_millis(5),
            shadow_latency: Some(Duration::from_millis(shadow_ms)),
        };
        r.record("chat", &o, None);
    }

    #[test]
    fn rates_steps_kinds_and_percentiles() {
        let r = Report::default();
        assert!(r.route("chat").is_none());
        for i in 0..100 {
            let v = if i % 4 == 0 {
                Verdict::TextDiffers
            } else {
                Verdict::Match
            };
            record(&r, v, 1_000_000 + i, i + 1);
        }
        let d = r.route("chat").unwrap();
        assert_eq!(d.pairs, 100);
        assert_eq!(d.match_rate, Some(0.75));
        assert_eq!(d.verdicts[1].count, 25);
        assert_eq!((d.kinds[0].compared, d.kinds[0].differing), (100, 25));
        assert_eq!(d.series.len(), 10);
        assert_eq!(d.series.iter().map(|p| p.pairs).sum::<u64>(), 100);
        assert_eq!(d.latency_ms.shadow.p50, Some(50.0));
        assert_eq!(d.latency_ms.shadow.p99, Some(99.0));
        assert_eq!(d.latency_ms.primary.p99, Some(5.0));
    }

    #[test]
    fn a_fleet_report_is_the_sum_of_its_instances() {
        let (a, b) = (Report::default(), Report::default());
        for i in 0..40 {
            record(&a, Verdict::Match, 1_000_000 + i, 10);
        }
        for i in 0..60 {
            let v = if i % 2 == 0 {
                Verdict::TextDiffers
            } else {
                Verdict::Match
            };
            record(&b, v, 1_000_000 + i, 30);
        }
        let stats = |r: &Report| -> RouteStats {
            serde_json::from_str(&r.snapshot().into_iter().next().unwrap().1).unwrap()
        };
        let d = merged(vec![stats(&a), stats(&b)]).unwrap();
        assert_eq!(d.pairs, 100);
        assert_eq!(d.match_rate, Some(0.7));
        assert_eq!(d.series.iter().map(|p| p.pairs).sum::<u64>(), 100);
        assert_eq!(d.series.len(), 6, "steps of both, summed by time");
        assert_eq!(d.latency_ms.shadow.samples, 100);
        assert_eq!(d.latency_ms.shadow.p99, Some(30.0));
        assert_eq!(merged(vec![]).map(|d| d.pairs), None);
    }

    #[test]
    fn the_chart_keeps_one_hour() {
        let r = Report::default();
        for i in 0..400 {
            record(&r, Verdict::Match, 1_000_000 + i * STEP_SECS, 1);
        }
        let d = r.route("chat").unwrap();
        assert_eq!(d.series.len(), STEPS);
        assert_eq!(d.series[0].t, 1_000_000 + 40 * STEP_SECS);
    }
}
