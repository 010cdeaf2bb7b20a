//! A JSON writer for the bodies the proxy renders on every request (a Haptik legacy answer, a CSML
//! request): keys and punctuation are literals copied as they are, strings are escaped by scanning
//! eight bytes at a time. The output is byte for byte what serde_json writes for the same values.
//!
//! Why not serde_json here: it escapes every key and string byte by byte through a table, which was
//! 9% of the translating path's instructions (callgrind, `bench/callgrind.sh`: `serialize_str` and
//! `serialize_field` 8.4k of the Haptik answer's 10.3k instructions). Other bodies still use serde.

use serde_json::value::RawValue;

/// A JSON body being written. Callers put the punctuation and keys in with [`JsonOut::raw`]; every
/// value goes through a typed method, so no caller's text is written unescaped.
pub(crate) struct JsonOut {
    buf: Vec<u8>,
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The bytes of `w` (eight, read little-endian) that need escaping in a JSON string, a control
/// character (below 0x20), `"` or `\\`, as the high bit of each (the classic "has a byte less than
/// n / equal to c" word tricks). Borrows can mark a byte above a true one, never below: the lowest
/// mark is always the first byte to escape, and the mask is zero exactly when none is.
#[inline]
pub(crate) fn escape_mask(w: u64) -> u64 {
    let control = w.wrapping_sub(ONES * 0x20) & !w;
    let q = w ^ (ONES * u64::from(b'"'));
    let quote = q.wrapping_sub(ONES) & !q;
    let b = w ^ (ONES * u64::from(b'\\'));
    let backslash = b.wrapping_sub(ONES) & !b;
    (control | quote | backslash) & HIGH
}

/// The offset in `bytes` of the first byte to escape from `at` on, or `bytes.len()`.
#[inline]
pub(crate) fn next_to_escape(bytes: &[u8], mut at: usize) -> usize {
    while let Some(word) = bytes.get(at..at + 8) {
        let mask = escape_mask(u64::from_le_bytes(word.try_into().expect("eight bytes")));
        if mask != 0 {
            return at + (mask.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    while at < bytes.len() && !needs_escape(bytes[at]) {
        at += 1;
    }
    at
}

#[inline]
fn needs_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

/// serde_json's escape for one byte, if it needs one: the short forms, else `\u00XX` in lowercase.
fn escape(byte: u8, out: &mut Vec<u8>) -> bool {
    let short = match byte {
        b'"' => b'"',
        b'\\' => b'\\',
        0x08 => b'b',
        0x0c => b'f',
        b'\n' => b'n',
        b'\r' => b'r',
        b'\t' => b't',
        0x00..=0x1f => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(byte >> 4)]);
            out.push(HEX[usize::from(byte & 0xf)]);
            return true;
        }
        _ => return false,
    };
    out.extend_from_slice(&[b'\\', short]);
    true
}

impl JsonOut {
    pub(crate) fn with_capacity(bytes: usize) -> Self {
        Self {
            buf: Vec::with_capacity(bytes),
        }
    }

    /// JSON text written as it is: punctuation and keys the caller spells out.
    pub(crate) fn raw(&mut self, json: &str) -> &mut Self {
        self.buf.extend_from_slice(json.as_bytes());
        self
    }

    /// A JSON value passed through untouched (a caller's own `metadata`, a bot's own payload).
    pub(crate) fn value(&mut self, raw: &RawValue) -> &mut Self {
        self.raw(raw.get())
    }

    /// A string value, quoted and escaped.
    pub(crate) fn str(&mut self, s: &str) -> &mut Self {
        self.open_str().fragment(s).close_str()
    }

    /// The opening quote of a string written in [`JsonOut::fragment`]s.
    pub(crate) fn open_str(&mut self) -> &mut Self {
        self.buf.push(b'"');
        self
    }

    pub(crate) fn close_str(&mut self) -> &mut Self {
        self.open_str()
    }

    /// Part of a string opened with [`JsonOut::open_str`], escaped.
    pub(crate) fn fragment(&mut self, s: &str) -> &mut Self {
        let bytes = s.as_bytes();
        let mut copied = 0;
        loop {
            let at = next_to_escape(bytes, copied);
            self.buf.extend_from_slice(&bytes[copied..at]);
            let Some(&byte) = bytes.get(at) else {
                return self;
            };
            escape(byte, &mut self.buf);
            copied = at + 1;
        }
    }

    pub(crate) fn u64(&mut self, n: u64) -> &mut Self {
        self.raw(itoa::Buffer::new().format(n))
    }

    pub(crate) fn i64(&mut self, n: i64) -> &mut Self {
        self.raw(itoa::Buffer::new().format(n))
    }

    pub(crate) fn bool(&mut self, b: bool) -> &mut Self {
        self.raw(if b { "true" } else { "false" })
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours(s: &str) -> String {
        let mut out = JsonOut::with_capacity(0);
        out.str(s);
        String::from_utf8(out.finish()).unwrap()
    }

    #[test]
    fn strings_are_escaped_exactly_as_serde_json_escapes_them() {
        // Every byte value that can start a character, at every offset in and across the 8-byte words.
        let mut cases: Vec<String> = (0u8..0x80).map(|b| (b as char).to_string()).collect();
        cases.extend(["é", "日本", "🙂", "\u{7f}", "\u{2028}", ""].map(String::from));
        for base in cases.clone() {
            for pad in 0..17 {
                let s = format!("{}{base}{}", "a".repeat(pad), "b".repeat(17 - pad));
                assert_eq!(ours(&s), serde_json::to_string(&s).unwrap(), "{s:?}");
            }
        }
        let all: String = (0u8..0x80).map(char::from).collect::<String>() + "é\"\\\n";
        assert_eq!(ours(&all), serde_json::to_string(&all).unwrap());
        assert_eq!(
            ours(&all.repeat(3)),
            serde_json::to_string(&all.repeat(3)).unwrap()
        );
    }

    #[test]
    fn the_word_test_finds_the_first_byte_that_needs_escaping_and_no_other() {
        for b in 0u8..=0xff {
            for pos in 0..8 {
                for filler in [b'a', 0x00, b'"', 0xff] {
                    let mut w = [b'a'; 8];
                    w[pos] = b;
                    // Bytes after `pos` may be anything: the first hit must still be found.
                    w[pos + 1..].fill(filler);
                    let first = w.iter().position(|&c| needs_escape(c)).unwrap_or(8);
                    assert_eq!(next_to_escape(&w, 0), first, "{w:?}");
                    assert_eq!(escape_mask(u64::from_le_bytes(w)) == 0, first == 8, "{w:?}");
                }
            }
        }
        let w = [0x20, 0x21, 0x23, 0xff, 0x80, 0x5b, 0x5d, 0x7f, b'"'];
        assert_eq!(next_to_escape(&w, 0), 8);
        assert_eq!(next_to_escape(&w[..8], 0), 8);
    }

    #[test]
    fn values_are_written_as_serde_json_writes_them() {
        let raw: Box<RawValue> = serde_json::from_str(r#"{"a": [1, "x"]}"#).unwrap();
        let mut out = JsonOut::with_capacity(0);
        out.raw("[")
            .u64(u64::MAX)
            .raw(",")
            .i64(i64::MIN)
            .raw(",")
            .bool(true)
            .raw(",")
            .raw("null,")
            .str("q\"")
            .raw(",")
            .value(&raw)
            .raw("]");
        let want =
            serde_json::to_string(&(u64::MAX, i64::MIN, true, None::<&str>, Some("q\""), &raw))
                .unwrap();
        assert_eq!(String::from_utf8(out.finish()).unwrap(), want);
    }
}
