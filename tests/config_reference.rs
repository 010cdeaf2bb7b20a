//! The configuration reference, `docs/book/src/configuration.md`, checked against the parser itself,
//! so neither can change without the other.
//!
//! For every table of `proxy.toml` the keys it accepts are asked of the real loader, never listed
//! here by hand: a key the parser accepts must be in that table's section of the page, and every key
//! the page lists there must be accepted. Every top-level table the parser knows must have a section.
//!
//! How each table is asked:
//!
//! - Tables read with `#[serde(deny_unknown_fields)]` (most of them): `zz_probe = "x"` is put in the
//!   table of a small valid configuration and [`config::parse`] run; serde's refusal lists every key
//!   the table accepts (``unknown field `zz_probe`, expected one of `a`, `b`, …``), old names
//!   (aliases) included. The root is asked the same way, and so are the `[[clients.<dialect>]]`
//!   tables, whose own keys each dialect reads with such a struct.
//! - Tables that take arbitrary keys cannot list theirs, so each candidate key is tried instead,
//!   and the parser says whether it took it. The candidates are every lowercase word of the
//!   proxy's sources (`src/`, `core/src/`) and every key the page names: a key the parser reads is
//!   written in the sources, so none is missed. These tables are:
//!   - `[[backends]]`: its keys shared by every dialect ([`RawBackend`]) flatten the rest into the
//!     dialect's settings (`#[serde(flatten)]`); a candidate is shared when it does not end up there.
//!     The dialect's own keys are the ones its `BotDialect::keys` lets through (`dialect = "<name>"`
//!     sections of the page);
//!   - `[clients]`: its two settings sit beside the `[[clients.<dialect>]]` arrays, flattened into a
//!     map ([`RawClients`]);
//!   - the keys every `[[clients.<dialect>]]` table shares (`name`, the scope, the rate limits):
//!     taken out of the table before the dialect reads it, by `config::clients::validate`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use botbridge::config::{self, backends::RawBackend, clients::RawClients, ConfigError};
use botbridge::dialect::{registry, BotDialect};
use toml::{Table, Value};

/// The page, from the repository root.
const PAGE: &str = "docs/book/src/configuration.md";

/// The probe key: no table has it.
const PROBE: &str = "zz_probe";

/// A small valid configuration every probe starts from (nothing in it reads a file or the network).
const BASE: &str = r#"
[server]
listen = "127.0.0.1:1"
[admin]
listen = "127.0.0.1:2"
[[clients.haptik]]
name = "c"
client_id = "cid"
token = "t"
[[backends]]
name = "b"
dialect = "csml"
url = "http://127.0.0.1:3/api/chat"
api_key = "k"
api_secret = "s"
[[routes]]
name = "r"
path = "/chat"
ingress = "haptik"
backend = "b"
"#;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `t[name]` as a table, made when missing.
fn sub<'a>(t: &'a mut Table, name: &str) -> &'a mut Table {
    let v = t
        .entry(name.to_owned())
        .or_insert_with(|| Value::Table(Table::new()));
    match v {
        Value::Table(inner) => inner,
        other => panic!("`{name}` is not a table: {other:?}"),
    }
}

/// The last table of the array of tables `t[name]`, one made when the array is empty or missing.
fn last<'a>(t: &'a mut Table, name: &str) -> &'a mut Table {
    let v = t
        .entry(name.to_owned())
        .or_insert_with(|| Value::Array(Vec::new()));
    let Value::Array(items) = v else {
        panic!("`{name}` is not an array of tables")
    };
    if items.is_empty() {
        items.push(Value::Table(Table::new()));
    }
    match items.last_mut() {
        Some(Value::Table(inner)) => inner,
        _ => panic!("`{name}` is not an array of tables"),
    }
}

/// A new table at the end of the array of tables `t[name]`.
fn push<'a>(t: &'a mut Table, name: &str) -> &'a mut Table {
    let v = t
        .entry(name.to_owned())
        .or_insert_with(|| Value::Array(Vec::new()));
    let Value::Array(items) = v else {
        panic!("`{name}` is not an array of tables")
    };
    items.push(Value::Table(Table::new()));
    match items.last_mut() {
        Some(Value::Table(inner)) => inner,
        _ => unreachable!(),
    }
}

