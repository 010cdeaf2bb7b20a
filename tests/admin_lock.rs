//! The locked admin listener (`[admin] token`, `metrics_token_required`), its refusal of cross-site
//! requests, the warning for an exposed admin listener, and the private directory of the pid file
//! and upgrade socket.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::time::Duration;

use common::SpawnedProxy as Proxy;
use common::*;

const TOKEN: &str = "admin-secret-token";

fn routes() -> String {
    let routes = r#"
[[routes]]
name = "chat"
path = "/chat"
ingress = "haptik"
backend = "bot"
"#;
    csml_backend_toml("bot", "127.0.0.1:9".parse().unwrap(), "") + routes
}

/// The test config with these lines added to `[admin]`.
fn with_admin(lines: &str) -> String {
    config_with(&routes()).replace(
        "listen = \"127.0.0.1:{ADMIN}\"",
        &format!("listen = \"127.0.0.1:{{ADMIN}}\"\n{lines}"),
    )
}

/// A request to the admin listener; its status and body.
async fn admin(
    proxy: &Proxy,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut rb = reqwest::Client::new()
        .request(method, proxy.admin_url(path))
        .timeout(Duration::from_secs(10))
        .body(body.to_string());
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let r = rb.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn post(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    admin(proxy, reqwest::Method::POST, path, headers, "").await
}

/// The value of a metric series on `/metrics` (with the token, which an open listener ignores).
async fn metric(proxy: &Proxy, series: &str) -> u64 {
    let auth = format!("Bearer {TOKEN}");
    let (status, text) = admin(
        proxy,
        reqwest::Method::GET,
        "/metrics",
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(status, 200);
    (text.lines())
        .find_map(|l| l.strip_prefix(series))
        .unwrap_or_else(|| panic!("{series} missing"))
        .trim()
        .parse()
        .unwrap()
}

const RELOADS_OK: &str = "botbridge_config_reloads_total{result=\"ok\"}";
const RELOADS_ERROR: &str = "botbridge_config_reloads_total{result=\"error\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutating_endpoints_need_the_token_and_health_and_metrics_stay_open() {
    let proxy = Proxy::start_with_env(
        &with_admin("token = { env = \"TEST_ADMIN_TOKEN\" }"),
        &[("TEST_ADMIN_TOKEN", TOKEN)],
    );
    let good = format!("Bearer {TOKEN}");
    for path in ["/reload", "/auth-cache/clear"] {
        let refused = [
            vec![],
            vec![("authorization", "Bearer wrong-token")],
            vec![("authorization", "Basic YWRtaW4=")],
            vec![("authorization", TOKEN)],
        ];
        for headers in refused {
            let (status, body) = post(&proxy, path, &headers).await;
            assert_eq!(status, 401, "{path} {headers:?}: {body}");
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert!(json["error"].is_string(), "{body}");
            assert!(!body.contains(TOKEN));
        }
    }
    assert_eq!(
        metric(&proxy, RELOADS_OK).await,
        0,
        "no refused reload happened"
    );
    let unauthorized = "botbridge_admin_refusals_total{reason=\"unauthorized\"}";
    assert_eq!(metric(&proxy, unauthorized).await, 8);
    assert!(!proxy.logs().contains("auth cache cleared"));

    assert_eq!(
        post(&proxy, "/reload", &[("authorization", &good)]).await.0,
        200
    );
    assert_eq!(metric(&proxy, RELOADS_OK).await, 1);
    let (status, _) = post(&proxy, "/auth-cache/clear", &[("authorization", &good)]).await;
    assert_eq!(status, 200);
    assert!(proxy.logs().contains("auth cache cleared"));
    assert!(!proxy.logs().contains(TOKEN), "the token is never logged");

    // Without metrics_token_required, /metrics and /healthz need nothing.
    let get = |path: &'static str| admin(&proxy, reqwest::Method::GET, path, &[], "");
    assert_eq!(get("/metrics").await.0, 200);
    assert_eq!(get("/healthz").await, (200, "ok\n".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_locked_too_with_a_token_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin-token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let proxy = Proxy::start(&with_admin(&format!(
        "token = {{ file = \"{}\" }}\nmetrics_token_required = true",
        file.display()
    )));
    let get = |headers: Vec<(&'static str, String)>| {
        let mut rb = reqwest::Client::new().get(proxy.admin_url("/metrics"));
        for (k, v) in headers {
            rb = rb.header(k, v);
        }
        async move {
            let r = rb.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, body) = get(vec![]).await;
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains("botbridge_"), "no metrics without the token");
    let (status, _) = get(vec![("authorization", "Bearer nope".into())]).await;
    assert_eq!(status, 401);
    let (status, body) = get(vec![("authorization", format!("Bearer {TOKEN}"))]).await;
    assert_eq!(status, 200);
    assert!(body.contains("botbridge_config_reloads_total"), "{body}");
    let health = admin(&proxy, reqwest::Method::GET, "/healthz", &[], "").await;
    assert_eq!(health.0, 200, "/healthz stays open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_requests_are_refused_and_change_nothing() {
    let proxy = Proxy::start(&with_admin(""));
    let own = format!("http://127.0.0.1:{}", proxy.admin_port);
    let form = "application/x-www-form-urlencoded";
    let cases: [(&[(&str, &str)], &str); 6] = [
        (&[("origin", "https://evil.example")], ""),
        (&[("origin", "null")], ""),
        // A name re-pointed at this machine (DNS rebinding): the browser says same-origin.
        (
            &[
                ("origin", "http://rebound.example:9090"),
                ("sec-fetch-site", "same-origin"),
            ],
            "",
        ),
        (&[("content-type", form)], "a=b"),
        (&[("content-type", "text/plain")], "{}"),
        (&[("sec-fetch-site", "cross-site")], ""),
    ];
    for path in ["/reload", "/auth-cache/clear"] {
        for (headers, body) in cases {
            let (status, text) = admin(&proxy, reqwest::Method::POST, path, headers, body).await;
            assert_eq!(status, 403, "{path} {headers:?}: {text}");
            let json: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert!(
                json["error"].as_str().unwrap().contains("refused"),
                "{text}"
            );
        }
    }
    assert_eq!(
        metric(&proxy, RELOADS_OK).await,
        0,
        "no refused reload happened"
    );
    assert_eq!(metric(&proxy, RELOADS_ERROR).await, 0);
    assert!(
        !proxy.logs().contains("auth cache cleared"),
        "nor a cache clear"
    );
    let cross_site = "botbridge_admin_refusals_total{reason=\"cross_site\"}";
    assert_eq!(metric(&proxy, cross_site).await, 12);

    // The operator's own tools: no Origin, the listener's own origin, a JSON body, a direct visit.
    let json = "application/json";
    let allowed: [(&[(&str, &str)], &str); 4] = [
        (&[], ""),
        (&[("origin", &own), ("sec-fetch-site", "same-origin")], ""),
        (&[("content-type", json)], "{}"),
        (&[("sec-fetch-site", "none")], ""),
    ];
    for (headers, body) in allowed {
        let (status, text) = admin(&proxy, reqwest::Method::POST, "/reload", headers, body).await;
        assert_eq!(status, 200, "{headers:?}: {text}");
    }
    assert_eq!(metric(&proxy, RELOADS_OK).await, 4);
    let localhost = format!("http://localhost:{}", proxy.admin_port);
    let (status, _) = post(&proxy, "/auth-cache/clear", &[("origin", &localhost)]).await;
    assert_eq!(status, 200);
    assert!(proxy.logs().contains("auth cache cleared"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_a_cross_site_request_is_still_refused() {
    let proxy = Proxy::start(&with_admin(&format!("token = \"{TOKEN}\"")));
    let good = format!("Bearer {TOKEN}");
    let headers = [
        ("authorization", good.as_str()),
        ("origin", "https://evil.example"),
    ];
    assert_eq!(post(&proxy, "/reload", &headers).await.0, 403);
    assert_eq!(metric(&proxy, RELOADS_OK).await, 0);
}

/// A GET to the admin listener with this `Host` (or reqwest's own); status, headers and body.
async fn get_as(
    proxy: &Proxy,
    path: &str,
    host: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut rb = reqwest::Client::new()
        .get(proxy.admin_url(path))
        .timeout(Duration::from_secs(10));
    if let Some(host) = host {
        rb = rb.header("host", host);
    }
    let r = rb.send().await.unwrap();
    let headers = r.headers().clone();
    (r.status().as_u16(), headers, r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_listener_refuses_a_foreign_host() {
    let proxy = Proxy::start(&with_admin(""));
    let port = proxy.admin_port;
    let rebound = format!("rebound.example:{port}");
    let reads = [
        "/migration.json",
        "/backends",
        "/metrics",
        "/migration",
        "/openapi/csml.json",
        "/nope",
    ];
    for path in reads {
        for host in ["rebound.example", rebound.as_str()] {
            let (status, _, body) = get_as(&proxy, path, Some(host)).await;
            assert_eq!(status, 421, "{path} as {host}: {body}");
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert!(json["error"].as_str().unwrap().contains("Host"), "{body}");
            assert!(
                !body.contains("rebound"),
                "the Host is not repeated: {body}"
            );
        }
    }
    let headers = [("host", "rebound.example")];
    let (status, _) = admin(&proxy, reqwest::Method::POST, "/reload", &headers, "").await;
    assert_eq!(status, 421);
    assert_eq!(
        metric(&proxy, RELOADS_OK).await,
        0,
        "no refused reload happened"
    );
    let foreign = "botbridge_admin_refusals_total{reason=\"foreign_host\"}";
    assert_eq!(metric(&proxy, foreign).await, 13);
    assert!(!proxy.logs().contains("rebound"), "nor is it logged");
    // /healthz stays open; loopback names and addresses are answered.
    let health = get_as(&proxy, "/healthz", Some("rebound.example")).await;
    assert_eq!(health.0, 200);
    let own = [
        format!("localhost:{port}"),
        "localhost".to_string(),
        format!("127.0.0.1:{port}"),
        "[::1]".to_string(),
    ];
    for host in &own {
        let (status, _, body) = get_as(&proxy, "/backends", Some(host)).await;
        assert_eq!(status, 200, "{host}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_listener_answers_its_allowed_hosts() {
    let proxy = Proxy::start(&with_admin("allowed_hosts = [\"admin.internal\"]"));
    let with_port = format!("ADMIN.internal:{}", proxy.admin_port);
    for host in ["admin.internal", with_port.as_str()] {
        let (status, _, body) = get_as(&proxy, "/migration.json", Some(host)).await;
        assert_eq!(status, 200, "{host}: {body}");
    }
    let (status, _, _) = get_as(&proxy, "/metrics", Some("admin.internal.evil")).await;
    assert_eq!(status, 421);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_any_host_is_answered_and_the_token_guards() {
    let proxy = Proxy::start(&with_admin(&format!("token = \"{TOKEN}\"")));
    let (status, _, body) = get_as(&proxy, "/backends", Some("rebound.example")).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = post(&proxy, "/reload", &[("host", "rebound.example")]).await;
    assert_eq!(status, 401, "the token still guards what it guards");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_need_the_token_when_metrics_do() {
    let proxy = Proxy::start(&with_admin(&format!(
        "token = \"{TOKEN}\"\nmetrics_token_required = true"
    )));
    let (status, _, body) = get_as(&proxy, "/backends", None).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        !body.contains("endpoints"),
        "nothing of the backends: {body}"
    );
    let good = format!("Bearer {TOKEN}");
    let (status, body) = admin(
        &proxy,
        reqwest::Method::GET,
        "/backends",
        &[("authorization", &good)],
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_answer_forbids_content_sniffing() {
    let proxy = Proxy::start(&with_admin(""));
    let cases = [
        ("/healthz", None, 200),
        ("/backends", None, 200),
        ("/migration", None, 200),
        ("/metrics", None, 200),
        ("/nope", None, 404),
        ("/metrics", Some("rebound.example"), 421),
    ];
    for (path, host, want) in cases {
        let (status, headers, body) = get_as(&proxy, path, host).await;
        assert_eq!(status, want, "{path}: {body}");
        assert_eq!(
            headers.get("x-content-type-options").map(|v| v.as_bytes()),
            Some(&b"nosniff"[..]),
            "{path} {status}"
        );
    }
    let r = reqwest::Client::new()
        .delete(proxy.admin_url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
}

/// `botbridge check` on `config`; whether it passed and what it printed (stdout, then stderr).
fn check(config: &str, dir: &std::path::Path) -> (bool, String) {
    let path = dir.join("proxy.toml");
    let text = config
        .replace("{PORT}", &child_port().to_string())
        .replace("{ADMIN}", &child_port().to_string())
        .replace("{DIR}", &dir.display().to_string());
    std::fs::write(&path, text).unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_listener_beyond_loopback_without_a_token_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let exposed = with_admin("").replace(
        "listen = \"127.0.0.1:{ADMIN}\"",
        "listen = \"0.0.0.0:{ADMIN}\"",
    );
    let (ok, text) = check(&exposed, dir.path());
    assert!(ok, "a warning, not an error: {text}");
    assert!(
        text.contains("warning: admin.listen: 0.0.0.0:") && text.contains("admin.token is not set"),
        "{text}"
    );
    let locked = exposed.replace(
        "listen = \"0.0.0.0:{ADMIN}\"",
        &format!("listen = \"0.0.0.0:{{ADMIN}}\"\ntoken = \"{TOKEN}\""),
    );
    let (ok, text) = check(&locked, dir.path());
    assert!(ok && !text.contains("warning"), "{text}");
    let (ok, text) = check(&with_admin(""), dir.path());
    assert!(
        ok && !text.contains("warning"),
        "loopback needs no token: {text}"
    );

    // And at start, in the log.
    let proxy = Proxy::start(&exposed);
    assert!(
        proxy.logs().contains("admin.token is not set"),
        "{}",
        proxy.logs()
    );
}

#[test]
fn a_pid_or_upgrade_directory_others_can_write_is_refused_by_key() {
    let base = with_admin("");
    let shared = tempfile::tempdir().unwrap();
    let shared_path = shared.path().display().to_string();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let group = tempfile::tempdir().unwrap();
    let group_path = group.path().display().to_string();
    std::fs::set_permissions(group.path(), std::fs::Permissions::from_mode(0o770)).unwrap();
    let home = tempfile::tempdir().unwrap();
    let cases = [
        (
            base.replace(
                "pid_file = \"{DIR}/pid\"",
                &format!("pid_file = \"{shared_path}/pid\""),
            ),
            "server.pid_file",
        ),
        (
            base.replace(
                "upgrade_sock = \"{DIR}/upgrade.sock\"",
                &format!("upgrade_sock = \"{group_path}/sock\""),
            ),
            "server.upgrade_sock",
        ),
        (
            base.replace(
                "upgrade_sock = \"{DIR}/upgrade.sock\"",
                "upgrade_sock = \"/tmp/botbridge_upgrade.sock\"",
            ),
            "server.upgrade_sock",
        ),
    ];
    for (config, key) in &cases {
        let (ok, text) = check(config, home.path());
        assert!(!ok, "accepted; expected {key}");
        assert!(
            text.contains(&format!("{key}: directory")),
            "{key} not named: {text}"
        );
        assert!(text.contains("writable by group or others"), "{text}");
    }
    // Refused at start too, before anything listens.
    let path = home.path().join("start.toml");
    let home_path = home.path().display().to_string();
    let start =
        (cases[0].0.replace("{PORT}", "1").replace("{ADMIN}", "2")).replace("{DIR}", &home_path);
    std::fs::write(&path, start).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_botbridge"))
        .arg("--config")
        .arg(&path)
        .env("TEST_BACKEND_SECRET", BACKEND_SECRET)
        .env("TEST_CSML_CALLER_SECRET", CSML_CALLER_SECRET)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("server.pid_file: directory"), "{stderr}");
}

#[test]
fn a_directory_owned_by_another_user_is_refused() {
    // Only root can give a directory away; elsewhere there is nothing to set up.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let theirs = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(theirs.path(), Some(65534), Some(65534)).unwrap();
    let config = with_admin("").replace(
        "pid_file = \"{DIR}/pid\"",
        &format!("pid_file = \"{}/pid\"", theirs.path().display()),
    );
    let home = tempfile::tempdir().unwrap();
    let (ok, text) = check(&config, home.path());
    assert!(!ok);
    assert!(
        text.contains("server.pid_file: directory") && text.contains("owned by another user"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_directory_is_created_private() {
    let runtime_dir = tempfile::tempdir().unwrap();
    let config: String = (with_admin("").lines())
        .filter(|l| !l.starts_with("pid_file") && !l.starts_with("upgrade_sock"))
        .map(|l| format!("{l}\n"))
        .collect();
    let dir = runtime_dir.path().join("botbridge");
    assert!(!dir.exists());
    let xdg = runtime_dir.path().display().to_string();
    let proxy = Proxy::start_with_env(&config, &[("XDG_RUNTIME_DIR", &xdg)]);
    let meta = std::fs::metadata(&dir).expect("the default directory was created");
    assert!(meta.is_dir());
    assert_eq!(meta.mode() & 0o777, 0o700);
    assert_eq!(
        post(&proxy, "/reload", &[]).await.0,
        200,
        "the defaults reload unchanged"
    );
}
