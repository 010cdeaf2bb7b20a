//! Moving a route from one bot to another without risk: a shadow bot that gets a copy of the
//! requests and whose answers are compared with the primary's, a report of what it found, and a
//! sticky canary that moves a share of the users over.
//!
//! - [`compare`]: pure; two canonical answers in, a verdict out;
//! - [`shadow`]: the bounded, off-path sender and the comparison of one pair;
//! - [`report`]: the in-memory report, kept across reloads; [`page`]: `GET /migration` and
//!   `/migration.json` on the admin listener;
//! - [`divergence_log`]: sampled divergences as JSON lines, size-capped and rotated.
//!
//! The request path calls three things here: [`Migration::canary`] when it picks the bot,
//! [`Migration::sampled`] and [`Migration::offer`] once the caller's answer is ready.

pub mod compare;
pub mod divergence_log;
pub mod fleet;
pub mod page;
pub mod report;
pub mod shadow;

use std::borrow::Cow;
use std::sync::Arc;

use prometheus::IntCounter;
use sha2::{Digest, Sha256};

use crate::config::{Config, Route, Target};
use crate::error::Reason;
use crate::metrics::migration::MigrationMetrics;
use crate::model::{ChatAnswer, ChatRequest};
use crate::upstream::Upstream;
use compare::Verdict;
use divergence_log::{views, Divergence, DivergenceLog};
use report::{Outcome, Report};
use shadow::{Job, ShadowTarget};

/// Buckets users are hashed into: a percent is 100 of them.
const BUCKETS: u32 = 10_000;

/// A user's bucket for one purpose (`salt`), the same in every process and version: the first
/// bytes of SHA-256 of the salt and the user id. A user is in a percent `p` when its bucket is below
/// `p * 100`, so raising `p` only adds users and lowering it only removes them.
pub fn user_bucket(salt: &str, user_id: &str) -> u32 {
    let digest = Sha256::new()
        .chain_update(salt)
        .chain_update([0])
        .chain_update(user_id)
        .finalize();
    let n = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    (n % u64::from(BUCKETS)) as u32
}

/// Whether a user falls within `percent` of users, for `salt`.
pub fn in_percent(salt: &str, user_id: &str, percent: u8) -> bool {
    percent >= 100 || user_bucket(salt, user_id) < u32::from(percent) * (BUCKETS / 100)
}

/// The request-path counters of a route's canary.
struct CanarySides {
    primary: IntCounter,
    canary: IntCounter,
}

/// Where compared pairs go: the report, the metrics and the divergence log.
pub struct Recorder {
    pub report: Arc<Report>,
    log: Option<Arc<DivergenceLog>>,
    message_bodies: bool,
}

/// Both answers of a pair, as the shadow's task read them.
pub struct Answers<'a> {
    pub primary: &'a ChatAnswer<'a>,
    /// The shadow's answer, or why it gave none.
    pub shadow: Result<&'a ChatAnswer<'a>, Reason>,
}

/// A configuration's shadows and canaries, and the report they feed.
pub struct Migration {
    /// By route index.
    shadows: Vec<Option<Arc<ShadowTarget>>>,
    canaries: Vec<Option<CanarySides>>,
    recorder: Arc<Recorder>,
}

impl Migration {
    /// Builds them for `config`; on a reload, `previous` hands over the report (and the divergence
    /// log, when its settings did not change).
    pub fn new(config: &Config, previous: Option<&Migration>) -> Self {
        let m = MigrationMetrics::global();
        let shadows = (config.routes.iter())
            .map(|r| {
                let s = r.shadow.as_ref()?;
                let backend = config.backends[s.backend].clone();
                Some(Arc::new(ShadowTarget::new(&r.name, s.clone(), backend)))
            })
            .collect();
        let canaries = (config.routes.iter())
            .map(|r| {
                r.canary.as_ref()?;
                m.register_canary(&r.name);
                Some(CanarySides {
                    primary: m.canary_requests.with_label_values(&[&r.name, "primary"]),
                    canary: m.canary_requests.with_label_values(&[&r.name, "canary"]),
                })
            })
            .collect();
        Migration {
            shadows,
            canaries,
            recorder: Arc::new(Recorder::new(config, previous.map(|p| &*p.recorder))),
        }
    }

    /// The report.
    pub fn report(&self) -> &Report {
        &self.recorder.report
    }

    /// The report, shared (it outlives a reload).
    pub fn report_arc(&self) -> &Arc<Report> {
        &self.recorder.report
    }

