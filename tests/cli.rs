//! The `botbridge check` command: exit status and messages that name the key.

use std::process::Command;

fn check(config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_botbridge"))
        .args(["check", "--config"])
        .arg(&path)
        .env_remove("DEMO_UNSET_SECRET")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

const SHIPPED: &str = include_str!("../proxy.toml");

#[test]
fn the_shipped_config_checks_ok() {
    let (ok, text) = check(SHIPPED);
    assert!(ok, "{text}");
    assert!(text.contains("ok (8 routes, 4 backends)"), "{text}");
}

#[test]
fn errors_name_the_key_and_exit_non_zero() {
    let cases = [
        (
            SHIPPED.replace("threads = 2", "threads = 2\nthreds = 3"),
            "server.threds",
        ),
        (
            SHIPPED.replace("http://127.0.0.1:8081/api/chat", "127.0.0.1:8081"),
            "backends[0].url",
        ),
        (
            SHIPPED.replace("backend = \"demo-bot\"", "backend = \"missing\""),
            "routes[0].backend",
        ),
        (
            SHIPPED.replace(
                "token = \"demo-token\"",
                "token = { env = \"DEMO_UNSET_SECRET\" }",
            ),
            "clients.haptik[0].token",
        ),
        (
            SHIPPED.replace("listen = \"127.0.0.1:9090\"", "listen = \"127.0.0.1:8080\""),
            "admin.listen",
        ),
        ("not toml at all [".to_string(), "line 1"),
    ];
    for (config, key) in cases {
        let (ok, text) = check(&config);
        assert!(!ok, "should fail for {key}");
        assert!(text.contains(key), "{key} not named in: {text}");
        assert!(
            !text.contains("demo-backend-secret"),
            "secret printed: {text}"
        );
    }
}

#[test]
fn a_missing_file_is_an_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_botbridge"))
        .args(["check", "--config", "/nonexistent/proxy.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}
