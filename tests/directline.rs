//! Direct Line 3.0 callers, as their clients see the proxy: conversations started with the secret
//! or a token, tokens generated, refreshed and expiring, activities posted and read back by
//! watermark (the user's own echoed with `channelData` unchanged, the bot's with `replyToId`), the
//! WebSocket stream, CORS for browsers, and Direct Line's errors. Then Microsoft's own client
//! (`botframework-directlinejs` in Node, polling and WebSocket) holds a conversation with every
//! demo bot; and on Redis, a second instance continues a conversation the first one started.
//!
//! Everything runs against the shipped `proxy.toml` (its Direct Line route and demo CSML bot),
//! on real HTTP over loopback.

mod common;
mod receiver;
#[path = "common/redis.rs"]
mod redis_server;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::*;
use futures_util::StreamExt;
use redis_server::RedisServer;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "demo-directline-secret";
const DL: &str = "/v3/directline";

/// One Direct Line call: status, headers and JSON body (`null` when empty).
async fn call<P: Urls + ?Sized>(
    proxy: &P,
    method: &str,
    path: &str,
    bearer: &str,
    body: Option<Value>,
    extra: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let client = reqwest::Client::new();
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = client.request(method, proxy.url(&format!("{DL}{path}")));
    if !bearer.is_empty() {
        req = req.header("authorization", format!("Bearer {bearer}"));
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req.send().await.unwrap();
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    let bytes = resp.bytes().await.unwrap();
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)))
    };
    (status, headers, v)
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_default()
}

/// base64url without padding, decoded.
fn base64url(s: &str) -> Vec<u8> {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits = 0u32;
    let (mut n, mut out) = (0, Vec::new());
    for c in s.bytes() {
        bits = (bits << 6) | alphabet.iter().position(|&a| a == c).unwrap() as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out
}

/// A message from `user`.
fn message(user: &str, text: &str) -> Value {
    json!({"type": "message", "from": {"id": user, "name": "Ann"}, "text": text,
           "channelData": {"clientActivityID": format!("c-{text}"), "x": [1, {"y": null}]}})
}

/// The activities after `watermark`, and the new watermark.
async fn poll<P: Urls + ?Sized>(
    proxy: &P,
    conv: &str,
    token: &str,
    watermark: &str,
) -> (Vec<Value>, String) {
    let path = format!("/conversations/{conv}/activities?watermark={watermark}");
    let (status, _, page) = call(proxy, "GET", &path, token, None, &[]).await;
    assert_eq!(status, 200, "{page}");
    let activities = page["activities"].as_array().unwrap().clone();
    (activities, page["watermark"].as_str().unwrap().to_owned())
}

fn replies_to<'a>(activities: &'a [Value], id: &str) -> Vec<&'a Value> {
    activities.iter().filter(|a| a["replyToId"] == id).collect()
}

/// Starts a conversation with the secret: (conversation id, token, the whole answer).
async fn start<P: Urls + ?Sized>(proxy: &P) -> (String, String, Value) {
    let (status, _, v) = call(proxy, "POST", "/conversations", SECRET, None, &[]).await;
    assert_eq!(status, 201, "{v}");
    let conv = v["conversationId"].as_str().unwrap().to_owned();
    (conv, v["token"].as_str().unwrap().to_owned(), v)
}

