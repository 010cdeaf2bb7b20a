//! Async mode across a planned restart without a journal (`journal = "off"`): the real binary,
//! stopped with SIGTERM while deliveries are pending, spools them; the next process delivers every
//! one, with the same idempotency keys. (With the journal, `tests/async_journal.rs`.)

mod common;
mod receiver;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use receiver::{Receiver, Reply};
use serde_json::json;

fn config(spool: &std::path::Path) -> String {
    format!(
        "{}\n[delivery]\njournal = \"off\"\nspool_dir = \"{}\"\ndead_letter_path = \"{{DIR}}/dead.jsonl\"\nretry_initial_ms = 50\nretry_max_ms = 200\n",
        shipped_config().replace("grace_period_seconds = 5", "grace_period_seconds = 2"),
        spool.display()
    )
}

fn body(text: &str, callback: &str) -> String {
    json!({
        "client": {"user_id": "spool-user"},
        "metadata": {},
        "payload": {"content_type": "text", "content": {"text": text}},
        "callback_url": callback,
    })
    .to_string()
}

async fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Sends two async requests whose receiver fails (503), and waits for a first failed attempt.
async fn pending_deliveries(spool: &std::path::Path) -> (Receiver, SpawnedProxy) {
    let rx = Receiver::start(Reply::FailFirst(usize::MAX, 503)).await;
    let proxy = SpawnedProxy::start(&config(spool));
    for text in ["one", "two"] {
        let (key, sig) = csml_sign("demo-key", "demo-secret", unix_now());
        let headers = [("x-api-key", key), ("x-api-signature", sig)];
        let (status, ack) = send(&proxy, "/chat", &headers, &body(text, &rx.url("/cb"))).await;
        assert_eq!(status, 200, "{ack}");
    }
    wait_until("a first failed attempt", Duration::from_secs(10), || {
        !rx.received().is_empty()
    })
    .await;
    (rx, proxy)
}

/// The idempotency keys the receiver has seen so far.
fn keys_tried(rx: &Receiver) -> BTreeSet<String> {
    (rx.received().iter())
        .filter_map(|g| g.header("idempotency-key").map(str::to_owned))
        .collect()
}

/// Once the receiver answers 200: every message of both requests arrives once, in order, with the
/// keys tried before, and the spool is emptied.
async fn all_delivered(rx: &Receiver, spool: &std::path::Path, attempted: BTreeSet<String>) {
    rx.set(Reply::Ok);
    wait_until("all 8 messages delivered", Duration::from_secs(15), || {
        rx.received().iter().filter(|g| g.status == 200).count() >= 8
    })
    .await;
    let delivered: Vec<_> = rx
        .received()
        .into_iter()
        .filter(|g| g.status == 200)
        .collect();
    let keys: BTreeSet<String> = (delivered.iter())
        .map(|g| g.header("idempotency-key").unwrap().to_owned())
        .collect();
    assert_eq!(keys.len(), 8, "every message of both requests, each once");
    assert!(
        attempted.is_subset(&keys),
        "the keys tried before the stop are the ones delivered after"
    );
    let ends = delivered
        .iter()
        .filter(|g| g.json()["conversation_end"] == true)
        .count();
    assert_eq!(ends, 2, "both closing POSTs");
    // In order within the conversation: "one"'s messages before "two"'s.
    let texts: Vec<String> = delivered
        .iter()
        .map(|g| g.json()["messages"].to_string())
        .collect();
    let first_two = texts.iter().position(|t| t.contains("two")).unwrap();
    assert!(
        texts[first_two..].iter().all(|t| !t.contains("one")),
        "{texts:#?}"
    );
    wait_until("the spool to be emptied", Duration::from_secs(5), || {
        std::fs::read_dir(spool).unwrap().next().is_none()
    })
    .await;
}

#[tokio::test]
async fn a_proxy_stopped_with_deliveries_pending_loses_none_after_it_starts_again() {
    let spool = tempfile::tempdir().unwrap();
    let (rx, mut first) = pending_deliveries(spool.path()).await;
    first.signal("TERM");
    wait_until("the first proxy to exit", Duration::from_secs(15), || {
        !first.alive()
    })
    .await;
    let logs = first.logs();
    assert!(logs.contains("pending deliveries spooled"), "{logs}");
    let files: Vec<_> = std::fs::read_dir(spool.path()).unwrap().flatten().collect();
    assert_eq!(files.len(), 1, "one spool file");
    let attempted = keys_tried(&rx);

    let second = SpawnedProxy::start(&config(spool.path()));
    all_delivered(&rx, spool.path(), attempted).await;
    drop(second);
}

