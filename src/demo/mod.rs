//! The built-in demo bots, so the default `proxy.toml` works out of the box: one listener that
//! speaks all four backend dialects.
//!
//! - `POST /api/chat`: a CSML Chat API bot. It checks `x-api-key: KEY|TS` + `x-api-signature` exactly
//!   as a CSML server would, so the proxy's re-signing is exercised on every demo request.
//! - `POST /haptik/webhook`: a Haptik webhook bot (checks `Authorization: Bearer` + `client-id`) that
//!   answers in Haptik's current HSL shape.
//! - `POST /run`: a CSML engine bot (checks a plain `X-Api-Key`).
//! - `POST /webhooks/rest/webhook`: a Rasa REST channel bot. Rasa's REST channel has no auth of its
//!   own, so it checks nothing (a `?token=` query, as Rasa's HTTP API takes, is accepted and ignored).
//!
//! - `POST /bots/{botId}/botAliases/{aliasId}/botLocales/{localeId}/sessions/{sessionId}/text`: an
//!   Amazon Lex V2 bot (`RecognizeText`). It checks the AWS Signature V4 of the demo's `api_key` (as
//!   the access key id) and `api_secret`, so the proxy's signing is exercised on every request.
//!
//! - `POST /token` and `POST /v3/projects/…/sessions/{session}:detectIntent`: a Google Dialogflow CX
//!   agent and its OAuth2 token endpoint, when `[demo] dialogflow_service_account` names a key file.
//!   `/token` checks the JWT-bearer grant's RS256 signature against that account's key and mints
//!   an access token (an HMAC of its expiry under the demo secret, valid one hour); the agent
//!   answers only requests that carry one.
//!
//! Each answers with three messages: a text, a question with two buttons, and an echo of what the
//! user sent, rendered by the same dialect code the proxy uses. Their `[demo]` keys are read by
//! [`config`].

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

pub mod config;

use async_trait::async_trait;
use pingora::protocols::http::ServerSession;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::auth::{AuthReason, Denied, RequestVerifier};
use crate::auth::{IdTokenClient, IdTokenClients};
use crate::dialect::{
    csml, dialogflow, haptik, lex, rasa, AnswerContext, AnswerShape, CallerDialect, FixedIds,
};
use crate::error::{ProxyError, Reason};
use crate::httpio::{self, Answer, Handler};
use crate::model::{Button, ChatAnswer, ChatRequest, Content, Reply};
use crate::signing::HmacKey;
use botbridge_core::jwt;
use botbridge_core::request::WholeRequest;

/// How far a signature's timestamp may be from the demo bot's clock.
pub const TOLERANCE_SECS: u64 = 300;

/// The demo bots.
pub struct DemoBot {
    key: HmacKey,
    /// The demo Dialogflow agent's service account (email, public key), if configured.
    dialogflow: Option<(String, jwt::PublicKey)>,
    /// The Lex bot's secret for the key's id (the CSML secret: one demo key for every bot).
    lex_secret: String,
    haptik: IdTokenClients,
}

impl DemoBot {
    /// The demo bots of a validated `[demo]` table.
    pub fn from_config(d: &config::DemoConfig) -> Self {
        Self::with_dialogflow(
            d.key.clone(),
            &d.secret,
            d.haptik.clone(),
            d.dialogflow.clone(),
        )
    }

    /// Demo bots accepting CSML requests signed with `key` (and engine requests with its plain key),
    /// and Haptik requests from `haptik` (client id, client), when given.
    pub fn new(key: HmacKey, lex_secret: &str, haptik: Option<(String, IdTokenClient)>) -> Self {
        Self::with_dialogflow(key, lex_secret, haptik, None)
    }

    /// As [`DemoBot::new`], with the demo Dialogflow agent of this service account.
    pub fn with_dialogflow(
        key: HmacKey,
        lex_secret: &str,
        haptik: Option<(String, IdTokenClient)>,
        dialogflow: Option<(String, jwt::PublicKey)>,
    ) -> Self {
        let mut clients = IdTokenClients::new();
        if let Some((id, client)) = haptik {
            clients.insert(id, client);
        }
        DemoBot {
            key,
            dialogflow,
            lex_secret: lex_secret.to_owned(),
            haptik: clients,
        }
    }
}