#[tokio::test]
async fn a_conversation_by_polling_with_echoes_replies_and_buttons() {
    let proxy = Proxy::start(&shipped_config()).await;
    let (conv, token, started) = start(&proxy).await;
    assert_eq!(started["expires_in"], 1800);
    let stream = started["streamUrl"].as_str().unwrap();
    let want = format!(
        "ws://127.0.0.1:{}{DL}/conversations/{conv}/stream?t=",
        proxy.port
    );
    assert!(stream.starts_with(&want), "{stream}");
    // Started again with its token: the same conversation, 200.
    let (status, _, again) = call(&proxy, "POST", "/conversations", &token, None, &[]).await;
    assert_eq!((status, &again["conversationId"]), (200, &json!(conv)));

    let user = "u1";
    let hi = message(user, "hi");
    let path = format!("/conversations/{conv}/activities");
    let (status, _, posted) = call(&proxy, "POST", &path, &token, Some(hi.clone()), &[]).await;
    assert_eq!(status, 200, "{posted}");
    let id = posted["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with(&format!("{conv}|")), "{id}");

    let (all, watermark) = poll(&proxy, &conv, &token, "").await;
    let echo = &all[0];
    assert_eq!((&echo["id"], &echo["text"]), (&json!(id), &json!("hi")));
    assert_eq!(
        echo["channelData"], hi["channelData"],
        "channelData unchanged"
    );
    // The token from a start with the secret is bound to a user of its own, who speaks.
    let claims: Value =
        serde_json::from_slice(&base64url(token.split('.').nth(1).unwrap())).unwrap();
    assert_eq!(echo["from"]["id"], claims["user"]);
    assert_ne!(echo["from"]["id"], user);
    assert_eq!(echo["conversation"]["id"], json!(conv));
    let replies = replies_to(&all, &id);
    assert_eq!(replies.len(), all.len() - 1, "{all:?}");
    assert!(replies.iter().all(|r| r["from"]["role"] == "bot"));
    assert_eq!(replies[0]["text"], "Hello from the botbridge demo bot!");
    let card = &replies[1]["attachments"][0];
    assert_eq!(card["contentType"], "application/vnd.microsoft.card.hero");
    assert_eq!(card["content"]["text"], "Did that reach you?");
    let buttons = card["content"]["buttons"].as_array().unwrap();
    assert_eq!(
        buttons[0],
        json!({"type": "postBack", "title": "Yes", "value": "YES"})
    );
    assert_eq!(replies[2]["text"], "You said: hi");
    // Nothing new after the watermark; then a click on "Yes" (a postBack's value).
    let (none, same) = poll(&proxy, &conv, &token, &watermark).await;
    assert_eq!((none.len(), &same), (0, &watermark));
    let click = json!({"type": "message", "from": {"id": user}, "value": "YES"});
    let (status, _, posted) = call(&proxy, "POST", &path, &token, Some(click), &[]).await;
    assert_eq!(status, 200, "{posted}");
    let (after, _) = poll(&proxy, &conv, &token, &watermark).await;
    let texts: Vec<&Value> = replies_to(&after, posted["id"].as_str().unwrap())
        .iter()
        .map(|r| &r["text"])
        .collect();
    assert!(texts.contains(&&json!("You clicked: YES")), "{after:?}");

    // A typing activity is echoed, and nothing answers it.
    let typing = json!({"type": "typing", "from": {"id": user}});
    let (status, _, t) = call(&proxy, "POST", &path, &token, Some(typing), &[]).await;
    assert_eq!(status, 200);
    let (all, _) = poll(&proxy, &conv, &token, "").await;
    let tid = t["id"].as_str().unwrap();
    assert_eq!(all.last().unwrap()["id"], tid);
    assert_eq!(all.last().unwrap()["type"], "typing");
    assert!(replies_to(&all, tid).is_empty());
}

#[tokio::test]
async fn tokens_are_generated_refreshed_bound_to_one_conversation_and_expire() {
    let proxy = Proxy::start(&shipped_config()).await;
    let body = json!({"user": {"id": "ann"}});
    let (status, _, g) = call(&proxy, "POST", "/tokens/generate", SECRET, Some(body), &[]).await;
    assert_eq!(status, 200, "{g}");
    assert_eq!(g["expires_in"], 1800);
    assert!(g.get("streamUrl").is_none());
    let (conv, token) = (
        g["conversationId"].as_str().unwrap(),
        g["token"].as_str().unwrap(),
    );
    // A JWT whose `user` claim is ann: what Web Chat reads to know who it is.
    let claims = token.split('.').nth(1).unwrap();
    let claims = String::from_utf8(base64url(claims)).unwrap();
    assert!(claims.contains(r#""user":"ann""#), "{claims}");
    // The token's conversation starts with it (201), then the token speaks for ann only, whatever
    // the activity names.
    let (status, _, s) = call(&proxy, "POST", "/conversations", token, None, &[]).await;
    assert_eq!((status, s["conversationId"].as_str()), (201, Some(conv)));
    let path = format!("/conversations/{conv}/activities");
    let as_bob = message("bob", "hi");
    let (status, _, p) = call(&proxy, "POST", &path, token, Some(as_bob), &[]).await;
    assert_eq!(status, 200, "{p}");
    let unnamed = json!({"type": "message", "text": "hi"});
    let (status, _, p) = call(&proxy, "POST", &path, token, Some(unnamed), &[]).await;
    assert_eq!(status, 200, "{p}");
    let (all, _) = poll(&proxy, conv, token, "").await;
    let users: Vec<&Value> = all
        .iter()
        .filter(|a| a["from"]["role"] == "user")
        .map(|a| &a["from"]["id"])
        .collect();
    assert_eq!(
        users,
        [&json!("ann"), &json!("ann")],
        "the token's user speaks"
    );

    // Another conversation's token is refused there; the secret reaches any.
    let (other, other_token, _) = start(&proxy).await;
    let path_other = format!("/conversations/{other}/activities");
    let (status, _, e) = call(&proxy, "GET", &path_other, token, None, &[]).await;
    assert_eq!((status, code(&e)), (403, "Forbidden"), "{e}");
    let (status, _, _) = call(&proxy, "GET", &path_other, SECRET, None, &[]).await;
    assert_eq!(status, 200);

    // Refresh (1,000 s on): a new token for the same conversation; the secret cannot refresh.
    let start = SystemTime::now();
    proxy.clock.set(start + Duration::from_secs(1_000));
    let (status, _, r) = call(&proxy, "POST", "/tokens/refresh", token, None, &[]).await;
    assert_eq!((status, r["conversationId"].as_str()), (200, Some(conv)));
    let refreshed = r["token"].as_str().unwrap().to_owned();
    let (status, _, e) = call(&proxy, "POST", "/tokens/refresh", SECRET, None, &[]).await;
    assert_eq!((status, code(&e)), (403, "Forbidden"));

    // 1,801 s after it was issued the token has expired: 403 TokenExpired, for a refresh too.
    proxy.clock.set(start + Duration::from_secs(1_801));
    let (status, _, e) = call(&proxy, "GET", &path, token, None, &[]).await;
    assert_eq!((status, code(&e)), (403, "TokenExpired"), "{e}");
    let (status, _, e) = call(&proxy, "POST", "/tokens/refresh", token, None, &[]).await;
    assert_eq!((status, code(&e)), (403, "TokenExpired"));
    let (status, _, _) = call(&proxy, "GET", &path, &refreshed, None, &[]).await;
    assert_eq!(status, 200, "the refreshed token lasts longer");
    let (status, _, e) = call(&proxy, "GET", &path_other, &other_token, None, &[]).await;
    assert_eq!((status, code(&e)), (403, "TokenExpired"));
}

/// A request and the error it must get: method, path, bearer, body, status, code.
type Case<'a> = (&'a str, String, &'a str, Option<Value>, u16, &'a str);

#[tokio::test]
async fn unknown_conversations_bad_activities_and_bad_credentials_get_direct_lines_errors() {
    let down = RefusedPort::new();
    let config = shipped_config().replace(
        "# Haptik and CSML callers in front of a Dialogflow CX agent.",
        &format!(
            r#"[[backends]]
name = "down"
dialect = "csml"
url = "http://{}/api/chat"
api_key = "k"
api_secret = "s"

[[routes]]
name = "dl-down"
path_prefix = "/down/v3/directline/"
ingress = "directline"
backend = "down"
"#,
            down.addr
        ),
    );
    let proxy = Proxy::start(&config).await;
    let (conv, token, _) = start(&proxy).await;
    let user = "u1";
    let path = format!("/conversations/{conv}/activities");
    let cases: Vec<Case> = vec![
        (
            "GET",
            "/conversations/nope/activities".into(),
            SECRET,
            None,
            404,
            "NotFound",
        ),
        (
            "POST",
            "/conversations/nope/activities".into(),
            SECRET,
            Some(message("u", "hi")),
            404,
            "NotFound",
        ),
        (
            "GET",
            format!("/conversations/{conv}"),
            "wrong-secret",
            None,
            401,
            "Unauthorized",
        ),
        (
            "GET",
            format!("/conversations/{conv}"),
            "",
            None,
            401,
            "Unauthorized",
        ),
        (
            "GET",
            format!("/conversations/{conv}"),
            "eyJhIjoxfQ.bm9wZQ",
            None,
            403,
            "Forbidden",
        ),
        (
            "POST",
            path.clone(),
            &token,
            Some(json!([1])),
            400,
            "BadArgument",
        ),
        (
            "POST",
            path.clone(),
            &token,
            Some(json!({"type": "message", "from": {"id": user}})),
            400,
            "BadArgument",
        ),
        ("GET", "/nothing/here".into(), &token, None, 404, "NotFound"),
    ];
    for (method, path, bearer, body, status, want) in cases {
        let (got, _, e) = call(&proxy, method, &path, bearer, body, &[]).await;
        assert_eq!((got, code(&e)), (status, want), "{method} {path}: {e}");
        assert!(e["error"]["message"].is_string());
    }
    // A bot that cannot be reached: 502 BotRejectedActivity, and nothing joins the conversation.
    let client = reqwest::Client::new();
    let start_down = client
        .post(proxy.url("/down/v3/directline/conversations"))
        .bearer_auth(SECRET)
        .send()
        .await
        .unwrap();
    let s: Value = start_down.json().await.unwrap();
    let (dconv, dtoken) = (
        s["conversationId"].as_str().unwrap(),
        s["token"].as_str().unwrap(),
    );
    let resp = client
        .post(proxy.url(&format!(
            "/down/v3/directline/conversations/{dconv}/activities"
        )))
        .bearer_auth(dtoken)
        .json(&message("u1", "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(code(&e), "BotRejectedActivity");
    let page: Value = client
        .get(proxy.url(&format!(
            "/down/v3/directline/conversations/{dconv}/activities"
        )))
        .bearer_auth(dtoken)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["activities"], json!([]));
}

#[tokio::test]
async fn browsers_get_cors_for_allowed_origins_only() {
    let proxy = Proxy::start(&shipped_config()).await;
    let allowed = format!("http://127.0.0.1:{}", proxy.port);
    let preflight = |origin: String| {
        let proxy = &proxy;
        async move {
            let extra = [
                ("origin", origin.as_str()),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "authorization,content-type,x-ms-bot-agent",
                ),
            ];
            call(proxy, "OPTIONS", "/conversations", "", None, &extra).await
        }
    };
    let (status, h, _) = preflight(allowed.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(h["access-control-allow-origin"], allowed.as_str());
    let headers = h["access-control-allow-headers"].to_str().unwrap();
    for want in ["authorization", "content-type", "x-ms-bot-agent"] {
        assert!(headers.contains(want), "{headers}");
    }
    assert!(h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    let (status, h, e) = preflight("http://evil.test".into()).await;
    assert_eq!((status, code(&e)), (403, "Forbidden"));
    assert!(h.get("access-control-allow-origin").is_none());
    // The secret used from a page at another origin: refused, even though it is right.
    let evil = [("origin", "http://evil.test")];
    let (status, _, e) = call(&proxy, "POST", "/conversations", SECRET, None, &evil).await;
    assert_eq!((status, code(&e)), (403, "Forbidden"));
    let mine = [("origin", allowed.as_str())];
    let (status, h, _) = call(&proxy, "POST", "/conversations", SECRET, None, &mine).await;
    assert_eq!(status, 201);
    assert_eq!(h["access-control-allow-origin"], allowed.as_str());
}

/// Opens a conversation's stream.
async fn open_stream(url: &str) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let authority = url.trim_start_matches("ws://").split('/').next().unwrap();
    let tcp = tokio::net::TcpStream::connect(authority).await.unwrap();
    let (ws, resp) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    assert_eq!(resp.status(), 101);
    ws
}

/// The next activity set on a stream (keep-alives skipped), within 5 s.
async fn next_set(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .ok()??
            .ok()?;
        match m {
            Message::Text(t) if !t.is_empty() => return serde_json::from_str(&t).ok(),
            Message::Close(_) => return None,
            _ => {}
        }
    }
}

#[tokio::test]
async fn the_stream_pushes_activity_sets_and_closes_when_the_token_expires() {
    let proxy = Proxy::start(&shipped_config()).await;
    let (conv, token, started) = start(&proxy).await;
    let mut ws = open_stream(started["streamUrl"].as_str().unwrap()).await;
    let path = format!("/conversations/{conv}/activities");
    let user = "u1";
    let (_, _, posted) = call(
        &proxy,
        "POST",
        &path,
        &token,
        Some(message(user, "hi")),
        &[],
    )
    .await;
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let set = next_set(&mut ws).await.expect("an activity set");
        assert!(set["watermark"].is_string());
        seen.extend(set["activities"].as_array().unwrap().clone());
    }
    assert_eq!(seen[0]["id"], posted["id"]);
    assert_eq!(replies_to(&seen, posted["id"].as_str().unwrap()).len(), 3);
    // A stream is refused without the upgrade, and for another conversation's token.
    let stream_path = format!("/conversations/{conv}/stream?t={token}");
    let (status, _, e) = call(&proxy, "GET", &stream_path, "", None, &[]).await;
    assert_eq!((status, code(&e)), (400, "BadArgument"));

    // A token with 2 s left: its stream closes when it expires.
    proxy
        .clock
        .set(SystemTime::now() + Duration::from_secs(1_798));
    let (_, _, again) = call(
        &proxy,
        "GET",
        &format!("/conversations/{conv}"),
        &token,
        None,
        &[],
    )
    .await;
    assert_eq!(again["expires_in"], 2);
    let mut short = open_stream(again["streamUrl"].as_str().unwrap()).await;
    let opened = std::time::Instant::now();
    assert!(next_set(&mut short).await.is_some(), "the backlog first");
    loop {
        match tokio::time::timeout(Duration::from_secs(5), short.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => {
                assert_eq!(frame.unwrap().reason, "token expired");
                break;
            }
            Ok(Some(Ok(_))) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    }
    let took = opened.elapsed();
    assert!(
        took > Duration::from_millis(1_500) && took < Duration::from_secs(4),
        "{took:?}"
    );
}

#[tokio::test]
async fn a_second_instance_on_redis_continues_the_conversation() {
    let redis = RedisServer::start();
    let config = shipped_config().replace(
        "[demo]",
        &format!("[redis]\nurl = \"{}\"\n\n[demo]", redis.url()),
    );
    let a = Proxy::start(&config).await;
    let b = Proxy::start(&config).await;
    let (conv, token, _) = start(&a).await;
    let user = "u1";
    let path = format!("/conversations/{conv}/activities");
    let (_, _, first) = call(&a, "POST", &path, &token, Some(message(user, "hi")), &[]).await;
    // B reads what A added, and B's stream is told of what A adds next.
    let (seen, watermark) = poll(&b, &conv, &token, "").await;
    assert_eq!(seen[0]["id"], first["id"]);
    assert_eq!(replies_to(&seen, first["id"].as_str().unwrap()).len(), 3);
    let (_, _, reconnect) = call(
        &b,
        "GET",
        &format!("/conversations/{conv}?watermark={watermark}"),
        &token,
        None,
        &[],
    )
    .await;
    let stream = reconnect["streamUrl"].as_str().unwrap().to_owned();
    assert!(stream.contains(&b.port.to_string()));
    let mut ws = open_stream(&format!("{stream}&watermark={watermark}")).await;
    let (_, _, second) = call(&a, "POST", &path, &token, Some(message(user, "again")), &[]).await;
    let set = next_set(&mut ws)
        .await
        .expect("A's activities on B's stream");
    assert_eq!(set["activities"][0]["id"], second["id"]);
    // B posts; A reads it; the places (ids) go on from A's.
    let (_, _, third) = call(&b, "POST", &path, &token, Some(message(user, "third")), &[]).await;
    let (all, _) = poll(&a, &conv, &token, "").await;
    let ids: Vec<&str> = all.iter().map(|x| x["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 12, "{ids:?}");
    assert_eq!(ids[8], third["id"]);
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 12, "unique ids");
    // Redis gone: a 503 in Direct Line's words, not another instance's half of the conversation.
    drop(redis);
    let (status, _, e) = call(&a, "GET", &path, &token, None, &[]).await;
    assert_eq!((status, code(&e)), (503, "ServiceUnavailable"), "{e}");
}

/// Why Microsoft's client cannot run here, if it cannot.
fn node_missing() -> Option<String> {
    if Command::new("node").arg("--version").output().is_err() {
        return Some("node is not installed (apt-get install nodejs npm)".into());
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/node_modules");
    (!dir.join("botframework-directlinejs").exists())
        .then(|| "botframework-directlinejs is not installed: run `npm ci` in tests/browser".into())
}

/// Whether a test is skipped because a tool it needs is missing (`why`): only with
/// `BOTBRIDGE_ALLOW_SKIP=1`, else it fails naming the tool.
fn skipped(why: Option<String>) -> bool {
    let Some(why) = why else {
        return false;
    };
    skip_for_missing(&why)
}

/// The test Direct Line bot with secret `bf-secret`, unless node cannot run it (skipped).
async fn bot_framework_bot() -> Option<BotFrameworkBot> {
    if skipped(node_missing()) {
        return None;
    }
    Some(
        tokio::task::spawn_blocking(|| BotFrameworkBot::start("bf-secret"))
            .await
            .unwrap(),
    )
}

/// The shipped config with the Direct Line bot at `port` as backend `bf-bot` (with `extra` keys),
/// and `routes`.
fn with_bf_bot(port: u16, extra: &str, routes: &str) -> String {
    shipped_config().replace(
        "# Haptik and CSML callers in front of a Dialogflow CX agent.",
        &format!(
            "[[backends]]\nname = \"bf-bot\"\ndialect = \"directline\"\nurl = \"http://127.0.0.1:{port}/v3/directline\"\nsecret = \"bf-secret\"\n{extra}\n\n{routes}"
        ),
    )
}

/// A route `/to-bf` for `ingress` callers to the Direct Line bot.
fn to_bf_route(ingress: &str) -> String {
    format!("[[routes]]\nname = \"to-bf\"\npath = \"/to-bf\"\ningress = \"{ingress}\"\nbackend = \"bf-bot\"\n")
}

/// DirectLineJS's run against `domain` (see tests/browser/directline.mjs).
fn directlinejs(domain: &str, mode: &str) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/directline.mjs");
    let out = Command::new("node")
        .arg(script)
        .args([domain, SECRET, mode])
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|_| panic!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    assert!(out.status.success(), "{mode} at {domain}: {v}");
    v
}

/// The demo bots, the shipped Direct Line route's first.
const DEMO_BOTS: [&str; 6] = [
    "demo-bot",
    "demo-haptik-bot",
    "demo-engine",
    "demo-rasa-bot",
    "demo-lex-bot",
    "demo-dialogflow-bot",
];

/// A Direct Line route at `/<bot>/v3/directline/` in front of each of `bots`.
fn demo_bot_routes(bots: &[&str]) -> String {
    bots.iter()
        .map(|b| {
            format!("[[routes]]\nname = \"dl-{b}\"\npath_prefix = \"/{b}/v3/directline/\"\ningress = \"directline\"\nbackend = \"{b}\"\nbusiness_id = 343\n\n")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directlinejs_holds_a_conversation_with_every_demo_bot_by_polling_and_websocket() {
    if skipped(node_missing()) {
        return;
    }
    let bots = DEMO_BOTS;
    let routes = demo_bot_routes(&bots);
    let config = shipped_config().replace(
        "# Haptik and CSML callers in front of a Dialogflow CX agent.",
        &routes,
    );
    let proxy = Proxy::start(&config).await;
    for bot in bots {
        for mode in ["polling", "websocket"] {
            let domain = proxy.url(&format!("/{bot}{DL}"));
            let v = tokio::task::spawn_blocking(move || directlinejs(&domain, mode))
                .await
                .unwrap();
            let context = format!("{bot} by {mode}: {v}");
            assert_eq!(v["echo"]["text"], "hi", "{context}");
            assert_eq!(
                v["echo"]["channelData"],
                json!({"clientActivityID": "c-1"}),
                "{context}"
            );
            let replies = v["replies"].as_array().unwrap();
            assert!(replies.iter().any(|r| r["text"].is_string()), "{context}");
            assert!(v["clicked"]["title"].is_string(), "{context}");
            assert!(!v["after"].as_array().unwrap().is_empty(), "{context}");
            if mode == "websocket" {
                assert!(
                    v["statuses"].as_array().unwrap().contains(&json!("Online")),
                    "{context}"
                );
            }
            if bot == "demo-bot" {
                let texts: Vec<&Value> = v["after"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| &r["text"])
                    .collect();
                assert!(texts.contains(&&json!("You clicked: YES")), "{context}");
            }
        }
    }
}

fn chromium() -> std::path::PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| "/usr/bin/chromium".into(), Into::into)
}

/// Web Chat's run (see tests/browser/webchat.mjs): what the page showed.
fn webchat(domain: &str, mode: &str, shot: &Path) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/webchat.mjs");
    let out = Command::new("node")
        .arg(script)
        .args([domain, SECRET])
        .arg(shot)
        .args([WEBCHAT_ORIGIN, mode])
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|_| panic!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    assert!(out.status.success(), "{mode}: {v}");
    v
}

/// Where the test page is served from (by the browser driver itself): cross-origin to the proxy.
const WEBCHAT_ORIGIN: &str = "http://webchat.botbridge.test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_chat_in_chromium_holds_a_conversation_and_clicks_a_button() {
    if skipped(node_missing()) {
        return;
    }
    let no_chromium = format!("{} is not installed", chromium().display());
    if skipped((!chromium().exists()).then_some(no_chromium)) {
        return;
    }
    // The shipped Direct Line route (the demo CSML bot), and one in front of each other demo bot.
    let config = shipped_config()
        .replace(
            "allowed_origins = [",
            &format!("allowed_origins = [\"{WEBCHAT_ORIGIN}\", "),
        )
        .replace(
            "# Haptik and CSML callers in front of a Dialogflow CX agent.",
            &demo_bot_routes(&DEMO_BOTS[1..]),
        );
    let proxy = Proxy::start(&config).await;
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .to_owned();
    let runs = [("", "websocket"), ("", "polling")]
        .into_iter()
        .chain(DEMO_BOTS[1..].iter().map(|b| (*b, "websocket")));
    for (bot, mode) in runs {
        let domain = match bot {
            "" => proxy.url(DL),
            b => proxy.url(&format!("/{b}{DL}")),
        };
        let name = if bot.is_empty() {
            mode.to_owned()
        } else {
            format!("{bot}-{mode}")
        };
        let shot = target.join(format!("webchat-{name}.png"));
        let seen = {
            let shot = shot.clone();
            tokio::task::spawn_blocking(move || webchat(&domain, mode, &shot))
                .await
                .unwrap()
        };
        println!("Web Chat screenshot: {}", shot.display());
        let context = format!("{name}: {seen}");
        assert_eq!(seen["ok"], true, "{context}");
        assert_eq!(seen["sendFailed"], false, "{context}");
        assert_eq!(seen["problems"], json!([]), "{context}");
        let said: Vec<(String, String)> = seen["transcript"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                let s = |k: &str| t[k].as_str().unwrap_or_default().to_owned();
                (s("from"), s("text"))
            })
            .collect();
        let has = |from: &str, text: &str| said.iter().any(|(f, t)| f == from && t == text);
        assert!(has("user", "hi"), "{context}");
        assert!(
            has("bot", "Hello from the botbridge demo bot!"),
            "{context}"
        );
        assert!(has("bot", "Did that reach you?"), "{context}");
        assert!(
            said.iter()
                .any(|(f, t)| f == "bot" && t.eq_ignore_ascii_case("You said: YES")),
            "the click's reply: {context}"
        );
        assert_eq!(seen["buttons"], json!(["Yes", "No"]), "{context}");
    }
}

/// The test Direct Line bot server (tests/browser/dl_bot.mjs: `offline-directline` in front of a
/// `botbuilder` bot), stopped when dropped.
struct BotFrameworkBot {
    child: std::process::Child,
    port: u16,
}

impl BotFrameworkBot {
    fn start(secret: &str) -> BotFrameworkBot {
        Self::start_on(0, secret)
    }

    /// On `port` (0: any free one).
    fn start_on(port: u16, secret: &str) -> BotFrameworkBot {
        Self::start_with(port, secret, 1800)
    }

    /// With tokens that last `token_seconds`.
    fn start_with(port: u16, secret: &str, token_seconds: u64) -> BotFrameworkBot {
        use std::io::BufRead;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/dl_bot.mjs");
        let mut child = Command::new("node")
            .env("DL_TOKEN_SECONDS", token_seconds.to_string())
            .arg(script)
            .args([&port.to_string(), secret])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run node");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the bot server did not start: {line:?}"));
        BotFrameworkBot { child, port }
    }
}