/// The keys serde names in an ``unknown field `zz_probe`, expected …`` refusal (``one of `a`, `b` ``,
/// `` `a` or `b` ``, `` `a` ``, or `there are no fields`).
fn expected_keys(problem: &str) -> Option<BTreeSet<String>> {
    let at = problem.find(&format!("unknown field `{PROBE}`"))?;
    let rest = &problem[at + PROBE.len() + 16..];
    if rest.starts_with(", there are no fields") {
        return Some(BTreeSet::new());
    }
    let list = rest.strip_prefix(", expected ")?;
    let list = list.split(['\n', '(']).next().unwrap_or_default();
    Some(code_spans(list).into_iter().collect())
}

/// The text between each pair of backticks.
fn code_spans(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// Puts `zz_probe` in the table `place` picks and returns the keys the parser's refusal lists.
fn probe(id: &str, place: impl FnOnce(&mut Table) -> &mut Table) -> BTreeSet<String> {
    let mut t: Table = toml::from_str(BASE).expect("the probe base is TOML");
    place(&mut t).insert(PROBE.to_owned(), Value::String("x".into()));
    let text = toml::to_string(&t).expect("a table serializes");
    let e = match config::parse(&text) {
        Ok(_) => panic!("{id}: the parser took `{PROBE}`; ask this table another way\n{text}"),
        Err(e) => e,
    };
    expected_keys(&e.problem).unwrap_or_else(|| {
        panic!(
            "{id}: the parser did not refuse `{PROBE}` by listing the keys it takes: {e}\n{text}"
        )
    })
}

/// Every lowercase word of the proxy's sources (`src/`, `core/src/`): the candidate keys of the
/// tables that cannot list theirs.
fn source_words() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for w in text
                    .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                {
                    if w.starts_with(|c: char| c.is_ascii_lowercase()) {
                        out.insert(w.to_owned());
                    }
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    for dir in ["src", "core/src"] {
        walk(&root().join(dir), &mut out);
    }
    out
}

/// Whether a refusal says the parser does not take `key` there (rather than disliking its value or
/// missing another key).
fn refuses(e: &ConfigError, key: &str) -> bool {
    e.problem.contains(&format!("unknown field `{key}`")) || e.problem.contains("not used by")
}

/// `[[clients.<dialect>]]` holding one table, through the validation the loader runs.
fn clients_with(dialect: &str, entry: Table) -> Result<(), ConfigError> {
    let mut t = Table::new();
    t.insert(dialect.to_owned(), Value::Array(vec![Value::Table(entry)]));
    let raw: RawClients = Value::Table(t)
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::new("clients", e.to_string()))?;
    config::clients::validate(raw).map(|_| ())
}

/// Values of several types: a key is taken when the parser refuses none of them as unknown.
fn trial_values() -> [Value; 3] {
    [
        Value::String("zz-value".into()),
        Value::Integer(1),
        Value::Array(Vec::new()),
    ]
}

/// What the parser accepts: the top-level tables, and each table's keys by its section id on the page.
struct Accepted {
    top: BTreeSet<String>,
    tables: BTreeMap<String, BTreeSet<String>>,
}

fn accepted() -> &'static Accepted {
    static ACCEPTED: OnceLock<Accepted> = OnceLock::new();
    ACCEPTED.get_or_init(ask_the_parser)
}