/// What the demo bots say: a greeting, a question with two buttons, an echo.
pub fn replies(req: &ChatRequest<'_>) -> Vec<Reply<'static>> {
    let echo = match &req.content {
        Content::Text(t) => format!("You said: {t}"),
        Content::Payload(p) => format!("You clicked: {p}"),
        Content::Media { kind, url } => format!("You sent a {}: {url}", kind.as_str()),
        Content::Url(u) => format!("You shared a link: {u}"),
        Content::FlowTrigger { flow_id, .. } => format!("You asked for the flow {flow_id}"),
    };
    let button = |title: &'static str, payload: &'static str| Button {
        title: Cow::Borrowed(title),
        payload: Some(Cow::Borrowed(payload)),
    };
    vec![
        Reply::Text(Cow::Borrowed("Hello from the botbridge demo bot!")),
        Reply::Question {
            title: Cow::Borrowed("Did that reach you?"),
            buttons: vec![button("Yes", "YES"), button("No", "NO")],
        },
        Reply::Text(Cow::Owned(echo)),
    ]
}

/// The CSML answer body the demo bot gives to `req`.
pub fn csml_answer(req: &ChatRequest<'_>, request_id: &str, received: SystemTime) -> Vec<u8> {
    let answer = ChatAnswer {
        replies: replies(req),
        bot_id: Some(Cow::Borrowed("demo-bot")),
        channel_id: Some(Cow::Borrowed("demo-channel")),
        ..ChatAnswer::default()
    };
    let interaction = uuid::Uuid::new_v4().to_string();
    let ids = FixedIds(message_id(received), &interaction);
    csml::render_answer(
        req,
        &answer,
        &demo_context(request_id, &ids, received, AnswerShape::Legacy),
    )
}

/// The answer context of the demo bots.
fn demo_context<'a>(
    request_id: &'a str,
    ids: &'a FixedIds<'a>,
    received: SystemTime,
    shape: AnswerShape,
) -> AnswerContext<'a> {
    AnswerContext {
        ids,
        received,
        request_id,
        business_name: "demo",
        bot_name: "demo-bot",
        route_name: "demo-channel",
        business_id: None,
        shape,
    }
}

/// The demo bots' message ids: the time of the request in microseconds.
fn message_id(received: SystemTime) -> u64 {
    received
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
}

fn csml_error(err: ProxyError) -> Answer {
    Answer::json(err.status, csml::render_error(&err))
}

#[derive(Deserialize)]
struct RunIn<'a> {
    #[serde(borrow)]
    event: &'a RawValue,
}

impl DemoBot {
    fn chat_api(&self, key: &[u8], sig: Option<&[u8]>, body: &[u8], now: SystemTime) -> Answer {
        let unix = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if let Err(why) = self.key.verify(key, sig, unix, TOLERANCE_SECS) {
            return csml_error(ProxyError::unauthorized(format!(
                "invalid API key or signature ({why:?})"
            )));
        }
        match csml::parse_request(body) {
            Ok(chat) => {
                let rid = chat
                    .request_id
                    .as_deref()
                    .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
                Answer::json(200, csml_answer(&chat, &rid, now))
            }
            Err(e) => csml_error(e),
        }
    }

    /// The Lex V2 bot: the signature of the demo's key over the whole request, then the answer.
    fn lex(&self, head: &pingora::http::RequestHeader, body: &[u8], now: SystemTime) -> Answer {
        let whole = WholeRequest {
            head: &crate::service::Head(head),
            body,
        };
        let unix = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let known = lex::LexCaller::key_id(&whole) == Some(self.key.key());
        let checked = match known {
            true => lex::LexCaller::new(&*self.lex_secret).verify(&whole, unix),
            false => Err(Denied::new(AuthReason::Invalid, "unknown access key id")),
        };
        let lex_error = |e: ProxyError| {
            let mut a = Answer::json(lex::Lex.error_status(&e), lex::render_error(&e));
            lex::Lex.error_headers(&e, &mut |n, v| a.headers.push((n, v.to_owned())));
            a.headers.extend(e.headers);
            a
        };
        if let Err(d) = checked {
            return lex_error(d.error);
        }
        match lex::parse_request(head.uri.path(), body) {
            Ok(req) => {
                let answer = ChatAnswer {
                    replies: replies(&req),
                    ..ChatAnswer::default()
                };
                Answer::json(200, lex::render_answer(&req, &answer))
            }
            Err(e) => lex_error(e),
        }
    }