impl Drop for BotFrameworkBot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haptik_csml_and_rasa_callers_hold_a_conversation_with_a_direct_line_bot() {
    let Some(bot) = bot_framework_bot().await else {
        return;
    };
    let routes: String = ["haptik", "csml", "rasa"]
        .iter()
        .map(|d| {
            format!("[[routes]]\nname = \"to-bf-{d}\"\npath = \"/to-bf/{d}\"\ningress = \"{d}\"\nbackend = \"bf-bot\"\nbusiness_id = 343\n\n")
        })
        .collect();
    let config = with_bf_bot(bot.port, "quiet_ms = 600", &routes);
    let proxy = Proxy::start(&config).await;
    let haptik = || {
        vec![
            ("authorization", "Bearer demo-token".to_string()),
            ("client-id", "demo-client".to_string()),
        ]
    };
    let csml = || {
        let (k, s) = csml_sign("demo-key", "demo-secret", unix_now());
        vec![("x-api-key", k), ("x-api-signature", s)]
    };
    let rasa = || vec![("authorization", "Bearer demo-rasa-token".to_string())];

    // Rasa: every reply kind translated.
    let say = |text: &str| json!({"sender": "rasa-user", "message": text}).to_string();
    let (status, v) = send(&proxy, "/to-bf/rasa", &rasa(), &say("hi")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v,
        json!([
            {"recipient_id": "rasa-user", "text": "Hello from the Bot Framework test bot!"},
            {"recipient_id": "rasa-user", "text": "Pick one", "buttons": [
                {"title": "Red", "payload": "Red"}, {"title": "Blue", "payload": "BLUE"}]},
            {"recipient_id": "rasa-user", "text": "Suggestions", "buttons": [
                {"title": "Yes", "payload": "Yes"}, {"title": "No", "payload": "No"}]},
            {"recipient_id": "rasa-user", "image": "https://example.com/cat.png"},
            {"recipient_id": "rasa-user", "text": "Adaptive says hi"}
        ])
    );
    // A reply that comes 1.5 s later is still this message's.
    let (status, v) = send(&proxy, "/to-bf/rasa", &rasa(), &say("slow")).await;
    assert_eq!(status, 200, "{v}");
    assert!(v.to_string().contains("Sorry for the wait!"), "{v}");

