//! A JSON reader for the bot answers read on every request, in one pass over borrowed text: each
//! step returns `None` for anything it does not take in exactly the way serde_json would (invalid
//! JSON, a duplicate key, a value of another type, escapes it leaves to serde_json), and the caller
//! then reads the body with serde_json, which words the error. So it never accepts what serde_json
//! refuses, and what it accepts reads the same (the dialects' tests and fuzz targets read every
//! answer both ways and compare).
//!
//! Why not serde_json alone: on the translating path its reading of the 600-byte CSML answer was 15k
//! of 81k instructions per request (callgrind, `bench/callgrind.sh`), most of it per-key and
//! per-value overhead of the visitor machinery, not the bytes.

use std::borrow::Cow;

use crate::dialect::json_out::next_to_escape;

/// Deeper than this, the reader gives up (serde_json's own limit is 128).
const MAX_DEPTH: u32 = 64;

pub(crate) struct JsonIn<'a> {
    text: &'a str,
    at: usize,
    depth: u32,
}

impl<'a> JsonIn<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        Self {
            text,
            at: 0,
            depth: 0,
        }
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    /// The next byte that is not JSON whitespace, not consumed.
    pub(crate) fn peek(&mut self) -> Option<u8> {
        while let Some(&b) = self.bytes().get(self.at) {
            if !matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
                return Some(b);
            }
            self.at += 1;
        }
        None
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// Whether the next value is `null` (consumed if so).
    pub(crate) fn null(&mut self) -> bool {
        self.peek() == Some(b'n') && self.literal("null").is_some()
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        let rest = self.bytes().get(self.at..)?;
        rest.starts_with(word.as_bytes())
            .then(|| self.at += word.len())
    }

    pub(crate) fn bool(&mut self) -> Option<bool> {
        match self.peek()? {
            b't' => self.literal("true").map(|_| true),
            b'f' => self.literal("false").map(|_| false),
            _ => None,
        }
    }

    /// A string: borrowed from the text when it has no escapes, else unescaped by serde_json.
    pub(crate) fn string(&mut self) -> Option<Cow<'a, str>> {
        self.eat(b'"')?;
        let start = self.at;
        let bytes = self.bytes();
        self.at = next_to_escape(bytes, self.at);
        match *bytes.get(self.at)? {
            b'"' => {
                self.at += 1;
                Some(Cow::Borrowed(&self.text[start..self.at - 1]))
            }
            b'\\' => self.escaped_string(start),
            _ => None, // a control character
        }
    }

    /// The rest of a string with escapes, from its first byte after the quote at `start - 1`.
    fn escaped_string(&mut self, start: usize) -> Option<Cow<'a, str>> {
        let bytes = self.bytes();
        loop {
            match *bytes.get(self.at)? {
                b'\\' => self.at += 2,
                b'"' => break,
                0x00..=0x1f => return None,
                _ => self.at += 1,
            }
        }
        self.at += 1;
        let quoted = self.text.get(start - 1..self.at)?;
        serde_json::from_str::<String>(quoted).ok().map(Cow::Owned)
    }

    /// The members of an object, each key handed to `member`, which must read its value.
    pub(crate) fn object(
        &mut self,
        mut member: impl FnMut(&mut Self, &str) -> Option<()>,
    ) -> Option<()> {
        self.eat(b'{')?;
        self.nest()?;
        if self.eat(b'}').is_none() {
            loop {
                let key = self.string()?;
                self.eat(b':')?;
                member(self, &key)?;
                match self.peek()? {
                    b',' => self.at += 1,
                    b'}' => {
                        self.at += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        self.depth -= 1;
        Some(())
    }

    /// The items of an array, each read by `item`.
    pub(crate) fn array(&mut self, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.eat(b'[')?;
        self.nest()?;
        if self.eat(b']').is_none() {
            loop {
                item(self)?;
                match self.peek()? {
                    b',' => self.at += 1,
                    b']' => {
                        self.at += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        self.depth -= 1;
        Some(())
    }

    fn nest(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth <= MAX_DEPTH).then_some(())
    }

    /// Any one JSON value, checked and passed over.
    pub(crate) fn skip(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => self.object(|json, _| json.skip()),
            b'[' => self.array(Self::skip),
            b't' | b'f' => self.bool().map(drop),
            b'n' => self.null().then_some(()),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    /// Any one JSON value, checked and passed over; its text.
    pub(crate) fn skip_raw(&mut self) -> Option<&'a str> {
        self.peek()?;
        let from = self.at;
        self.skip()?;
        Some(&self.text[from..self.at])
    }

    /// A number in JSON's grammar: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn number(&mut self) -> Option<()> {
        let bytes = self.bytes();
        if bytes.get(self.at) == Some(&b'-') {
            self.at += 1;
        }
        match bytes.get(self.at)? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if bytes.get(self.at) == Some(&b'.') {
            self.at += 1;
            self.some_digits()?;
        }
        if matches!(bytes.get(self.at), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(bytes.get(self.at), Some(b'+' | b'-')) {
                self.at += 1;
            }
            self.some_digits()?;
        }
        Some(())
    }

    fn digits(&mut self) {
        while self.bytes().get(self.at).is_some_and(u8::is_ascii_digit) {
            self.at += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let from = self.at;
        self.digits();
        (self.at > from).then_some(())
    }

    /// Only whitespace is left.
    pub(crate) fn end(&mut self) -> Option<()> {
        self.peek().is_none().then_some(())
    }
}

/// Sets `slot` once: a key seen twice is a duplicate field to serde, so the reading gives up.
pub(crate) fn once<T>(slot: &mut Option<T>, value: Option<T>) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value?);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the reader takes `text` as one JSON value, as serde_json does.
    fn takes(text: &str) -> bool {
        let mut json = JsonIn::new(text);
        json.skip().and_then(|_| json.end()).is_some()
    }

    #[test]
    fn takes_the_values_serde_json_takes() {
        for good in [
            "0",
            "-0",
            "12.5e-3",
            "1E+2",
            "-7",
            "true",
            "false",
            "null",
            r#""""#,
            r#""a\"b\\c\n\u00e9\ud83d\ude00""#,
            " [ 1 , { \"a\" : [ ] , \"b\" : { } } , \"x\" ] ",
            r#"{"a":{"a":1},"a":2}"#,
            "\"é🙂 and more than eight bytes\"",
        ] {
            assert!(takes(good), "{good}");
            assert!(serde_json::from_str::<serde::de::IgnoredAny>(good).is_ok());
        }
    }

    #[test]
    fn refuses_what_serde_json_refuses() {
        for bad in [
            "",
            "01",
            "1.",
            ".5",
            "-",
            "1e",
            "+1",
            "tru",
            "nul",
            "[1,]",
            "{\"a\":1,}",
            "{\"a\"}",
            "{a:1}",
            "[1 2]",
            "\"\t\"",
            "\"abc",
            "\"\\x\"",
            "\"\\u12\"",
            "1 2",
            "[",
            "{",
            "\"\\",
            "'a'",
            "NaN",
        ] {
            assert!(!takes(bad), "{bad:?}");
            assert!(
                serde_json::from_str::<serde::de::IgnoredAny>(bad).is_err(),
                "{bad:?}"
            );
        }
        let deep = "[".repeat(100) + &"]".repeat(100);
        assert!(!takes(&deep), "too deep: left to serde_json");
    }

    #[test]
    fn strings_borrow_unless_escaped() {
        let text = r#"["plain text longer than a word", "esc\"aped", "a\u0041"]"#;
        let mut json = JsonIn::new(text);
        let mut got = Vec::new();
        json.array(|j| {
            got.push(j.string()?);
            Some(())
        })
        .unwrap();
        assert!(matches!(
            got[0],
            Cow::Borrowed("plain text longer than a word")
        ));
        assert_eq!(got[1], "esc\"aped");
        assert!(matches!(got[1], Cow::Owned(_)));
        assert_eq!(got[2], "aA");
    }

    #[test]
    fn a_key_twice_is_given_up() {
        let mut slot = None;
        assert!(once(&mut slot, Some(1)).is_some());
        assert!(once(&mut slot, Some(2)).is_none());
        assert_eq!(slot, Some(1));
    }
}
