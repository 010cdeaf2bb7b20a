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
    assert!(text.contains("ok (13 routes, 6 backends)"), "{text}");
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
        // Two Direct Line credentials signing their tokens alike would share conversations.
        (
            SHIPPED.replace(
                "secret = \"demo-directline-secret\"",
                "secret = \"demo-directline-secret\"\ntoken_secret = \"shared-token-secret-0123\"\n\n[[clients.directline]]\nname = \"other\"\nsecret = \"other-directline-secret\"\ntoken_secret = \"shared-token-secret-0123\"",
            ),
            "clients.directline[1].token_secret",
        ),
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

/// The shipped config with `[delivery]` and `[migration]` file keys set to `extra`'s lines.
fn with_files(extra: &str) -> String {
    format!("{SHIPPED}\n{extra}\n")
}

#[test]
fn delivery_and_divergence_directories_others_can_write_are_refused_by_key() {
    use std::os::unix::fs::PermissionsExt;
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let open = shared.path().display();
    let cases = [
        (
            format!("[delivery]\nspool_dir = \"{open}\""),
            "delivery.spool_dir",
        ),
        (
            format!("[delivery]\ndead_letter_path = \"{open}/dead.jsonl\""),
            "delivery.dead_letter_path",
        ),
        (
            format!("[migration]\ndivergence_log = \"{open}/divergences.jsonl\""),
            "migration.divergence_log",
        ),
    ];
    for (extra, key) in cases {
        let (ok, text) = check(&with_files(&extra));
        assert!(!ok, "accepted; expected {key}: {text}");
        assert!(text.contains(&format!("{key}: directory")), "{text}");
        assert!(text.contains("writable by group or others"), "{text}");
    }
    let private = tempfile::tempdir().unwrap();
    let extra = format!("[delivery]\nspool_dir = \"{}\"", private.path().display());
    let (ok, text) = check(&with_files(&extra));
    assert!(ok, "{text}");
}

#[test]
fn a_spool_dir_owned_by_another_user_is_refused() {
    // Only root can give a directory away; elsewhere there is nothing to set up.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let theirs = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(theirs.path(), Some(65534), Some(65534)).unwrap();
    let extra = format!("[delivery]\nspool_dir = \"{}\"", theirs.path().display());
    let (ok, text) = check(&with_files(&extra));
    assert!(!ok);
    assert!(
        text.contains("delivery.spool_dir: directory") && text.contains("owned by another user"),
        "{text}"
    );
}

#[test]
fn help_names_every_vendor_dialect() {
    let out = Command::new(env!("CARGO_BIN_EXE_botbridge"))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for vendor in ["Haptik", "CSML", "Rasa", "Lex", "Dialogflow", "Direct Line"] {
        assert!(
            text.contains(vendor),
            "--help does not name {vendor}:\n{text}"
        );
    }
}
