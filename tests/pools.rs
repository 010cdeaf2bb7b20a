//! Backends as pools, end to end: the real binary in front of several instances of a test bot on
//! loopback (`pool_bot`), each counting what it receives by message id. Balance modes, failover
//! without duplicates while an endpoint dies under load, and active health checks.

mod common;
mod pool_bot;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{config_with, SpawnedProxy as Proxy, Urls};
use pool_bot::{answered_by, endpoint_state, haptik, metric, pool_backend, route, Bot};

/// One request's outcome: status, and which bot answered (or the error message).
type Outcome = (u16, Option<String>);

/// Sends `n` Haptik requests (message `m-<i>`, user `user(i)`) from `workers` in parallel; `done`
/// counts the finished ones as they finish. Returns the outcomes by request index.
async fn load(
    url: String,
    n: usize,
    workers: usize,
    user: fn(usize) -> String,
    done: Arc<AtomicUsize>,
) -> Vec<Outcome> {
    let results = Arc::new(Mutex::new(vec![(0, None); n]));
    let next = Arc::new(AtomicUsize::new(0));
    let client = reqwest::Client::new();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (url, client, next, done, results) = (
            url.clone(),
            client.clone(),
            next.clone(),
            done.clone(),
            results.clone(),
        );
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let (status, answer) = haptik(&client, &url, &user(i), &format!("m-{i}")).await;
                let said = match status {
                    200 => answered_by(&answer),
                    _ => answer["error_message"].as_str().map(str::to_owned),
                };
                results.lock().unwrap()[i] = (status, said);
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let out = results.lock().unwrap().clone();
    out
}

fn one_user(_: usize) -> String {
    "u".into()
}

