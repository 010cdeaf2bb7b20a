//! Signed API keys: `x-api-key: KEY|TS` with `x-api-signature: sha256=<hex HMAC-SHA256("KEY|TS")>`
//! keyed with the API secret, TS in unix seconds; or the key alone, `x-api-key: KEY`, where the key
//! is the secret. The dialects whose callers or bots use this scheme read and write it through here.
//!
//! A [`HmacKey`] holds the HMAC state already keyed with the secret, so signing or verifying a request
//! clones that state instead of re-keying. Verification compares in constant time and checks the
//! timestamp against a tolerance. The secret itself is never kept in a printable form. A bot's
//! signature depends on the second only, so [`KeyAuth`] keeps the last one and reuses it within its
//! second.

use std::fmt;
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// A key id with its HMAC-SHA256 secret signing `KEY|TS`, kept as pre-keyed HMAC state.
#[derive(Clone)]
pub struct HmacKey {
    key: String,
    mac: HmacSha256,
}

/// The last signature made and its second: every request signed in that second carries the same
/// headers, so they are copied rather than computed again (two SHA-256 blocks each; under
/// callgrind, which runs SHA-256 without the CPU's SHA instructions, 7k instructions a request).
#[derive(Default)]
pub struct LastSignature(Mutex<Option<(u64, SignedHeaders)>>);

impl Clone for LastSignature {
    fn clone(&self) -> Self {
        LastSignature::default()
    }
}

impl LastSignature {
    /// `key`'s signature for `unix_secs`: the kept one if it is of that second.
    pub fn sign(&self, key: &HmacKey, unix_secs: u64) -> SignedHeaders {
        // Another thread signing at this moment only means this one computes its own.
        let Ok(mut last) = self.0.try_lock() else {
            return key.sign(unix_secs);
        };
        match &*last {
            Some((at, made)) if *at == unix_secs => made.clone(),
            _ => {
                let made = key.sign(unix_secs);
                *last = Some((unix_secs, made.clone()));
                made
            }
        }
    }
}

impl fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HmacKey")
            .field("key", &self.key)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// The two headers of a signed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    /// `KEY|TS`
    pub api_key: String,
    /// `sha256=<64 hex digits>`
    pub signature: String,
}

/// Why a signature was refused. The variants are the bounded set metrics and logs use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    /// `x-api-key` is not `KEY|TS` with TS a unix time in seconds.
    MalformedKey,
    /// The key part does not match.
    WrongKey,
    /// The signature header is missing or not `sha256=<hex>`.
    MalformedSignature,
    /// The signature does not match.
    BadSignature,
    /// The timestamp is further from now than the tolerance.
    Expired,
}

impl HmacKey {
    /// A key with its secret; the secret is consumed into the HMAC state.
    pub fn new(key: impl Into<String>, secret: &[u8]) -> Self {
        HmacKey {
            key: key.into(),
            mac: HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length"),
        }
    }

    /// The public API key.
    pub fn key(&self) -> &str {
        &self.key
    }

    fn mac_of(&self, key_and_ts: &[u8]) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(key_and_ts);
        mac
    }

    /// Signs for the given unix time (seconds).
    pub fn sign(&self, unix_secs: u64) -> SignedHeaders {
        // Not `format!`: its machinery was 1k instructions per request.
        let mut api_key = String::with_capacity(self.key.len() + 21);
        api_key.push_str(&self.key);
        api_key.push('|');
        api_key.push_str(itoa::Buffer::new().format(unix_secs));
        let tag = self.mac_of(api_key.as_bytes()).finalize().into_bytes();
        let mut signature = String::with_capacity(7 + 64);
        signature.push_str("sha256=");
        // Into a buffer on the stack: hex::encode builds its String one char at a time.
        let mut hex_tag = [0u8; 64];
        hex::encode_to_slice(tag, &mut hex_tag).expect("32 bytes are 64 hex digits");
        signature.push_str(std::str::from_utf8(&hex_tag).expect("hex digits are ASCII"));
        SignedHeaders { api_key, signature }
    }

    /// Verifies `x-api-key` and `x-api-signature` at `now` (unix seconds) within `tolerance_secs`
    /// either way. The key comparison and the MAC comparison are constant-time.
    pub fn verify(
        &self,
        api_key: &[u8],
        signature: Option<&[u8]>,
        now: u64,
        tolerance_secs: u64,
    ) -> Result<(), SignatureError> {
        let (key, ts) = split_key(api_key).ok_or(SignatureError::MalformedKey)?;
        if !bool::from(subtle::ConstantTimeEq::ct_eq(key, self.key.as_bytes())) {
            return Err(SignatureError::WrongKey);
        }
        let sig = signature
            .and_then(|s| s.strip_prefix(b"sha256="))
            .filter(|h| h.len() == 64)
            .ok_or(SignatureError::MalformedSignature)?;
        let mut tag = [0u8; 32];
        hex::decode_to_slice(sig, &mut tag).map_err(|_| SignatureError::MalformedSignature)?;
        self.mac_of(api_key)
            .verify_slice(&tag)
            .map_err(|_| SignatureError::BadSignature)?;
        if ts.abs_diff(now) > tolerance_secs {
            return Err(SignatureError::Expired);
        }
        Ok(())
    }
}

