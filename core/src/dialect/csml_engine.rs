//! The open-source CSML engine's `POST /run` dialect (`csml_server`), for self-hosted CSML bots.
//!
//! Request: `{"bot_id", "event": {"request_id", "client": {"bot_id","channel_id","user_id"},
//! "metadata", "payload"}}` with `bot_id` and `channel_id` from configuration; auth, when the engine
//! has it, is a plain `X-Api-Key`. Answer: the Chat API's message envelope (parsed by `csml`). The
//! engine's own failures, a 400 `text/plain` for a bad request and an empty 500 for an unknown bot or
//! content type, become 502s naming the status (never the engine's text); a bot `error` message fails
//! the answer like on the Chat API.

use serde::Deserialize;

use crate::config::{header_safe, ConfigError, SecretSource};
use crate::dialect::bad_answer::excerpt;
use crate::dialect::csml;
use crate::dialect::json_out::JsonOut;
use crate::dialect::{settings, Bot, BotDialect, BotRequestContext, Outgoing};
use crate::error::{ProxyError, Reason};
use crate::model::{ChatAnswer, ChatRequest};

/// Renders the canonical request as an engine `/run` body for `bot_id` on `channel_id`.
pub fn render_request(
    req: &ChatRequest<'_>,
    request_id: &str,
    bot_id: &str,
    channel_id: &str,
) -> Vec<u8> {
    let (metadata, payload) = csml::request_parts(req);
    let mut out = JsonOut::with_capacity(200);
    out.raw(r#"{"bot_id":"#)
        .str(bot_id)
        .raw(r#","event":{"request_id":"#)
        .str(request_id)
        .raw(r#","client":{"bot_id":"#)
        .str(bot_id)
        .raw(r#","channel_id":"#)
        .str(channel_id)
        .raw(r#","user_id":"#)
        .str(&req.user_id)
        .raw(r#"},"metadata":"#);
    metadata.write(&mut out);
    out.raw(r#","payload":"#);
    payload.write(&mut out);
    out.raw("}}");
    out.finish()
}

/// Parses the engine's answer, turning its error answers into 502s (`keep_raw` as for
/// [`csml::parse_answer`]). The engine's error text (a 400's `text/plain`) is never passed on: the
/// message names the status, the text is the error's detail, for the debug log.
pub fn parse_answer(
    status: u16,
    body: &[u8],
    keep_raw: bool,
) -> Result<ChatAnswer<'_>, ProxyError> {
    if (200..300).contains(&status) {
        return csml::parse_answer(body, keep_raw);
    }
    let message = if body.trim_ascii().is_empty() {
        format!("the CSML engine failed (HTTP {status}, no detail)")
    } else {
        format!("the CSML engine refused the request (HTTP {status})")
    };
    Err(ProxyError::new(502, Reason::BackendStatus, message).with_detail(excerpt(body)))
}

/// The CSML engine's `/run`, as bots speak it.
pub struct CsmlEngine;

/// A CSML engine bot's settings (`dialect = "csml-engine"`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BotConfig {
    /// The bot's id on the engine.
    bot_id: Option<String>,
    /// The channel the proxy's requests are on.
    channel_id: Option<String>,
    /// The engine's plain `X-Api-Key`, when it has one.
    api_key: Option<SecretSource>,
}

/// A configured engine bot.
struct EngineBot {
    bot_id: String,
    channel_id: String,
    api_key: Option<String>,
}

impl std::fmt::Debug for EngineBot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineBot")
            .field("bot_id", &self.bot_id)
            .field("channel_id", &self.channel_id)
            .finish_non_exhaustive()
    }
}

impl BotDialect for CsmlEngine {
    fn name(&self) -> &'static str {
        "csml-engine"
    }

    fn keys(&self) -> &'static [&'static str] {
        &["bot_id", "channel_id", "api_key"]
    }

    fn configure(&self, key: &str, table: toml::Table) -> Result<Box<dyn Bot>, ConfigError> {
        let c: BotConfig = settings(key, table)?;
        let required =
            |f: &str| ConfigError::new(format!("{key}.{f}"), "required by dialect `csml-engine`");
        let api_key = match &c.api_key {
            Some(k) => {
                let k = k.resolve(&format!("{key}.api_key"))?;
                header_safe(&format!("{key}.api_key"), &k)?;
                Some(k)
            }
            None => None,
        };
        Ok(Box::new(EngineBot {
            bot_id: c
                .bot_id
                .filter(|v| !v.is_empty())
                .ok_or_else(|| required("bot_id"))?,
            channel_id: c
                .channel_id
                .filter(|v| !v.is_empty())
                .ok_or_else(|| required("channel_id"))?,
            api_key,
        }))
    }
}

impl Bot for EngineBot {
    fn dialect(&self) -> &'static str {
        "csml-engine"
    }

    fn render_request(
        &self,
        req: &ChatRequest<'_>,
        ctx: &BotRequestContext<'_>,
    ) -> Result<Vec<u8>, ProxyError> {
        Ok(render_request(
            req,
            ctx.request_id,
            &self.bot_id,
            &self.channel_id,
        ))
    }

    fn sign(&self, _out: &Outgoing<'_>, add: &mut dyn FnMut(&'static str, &str)) {
        if let Some(k) = &self.api_key {
            add("x-api-key", k);
        }
    }

    fn parse_answer<'b>(
        &self,
        status: u16,
        body: &'b [u8],
        keep_raw: bool,
    ) -> Result<ChatAnswer<'b>, ProxyError> {
        parse_answer(status, body, keep_raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn renders_the_samples_run_request() {
        // The engine sample's event, re-rendered from its canonical form, is the same JSON.
        let sample: Value = serde_json::from_str(include_str!(
            "../../../tests/fixtures/csml-engine/run-request-hello.json"
        ))
        .unwrap();
        let event = sample["event"].to_string();
        let req = csml::parse_request(event.as_bytes()).unwrap();
        let ours: Value =
            serde_json::from_slice(&render_request(&req, "req-1", "hello-bot", "test-channel"))
                .unwrap();
        assert_eq!(ours["bot_id"], "hello-bot");
        assert_eq!(ours["event"], sample["event"]);
    }

    #[test]
    fn engine_errors_become_502s_naming_the_status_not_the_text() {
        let e = parse_answer(400, b"missing field `SECRET`", true).unwrap_err();
        assert_eq!(
            (e.status, e.reason, &*e.message),
            (
                502,
                Reason::BackendStatus,
                "the CSML engine refused the request (HTTP 400)"
            )
        );
        assert_eq!(e.detail.as_deref(), Some("missing field `SECRET`"));
        let e = parse_answer(500, b"", true).unwrap_err();
        assert!(e.message.contains("HTTP 500, no detail"));
        let a = parse_answer(
            200,
            include_bytes!("../../../tests/fixtures/csml-engine/run-response-after-button.json"),
            false,
        )
        .unwrap();
        assert_eq!(
            a.replies,
            vec![crate::model::Reply::Text(
                "Nice to meet you, BOB_PAYLOAD!".into()
            )]
        );
        assert_eq!(a.conversation_end, Some(true));
    }
}
