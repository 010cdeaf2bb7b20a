//! `[[routes]]`: the paths callers use, the dialects they may speak there, and where each business
//! goes.

use std::collections::HashMap;

use serde::Deserialize;

use super::backends::Backend;
use super::clients::ClientsConfig;
use super::limits::RawRateLimit;
use super::migration::{self, Canary, RawCanary, RawShadow, RouteBots, Shadow};
use super::ConfigError;
use crate::dialect::{registry, AnswerShape, Caller, FlowTriggerPolicy};
use crate::limits::LimitPair;

/// `[[routes]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Its name in scopes, metrics and logs.
    pub name: String,
    /// The exact path callers use (give this or `path_prefix`).
    pub path: Option<String>,
    /// Every path that starts with this, for dialects that put ids in their paths (e.g. a session id
    /// in `/…/sessions/{sessionId}/text`). An exact `path` of another route wins.
    pub path_prefix: Option<String>,
    /// What callers speak here: a dialect name, a list of them, or `auto` (every dialect that
    /// detection can tell apart).
    pub ingress: IngressSpec,
    /// The answer shape for callers of a dialect that has two: `legacy` or `hsl`.
    #[serde(default)]
    #[serde(alias = "haptik_answer")] // legacy key
    pub answer_shape: AnswerShape,
    /// What a flow trigger becomes for a bot that has none: `reject` (422) or `text`.
    #[serde(default)]
    pub flow_trigger: FlowTriggerPolicy,
    /// The business for callers whose requests and credentials name none.
    pub business_id: Option<i64>,
    /// The backend for businesses not listed in `businesses`.
    pub backend: Option<String>,
    /// The backend (any dialect) that answers while the target backend's circuit is open.
    pub fallback: Option<String>,
    /// The business name callers see where their dialect shows one.
    pub business_name: Option<String>,
    /// The bot name callers see where their dialect shows one.
    #[serde(default = "default_bot_name")]
    pub bot_name: String,
    /// Per-business backends.
    #[serde(default)]
    pub businesses: Vec<RawBusiness>,
    /// The limit per credential here, for credentials without their own.
    pub rate_limit: Option<RawRateLimit>,
    /// The limit per (credential, end user) here, for credentials without their own.
    pub user_rate_limit: Option<RawRateLimit>,
    /// A bot that gets a copy of the requests, whose answers are compared with the primary's.
    pub shadow: Option<RawShadow>,
    /// A bot that answers a share of the users instead of the primary.
    pub canary: Option<RawCanary>,
}

fn default_bot_name() -> String {
    "botbridge".into()
}

/// `ingress = "<dialect>"`, `["<dialect>", "<dialect>"]` or `"auto"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum IngressSpec {
    One(String),
    Many(Vec<String>),
}

/// `[[routes.businesses]]`: one business id and the backend that serves it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBusiness {
    pub id: i64,
    pub backend: Option<String>,
    pub name: Option<String>,
}

/// Where a request for one business goes.
#[derive(Debug, Clone)]
pub struct Target {
    /// Index into `Config::backends`.
    pub backend: usize,
    /// The business name shown to callers whose dialect shows one.
    pub business_name: String,
}

/// A route, validated.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    /// The exact path, or with `prefix` the start of every path routed here.
    pub path: String,
    pub prefix: bool,
    /// The dialects callers may speak here, in detection order.
    pub ingress: Vec<Caller>,
    pub answer_shape: AnswerShape,
    pub flow_trigger: FlowTriggerPolicy,
    /// The business for callers that name none.
    pub business_id: Option<i64>,
    pub bot_name: String,
    /// For business ids not listed in `businesses`; `None` rejects them.
    pub default_target: Option<Target>,
    pub businesses: HashMap<i64, Target>,
    /// `rate_limit` and `user_rate_limit` here.
    pub limits: LimitPair,
    /// The backend (index into `Config::backends`) used while a target's circuit is open.
    pub fallback: Option<usize>,
    /// The bot copies go to, if any (`crate::migration`).
    pub shadow: Option<Shadow>,
    /// The bot that answers a share of the users, if any.
    pub canary: Option<Canary>,
}

impl Route {
    /// The target for a business id, if the route serves it.
    pub fn target(&self, business_id: Option<i64>) -> Option<&Target> {
        business_id
            .and_then(|id| self.businesses.get(&id))
            .or(self.default_target.as_ref())
    }

    /// Every backend that can answer the route's callers (indexes into `Config::backends`): its
    /// targets, its fallback and its canary, each once, in order.
    pub fn backends(&self) -> Vec<usize> {
        let mut b: Vec<usize> = self
            .default_target
            .iter()
            .chain(self.businesses.values())
            .map(|t| t.backend)
            .chain(self.fallback)
            .chain(self.canary.iter().map(|c| c.backend))
            .collect();
        b.sort_unstable();
        b.dedup();
        b
    }

