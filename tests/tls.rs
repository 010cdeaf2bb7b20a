//! TLS on the chat listener (`[server] tls`): a real TLS client gets answers, a reload serves a
//! replaced certificate to new connections, and `botbridge check` names a bad certificate or key.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::SpawnedProxy as Proxy;
use common::*;
use serde_json::json;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

/// A test CA that signs `localhost` certificates.
struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Ca {
    fn new() -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        (params.distinguished_name).push(rcgen::DnType::CommonName, "botbridge test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// A new `localhost` certificate and its key, as PEM.
    fn leaf(&self, name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        (params.distinguished_name).push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn connector(&self) -> tokio_rustls::TlsConnector {
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
fn der_of(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// Writes the certificate (followed by the CA, as a chain) and key where the config points.
fn install(dir: &Path, ca: &Ca, (cert, key): &(String, String)) {
    std::fs::write(dir.join("cert.pem"), format!("{cert}{}", ca.cert.pem())).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
}

/// One TLS connection to the proxy, verified against the test CA as `localhost`.
struct Client(TlsStream<TcpStream>);

impl Client {
    async fn connect(ca: &Ca, port: u16) -> Client {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        Client(ca.connector().connect(name, tcp).await.unwrap())
    }

    /// The certificate the proxy presented (the leaf, as DER).
    fn certificate(&self) -> Vec<u8> {
        self.0.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    }

    /// POSTs a Haptik request on this connection; the status and body of the answer.
    async fn chat(&mut self, text: &str) -> (u16, serde_json::Value) {
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

fn tls_config(backend: std::net::SocketAddr, extra_server: &str) -> String {
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
fn start_with_certificate(config: &str, ca: &Ca, leaf: &(String, String)) -> (Proxy, TempDir) {
    let certs = tempfile::tempdir().unwrap();
    install(certs.path(), ca, leaf);
    let at = |name: &str| certs.path().join(name).display().to_string();
    let config = config
        .replace("{DIR}/cert.pem", &at("cert.pem"))
        .replace("{DIR}/key.pem", &at("key.pem"));
    (Proxy::start(&config), certs)
}

async fn admin_reload(proxy: &Proxy) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(proxy.admin_url("/reload"))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_tls_is_answered_and_http_1_1_is_negotiated() {
    let answer = csml_answer(
        "r",
        &[json!({"content_type":"text","content":{"text":"secure"}})],
    );
    let backend = CsmlBackend::start(Behaviour::Answer(answer)).await;
    let ca = Ca::new();
    let leaf = ca.leaf("first");
    // The smallest read buffer: the TLS stream reads through it too.
    let (proxy, _certs) = start_with_certificate(
        &tls_config(backend.addr, "read_buffer_bytes = 1024"),
        &ca,
        &leaf,
    );
    let mut client = Client::connect(&ca, proxy.port).await;
    assert_eq!(client.0.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(client.certificate(), der_of(&leaf.0));
    let long = "x".repeat(1500);
    for text in ["hello", long.as_str()] {
        let (status, body) = client.chat(text).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body[0]["bot_messages"], json!(["secure"]));
        assert_eq!(body[0]["fields"]["body"], json!(text));
    }
    assert_eq!(backend.count(), 2, "both requests on one TLS connection");

    // Plain HTTP to the TLS listener is not answered as HTTP.
    let plain = reqwest::Client::new()
        .post(proxy.url("/chat"))
        .timeout(Duration::from_secs(5))
        .body(haptik_body("u", "hi", 1))
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");
    assert_eq!(backend.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_serves_the_replaced_certificate_to_new_connections() {
    let answer = csml_answer(
        "r",
        &[json!({"content_type":"text","content":{"text":"ok"}})],
    );
    let backend = CsmlBackend::start(Behaviour::Answer(answer)).await;
    let ca = Ca::new();
    let first = ca.leaf("first");
    let (proxy, certs) = start_with_certificate(&tls_config(backend.addr, ""), &ca, &first);
    let mut old = Client::connect(&ca, proxy.port).await;
    assert_eq!(old.certificate(), der_of(&first.0));
    assert_eq!(old.chat("before").await.0, 200);

    // Rotate the files and reload: new connections get the new certificate.
    let second = ca.leaf("second");
    install(certs.path(), &ca, &second);
    assert_eq!(admin_reload(&proxy).await.0, 200);
    let mut new = Client::connect(&ca, proxy.port).await;
    assert_eq!(new.certificate(), der_of(&second.0));
    assert_eq!(new.chat("after").await.0, 200);
    // The connection made before keeps its certificate and goes on serving.
    assert_eq!(old.chat("still").await.0, 200);

    // A key that is not the certificate's: the reload is refused by key and the second
    // certificate stays in force; SIGHUP then applies a third.
    let third = ca.leaf("third");
    std::fs::write(certs.path().join("key.pem"), &third.1).unwrap();
    let (status, text) = admin_reload(&proxy).await;
    assert_eq!(status, 400);
    assert!(text.contains("server.tls.key"), "{text}");
    assert_eq!(
        Client::connect(&ca, proxy.port).await.certificate(),
        der_of(&second.0)
    );
    install(certs.path(), &ca, &third);
    proxy.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while Client::connect(&ca, proxy.port).await.certificate() != der_of(&third.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not rotate:\n{}",
            proxy.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `botbridge check` on `config`; whether it passed, and what it printed.
fn check(config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_botbridge"))
        .args(["check", "--config"])
        .arg(&path)
        .env("TEST_BACKEND_SECRET", BACKEND_SECRET)
        .env("TEST_CSML_CALLER_SECRET", CSML_CALLER_SECRET)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn check_names_an_unreadable_non_pem_or_mismatched_certificate_or_key() {
    let ca = Ca::new();
    let (cert, key) = ca.leaf("leaf");
    let (_, other_key) = ca.leaf("other");
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let (cert, key, other_key) = (
        file("c.pem", &cert),
        file("k.pem", &key),
        file("o.pem", &other_key),
    );
    let junk = file("junk.pem", "not a certificate\n");
    let missing = dir.path().join("missing.pem").display().to_string();
    let base = tls_config("127.0.0.1:9".parse().unwrap(), "")
        .replace("{PORT}", "1")
        .replace("{ADMIN}", "2");
    let with = |c: &str, k: &str| {
        (base
            .replace("{DIR}/cert.pem", c)
            .replace("{DIR}/key.pem", k))
        .replace("{DIR}", &dir.path().display().to_string())
    };
    let (ok, text) = check(&with(&cert, &key));
    assert!(ok, "{text}");
    let cases = [
        (with(&missing, &key), "server.tls.cert: cannot read"),
        (with(&junk, &key), "server.tls.cert"),
        (with(&cert, &junk), "server.tls.key"),
        (with(&cert, &cert), "server.tls.key"),
        (with(&cert, &other_key), "server.tls.key"),
        (with(&key, &key), "server.tls.cert"),
    ];
    for (config, named) in cases {
        let (ok, text) = check(&config);
        assert!(!ok, "accepted; expected {named}");
        assert!(text.contains(named), "{named} not named in: {text}");
        assert!(
            !text.contains("PRIVATE KEY-----\n"),
            "key material printed: {text}"
        );
    }
    let (_, text) = check(&with(&cert, &other_key));
    assert!(text.contains("is not the key of the certificate"), "{text}");
}
