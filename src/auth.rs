//! Verifying callers against configured credentials.
//!
//! Haptik: `Authorization: Bearer <token>` + `client-id`. Tokens are kept only as SHA-256 digests and
//! compared in constant time; an unknown client id still costs one comparison, so response timing does
//! not tell which client ids exist. Wrong client id and wrong token get the same message (`invalid
//! authorization details`) for the same reason; a missing header gets Haptik's own message naming it.
//!
//! CSML: `x-api-key: KEY|TS` + `x-api-signature: sha256=<hex>` (signed credentials), or `x-api-key: KEY`
//! (plain credentials, where the key itself is the secret). Credentials are found by the SHA-256 of
//! the presented key, so a plain key is never compared byte by byte; signatures are checked by
//! `signing` in constant time, with the timestamp within a tolerance either way.

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::dialect::IngressDialect;
use crate::error::ProxyError;
use crate::signing::{split_key, CsmlKey, SignatureError};

/// Haptik's message for a missing `client-id` header.
pub const MSG_CLIENT_ID_MISSING: &str = "client_id missing in headers";
/// Haptik's message for a missing bearer token.
pub const MSG_TOKEN_MISSING: &str = "token missing in headers";
/// Haptik's message for credentials that do not match.
pub const MSG_INVALID: &str = "invalid authorization details";

/// One Haptik client allowed to call the proxy.
#[derive(Debug, Clone)]
pub struct HaptikClient {
    /// The configured name, for logs.
    pub name: String,
    token_sha256: [u8; 32],
}

impl HaptikClient {
    /// A client whose token is given in plain text (only its digest is kept).
    pub fn with_token(name: impl Into<String>, token: &[u8]) -> Self {
        Self::with_token_sha256(name, Sha256::digest(token).into())
    }

    /// A client whose token is given as its SHA-256 digest.
    pub fn with_token_sha256(name: impl Into<String>, token_sha256: [u8; 32]) -> Self {
        HaptikClient {
            name: name.into(),
            token_sha256,
        }
    }
}

/// The configured Haptik clients, by client id.
#[derive(Debug, Clone, Default)]
pub struct HaptikClients {
    by_id: HashMap<String, HaptikClient>,
}

impl HaptikClients {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a client; returns false if the client id was already taken.
    pub fn insert(&mut self, client_id: impl Into<String>, client: HaptikClient) -> bool {
        self.by_id.insert(client_id.into(), client).is_none()
    }

    /// Whether no client is configured.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Verifies a request's headers: `Authorization`, and `client-id` or (as one real client sends
    /// it) `client_id`.
    pub fn verify_headers<'h>(
        &self,
        header: impl Fn(&str) -> Option<&'h [u8]>,
    ) -> Result<&HaptikClient, ProxyError> {
        let client_id = header("client-id").or_else(|| header("client_id"));
        self.verify(header("authorization"), client_id)
    }

    /// Verifies the raw `Authorization` and `client-id` header values.
    pub fn verify(
        &self,
        authorization: Option<&[u8]>,
        client_id: Option<&[u8]>,
    ) -> Result<&HaptikClient, ProxyError> {
        let client_id = client_id
            .map(<[u8]>::trim_ascii)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| ProxyError::unauthorized(MSG_CLIENT_ID_MISSING))?;
        let token = bearer_token(authorization)?;
        let digest: [u8; 32] = Sha256::digest(token).into();
        let found = std::str::from_utf8(client_id)
            .ok()
            .and_then(|id| self.by_id.get(id));
        // Compare against something even when the id is unknown, so timing does not tell.
        let expected = found.map_or(&[0u8; 32], |c| &c.token_sha256);
        let matches: bool = digest.ct_eq(expected).into();
        match found {
            Some(client) if matches => Ok(client),
            _ => Err(ProxyError::unauthorized(MSG_INVALID)),
        }
    }
}

/// Extracts the token of `Bearer <token>` (scheme case-insensitive).
fn bearer_token(authorization: Option<&[u8]>) -> Result<&[u8], ProxyError> {
    let value = authorization
        .map(<[u8]>::trim_ascii)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ProxyError::unauthorized(MSG_TOKEN_MISSING))?;
    if value.eq_ignore_ascii_case(b"bearer") {
        return Err(ProxyError::unauthorized(MSG_TOKEN_MISSING));
    }
    if value.len() < 7 || !value[..7].eq_ignore_ascii_case(b"bearer ") {
        return Err(ProxyError::unauthorized(MSG_INVALID));
    }
    let token = value[7..].trim_ascii();
    if token.is_empty() {
        return Err(ProxyError::unauthorized(MSG_TOKEN_MISSING));
    }
    Ok(token)
}