fn ask_the_parser() -> Accepted {
    let mut tables = BTreeMap::new();
    let mut add = |id: &str, keys: BTreeSet<String>| {
        assert!(
            tables.insert(id.to_owned(), keys).is_none(),
            "{id} asked twice"
        );
    };

    let top = probe("the root", |t| t);

    // The tables that list their keys.
    add("[server]", probe("[server]", |t| sub(t, "server")));
    add(
        "[server.tls]",
        probe("[server.tls]", |t| sub(sub(t, "server"), "tls")),
    );
    add("[admin]", probe("[admin]", |t| sub(t, "admin")));
    add("[log]", probe("[log]", |t| sub(t, "log")));
    add("[demo]", probe("[demo]", |t| sub(t, "demo")));
    add(
        "[auth_service]",
        probe("[auth_service]", |t| sub(t, "auth_service")),
    );
    add("[dns]", probe("[dns]", |t| sub(t, "dns")));
    add("[delivery]", probe("[delivery]", |t| sub(t, "delivery")));
    add("[[routes]]", probe("[[routes]]", |t| last(t, "routes")));
    add(
        "[[routes.businesses]]",
        probe("[[routes.businesses]]", |t| {
            push(last(t, "routes"), "businesses")
        }),
    );
    add(
        "[routes.shadow]",
        probe("[routes.shadow]", |t| sub(last(t, "routes"), "shadow")),
    );
    add(
        "[routes.canary]",
        probe("[routes.canary]", |t| sub(last(t, "routes"), "canary")),
    );
    add("[limits]", probe("[limits]", |t| sub(t, "limits")));
    add(
        "{ requests, per_seconds, burst }",
        probe("the rate limit form", |t| {
            sub(sub(t, "limits"), "rate_limit")
        }),
    );
    add(
        "{ env }",
        probe("the secret form", |t| sub(sub(t, "admin"), "token")),
    );
    add("[redis]", probe("[redis]", |t| sub(t, "redis")));
    for feature in ["limits", "replay_guard", "conversations", "deliveries"] {
        let id = format!("[redis.{feature}]");
        add(&id, probe(&id, |t| sub(sub(t, "redis"), feature)));
    }
    add(
        "[conversations]",
        probe("[conversations]", |t| sub(t, "conversations")),
    );
    add("[migration]", probe("[migration]", |t| sub(t, "migration")));
    add("[tracing]", probe("[tracing]", |t| sub(t, "tracing")));
    for part in ["health", "outlier", "breaker"] {
        let id = format!("[backends.{part}]");
        add(&id, probe(&id, |t| sub(last(t, "backends"), part)));
    }

    let mut candidates = source_words();
    candidates.extend(
        sections(&read_page())
            .values()
            .flat_map(|s| s.keys.iter().cloned()),
    );

    // `[[backends]]`: the keys every dialect shares are the ones not flattened into the settings.
    let backend = |extra: Option<(&str, Value)>| -> Result<RawBackend, toml::de::Error> {
        let mut t = Table::new();
        t.insert("name".into(), Value::String("b".into()));
        t.insert("dialect".into(), Value::String("csml".into()));
        if let Some((k, v)) = extra {
            t.insert(k.to_owned(), v);
        }
        Value::Table(t).try_into()
    };
    let plain = backend(None).expect("a backend with a name and a dialect deserializes");
    assert!(
        plain.settings.is_empty(),
        "`name` and `dialect` are shared keys"
    );
    let mut shared: BTreeSet<String> = ["name", "dialect"].map(String::from).into();
    for k in &candidates {
        if shared.contains(k) {
            continue;
        }
        let flattened = trial_values().into_iter().all(|v| {
            backend(Some((k.as_str(), v))).is_ok_and(|b| b.settings.contains_key(k.as_str()))
        });
        if !flattened {
            shared.insert(k.clone());
        }
    }
    add("[[backends]]", shared);

    // Each bot dialect's own keys: those `backends::validate` lets through to the dialect.
    for name in registry::bot_names() {
        let dialect = registry::bot_dialect(name).expect("a listed dialect");
        let keys = BotDialect::keys(dialect).iter().map(|k| k.to_string());
        add(&format!("dialect = \"{name}\""), keys.collect());
    }

    // `[clients]`: its own keys are the ones not taken for a dialect's array of tables.
    let mut clients_keys = BTreeSet::new();
    for k in &candidates {
        let mut t = Table::new();
        t.insert(k.clone(), Value::Array(Vec::new()));
        let raw: Result<RawClients, _> = Value::Table(t).try_into();
        if !raw.is_ok_and(|r| r.by_dialect.contains_key(k.as_str())) {
            clients_keys.insert(k.clone());
        }
    }
    add("[clients]", clients_keys);

    // `[[clients.<dialect>]]`: the dialect's own keys (its struct lists them), and the keys every
    // caller table shares, found once and then tried on each dialect (one may refuse one of them).
    let callers = registry::caller_names();
    let own: BTreeMap<&str, BTreeSet<String>> = callers
        .iter()
        .map(|&name| {
            let id = format!("[[clients.{name}]]");
            let keys = probe(&id, |t| {
                let entry = push(sub(t, "clients"), name);
                entry.insert("name".into(), Value::String("probe".into()));
                entry
            });
            (name, keys)
        })
        .collect();
    let takes = |dialect: &str, k: &str| {
        trial_values().into_iter().all(|v| {
            let mut entry = Table::new();
            entry.insert("name".into(), Value::String("probe".into()));
            entry.insert(k.to_owned(), v);
            !clients_with(dialect, entry).is_err_and(|e| refuses(&e, k))
        })
    };
    let first = callers[0];
    let mut common: BTreeSet<String> = ["name".to_owned()].into();
    for k in &candidates {
        if k != "name" && !own[first].contains(k) && takes(first, k) {
            common.insert(k.clone());
        }
    }
    for &name in &callers {
        let mut keys = own[name].clone();
        keys.extend(common.iter().filter(|k| takes(name, k)).cloned());
        add(&format!("[[clients.{name}]]"), keys);
    }

    Accepted { top, tables }
}

