//! TLS on the chat listener (`[server] tls`): a real TLS client gets answers, a reload serves a
//! replaced certificate to new connections, and `botbridge check` names a bad certificate or key.

mod common;

use std::process::Command;
use std::time::Duration;

use common::SpawnedProxy as Proxy;
use common::*;
use serde_json::json;

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