/// How a CSML credential authenticates.
#[derive(Debug, Clone)]
pub enum CsmlClientAuth {
    /// `x-api-key: KEY|TS` + `x-api-signature` with this key's pre-keyed HMAC.
    Signed(CsmlKey),
    /// `x-api-key: KEY` alone.
    Plain,
}

/// One CSML caller.
#[derive(Debug, Clone)]
pub struct CsmlClient {
    /// The configured name, for logs.
    pub name: String,
    /// How it authenticates.
    pub auth: CsmlClientAuth,
    /// The Haptik business its requests go to, when a route needs one.
    pub business_id: Option<i64>,
}

/// The configured CSML callers, by the SHA-256 of their key.
#[derive(Debug, Clone)]
pub struct CsmlClients {
    by_key_digest: HashMap<[u8; 32], CsmlClient>,
    tolerance_secs: u64,
}

impl CsmlClients {
    /// An empty set accepting timestamps within `tolerance_secs` of now.
    pub fn new(tolerance_secs: u64) -> Self {
        CsmlClients {
            by_key_digest: HashMap::new(),
            tolerance_secs,
        }
    }

    /// Adds a caller with API key `key`; returns false if the key was already taken.
    pub fn insert(&mut self, key: &str, client: CsmlClient) -> bool {
        self.by_key_digest
            .insert(Sha256::digest(key.as_bytes()).into(), client)
            .is_none()
    }

    /// Whether no caller is configured.
    pub fn is_empty(&self) -> bool {
        self.by_key_digest.is_empty()
    }

    /// Verifies the raw `x-api-key` and `x-api-signature` header values at `now` (unix seconds).
    pub fn verify(
        &self,
        api_key: Option<&[u8]>,
        signature: Option<&[u8]>,
        now: u64,
    ) -> Result<&CsmlClient, ProxyError> {
        let api_key = api_key
            .map(<[u8]>::trim_ascii)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| ProxyError::unauthorized("missing x-api-key header"))?;
        let invalid = || ProxyError::unauthorized("invalid API key");
        match split_key(api_key) {
            Some((key, _)) => {
                let client = self.lookup(key).ok_or_else(invalid)?;
                let CsmlClientAuth::Signed(k) = &client.auth else {
                    return Err(ProxyError::unauthorized(
                        "this API key is not set up for signed requests: send x-api-key: KEY alone",
                    ));
                };
                k.verify(api_key, signature, now, self.tolerance_secs)
                    .map_err(|e| match e {
                        SignatureError::MalformedKey | SignatureError::WrongKey => invalid(),
                        SignatureError::MalformedSignature => ProxyError::unauthorized(
                            "missing or malformed x-api-signature header (sha256=<64 hex digits>)",
                        ),
                        SignatureError::BadSignature => {
                            ProxyError::unauthorized("invalid signature")
                        }
                        SignatureError::Expired => ProxyError::unauthorized(format!(
                            "the x-api-key timestamp is more than {} s from the server's clock",
                            self.tolerance_secs
                        )),
                    })?;
                Ok(client)
            }
            None => {
                let client = self.lookup(api_key).ok_or_else(invalid)?;
                match client.auth {
                    CsmlClientAuth::Plain => Ok(client),
                    CsmlClientAuth::Signed(_) => Err(ProxyError::unauthorized(
                        "this API key needs a signature: send x-api-key: KEY|TIMESTAMP and x-api-signature",
                    )),
                }
            }
        }
    }

    fn lookup(&self, key: &[u8]) -> Option<&CsmlClient> {
        self.by_key_digest
            .get(&<[u8; 32]>::from(Sha256::digest(key)))
    }
}

/// What authenticating a caller found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller<'a> {
    /// The credential's configured name, for logs.
    pub name: &'a str,
    /// The Haptik business the credential is mapped to (CSML callers), if any.
    pub business_id: Option<i64>,
}

