//! The migration report page (`GET /migration` on the admin listener) in a real headless Chromium:
//! it loads with no console error, fetches nothing but itself, and shows each route with its match
//! rate; and the shipped demo route makes a real report out of the box. The browser is Debian's
//! `chromium`, driven by `tests/browser/migration.mjs` (playwright-core, `npm ci` in tests/browser);
//! the tests are skipped, saying so, only where node or chromium is not installed. The screenshots
//! are left in the target directory (`migration.png`, `migration-demo.png`). The admin listener's home
//! page likewise (`tests/browser/admin_home.mjs`, `admin-home.png`): its version, uptime, hash,
//! listeners and routes shown, and every link on it answering.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| "/usr/bin/chromium".into(), PathBuf::from)
}

/// Why the browser test cannot run here, if it cannot: node or chromium is not installed.
fn missing_tools() -> Option<String> {
    if Command::new("node").arg("--version").output().is_err() {
        return Some("node is not installed (apt-get install nodejs npm)".into());
    }
    if !chromium().exists() {
        return Some(format!(
            "{} is not installed (apt-get install chromium)",
            chromium().display()
        ));
    }
    None
}

/// Opens `url` in headless Chromium, saves a screenshot as `name` in the target directory, and
/// returns what the page showed (see `tests/browser/migration.mjs`).
fn in_browser(url: &str, name: &str) -> Value {
    browse("migration.mjs", url, name)
}

/// [`in_browser`] with another page script of `tests/browser`.
fn browse(script: &str, url: &str, name: &str) -> Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: run `npm ci` in {}",
        dir.display()
    );
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join(name);
    let out = Command::new("node")
        .arg(dir.join(script))
        .arg(url)
        .arg(&shot)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the browser run failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("page screenshot: {}", shot.display());
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("the page report")
}

/// The page as a reader saw it: loaded, no console problem, nothing fetched but the page.
fn assert_clean(seen: &Value, url: &str) {
    assert_eq!(seen["status"], 200, "{seen}");
    assert_eq!(seen["problems"], json!([]), "console errors or warnings");
    assert_eq!(seen["loaded"], json!([url]), "nothing fetched but the page");
}

fn text(t: &str) -> Value {
    json!({"content_type": "text", "content": {"text": t}})
}

