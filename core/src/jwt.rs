//! RS256 JSON Web Tokens: minting one with a service account's private key (the OAuth2 JWT-bearer
//! grant a Google bot's token is obtained with) and verifying one against a public key (a caller's
//! self-signed service-account JWT). Keys are read from PEM: a PKCS#8 or PKCS#1 private key; a
//! public key (SPKI or PKCS#1) or an X.509 certificate, as Google publishes service-account keys.
//!
//! Only RS256 is accepted: a token naming another algorithm (`none`, HS256) is refused before any
//! key is used. Times are checked by the caller of [`verify`] on the claims it returns.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs1v15::{Signature, SigningKey, VerifyingKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::signature::{SignatureEncoding, Signer, Verifier};
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde_json::{Map, Value};
use sha2::Sha256;

/// Claims, as JSON.
pub type Claims = Map<String, Value>;

/// A private key for minting.
pub struct PrivateKey(SigningKey<Sha256>);

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

/// A public key for verifying.
#[derive(Debug, Clone)]
pub struct PublicKey(VerifyingKey<Sha256>);

/// Reads a PEM private key (PKCS#8 `PRIVATE KEY`, as service-account files hold, or PKCS#1).
pub fn private_key_from_pem(pem: &str) -> Result<PrivateKey, String> {
    let key = RsaPrivateKey::from_pkcs8_pem(pem)
        .or_else(|_| RsaPrivateKey::from_pkcs1_pem(pem))
        .map_err(|_| "not an RSA private key in PEM (PKCS#8 or PKCS#1)".to_owned())?;
    Ok(PrivateKey(SigningKey::new(key)))
}

impl PrivateKey {
    /// Its public half.
    pub fn public(&self) -> PublicKey {
        use rsa::signature::Keypair;
        PublicKey(self.0.verifying_key())
    }
}

/// Reads a PEM public key (`PUBLIC KEY`, `RSA PUBLIC KEY`) or the key of a PEM certificate.
pub fn public_key_from_pem(pem: &str) -> Result<PublicKey, String> {
    let key = if pem.contains("BEGIN CERTIFICATE") {
        use x509_cert::der::{DecodePem, Encode};
        let cert = x509_cert::Certificate::from_pem(pem.as_bytes())
            .map_err(|_| "not a PEM certificate".to_owned())?;
        let spki = cert.tbs_certificate.subject_public_key_info;
        let der = spki
            .to_der()
            .map_err(|_| "unreadable certificate key".to_owned())?;
        RsaPublicKey::from_public_key_der(&der).map_err(|_| "the certificate's key is not RSA")?
    } else {
        RsaPublicKey::from_public_key_pem(pem)
            .or_else(|_| RsaPublicKey::from_pkcs1_pem(pem))
            .map_err(|_| "not an RSA public key or certificate in PEM".to_owned())?
    };
    Ok(PublicKey(VerifyingKey::new(key)))
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// An RS256 JWT of `claims`, with `kid` in its header when given.
pub fn sign(key: &PrivateKey, kid: Option<&str>, claims: &Claims) -> String {
    let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
    if let Some(kid) = kid {
        header["kid"] = Value::from(kid);
    }
    let mut out = b64(header.to_string().as_bytes());
    out.push('.');
    out.push_str(&b64(Value::Object(claims.clone()).to_string().as_bytes()));
    let signature = key.0.sign(out.as_bytes());
    out.push('.');
    out.push_str(&b64(&signature.to_bytes()));
    out
}

/// Why a token was refused (a bounded set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtError {
    /// Not three base64url parts of JSON objects.
    Malformed,
    /// An algorithm other than RS256.
    Algorithm,
    /// The signature does not verify.
    BadSignature,
}

/// The header and claims of a token, unverified: for finding the key it claims to be signed with.
pub fn peek(token: &str) -> Result<(Claims, Claims), JwtError> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let object = |part: &str| -> Result<Claims, JwtError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| JwtError::Malformed)?;
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(JwtError::Malformed),
        }
    };
    let header = object(h)?;
    if header.get("alg").and_then(Value::as_str) != Some("RS256") {
        return Err(JwtError::Algorithm);
    }
    Ok((header, object(c)?))
}

/// The claims of an RS256 token whose signature `key` verifies.
pub fn verify(token: &str, key: &PublicKey) -> Result<Claims, JwtError> {
    let (_, claims) = peek(token)?;
    let (signed, signature) = token.rsplit_once('.').ok_or(JwtError::Malformed)?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| JwtError::Malformed)?;
    let signature = Signature::try_from(signature.as_slice()).map_err(|_| JwtError::Malformed)?;
    key.0
        .verify(signed.as_bytes(), &signature)
        .map_err(|_| JwtError::BadSignature)?;
    Ok(claims)
}

/// A numeric claim (`exp`, `iat`) as unix seconds.
pub fn seconds(claims: &Claims, name: &str) -> Option<u64> {
    claims.get(name).and_then(Value::as_u64)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A 2048-bit key made for these tests only.
    pub(crate) const TEST_KEY: &str = include_str!("../../tests/fixtures/dialogflow/test-key.pem");

    #[test]
    fn a_minted_token_verifies_and_a_changed_one_does_not() {
        let key = private_key_from_pem(TEST_KEY).unwrap();
        let mut claims = Claims::new();
        claims.insert("iss".into(), "a@b".into());
        claims.insert("exp".into(), 10.into());
        let token = sign(&key, Some("k1"), &claims);
        let (header, _) = peek(&token).unwrap();
        assert_eq!(header["kid"], "k1");
        let got = verify(&token, &key.public()).unwrap();
        assert_eq!(
            (got["iss"].as_str(), seconds(&got, "exp")),
            (Some("a@b"), Some(10))
        );
        let (h, rest) = token.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let forged = format!("{h}.{}.{sig}", b64(br#"{"iss":"evil"}"#));
        assert_eq!(verify(&forged, &key.public()), Err(JwtError::BadSignature));
        let none = format!("{}.{}.", b64(br#"{"alg":"none"}"#), b64(b"{}"));
        assert_eq!(verify(&none, &key.public()), Err(JwtError::Algorithm));
        assert_eq!(verify("a.b", &key.public()), Err(JwtError::Malformed));
    }

    #[test]
    fn keys_are_read_from_public_pems_and_refused_otherwise() {
        assert!(private_key_from_pem("nope").is_err());
        assert!(public_key_from_pem(
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"
        )
        .is_err());
        let public = include_str!("../../tests/fixtures/dialogflow/test-key.pub.pem");
        let key = private_key_from_pem(TEST_KEY).unwrap();
        let token = sign(&key, None, &Claims::new());
        assert!(verify(&token, &public_key_from_pem(public).unwrap()).is_ok());
        let cert = include_str!("../../tests/fixtures/dialogflow/test-key.cert.pem");
        assert!(verify(&token, &public_key_from_pem(cert).unwrap()).is_ok());
    }
}
