//! TLS on the chat listener: pingora's rustls acceptor with a certificate resolver that reads the
//! identity from the runtime in force, so a reload (`SIGHUP`, `POST /reload`) that re-reads the
//! certificate and key files serves them to every new connection without a restart; connections
//! already open keep the certificate they were made with.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::ALPN;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::service::Runtime;

/// Picks the certificate of the runtime in force at each handshake.
struct RuntimeCertificate(Arc<ArcSwap<Runtime>>);

impl fmt::Debug for RuntimeCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RuntimeCertificate")
    }
}

impl ResolvesServerCert for RuntimeCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let runtime = self.0.load();
        runtime.config.tls.as_ref().map(|t| t.certified.clone())
    }
}

/// The chat listener's TLS settings: HTTP/1.1 by ALPN, the certificate from `runtime`.
pub fn settings(runtime: Arc<ArcSwap<Runtime>>) -> pingora::Result<TlsSettings> {
    // No paths: the resolver replaces them (pingora reads files only without one).
    let mut tls = TlsSettings::intermediate("", "")?;
    tls.set_cert_resolver(Arc::new(RuntimeCertificate(runtime)));
    tls.set_alpn(ALPN::H1);
    Ok(tls)
}