#[tokio::test]
async fn a_graceful_upgrade_hands_pending_deliveries_to_the_new_process() {
    let spool = tempfile::tempdir().unwrap();
    let (rx, mut proxy) = pending_deliveries(spool.path()).await;
    let (mut old, old_log) = proxy.upgrade();
    // The old process drains for its grace period (2 s), then spools what is left and exits.
    let deadline = Instant::now() + Duration::from_secs(15);
    while old.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the old process did not exit");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let logs = std::fs::read_to_string(old_log).unwrap();
    assert!(logs.contains("pending deliveries spooled"), "{logs}");
    let attempted = keys_tried(&rx);
    // The new process serves meanwhile, and takes the spool within a second or so.
    assert!(proxy.alive());
    all_delivered(&rx, spool.path(), attempted).await;
    let (key, sig) = csml_sign("demo-key", "demo-secret", unix_now());
    let headers = [("x-api-key", key), ("x-api-signature", sig)];
    let (status, _) = send(&proxy, "/chat", &headers, &body("three", &rx.url("/cb"))).await;
    assert_eq!(
        status, 200,
        "the upgraded process serves new async requests"
    );
}

#[tokio::test]
async fn a_second_process_on_the_same_config_refuses_to_start_while_the_first_lives() {
    let spool = tempfile::tempdir().unwrap();
    let mut first = SpawnedProxy::start(&config(spool.path()));
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_botbridge"));
    cmd.arg("--config")
        .arg(&first.config_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    for (k, v) in TEST_SECRETS {
        cmd.env(k, v);
    }
    let mut second = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            panic!("the second process did not refuse to start");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("another botbridge process"), "{stderr}");
    assert!(first.alive(), "the first one runs on");
}

/// One spooled request of `credential` to `url` with one message keyed `key`.
fn spool_line(credential: &str, url: &str, key: &str) -> String {
    let deadline = (unix_now() + 600) * 1000;
    let line = json!({
        "credential": credential,
        "url": url,
        "request_id": format!("req-{key}"),
        "conversation": format!("{url}\nuser-{key}"),
        "messages": [{"key": key, "body": "{\"messages\":[]}", "deadline_ms": deadline, "attempts": 0}],
    });
    format!("{line}\n")
}

#[tokio::test]
async fn spooled_deliveries_of_a_credential_this_config_lacks_are_left_untouched() {
    let spool = tempfile::tempdir().unwrap();
    let rx = Receiver::start(Reply::Ok).await;
    let cb = rx.url("/cb");
    let foreign = spool.path().join("spool-1-1.jsonl");
    let foreign_text = spool_line("csml:another-tenant", &cb, "theirs.0");
    std::fs::write(&foreign, &foreign_text).unwrap();
    // A mixed file: ours is delivered, theirs is left in a spool file of its own.
    let mixed = spool_line("csml:demo", &cb, "ours.0") + &spool_line("csml:gone", &cb, "gone.0");
    std::fs::write(spool.path().join("spool-1-2.jsonl"), mixed).unwrap();
    let proxy = SpawnedProxy::start(&config(spool.path()));
    wait_until("our delivery", Duration::from_secs(10), || {
        keys_tried(&rx).contains("ours.0")
    })
    .await;
    // A few more scans of the directory.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let tried = keys_tried(&rx);
    assert!(
        !tried.contains("theirs.0") && !tried.contains("gone.0"),
        "{tried:?}"
    );
    assert_eq!(std::fs::read_to_string(&foreign).unwrap(), foreign_text);
    let left: Vec<String> = (std::fs::read_dir(spool.path()).unwrap().flatten())
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left
        .iter()
        .any(|t| t.contains("gone.0") && !t.contains("ours.0")));
    let logs = proxy.logs();
    assert_eq!(
        logs.matches("spool file left").count(),
        2,
        "once each: {logs}"
    );
    assert!(!logs.contains("delivery gave up"), "{logs}");
}