/// Waits (10 s at most) until the route's shadow compared `n` pairs.
async fn pairs(proxy: &Proxy, route: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all: Value = (reqwest::get(proxy.admin_url("/migration.json"))
            .await
            .unwrap())
        .json()
        .await
        .unwrap();
        let routes = all["routes"].as_array().unwrap();
        let r = routes.iter().find(|r| r["route"] == route).unwrap();
        if r["report"]["pairs"].as_u64() == Some(n) {
            return;
        }
        assert!(Instant::now() < deadline, "{route}: {r}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn ask(proxy: &Proxy, path: &str, user: &str) {
    let body = json!({"sender": user, "message": "hello"}).to_string();
    let resp = reqwest::Client::new()
        .post(proxy.url(&format!("{path}?token=rasa-token")))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_page_shows_each_route_and_its_match_rate_in_chromium() {
    if let Some(why) = missing_tools() {
        skip_for_missing(&why);
        return;
    }
    let hello = Behaviour::Answer(csml_answer("r", &[text("Hello!")]));
    let other = Behaviour::Answer(csml_answer("r", &[text("Something else")]));
    let old = CsmlBackend::start(hello.clone()).await;
    let same = CsmlBackend::start(hello.clone()).await;
    let varies = CsmlBackend::start(hello).await;
    let differs = CsmlBackend::start(other.clone()).await;
    let mut cfg = csml_backend_toml("old", old.addr, "")
        + &csml_backend_toml("same", same.addr, "")
        + &csml_backend_toml("varies", varies.addr, "")
        + &csml_backend_toml("differs", differs.addr, "");
    for (route, keys) in [
        ("steady", "shadow = { backend = \"same\" }"),
        ("half-way", "shadow = { backend = \"varies\" }"),
        ("far-off", "shadow = { backend = \"differs\" }"),
        ("moving", "canary = { backend = \"same\", percent = 10 }"),
    ] {
        cfg += &format!(
            "\n[[routes]]\nname = \"{route}\"\npath = \"/{route}\"\ningress = \"rasa\"\nbackend = \"old\"\n{keys}\n"
        );
    }
    cfg += "\n[[clients.rasa]]\nname = \"web\"\ntoken = \"rasa-token\"\n";
    let proxy = Proxy::start(&config_with(&cfg)).await;
    for (i, route) in ["steady", "half-way", "far-off", "moving"]
        .iter()
        .enumerate()
    {
        for u in 0..2 {
            ask(&proxy, &format!("/{route}"), &format!("user-{i}-{u}")).await;
        }
    }
    pairs(&proxy, "half-way", 2).await;
    varies.set(other);
    for u in 0..2 {
        ask(&proxy, "/half-way", &format!("later-{u}")).await;
    }
    for (route, n) in [("steady", 2), ("half-way", 4), ("far-off", 2)] {
        pairs(&proxy, route, n).await;
    }
    let url = proxy.admin_url("/migration");
    let seen = tokio::task::spawn_blocking({
        let url = url.clone();
        move || in_browser(&url, "migration.png")
    })
    .await
    .unwrap();
    assert_clean(&seen, &url);
    let shown: Vec<(String, Value, bool)> = (seen["routes"].as_array().unwrap().iter())
        .map(|r| {
            let visible = r["rateVisible"].as_bool().unwrap() || r["matchRate"].is_null();
            (
                r["route"].as_str().unwrap().to_owned(),
                r["matchRate"].clone(),
                visible,
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            ("steady".into(), json!("100.0%"), true),
            ("half-way".into(), json!("50.0%"), true),
            ("far-off".into(), json!("0.0%"), true),
            ("moving".into(), Value::Null, true),
        ]
    );
    let far_off = &seen["routes"][2];
    assert!(far_off["chartPoints"].as_u64() >= Some(1), "{far_off}");
    assert!(far_off["text"].as_str().unwrap().contains("text_differs"));
    assert!(seen["routes"][3]["text"]
        .as_str()
        .unwrap()
        .contains("10% of users"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_demo_route_makes_a_real_report_out_of_the_box() {
    let proxy = Proxy::start(&shipped_config()).await;
    let haptik = [
        ("authorization", "Bearer demo-token".to_string()),
        ("client-id", "demo-client".to_string()),
    ];
    for i in 0..3 {
        let body = haptik_body(&format!("user-{i}"), "Hello", 343);
        let (status, _) = send(&proxy, "/demo/migration", &haptik, &body).await;
        assert_eq!(status, 200);
    }
    pairs(&proxy, "migration", 3).await;
    let report: Value = (reqwest::get(proxy.admin_url("/migration.json"))
        .await
        .unwrap())
    .json()
    .await
    .unwrap();
    let r = &report["routes"][0];
    assert_eq!(r["shadow"]["backend"], "demo-haptik-bot");
    assert_eq!(r["primary"][0]["backend"], "demo-bot");
    // The two demo bots say the same things in two dialects.
    assert_eq!(r["report"]["match_rate"], 1.0, "{r}");
    if let Some(why) = missing_tools() {
        skip_for_missing(&why);
        return;
    }
    let url = proxy.admin_url("/migration");
    let seen = tokio::task::spawn_blocking({
        let url = url.clone();
        move || in_browser(&url, "migration-demo.png")
    })
    .await
    .unwrap();
    assert_clean(&seen, &url);
    assert_eq!(seen["routes"][0]["matchRate"], "100.0%");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_home_page_shows_the_instance_and_every_link_answers_in_chromium() {
    let proxy = SpawnedProxy::start(&shipped_config());
    if let Some(why) = missing_tools() {
        skip_for_missing(&why);
        return;
    }
    let url = proxy.admin_url("/");
    let seen =
        tokio::task::spawn_blocking(move || browse("admin_home.mjs", &url, "admin-home.png"))
            .await
            .unwrap();
    assert_eq!(seen["status"], 200, "{seen}");
    assert_eq!(
        seen["problems"],
        json!([]),
        "console errors or warnings: {seen}"
    );
    assert_eq!(
        seen["loaded"],
        json!([proxy.admin_url("/")]),
        "nothing fetched but the page"
    );
    assert_eq!(seen["version"], env!("CARGO_PKG_VERSION"));
    assert!(seen["uptime"].as_str().unwrap().ends_with('s'), "{seen}");
    let hash = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(
            std::fs::read(&proxy.config_path).unwrap(),
        ))
    };
    assert_eq!(seen["hash"], hash.as_str());
    assert_eq!(
        seen["chat"],
        format!("http://127.0.0.1:{}", proxy.port).as_str()
    );
    assert_eq!(
        seen["admin"],
        format!("http://127.0.0.1:{}", proxy.admin_port).as_str()
    );
    // Every route of the shipped file, with its callers' dialects and its backends.
    let routes = seen["routes"].as_array().unwrap();
    assert_eq!(routes.len(), 13, "{seen}");
    let chat = routes.iter().find(|r| r["route"] == "chat").unwrap();
    assert!(chat["visible"].as_bool().unwrap());
    assert_eq!(chat["cells"][1], "/chat");
    assert!(
        chat["cells"][3]
            .as_str()
            .unwrap()
            .contains("demo-bot (csml)"),
        "{chat}"
    );
    // Every link answers, the metrics and the configuration among them.
    let links = seen["links"].as_array().unwrap();
    for wanted in [
        "/metrics",
        "/backends",
        "/migration",
        "/config",
        "/config/history",
        "/openapi/haptik.json",
    ] {
        assert!(
            links.iter().any(|l| l["href"] == wanted),
            "no link to {wanted}: {seen}"
        );
    }
    for link in links {
        assert_eq!(link["status"], 200, "{link}");
    }
}
