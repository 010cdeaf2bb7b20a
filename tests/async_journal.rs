//! Async mode across crashes: the real binary, killed with SIGKILL while deliveries are pending,
//! loses none of them. Accepted requests are journaled before they are answered (in a file of the
//! process, or a Redis stream every instance shares); the next process, or another instance, takes
//! over what the dead one owed and delivers it with the same idempotency keys. A request whose bot
//! had not answered is never sent to the bot again: its receiver gets the failure notice.

mod common;
mod receiver;
#[path = "common/redis.rs"]
mod redis_server;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use receiver::{Receiver, Reply};
use redis_server::{command, start_with, RedisChild, RedisServer};
use serde_json::json;

/// The shipped config with its journal in `journal` (and on `redis` when given).
fn config(journal: &Path, redis: Option<&str>) -> String {
    let mut text = format!(
        "{}\n[delivery]\njournal_dir = \"{}\"\nspool_dir = \"{{DIR}}/spool\"\ndead_letter_path = \"{{DIR}}/dead.jsonl\"\nretry_initial_ms = 50\nretry_max_ms = 200\nclaim_idle_ms = 1500\n",
        shipped_config(),
        journal.display()
    );
    if let Some(url) = redis {
        text.push_str(&format!("\n[redis]\nurl = \"{url}\"\ntimeout_ms = 200\n"));
    }
    text
}

