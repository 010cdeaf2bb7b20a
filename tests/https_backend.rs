//! The proxy reaches a CSML backend over HTTPS (rustls), verifying its certificate.
//!
//! On the spawned binary: the trusted roots come from the process environment (`SSL_CERT_FILE`, read
//! by pingora's connector when the chat service is built), which a test must not change in-process.

mod common;

use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;
use tokio_rustls::rustls;

/// A CA, and a `localhost` server certificate it signed.
fn certificates() -> (String, rustls::ServerConfig) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "botbridge test CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    (ca.pem(), server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_over_https_and_verifies_the_certificate() {
    let (ca_pem, server) = certificates();
    // Bind where the proxy will connect: the first address `localhost` resolves to.
    let local = ("localhost", 0).to_socket_addrs().unwrap().next().unwrap();
    let answer = csml_answer(
        "r",
        &[json!({"content_type":"text","content":{"text":"over TLS"}})],
    );
    let backend = CsmlBackend::start_on(
        local,
        Behaviour::Answer(answer),
        Some(tokio_rustls::TlsAcceptor::from(Arc::new(server))),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();

    let url = format!("https://localhost:{}/api/chat", backend.addr.port());
    let routes = r#"
[[routes]]
name = "chat"
path = "/chat"
ingress = "haptik"
backend = "bot"
"#;
    let cfg = config_with(
        &(csml_backend_toml("bot", backend.addr, "")
            .replace(&format!("http://{}/api/chat", backend.addr), &url)
            + routes),
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let send = |proxy_url: String| {
        client
            .post(proxy_url)
            .header("authorization", "Bearer acme-token")
            .header("client-id", "acme-client")
            .header("content-type", "application/json")
            .body(haptik_body("u", "hello", 1))
            .send()
    };

    // Trusting the test CA: the exchange works, twice (the second on a pooled TLS connection).
    let proxy = SpawnedProxy::start_with_env(&cfg, &[("SSL_CERT_FILE", ca_file.to_str().unwrap())]);
    for _ in 0..2 {
        let resp = send(proxy.url("/chat")).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body[0]["bot_messages"], json!(["over TLS"]));
    }
    let got = backend.requests();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|r| r.signature_ok));
    drop(proxy);

    // Not trusting it: the proxy refuses the certificate and answers 502.
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let proxy = SpawnedProxy::start_with_env(&cfg, &[("SSL_CERT_FILE", empty.to_str().unwrap())]);
    let resp = send(proxy.url("/chat")).await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(
        backend.count(),
        2,
        "no request was delivered over an untrusted connection"
    );
}