/// One section of the page: the keys in the first column of its first table, and each row's
/// "on reload" cell.
#[derive(Debug, Default)]
struct Section {
    keys: BTreeSet<String>,
    /// (the row's keys as written, its "on reload" cell); `None` when the table has no such column.
    reload: Vec<(String, Option<String>)>,
}

fn read_page() -> String {
    std::fs::read_to_string(root().join(PAGE)).unwrap_or_else(|e| panic!("{PAGE}: {e}"))
}

/// The cells of a table row (`\|` inside a cell is not a border).
fn cells(row: &str) -> Vec<String> {
    let row = row.trim().trim_start_matches('|').trim_end_matches('|');
    let mut out = vec![String::new()];
    let mut chars = row.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                out.last_mut().unwrap().push('|');
                chars.next();
            }
            '|' => out.push(String::new()),
            c => out.last_mut().unwrap().push(c),
        }
    }
    out.into_iter().map(|c| c.trim().to_owned()).collect()
}

fn is_key(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// The page's sections by id: a heading's first code span (`` ### `[server]` ``), with the first
/// table under it (before the next heading). Fenced code is skipped.
fn sections(page: &str) -> BTreeMap<String, Section> {
    let mut out: BTreeMap<String, Section> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut in_fence = false;
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut table_done = false;
    let finish =
        |id: &Option<String>, rows: &mut Vec<Vec<String>>, out: &mut BTreeMap<String, Section>| {
            let Some(id) = id else {
                rows.clear();
                return;
            };
            let section = out.entry(id.clone()).or_default();
            if rows.len() > 2 {
                let header: Vec<String> = rows[0].iter().map(|c| c.to_lowercase()).collect();
                let reload_at = header.iter().position(|c| c.contains("reload"));
                for row in &rows[2..] {
                    let first = row.first().cloned().unwrap_or_default();
                    section
                        .keys
                        .extend(code_spans(&first).into_iter().filter(|s| is_key(s)));
                    let reload = reload_at.map(|i| row.get(i).cloned().unwrap_or_default());
                    section.reload.push((first, reload));
                }
            }
            rows.clear();
        };
    for line in page.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        if line.starts_with('#') {
            finish(&current, &mut rows, &mut out);
            current = code_spans(line).into_iter().next();
            if let Some(id) = &current {
                assert!(
                    !(names_a_table(id) && out.contains_key(id)),
                    "{PAGE}: two sections are headed `{id}`"
                );
                out.entry(id.clone()).or_default();
            }
            table_done = false;
            continue;
        }
        if table_done {
            continue;
        }
        if line.trim_start().starts_with('|') {
            rows.push(cells(line));
        } else if !rows.is_empty() {
            finish(&current, &mut rows, &mut out);
            table_done = true;
        }
    }
    finish(&current, &mut rows, &mut out);
    out
}

