//! TLS test helpers: a test CA, a client that trusts it, and a proxy config and start with its
//! certificate files.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

use super::*;

/// A test CA that signs `localhost` certificates.
pub struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Ca {
    pub fn new() -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        (params.distinguished_name).push(rcgen::DnType::CommonName, "botbridge test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// A new `localhost` certificate and its key, as PEM.
    pub fn leaf(&self, name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        (params.distinguished_name).push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

/// The certificate a PEM file starts with, as DER.
pub fn der_of(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// Writes the certificate (followed by the CA, as a chain) and key where the config points.
pub fn install(dir: &Path, ca: &Ca, (cert, key): &(String, String)) {
    std::fs::write(dir.join("cert.pem"), format!("{cert}{}", ca.cert.pem())).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
}
/// One TLS connection to the proxy, verified against the test CA as `localhost`.
pub struct Client(pub TlsStream<TcpStream>);

impl Client {
    pub async fn connect(ca: &Ca, port: u16) -> Client {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        Client(ca.connector().connect(name, tcp).await.unwrap())
    }

    /// The certificate the proxy presented (the leaf, as DER).
    pub fn certificate(&self) -> Vec<u8> {
        self.0.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    }

    /// POSTs a Haptik request on this connection; the status and body of the answer.
    pub async fn chat(&mut self, text: &str) -> (u16, serde_json::Value) {
        let body = haptik_body("u", text, 1);
        let head = format!(
            "POST /chat HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer acme-token\r\n\
             client-id: acme-client\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        self.0.write_all(head.as_bytes()).await.unwrap();
        self.0.write_all(body.as_bytes()).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), read_answer(&mut self.0))
            .await
            .expect("an answer within 10 s")
    }
}

/// Reads one HTTP/1.1 answer with a `Content-Length`.
async fn read_answer(stream: &mut TlsStream<TcpStream>) -> (u16, serde_json::Value) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed before the answer's header");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status: u16 = head[9..12].parse().unwrap();
    let length: usize = (head.lines())
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .expect("Content-Length");
    while buf.len() < end + length {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed in the answer's body");
        buf.extend_from_slice(&chunk[..n]);
    }
    (
        status,
        serde_json::from_slice(&buf[end..end + length]).unwrap(),
    )
}

pub fn tls_config(backend: std::net::SocketAddr, extra_server: &str) -> String {
    let routes = r#"
[[routes]]
name = "chat"
path = "/chat"
ingress = "haptik"
backend = "bot"
"#;
    config_with(&(csml_backend_toml("bot", backend, "") + routes)).replace(
        "\n[server]\n",
        &format!(
            "\n[server]\ntls = {{ cert = \"{{DIR}}/cert.pem\", key = \"{{DIR}}/key.pem\" }}\n{extra_server}\n"
        ),
    )
}

/// Starts the proxy on `config` with the certificate files in a folder of their own (they must
/// exist before the proxy reads its config); the folder lives as long as the returned handle.
pub fn start_with_certificate(
    config: &str,
    ca: &Ca,
    leaf: &(String, String),
) -> (SpawnedProxy, TempDir) {
    let certs = tempfile::tempdir().unwrap();
    install(certs.path(), ca, leaf);
    let at = |name: &str| certs.path().join(name).display().to_string();
    let config = config
        .replace("{DIR}/cert.pem", &at("cert.pem"))
        .replace("{DIR}/key.pem", &at("key.pem"));
    (SpawnedProxy::start(&config), certs)
}
