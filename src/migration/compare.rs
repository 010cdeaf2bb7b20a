//! Comparing two bots' answers to the same request, message by message, in the canonical model.
//!
//! Pure: two [`ChatAnswer`]s (or the shadow's failure) in, a [`Comparison`] out. Messages are paired
//! by position. Text is compared exactly and normalised (case, whitespace and punctuation ignored);
//! buttons as sets of (title, payload); media and links by URL. The verdict names the most structural
//! difference found: `count_differs`, then `kinds_differ`, `buttons_differ`, `text_differs`.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::model::{Button, ChatAnswer, MediaKind, Reply};

/// The verdict on one pair of answers, as a bounded label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The same messages, text equal at least once normalised.
    Match,
    /// Same count and kinds; a text, a link or a media URL differs.
    TextDiffers,
    /// Same count; some message is of another kind.
    KindsDiffer,
    /// Same count and kinds; a message offers other buttons (titles or payloads).
    ButtonsDiffer,
    /// Not as many messages.
    CountDiffers,
    /// The shadow gave no usable answer (could not be translated, reached, or read).
    ShadowError,
}

impl Verdict {
    /// Every verdict, in the order reports list them.
    pub const ALL: [Verdict; 6] = [
        Verdict::Match,
        Verdict::TextDiffers,
        Verdict::ButtonsDiffer,
        Verdict::KindsDiffer,
        Verdict::CountDiffers,
        Verdict::ShadowError,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Match => "match",
            Verdict::TextDiffers => "text_differs",
            Verdict::KindsDiffer => "kinds_differ",
            Verdict::ButtonsDiffer => "buttons_differ",
            Verdict::CountDiffers => "count_differs",
            Verdict::ShadowError => "shadow_error",
        }
    }
}

/// The kinds of message the per-kind breakdown counts.
pub const KINDS: [&str; 8] = [
    "text", "question", "button", "url", "image", "video", "audio", "file",
];

/// A message's kind label.
pub fn kind(reply: &Reply<'_>) -> &'static str {
    match reply {
        Reply::Text(_) => "text",
        Reply::Question { .. } => "question",
        Reply::Button(_) => "button",
        Reply::Url { .. } => "url",
        Reply::Media { kind, .. } => media_kind(*kind),
    }
}

fn media_kind(k: MediaKind) -> &'static str {
    match k {
        MediaKind::Image => "image",
        MediaKind::Video => "video",
        MediaKind::Audio => "audio",
        MediaKind::File => "file",
    }
}

/// How one pair of messages (same position) compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageDiff {
    Same,
    /// Equal only once normalised.
    SameNormalised,
    Text,
    Buttons,
    Kind,
    /// One side has no message at this position.
    Missing,
}

/// The outcome of comparing two answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comparison {
    pub verdict: Verdict,
    /// Whether every text was byte-identical (false for a match only once normalised).
    pub exact: bool,
    /// Per position: the primary's message kind (the shadow's where the primary has none) and
    /// whether the pair differs.
    pub messages: Vec<(&'static str, bool)>,
}