/// Whether a section id names a table or form of `proxy.toml` (not some other heading of the page).
fn names_a_table(id: &str) -> bool {
    id.starts_with('[') || id.starts_with("dialect = ") || id.starts_with('{')
}

/// Everything the page and the parser disagree on, one line each.
fn disagreements(page: &str) -> Vec<String> {
    let accepted = accepted();
    let sections = sections(page);
    let mut problems = Vec::new();

    for table in &accepted.top {
        let ids = [format!("[{table}]"), format!("[[{table}]]")];
        if !ids.iter().any(|id| sections.contains_key(id)) {
            problems.push(format!(
                "the parser takes a top-level `{table}`: the page has no section headed `[{table}]` or `[[{table}]]`"
            ));
        }
    }
    for (id, section) in &sections {
        if !names_a_table(id) {
            continue;
        }
        let Some(keys) = accepted.tables.get(id) else {
            problems.push(format!(
                "the page has a section `{id}`, a table this test does not ask the parser about (or that does not exist)"
            ));
            continue;
        };
        if section.reload.is_empty() {
            problems.push(format!("`{id}`: no table of keys under the heading"));
        }
        for (row, reload) in &section.reload {
            match reload {
                None => {
                    problems.push(format!("`{id}`: the table has no \"on reload\" column"));
                    break;
                }
                Some(cell) if !cell.contains("applied") && !cell.contains("restart") => problems
                    .push(format!(
                        "`{id}` {row}: the \"on reload\" cell says neither \"applied\" nor \"restart\""
                    )),
                Some(_) => {}
            }
        }
        for k in keys.difference(&section.keys) {
            problems.push(format!(
                "`{id}`: the parser takes `{k}`, the page does not list it"
            ));
        }
        for k in section.keys.difference(keys) {
            problems.push(format!(
                "`{id}`: the page lists `{k}`, the parser does not take it"
            ));
        }
    }
    for id in accepted.tables.keys() {
        if !sections.contains_key(id) {
            problems.push(format!("the page has no section headed `{id}`"));
        }
    }
    problems
}

#[test]
fn the_reference_lists_exactly_the_keys_the_parser_takes() {
    let problems = disagreements(&read_page());
    assert!(
        problems.is_empty(),
        "{PAGE} and the parser disagree:\n{}",
        problems.join("\n")
    );
}

#[test]
fn every_top_level_table_is_asked_about() {
    let accepted = accepted();
    assert!(accepted.top.contains("server") && accepted.top.contains("redis"));
    for table in &accepted.top {
        let asked = accepted
            .tables
            .keys()
            .any(|id| *id == format!("[{table}]") || *id == format!("[[{table}]]"));
        assert!(asked, "top-level `{table}` is not asked about here");
    }
}

/// The check itself: a row taken off the page, or a key the parser lacks added to it, is caught.
#[test]
fn a_missing_or_made_up_key_is_caught() {
    let page = read_page();
    let without: String = page
        .lines()
        .filter(|l| !l.starts_with("| `wait_replicas` |"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(without, page, "the page has a `wait_replicas` row");
    let problems = disagreements(&without);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("[redis.deliveries]") && p.contains("`wait_replicas`")),
        "{problems:?}"
    );

    let made_up = page.replacen(
        "| `threads` |",
        "| `zz_made_up` | 1 | restart | nothing |\n| `threads` |",
        1,
    );
    assert_ne!(made_up, page, "the page has a `threads` row");
    let problems = disagreements(&made_up);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("[server]") && p.contains("`zz_made_up`")),
        "{problems:?}"
    );
}