    /// The target for this user: the route's canary bot when the user is among its share, else
    /// the primary's `target`.
    pub fn canary<'r>(
        &self,
        route_index: usize,
        route: &'r Route,
        target: &'r Target,
        user_id: &str,
    ) -> Cow<'r, Target> {
        let (Some(canary), Some(Some(sides))) = (&route.canary, self.canaries.get(route_index))
        else {
            return Cow::Borrowed(target);
        };
        if !in_percent("canary", user_id, canary.percent) {
            sides.primary.inc();
            return Cow::Borrowed(target);
        }
        sides.canary.inc();
        Cow::Owned(Target {
            backend: canary.backend,
            business_name: target.business_name.clone(),
        })
    }

    /// The route's shadow, if this user's requests are copied to it. A request the shadow's bot
    /// answered itself (as the canary) is not copied: that bot has seen it.
    pub fn sampled(
        &self,
        route_index: usize,
        user_id: &str,
        served_by: usize,
    ) -> Option<&Arc<ShadowTarget>> {
        let t = self.shadows.get(route_index)?.as_ref()?;
        (t.settings.backend != served_by && in_percent("shadow", user_id, t.settings.percent))
            .then_some(t)
    }

    /// Hands a copy to the shadow's sender (it returns at once).
    pub fn offer(&self, target: &Arc<ShadowTarget>, job: Job, upstream: &Arc<Upstream>) {
        target.offer(job, upstream, &self.recorder);
    }
}

/// The copy of a request the shadow gets: the same, with its user id prefixed when the shadow has
/// a `user_prefix`.
pub fn shadow_request<'a, 'r>(
    target: &ShadowTarget,
    req: &'r ChatRequest<'a>,
) -> Cow<'r, ChatRequest<'a>> {
    match &target.settings.user_prefix {
        None => Cow::Borrowed(req),
        Some(prefix) => {
            let mut copy = req.clone();
            copy.user_id = Cow::Owned(format!("{prefix}{}", req.user_id));
            Cow::Owned(copy)
        }
    }
}

impl Recorder {
    fn new(config: &Config, previous: Option<&Recorder>) -> Self {
        let log = match (
            &config.divergence_log,
            previous.and_then(|p| p.log.as_ref()),
        ) {
            (Some(c), Some(old)) if old.config() == c => Some(old.clone()),
            (Some(c), _) => Some(Arc::new(DivergenceLog::new(c.clone()))),
            (None, _) => None,
        };
        Recorder {
            report: previous.map_or_else(Default::default, |p| p.report.clone()),
            log,
            message_bodies: config.message_bodies,
        }
    }

    /// Counts a compared pair, logs it when sampled, and adds it to the report.
    fn record(
        &self,
        t: &ShadowTarget,
        request_id: &str,
        o: &Outcome<'_>,
        answers: &Answers<'_>,
        log: bool,
    ) {
        let m = MigrationMetrics::global();
        let route = t.route.as_str();
        let verdict = o.comparison.verdict;
        m.comparisons
            .with_label_values(&[route, verdict.as_str()])
            .inc();
        for (kind, differs) in &o.comparison.messages {
            let result = if *differs { "differs" } else { "match" };
            m.message_comparisons
                .with_label_values(&[route, kind, result])
                .inc();
        }
        let latency =
            |side: &str, secs: f64| m.latency.with_label_values(&[route, side]).observe(secs);
        latency("primary", o.primary_latency.as_secs_f64());
        if let Some(s) = o.shadow_latency {
            latency("shadow", s.as_secs_f64());
        }
        let divergence = (verdict != Verdict::Match).then(|| Divergence {
            time: humantime::format_rfc3339_millis(o.at).to_string(),
            request_id: request_id.to_owned(),
            route: route.to_owned(),
            verdict,
            primary: views(answers.primary, self.message_bodies),
            shadow: answers.shadow.ok().map(|a| views(a, self.message_bodies)),
            shadow_error: answers.shadow.err().map(|r| r.as_str().into()),
        });
        if let (true, Some(d), Some(file)) = (log, &divergence, &self.log) {
            file.write(d);
        }
        self.report.record(route, o, divergence);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_bucket_is_stable_and_percents_nest() {
        assert_eq!(
            user_bucket("canary", "user-1"),
            user_bucket("canary", "user-1")
        );
        assert_ne!(
            user_bucket("canary", "user-1"),
            user_bucket("shadow", "user-1")
        );
        let ids: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();
        let share = |p: u8| ids.iter().filter(|u| in_percent("canary", u, p)).count();
        for p in [0u8, 10, 50, 100] {
            let want = usize::from(p) * 100;
            assert!(share(p).abs_diff(want) <= 300, "{p}%: {}", share(p));
        }
        // Raising the percent only adds users.
        for u in &ids {
            if in_percent("canary", u, 10) {
                assert!(in_percent("canary", u, 50));
            }
        }
    }
}
