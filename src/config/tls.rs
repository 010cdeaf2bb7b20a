//! `[server] tls`: the chat listener's certificate chain and private key, read from PEM files at
//! every load (start, reload, upgrade) and checked to belong together.

use std::fmt;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use serde::Deserialize;

use super::ConfigError;

/// `[server] tls = { cert = "…", key = "…" }` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// The certificate chain, PEM: the server's certificate first, then its intermediates.
    pub cert: String,
    /// The private key of that certificate, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
}

/// The listener's identity, loaded and checked: what the TLS handshake presents.
#[derive(Clone)]
pub struct TlsIdentity {
    /// The certificate chain file it was read from.
    pub cert_path: String,
    /// The key file it was read from.
    pub key_path: String,
    /// The chain and its signing key.
    pub certified: Arc<CertifiedKey>,
}

impl fmt::Debug for TlsIdentity {
    /// The paths only: the key stays out of `Debug`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

/// Reads both files and checks that the key is the certificate's.
pub fn validate(raw: &RawTls) -> Result<TlsIdentity, ConfigError> {
    let chain = certificates(&raw.cert)?;
    let key = private_key(&raw.key)?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider.key_provider.load_private_key(key).map_err(|e| {
        ConfigError::new(
            "server.tls.key",
            format!("`{}`: not a usable key: {e}", raw.key),
        )
    })?;
    let certified = CertifiedKey::new(chain, signing);
    check_pair(&certified, raw)?;
    Ok(TlsIdentity {
        cert_path: raw.cert.clone(),
        key_path: raw.key.clone(),
        certified: Arc::new(certified),
    })
}

/// The certificate must parse, and its public key must be the key's (when the key type can say).
fn check_pair(certified: &CertifiedKey, raw: &RawTls) -> Result<(), ConfigError> {
    use rustls::{Error, InconsistentKeys};
    match certified.keys_match() {
        Ok(()) | Err(Error::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(()),
        Err(Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => Err(ConfigError::new(
            "server.tls.key",
            format!(
                "`{}` is not the key of the certificate in server.tls.cert",
                raw.key
            ),
        )),
        Err(e) => Err(ConfigError::new(
            "server.tls.cert",
            format!("`{}`: not a usable certificate: {e}", raw.cert),
        )),
    }
}

/// Every certificate in the PEM file, in order; at least one.
fn certificates(path: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let key = "server.tls.cert";
    let pem = read(key, path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::new(key, format!("`{path}`: not valid PEM: {e}")))?;
    if chain.is_empty() {
        return Err(ConfigError::new(
            key,
            format!("`{path}` holds no PEM certificate (-----BEGIN CERTIFICATE-----)"),
        ));
    }
    Ok(chain)
}

/// The first private key in the PEM file. Its bytes never appear in an error.
fn private_key(path: &str) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let key = "server.tls.key";
    let pem = read(key, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => ConfigError::new(
            key,
            format!("`{path}` holds no PEM private key (-----BEGIN PRIVATE KEY-----)"),
        ),
        _ => ConfigError::new(key, format!("`{path}`: not valid PEM")),
    })
}

fn read(key: &str, path: &str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| ConfigError::new(key, format!("cannot read `{path}`: {e}")))
}
