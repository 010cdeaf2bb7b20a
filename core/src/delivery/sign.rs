//! How deliveries are signed (pure).
//!
//! - botbridge's own signature, on callbacks to a URL the caller chose:
//!   `x-botbridge-timestamp: <unix seconds>` and
//!   `x-botbridge-signature: sha256=<lowercase hex HMAC-SHA256>` over the bytes
//!   `<timestamp>.<body>` (the timestamp's decimal digits, one `.`, the exact body), keyed with the
//!   credential's secret. The timestamp is signed so a receiver can refuse old deliveries replayed.
//! - the hub signature, on a client's fixed webhook:
//!   `X-Hub-Signature: sha1=<lowercase hex HMAC-SHA1 of the raw body>` keyed with the client's
//!   webhook secret, as the client's own platform signs its webhooks.

use std::fmt;

use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

/// The timestamp header of botbridge's signature.
pub const TIMESTAMP_HEADER: &str = "x-botbridge-timestamp";
/// The signature header of botbridge's signature.
pub const SIGNATURE_HEADER: &str = "x-botbridge-signature";
/// The hub signature's header.
pub const HUB_SIGNATURE_HEADER: &str = "x-hub-signature";

/// How one credential's deliveries are signed; the secret is never printed.
#[derive(Clone, PartialEq, Eq)]
pub enum Signer {
    /// `x-botbridge-signature` (callbacks to a URL the caller chose).
    Botbridge(Vec<u8>),
    /// `X-Hub-Signature` (a client's fixed webhook).
    HubSha1(Vec<u8>),
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Signer::Botbridge(_) => f.write_str("Signer::Botbridge(<redacted>)"),
            Signer::HubSha1(_) => f.write_str("Signer::HubSha1(<redacted>)"),
        }
    }
}

impl Signer {
    /// The headers that sign `body` sent at `unix_secs`.
    pub fn headers(&self, unix_secs: u64, body: &[u8]) -> Vec<(&'static str, String)> {
        match self {
            Signer::Botbridge(secret) => vec![
                (TIMESTAMP_HEADER, unix_secs.to_string()),
                (
                    SIGNATURE_HEADER,
                    botbridge_signature(secret, unix_secs, body),
                ),
            ],
            Signer::HubSha1(secret) => vec![(HUB_SIGNATURE_HEADER, hub_signature(secret, body))],
        }
    }
}

/// `sha256=<hex HMAC-SHA256(secret, "<unix_secs>.<body>")>`
pub fn botbridge_signature(secret: &[u8], unix_secs: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(unix_secs.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// `sha1=<hex HMAC-SHA1(secret, body)>`
pub fn hub_signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Checks an `X-Hub-Signature` value in constant time (for webhooks a bot sends the proxy).
pub fn verify_hub_signature(secret: &[u8], body: &[u8], header: Option<&[u8]>) -> bool {
    let Some(hex_sig) = header.and_then(|h| h.strip_prefix(b"sha1=")) else {
        return false;
    };
    let mut tag = [0u8; 20];
    if hex::decode_to_slice(hex_sig, &mut tag).is_err() {
        return false;
    }
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    mac.verify_slice(&tag).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn botbridge_signature_covers_timestamp_and_body() {
        let sig = botbridge_signature(b"key", 1_700_000_000, b"{}");
        // Known answer: HMAC-SHA256("key", "1700000000.{}"), computed with Python's hmac.
        assert_eq!(
            sig,
            "sha256=9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae"
        );
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64);
        assert_ne!(sig, botbridge_signature(b"key", 1_700_000_001, b"{}"));
        assert_ne!(sig, botbridge_signature(b"key", 1_700_000_000, b"{ }"));
        let h = Signer::Botbridge(b"key".to_vec()).headers(1_700_000_000, b"{}");
        assert_eq!(h[0], (TIMESTAMP_HEADER, "1700000000".to_string()));
        assert_eq!(h[1].1, sig);
    }

    #[test]
    fn hub_signature_round_trips_and_refuses_tampering() {
        let sig = hub_signature(b"s", b"body");
        // Known answer: HMAC-SHA1("s", "body"), computed with Python's hmac.
        assert_eq!(sig, "sha1=2b36f8fce5fdb512c1a69117e808584a51019d07");
        assert!(verify_hub_signature(b"s", b"body", Some(sig.as_bytes())));
        assert!(!verify_hub_signature(b"s", b"bodY", Some(sig.as_bytes())));
        assert!(!verify_hub_signature(b"t", b"body", Some(sig.as_bytes())));
        assert!(!verify_hub_signature(b"s", b"body", None));
        assert!(!verify_hub_signature(b"s", b"body", Some(b"sha1=zz")));
        assert!(!format!("{:?}", Signer::HubSha1(b"hush".to_vec())).contains("hush"));
    }
}