fn start(bots: &[&Bot], pool_keys: &str) -> Proxy {
    let addrs: Vec<_> = bots.iter().map(|b| b.addr).collect();
    Proxy::start(&config_with(
        &(pool_backend("pool", &addrs, pool_keys) + &route("chat", "/chat", "pool", "")),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_requests_within_ten_percent() {
    let bots = [
        Bot::start("a").await,
        Bot::start("b").await,
        Bot::start("c").await,
    ];
    let proxy = start(&bots.iter().collect::<Vec<_>>(), "");
    let done = Arc::new(AtomicUsize::new(0));
    let results = load(proxy.url("/chat"), 3000, 8, one_user, done).await;
    assert!(results.iter().all(|r| r.0 == 200), "every request answered");
    for bot in &bots {
        let n = bot.count();
        println!("round robin: {} got {n} of 3000", bot.name);
        assert!(
            (900..=1100).contains(&n),
            "{} got {n}, not 1000 ± 10%",
            bot.name
        );
        let answered = results
            .iter()
            .filter(|r| r.1.as_deref() == Some(&bot.name))
            .count();
        assert_eq!(
            answered, n,
            "each answer came from the bot that got the message"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_requests_favours_a_fast_endpoint_over_a_slow_one() {
    let (fast, slow) = (Bot::start("fast").await, Bot::start("slow").await);
    slow.set_delay(Duration::from_millis(100));
    let proxy = start(&[&fast, &slow], r#"balance = "least_requests""#);
    let done = Arc::new(AtomicUsize::new(0));
    let results = load(proxy.url("/chat"), 400, 8, one_user, done).await;
    assert!(results.iter().all(|r| r.0 == 200));
    println!(
        "least_requests: fast {} slow {} of 400",
        fast.count(),
        slow.count()
    );
    assert!(
        fast.count() > 3 * slow.count(),
        "fast {} vs slow {}",
        fast.count(),
        slow.count()
    );
}

fn user_of(i: usize) -> String {
    format!("user-{}", i % 60)
}

/// Which bot served each user (every request of a user must have gone to one bot).
fn bot_per_user(results: &[Outcome]) -> HashMap<String, String> {
    let mut seen: HashMap<String, HashSet<String>> = HashMap::new();
    for (i, (status, bot)) in results.iter().enumerate() {
        assert_eq!(*status, 200, "request {i}");
        seen.entry(user_of(i))
            .or_default()
            .insert(bot.clone().unwrap());
    }
    (seen.into_iter())
        .map(|(user, bots)| {
            assert_eq!(bots.len(), 1, "{user} was served by {bots:?}");
            (user, bots.into_iter().next().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_keeps_a_user_on_one_endpoint_and_only_the_dead_endpoints_users_move() {
    let bots = [
        Bot::start("a").await,
        Bot::start("b").await,
        Bot::start("c").await,
    ];
    let proxy = start(&bots.iter().collect::<Vec<_>>(), r#"balance = "sticky""#);
    let done = Arc::new(AtomicUsize::new(0));
    let before = bot_per_user(&load(proxy.url("/chat"), 300, 6, user_of, done.clone()).await);
    let used: HashSet<&String> = before.values().collect();
    assert!(
        used.len() >= 2,
        "60 users spread over several bots: {used:?}"
    );

    // The bot with the most users dies; the next requests of every user go on.
    let dead = (bots.iter())
        .max_by_key(|b| before.values().filter(|v| **v == b.name).count())
        .unwrap();
    dead.kill().await;
    let after = bot_per_user(&load(proxy.url("/chat"), 300, 6, user_of, done).await);
    let mut moved = 0;
    for (user, was) in &before {
        if *was == dead.name {
            assert_ne!(after[user], dead.name);
            moved += 1;
        } else {
            assert_eq!(&after[user], was, "{user} stayed where it was");
        }
    }
    println!("sticky: {moved} of 60 users moved, all of them from the dead bot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_three_under_load_fails_only_requests_already_written_to_it_and_none_twice()
{
    let bots = [
        Bot::start("a").await,
        Bot::start("b").await,
        Bot::start("c").await,
    ];
    for b in &bots {
        // A little time per answer, so the dying bot has requests in flight.
        b.set_delay(Duration::from_millis(5));
    }
    // No ejection: every request that picks the dead endpoint after the kill must move on.
    let proxy = start(
        &bots.iter().collect::<Vec<_>>(),
        "[backends.outlier]\neject_after = 0",
    );
    let n = 5000;
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let run = tokio::spawn(load(proxy.url("/chat"), n, 16, one_user, done.clone()));
    while done.load(Ordering::Relaxed) < n / 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let open_at_kill = bots[1].kill().await;
    let results = run.await.unwrap();
    let took = started.elapsed();

    // Nothing delivered twice: every message reached at most one bot, once.
    let mut delivered: HashMap<String, usize> = HashMap::new();
    for b in &bots {
        for m in b.received() {
            *delivered.entry(m).or_default() += 1;
        }
    }
    assert!(
        delivered.values().all(|&c| c == 1),
        "a message was delivered twice"
    );
    let live: HashSet<String> = [&bots[0], &bots[2]]
        .iter()
        .flat_map(|b| b.received())
        .collect();
    let unanswered = bots[1].unanswered();
    let mut failed = Vec::new();
    for (i, (status, bot)) in results.iter().enumerate() {
        let id = format!("m-{i}");
        match status {
            200 => assert_eq!(delivered.get(&id), Some(&1), "{id} answered by {bot:?}"),
            502 => {
                assert!(
                    !live.contains(&id),
                    "{id} failed although a live bot got it"
                );
                // Failed after it was written, not for want of a connection (that moves it).
                let why = bot.as_deref().unwrap_or_default();
                assert!(!why.contains("unreachable"), "{id} was not moved: {why}");
                failed.push(id);
            }
            other => panic!("{id}: {other}"),
        }
    }
    // What the dead bot read but never answered was not sent anywhere else: it failed.
    assert!(
        unanswered.iter().all(|id| failed.contains(id)),
        "{unanswered:?}"
    );
    // Each connection open to the dead bot carried at most one request when it died.
    assert!(
        failed.len() <= open_at_kill,
        "{} failed, {open_at_kill} connections were open",
        failed.len()
    );
    let admin = proxy.admin_url("");
    let failovers = metric(
        &admin,
        r#"botbridge_backend_failovers_total{backend="pool"}"#,
    )
    .await;
    println!(
        "kill under load: {n} requests in {took:?}; {} failed with 502 ({} read by the dead bot, \
         {open_at_kill} connections open to it), {failovers} moved to another endpoint, 0 delivered twice",
        failed.len(),
        unanswered.len()
    );
    // Round robin kept choosing the dead endpoint for a third of the requests after the kill.
    assert!(
        failovers >= 100.0,
        "requests after the kill moved on: {failovers}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_failures_eject_an_endpoint_and_requests_stop_trying_it() {
    let (a, b) = (Bot::start("a").await, Bot::start("b").await);
    let proxy = start(
        &[&a, &b],
        "[backends.outlier]\neject_after = 3\neject_s = 60",
    );
    let (admin, client) = (proxy.admin_url(""), reqwest::Client::new());
    let failovers = r#"botbridge_backend_failovers_total{backend="pool"}"#;
    let series = |name: &str| format!(r#"{name}{{backend="pool",endpoint="{}"}}"#, b.addr);
    b.kill().await;
    // Round robin: every other request picks b, fails to connect and moves to a; the third ejects b.
    for i in 0..6 {
        let (status, answer) = haptik(&client, &proxy.url("/chat"), "u", &format!("m-{i}")).await;
        assert_eq!((status, answered_by(&answer).as_deref()), (200, Some("a")));
    }
    let ejections = metric(&admin, &series("botbridge_backend_ejections_total")).await;
    assert_eq!(ejections, 1.0);
    assert_eq!(
        endpoint_state(&admin, "pool", b.addr).await["ejected"],
        true
    );
    let moved = metric(&admin, failovers).await;
    assert_eq!(moved, 3.0);
    for i in 0..10 {
        let (status, _) = haptik(&client, &proxy.url("/chat"), "u", &format!("n-{i}")).await;
        assert_eq!(status, 200);
    }
    assert_eq!(
        metric(&admin, failovers).await,
        moved,
        "b is no longer tried"
    );
    let up = metric(&admin, &series("botbridge_backend_endpoint_up")).await;
    assert_eq!(up, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_check_brings_a_revived_endpoint_back_within_healthy_after_intervals() {
    let (a, b) = (Bot::start("a").await, Bot::start("b").await);
    let health = "[backends.health]\npath = \"/health\"\ninterval_s = 1\ntimeout_ms = 500\n\
                  healthy_after = 2\nunhealthy_after = 1";
    let proxy = start(&[&a, &b], health);
    let admin = proxy.admin_url("");
    let client = reqwest::Client::new();
    wait_until(Duration::from_secs(10), || async {
        b.state.health_checks.load(Ordering::Relaxed) > 0
    })
    .await;

    b.kill().await;
    wait_until(Duration::from_secs(10), || async {
        endpoint_state(&admin, "pool", b.addr).await["healthy"] == false
    })
    .await;
    // While it is down, every request goes to the other one, without a failure.
    for i in 0..20 {
        let (status, answer) = haptik(&client, &proxy.url("/chat"), "u", &format!("d-{i}")).await;
        assert_eq!((status, answered_by(&answer).as_deref()), (200, Some("a")));
    }

    b.revive().await;
    let revived = Instant::now();
    wait_until(Duration::from_secs(10), || async {
        endpoint_state(&admin, "pool", b.addr).await["up"] == true
    })
    .await;
    let back = revived.elapsed();
    println!("health: revived endpoint back after {back:?} (healthy_after = 2, interval_s = 1)");
    // Two passing checks one interval apart, plus at most one interval until the first and the
    // keeper's tick.
    assert!(back <= Duration::from_millis(4_500), "{back:?}");
    let before = b.count();
    for i in 0..10 {
        haptik(&client, &proxy.url("/chat"), "u", &format!("r-{i}")).await;
    }
    assert!(
        b.count() > before,
        "the revived endpoint gets requests again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_health_state_of_endpoints_that_stay() {
    let (a, b) = (Bot::start("a").await, Bot::start("b").await);
    // b serves chat but never passes a check: down after one failed (timed out) check.
    b.state.health_delay_ms.store(10_000, Ordering::Relaxed);
    let health = "[backends.health]\npath = \"/health\"\ninterval_s = 1\ntimeout_ms = 1000\n\
                  healthy_after = 1\nunhealthy_after = 1";
    let config = |read_ms: u32| {
        let backend = pool_backend("pool", &[a.addr, b.addr], health).replace(
            "read_timeout_ms = 3000",
            &format!("read_timeout_ms = {read_ms}"),
        );
        config_with(&(backend + &route("chat", "/chat", "pool", "")))
    };
    let proxy = Proxy::start(&config(3000));
    let admin = proxy.admin_url("");
    wait_until(Duration::from_secs(10), || async {
        endpoint_state(&admin, "pool", b.addr).await["healthy"] == false
    })
    .await;

    proxy.rewrite_config(&config(2500));
    let client = reqwest::Client::new();
    let reload = client
        .post(proxy.admin_url("/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(reload.text().await.unwrap(), "reloaded\n");
    // A fresh pool would think b healthy until its first check had timed out (1 s from now).
    assert_eq!(
        endpoint_state(&admin, "pool", b.addr).await["healthy"],
        false
    );
    for i in 0..20 {
        let (status, answer) = haptik(&client, &proxy.url("/chat"), "u", &format!("m-{i}")).await;
        assert_eq!((status, answered_by(&answer).as_deref()), (200, Some("a")));
    }
    assert_eq!(b.count(), 0);
}

/// Polls `ready` every 50 ms until it holds; fails after `limit`.
async fn wait_until<F, Fut>(limit: Duration, ready: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !ready().await {
        assert!(Instant::now() < deadline, "not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
