//! What every fuzz target checks once a parser accepted its input: the result goes through the rest
//! of the request path (rendered for every bot, every caller, every error shape) without a panic,
//! and everything rendered is JSON the receiving side can read.
//!
//! The dialects are taken from the registry, so a new vendor is fuzzed here without a new line.

use std::time::{Duration, SystemTime};

use botbridge::dialect::{
    bot_dialect, caller, callers, registry, AnswerContext, AnswerShape, Bot, BotRequestContext,
    FixedIds, FlowTriggerPolicy,
};
use botbridge::error::ProxyError;
use botbridge::model::{ChatAnswer, ChatRequest, Content};

/// The test service account's key file (written once to the temp directory), for Dialogflow bots.
fn service_account_file() -> String {
    static FILE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let key = include_str!("../../tests/fixtures/dialogflow/test-key.pem");
        let sa = serde_json::json!({"client_email": "fuzz@p.iam.gserviceaccount.com",
            "private_key": key, "token_uri": "http://127.0.0.1:9/token"});
        let path =
            std::env::temp_dir().join(format!("botbridge-fuzz-sa-{}.json", std::process::id()));
        std::fs::write(&path, sa.to_string()).expect("temp dir writable");
        path.display().to_string()
    })
    .clone()
}

/// A configured bot of every registered bot dialect, with throwaway credentials.
pub fn bots() -> Vec<Box<dyn Bot>> {
    registry::bot_names()
        .into_iter()
        .map(|name| {
            let settings = match name {
                "csml" => "api_key = \"k\"\napi_secret = \"s\"".to_owned(),
                "haptik" => "token = \"t\"\nclient_id = \"c\"".to_owned(),
                "csml-engine" => "bot_id = \"b\"\nchannel_id = \"ch\"".to_owned(),
                "rasa" => String::new(),
                "lex-v2" => concat!(
                    "region = \"us-east-1\"\nbot_id = \"B\"\nbot_alias_id = \"A\"\n",
                    "locale_id = \"en_US\"\naccess_key_id = \"AK\"\nsecret_access_key = \"s\""
                )
                .to_owned(),
                "dialogflow-cx" => format!(
                    "project = \"p\"\nlocation = \"global\"\nagent = \"a\"\nlanguage_code = \"en\"\ncredentials_file = {:?}",
                    service_account_file()
                ),
                "directline" => "secret = \"fuzz-directline-secret\"".to_owned(),
                other => panic!("a new bot dialect `{other}`: add its settings here"),
            };
            let table: toml::Table = settings.parse().expect("settings parse");
            bot_dialect(name)
                .expect("registered")
                .configure("backends[0]", table)
                .expect("settings are valid")
        })
        .collect()
}

/// Checks a request a caller's parser accepted: it renders for every bot (or is refused with a
/// 4xx), what is rendered reads back in the bot's dialect as the same user, and answers and errors
/// render for it in every caller dialect.
pub fn check_request(req: &ChatRequest<'_>, bots: &[Box<dyn Bot>]) {
    assert!(!req.user_id.is_empty(), "a request without a user");
    for bot in bots {
        for flow_trigger in [FlowTriggerPolicy::Reject, FlowTriggerPolicy::Text] {
            let ctx = BotRequestContext {
                request_id: "fuzz-request",
                business_id: Some(req.business_id.unwrap_or(343)),
                flow_trigger,
            };
            match bot.render_request(req, &ctx) {
                Ok(body) => reads_back(&**bot, &body, req),
                Err(e) => assert!((400..500).contains(&e.status), "{e}"),
            }
        }
    }
    let answer = ChatAnswer {
        replies: vec![botbridge::model::Reply::Text("hi".into())],
        ..ChatAnswer::default()
    };
    render_everywhere(req, &answer);
}

/// A bot request in a dialect callers also speak must parse there (at the bot's own path, for a
/// bot with ids in its paths), naming the same user (or, where the path carries the user, the
/// same user again for the same path).
fn reads_back(bot: &dyn Bot, body: &[u8], req: &ChatRequest<'_>) {
    let dialect = bot.dialect();
    let value: serde_json::Value = serde_json::from_slice(body).expect("bot request is JSON");
    assert!(value.is_object(), "bot request is an object");
    let path = bot.target(req, None);
    // A channel's requests are activities posted to a conversation.
    if let Some(ch) = caller(dialect).and_then(|c| c.get().channel()) {
        match ch.parse_activity(body, None, None) {
            Ok(botbridge::dialect::Posted::Message(again)) => {
                assert_eq!(again.user_id, req.user_id, "the user changed on the way")
            }
            other => panic!("{dialect} bot request is not a {dialect} message: {other:?}"),
        }
        return;
    }
    if let Some(c) = caller(dialect) {
        let at = path.as_deref().unwrap_or("/");
        let again = c.parse_request(at, body).unwrap_or_else(|e| {
            panic!(
                "{dialect} bot request does not parse as {dialect}: {e}\n{}",
                String::from_utf8_lossy(body)
            )
        });
        match &path {
            None => assert_eq!(again.user_id, req.user_id, "the user changed on the way"),
            Some(_) => assert_eq!(
                bot.target(&again, None),
                path,
                "the path changed on the way"
            ),
        }
        if let (Content::Text(a), Content::Text(b)) = (&again.content, &req.content) {
            assert_eq!(a, b, "the text changed on the way");
        }
    }
}

