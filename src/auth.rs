//! Verifying callers: Haptik `Authorization: Bearer <token>` + `client-id` against configured clients.
//!
//! Tokens are kept only as SHA-256 digests and compared in constant time; an unknown client id still
//! costs one comparison, so response timing does not tell which client ids exist. Wrong client id and
//! wrong token get the same message (`invalid authorization details`) for the same reason; a missing
//! header gets Haptik's own message naming it.

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ProxyError;

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

#[cfg(test)]
mod tests {
    use super::*;

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
