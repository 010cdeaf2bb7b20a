//! Conversation tokens the proxy issues to the callers of a channel (a caller dialect whose
//! conversations the proxy holds): bound to one conversation and one user, signed with a key derived
//! from the caller's secret, so any instance configured with the same secret verifies the tokens of
//! another (a conversation continued elsewhere) and no token is stored.
//!
//! A token is `base64url(claims) "." base64url(HMAC-SHA256 of that)`; the claims name the
//! conversation, the user, the expiry and the credential's lookup digest (which finds the key
//! without trying every caller's; it is a hash of a hash of the secret, so it tells nothing).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

/// What a channel caller's credential adds to its grant.
#[derive(Debug)]
pub struct ChannelGrant {
    /// The key its conversation tokens are signed with.
    pub key: TokenKey,
    /// The browser origins (`scheme://host[:port]`) that may use it; empty: none (a browser's
    /// cross-origin requests are refused, other clients send no `Origin`).
    pub allowed_origins: Vec<String>,
    /// The lookup digest of its secret, named in the tokens it is issued.
    pub credential: [u8; 32],
}

impl ChannelGrant {
    /// Whether a browser at `origin` may use the credential (`*` allows any).
    pub fn allows_origin(&self, origin: &str) -> bool {
        (self.allowed_origins.iter()).any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
    }
}

/// The key conversation tokens are signed with.
#[derive(Clone)]
pub struct TokenKey(Hmac<Sha256>);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

/// What a valid token grants: one conversation, for one user, until `expires` (unix seconds), to
/// the caller whose credential has lookup digest `credential`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenGrant {
    pub conversation: String,
    pub user: String,
    pub expires: u64,
    pub credential: [u8; 32],
}

/// Why a token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Not a token of this key (or altered).
    Invalid,
    /// A token of this key past its expiry.
    Expired,
}

impl TokenKey {
    /// The key of a caller secret (its SHA-256 when the secret is configured as a digest, so both
    /// ways of configuring it give the same key).
    pub fn new(secret_sha256: &[u8; 32]) -> Self {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"botbridge channel token v1")
            .expect("HMAC takes any key");
        mac.update(secret_sha256);
        let derived = mac.finalize().into_bytes();
        TokenKey(Hmac::new_from_slice(&derived).expect("HMAC takes any key"))
    }

    /// A token for `grant`.
    pub fn mint(&self, grant: &TokenGrant) -> String {
        let claims = json!({"c": grant.conversation, "u": grant.user, "e": grant.expires,
                            "k": URL_SAFE_NO_PAD.encode(grant.credential)});
        let body = URL_SAFE_NO_PAD.encode(claims.to_string());
        let mut mac = self.0.clone();
        mac.update(body.as_bytes());
        let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{body}.{tag}")
    }

    /// The grant of a token, checked in constant time, at `now` (unix seconds).
    pub fn verify(&self, token: &str, now: u64) -> Result<TokenGrant, TokenError> {
        let (body, tag) = token.split_once('.').ok_or(TokenError::Invalid)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TokenError::Invalid)?;
        let mut mac = self.0.clone();
        mac.update(body.as_bytes());
        mac.verify_slice(&tag).map_err(|_| TokenError::Invalid)?;
        let grant = claims(body).ok_or(TokenError::Invalid)?;
        if now >= grant.expires {
            return Err(TokenError::Expired);
        }
        Ok(grant)
    }
}

/// The credential digest a token names, unverified: only where to find the key that verifies it.
pub fn token_credential(token: &str) -> Option<[u8; 32]> {
    let (body, _) = token.split_once('.')?;
    claims(body).map(|g| g.credential)
}

/// The claims of a token's first part.
fn claims(body: &str) -> Option<TokenGrant> {
    let claims = URL_SAFE_NO_PAD.decode(body).ok()?;
    let v: Value = serde_json::from_slice(&claims).ok()?;
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let credential = URL_SAFE_NO_PAD.decode(text("k")?).ok()?;
    Some(TokenGrant {
        conversation: text("c")?,
        user: text("u")?,
        expires: v.get("e").and_then(Value::as_u64)?,
        credential: credential.try_into().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> TokenGrant {
        TokenGrant {
            conversation: "conv-1".into(),
            user: "dl_u1".into(),
            expires: 2_800,
            credential: [3; 32],
        }
    }

    #[test]
    fn tokens_grant_one_conversation_until_they_expire_on_any_instance() {
        let secret = [7; 32];
        let key = TokenKey::new(&secret);
        let token = key.mint(&grant());
        assert_eq!(TokenKey::new(&secret).verify(&token, 1_000), Ok(grant()));
        assert_eq!(token_credential(&token), Some([3; 32]));
        assert_eq!(key.verify(&token, 2_800), Err(TokenError::Expired));
        assert_eq!(
            TokenKey::new(&[8; 32]).verify(&token, 1_000),
            Err(TokenError::Invalid)
        );
        // Another grant's claims under this token's tag: refused.
        let (_, tag) = token.split_once('.').unwrap();
        let other = TokenGrant {
            user: "dl_u2".into(),
            ..grant()
        };
        let (body, _) = key
            .mint(&other)
            .split_once('.')
            .map(|(b, t)| (b.to_owned(), t.to_owned()))
            .unwrap();
        let forged = format!("{body}.{tag}");
        assert_eq!(key.verify(&forged, 1_000), Err(TokenError::Invalid));
        for bad in ["", ".", "abc", "a.b", &token[1..]] {
            assert_eq!(key.verify(bad, 1_000), Err(TokenError::Invalid), "{bad}");
        }
        assert_eq!(format!("{key:?}"), "TokenKey(<redacted>)");
    }
}
