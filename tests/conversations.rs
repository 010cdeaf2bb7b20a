//! The conversation store, as a user of a stateful bot (a session id in the bot's path) sees it:
//! one session per user until the bot ends it, then a fresh one; on Redis, another instance
//! continues the same conversation; with Redis gone, each `on_redis_error` does what it says, and a
//! change Redis missed is written once it is back.
//!
//! The bot is a recording test server answering as Lex does (it checks no signature: the Lex
//! tests do that against botocore); callers are Haptik clients.

mod common;
#[path = "common/redis.rs"]
mod redis_server;

use common::*;
use redis_server::RedisServer;

const GOING_ON: &str = r#"{"messages":[{"contentType":"PlainText","content":"go on"}],"sessionState":{"dialogAction":{"type":"ElicitIntent"}}}"#;
const CLOSED: &str = r#"{"messages":[{"contentType":"PlainText","content":"bye"}],"sessionState":{"dialogAction":{"type":"Close"}}}"#;

/// A Lex backend at the test bot, a Haptik route to it, and `tail` (`[redis]`, …).
fn config(bot: &CsmlBackend, tail: &str) -> String {
    config_with(&format!(
        r#"
[[backends]]
name = "lex"
dialect = "lex-v2"
url = "http://{}"
region = "us-east-1"
bot_id = "B1"
bot_alias_id = "A1"
locale_id = "en_US"
access_key_id = "AKID"
secret_access_key = "s"

[[routes]]
name = "chat"
path = "/chat"
ingress = "haptik"
backend = "lex"
business_id = 1
{tail}
"#,
        bot.addr
    ))
}

fn acme() -> Vec<(&'static str, String)> {
    vec![
        ("authorization", "Bearer acme-token".into()),
        ("client-id", "acme-client".into()),
    ]
}

/// Sends `text` as `user`, the bot answering `answer`; the session the bot saw, after checking the
/// caller got the bot's text.
async fn say<P: Urls + ?Sized>(proxy: &P, bot: &CsmlBackend, user: &str, answer: &str) -> String {
    bot.set(Behaviour::AnswerUnchecked(answer.into()));
    let (status, v) = send(proxy, "/chat", &acme(), &haptik_body(user, "hi", 1)).await;
    assert_eq!(status, 200, "{v}");
    assert!(
        v.to_string().contains("bye") || v.to_string().contains("go on"),
        "{v}"
    );
    session_of(&bot.requests().last().unwrap().path)
}

/// `…/sessions/{session}/text` → the session.
fn session_of(path: &str) -> String {
    let rest = path
        .split("/sessions/")
        .nth(1)
        .expect("a session in the path");
    rest.strip_suffix("/text").expect("…/text").to_owned()
}