/// Compares the primary's answer with the shadow's (`None`: the shadow gave none).
pub fn compare(primary: &ChatAnswer<'_>, shadow: Option<&ChatAnswer<'_>>) -> Comparison {
    let Some(shadow) = shadow else {
        return Comparison {
            verdict: Verdict::ShadowError,
            exact: false,
            messages: Vec::new(),
        };
    };
    let (p, s) = (&primary.replies, &shadow.replies);
    let diffs: Vec<(&'static str, MessageDiff)> = (0..p.len().max(s.len()))
        .map(|i| match (p.get(i), s.get(i)) {
            (Some(a), Some(b)) => (kind(a), message_diff(a, b)),
            (Some(a), None) | (None, Some(a)) => (kind(a), MessageDiff::Missing),
            (None, None) => unreachable!("i is below the longer length"),
        })
        .collect();
    let has = |d: MessageDiff| diffs.iter().any(|(_, x)| *x == d);
    let verdict = if p.len() != s.len() {
        Verdict::CountDiffers
    } else if has(MessageDiff::Kind) {
        Verdict::KindsDiffer
    } else if has(MessageDiff::Buttons) {
        Verdict::ButtonsDiffer
    } else if has(MessageDiff::Text) {
        Verdict::TextDiffers
    } else {
        Verdict::Match
    };
    Comparison {
        verdict,
        exact: verdict == Verdict::Match && !has(MessageDiff::SameNormalised),
        messages: diffs
            .iter()
            .map(|&(k, d)| {
                (
                    k,
                    !matches!(d, MessageDiff::Same | MessageDiff::SameNormalised),
                )
            })
            .collect(),
    }
}

/// How two messages at the same position compare: kind first, then buttons, then texts and URLs.
pub fn message_diff(a: &Reply<'_>, b: &Reply<'_>) -> MessageDiff {
    if kind(a) != kind(b) {
        return MessageDiff::Kind;
    }
    let buttons_a = buttons(a);
    if buttons_a != buttons(b) {
        return MessageDiff::Buttons;
    }
    let (ta, tb) = (texts(a), texts(b));
    if ta == tb {
        MessageDiff::Same
    } else if ta
        .iter()
        .map(|t| normalise(t))
        .eq(tb.iter().map(|t| normalise(t)))
    {
        MessageDiff::SameNormalised
    } else {
        MessageDiff::Text
    }
}

/// A message's buttons as a set of normalised (title, payload) pairs.
fn buttons(r: &Reply<'_>) -> BTreeSet<(String, String)> {
    let pair = |b: &Button<'_>| (normalise(&b.title), b.payload_or_title().to_owned());
    match r {
        Reply::Question { buttons, .. } => buttons.iter().map(pair).collect(),
        Reply::Button(b) => std::iter::once(pair(b)).collect(),
        _ => BTreeSet::new(),
    }
}

/// A message's texts and URLs, in a fixed order (absent parts as empty strings).
fn texts<'r>(r: &'r Reply<'_>) -> Vec<&'r str> {
    match r {
        Reply::Text(t) => vec![t],
        Reply::Question { title, .. } => vec![title],
        Reply::Button(_) => Vec::new(),
        Reply::Url { url, text, title } => vec![
            url,
            text.as_deref().unwrap_or(""),
            title.as_deref().unwrap_or(""),
        ],
        Reply::Media { url, .. } => vec![url],
    }
}

/// Text with case, punctuation and runs of whitespace ignored: `Hello,  World!` and `hello world`
/// are equal, and so are `can't` and `cant`. Punctuation is ASCII's and the common typographic marks
/// (curly quotes, dashes, ellipsis, inverted marks); emoji and other symbols still count.
pub fn normalise(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut space = false;
    for c in text.chars() {
        if c.is_whitespace() {
            space = !out.is_empty();
        } else if !is_punctuation(c) {
            if space {
                out.push(' ');
                space = false;
            }
            out.extend(c.to_lowercase());
        }
    }
    out
}

fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation()
        || matches!(
            c,
            '¿' | '¡' | '…' | '‘' | '’' | '“' | '”' | '«' | '»' | '–' | '—' | '·'
        )
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    fn text(t: &str) -> Reply<'_> {
        Reply::Text(Cow::Borrowed(t))
    }

    fn question<'a>(title: &'a str, buttons: &[(&'a str, &'a str)]) -> Reply<'a> {
        Reply::Question {
            title: Cow::Borrowed(title),
            buttons: buttons
                .iter()
                .map(|(t, p)| Button {
                    title: Cow::Borrowed(*t),
                    payload: Some(Cow::Borrowed(*p)),
                })
                .collect(),
        }
    }

    fn answer(replies: Vec<Reply<'_>>) -> ChatAnswer<'_> {
        ChatAnswer {
            replies,
            ..ChatAnswer::default()
        }
    }

    fn verdict(a: Vec<Reply<'_>>, b: Vec<Reply<'_>>) -> Comparison {
        compare(&answer(a), Some(&answer(b)))
    }

    #[test]
    fn each_verdict_from_its_difference() {
        let q = || question("Sure?", &[("Yes", "YES"), ("No", "NO")]);
        let c = verdict(vec![text("Hi"), q()], vec![text("Hi"), q()]);
        assert_eq!((c.verdict, c.exact), (Verdict::Match, true));
        let c = verdict(vec![text("Hello, World!")], vec![text("hello   world")]);
        assert_eq!((c.verdict, c.exact), (Verdict::Match, false));
        let c = verdict(vec![text("Hi"), q()], vec![text("Bye"), q()]);
        assert_eq!(c.verdict, Verdict::TextDiffers);
        assert_eq!(c.messages, [("text", true), ("question", false)]);
        let reordered = question("Sure?", &[("No", "NO"), ("Yes", "YES")]);
        assert_eq!(verdict(vec![q()], vec![reordered]).verdict, Verdict::Match);
        let other = question("Sure?", &[("Yes", "Y"), ("No", "NO")]);
        assert_eq!(
            verdict(vec![q()], vec![other]).verdict,
            Verdict::ButtonsDiffer
        );
        let c = verdict(vec![text("Hi"), q()], vec![q(), text("Hi")]);
        assert_eq!(c.verdict, Verdict::KindsDiffer);
        let c = verdict(vec![text("Hi")], vec![text("Hi"), q()]);
        assert_eq!(c.verdict, Verdict::CountDiffers);
        assert_eq!(c.messages, [("text", false), ("question", true)]);
        let c = compare(&answer(vec![text("Hi")]), None);
        assert_eq!(c.verdict, Verdict::ShadowError);
    }

    #[test]
    fn media_compare_by_kind_and_url() {
        let media = |kind, url| Reply::Media {
            kind,
            url: Cow::Borrowed(url),
        };
        let a = media(MediaKind::Image, "https://x/a.png");
        let c = verdict(
            vec![a.clone()],
            vec![media(MediaKind::File, "https://x/a.png")],
        );
        assert_eq!(c.verdict, Verdict::KindsDiffer);
        assert_eq!(c.messages, [("image", true)]);
        let c = verdict(
            vec![a.clone()],
            vec![media(MediaKind::Image, "https://x/b.png")],
        );
        assert_eq!(c.verdict, Verdict::TextDiffers);
        assert_eq!(verdict(vec![a.clone()], vec![a]).verdict, Verdict::Match);
    }

    #[test]
    fn normalising_ignores_case_whitespace_and_punctuation_only() {
        assert_eq!(normalise("  Hello,\tWORLD!! "), "hello world");
        assert_eq!(normalise("Ça va?"), "ça va");
        assert_eq!(normalise("can’t"), normalise("Cant!"));
        assert_eq!(normalise("..."), "");
        assert_ne!(normalise("yes 👍"), normalise("yes"));
    }
}