fn body(text: &str, user: &str, callback: &str) -> String {
    json!({
        "client": {"user_id": user},
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

/// Sends `texts` as async CSML requests of `user`, each answered 200 (accepted).
async fn accepted(proxy: &SpawnedProxy, user: &str, texts: &[&str], callback: &str) {
    for text in texts {
        let (key, sig) = csml_sign("demo-key", "demo-secret", unix_now());
        let headers = [("x-api-key", key), ("x-api-signature", sig)];
        let (status, ack) = send(proxy, "/chat", &headers, &body(text, user, callback)).await;
        assert_eq!(status, 200, "{ack}");
    }
}

/// The idempotency keys the receiver has seen so far.
fn keys_tried(rx: &Receiver) -> BTreeSet<String> {
    (rx.received().iter())
        .filter_map(|g| g.header("idempotency-key").map(str::to_owned))
        .collect()
}

/// Waits until `n` jobs are journaled in `store` (accepted, then answered: two writes each).
async fn journaled(proxy: &SpawnedProxy, store: &str, writes: usize) {
    let series =
        format!("botbridge_delivery_journal_writes_total{{result=\"ok\",store=\"{store}\"}}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let done = series_value(&scrape(proxy).await, &series).unwrap_or(0.0) as usize;
        if done >= writes {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{done} of {writes} journal writes"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Kills the proxy as a crash would, and waits until it is gone.
async fn crash(proxy: &mut SpawnedProxy) {
    proxy.signal("KILL");
    wait_until("the proxy to die", Duration::from_secs(10), || {
        !proxy.alive()
    })
    .await;
}

/// Once the receiver answers 200: every message of every request arrives (each request's closing
/// POST among them), the keys tried before the crash among them, and each user's requests in the
/// order they were sent.
async fn all_delivered(rx: &Receiver, requests: usize, attempted: &BTreeSet<String>) {
    rx.set(Reply::Ok);
    // The demo bot answers each message with three messages, then the closing POST.
    let expected = requests * 4;
    let delivered_keys = || -> BTreeSet<String> {
        (rx.received().iter())
            .filter(|g| g.status == 200)
            .filter_map(|g| g.header("idempotency-key").map(str::to_owned))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while delivered_keys().len() < expected {
        let seen = keys_tried(rx);
        assert!(
            Instant::now() < deadline,
            "not every message delivered: {:?} of {seen:?}",
            delivered_keys()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let delivered: Vec<_> = (rx.received().into_iter())
        .filter(|g| g.status == 200)
        .collect();
    let keys: BTreeSet<String> = (delivered.iter())
        .map(|g| g.header("idempotency-key").unwrap().to_owned())
        .collect();
    assert_eq!(keys.len(), expected, "every message, by key: {keys:?}");
    assert!(
        attempted.is_subset(&keys),
        "the keys tried before the crash are delivered after"
    );
    let ends: BTreeSet<&str> = (delivered.iter())
        .filter(|g| g.json()["conversation_end"] == true)
        .map(|g| g.header("idempotency-key").unwrap())
        .collect();
    assert_eq!(ends.len(), requests, "every request's closing POST");
}

/// The position of the first delivery whose messages mention `text`.
fn first_with(rx: &Receiver, text: &str) -> usize {
    (rx.received().iter().filter(|g| g.status == 200))
        .position(|g| g.json()["messages"].to_string().contains(text))
        .unwrap_or_else(|| panic!("no delivery mentions {text}"))
}

#[tokio::test]
async fn a_killed_proxy_delivers_every_accepted_request_after_it_starts_again() {
    let journal = tempfile::tempdir().unwrap();
    let rx = Receiver::start(Reply::FailFirst(usize::MAX, 503)).await;
    let mut first = SpawnedProxy::start(&config(journal.path(), None));
    let texts = ["one", "two", "three", "four", "five"];
    accepted(&first, "journal-user", &texts, &rx.url("/cb")).await;
    // Every bot has answered (and its answer is journaled) before the crash.
    journaled(&first, "file", 2 * texts.len()).await;
    wait_until("a first failed attempt", Duration::from_secs(10), || {
        !rx.received().is_empty()
    })
    .await;
    crash(&mut first).await;
    let attempted = keys_tried(&rx);
    let files = std::fs::read_dir(journal.path()).unwrap().count();
    assert_eq!(files, 1, "the dead process's journal file is there");

    let second = SpawnedProxy::start(&config(journal.path(), None));
    all_delivered(&rx, texts.len(), &attempted).await;
    // In the order they were sent (one conversation).
    let order: Vec<usize> = texts.iter().map(|t| first_with(&rx, t)).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    let logs = second.logs();
    assert!(
        logs.contains("journal of a process that is gone taken over"),
        "{logs}"
    );
    let metrics = scrape(&second).await;
    let recovered = series_value(
        &metrics,
        "botbridge_delivery_journal_recovered_total{state=\"answered\",store=\"file\"}",
    );
    assert_eq!(recovered, Some(texts.len() as f64), "{metrics}");
    // The dead process's file is gone; only the new one's remains.
    wait_until(
        "the old journal file removed",
        Duration::from_secs(5),
        || std::fs::read_dir(journal.path()).unwrap().count() == 1,
    )
    .await;
}

#[tokio::test]
async fn a_request_whose_bot_had_not_answered_gets_the_failure_notice_and_is_never_sent_twice() {
    let journal = tempfile::tempdir().unwrap();
    let rx = Receiver::start(Reply::Ok).await;
    let slow = CsmlBackend::start(Behaviour::Slow(
        Duration::from_secs(60),
        csml_answer(
            "x",
            &[json!({"content_type": "text", "content": {"text": "late"}})],
        ),
    ))
    .await;
    let with_slow_bot = |text: String| {
        text.replace(
            "url = \"http://127.0.0.1:{DEMO}/api/chat\"",
            &format!("url = \"http://{}/api/chat\"", slow.addr),
        )
    };
    let mut first = SpawnedProxy::start(&with_slow_bot(config(journal.path(), None)));
    accepted(&first, "slow-user", &["hello"], &rx.url("/cb")).await;
    wait_until("the bot to be asked", Duration::from_secs(10), || {
        slow.count() == 1
    })
    .await;
    crash(&mut first).await;

    let second = SpawnedProxy::start(&config(journal.path(), None));
    wait_until("the failure notice", Duration::from_secs(15), || {
        !rx.received().is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = rx.received();
    assert_eq!(
        got.len(),
        2,
        "the error message, then the closing POST: {got:#?}"
    );
    let error = &got[0].json()["messages"][0]["payload"];
    assert_eq!(error["content_type"], "error", "{error}");
    assert!(
        got[0].header("idempotency-key").unwrap().ends_with(".e0"),
        "a key of its own, stable across processes"
    );
    assert_eq!(
        slow.count(),
        1,
        "the bot was asked once, before the crash, never again"
    );
    let metrics = scrape(&second).await;
    let interrupted = series_value(
        &metrics,
        "botbridge_delivery_journal_recovered_total{state=\"interrupted\",store=\"file\"}",
    );
    assert_eq!(interrupted, Some(1.0));
}

#[tokio::test]
async fn on_redis_another_instance_takes_over_what_a_killed_one_owed() {
    let redis = RedisServer::start();
    let journal = tempfile::tempdir().unwrap();
    let rx = Receiver::start(Reply::FailFirst(usize::MAX, 503)).await;
    // Two instances of one fleet: their own files, one Redis.
    let mut a = SpawnedProxy::start(&config(journal.path(), Some(&redis.url())));
    let other = tempfile::tempdir().unwrap();
    let b = SpawnedProxy::start(&config(other.path(), Some(&redis.url())));
    let texts = ["one", "two", "three"];
    accepted(&a, "fleet-user", &texts, &rx.url("/cb")).await;
    journaled(&a, "redis", 2 * texts.len()).await;
    wait_until("a first failed attempt", Duration::from_secs(10), || {
        !rx.received().is_empty()
    })
    .await;
    crash(&mut a).await;
    let attempted = keys_tried(&rx);
    // b was not restarted: it takes the entries over once they are idle (claim_idle_ms = 1.5 s).
    all_delivered(&rx, texts.len(), &attempted).await;
    let order: Vec<usize> = texts.iter().map(|t| first_with(&rx, t)).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    assert!(b
        .logs()
        .contains("deliveries of instances that are gone taken over"));
    let metrics = scrape(&b).await;
    let recovered = series_value(
        &metrics,
        "botbridge_delivery_journal_recovered_total{state=\"answered\",store=\"redis\"}",
    );
    assert_eq!(recovered, Some(texts.len() as f64), "{metrics}");
    // Nothing was journaled in a's file: it had Redis.
    let journaled = series_value(
        &metrics,
        "botbridge_delivery_journal_writes_total{result=\"ok\",store=\"file\"}",
    );
    assert_eq!(journaled, Some(0.0));
    // Finished entries are removed from the stream.
    wait_until("the stream emptied", Duration::from_secs(5), || {
        redis
            .command(&["XLEN", "botbridge:deliveries"])
            .contains(":0")
    })
    .await;
}

#[tokio::test]
async fn on_redis_a_restarted_instance_delivers_what_it_owed_before_the_crash() {
    let redis = RedisServer::start();
    let journal = tempfile::tempdir().unwrap();
    let rx = Receiver::start(Reply::FailFirst(usize::MAX, 503)).await;
    let mut first = SpawnedProxy::start(&config(journal.path(), Some(&redis.url())));
    let texts = ["one", "two"];
    accepted(&first, "redis-user", &texts, &rx.url("/cb")).await;
    journaled(&first, "redis", 2 * texts.len()).await;
    wait_until("a first failed attempt", Duration::from_secs(10), || {
        !rx.received().is_empty()
    })
    .await;
    crash(&mut first).await;
    let attempted = keys_tried(&rx);
    let _second = SpawnedProxy::start(&config(journal.path(), Some(&redis.url())));
    all_delivered(&rx, texts.len(), &attempted).await;
}

#[tokio::test]
async fn dead_letters_on_redis_are_listed_and_replayed_with_their_keys() {
    let redis = RedisServer::start();
    let journal = tempfile::tempdir().unwrap();
    // 400: rejected, dead-lettered at once.
    let rx = Receiver::start(Reply::FailFirst(usize::MAX, 400)).await;
    let proxy = SpawnedProxy::start(&config(journal.path(), Some(&redis.url())));
    accepted(&proxy, "dead-user", &["hello"], &rx.url("/cb?token=s3cret")).await;
    let admin = format!("http://127.0.0.1:{}", proxy.admin_port);
    let http = reqwest::Client::new();
    let mut listed = serde_json::Value::Null;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let answer = http
            .get(format!("{admin}/deliveries/dead-letters"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        listed = answer.json().await.unwrap();
        if listed["dead_letters"]
            .as_array()
            .is_some_and(|l| l.len() == 4)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let letters = listed["dead_letters"].as_array().expect("a list").clone();
    assert_eq!(letters.len(), 4, "every message of the request: {listed}");
    let text = listed.to_string();
    assert!(
        !text.contains("s3cret"),
        "the URL without its query: {text}"
    );
    assert!(
        letters.iter().all(|l| l.get("body").is_none()),
        "no bodies without message_bodies"
    );
    assert!(letters.iter().all(|l| l["reason"] == "rejected"), "{text}");

    rx.set(Reply::Ok);
    let before = rx.received().len();
    let ids: Vec<String> = letters
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_owned())
        .collect();
    let query: Vec<String> = ids.iter().map(|id| format!("id={id}")).collect();
    let replay = http
        .post(format!(
            "{admin}/deliveries/dead-letters/replay?{}",
            query.join("&")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 200);
    let answer: serde_json::Value = replay.json().await.unwrap();
    assert_eq!(answer["replayed"].as_array().unwrap().len(), 4, "{answer}");
    wait_until("the replayed messages", Duration::from_secs(10), || {
        rx.received()[before..]
            .iter()
            .filter(|g| g.status == 200)
            .count()
            == 4
    })
    .await;
    let keys = |got: &[receiver::Got]| -> BTreeSet<String> {
        got.iter()
            .filter_map(|g| g.header("idempotency-key").map(str::to_owned))
            .collect()
    };
    let all = rx.received();
    assert_eq!(
        keys(&all[..before]),
        keys(&all[before..]),
        "the same idempotency keys"
    );
    let again: serde_json::Value = http
        .get(format!("{admin}/deliveries/dead-letters"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        again["dead_letters"],
        json!([]),
        "replayed letters leave the list"
    );
    // Replaying is a mutating endpoint: refused cross-site.
    let refused = http
        .post(format!("{admin}/deliveries/dead-letters/replay?id=1-0"))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
}

#[tokio::test]
async fn a_journal_torn_by_a_crash_gives_up_only_its_last_record() {
    use botbridge::delivery::journal_records::{frame, JobRecord, PendingMessage, Record};
    let journal = tempfile::tempdir().unwrap();
    let rx = Receiver::start(Reply::Ok).await;
    let deadline_ms = (unix_now() + 600) * 1000;
    let job = |id: &str| {
        Record::Job(JobRecord {
            job: id.into(),
            credential: "csml:demo".into(),
            url: rx.url("/cb"),
            request_id: format!("req-{id}"),
            conversation: format!("{}\nuser-{id}", rx.url("/cb")),
            messages: Some(vec![PendingMessage {
                key: format!("{id}.0"),
                body: "{\"messages\":[]}".into(),
                deadline_ms,
                attempts: 1,
            }]),
            interrupt: Vec::new(),
            deadline_ms: 0,
            seq: String::new(),
        })
    };
    let mut bytes = Vec::new();
    frame(&job("kept"), &mut bytes);
    let mut torn = Vec::new();
    frame(&job("torn"), &mut torn);
    bytes.extend_from_slice(&torn[..torn.len() - 3]);
    std::fs::write(journal.path().join("journal-1-1.log"), &bytes).unwrap();

    let proxy = SpawnedProxy::start(&config(journal.path(), None));
    wait_until("the kept record's message", Duration::from_secs(10), || {
        keys_tried(&rx).contains("kept.0")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(keys_tried(&rx), BTreeSet::from(["kept.0".to_owned()]));
    let metrics = scrape(&proxy).await;
    let torn = series_value(
        &metrics,
        "botbridge_delivery_journal_damaged_total{end=\"torn\"}",
    );
    assert_eq!(torn, Some(1.0));
}

#[tokio::test]
async fn while_redis_is_down_accepted_requests_go_to_the_instance_file_or_are_refused() {
    let mut redis = RedisServer::start();
    let journal = tempfile::tempdir().unwrap();
    let rx = Receiver::start(Reply::FailFirst(usize::MAX, 503)).await;
    let mut first = SpawnedProxy::start(&config(journal.path(), Some(&redis.url())));
    redis.kill();
    // on_redis_error = "local" (the default): journaled in this instance's file.
    accepted(&first, "down-user", &["one"], &rx.url("/cb")).await;
    journaled(&first, "file", 2).await;
    let metrics = scrape(&first).await;
    let fell_back = series_value(
        &metrics,
        "botbridge_redis_fallbacks_total{action=\"local\",feature=\"deliveries\"}",
    );
    assert_eq!(fell_back, Some(1.0), "{metrics}");
    wait_until("a first failed attempt", Duration::from_secs(10), || {
        !rx.received().is_empty()
    })
    .await;
    crash(&mut first).await;
    // Redis comes back empty (its data lost): the stream and its group are made again.
    redis.restart();
    let second = SpawnedProxy::start(&config(journal.path(), Some(&redis.url())));
    all_delivered(&rx, 1, &keys_tried(&rx)).await;
    let before = rx.received().len();
    accepted(&second, "down-user", &["two"], &rx.url("/cb")).await;
    journaled(&second, "redis", 2).await;
    wait_until(
        "the next request delivered",
        Duration::from_secs(10),
        || rx.received().len() >= before + 4,
    )
    .await;
    drop(second);

    // on_redis_error = "deny": refused with 503 while Redis is down, nothing accepted.
    redis.kill();
    let deny = config(journal.path(), Some(&redis.url()))
        + "[redis.deliveries]\non_redis_error = \"deny\"\n";
    let third = SpawnedProxy::start(&deny);
    let (key, sig) = csml_sign("demo-key", "demo-secret", unix_now());
    let headers = [("x-api-key", key), ("x-api-signature", sig)];
    let (status, answer) = send(
        &third,
        "/chat",
        &headers,
        &body("three", "u", &rx.url("/cb")),
    )
    .await;
    assert_eq!(status, 503, "{answer}");
    let metrics = scrape(&third).await;
    let refused = series_value(
        &metrics,
        "botbridge_async_requests_total{dialect=\"csml\",result=\"not_journaled\"}",
    );
    assert_eq!(refused, Some(1.0), "{metrics}");
}

#[tokio::test]
async fn a_graceful_upgrade_hands_the_journal_to_the_new_process() {
    let journal = tempfile::tempdir().unwrap();
    let rx = Receiver::start(Reply::FailFirst(usize::MAX, 503)).await;
    let text = config(journal.path(), None)
        .replace("grace_period_seconds = 5", "grace_period_seconds = 2");
    let mut proxy = SpawnedProxy::start(&text);
    accepted(&proxy, "upgrade-user", &["one", "two"], &rx.url("/cb")).await;
    journaled(&proxy, "file", 4).await;
    let (mut old, old_log) = proxy.upgrade();
    let deadline = Instant::now() + Duration::from_secs(15);
    while old.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the old process did not exit");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let logs = std::fs::read_to_string(old_log).unwrap();
    assert!(
        logs.contains("pending deliveries left in the journal"),
        "{logs}"
    );
    all_delivered(&rx, 2, &keys_tried(&rx)).await;
    assert!(proxy
        .logs()
        .contains("journal of a process that is gone taken over"));
}

#[tokio::test]
async fn what_an_instance_journaled_in_its_file_while_redis_was_away_moves_to_redis_and_survives_it(
) {
    let mut redis = RedisServer::start();
    let (ja, jb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let rx = Receiver::start(Reply::FailFirst(usize::MAX, 503)).await;
    let mut a = SpawnedProxy::start(&config(ja.path(), Some(&redis.url())));
    let b = SpawnedProxy::start(&config(jb.path(), Some(&redis.url())));
    redis.kill();
    accepted(&a, "away-user", &["one"], &rx.url("/cb")).await;
    journaled(&a, "file", 2).await;
    // Redis comes back (empty): the job moves to the stream at a's next look.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !a.logs().contains("moved to the shared journal") {
        assert!(Instant::now() < deadline, "not moved:\n{}", a.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // a dies for good: b, on another journal_dir, takes it over from Redis.
    crash(&mut a).await;
    all_delivered(&rx, 1, &keys_tried(&rx)).await;
    assert!(b
        .logs()
        .contains("deliveries of instances that are gone taken over"));
}

/// A Redis master in `dir` and its replica, once the replica is in sync.
async fn master_and_replica(dir: &Path) -> (RedisChild, RedisChild) {
    let none = ["--save", "", "--appendonly", "no"].map(String::from);
    let master = start_with(dir, "master", &none);
    let mut replica_args = none.to_vec();
    replica_args.extend([
        "--replicaof".into(),
        "127.0.0.1".into(),
        master.port.to_string(),
    ]);
    let replica = start_with(dir, "replica", &replica_args);
    wait_until("the replica in sync", Duration::from_secs(10), || {
        command(master.port, &["INFO", "replication"]).is_some_and(|i| i.contains("state=online"))
    })
    .await;
    (master, replica)
}

/// The proxy on `text`, once it has reached Redis. Redis calls may take up to two seconds (a
/// replica's acknowledgement, up to half of it, must not miss on a busy machine: with 500 ms, one
/// CI run saw a request journaled in the instance's file instead).
async fn on_redis(text: &str) -> SpawnedProxy {
    let text = (text.replace("timeout_ms = 200", "timeout_ms = 2000"))
        .replace("claim_idle_ms = 1500", "claim_idle_ms = 8000");
    let proxy = SpawnedProxy::start(&text);
    wait_until("redis reachable", Duration::from_secs(10), || {
        proxy.logs().contains("redis is reachable")
    })
    .await;
    proxy
}

/// The length of the journal stream on the Redis at `port`.
fn stream_len(port: u16) -> i64 {
    let answer = command(port, &["XLEN", "botbridge:deliveries"]).unwrap_or_default();
    answer.trim_start_matches(':').trim().parse().unwrap_or(-1)
}

#[tokio::test]
async fn with_wait_replicas_a_request_is_accepted_only_once_a_replica_holds_its_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (master, replica) = master_and_replica(dir.path()).await;
    let rx = Receiver::start(Reply::FailFirst(usize::MAX, 503)).await;
    let url = format!("redis://127.0.0.1:{}", master.port);
    let text = config(dir.path(), Some(&url))
        + "[redis.deliveries]\non_redis_error = \"deny\"\nwait_replicas = 1\n";
    let proxy = on_redis(&text).await;

    // With the replica up: accepted, and the replica already holds the entry when the caller hears.
    accepted(&proxy, "wait-user", &["one"], &rx.url("/cb")).await;
    journaled(&proxy, "redis", 2).await;
    assert_eq!(stream_len(replica.port), 1);

    // With no replica: the write is taken back and the request refused, not accepted on a master
    // alone (whose failover would lose it).
    drop(replica);
    let (key, sig) = csml_sign("demo-key", "demo-secret", unix_now());
    let headers = [("x-api-key", key), ("x-api-signature", sig)];
    let (status, answer) = send(
        &proxy,
        "/chat",
        &headers,
        &body("two", "u2", &rx.url("/cb")),
    )
    .await;
    assert_eq!(status, 503, "{answer}");
    let metrics = scrape(&proxy).await;
    let short = series_value(
        &metrics,
        "botbridge_redis_errors_total{op=\"journal\",reason=\"replicas\"}",
    );
    assert_eq!(short, Some(1.0), "{metrics}");
    assert_eq!(
        stream_len(master.port),
        1,
        "the refused request's entry is taken back"
    );
    assert!(
        proxy.logs().contains("not replicated in time"),
        "{}",
        proxy.logs()
    );
}

#[tokio::test]
async fn with_wait_replicas_an_answer_no_replica_holds_leaves_the_accepted_entry_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let (master, replica) = master_and_replica(dir.path()).await;
    // A bot that answers after 1.5 s, on a route of its own.
    let answer = csml_answer(
        "r",
        &[json!({"content_type": "text", "content": {"text": "late"}})],
    );
    let slow = CsmlBackend::start(Behaviour::Slow(Duration::from_millis(1500), answer)).await;
    let rx = Receiver::start(Reply::FailFirst(usize::MAX, 503)).await;
    let url = format!("redis://127.0.0.1:{}", master.port);
    let text = config(dir.path(), Some(&url))
        + "[redis.deliveries]\nwait_replicas = 1\n"
        + &csml_backend_toml("slow", slow.addr, "")
        + "\n[[routes]]\nname = \"slow\"\npath = \"/slow\"\ningress = \"csml\"\nbackend = \"slow\"\n";
    let proxy = on_redis(&text).await;
    let (key, sig) = csml_sign("demo-key", "demo-secret", unix_now());
    let headers = [("x-api-key", key), ("x-api-signature", sig)];
    let (status, ack) = send(
        &proxy,
        "/slow",
        &headers,
        &body("one", "late-user", &rx.url("/cb")),
    )
    .await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(stream_len(master.port), 1, "accepted and replicated");
    // The replica goes before the bot answers: the answer's entry is taken back, and the accepted
    // entry it would have replaced stays (a crash now still gets the caller the failure notice).
    drop(replica);
    wait_until(
        "the answer's write refused",
        Duration::from_secs(10),
        || proxy.logs().contains("not replicated in time"),
    )
    .await;
    assert_eq!(
        stream_len(master.port),
        1,
        "the accepted entry is still there"
    );
    wait_until(
        "the answer delivered all the same",
        Duration::from_secs(10),
        || !rx.received().is_empty(),
    )
    .await;
}
