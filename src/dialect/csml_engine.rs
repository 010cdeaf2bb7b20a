//! The open-source CSML engine's `POST /run` dialect (`csml_server`), for self-hosted CSML bots.
//!
//! Request: `{"bot_id", "event": {"request_id", "client": {"bot_id","channel_id","user_id"},
//! "metadata", "payload"}}` with `bot_id` and `channel_id` from configuration; auth, when the engine
//! has it, is a plain `X-Api-Key`. Answer: the Chat API's message envelope (parsed by `csml`). The
//! engine's own failures, a 400 `text/plain` for a bad request and an empty 500 for an unknown bot or
//! content type, become 502s; a bot `error` message fails the answer like on the Chat API.

use serde::Serialize;

use crate::dialect::csml::{self, MetadataOut, PayloadOut};
use crate::error::{ProxyError, Reason};
use crate::model::{ChatAnswer, ChatRequest};

#[derive(Serialize)]
struct RunOut<'a> {
    bot_id: &'a str,
    event: EventOut<'a>,
}

#[derive(Serialize)]
struct EventOut<'a> {
    request_id: &'a str,
    client: ClientOut<'a>,
    metadata: MetadataOut<'a>,
    payload: PayloadOut<'a>,
}

#[derive(Serialize)]
struct ClientOut<'a> {
    bot_id: &'a str,
    channel_id: &'a str,
    user_id: &'a str,
}

/// Renders the canonical request as an engine `/run` body for `bot_id` on `channel_id`.
pub fn render_request(
    req: &ChatRequest<'_>,
    request_id: &str,
    bot_id: &str,
    channel_id: &str,
) -> Vec<u8> {
    let (metadata, payload) = csml::request_parts(req);
    let out = RunOut {
        bot_id,
        event: EventOut {
            request_id,
            client: ClientOut {
                bot_id,
                channel_id,
                user_id: &req.user_id,
            },
            metadata,
            payload,
        },
    };
    serde_json::to_vec(&out).expect("engine request serializes")
}

/// Parses the engine's answer, turning its error answers into 502s (`keep_raw` as for
/// [`csml::parse_answer`]).
pub fn parse_answer(
    status: u16,
    body: &[u8],
    keep_raw: bool,
) -> Result<ChatAnswer<'_>, ProxyError> {
    if (200..300).contains(&status) {
        return csml::parse_answer(body, keep_raw);
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let message = if text.is_empty() {
        format!("the CSML engine failed (HTTP {status}, no detail)")
    } else {
        let cut: String = text.chars().take(200).collect();
        format!("the CSML engine refused the request (HTTP {status}): {cut}")
    };
    Err(ProxyError::new(502, Reason::BackendStatus, message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn renders_the_samples_run_request() {
        // The engine sample's event, re-rendered from its canonical form, is the same JSON.
        let sample: Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/csml-engine/run-request-hello.json"
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
    fn engine_errors_become_502s() {
        let e = parse_answer(400, b"missing field `client`", true).unwrap_err();
        assert_eq!((e.status, e.reason), (502, Reason::BackendStatus));
        assert!(e.message.contains("missing field `client`"));
        let e = parse_answer(500, b"", true).unwrap_err();
        assert!(e.message.contains("HTTP 500, no detail"));
        let a = parse_answer(
            200,
            include_bytes!("../../tests/fixtures/csml-engine/run-response-after-button.json"),
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