/// Authenticates a caller of `dialect` from its request headers at `now` (unix seconds).
pub fn authenticate<'c, 'h>(
    dialect: IngressDialect,
    haptik: &'c HaptikClients,
    csml: &'c CsmlClients,
    header: impl Fn(&str) -> Option<&'h [u8]>,
    now: u64,
) -> Result<Caller<'c>, ProxyError> {
    match dialect {
        IngressDialect::Haptik => haptik.verify_headers(header).map(|c| Caller {
            name: &c.name,
            business_id: None,
        }),
        IngressDialect::Csml => csml
            .verify(header("x-api-key"), header("x-api-signature"), now)
            .map(|c| Caller {
                name: &c.name,
                business_id: c.business_id,
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csml() -> CsmlClients {
        let mut c = CsmlClients::new(300);
        c.insert(
            "signed-key",
            CsmlClient {
                name: "s".into(),
                auth: CsmlClientAuth::Signed(CsmlKey::new("signed-key", b"secret")),
                business_id: Some(7),
            },
        );
        c.insert(
            "plain-key",
            CsmlClient {
                name: "p".into(),
                auth: CsmlClientAuth::Plain,
                business_id: None,
            },
        );
        c
    }

    #[test]
    fn csml_signed_and_plain_credentials() {
        let c = csml();
        let s = CsmlKey::new("signed-key", b"secret").sign(1000);
        let v = |key: &str, sig: Option<&str>, now| {
            c.verify(Some(key.as_bytes()), sig.map(str::as_bytes), now)
        };
        assert_eq!(
            v(&s.api_key, Some(&s.signature), 1000).unwrap().business_id,
            Some(7)
        );
        assert_eq!(
            v(&s.api_key, Some(&s.signature), 1300).unwrap().name,
            "s",
            "exactly at the tolerance"
        );
        assert_eq!(
            v(&s.api_key, Some(&s.signature), 700).unwrap().name,
            "s",
            "from the future, at the tolerance"
        );
        let msg = |r: Result<&CsmlClient, ProxyError>| r.unwrap_err().message.into_owned();
        assert!(msg(v(&s.api_key, Some(&s.signature), 1301)).contains("more than 300 s"));
        assert!(msg(v(&s.api_key, Some(&s.signature), 699)).contains("more than 300 s"));
        let other = CsmlKey::new("signed-key", b"wrong").sign(1000);
        assert_eq!(
            msg(v(&s.api_key, Some(&other.signature), 1000)),
            "invalid signature"
        );
        assert!(msg(v(&s.api_key, None, 1000)).contains("x-api-signature"));
        assert_eq!(
            msg(v("nobody|1000", Some(&s.signature), 1000)),
            "invalid API key"
        );
        assert!(msg(v("signed-key", None, 1000)).contains("needs a signature"));
        assert_eq!(v("plain-key", None, 0).unwrap().name, "p");
        assert!(
            msg(v("plain-key|1000", Some(&s.signature), 1000)).contains("not set up for signed")
        );
        assert_eq!(msg(v("wrong-key", None, 0)), "invalid API key");
        assert_eq!(msg(c.verify(None, None, 0)), "missing x-api-key header");
    }

    fn clients() -> HaptikClients {
        let mut c = HaptikClients::new();
        c.insert(
            "demo-client",
            HaptikClient::with_token("demo", b"demo-token"),
        );
        c.insert(
            "hashed",
            HaptikClient::with_token_sha256("h", Sha256::digest(b"t2").into()),
        );
        c
    }

    #[test]
    fn accepts_the_right_token_for_the_client() {
        let c = clients();
        assert_eq!(
            c.verify(Some(b"Bearer demo-token"), Some(b"demo-client"))
                .unwrap()
                .name,
            "demo"
        );
        assert_eq!(
            c.verify(Some(b"bearer  t2 "), Some(b"hashed"))
                .unwrap()
                .name,
            "h"
        );
    }

    #[test]
    fn refuses_with_haptiks_messages() {
        let c = clients();
        let msg = |a: Option<&[u8]>, id: Option<&[u8]>| {
            let e = c.verify(a, id).unwrap_err();
            assert_eq!(e.status, 401);
            e.message.into_owned()
        };
        assert_eq!(msg(Some(b"Bearer demo-token"), None), MSG_CLIENT_ID_MISSING);
        assert_eq!(
            msg(Some(b"Bearer demo-token"), Some(b" ")),
            MSG_CLIENT_ID_MISSING
        );
        assert_eq!(msg(None, Some(b"demo-client")), MSG_TOKEN_MISSING);
        assert_eq!(
            msg(Some(b"Bearer "), Some(b"demo-client")),
            MSG_TOKEN_MISSING
        );
        assert_eq!(msg(Some(b"Basic abc"), Some(b"demo-client")), MSG_INVALID);
        assert_eq!(
            msg(Some(b"Bearer wrong"), Some(b"demo-client")),
            MSG_INVALID
        );
        assert_eq!(
            msg(Some(b"Bearer demo-token"), Some(b"nobody")),
            MSG_INVALID
        );
        // One client's token does not open another client.
        assert_eq!(msg(Some(b"Bearer t2"), Some(b"demo-client")), MSG_INVALID);
    }
}
