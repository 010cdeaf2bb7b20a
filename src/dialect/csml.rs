//! CSML's Chat API dialect: the request body a CSML bot expects and the answer it sends back.
//!
//! Request: `{"client":{"user_id"},"metadata":{…},"request_id","payload":{"content_type","content"}}`.
//! Answer: `{"request_id", "messages":[{"payload":{"content_type","content"}}], "client", …}`. Message
//! payloads become canonical [`Reply`]s; `typing` and `wait` are presentation hints and are dropped,
//! `object` and `payload` messages have no client rendering and are counted as dropped, and an `error`
//! message (the engine's way of reporting a bot error with HTTP 200) fails the answer.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::dialect::haptik::is_http_url;
use crate::error::{json_error, ProxyError, Reason};
use crate::model::{Button, ChatAnswer, ChatRequest, Content, MediaKind, Reply};

#[derive(Serialize)]
struct RequestWire<'a> {
    client: ClientWire<'a>,
    metadata: MetadataOut<'a>,
    request_id: &'a str,
    payload: PayloadOut<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum MetadataOut<'a> {
    /// The caller's own metadata, passed through untouched.
    Raw(&'a RawValue),
    /// Made by the proxy: the Haptik business id, when there is one.
    Made(MetadataWire),
}

#[derive(Serialize)]
struct ClientWire<'a> {
    user_id: &'a str,
}

#[derive(Serialize)]
struct MetadataWire {
    #[serde(skip_serializing_if = "Option::is_none")]
    business_id: Option<i64>,
}

#[derive(Serialize)]
struct PayloadOut<'a> {
    content_type: &'static str,
    content: ContentOut<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ContentOut<'a> {
    Text {
        text: &'a str,
    },
    Url {
        url: &'a str,
    },
    Payload {
        payload: &'a str,
    },
    FlowTrigger {
        flow_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        close_flows: Option<bool>,
    },
}

/// Renders the canonical request as a CSML Chat API request body.
///
/// `metadata` carries the Haptik `business_id` when the request had one.
pub fn render_request(req: &ChatRequest<'_>, request_id: &str) -> Vec<u8> {
    let (content_type, content) = match &req.content {
        Content::Text(t) => ("text", ContentOut::Text { text: t }),
        Content::Media { kind, url } => (kind.as_str(), ContentOut::Url { url }),
        Content::Url(url) => ("url", ContentOut::Url { url }),
        Content::Payload(p) => ("payload", ContentOut::Payload { payload: p }),
        Content::FlowTrigger {
            flow_id,
            close_flows,
        } => (
            "flow_trigger",
            ContentOut::FlowTrigger {
                flow_id,
                close_flows: *close_flows,
            },
        ),
    };
    let wire = RequestWire {
        client: ClientWire {
            user_id: &req.user_id,
        },
        metadata: match req.metadata {
            Some(raw) => MetadataOut::Raw(raw),
            None => MetadataOut::Made(MetadataWire {
                business_id: req.business_id,
            }),
        },
        request_id,
        payload: PayloadOut {
            content_type,
            content,
        },
    };
    serde_json::to_vec(&wire).expect("csml request serializes")
}

#[derive(Deserialize)]
struct RequestIn<'a> {
    #[serde(borrow)]
    client: ClientIn<'a>,
    #[serde(borrow, default)]
    metadata: Option<&'a RawValue>,
    #[serde(borrow, default)]
    request_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    payload: PayloadIn<'a>,
}

#[derive(Deserialize)]
struct ClientIn<'a> {
    #[serde(borrow)]
    user_id: Cow<'a, str>,
}

#[derive(Deserialize)]
struct PayloadTextIn<'a> {
    #[serde(borrow)]
    payload: Cow<'a, str>,
}

#[derive(Deserialize)]
struct FlowTriggerIn<'a> {
    #[serde(borrow)]
    flow_id: Cow<'a, str>,
    #[serde(default)]
    close_flows: Option<bool>,
}

fn request_content<'a, T: Deserialize<'a>>(raw: &'a RawValue, kind: &str) -> Result<T, ProxyError> {
    serde_json::from_str(raw.get()).map_err(|e| {
        ProxyError::bad_request(format!(
            "invalid field `payload.content` for content_type `{kind}`: {e}"
        ))
    })
}

