//! Credential headers: Haptik's bearer token and client id, CSML's `x-api-key` (`KEY|TS`, split by
//! `signing::split_key`) and signature, a bare token from `Authorization` or `?token=`, an AWS
//! SigV4 `Authorization` (Lex), and each caller dialect's detection and credential reading over
//! them.
//!
//! The input is a header block, one `name: value` per line (names compared in lowercase); a line
//! starting with `?` is the query string.
#![no_main]

use botbridge::auth::{self, Presented};
use botbridge::dialect::{callers, RequestHead};
use botbridge::signing::{split_key, HmacKey};
use libfuzzer_sys::fuzz_target;

struct Head<'a> {
    headers: Vec<(String, &'a [u8])>,
    query: Option<&'a str>,
}

impl RequestHead for Head<'_> {
    fn method(&self) -> &str {
        "POST"
    }
    fn path(&self) -> &str {
        "/"
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }
    fn query(&self) -> Option<&str> {
        self.query
    }
}

fn head(data: &[u8]) -> Head<'_> {
    let mut h = Head {
        headers: Vec::new(),
        query: None,
    };
    for line in data.split(|&b| b == b'\n') {
        if let Some(q) = line.strip_prefix(b"?") {
            h.query = std::str::from_utf8(q).ok();
        } else if let Some(colon) = line.iter().position(|&b| b == b':') {
            let name = String::from_utf8_lossy(&line[..colon]).to_ascii_lowercase();
            h.headers.push((name, line[colon + 1..].trim_ascii_start()));
        }
    }
    h
}

/// `part` is a non-empty slice of `whole` with no surrounding whitespace.
fn trimmed_part_of(part: &[u8], whole: &[u8]) {
    assert!(!part.is_empty());
    assert_eq!(part, part.trim_ascii(), "untrimmed");
    assert!(
        whole.windows(part.len()).any(|w| w == part),
        "not from the header"
    );
}

fn check_split_key(api_key: &[u8]) {
    if let Some((key, ts)) = split_key(api_key) {
        assert!(!key.is_empty());
        let digits = &api_key[key.len() + 1..];
        assert_eq!(api_key[key.len()], b'|');
        assert!(digits.len() <= 12 && digits.iter().all(u8::is_ascii_digit));
        assert_eq!(
            std::str::from_utf8(digits).unwrap().parse::<u64>().unwrap(),
            ts
        );
    }
}

/// A key signed by the proxy's own signer verifies; any presented signature verifies without panic.
fn check_csml(p: &auth::ApiKeyPresented<'_>) {
    // The header is trimmed; the key before `|TS` is kept as sent (a space there is part of it).
    assert_eq!(p.api_key, p.api_key.trim_ascii(), "untrimmed");
    assert!(!p.key.is_empty() && p.api_key.starts_with(p.key));
    let Ok(key) = std::str::from_utf8(p.key) else {
        return;
    };
    let k = HmacKey::new(key, b"fuzz-secret");
    for now in [0, p.timestamp.unwrap_or(0), u64::MAX] {
        let _ = k.verify(p.api_key, p.signature, now, 300);
    }
    if let Some(ts) = p.timestamp {
        let signed = k.sign(ts);
        let ok = k.verify(
            signed.api_key.as_bytes(),
            Some(signed.signature.as_bytes()),
            ts,
            0,
        );
        assert_eq!(ok, Ok(()), "the proxy's own signature does not verify");
    }
}

fuzz_target!(|data: &[u8]| {
    let h = head(data);
    let header = |name: &str| h.header(name);
    if let Some(v) = h.header("x-api-key") {
        check_split_key(v);
    }
    if let Ok(p) = botbridge::dialect::haptik::presented(header) {
        let id = h
            .header("client-id")
            .or_else(|| h.header("client_id"))
            .unwrap();
        trimmed_part_of(p.client_id, id);
        trimmed_part_of(p.token, h.header("authorization").unwrap());
    }
    if let Ok(p) = botbridge::dialect::csml::presented(header) {
        check_csml(&p);
    }
    if let Ok(p) = auth::token_presented("rasa", h.header("authorization"), h.query) {
        assert!(!p.token.is_empty());
    }
    for c in callers() {
        let _ = c.detect(&h);
        let _ = c.detect_body(data);
        match c.credential(&h) {
            Ok(Presented::ApiKey(p)) => check_csml(&p),
            Ok(_) => {}
            Err(d) => botbridge_fuzz::check_error(&d.error),
        }
    }
});