    // Haptik: texts both ways.
    let (status, v) = send(
        &proxy,
        "/to-bf/haptik",
        &haptik(),
        &haptik_body("h-user", "hi", 343),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert!(
        v.to_string()
            .contains("Hello from the Bot Framework test bot!"),
        "{v}"
    );
    let (status, v) = send(
        &proxy,
        "/to-bf/haptik",
        &haptik(),
        &haptik_body("h-user", "No", 343),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert!(v.to_string().contains("You said: No"), "{v}");

    // CSML: a click on a button with a payload goes to the bot as the postBack's value; a failing
    // bot is CSML's error.
    let csml_say = |text: &str| {
        json!({"client": {"user_id": "c-user"}, "metadata": {},
               "payload": {"content_type": "text", "content": {"text": text}}})
        .to_string()
    };
    let (status, v) = send(&proxy, "/to-bf/csml", &csml(), &csml_say("Red")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["messages"][0]["payload"]["content"]["text"], "You said: Red",
        "{v}"
    );
    let click = json!({"client": {"user_id": "c-user"}, "metadata": {},
                       "payload": {"content_type": "payload", "content": {"payload": "BLUE"}}})
    .to_string();
    let (status, v) = send(&proxy, "/to-bf/csml", &csml(), &click).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["messages"][0]["payload"]["content"]["text"], "You picked: BLUE",
        "{v}"
    );
    let (status, v) = send(&proxy, "/to-bf/csml", &csml(), &csml_say("fail")).await;
    assert_eq!((status, v["statusCode"].as_u64()), (502, Some(502)), "{v}");
    // The user's next message goes on in the same conversation.
    let (status, v) = send(&proxy, "/to-bf/csml", &csml(), &csml_say("Yes")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["messages"][0]["payload"]["content"]["text"], "You said: Yes",
        "{v}"
    );
}

#[tokio::test]
async fn a_conversation_belongs_to_the_route_and_credential_that_started_it() {
    let routes = r#"[[clients.directline]]
name = "tenant-b"
secret = "tenant-b-secret-0123456789"
routes = ["dl-b"]

[[routes]]
name = "dl-b"
path_prefix = "/b/v3/directline/"
ingress = "directline"
backend = "demo-bot"

# Haptik and CSML callers in front of a Dialogflow CX agent."#;
    let config = shipped_config().replace(
        "# Haptik and CSML callers in front of a Dialogflow CX agent.",
        routes,
    );
    let proxy = Proxy::start(&config).await;
    let b = "tenant-b-secret-0123456789";
    let on_b = |p: &str| format!("/b{DL}{p}");
    let client = reqwest::Client::new();
    let b_call = |method: reqwest::Method, path: String, bearer: String| {
        let client = client.clone();
        let url = proxy.url(&path);
        async move {
            let r = client
                .request(method, url)
                .bearer_auth(bearer)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, started) = b_call(reqwest::Method::POST, on_b("/conversations"), b.into()).await;
    assert_eq!(status, 201, "{started}");
    let b_conv = started["conversationId"].as_str().unwrap().to_owned();
    let b_token = started["token"].as_str().unwrap().to_owned();
    // Tenant A's secret, on A's route: B's conversation does not exist for it.
    let a_on_b_conv = format!("/conversations/{b_conv}/activities");
    let (status, _, e) = call(&proxy, "GET", &a_on_b_conv, SECRET, None, &[]).await;
    assert_eq!((status, code(&e)), (404, "NotFound"), "{e}");
    let (status, _, e) = call(
        &proxy,
        "GET",
        &format!("/conversations/{b_conv}"),
        SECRET,
        None,
        &[],
    )
    .await;
    assert_eq!((status, code(&e)), (404, "NotFound"), "{e}");
    // B's token on A's route: refused; B's secret on A's route: out of its scope.
    let (status, _, e) = call(&proxy, "GET", &a_on_b_conv, &b_token, None, &[]).await;
    assert_eq!((status, code(&e)), (403, "Forbidden"), "{e}");
    let (status, _, e) = call(&proxy, "POST", "/conversations", b, None, &[]).await;
    assert_eq!((status, code(&e)), (403, "Forbidden"), "{e}");
    // B reads its own.
    let path = on_b(&format!("/conversations/{b_conv}/activities"));
    let (status, page) = b_call(reqwest::Method::GET, path, b_token).await;
    assert_eq!((status, &page["activities"]), (200, &json!([])));
}

#[tokio::test]
async fn one_stream_per_conversation_a_newer_one_closes_the_older() {
    let proxy = Proxy::start(&shipped_config()).await;
    let (conv, token, started) = start(&proxy).await;
    let url = started["streamUrl"].as_str().unwrap().to_owned();
    let mut first = open_stream(&url).await;
    let mut second = open_stream(&url).await;
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(5), first.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame.unwrap().reason.to_string(),
            Ok(Some(Ok(_))) => continue,
            other => panic!("the older stream was not closed: {other:?}"),
        }
    };
    assert_eq!(closed, "a newer stream opened");
    let path = format!("/conversations/{conv}/activities");
    call(
        &proxy,
        "POST",
        &path,
        &token,
        Some(message("u1", "hi")),
        &[],
    )
    .await;
    assert!(
        next_set(&mut second).await.is_some(),
        "the newer stream goes on"
    );
    // Without the WebSocket version a client must speak: refused, saying which.
    let stream_path = format!("/conversations/{conv}/stream?t={token}");
    let extra = [
        ("upgrade", "websocket"),
        ("connection", "Upgrade"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let (status, h, e) = call(&proxy, "GET", &stream_path, "", None, &extra).await;
    assert_eq!((status, code(&e)), (400, "BadArgument"));
    assert_eq!(h["sec-websocket-version"], "13");
}

#[tokio::test]
async fn direct_line_callers_are_shadowed_and_canaried_like_any_caller() {
    // The shipped Direct Line route, shadowed by the demo engine bot and with every user on the
    // demo Haptik bot as its canary... in two routes, so each is seen alone.
    let routes = r#"[[routes]]
name = "dl-shadowed"
path_prefix = "/shadowed/v3/directline/"
ingress = "directline"
backend = "demo-bot"
shadow = { backend = "demo-engine", percent = 100 }

[[routes]]
name = "dl-canary"
path_prefix = "/canary/v3/directline/"
ingress = "directline"
backend = "demo-bot"
business_id = 343
canary = { backend = "demo-haptik-bot", percent = 100 }

# Haptik and CSML callers in front of a Dialogflow CX agent."#;
    let config = shipped_config().replace(
        "# Haptik and CSML callers in front of a Dialogflow CX agent.",
        routes,
    );
    let proxy = Proxy::start(&config).await;
    let client = reqwest::Client::new();
    let converse = |prefix: &'static str| {
        let client = client.clone();
        let base = proxy.url(&format!("/{prefix}{DL}"));
        async move {
            let s: Value = (client
                .post(format!("{base}/conversations"))
                .bearer_auth(SECRET))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
            let conv = s["conversationId"].as_str().unwrap().to_owned();
            let acts = format!("{base}/conversations/{conv}/activities");
            let posted = (client
                .post(&acts)
                .bearer_auth(SECRET)
                .json(&message("u1", "hi")))
            .send()
            .await
            .unwrap();
            assert_eq!(posted.status(), 200);
            let page: Value = (client.get(&acts).bearer_auth(SECRET).send().await.unwrap())
                .json()
                .await
                .unwrap();
            page["activities"].as_array().unwrap().clone()
        }
    };
    // Shadowed: the caller gets the primary's replies; the shadow's answer is compared.
    let seen = converse("shadowed").await;
    assert_eq!(seen[1]["text"], "Hello from the botbridge demo bot!");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let all: Value = (client
            .get(proxy.admin_url("/migration.json"))
            .send()
            .await
            .unwrap())
        .json()
        .await
        .unwrap();
        let route = (all["routes"].as_array().unwrap().iter())
            .find(|r| r["route"] == "dl-shadowed")
            .cloned()
            .unwrap_or_default();
        if route["report"]["pairs"].as_u64() == Some(1) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no comparison: {all}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Canaried: every user is on the Haptik bot, whose answer becomes the activities.
    let seen = converse("canary").await;
    let texts: Vec<&Value> = seen.iter().skip(1).map(|a| &a["text"]).collect();
    assert!(!texts.is_empty(), "{seen:?}");
    assert!(
        seen.iter().skip(1).all(|a| a["replyToId"] == seen[0]["id"]),
        "{seen:?}"
    );
    // The demo bots answer alike: the backends' timings tell which bot answered.
    let metrics = scrape(&proxy).await;
    let answered_by = |backend: &str| {
        let series = format!(
            "botbridge_backend_duration_seconds_count{{backend=\"{backend}\",route=\"dl-canary\"}}"
        );
        series_value(&metrics, &series).unwrap_or(0.0)
    };
    assert_eq!(
        (answered_by("demo-haptik-bot"), answered_by("demo-bot")),
        (1.0, 0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_line_bot_that_lost_its_conversations_gets_a_new_one() {
    let Some(bot) = bot_framework_bot().await else {
        return;
    };
    let port = bot.port;
    let config = with_bf_bot(port, "quiet_ms = 300", &to_bf_route("rasa"));
    let proxy = Proxy::start(&config).await;
    let rasa = || vec![("authorization", "Bearer demo-rasa-token".to_string())];
    let say = |t: &str| json!({"sender": "r1", "message": t}).to_string();
    let (status, v) = send(&proxy, "/to-bf", &rasa(), &say("Red")).await;
    assert_eq!(
        (status, &v[0]["text"]),
        (200, &json!("You said: Red")),
        "{v}"
    );
    // The bot's Direct Line restarts on the same port and forgets every conversation: the next
    // message starts a new one (once), and is answered.
    drop(bot);
    let bot = tokio::task::spawn_blocking(move || BotFrameworkBot::start_on(port, "bf-secret"))
        .await
        .unwrap();
    let (status, v) = send(&proxy, "/to-bf", &rasa(), &say("Yes")).await;
    assert_eq!(
        (status, &v[0]["text"]),
        (200, &json!("You said: Yes")),
        "{v}"
    );
    drop(bot);
}

/// What the test Direct Line service counts: conversations started, tokens refreshed.
async fn bot_stats(port: u16) -> (u64, u64) {
    let url = format!("http://127.0.0.1:{port}/v3/test/stats");
    let v: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    (
        v["started"].as_u64().unwrap(),
        v["refreshed"].as_u64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_line_bots_token_is_refreshed_before_it_expires_and_the_conversation_goes_on() {
    if skipped(node_missing()) {
        return;
    }
    // Tokens of 306 s: less than the 300 s the proxy keeps in hand is left after 6 s. The test
    // service revokes a token once it is refreshed, so a proxy that kept using the old one would
    // be refused and start another conversation.
    let bot = tokio::task::spawn_blocking(|| BotFrameworkBot::start_with(0, "bf-secret", 306))
        .await
        .unwrap();
    let config = with_bf_bot(bot.port, "quiet_ms = 300", &to_bf_route("rasa"));
    let proxy = Proxy::start(&config).await;
    let rasa = [("authorization", "Bearer demo-rasa-token".to_string())];
    let said = |t: &'static str| {
        let body = json!({"sender": "r1", "message": t}).to_string();
        let (proxy, rasa) = (&proxy, &rasa);
        async move {
            let (status, v) = send(proxy, "/to-bf", rasa, &body).await;
            let expected = json!(format!("You said: {t}"));
            assert_eq!((status, &v[0]["text"]), (200, &expected), "{v}");
        }
    };
    said("Red").await;
    said("No").await;
    let stats = bot_stats(bot.port).await;
    assert_eq!(stats, (1, 0), "a fresh token is used as it is");
    tokio::time::sleep(Duration::from_millis(6500)).await;
    said("Yes").await;
    said("Red").await;
    let stats = bot_stats(bot.port).await;
    assert_eq!(stats, (1, 1), "one refresh, in the same conversation");
}

#[tokio::test]
async fn a_post_sent_again_is_answered_with_its_first_answer_and_reaches_the_bot_once() {
    let proxy = Proxy::start(&shipped_config()).await;
    let (conv, token, _) = start(&proxy).await;
    let path = format!("/conversations/{conv}/activities");
    let hi = message("u1", "hi");
    let (s1, _, first) = call(&proxy, "POST", &path, &token, Some(hi.clone()), &[]).await;
    let (s2, _, again) = call(&proxy, "POST", &path, &token, Some(hi), &[]).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(first["id"], again["id"]);
    let (all, _) = poll(&proxy, &conv, &token, "").await;
    assert_eq!(
        all.len(),
        4,
        "one echo and the bot's three replies, once: {all:?}"
    );
    // Another client activity id is another message.
    let (_, _, other) = call(
        &proxy,
        "POST",
        &path,
        &token,
        Some(message("u1", "again")),
        &[],
    )
    .await;
    assert_ne!(other["id"], first["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_async_mode_a_direct_line_bots_replies_are_delivered_as_they_arrive() {
    let Some(bot) = bot_framework_bot().await else {
        return;
    };
    // Replies 1.5 s apart, and a quiet time longer than that: one exchange, two deliveries.
    let config = with_bf_bot(bot.port, "quiet_ms = 2500", &to_bf_route("csml"));
    let proxy = Proxy::start(&config).await;
    let rx = receiver::Receiver::start(receiver::Reply::Ok).await;
    let (key, sig) = csml_sign("demo-key", "demo-secret", unix_now());
    let body =
        json!({"client": {"user_id": "a-user"}, "metadata": {}, "callback_url": rx.url("/cb"),
                      "payload": {"content_type": "text", "content": {"text": "twice"}}})
        .to_string();
    let sent = std::time::Instant::now();
    let (status, ack) = send(
        &proxy,
        "/to-bf",
        &[("x-api-key", key), ("x-api-signature", sig)],
        &body,
    )
    .await;
    assert_eq!(status, 200, "{ack}");
    let deadline = sent + Duration::from_secs(10);
    while rx.received().len() < 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = rx.received();
    let texts: Vec<String> = got.iter().map(|g| g.json().to_string()).collect();
    assert_eq!(got.len(), 3, "{texts:?}");
    // CSML's closing POST comes once, after the last reply.
    let last = got[2].json();
    assert_eq!(
        (&last["messages"], &last["conversation_end"]),
        (&json!([]), &json!(true))
    );
    assert!(
        texts[0].contains("First reply") && texts[1].contains("Second reply"),
        "{texts:?}"
    );
    let first = got[0].at.duration_since(sent);
    let apart = got[1].at.duration_since(got[0].at);
    // The first came long before the exchange ended (at 1.5 s + the 2.5 s quiet time).
    assert!(
        first < Duration::from_millis(1_200),
        "first after {first:?}"
    );
    assert!(apart > Duration::from_millis(1_000), "apart by {apart:?}");
    assert_ne!(
        got[0].header("idempotency-key"),
        got[1].header("idempotency-key")
    );
    drop(bot);
}

#[tokio::test]
async fn streams_take_no_data_one_credential_has_its_share_and_activities_are_bounded() {
    let config = shipped_config().replace(
        "[demo]",
        "[conversations]\nchannel_streams_per_credential = 1\n\n[demo]",
    );
    let proxy = Proxy::start(&config).await;
    let (conv, token, started) = start(&proxy).await;
    let mut ws = open_stream(started["streamUrl"].as_str().unwrap()).await;
    // The credential's one stream is open: another of its conversations gets none for now.
    let (_, _, other) = start(&proxy).await;
    let url = other["streamUrl"].as_str().unwrap();
    let authority = url.trim_start_matches("ws://").split('/').next().unwrap();
    let tcp = tokio::net::TcpStream::connect(authority).await.unwrap();
    let refused = tokio_tungstenite::client_async(url, tcp).await.unwrap_err();
    assert!(refused.to_string().contains("503"), "{refused}");
    // A data frame from the caller closes its stream (activities are posted over HTTP), which
    // frees the credential's place.
    futures_util::SinkExt::send(&mut ws, Message::text("hello"))
        .await
        .unwrap();
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame.unwrap(),
            Ok(Some(Ok(_))) => continue,
            other => panic!("not closed: {other:?}"),
        }
    };
    assert_eq!(u16::from(closed.code), 1008);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = open_stream(url).await;
    assert!(
        futures_util::SinkExt::send(&mut again, Message::Ping(Default::default()))
            .await
            .is_ok()
    );
    // An activity larger than a conversation keeps is refused, and nothing joins.
    let path = format!("/conversations/{conv}/activities");
    let big = json!({"type": "message", "from": {"id": "u1"}, "text": "x".repeat(40_000)});
    let config_limit = 65_536; // the shipped max_body_bytes: the body itself is accepted
    assert!(big.to_string().len() < config_limit);
    let (status, _, e) = call(&proxy, "POST", &path, &token, Some(big), &[]).await;
    assert_eq!((status, code(&e)), (413, "BadArgument"), "{e}");
    let (all, _) = poll(&proxy, &conv, &token, "").await;
    assert!(all.is_empty());
}