/// Parses a CSML Chat API request body into the canonical request.
///
/// 400s name the field: malformed JSON, missing `client.user_id`, `payload.content_type` or
/// `payload.content`, an unknown content type, content that does not fit its type, a media or url
/// message without an http(s) `url`, a `metadata` that is not an object.
pub fn parse_request(body: &[u8]) -> Result<ChatRequest<'_>, ProxyError> {
    let wire: RequestIn<'_> =
        serde_json::from_slice(body).map_err(|_| json_error::<RequestIn<'_>>(body))?;
    if wire.client.user_id.is_empty() {
        return Err(ProxyError::bad_request(
            "invalid field `client.user_id`: must not be empty",
        ));
    }
    if let Some(m) = wire.metadata {
        if !m.get().starts_with('{') {
            return Err(ProxyError::bad_request(
                "invalid field `metadata`: must be an object",
            ));
        }
    }
    let raw = wire.payload.content;
    let kind = &*wire.payload.content_type;
    let url_of = |raw| -> Result<Cow<'_, str>, ProxyError> {
        let u: UrlIn<'_> = request_content(raw, kind)?;
        if !is_http_url(&u.url) {
            return Err(ProxyError::bad_request(format!(
                "invalid field `payload.content.url`: not an http(s) URL for content_type `{kind}`"
            )));
        }
        Ok(u.url)
    };
    let content = match kind {
        "text" => {
            let t: TextIn<'_> = request_content(raw, kind)?;
            if t.text.is_empty() {
                return Err(ProxyError::bad_request(
                    "invalid field `payload.content.text`: must not be empty",
                ));
            }
            Content::Text(t.text)
        }
        "image" | "video" | "audio" | "file" => Content::Media {
            kind: match kind {
                "image" => MediaKind::Image,
                "video" => MediaKind::Video,
                "audio" => MediaKind::Audio,
                _ => MediaKind::File,
            },
            url: url_of(raw)?,
        },
        "url" => Content::Url(url_of(raw)?),
        "payload" => Content::Payload(request_content::<PayloadTextIn<'_>>(raw, kind)?.payload),
        "flow_trigger" => {
            let f: FlowTriggerIn<'_> = request_content(raw, kind)?;
            Content::FlowTrigger {
                flow_id: f.flow_id,
                close_flows: f.close_flows,
            }
        }
        other => {
            return Err(ProxyError::bad_request(format!(
                "invalid field `payload.content_type`: `{other}` is not one of text, image, video, audio, file, url, payload, flow_trigger"
            )))
        }
    };
    Ok(ChatRequest {
        user_id: wire.client.user_id,
        content,
        business_id: None,
        message_type: 0,
        request_id: wire.request_id,
        metadata: wire.metadata,
    })
}

#[derive(Deserialize)]
struct AnswerWire<'a> {
    #[serde(borrow)]
    messages: Vec<MessageWire<'a>>,
}

#[derive(Deserialize)]
struct MessageWire<'a> {
    #[serde(borrow)]
    payload: PayloadIn<'a>,
}

#[derive(Deserialize)]
struct PayloadIn<'a> {
    #[serde(borrow)]
    content_type: Cow<'a, str>,
    #[serde(borrow)]
    content: &'a RawValue,
}

#[derive(Deserialize)]
struct TextIn<'a> {
    #[serde(borrow)]
    text: Cow<'a, str>,
}

#[derive(Deserialize)]
struct UrlIn<'a> {
    #[serde(borrow)]
    url: Cow<'a, str>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    title: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ButtonIn<'a> {
    #[serde(borrow)]
    title: Cow<'a, str>,
    #[serde(borrow, default)]
    payload: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct WrappedButtonIn<'a> {
    #[serde(borrow)]
    content: ButtonIn<'a>,
}

#[derive(Deserialize)]
struct QuestionIn<'a> {
    #[serde(borrow)]
    title: Cow<'a, str>,
    #[serde(borrow, default)]
    buttons: Vec<WrappedButtonIn<'a>>,
}

#[derive(Deserialize)]
struct ErrorIn<'a> {
    #[serde(borrow)]
    error: Cow<'a, str>,
}

fn content<'a, T: Deserialize<'a>>(
    raw: &'a RawValue,
    index: usize,
    kind: &str,
) -> Result<T, ProxyError> {
    serde_json::from_str(raw.get()).map_err(|e| {
        ProxyError::bad_answer(format!(
            "backend answer: messages[{index}] ({kind}) has invalid content: {e}"
        ))
    })
}

impl<'a> From<ButtonIn<'a>> for Button<'a> {
    fn from(b: ButtonIn<'a>) -> Self {
        Button {
            title: b.title,
            payload: b.payload,
        }
    }
}

