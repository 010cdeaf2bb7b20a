//! Conversation tokens the proxy issues to the callers of a channel (a caller dialect whose
//! conversations the proxy holds): bound to one conversation, one user and one route, signed with a
//! key derived from the caller's secret (or its own `token_secret`), so any instance configured
//! with the same credential verifies the tokens of another (a conversation continued elsewhere) and
//! no token is stored.
//!
//! A token is a JWT signed with HMAC-SHA256 (`header.claims.signature`, base64url): clients such
//! as Web Chat read its `user` claim to know who they are. The claims name the conversation (`c`),
//! the user (`user`), the route (`r`), the expiry (`exp`) and the key's id (`kid`, an HMAC of the
//! key: it finds the key without trying every caller's and tells nothing about the secret). A token
//! whose expiry lies further ahead than a token lasts is refused, so no key holder mints long-lived
//! ones.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

/// The header of every token.
const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// What a channel caller's credential adds to its grant.
#[derive(Debug)]
pub struct ChannelGrant {
    /// The key its conversation tokens are signed with.
    pub key: TokenKey,
    /// The browser origins (`scheme://host[:port]`) that may use it; empty: none (a browser's
    /// cross-origin requests are refused, other clients send no `Origin`).
    pub allowed_origins: Vec<String>,
}

impl ChannelGrant {
    /// Whether a browser at `origin` may use the credential (`*` allows any).
    pub fn allows_origin(&self, origin: &str) -> bool {
        (self.allowed_origins.iter()).any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
    }
}

/// The key conversation tokens are signed with, and its id.
#[derive(Clone)]
pub struct TokenKey {
    mac: Hmac<Sha256>,
    id: [u8; 16],
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

/// What a valid token grants: one conversation on one route, for one user, until `expires` (unix
/// seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenGrant {
    pub conversation: String,
    pub user: String,
    pub route: String,
    pub expires: u64,
}

/// Why a token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Not a token of this key (or altered, or expiring further ahead than a token lasts).
    Invalid,
    /// A token of this key past its expiry.
    Expired,
}

impl TokenKey {
    /// The key of a secret: an HMAC of it (never of its digest alone, so a configuration holding
    /// only `secret_sha256` cannot mint tokens).
    pub fn new(secret: &[u8]) -> Self {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"botbridge channel token v2")
            .expect("HMAC takes any key");
        mac.update(secret);
        let derived = mac.finalize().into_bytes();
        let mac = Hmac::<Sha256>::new_from_slice(&derived).expect("HMAC takes any key");
        let mut id_mac = mac.clone();
        id_mac.update(b"key id");
        let mut id = [0u8; 16];
        id.copy_from_slice(&id_mac.finalize().into_bytes()[..16]);
        TokenKey { mac, id }
    }

    /// The key's id, as tokens name it.
    pub fn id(&self) -> [u8; 16] {
        self.id
    }

    /// A token for `grant`.
    pub fn mint(&self, grant: &TokenGrant) -> String {
        let claims = json!({"c": grant.conversation, "user": grant.user, "r": grant.route,
                            "exp": grant.expires, "kid": URL_SAFE_NO_PAD.encode(self.id)});
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(HEADER),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut mac = self.mac.clone();
        mac.update(signed.as_bytes());
        let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signed}.{tag}")
    }

    /// The grant of a token, checked in constant time, at `now` (unix seconds); a token expiring
    /// more than `lifetime` seconds from now is refused.
    pub fn verify(&self, token: &str, now: u64, lifetime: u64) -> Result<TokenGrant, TokenError> {
        let (signed, tag) = token.rsplit_once('.').ok_or(TokenError::Invalid)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TokenError::Invalid)?;
        let mut mac = self.mac.clone();
        mac.update(signed.as_bytes());
        mac.verify_slice(&tag).map_err(|_| TokenError::Invalid)?;
        let (grant, _) = claims(signed).ok_or(TokenError::Invalid)?;
        if grant.expires > now.saturating_add(lifetime) {
            return Err(TokenError::Invalid);
        }
        if now >= grant.expires {
            return Err(TokenError::Expired);
        }
        Ok(grant)
    }
}

/// The key id a token names, unverified: only where to find the key that verifies it.
pub fn token_key_id(token: &str) -> Option<[u8; 16]> {
    let (signed, _) = token.rsplit_once('.')?;
    claims(signed).map(|(_, kid)| kid)
}

/// The claims of a token's signed part (`header.claims`), with the key id.
fn claims(signed: &str) -> Option<(TokenGrant, [u8; 16])> {
    let (header, body) = signed.split_once('.')?;
    if URL_SAFE_NO_PAD.decode(header).ok()? != HEADER.as_bytes() {
        return None;
    }
    let v: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).ok()?).ok()?;
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let kid = URL_SAFE_NO_PAD.decode(text("kid")?).ok()?.try_into().ok()?;
    let grant = TokenGrant {
        conversation: text("c")?,
        user: text("user")?,
        route: text("r")?,
        expires: v.get("exp").and_then(Value::as_u64)?,
    };
    Some((grant, kid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> TokenGrant {
        TokenGrant {
            conversation: "conv-1".into(),
            user: "dl_u1".into(),
            route: "dl".into(),
            expires: 2_800,
        }
    }

    #[test]
    fn tokens_grant_one_conversation_until_they_expire_on_any_instance() {
        let key = TokenKey::new(b"a long enough secret");
        let token = key.mint(&grant());
        assert_eq!(token.split('.').count(), 3, "a JWT");
        let again = TokenKey::new(b"a long enough secret");
        assert_eq!(again.verify(&token, 1_000, 1_800), Ok(grant()));
        assert_eq!(token_key_id(&token), Some(key.id()));
        assert_eq!(key.verify(&token, 2_800, 1_800), Err(TokenError::Expired));
        let other = TokenKey::new(b"another secret entirely");
        assert_ne!(other.id(), key.id());
        assert_eq!(other.verify(&token, 1_000, 1_800), Err(TokenError::Invalid));
        // Expiring further ahead than a token lasts: refused even with the right key.
        assert_eq!(key.verify(&token, 900, 1_800), Err(TokenError::Invalid));
        // Another grant's claims under this token's signature: refused.
        let (_, tag) = token.rsplit_once('.').unwrap();
        let bob = TokenGrant {
            user: "bob".into(),
            ..grant()
        };
        let forged = format!("{}.{tag}", key.mint(&bob).rsplit_once('.').unwrap().0);
        assert_eq!(key.verify(&forged, 1_000, 1_800), Err(TokenError::Invalid));
        for bad in [
            "",
            ".",
            "a.b",
            "a.b.c",
            &token[1..],
            &token[..token.len() - 1],
        ] {
            assert_eq!(
                key.verify(bad, 1_000, 1_800),
                Err(TokenError::Invalid),
                "{bad}"
            );
        }
        assert_eq!(format!("{key:?}"), "TokenKey(<redacted>)");
    }
}
