//! The registry: every dialect by its config name, and the rule that tells a caller's dialect on a
//! route that accepts several. Adding a vendor is one line in each list below.

use std::fmt;

use super::{
    csml, csml_engine, dialogflow, directline, haptik, lex, rasa, BotDialect, CallerDialect,
    Detection, RequestHead,
};

/// What callers may speak, in the order detection asks them.
static CALLERS: &[&dyn CallerDialect] = &[
    &csml::Csml,
    &haptik::Haptik,
    &rasa::Rasa,
    &lex::Lex,
    &dialogflow::Dialogflow,
    &directline::Directline,
];

/// What bots may speak.
static BOTS: &[&dyn BotDialect] = &[
    &csml::Csml,
    &haptik::Haptik,
    &csml_engine::CsmlEngine,
    &rasa::Rasa,
    &lex::Lex,
    &dialogflow::Dialogflow,
    &directline::Directline,
];

/// Handles on the registered caller dialects, for code and tests that name one (checked against
/// [`CALLERS`] by a test).
pub const CSML: Caller = Caller { index: 0 };
pub const HAPTIK: Caller = Caller { index: 1 };
pub const RASA: Caller = Caller { index: 2 };

/// A caller dialect: a copyable handle on a registered [`CallerDialect`].
#[derive(Clone, Copy)]
pub struct Caller {
    index: usize,
}

impl Caller {
    /// The implementation.
    pub fn get(self) -> &'static dyn CallerDialect {
        CALLERS[self.index]
    }
    /// The config name and metric label.
    pub fn as_str(self) -> &'static str {
        self.get().name()
    }
    /// Its position in the registry, for per-dialect arrays.
    pub fn index(self) -> usize {
        self.index
    }
}

impl PartialEq for Caller {
    fn eq(&self, other: &Self) -> bool {
        self.index == other.index
    }
}

impl Eq for Caller {}

impl fmt::Debug for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::ops::Deref for Caller {
    type Target = dyn CallerDialect;
    fn deref(&self) -> &Self::Target {
        self.get()
    }
}

/// Every caller dialect, in detection order.
pub fn callers() -> impl Iterator<Item = Caller> {
    (0..CALLERS.len()).map(|index| Caller { index })
}

/// The caller dialect with this config name.
pub fn caller(name: &str) -> Option<Caller> {
    callers().find(|c| c.as_str() == name)
}

/// The bot dialect with this config name.
pub fn bot_dialect(name: &str) -> Option<&'static dyn BotDialect> {
    BOTS.iter().copied().find(|b| b.name() == name)
}

/// Every bot dialect's name, for error messages.
pub fn bot_names() -> Vec<&'static str> {
    BOTS.iter().map(|b| b.name()).collect()
}

/// Every caller dialect's name, for error messages.
pub fn caller_names() -> Vec<&'static str> {
    callers().map(Caller::as_str).collect()
}

/// The bot dialect (other than `except`) that reads `key`, if any.
pub fn bot_key_owner(key: &str, except: &str) -> Option<&'static str> {
    BOTS.iter()
        .find(|b| b.name() != except && b.keys().contains(&key))
        .map(|b| b.name())
}

/// Which of `accepted` the caller speaks, from the head: the first that is sure, else the first
/// that might be; `None` when no header tells.
pub fn detect_by_head(accepted: &[Caller], head: &dyn RequestHead) -> Option<Caller> {
    let mut maybe = None;
    for &c in accepted {
        match c.detect(head) {
            Detection::Yes => return Some(c),
            Detection::Maybe if maybe.is_none() => maybe = Some(c),
            _ => {}
        }
    }
    maybe
}

/// Which of `accepted` the caller speaks, from the body's shape: the only one it fits.
pub fn detect_by_body(accepted: &[Caller], body: &[u8]) -> Option<Caller> {
    let mut fits = accepted.iter().filter(|c| c.detect_body(body));
    match (fits.next(), fits.next()) {
        (Some(&c), None) => Some(c),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Head<'a>(&'a [(&'a str, &'a str)], Option<&'a str>);

    impl RequestHead for Head<'_> {
        fn method(&self) -> &str {
            "POST"
        }
        fn path(&self) -> &str {
            "/"
        }
        fn header(&self, name: &str) -> Option<&[u8]> {
            self.0
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.as_bytes())
        }
        fn query(&self) -> Option<&str> {
            self.1
        }
    }

    fn auto() -> Vec<Caller> {
        callers().filter(|c| c.in_auto()).collect()
    }

    fn by_head(h: &[(&str, &str)]) -> Option<&'static str> {
        detect_by_head(&auto(), &Head(h, None)).map(Caller::as_str)
    }

    #[test]
    fn detects_each_dialect_and_neither() {
        assert_eq!(by_head(&[("x-api-key", "k")]), Some("csml"));
        assert_eq!(
            by_head(&[("x-api-key", "k"), ("authorization", "Bearer x")]),
            Some("csml")
        );
        assert_eq!(by_head(&[("authorization", "Bearer x")]), Some("haptik"));
        assert_eq!(by_head(&[("authorization", "bearer x")]), Some("haptik"));
        assert_eq!(by_head(&[("authorization", "Basic x")]), None);
        assert_eq!(by_head(&[]), None);
        let haptik = include_bytes!("../../../tests/fixtures/haptik/seed-request.json");
        let csml = include_bytes!("../../../tests/fixtures/csml/seed-request.json");
        let body = |b: &[u8]| detect_by_body(&auto(), b).map(Caller::as_str);
        assert_eq!(body(haptik), Some("haptik"));
        assert_eq!(body(csml), Some("csml"));
        assert_eq!(body(b"{\"hello\":1}"), None);
        assert_eq!(body(b"not json"), None);
    }

    #[test]
    fn named_handles_are_their_dialects() {
        assert_eq!(CSML.as_str(), "csml");
        assert_eq!(HAPTIK.as_str(), "haptik");
        assert_eq!(RASA.as_str(), "rasa");
    }

    #[test]
    fn names_are_unique_and_found() {
        for c in callers() {
            assert_eq!(caller(c.as_str()), Some(c));
        }
        let mut names = bot_names();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), BOTS.len());
        assert!(bot_dialect("klingon").is_none());
    }
}