    /// An access token for `exp`: `demo.<exp>.<hex HMAC-SHA256(secret, "dialogflow|<exp>")>`.
    fn access_token(&self, exp: u64) -> String {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(self.lex_secret.as_bytes())
            .expect("HMAC takes any key");
        mac.update(format!("dialogflow|{exp}").as_bytes());
        format!("demo.{exp}.{}", hex::encode(mac.finalize().into_bytes()))
    }

    /// The token endpoint: a JWT-bearer grant signed by the demo service account, for one hour.
    fn mint(&self, body: &[u8], now: SystemTime) -> Answer {
        let oauth_error = |status: u16, e: &str| {
            Answer::json(
                status,
                serde_json::to_vec(&serde_json::json!({"error": e})).unwrap(),
            )
        };
        let Some((email, key)) = &self.dialogflow else {
            return oauth_error(404, "not_found");
        };
        let form = String::from_utf8_lossy(body);
        let field = |name: &str| form.split('&').find_map(|kv| kv.strip_prefix(name));
        if field("grant_type=") != Some("urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer") {
            return oauth_error(400, "unsupported_grant_type");
        }
        let unix = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let claims = match field("assertion=").map(|a| jwt::verify(a, key)) {
            Some(Ok(c)) => c,
            _ => return oauth_error(400, "invalid_grant"),
        };
        let current = jwt::seconds(&claims, "exp").is_some_and(|e| e.saturating_add(60) >= unix);
        if claims.get("iss").and_then(|v| v.as_str()) != Some(email) || !current {
            return oauth_error(400, "invalid_grant");
        }
        let token = self.access_token(unix + 3600);
        let answer =
            serde_json::json!({"access_token": token, "expires_in": 3600, "token_type": "Bearer"});
        Answer::json(200, serde_json::to_vec(&answer).unwrap())
    }

    /// The Dialogflow CX agent: a current token minted at `/token`, then the answer.
    fn dialogflow(&self, auth: Option<&[u8]>, path: &str, body: &[u8], now: SystemTime) -> Answer {
        let error = |e: ProxyError| Answer::json(e.status, dialogflow::render_error(&e));
        let unix = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let token = auth
            .and_then(|a| std::str::from_utf8(a).ok())
            .and_then(|a| a.strip_prefix("Bearer "))
            .unwrap_or_default();
        let exp = (token.split('.').nth(1)).and_then(|e| e.parse::<u64>().ok());
        let valid = exp.is_some_and(|e| {
            e >= unix
                && bool::from(subtle::ConstantTimeEq::ct_eq(
                    token.as_bytes(),
                    self.access_token(e).as_bytes(),
                ))
        });
        if self.dialogflow.is_none() || !valid {
            return error(ProxyError::unauthorized(
                "Request had invalid authentication credentials",
            ));
        }
        match dialogflow::parse_request(path, body) {
            Ok(req) => {
                let answer = ChatAnswer {
                    replies: replies(&req),
                    ..ChatAnswer::default()
                };
                Answer::json(
                    200,
                    dialogflow::render_answer(&req, &answer, "demo-response"),
                )
            }
            Err(e) => error(e),
        }
    }

    fn engine(&self, key: &[u8], body: &[u8], now: SystemTime) -> Answer {
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            key,
            self.key.key().as_bytes(),
        )) {
            return Answer::text(401, "invalid X-Api-Key");
        }
        // The engine answers bad requests with 400 text/plain, like csml_server.
        let Ok(run) = serde_json::from_slice::<RunIn<'_>>(body) else {
            return Answer::text(400, "invalid body: expected {\"bot_id\", \"event\"}");
        };
        match csml::parse_request(run.event.get().as_bytes()) {
            Ok(chat) => {
                let rid = chat.request_id.as_deref().unwrap_or("").to_owned();
                Answer::json(200, csml_answer(&chat, &rid, now))
            }
            Err(e) => Answer::text(400, e.message.into_owned()),
        }
    }

    fn haptik<'h>(
        &self,
        header: impl Fn(&str) -> Option<&'h [u8]>,
        body: &[u8],
        now: SystemTime,
    ) -> Answer {
        let herr = |e: ProxyError| Answer::json(e.status, haptik::render_error(&e));
        if let Err(e) = haptik::presented(header).and_then(|p| self.haptik.check(&p)) {
            return herr(e.into());
        }
        match haptik::parse_request(body) {
            Ok(req) => {
                let answer = ChatAnswer {
                    replies: replies(&req),
                    bot_id: Some(Cow::Borrowed("demo-haptik-bot")),
                    ..ChatAnswer::default()
                };
                let ids = FixedIds(message_id(now), "");
                let ctx = demo_context("", &ids, now, AnswerShape::Hsl);
                Answer::json(200, haptik::render_answer(&req, &answer, &ctx))
            }
            Err(e) => herr(e),
        }
    }
}