/// How the proxy authenticates to a bot that takes API keys, with the key material.
#[derive(Clone)]
pub enum KeyAuth {
    /// Signs every request: `x-api-key: KEY|TS` + `x-api-signature` (pre-keyed HMAC state), with
    /// the last signature kept (boxed: a plain key's variant stays small).
    Signed(HmacKey, Box<LastSignature>),
    /// Sends the key alone: `x-api-key: KEY`.
    Plain(String),
}

impl fmt::Debug for KeyAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyAuth::Signed(k, _) => f.debug_tuple("Signed").field(k).finish(),
            // A plain key is the whole secret.
            KeyAuth::Plain(_) => f.write_str("Plain(<redacted>)"),
        }
    }
}

impl KeyAuth {
    /// Signing with `key`.
    pub fn signed(key: HmacKey) -> Self {
        KeyAuth::Signed(key, Box::default())
    }

    /// Hands `add` the headers that authenticate one request sent at `unix_secs`.
    pub fn headers(&self, unix_secs: u64, mut add: impl FnMut(&'static str, &str)) {
        match self {
            KeyAuth::Signed(k, last) => {
                let s = last.sign(k, unix_secs);
                add("x-api-key", &s.api_key);
                add("x-api-signature", &s.signature);
            }
            KeyAuth::Plain(key) => add("x-api-key", key),
        }
    }
}

/// Splits `KEY|TS` into the key bytes and the timestamp.
pub fn split_key(api_key: &[u8]) -> Option<(&[u8], u64)> {
    let bar = api_key.iter().rposition(|&b| b == b'|')?;
    let (key, ts) = (&api_key[..bar], &api_key[bar + 1..]);
    if key.is_empty() || ts.is_empty() || ts.len() > 12 || !ts.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let ts = std::str::from_utf8(ts).ok()?.parse().ok()?;
    Some((key, ts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_reused_within_its_second_is_the_one_of_that_second() {
        let k = HmacKey::new("demo-key", b"demo-secret");
        let last = LastSignature::default();
        for t in [1_700_000_000, 1_700_000_000, 1_700_000_001, 1_700_000_000] {
            assert_eq!(last.sign(&k, t), k.sign(t), "at {t}");
        }
        assert_ne!(last.sign(&k, 1_700_000_001), last.sign(&k, 1_700_000_000));
    }

    #[test]
    fn signs_like_the_seed_describes() {
        // HMAC_SHA256("KEY|TS", SECRET) in hex, computed independently with openssl:
        // printf 'demo-key|1700000000' | openssl dgst -sha256 -hmac demo-secret
        let k = HmacKey::new("demo-key", b"demo-secret");
        let s = k.sign(1_700_000_000);
        assert_eq!(s.api_key, "demo-key|1700000000");
        assert_eq!(
            s.signature,
            "sha256=eafdb3e786dc9e8432e840660cbc26edd9f0fb0f53cc50de478a57a203be135a"
        );
    }

    #[test]
    fn verifies_its_own_signature_within_tolerance() {
        let k = HmacKey::new("k", b"s");
        let s = k.sign(1000);
        let v = |now| k.verify(s.api_key.as_bytes(), Some(s.signature.as_bytes()), now, 300);
        assert_eq!(v(1000), Ok(()));
        assert_eq!(v(1300), Ok(()), "exactly at the tolerance");
        assert_eq!(v(700), Ok(()), "exactly at the tolerance, from the future");
        assert_eq!(v(1301), Err(SignatureError::Expired));
        assert_eq!(v(699), Err(SignatureError::Expired));
    }

    #[test]
    fn refuses_wrong_parts() {
        let k = HmacKey::new("k", b"s");
        let s = k.sign(1000);
        let other = HmacKey::new("k", b"other").sign(1000);
        assert_eq!(
            k.verify(
                s.api_key.as_bytes(),
                Some(other.signature.as_bytes()),
                1000,
                300
            ),
            Err(SignatureError::BadSignature)
        );
        assert_eq!(
            k.verify(b"j|1000", Some(s.signature.as_bytes()), 1000, 300),
            Err(SignatureError::WrongKey)
        );
        assert_eq!(
            k.verify(b"k", Some(s.signature.as_bytes()), 1000, 300),
            Err(SignatureError::MalformedKey)
        );
        assert_eq!(
            k.verify(b"k|abc", Some(s.signature.as_bytes()), 1000, 300),
            Err(SignatureError::MalformedKey)
        );
        assert_eq!(
            k.verify(s.api_key.as_bytes(), None, 1000, 300),
            Err(SignatureError::MalformedSignature)
        );
        assert_eq!(
            k.verify(s.api_key.as_bytes(), Some(b"sha256=zz"), 1000, 300),
            Err(SignatureError::MalformedSignature)
        );
        // The timestamp is covered by the signature: changing it breaks the MAC.
        assert_eq!(
            k.verify(b"k|1001", Some(s.signature.as_bytes()), 1000, 300),
            Err(SignatureError::BadSignature)
        );
    }

    #[test]
    fn debug_hides_the_secret() {
        let k = HmacKey::new("k", b"very-secret");
        assert!(!format!("{k:?}").contains("very-secret"));
        let plain = KeyAuth::Plain("plain-secret-key".into());
        assert!(!format!("{plain:?}").contains("plain-secret-key"));
    }
}
