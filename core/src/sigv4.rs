//! AWS Signature Version 4 over a whole HTTP request: signing the proxy's requests to an AWS bot and
//! verifying a caller's (any dialect of an AWS-style vendor can use both).
//!
//! Why not the `aws-sigv4` crate: it pulls `aws-smithy-async`, hence tokio, into this crate's tree
//! (69 crates; `cargo tree -e normal` on aws-sigv4 1.6.6), which this crate must not have. SigV4 is
//! a fixed recipe over HMAC-SHA256, which this crate already has; the tests check it against
//! signatures botocore computed, and an integration test against botocore's signer live, both ways.
//!
//! The recipe (docs.aws.amazon.com, "Create a signed AWS API request"): a canonical request
//! (method, the path URI-encoded again, the sorted query, the signed headers lower-cased and
//! trimmed, their names, the body's SHA-256), hashed into a string to sign with the time and the
//! scope `date/region/service/aws4_request`, signed with a key derived from the secret by four
//! HMACs. The derived key depends on the day only, so a [`SigningKey`] is kept per day.

use std::fmt;
use std::time::{Duration, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// The algorithm's name in `Authorization`.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// A request as SigV4 sees it: the path exactly as sent (already percent-encoded), the query, the
/// headers to sign and the body.
pub struct Request<'a> {
    pub method: &'a str,
    /// The path as it travels on the wire, without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// `(lower-case name, value)` of each signed header, any order; a name given twice is joined
    /// with commas, as HTTP does.
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

/// What a signature is scoped to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope<'a> {
    /// `YYYYMMDD`.
    pub date: &'a str,
    pub region: &'a str,
    pub service: &'a str,
}

impl Scope<'_> {
    fn text(&self) -> String {
        format!(
            "{}/{}/{}/aws4_request",
            self.date, self.region, self.service
        )
    }
}

/// The key derived from a secret for one day, region and service.
#[derive(Clone)]
pub struct SigningKey([u8; 32]);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

/// A secret with the signing key of the last scope it was used for: a key is derived (four
/// HMACs, about 58,800 instructions) once a day per region and service, not once a request. Both
/// a bot's signer and a caller's verifier keep one.
pub struct DayKeys {
    secret: String,
    /// The scope (date, region, service) of the key kept.
    last: std::sync::Mutex<Option<([String; 3], SigningKey)>>,
}

impl fmt::Debug for DayKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DayKeys(<redacted>)")
    }
}

impl DayKeys {
    pub fn new(secret: impl Into<String>) -> Self {
        DayKeys {
            secret: secret.into(),
            last: std::sync::Mutex::new(None),
        }
    }

    /// The signing key of `scope`, derived only when the scope changed since the last call.
    pub fn key(&self, scope: &Scope<'_>) -> SigningKey {
        let parts = [scope.date, scope.region, scope.service];
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match &*last {
            Some((cached, key)) if *cached == parts => key.clone(),
            _ => {
                let key = SigningKey::derive(&self.secret, scope);
                *last = Some((parts.map(str::to_owned), key.clone()));
                key
            }
        }
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

impl SigningKey {
    /// `kSigning` = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request").
    pub fn derive(secret: &str, scope: &Scope<'_>) -> Self {
        let k_date = hmac(format!("AWS4{secret}").as_bytes(), scope.date.as_bytes());
        let k_region = hmac(&k_date, scope.region.as_bytes());
        let k_service = hmac(&k_region, scope.service.as_bytes());
        SigningKey(hmac(&k_service, b"aws4_request"))
    }

    /// The hex signature of a request signed at `amz_date` (`YYYYMMDDTHHMMSSZ`) in `scope`.
    pub fn sign(&self, req: &Request<'_>, amz_date: &str, scope: &Scope<'_>) -> String {
        let canonical = canonical_request(req);
        let to_sign = format!(
            "{ALGORITHM}\n{amz_date}\n{}\n{}",
            scope.text(),
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        hex::encode(hmac(&self.0, to_sign.as_bytes()))
    }
}

/// The canonical request: what both sides must agree on byte for byte.
pub fn canonical_request(req: &Request<'_>) -> String {
    let mut headers: Vec<(&str, String)> = Vec::with_capacity(req.headers.len());
    for (name, value) in req.headers {
        let value = trim_all(value);
        match headers.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => {
                v.push(',');
                v.push_str(&value);
            }
            None => headers.push((name, value)),
        }
    }
    headers.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = String::with_capacity(256 + req.path.len());
    out.push_str(req.method);
    out.push('\n');
    out.push_str(&encode(req.path, false));
    out.push('\n');
    out.push_str(&canonical_query(req.query.unwrap_or_default()));
    out.push('\n');
    for (name, value) in &headers {
        out.push_str(name);
        out.push(':');
        out.push_str(value);
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&signed_header_names(headers.iter().map(|(n, _)| *n)));
    out.push('\n');
    out.push_str(&hex::encode(Sha256::digest(req.body)));
    out
}

/// `name1;name2`, in the order given (sorted by the caller).
fn signed_header_names<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names.collect::<Vec<_>>().join(";")
}

/// A header value with its ends trimmed and inner runs of spaces collapsed to one.
fn trim_all(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The query's pairs, each decoded then encoded strictly, sorted by name then value.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (encode(&decode(k), true), encode(&decode(v), true))
        })
        .collect();
    pairs.sort();
    let joined: Vec<String> = pairs.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    joined.join("&")
}

/// URI-encodes everything but the unreserved characters (and `/` unless `slash` is set).
fn encode(s: &str, slash: bool) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (b == b'/' && !slash)
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `%XX` decoding (malformed escapes stay as they are).
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `YYYYMMDDTHHMMSSZ` for a unix time.
pub fn amz_date(unix_secs: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(unix_secs);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace(['-', ':'], "")
}