    /// The dialect, if the route accepts only one.
    pub fn fixed(&self) -> Option<Caller> {
        match self.ingress.as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    }

    /// Whether the route accepts this dialect.
    pub fn accepts(&self, d: Caller) -> bool {
        self.ingress.contains(&d)
    }
}

/// What route validation reads from the tables before it.
pub struct Known<'a> {
    pub backends: &'a [Backend],
    pub backend_index: &'a HashMap<String, usize>,
    pub clients: &'a ClientsConfig,
    pub auth_service: bool,
}

/// Validates every route and the scopes that name routes.
pub fn validate(raw: &[RawRoute], known: &Known<'_>) -> Result<Vec<Route>, ConfigError> {
    let mut routes: Vec<Route> = Vec::with_capacity(raw.len());
    // A set, not a scan of the routes so far: with 10,000 routes the scan was 15% of a start.
    let mut routed: std::collections::HashSet<(&str, bool)> =
        std::collections::HashSet::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        let key = format!("routes[{i}]");
        let (path_key, path, prefix) = path(&key, r)?;
        if !path.starts_with('/') {
            return Err(ConfigError::new(path_key, "must start with `/`"));
        }
        if !routed.insert((path, prefix)) {
            return Err(ConfigError::new(
                path_key,
                format!("`{path}` is routed twice"),
            ));
        }
        let mut route = route(&key, r, known)?;
        (route.path, route.prefix) = (path.to_owned(), prefix);
        check_callers(&key, &route, known)?;
        routes.push(route);
    }
    if routes.is_empty() {
        return Err(ConfigError::new("routes", "at least one route is needed"));
    }
    let route_names: std::collections::HashSet<&str> =
        routes.iter().map(|r| r.name.as_str()).collect();
    for (key, names) in &known.clients.route_scopes {
        if let Some(name) = names.iter().find(|n| !route_names.contains(n.as_str())) {
            return Err(ConfigError::new(key, format!("no route named `{name}`")));
        }
    }
    Ok(routes)
}

/// The route's `path` or `path_prefix` (exactly one): the key it was given in, the path, whether
/// it is a prefix.
fn path<'r>(key: &str, r: &'r RawRoute) -> Result<(String, &'r str, bool), ConfigError> {
    match (&r.path, &r.path_prefix) {
        (Some(p), None) => Ok((format!("{key}.path"), p, false)),
        (None, Some(p)) => Ok((format!("{key}.path_prefix"), p, true)),
        (Some(_), Some(_)) => Err(ConfigError::new(
            format!("{key}.path_prefix"),
            "give `path` or `path_prefix`, not both",
        )),
        (None, None) => Err(ConfigError::new(
            format!("{key}.path"),
            "missing: give `path` (exact) or `path_prefix`",
        )),
    }
}

fn route(key: &str, r: &RawRoute, known: &Known<'_>) -> Result<Route, ConfigError> {
    let (default_target, businesses) = targets(key, r, known)?;
    let primaries: Vec<usize> = (default_target.iter().chain(businesses.values()))
        .map(|t| t.backend)
        .collect();
    let bots = RouteBots {
        lookup: &|k, name| lookup(known, k, name),
        primaries: &primaries,
    };
    let shadow = (r.shadow.as_ref())
        .map(|s| migration::shadow(&format!("{key}.shadow"), s, &bots))
        .transpose()?;
    // A shadow copy is one request; a bot reached through a conversation API needs several.
    if let Some(s) = &shadow {
        let bot = &known.backends[s.backend];
        if bot.bot.channel().is_some() {
            return Err(ConfigError::new(
                format!("{key}.shadow.backend"),
                format!(
                    "`{}` speaks {}, which cannot be a shadow yet (its exchange takes several requests)",
                    bot.name,
                    bot.bot.dialect()
                ),
            ));
        }
    }
    let canary = (r.canary.as_ref())
        .map(|c| migration::canary(&format!("{key}.canary"), c, &bots))
        .transpose()?;
    Ok(Route {
        name: r.name.clone(),
        path: String::new(),
        prefix: false,
        ingress: ingress(&format!("{key}.ingress"), &r.ingress)?,
        answer_shape: r.answer_shape,
        flow_trigger: r.flow_trigger,
        business_id: r.business_id,
        bot_name: r.bot_name.clone(),
        default_target,
        businesses,
        limits: super::limits::pair(key, r.rate_limit.as_ref(), r.user_rate_limit.as_ref())?,
        fallback: fallback(key, r, known)?,
        shadow,
        canary,
    })
}