/// The Rasa REST answer the demo bot gives to a Rasa request body (an error in Rasa's shape when
/// the body is not one), with its status.
pub fn rasa_answer(body: &[u8]) -> (u16, Vec<u8>) {
    match rasa::parse_request(body) {
        Ok(req) => {
            let answer = ChatAnswer {
                replies: replies(&req),
                ..ChatAnswer::default()
            };
            (200, rasa::render_answer(&req, &answer))
        }
        Err(e) => (e.status, rasa::render_error(&e)),
    }
}

#[async_trait]
impl Handler for DemoBot {
    async fn handle(&self, session: &mut ServerSession) -> Answer {
        let body = match httpio::read_body(session, 64 * 1024).await {
            Ok(b) => b,
            Err(_) => {
                let mut a = csml_error(ProxyError::bad_request("unreadable or oversized body"));
                a.keepalive = false;
                return a;
            }
        };
        let req = session.req_header();
        let header = |n: &str| req.headers.get(n).map(|v| v.as_bytes());
        let now = SystemTime::now();
        if req.method != http::Method::POST {
            return csml_error(ProxyError::new(405, Reason::MethodNotAllowed, "only POST"));
        }
        match req.uri.path() {
            "/api/chat" => self.chat_api(
                header("x-api-key").unwrap_or_default(),
                header("x-api-signature"),
                &body,
                now,
            ),
            "/run" => self.engine(header("x-api-key").unwrap_or_default(), &body, now),
            "/haptik/webhook" => self.haptik(header, &body, now),
            "/webhooks/rest/webhook" => {
                let (status, body) = rasa_answer(&body);
                Answer::json(status, body)
            }
            p if p.starts_with("/bots/") => self.lex(req, &body, now),
            "/token" => self.mint(&body, now),
            p if p.starts_with("/v3/projects/") => {
                self.dialogflow(header("authorization"), p, &body, now)
            }
            _ => csml_error(ProxyError::new(404, Reason::NotFound, "not found")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_answer_is_a_csml_answer_with_an_echo() {
        let req = csml::parse_request(
            br#"{"client":{"user_id":"u"},"metadata":{},"payload":{"content_type":"text","content":{"text":"ping"}}}"#,
        )
        .unwrap();
        let body = csml_answer(&req, "r-1", UNIX_EPOCH);
        let parsed = csml::parse_answer(&body, false).unwrap();
        assert_eq!(parsed.replies.len(), 3);
        assert_eq!(parsed.replies[2], Reply::Text("You said: ping".into()));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["request_id"], "r-1");
        assert_eq!(v["client"]["user_id"], "u");
        assert_eq!(v["client"]["bot_id"], "demo-bot");
        assert_eq!(v["received_at"], "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn the_rasa_demo_answers_in_rasas_shape() {
        let (status, body) = rasa_answer(br#"{"sender":"u","message":"/affirm"}"#);
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!([
                {"recipient_id":"u","text":"Hello from the botbridge demo bot!"},
                {"recipient_id":"u","text":"Did that reach you?","buttons":[
                    {"title":"Yes","payload":"YES"},{"title":"No","payload":"NO"}]},
                {"recipient_id":"u","text":"You clicked: /affirm"},
            ])
        );
        let parsed = rasa::parse_answer(status, &body).unwrap();
        assert_eq!(parsed.replies.len(), 3);
        let (status, body) = rasa_answer(br#"{"sender":"u"}"#);
        assert_eq!(status, 400);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["status"], "failure");
        assert_eq!(v["code"], 400);
    }
}