/// The unix time of an `x-amz-date` (`YYYYMMDDTHHMMSSZ`), if it is one.
pub fn parse_amz_date(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if !digits(0..8) || !digits(9..15) {
        return None;
    }
    let text = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[9..11],
        &s[11..13],
        &s[13..15]
    );
    let t = humantime::parse_rfc3339(&text).ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_secs())
}

/// The parts of an `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization<'a> {
    pub access_key_id: &'a str,
    pub scope: Scope<'a>,
    /// Lower-case names, `;`-separated, as the caller listed them.
    pub signed_headers: &'a str,
    pub signature: &'a str,
}

/// Reads an `Authorization` header of the SigV4 form; `None` if it is not one.
pub fn parse_authorization(v: &str) -> Option<Authorization<'_>> {
    let rest = v.trim().strip_prefix(ALGORITHM)?.trim_start();
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let (k, val) = part.trim().split_once('=')?;
        match k {
            "Credential" => credential = Some(val),
            "SignedHeaders" => signed = Some(val),
            "Signature" => signature = Some(val),
            _ => return None,
        }
    }
    let mut c = credential?.split('/');
    let (access_key_id, date, region, service, term) =
        (c.next()?, c.next()?, c.next()?, c.next()?, c.next()?);
    if c.next().is_some() || term != "aws4_request" || access_key_id.is_empty() {
        return None;
    }
    let signature = signature?;
    if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(Authorization {
        access_key_id,
        scope: Scope {
            date,
            region,
            service,
        },
        signed_headers: signed?,
        signature,
    })
}

/// Whether `presented` (hex) equals `expected` (hex), in constant time and case-insensitively.
pub fn signature_matches(expected: &str, presented: &str) -> bool {
    expected
        .as_bytes()
        .ct_eq(presented.to_ascii_lowercase().as_bytes())
        .into()
}

/// The `Authorization` value for a signature.
pub fn authorization(access_key_id: &str, scope: &Scope<'_>, signed: &str, sig: &str) -> String {
    format!(
        "{ALGORITHM} Credential={access_key_id}/{}, SignedHeaders={signed}, Signature={sig}",
        scope.text()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const SCOPE: Scope<'static> = Scope {
        date: "20261206",
        region: "us-east-1",
        service: "lex",
    };

    /// The expected values were computed by botocore 1.44.18's `SigV4Auth` for the same requests.
    #[test]
    fn signs_as_botocore_does() {
        let req = Request {
            method: "POST",
            path:
                "/bots/ABCDEFGHIJ/botAliases/TSTALIASID/botLocales/en_US/sessions/user%3A1.a/text",
            query: None,
            headers: &[
                ("content-type", "application/json"),
                ("host", "127.0.0.1:8080"),
                ("x-amz-date", "20261206T203706Z"),
            ],
            body: br#"{"text":"hello"}"#,
        };
        let canonical = canonical_request(&req);
        assert!(
            canonical.contains("/sessions/user%253A1.a/text\n"),
            "{canonical}"
        );
        assert!(canonical.ends_with(
            "content-type;host;x-amz-date\ncbbbdcd27692344de5dbab3abcaba413fb0f45307267de7081401576df1cb176"
        ));
        let key = SigningKey::derive(SECRET, &SCOPE);
        assert_eq!(
            key.sign(&req, "20261206T203706Z", &SCOPE),
            "bbb9849bb2a0b1e203400b6baeb81e06a968a6bb8a0ad4db09a422aa3a840726"
        );
    }

    #[test]
    fn sorts_and_encodes_the_query_and_signs_a_session_token() {
        let req = Request {
            method: "POST",
            path: "/x/y",
            query: Some("b=2&a=1%20x&a=0"),
            headers: &[
                ("x-amz-security-token", "tok"),
                ("content-type", "application/json"),
                ("host", "runtime-v2-lex.us-east-1.amazonaws.com"),
                ("x-amz-date", "20261206T203706Z"),
            ],
            body: b"",
        };
        assert!(canonical_request(&req).contains("\na=0&a=1%20x&b=2\n"));
        let key = SigningKey::derive(SECRET, &SCOPE);
        assert_eq!(
            key.sign(&req, "20261206T203706Z", &SCOPE),
            "e2d6d33061c36067227d7f4393b3276b6ae8b1a27ef402e6b3d987702d862b38"
        );
    }

    #[test]
    fn dates_both_ways() {
        assert_eq!(amz_date(1_796_589_426), "20261206T203706Z");
        assert_eq!(parse_amz_date("20261206T203706Z"), Some(1_796_589_426));
        assert_eq!(parse_amz_date("2026-12-06T20:37:06Z"), None);
        assert_eq!(parse_amz_date("20261306T203706Z"), None);
    }

    #[test]
    fn reads_authorization_and_refuses_others() {
        let v = "AWS4-HMAC-SHA256 Credential=AKID/20261206/us-east-1/lex/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=3cd3026f6945612a24ccb278f33c9731ce9c6fa86318d3bb7244c20b9ac68d02";
        let a = parse_authorization(v).unwrap();
        assert_eq!(a.access_key_id, "AKID");
        assert_eq!(a.scope, SCOPE);
        assert_eq!(a.signed_headers, "content-type;host;x-amz-date");
        assert_eq!(
            parse_authorization(&authorization(
                "AKID",
                &SCOPE,
                a.signed_headers,
                a.signature
            )),
            Some(a)
        );
        assert!(parse_authorization("Bearer x").is_none());
        assert!(parse_authorization(&v.replace("aws4_request", "aws5")).is_none());
        assert!(parse_authorization(&v.replace("Signature=3c", "Signature=zz")).is_none());
    }
}