/// `fallback`: a backend by name, other than the route's own default.
fn fallback(key: &str, r: &RawRoute, known: &Known<'_>) -> Result<Option<usize>, ConfigError> {
    let Some(name) = &r.fallback else {
        return Ok(None);
    };
    let k = format!("{key}.fallback");
    if r.backend.as_ref() == Some(name) {
        return Err(ConfigError::new(
            k,
            "must name another backend than `backend`",
        ));
    }
    match known.backend_index.get(name) {
        Some(&i) => Ok(Some(i)),
        None => Err(ConfigError::new(k, format!("no backend named `{name}`"))),
    }
}

/// A backend's index by name (`k` names the key for the error).
fn lookup(known: &Known<'_>, k: String, name: &str) -> Result<usize, ConfigError> {
    known
        .backend_index
        .get(name)
        .copied()
        .ok_or_else(|| ConfigError::new(k, format!("no backend named `{name}`")))
}

/// The accepted dialects: `auto` is every dialect that takes part in detection.
fn ingress(key: &str, spec: &IngressSpec) -> Result<Vec<Caller>, ConfigError> {
    let names: Vec<&str> = match spec {
        IngressSpec::One(n) if n == "auto" => {
            return Ok(registry::callers().filter(|c| c.in_auto()).collect())
        }
        IngressSpec::One(n) => vec![n.as_str()],
        IngressSpec::Many(v) => v.iter().map(String::as_str).collect(),
    };
    if names.is_empty() {
        return Err(ConfigError::new(key, "name at least one dialect"));
    }
    let mut out: Vec<Caller> = Vec::with_capacity(names.len());
    for n in names {
        let c = registry::caller(n).ok_or_else(|| {
            let all = registry::caller_names().join(", ");
            ConfigError::new(
                key,
                format!("unknown dialect `{n}` (one of: {all}, or auto)"),
            )
        })?;
        if !out.contains(&c) {
            out.push(c);
        }
    }
    // Detection asks dialects in registry order, whatever order the list has.
    out.sort_by_key(|c| c.index());
    Ok(out)
}

type Targets = (Option<Target>, HashMap<i64, Target>);

fn targets(key: &str, r: &RawRoute, known: &Known<'_>) -> Result<Targets, ConfigError> {
    let lookup = |k: String, name: &str| lookup(known, k, name);
    let default_target = match &r.backend {
        Some(name) => Some(Target {
            backend: lookup(format!("{key}.backend"), name)?,
            business_name: r.business_name.clone().unwrap_or_else(|| name.clone()),
        }),
        None => None,
    };
    let mut businesses = HashMap::new();
    for (j, biz) in r.businesses.iter().enumerate() {
        let bkey = format!("{key}.businesses[{j}]");
        let (backend, bname) = match (&biz.backend, &default_target) {
            (Some(name), _) => (lookup(format!("{bkey}.backend"), name)?, name.clone()),
            (None, Some(t)) => (t.backend, known.backends[t.backend].name.clone()),
            (None, None) => {
                return Err(ConfigError::new(
                    format!("{bkey}.backend"),
                    "missing, and the route has no default `backend`",
                ))
            }
        };
        let business_name = biz
            .name
            .clone()
            .or_else(|| r.business_name.clone())
            .unwrap_or(bname);
        let target = Target {
            backend,
            business_name,
        };
        if businesses.insert(biz.id, target).is_some() {
            return Err(ConfigError::new(
                format!("{bkey}.id"),
                format!("business {} is listed twice", biz.id),
            ));
        }
    }
    if default_target.is_none() && businesses.is_empty() {
        return Err(ConfigError::new(
            key,
            "give a `backend` or at least one `businesses` entry",
        ));
    }
    Ok((default_target, businesses))
}

/// Every accepted dialect must have credentials (or the auth service), and a dialect whose callers
/// may name no business must be given one when the route reaches a bot that needs it.
fn check_callers(key: &str, route: &Route, known: &Known<'_>) -> Result<(), ConfigError> {
    let shadow = route.shadow.as_ref().map(|s| s.backend);
    let needs_business = (route.backends().into_iter().chain(shadow))
        .any(|b| known.backends[b].bot.needs_business());
    for &c in &route.ingress {
        let clients = known
            .clients
            .summary
            .get(c.as_str())
            .copied()
            .unwrap_or_default();
        if clients.count == 0 && !known.auth_service {
            return Err(ConfigError::new(
                format!("{key}.ingress"),
                format!(
                    "accepts {0} callers but no [[clients.{0}]] is configured",
                    c.as_str()
                ),
            ));
        }
        if needs_business
            && !c.names_business()
            && route.business_id.is_none()
            && clients.any_without_business
        {
            return Err(ConfigError::new(
                format!("{key}.business_id"),
                format!(
                    "required: {} callers without a business_id reach a bot that needs one here",
                    c.as_str()
                ),
            ));
        }
    }
    Ok(())
}