/// Checks an answer a bot's parser accepted: it renders in every caller dialect and answer shape.
pub fn check_answer(answer: &ChatAnswer<'_>) {
    let req = ChatRequest {
        user_id: "fuzz-user".into(),
        content: Content::Text("hello".into()),
        business_id: Some(343),
        message_type: 0,
        request_id: Some("fuzz-request".into()),
        metadata: None,
        raw_payload: None,
        callback_url: None,
    };
    render_everywhere(&req, answer);
}

fn render_everywhere(req: &ChatRequest<'_>, answer: &ChatAnswer<'_>) {
    let ids = FixedIds(1, "fuzz-interaction");
    for c in callers() {
        for shape in [AnswerShape::Legacy, AnswerShape::Hsl] {
            let ctx = AnswerContext {
                ids: &ids,
                received: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
                request_id: "fuzz-request",
                business_name: "fuzz",
                bot_name: "fuzz-bot",
                route_name: "fuzz-route",
                business_id: req.business_id,
                shape,
            };
            let _ = c.passes_through(answer, shape);
            let body = c.render_answer(req, answer, &ctx);
            is_json(&body, answer.raw.is_some(), c.as_str());
        }
    }
}

/// A rendered answer is JSON. A bot's own message objects may be passed through verbatim: those
/// were checked by the JSON grammar only (as serde_json reads a value it skips), so a lone surrogate
/// escape (`"\udbbb"`) in them, which most JSON parsers read but serde_json's strict string decoding
/// refuses, reaches the caller as the bot wrote it.
fn is_json(body: &[u8], passes_raw: bool, dialect: &str) {
    let Err(e) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    assert!(
        passes_raw && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok(),
        "{dialect} answer is not JSON: {e}"
    );
}

/// Checks an error a parser returned: a 4xx or 5xx, rendered as JSON in every caller dialect.
pub fn check_error(err: &ProxyError) {
    assert!((400..600).contains(&err.status), "{err}");
    assert!(!err.message.is_empty(), "an error without a message");
    for c in callers() {
        let body = c.render_error(err);
        serde_json::from_slice::<serde_json::Value>(&body)
            .unwrap_or_else(|e| panic!("{} error is not JSON: {e}", c.as_str()));
    }
    serde_json::from_slice::<serde_json::Value>(&botbridge::dialect::render_error_for_either(err))
        .expect("either-dialect error is JSON");
}

/// The path a caller dialect's requests are parsed at: its own, for dialects with ids in their
/// paths (the others ignore it).
pub fn fuzz_path(dialect: &str) -> &'static str {
    match dialect {
        "lex-v2" => "/bots/B/botAliases/A/botLocales/en_US/sessions/fuzz-user/text",
        "dialogflow-cx" => "/v3/projects/p/locations/l/agents/a/sessions/fuzz-user:detectIntent",
        _ => "/",
    }
}

/// A request body through one caller parser, then everything downstream of it; the body also goes
/// through every dialect's shape detection.
pub fn fuzz_request(dialect: &str, body: &[u8], bots: &[Box<dyn Bot>]) {
    let all: Vec<_> = callers().collect();
    let _ = registry::detect_by_body(&all, body);
    match caller(dialect)
        .expect("registered")
        .parse_request(fuzz_path(dialect), body)
    {
        Ok(req) => check_request(&req, bots),
        Err(e) => {
            assert_eq!(e.status, 400, "a request error is a 400: {e}");
            check_error(&e);
        }
    }
}

/// A non-2xx status for a body, picked by its length so every status is reached without a prefix
/// byte (corpus files stay plain bodies).
pub fn error_status(body: &[u8]) -> u16 {
    const STATUSES: [u16; 10] = [100, 301, 400, 401, 403, 404, 413, 422, 500, 503];
    STATUSES[body.len() % STATUSES.len()]
}

/// An answer parser's result, checked.
/// Checks the two readings of one answer (in one pass without the bot's own payloads, and step by
/// step keeping them) agree: both accept it with the same replies, or both refuse it alike.
pub fn check_readings_agree(
    one_pass: &Result<ChatAnswer<'_>, ProxyError>,
    kept: &Result<ChatAnswer<'_>, ProxyError>,
) {
    match (one_pass, kept) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.replies, b.replies);
            assert_eq!(a.dropped, b.dropped);
            assert_eq!(a.conversation_id, b.conversation_id);
            assert_eq!(a.conversation_end, b.conversation_end);
            assert_eq!((&a.bot_id, &a.channel_id), (&b.bot_id, &b.channel_id));
        }
        (Err(a), Err(b)) => assert_eq!((a.status, a.reason), (b.status, b.reason)),
        _ => panic!("the two readings disagree: {one_pass:?} vs {kept:?}"),
    }
}

pub fn check_parsed(parsed: Result<ChatAnswer<'_>, ProxyError>) {
    match parsed {
        Ok(answer) => check_answer(&answer),
        Err(e) => check_error(&e),
    }
}