#[tokio::test]
async fn a_conversation_the_bot_ended_is_followed_by_a_fresh_session_for_that_user_only() {
    let bot = CsmlBackend::start(Behaviour::AnswerUnchecked(GOING_ON.into())).await;
    let proxy = Proxy::start_alone(&config(&bot, "")).await;
    let before = scrape(&proxy).await;
    assert_eq!(say(&proxy, &bot, "ann", GOING_ON).await, "ann");
    assert_eq!(say(&proxy, &bot, "ann", CLOSED).await, "ann");
    let fresh = say(&proxy, &bot, "ann", GOING_ON).await;
    assert!(fresh.starts_with("bb-") && fresh.len() == 35, "{fresh}");
    assert_eq!(say(&proxy, &bot, "ann", GOING_ON).await, fresh);
    // Someone else's conversation is their own.
    assert_eq!(say(&proxy, &bot, "bob", GOING_ON).await, "bob");
    // Ended again: another fresh one.
    assert_eq!(say(&proxy, &bot, "ann", CLOSED).await, fresh);
    let again = say(&proxy, &bot, "ann", GOING_ON).await;
    assert!(again.starts_with("bb-") && again != fresh, "{again}");
    let after = scrape(&proxy).await;
    let series = r#"botbridge_conversation_restarts_total{backend="lex"}"#;
    assert_eq!(grew(&before, &after, series), 2);
    assert!(series_value(&after, r#"botbridge_conversations{store="memory"}"#).unwrap() >= 1.0);
}

#[tokio::test]
async fn on_redis_another_instance_continues_the_conversation_and_a_dead_redis_does_as_configured()
{
    let mut redis = RedisServer::start();
    let bot = CsmlBackend::start(Behaviour::AnswerUnchecked(GOING_ON.into())).await;
    let on_redis = |policy: &str| {
        let feature = match policy {
            "" => String::new(),
            p => format!("[redis.conversations]\non_redis_error = \"{p}\"\n"),
        };
        let tail = format!(
            "[redis]\nurl = \"{}\"\ntimeout_ms = 200\nbackoff_ms = 200\n{feature}",
            redis.url()
        );
        config(&bot, &tail)
    };
    let a = Proxy::start(&on_redis("")).await;
    let b = Proxy::start(&on_redis("")).await;
    let deny = Proxy::start(&on_redis("deny")).await;
    // Redis connects in the background: wait until each instance reads from it.
    for p in [&a, &b, &deny] {
        wait_for_redis(p).await;
    }
    assert_eq!(say(&a, &bot, "cy", CLOSED).await, "cy");
    let fresh = say(&b, &bot, "cy", GOING_ON).await;
    assert!(fresh.starts_with("bb-"), "{fresh}");
    assert_eq!(say(&a, &bot, "cy", GOING_ON).await, fresh);
    assert_eq!(say(&deny, &bot, "cy", GOING_ON).await, fresh);

    redis.kill();
    // `local` (the default): this instance's memory, which holds what it last saw on Redis.
    assert_eq!(say(&b, &bot, "cy", GOING_ON).await, fresh);
    // `deny`: a 503 in the caller's dialect; nothing reaches the bot.
    let sent = bot.count();
    let (status, v) = send(&deny, "/chat", &acme(), &haptik_body("cy", "hi", 1)).await;
    assert_eq!(status, 503, "{v}");
    let message = v["error_message"].as_str().unwrap_or_default();
    assert!(message.contains("conversation store"), "{v}");
    assert_eq!(bot.count(), sent);
    let metrics = scrape(&a).await;
    let fallbacks = r#"botbridge_redis_fallbacks_total{action="deny",feature="conversations"}"#;
    assert!(
        series_value(&metrics, fallbacks).unwrap() >= 1.0,
        "{fallbacks}"
    );

    // The bot ends the conversation while Redis is down: the change waits in b's memory, and
    // Redis, back (empty: no persistence), gets it from b's next read, so a follows too.
    assert_eq!(say(&b, &bot, "cy", CLOSED).await, fresh);
    let during = say(&b, &bot, "cy", GOING_ON).await;
    assert!(during.starts_with("bb-") && during != fresh, "{during}");
    redis.restart();
    for p in [&b, &a] {
        wait_for_redis(p).await;
    }
    assert_eq!(say(&b, &bot, "cy", GOING_ON).await, during);
    assert_eq!(say(&a, &bot, "cy", GOING_ON).await, during);
}

/// Until a request through `proxy` reads its conversation from Redis (the connection is made in
/// the background): a 200 that no conversation fallback was counted for. Requests are sequential,
/// so a fallback counted meanwhile is this one's.
async fn wait_for_redis(proxy: &Proxy) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let fallbacks = |m: &str| -> f64 {
        ["local", "deny", "allow"]
            .iter()
            .map(|a| {
                let s = format!(
                    r#"botbridge_redis_fallbacks_total{{action="{a}",feature="conversations"}}"#
                );
                series_value(m, &s).unwrap_or(0.0)
            })
            .sum()
    };
    loop {
        let before = fallbacks(&scrape(proxy).await);
        let (status, _) = send(proxy, "/chat", &acme(), &haptik_body("probe", "hi", 1)).await;
        if status == 200 && fallbacks(&scrape(proxy).await) == before {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "redis never came up");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A stateful shadow bot has conversations of its own: once it ends one, the next copy goes to a
/// fresh session, while the primary's conversation goes on untouched.
#[tokio::test]
async fn a_shadow_bot_that_ends_a_conversation_gets_the_next_copy_in_a_fresh_session() {
    let primary = CsmlBackend::start(Behaviour::AnswerUnchecked(GOING_ON.into())).await;
    let shadow = CsmlBackend::start(Behaviour::AnswerUnchecked(CLOSED.into())).await;
    let tail = format!(
        r#"
[[backends]]
name = "lex-shadow"
dialect = "lex-v2"
url = "http://{}"
region = "us-east-1"
bot_id = "B2"
bot_alias_id = "A2"
locale_id = "en_US"
access_key_id = "AKID"
secret_access_key = "s"

[[routes]]
name = "shadowed"
path = "/shadowed"
ingress = "haptik"
backend = "lex"
business_id = 1
shadow = {{ backend = "lex-shadow", percent = 100 }}
"#,
        shadow.addr
    );
    let proxy = Proxy::start(&config(&primary, &tail)).await;
    let bot = &shadow;
    let copies = |n: usize| async move {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while bot.count() < n {
            assert!(std::time::Instant::now() < deadline, "copy {n} never came");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        session_of(&bot.requests()[n - 1].path)
    };
    let (status, v) = send(&proxy, "/shadowed", &acme(), &haptik_body("dee", "hi", 1)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(copies(1).await, "dee");
    // The copy's answer is read off the caller's path: wait until it has ended the conversation.
    let restarts = r#"botbridge_conversation_restarts_total{backend="lex-shadow"}"#;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while series_value(&scrape(&proxy).await, restarts) != Some(1.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "the shadow's Close was not read"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (status, v) = send(&proxy, "/shadowed", &acme(), &haptik_body("dee", "hi", 1)).await;
    assert_eq!(status, 200, "{v}");
    let next = copies(2).await;
    assert!(next.starts_with("bb-"), "{next}");
    assert_eq!(session_of(&primary.requests()[1].path), "dee");
}