/// Parses a CSML Chat API answer body (2xx) into the canonical answer.
///
/// A body that is not a CSML answer, or a message whose content does not fit its `content_type`, is a
/// 502 (`backend_bad_answer`); an `error` message is a 502 (`bot_error`) carrying the bot's message.
pub fn parse_answer(body: &[u8]) -> Result<ChatAnswer<'_>, ProxyError> {
    let wire: AnswerWire<'_> = serde_json::from_slice(body)
        .map_err(|e| ProxyError::bad_answer(format!("backend answer is not a CSML answer: {e}")))?;
    let mut answer = ChatAnswer {
        replies: Vec::with_capacity(wire.messages.len()),
        dropped: 0,
    };
    for (i, m) in wire.messages.into_iter().enumerate() {
        let raw = m.payload.content;
        let kind = &*m.payload.content_type;
        let reply = match kind {
            "text" => Reply::Text(content::<TextIn<'_>>(raw, i, kind)?.text),
            "question" => {
                let q: QuestionIn<'_> = content(raw, i, kind)?;
                Reply::Question {
                    title: q.title,
                    buttons: q.buttons.into_iter().map(|b| b.content.into()).collect(),
                }
            }
            "button" => Reply::Button(content::<ButtonIn<'_>>(raw, i, kind)?.into()),
            "url" => {
                let u: UrlIn<'_> = content(raw, i, kind)?;
                Reply::Url {
                    url: u.url,
                    text: u.text,
                    title: u.title,
                }
            }
            "image" | "video" | "audio" | "file" => {
                let media_kind = match kind {
                    "image" => MediaKind::Image,
                    "video" => MediaKind::Video,
                    "audio" => MediaKind::Audio,
                    _ => MediaKind::File,
                };
                Reply::Media {
                    kind: media_kind,
                    url: content::<UrlIn<'_>>(raw, i, kind)?.url,
                }
            }
            "typing" | "wait" => continue,
            "error" => {
                let e: ErrorIn<'_> = content(raw, i, kind)?;
                return Err(ProxyError::new(
                    502,
                    Reason::BotError,
                    format!("the bot reported an error: {}", e.error),
                ));
            }
            _ => {
                answer.dropped += 1;
                continue;
            }
        };
        answer.replies.push(reply);
    }
    Ok(answer)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrorOut<'a> {
    status_code: u16,
    error: &'a str,
    message: &'a str,
}

/// Renders an error in the shape CSML's HTTP servers use:
/// `{"statusCode": 401, "error": "Unauthorized", "message": "…"}`.
pub fn render_error(err: &ProxyError) -> Vec<u8> {
    let phrase = http::StatusCode::from_u16(err.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    serde_json::to_vec(&ErrorOut {
        status_code: err.status,
        error: phrase,
        message: &err.message,
    })
    .expect("csml error serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const SEED_REQUEST: &str = include_str!("../../tests/fixtures/csml/seed-request.json");
    const SEED_RESPONSE: &str = include_str!("../../tests/fixtures/csml/seed-response.json");
    const SEED_FLOW: &str =
        include_str!("../../tests/fixtures/csml/seed-flow-trigger-request.json");
    const ENGINE_HELLO: &str =
        include_str!("../../tests/fixtures/csml-engine/run-response-hello.json");
    const ENGINE_MEDIA: &str =
        include_str!("../../tests/fixtures/csml-engine/run-response-media.json");

    #[test]
    fn renders_the_seed_request_shape() {
        let req = ChatRequest {
            user_id: "some-user-id".into(),
            content: Content::Text("Hello".into()),
            business_id: None,
            message_type: 0,
            request_id: None,
            metadata: None,
        };
        let ours: Value = serde_json::from_slice(&render_request(&req, "random-id")).unwrap();
        let mut seed: Value = serde_json::from_str(SEED_REQUEST).unwrap();
        // The seed's metadata is the client's own; without a business id ours is empty.
        seed["metadata"] = json!({});
        assert_eq!(ours, seed);
    }

    #[test]
    fn seed_requests_round_trip() {
        for text in [SEED_REQUEST, SEED_FLOW] {
            let req = parse_request(text.as_bytes()).unwrap();
            assert_eq!(req.request_id.as_deref(), Some("random-id"));
            let ours: Value = serde_json::from_slice(&render_request(&req, "random-id")).unwrap();
            let seed: Value = serde_json::from_str(text).unwrap();
            assert_eq!(ours, seed);
        }
    }

    #[test]
    fn request_errors_name_the_field() {
        let cases: [(&[u8], &str); 6] = [
            (br#"{"payload":{"content_type":"text","content":{"text":"x"}}}"#, "`client`"),
            (br#"{"client":{"user_id":"u"}}"#, "`payload`"),
            (br#"{"client":{"user_id":"u"},"payload":{"content_type":"nope","content":{}}}"#, "`payload.content_type`"),
            (br#"{"client":{"user_id":"u"},"payload":{"content_type":"text","content":{}}}"#, "`payload.content`"),
            (br#"{"client":{"user_id":"u"},"payload":{"content_type":"image","content":{"url":"x"}}}"#, "`payload.content.url`"),
            (br#"{"client":{"user_id":"u"},"metadata":[],"payload":{"content_type":"text","content":{"text":"x"}}}"#, "`metadata`"),
        ];
        for (body, needle) in cases {
            let err = parse_request(body).unwrap_err();
            assert_eq!(err.status, 400);
            assert!(err.message.contains(needle), "{needle} -> {}", err.message);
        }
    }

    #[test]
    fn renders_business_id_and_media() {
        let req = ChatRequest {
            user_id: "u".into(),
            content: Content::Media {
                kind: MediaKind::Image,
                url: "https://x.test/i.png".into(),
            },
            business_id: Some(343),
            message_type: 1,
            request_id: None,
            metadata: None,
        };
        let ours: Value = serde_json::from_slice(&render_request(&req, "r")).unwrap();
        assert_eq!(
            ours,
            json!({"client":{"user_id":"u"},"metadata":{"business_id":343},"request_id":"r",
                   "payload":{"content_type":"image","content":{"url":"https://x.test/i.png"}}})
        );
    }

    #[test]
    fn parses_the_seed_answer() {
        let a = parse_answer(SEED_RESPONSE.as_bytes()).unwrap();
        assert_eq!(a.replies, vec![Reply::Text("Some message".into())]);
    }

    #[test]
    fn parses_the_engines_question() {
        let a = parse_answer(ENGINE_HELLO.as_bytes()).unwrap();
        assert_eq!(a.replies.len(), 2);
        assert_eq!(a.replies[0], Reply::Text("Hello there!".into()));
        let Reply::Question { title, buttons } = &a.replies[1] else {
            panic!("not a question: {:?}", a.replies[1]);
        };
        assert_eq!(title, "What is your name?");
        assert_eq!(buttons[0].title, "Alice");
        assert_eq!(buttons[0].payload.as_deref(), Some("Alice"));
        assert_eq!(buttons[1].title, "Bob");
        assert_eq!(buttons[1].payload.as_deref(), Some("BOB_PAYLOAD"));
    }

    #[test]
    fn parses_the_engines_media_and_drops_hints() {
        let a = parse_answer(ENGINE_MEDIA.as_bytes()).unwrap();
        let kinds: Vec<String> = a
            .replies
            .iter()
            .map(|r| match r {
                Reply::Text(_) => "text".to_string(),
                Reply::Media { kind, .. } => kind.as_str().to_string(),
                Reply::Url { .. } => "url".into(),
                Reply::Button(_) => "button".into(),
                Reply::Question { .. } => "question".into(),
            })
            .collect();
        // typing and wait dropped silently; the custom object counted as dropped.
        assert_eq!(
            kinds,
            ["image", "url", "video", "audio", "file", "button", "text"]
        );
        assert_eq!(a.dropped, 1);
        assert_eq!(
            a.replies[1],
            Reply::Url {
                url: "https://example.com".into(),
                text: Some("Example".into()),
                title: Some("Example title".into())
            }
        );
    }

    #[test]
    fn rejects_what_is_not_an_answer() {
        for body in [
            &b"<html>"[..],
            b"{}",
            br#"{"messages":{}}"#,
            br#"{"messages":[{"payload":{"content_type":"text"}}]}"#,
        ] {
            let err = parse_answer(body).unwrap_err();
            assert_eq!(
                (err.status, err.reason),
                (502, Reason::BackendBadAnswer),
                "{err}"
            );
        }
        let err = parse_answer(
            br#"{"messages":[{"payload":{"content_type":"text","content":{"txt":"x"}}}]}"#,
        )
        .unwrap_err();
        assert!(
            err.message.contains("messages[0] (text)"),
            "{}",
            err.message
        );
    }

    #[test]
    fn bot_errors_fail_the_answer() {
        let err = parse_answer(
            br#"{"messages":[{"payload":{"content_type":"error","content":{"error":"boom"}}}]}"#,
        )
        .unwrap_err();
        assert_eq!((err.status, err.reason), (502, Reason::BotError));
        assert!(err.message.contains("boom"));
    }
}
