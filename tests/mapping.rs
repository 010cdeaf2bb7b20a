//! Golden tests for the mapping table (docs/mapping.md): one test per row, named after it, run on the
//! pure dialect code (the end-to-end tests cover the same paths through the running proxy).

use std::time::{Duration, UNIX_EPOCH};

use botbridge::dialect::registry::{self, CSML, HAPTIK};
use botbridge::dialect::{
    csml, haptik, AnswerContext, AnswerShape, Bot, BotRequestContext, Caller, FixedIds,
    FlowTriggerPolicy,
};
use serde_json::{json, Value};

// ------------------------------------------------------------------------------------------
// Helpers: one caller request to one backend body; one backend message to one caller rendering.

fn haptik_to_csml(message_type: i64, body: &str) -> Result<Value, u16> {
    let req = json!({"user":{"auth_id":"u"},"message_body":body,"message_type":message_type,"business_id":343}).to_string();
    let parsed = haptik::parse_request(req.as_bytes()).map_err(|e| e.status)?;
    Ok(serde_json::from_slice(&csml::render_request(&parsed, "rid")).unwrap())
}

fn csml_to_haptik(
    content_type: &str,
    content: Value,
    flow: FlowTriggerPolicy,
) -> Result<Value, u16> {
    let req = json!({"client":{"user_id":"u"},"metadata":{"k":"v"},"request_id":"rid",
                     "payload":{"content_type":content_type,"content":content}})
    .to_string();
    let mut parsed = csml::parse_request(req.as_bytes()).map_err(|e| e.status)?;
    parsed.business_id = Some(77);
    let spec = bot(
        "haptik",
        r#"token = "t"
client_id = "c""#,
    );
    let ctx = BotRequestContext {
        request_id: "rid",
        business_id: parsed.business_id,
        flow_trigger: flow,
    };
    spec.render_request(&parsed, &ctx)
        .map(|b| serde_json::from_slice(&b).unwrap())
        .map_err(|e| e.status)
}

fn csml_to_csml(content_type: &str, content: Value) -> Value {
    let req = json!({"client":{"user_id":"u"},"metadata":{"k":"v"},"request_id":"rid",
                     "payload":{"content_type":content_type,"content":content}})
    .to_string();
    let parsed = csml::parse_request(req.as_bytes()).unwrap();
    let spec = bot(
        "csml",
        r#"auth = "plain"
api_key = "k""#,
    );
    let ctx = BotRequestContext {
        request_id: "other",
        business_id: None,
        flow_trigger: FlowTriggerPolicy::Reject,
    };
    serde_json::from_slice(&spec.render_request(&parsed, &ctx).unwrap()).unwrap()
}

fn ctx(shape: AnswerShape) -> AnswerContext<'static> {
    AnswerContext {
        ids: &FixedIds(100, "iid"),
        received: UNIX_EPOCH + Duration::from_secs(1),
        request_id: "rid",
        business_name: "biz",
        bot_name: "bot",
        route_name: "chan",
        business_id: None,
        shape,
    }
}

/// A bot of `dialect` configured from a settings table written as TOML.
fn bot(dialect: &str, settings: &str) -> Box<dyn Bot> {
    registry::bot_dialect(dialect)
        .unwrap()
        .configure("backends[0]", toml::from_str(settings).unwrap())
        .unwrap()
}

fn any_request(ingress: Caller) -> String {
    if ingress == HAPTIK {
        r#"{"user":{"auth_id":"u"},"message_body":"x","business_id":1}"#.into()
    } else if ingress == CSML {
        r#"{"client":{"user_id":"u"},"payload":{"content_type":"text","content":{"text":"x"}}}"#
            .into()
    } else {
        r#"{"sender":"u","message":"x"}"#.into()
    }
}

/// A CSML bot's answer with these payloads, rendered for a caller.
fn from_csml(payloads: &[Value], ingress: Caller, shape: AnswerShape) -> Result<Value, u16> {
    let messages: Vec<Value> = payloads.iter().map(|p| json!({"payload": p})).collect();
    let body = json!({"messages": messages}).to_string();
    let answer = csml::parse_answer(body.as_bytes(), ingress == CSML).map_err(|e| e.status)?;
    let req_body = any_request(ingress);
    let req = ingress.parse_request("/", req_body.as_bytes()).unwrap();
    Ok(serde_json::from_slice(&ingress.render_answer(&req, &answer, &ctx(shape))).unwrap())
}

/// A Haptik bot's current-shape answer with these HSL bodies, rendered for a caller.
fn from_hsl(bodies: &[Value], ingress: Caller, shape: AnswerShape) -> Value {
    let messages: Vec<Value> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| json!({"id": i, "body": b}))
        .collect();
    let body =
        json!({"version":"1.0","timestamp":"t","agent":{"id":1,"name":"gogo"},"message": messages})
            .to_string();
    let answer = haptik::parse_answer(200, body.as_bytes()).unwrap();
    let req_body = any_request(ingress);
    let req = ingress.parse_request("/", req_body.as_bytes()).unwrap();
    serde_json::from_slice(&ingress.render_answer(&req, &answer, &ctx(shape))).unwrap()
}

fn legacy_strings(v: &Value) -> Value {
    v[0]["bot_messages"].clone()
}

fn hsl_bodies(v: &Value) -> Vec<Value> {
    v["message"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].clone())
        .collect()
}

fn csml_payloads(v: &Value) -> Vec<Value> {
    v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["payload"].clone())
        .collect()
}

use registry::{CSML as C, HAPTIK as H};
use AnswerShape::{Hsl, Legacy};

// ------------------------------------------------------------------------------------------
// Requests: Haptik caller → CSML bot (Chat API or engine)

#[test]
fn req_haptik_text_to_csml_text() {
    let v = haptik_to_csml(0, "hello").unwrap();
    assert_eq!(
        v["payload"],
        json!({"content_type":"text","content":{"text":"hello"}})
    );
    assert_eq!(v["client"], json!({"user_id":"u"}));
    assert_eq!(v["metadata"], json!({"business_id":343}));
}

#[test]
fn req_haptik_image_to_csml_image() {
    let v = haptik_to_csml(1, "https://x.test/a.png").unwrap();
    assert_eq!(
        v["payload"],
        json!({"content_type":"image","content":{"url":"https://x.test/a.png"}})
    );
}

#[test]
fn req_haptik_document_to_csml_file() {
    let v = haptik_to_csml(52, "https://x.test/a.pdf").unwrap();
    assert_eq!(
        v["payload"],
        json!({"content_type":"file","content":{"url":"https://x.test/a.pdf"}})
    );
}

#[test]
fn req_haptik_form_note_location_refused() {
    for t in [17, 21, 26] {
        assert_eq!(haptik_to_csml(t, "x"), Err(400));
    }
}

// Requests: CSML caller → Haptik bot

#[test]
fn req_csml_text_to_haptik_type_0() {
    let v = csml_to_haptik("text", json!({"text":"hi"}), FlowTriggerPolicy::Reject).unwrap();
    assert_eq!(
        v,
        json!({"user":{"auth_id":"u"},"message_body":"hi","message_type":0,"business_id":77})
    );
}

#[test]
fn req_csml_image_to_haptik_type_1() {
    let v = csml_to_haptik(
        "image",
        json!({"url":"https://x.test/a.png"}),
        FlowTriggerPolicy::Reject,
    )
    .unwrap();
    assert_eq!(
        (v["message_body"].as_str(), v["message_type"].as_i64()),
        (Some("https://x.test/a.png"), Some(1))
    );
}

#[test]
fn req_csml_file_to_haptik_type_52() {
    let v = csml_to_haptik(
        "file",
        json!({"url":"https://x.test/a.pdf"}),
        FlowTriggerPolicy::Reject,
    )
    .unwrap();
    assert_eq!(v["message_type"], 52);
}

#[test]
fn req_csml_video_audio_url_to_haptik_text_url() {
    for kind in ["video", "audio", "url"] {
        let v = csml_to_haptik(
            kind,
            json!({"url":"https://x.test/m"}),
            FlowTriggerPolicy::Reject,
        )
        .unwrap();
        assert_eq!(
            (v["message_body"].as_str(), v["message_type"].as_i64()),
            (Some("https://x.test/m"), Some(0))
        );
    }
}

#[test]
fn req_csml_payload_to_haptik_text() {
    let v = csml_to_haptik(
        "payload",
        json!({"payload":"BOB"}),
        FlowTriggerPolicy::Reject,
    )
    .unwrap();
    assert_eq!(
        (v["message_body"].as_str(), v["message_type"].as_i64()),
        (Some("BOB"), Some(0))
    );
}

#[test]
fn req_csml_flow_trigger_to_haptik_per_route() {
    let content = json!({"flow_id":"onboarding","close_flows":true});
    assert_eq!(
        csml_to_haptik("flow_trigger", content.clone(), FlowTriggerPolicy::Reject),
        Err(422)
    );
    let v = csml_to_haptik("flow_trigger", content, FlowTriggerPolicy::Text).unwrap();
    assert_eq!(v["message_body"], "onboarding");
}

#[test]
fn req_csml_metadata_and_extra_content_not_sent_to_haptik() {
    let v = csml_to_haptik(
        "text",
        json!({"text":"hi","extra":1}),
        FlowTriggerPolicy::Reject,
    )
    .unwrap();
    assert_eq!(
        v.as_object().unwrap().len(),
        4,
        "no place for metadata or extra content: {v}"
    );
}

// Requests: CSML caller → CSML bot

#[test]
fn req_csml_to_csml_unchanged() {
    let v = csml_to_csml("text", json!({"text":"hi","extra":1}));
    assert_eq!(
        v["payload"],
        json!({"content_type":"text","content":{"text":"hi","extra":1}})
    );
    assert_eq!(v["metadata"], json!({"k":"v"}));
    let v = csml_to_csml("flow_trigger", json!({"flow_id":"f","close_flows":true}));
    assert_eq!(
        v["payload"],
        json!({"content_type":"flow_trigger","content":{"flow_id":"f","close_flows":true}})
    );
}

// ------------------------------------------------------------------------------------------
// Answers: CSML bot → Haptik caller (legacy strings, HSL) and CSML caller (verbatim)

#[test]
fn ans_csml_text() {
    let p = json!({"content_type":"text","content":{"text":"Hi"}});
    assert_eq!(
        legacy_strings(&from_csml(std::slice::from_ref(&p), H, Legacy).unwrap()),
        json!(["Hi"])
    );
    assert_eq!(
        hsl_bodies(&from_csml(std::slice::from_ref(&p), H, Hsl).unwrap()),
        [json!({"text":"Hi","type":"TEXT","data":{"quick_replies":[]}})]
    );
    assert_eq!(
        csml_payloads(&from_csml(std::slice::from_ref(&p), C, Legacy).unwrap()),
        [p]
    );
}

#[test]
fn ans_csml_question() {
    let p = json!({"content_type":"question","content":{"title":"Who?","buttons":[
        {"content_type":"button","content":{"title":"Alice","payload":"Alice","accepts":["Alice"]}},
        {"content_type":"button","content":{"title":"Bob","payload":"BOB","accepts":["Bob","BOB"]}}]}});
    assert_eq!(
        legacy_strings(&from_csml(std::slice::from_ref(&p), H, Legacy).unwrap()),
        json!(["Who?\n[Alice] [Bob]"])
    );
    let hsl = &hsl_bodies(&from_csml(std::slice::from_ref(&p), H, Hsl).unwrap())[0];
    assert_eq!(hsl["type"], "TEXT");
    assert_eq!(hsl["data"]["quick_replies"][1]["actionable_text"], "Bob");
    assert_eq!(hsl["data"]["quick_replies"][1]["payload"]["message"], "BOB");
    assert_eq!(
        csml_payloads(&from_csml(std::slice::from_ref(&p), C, Legacy).unwrap()),
        [p]
    );
}

#[test]
fn ans_csml_button() {
    let p = json!({"content_type":"button","content":{"title":"Go","payload":"GO"}});
    assert_eq!(
        legacy_strings(&from_csml(std::slice::from_ref(&p), H, Legacy).unwrap()),
        json!(["[Go]"])
    );
    let hsl = &hsl_bodies(&from_csml(&[p], H, Hsl).unwrap())[0];
    assert_eq!(
        (
            hsl["type"].as_str(),
            hsl["data"]["items"][0]["type"].as_str()
        ),
        (Some("BUTTON"), Some("TEXT_ONLY"))
    );
    assert_eq!(hsl["data"]["items"][0]["payload"]["message"], "GO");
}

#[test]
fn ans_csml_url() {
    let p = json!({"content_type":"url","content":{"url":"https://e.test","text":"Example","title":"T"}});
    assert_eq!(
        legacy_strings(&from_csml(std::slice::from_ref(&p), H, Legacy).unwrap()),
        json!(["Example: https://e.test"])
    );
    let hsl = &hsl_bodies(&from_csml(&[p], H, Hsl).unwrap())[0];
    assert_eq!(hsl["type"], "BUTTON");
    assert_eq!(hsl["data"]["items"][0]["uri"], "LINK");
    assert_eq!(hsl["data"]["items"][0]["payload"]["url"], "https://e.test");
}

#[test]
fn ans_csml_image() {
    let p = json!({"content_type":"image","content":{"url":"https://e.test/i.png"}});
    assert_eq!(
        legacy_strings(&from_csml(std::slice::from_ref(&p), H, Legacy).unwrap()),
        json!(["https://e.test/i.png"])
    );
    let hsl = &hsl_bodies(&from_csml(&[p], H, Hsl).unwrap())[0];
    assert_eq!(hsl["type"], "CAROUSEL");
    assert_eq!(
        hsl["data"]["items"][0]["thumbnail"]["image"],
        "https://e.test/i.png"
    );
    assert_eq!(hsl["data"]["items"][0]["actionables"], json!([]));
}

#[test]
fn ans_csml_video_audio_file() {
    for (kind, label) in [
        ("video", "Open video"),
        ("audio", "Open audio"),
        ("file", "Open file"),
    ] {
        let p = json!({"content_type":kind,"content":{"url":"https://e.test/m"}});
        assert_eq!(
            legacy_strings(&from_csml(std::slice::from_ref(&p), H, Legacy).unwrap()),
            json!(["https://e.test/m"])
        );
        let hsl = &hsl_bodies(&from_csml(&[p], H, Hsl).unwrap())[0];
        assert_eq!(hsl["data"]["items"][0]["actionable_text"], label);
        assert_eq!(hsl["data"]["items"][0]["uri"], "LINK");
    }
}

#[test]
fn ans_csml_typing_wait_dropped_for_haptik_kept_for_csml() {
    let ps = [
        json!({"content_type":"typing","content":{"duration":500}}),
        json!({"content_type":"wait","content":{"duration":200}}),
    ];
    assert_eq!(
        legacy_strings(&from_csml(&ps, H, Legacy).unwrap()),
        json!([])
    );
    assert!(hsl_bodies(&from_csml(&ps, H, Hsl).unwrap()).is_empty());
    assert_eq!(csml_payloads(&from_csml(&ps, C, Legacy).unwrap()), ps);
}

#[test]
fn ans_csml_object_and_payload_dropped_for_haptik_kept_for_csml() {
    let ps = [
        json!({"content_type":"object","content":{"my_custom":"object"}}),
        json!({"content_type":"payload","content":{"payload":"X"}}),
    ];
    assert_eq!(
        legacy_strings(&from_csml(&ps, H, Legacy).unwrap()),
        json!([])
    );
    assert!(hsl_bodies(&from_csml(&ps, H, Hsl).unwrap()).is_empty());
    assert_eq!(csml_payloads(&from_csml(&ps, C, Legacy).unwrap()), ps);
}

#[test]
fn ans_csml_error_fails_the_answer() {
    let p = json!({"content_type":"error","content":{"error":"boom"}});
    for ingress in [H, C] {
        assert_eq!(
            from_csml(std::slice::from_ref(&p), ingress, Legacy),
            Err(502)
        );
    }
}

// Answers: Haptik bot (HSL) → CSML caller, Haptik caller (legacy strings; HSL verbatim)

#[test]
fn ans_hsl_text() {
    let b = json!({"text":"Hi","type":"TEXT","data":{"quick_replies":[]}});
    assert_eq!(
        csml_payloads(&from_hsl(std::slice::from_ref(&b), C, Legacy)),
        [json!({"content_type":"text","content":{"text":"Hi"}})]
    );
    assert_eq!(
        legacy_strings(&from_hsl(std::slice::from_ref(&b), H, Legacy)),
        json!(["Hi"])
    );
    assert_eq!(hsl_bodies(&from_hsl(std::slice::from_ref(&b), H, Hsl)), [b]);
}

#[test]
fn ans_hsl_text_with_quick_replies() {
    let b = json!({"text":"Pick","type":"TEXT","data":{"quick_replies":[
        {"actionable_text":"Red","is_default":0,"type":"TEXT_ONLY","payload":{"message":"RED","gogo_message":""}}]}});
    let p = &csml_payloads(&from_hsl(std::slice::from_ref(&b), C, Legacy))[0];
    assert_eq!(p["content_type"], "question");
    assert_eq!(p["content"]["title"], "Pick");
    assert_eq!(
        p["content"]["buttons"][0]["content"],
        json!({"title":"Red","payload":"RED","accepts":["Red","RED"]})
    );
    assert_eq!(
        legacy_strings(&from_hsl(std::slice::from_ref(&b), H, Legacy)),
        json!(["Pick\n[Red]"])
    );
    assert_eq!(hsl_bodies(&from_hsl(std::slice::from_ref(&b), H, Hsl)), [b]);
}

#[test]
fn ans_hsl_button_text_only_items() {
    let b = json!({"text":"Choose","type":"BUTTON","data":{"items":[
        {"actionable_text":"A","location_required":false,"uri":"","is_default":0,"type":"TEXT_ONLY","payload":{"message":"A1","gogo_message":""}}]}});
    let p = &csml_payloads(&from_hsl(&[b], C, Legacy))[0];
    assert_eq!(p["content_type"], "question");
    assert_eq!(p["content"]["buttons"][0]["content"]["payload"], "A1");
}

#[test]
fn ans_hsl_button_link_items() {
    let b = json!({"text":"Docs","type":"BUTTON","data":{"items":[
        {"actionable_text":"Open","location_required":false,"uri":"LINK","is_default":0,"type":"APP_ACTION","payload":{"url":"https://x.test/d","gogo_message":""}}]}});
    assert_eq!(
        csml_payloads(&from_hsl(std::slice::from_ref(&b), C, Legacy)),
        [
            json!({"content_type":"url","content":{"url":"https://x.test/d","text":"Open","title":"Docs"}})
        ]
    );
    assert_eq!(
        legacy_strings(&from_hsl(&[b], H, Legacy)),
        json!(["Open: https://x.test/d"])
    );
}

#[test]
fn ans_hsl_carousel() {
    let b = json!({"text":"","type":"CAROUSEL","data":{"image_aspect_ratio":"1","width":"MEDIUM","items":[
        {"thumbnail":{"image":"https://x.test/1.png"},"title":"One","sub_title":"s","description":"d","actionables":[
            {"actionable_text":"Buy","payload":{"url":"https://x.test/buy"}}]}]}});
    assert_eq!(
        csml_payloads(&from_hsl(std::slice::from_ref(&b), C, Legacy)),
        [
            json!({"content_type":"image","content":{"url":"https://x.test/1.png"}}),
            json!({"content_type":"url","content":{"url":"https://x.test/buy","text":"Buy"}}),
        ]
    );
    assert_eq!(hsl_bodies(&from_hsl(std::slice::from_ref(&b), H, Hsl)), [b]);
}

#[test]
fn ans_hsl_other_types_dropped_for_csml_kept_for_hsl() {
    let b = json!({"text":"Fill in","type":"FORM","data":{"fields":[]}});
    assert!(csml_payloads(&from_hsl(std::slice::from_ref(&b), C, Legacy)).is_empty());
    assert_eq!(hsl_bodies(&from_hsl(std::slice::from_ref(&b), H, Hsl)), [b]);
}

// Answers: Haptik bot (legacy strings) and Haptik errors

#[test]
fn ans_haptik_legacy_strings() {
    let body = include_str!("fixtures/haptik/seed-response.json");
    let answer = haptik::parse_answer(200, body.as_bytes()).unwrap();
    let req_body = any_request(C);
    let req = C.parse_request("/", req_body.as_bytes()).unwrap();
    let v: Value = serde_json::from_slice(&C.render_answer(&req, &answer, &ctx(Legacy))).unwrap();
    assert_eq!(
        csml_payloads(&v),
        [json!({"content_type":"text","content":{"text":"Hello there!"}})]
    );
    let req_body = any_request(H);
    let req = H.parse_request("/", req_body.as_bytes()).unwrap();
    let v: Value = serde_json::from_slice(&H.render_answer(&req, &answer, &ctx(Hsl))).unwrap();
    assert_eq!(
        hsl_bodies(&v),
        [json!({"text":"Hello there!","type":"TEXT","data":{"quick_replies":[]}})]
    );
}

#[test]
fn ans_haptik_error_body() {
    let e =
        haptik::parse_answer(401, br#"{"error_message":"invalid token provided"}"#).unwrap_err();
    assert_eq!(e.status, 502);
    assert!(e.message.contains("invalid token provided"));
}

#[test]
fn ans_haptik_legacy_string_holding_hsl() {
    let hsl = json!({"text":"Pick","type":"TEXT","data":{"quick_replies":[
        {"actionable_text":"A","is_default":0,"type":"TEXT_ONLY","payload":{"message":"A1","gogo_message":""}}]}});
    let body = json!([{"bot_messages": [hsl.to_string(), "{\"just\": \"json\"}"]}]).to_string();
    let answer = haptik::parse_answer(200, body.as_bytes()).unwrap();
    let req_body = any_request(C);
    let req = C.parse_request("/", req_body.as_bytes()).unwrap();
    let v: Value = serde_json::from_slice(&C.render_answer(&req, &answer, &ctx(Legacy))).unwrap();
    let p = csml_payloads(&v);
    assert_eq!(p[0]["content_type"], "question");
    assert_eq!(p[0]["content"]["buttons"][0]["content"]["payload"], "A1");
    assert_eq!(
        p[1],
        json!({"content_type":"text","content":{"text":"{\"just\": \"json\"}"}})
    );
}

#[test]
fn ans_haptik_refusal_about_the_caller() {
    for (status, msg, want) in [
        (403, "user is not registered", "user is not registered"),
        (
            400,
            "invalid business_id provided",
            "invalid business_id provided",
        ),
        (
            400,
            "a bot's own words",
            "the bot refused the request as invalid",
        ),
    ] {
        let body = json!({"error_message": msg}).to_string();
        let e = haptik::parse_answer(status, body.as_bytes()).unwrap_err();
        assert_eq!((e.status, &*e.message), (status, want));
        let v: Value = serde_json::from_slice(&C.render_error(&e)).unwrap();
        assert_eq!(
            (v["statusCode"].as_u64(), v["message"].as_str()),
            (Some(status as u64), Some(want))
        );
    }
}

// ==========================================================================================
// Rasa REST channel (docs/mapping.md, the "Rasa" sections). Self-contained, below everything
// else, so that edits to the rows above and to these merge cleanly.

use botbridge::dialect::rasa;

/// A Rasa caller's request body.
fn rasa_body(message: &str, metadata: Option<Value>) -> String {
    let mut v = json!({"sender":"u","message":message});
    if let Some(m) = metadata {
        v["metadata"] = m;
    }
    v.to_string()
}

/// A Rasa caller's request rendered for a CSML bot (Chat API or engine), the credential or route
/// having named `business_id`.
fn rasa_to_csml(body: &str, business_id: Option<i64>) -> Result<Value, u16> {
    let mut parsed = rasa::parse_request(body.as_bytes()).map_err(|e| e.status)?;
    parsed.business_id = business_id;
    Ok(serde_json::from_slice(&csml::render_request(&parsed, "rid")).unwrap())
}

/// A Rasa caller's request rendered for a Haptik bot of business 343.
fn rasa_to_haptik(body: &str) -> Result<Value, u16> {
    let mut parsed = rasa::parse_request(body.as_bytes()).map_err(|e| e.status)?;
    parsed.business_id = Some(343);
    haptik::render_request(&parsed, 343, FlowTriggerPolicy::Reject)
        .map(|b| serde_json::from_slice(&b).unwrap())
        .map_err(|e| e.status)
}

/// A CSML caller's request rendered for a Rasa bot.
fn csml_to_rasa(content_type: &str, content: Value, flow: FlowTriggerPolicy) -> Result<Value, u16> {
    let req = json!({"client":{"user_id":"u"},"metadata":{"k":"v"},"request_id":"rid",
                     "payload":{"content_type":content_type,"content":content}})
    .to_string();
    let parsed = csml::parse_request(req.as_bytes()).map_err(|e| e.status)?;
    rasa::render_request(&parsed, flow)
        .map(|b| serde_json::from_slice(&b).unwrap())
        .map_err(|e| e.status)
}

/// A Haptik caller's request rendered for a Rasa bot.
fn haptik_to_rasa(message_type: i64, body: &str) -> Result<Value, u16> {
    let req = json!({"user":{"auth_id":"u"},"message_body":body,"message_type":message_type,"business_id":343}).to_string();
    let parsed = haptik::parse_request(req.as_bytes()).map_err(|e| e.status)?;
    rasa::render_request(&parsed, FlowTriggerPolicy::Reject)
        .map(|b| serde_json::from_slice(&b).unwrap())
        .map_err(|e| e.status)
}

/// A Rasa caller's request.
const RASA_REQUEST: &str = r#"{"sender":"u","message":"x"}"#;

/// A canonical answer rendered for a Rasa caller (`sender` "u").
fn for_rasa(answer: &botbridge::model::ChatAnswer<'_>) -> Value {
    let req = rasa::parse_request(RASA_REQUEST.as_bytes()).unwrap();
    serde_json::from_slice(&rasa::render_answer(&req, answer)).unwrap()
}

/// A Rasa bot's answer with these messages, rendered for a CSML or Haptik caller.
fn from_rasa(messages: &[Value], ingress: Caller, shape: AnswerShape) -> Value {
    let body = Value::from(messages.to_vec()).to_string();
    let answer = rasa::parse_answer(200, body.as_bytes()).unwrap();
    let req_body = any_request(ingress);
    let req = ingress.parse_request("/", req_body.as_bytes()).unwrap();
    serde_json::from_slice(&ingress.render_answer(&req, &answer, &ctx(shape))).unwrap()
}

/// A Rasa bot's answer with these messages, rendered for a Rasa caller.
fn from_rasa_for_rasa(messages: &[Value]) -> Value {
    let body = Value::from(messages.to_vec()).to_string();
    for_rasa(&rasa::parse_answer(200, body.as_bytes()).unwrap())
}

/// A CSML bot's answer with these payloads, rendered for a Rasa caller; an error in Rasa's shape.
fn csml_for_rasa(payloads: &[Value]) -> Result<Value, Value> {
    let messages: Vec<Value> = payloads.iter().map(|p| json!({"payload": p})).collect();
    let body = json!({"messages": messages}).to_string();
    match csml::parse_answer(body.as_bytes(), false) {
        Ok(answer) => Ok(for_rasa(&answer)),
        Err(e) => Err(serde_json::from_slice(&rasa::render_error(&e)).unwrap()),
    }
}

/// A Haptik bot's current-shape answer with these HSL bodies, rendered for a Rasa caller.
fn hsl_for_rasa(bodies: &[Value]) -> Value {
    let messages: Vec<Value> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| json!({"id": i, "body": b}))
        .collect();
    let body =
        json!({"version":"1.0","timestamp":"t","agent":{"id":1,"name":"gogo"},"message": messages})
            .to_string();
    for_rasa(&haptik::parse_answer(200, body.as_bytes()).unwrap())
}

// Requests: Rasa caller → CSML bot, Haptik bot, Rasa bot

#[test]
fn req_rasa_text_to_csml_and_haptik() {
    let v = rasa_to_csml(&rasa_body("hello", None), None).unwrap();
    assert_eq!(
        v["payload"],
        json!({"content_type":"text","content":{"text":"hello"}})
    );
    assert_eq!(v["client"], json!({"user_id":"u"}));
    // A URL is text too: a Rasa message has no media types.
    let v = rasa_to_csml(&rasa_body("https://x.test/a.png", None), None).unwrap();
    assert_eq!(v["payload"]["content_type"], "text");
    assert_eq!(
        rasa_to_haptik(&rasa_body("hello", None)).unwrap(),
        json!({"user":{"auth_id":"u"},"message_body":"hello","message_type":0,"business_id":343})
    );
}

#[test]
fn req_rasa_slash_payload_to_csml_payload_and_haptik_text() {
    let body = rasa_body(r#"/inform{"city":"Paris"}"#, None);
    let v = rasa_to_csml(&body, None).unwrap();
    assert_eq!(
        v["payload"],
        json!({"content_type":"payload","content":{"payload":"/inform{\"city\":\"Paris\"}"}})
    );
    let v = rasa_to_haptik(&body).unwrap();
    assert_eq!(
        (v["message_body"].as_str(), v["message_type"].as_i64()),
        (Some(r#"/inform{"city":"Paris"}"#), Some(0))
    );
}

#[test]
fn req_rasa_metadata_to_csml_not_to_haptik() {
    let body = rasa_body("hi", Some(json!({"locale":"fr","n":[1,2]})));
    let v = rasa_to_csml(&body, Some(77)).unwrap();
    assert_eq!(v["metadata"], json!({"locale":"fr","n":[1,2]}));
    let v = rasa_to_haptik(&body).unwrap();
    assert_eq!(
        v.as_object().unwrap().len(),
        4,
        "no place for metadata: {v}"
    );
}

#[test]
fn req_rasa_without_metadata_gets_the_business() {
    let v = rasa_to_csml(&rasa_body("hi", None), Some(77)).unwrap();
    assert_eq!(v["metadata"], json!({"business_id":77}));
    let v = rasa_to_csml(&rasa_body("hi", None), None).unwrap();
    assert_eq!(v["metadata"], json!({}));
}

#[test]
fn req_rasa_extra_keys_not_sent() {
    let body = r#"{"sender":"u","message":"hi","input_channel":"web","extra":{"a":1}}"#;
    let v = rasa_to_csml(body, None).unwrap();
    assert_eq!(
        v,
        json!({"client":{"user_id":"u"},"metadata":{},"request_id":"rid",
               "payload":{"content_type":"text","content":{"text":"hi"}}})
    );
    let mut parsed = rasa::parse_request(body.as_bytes()).unwrap();
    parsed.business_id = None;
    let v: Value =
        serde_json::from_slice(&rasa::render_request(&parsed, FlowTriggerPolicy::Reject).unwrap())
            .unwrap();
    assert_eq!(v, json!({"sender":"u","message":"hi"}));
}

#[test]
fn req_rasa_bad_request_refused() {
    for body in [
        r#"{"message":"hi"}"#,
        r#"{"sender":"u"}"#,
        r#"{"sender":"","message":"hi"}"#,
        r#"{"sender":"u","message":""}"#,
        r#"{"sender":"u","message":"hi","metadata":"x"}"#,
        "{nope",
    ] {
        let err = rasa::parse_request(body.as_bytes()).unwrap_err();
        assert_eq!(err.status, 400, "{body}");
        let v: Value = serde_json::from_slice(&rasa::render_error(&err)).unwrap();
        assert_eq!(
            (&v["status"], &v["code"], &v["reason"]),
            (&json!("failure"), &json!(400), &json!("bad_request"))
        );
    }
}

#[test]
fn req_rasa_to_rasa_unchanged() {
    for body in [
        r#"{"sender":"u","message":"/affirm","metadata":{"a":[1,{"b":null}]}}"#,
        r#"{"sender":"u","message":"hello"}"#,
    ] {
        let parsed = rasa::parse_request(body.as_bytes()).unwrap();
        let out = rasa::render_request(&parsed, FlowTriggerPolicy::Reject).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), body);
    }
}

// Requests: CSML caller, Haptik caller → Rasa bot

#[test]
fn req_csml_text_to_rasa_message() {
    let v = csml_to_rasa(
        "text",
        json!({"text":"hi","extra":1}),
        FlowTriggerPolicy::Reject,
    )
    .unwrap();
    assert_eq!(v, json!({"sender":"u","message":"hi","metadata":{"k":"v"}}));
}

#[test]
fn req_csml_payload_to_rasa_message() {
    let v = csml_to_rasa(
        "payload",
        json!({"payload":"/affirm"}),
        FlowTriggerPolicy::Reject,
    )
    .unwrap();
    assert_eq!(v["message"], "/affirm");
}

#[test]
fn req_csml_media_and_url_to_rasa_url_message() {
    for kind in ["image", "video", "audio", "file", "url"] {
        let v = csml_to_rasa(
            kind,
            json!({"url":"https://x.test/m"}),
            FlowTriggerPolicy::Reject,
        )
        .unwrap();
        assert_eq!(v["message"], "https://x.test/m", "{kind}");
    }
}

#[test]
fn req_csml_flow_trigger_to_rasa_per_policy() {
    let content = json!({"flow_id":"onboarding","close_flows":true});
    assert_eq!(
        csml_to_rasa("flow_trigger", content.clone(), FlowTriggerPolicy::Reject),
        Err(422)
    );
    let v = csml_to_rasa("flow_trigger", content, FlowTriggerPolicy::Text).unwrap();
    assert_eq!(
        v,
        json!({"sender":"u","message":"onboarding","metadata":{"k":"v"}})
    );
}

#[test]
fn req_csml_metadata_to_rasa_metadata() {
    let req = json!({"client":{"user_id":"u"},"metadata":{"deep":{"list":[1,"two",null]}},"request_id":"rid",
                     "payload":{"content_type":"text","content":{"text":"hi"}}})
    .to_string();
    let mut parsed = csml::parse_request(req.as_bytes()).unwrap();
    parsed.business_id = Some(77);
    let v: Value =
        serde_json::from_slice(&rasa::render_request(&parsed, FlowTriggerPolicy::Reject).unwrap())
            .unwrap();
    // The caller's metadata wins over the business; request_id has no place in the body.
    assert_eq!(
        v,
        json!({"sender":"u","message":"hi","metadata":{"deep":{"list":[1,"two",null]}}})
    );
}

#[test]
fn req_haptik_text_to_rasa_message() {
    assert_eq!(
        haptik_to_rasa(0, "hello").unwrap(),
        json!({"sender":"u","message":"hello","metadata":{"business_id":343}})
    );
}

#[test]
fn req_haptik_media_to_rasa_url_message() {
    for t in [1, 52] {
        let v = haptik_to_rasa(t, "https://x.test/a").unwrap();
        assert_eq!(v["message"], "https://x.test/a");
    }
}

// Answers: Rasa bot → CSML caller, Haptik caller (legacy strings, HSL), Rasa caller

#[test]
fn ans_rasa_text() {
    let m = [json!({"recipient_id":"bot-side-id","text":"Hi"})];
    assert_eq!(
        csml_payloads(&from_rasa(&m, C, Legacy)),
        [json!({"content_type":"text","content":{"text":"Hi"}})]
    );
    assert_eq!(legacy_strings(&from_rasa(&m, H, Legacy)), json!(["Hi"]));
    assert_eq!(
        hsl_bodies(&from_rasa(&m, H, Hsl)),
        [json!({"text":"Hi","type":"TEXT","data":{"quick_replies":[]}})]
    );
    // Re-addressed to the caller's own sender.
    assert_eq!(
        from_rasa_for_rasa(&m),
        json!([{"recipient_id":"u","text":"Hi"}])
    );
}

#[test]
fn ans_rasa_text_with_buttons() {
    let m = [json!({"recipient_id":"u","text":"Sure?","buttons":[
        {"title":"Yes","payload":"/affirm","type":"postback"},{"title":"No","payload":"/deny"}]})];
    let p = &csml_payloads(&from_rasa(&m, C, Legacy))[0];
    assert_eq!(p["content_type"], "question");
    assert_eq!(p["content"]["title"], "Sure?");
    assert_eq!(
        p["content"]["buttons"][0]["content"],
        json!({"title":"Yes","payload":"/affirm","accepts":["Yes","/affirm"]})
    );
    assert_eq!(
        legacy_strings(&from_rasa(&m, H, Legacy)),
        json!(["Sure?\n[Yes] [No]"])
    );
    let hsl = &hsl_bodies(&from_rasa(&m, H, Hsl))[0];
    assert_eq!(hsl["type"], "TEXT");
    assert_eq!(
        hsl["data"]["quick_replies"][1]["payload"]["message"],
        "/deny"
    );
    assert_eq!(
        from_rasa_for_rasa(&m),
        json!([{"recipient_id":"u","text":"Sure?","buttons":[
            {"title":"Yes","payload":"/affirm"},{"title":"No","payload":"/deny"}]}])
    );
}

#[test]
fn ans_rasa_buttons_without_text() {
    let m = [json!({"recipient_id":"u","buttons":[{"title":"Go","payload":"/go"}]})];
    let p = &csml_payloads(&from_rasa(&m, C, Legacy))[0];
    assert_eq!(p["content_type"], "question");
    assert_eq!(p["content"]["title"], "");
    assert_eq!(legacy_strings(&from_rasa(&m, H, Legacy)), json!(["\n[Go]"]));
    let hsl = &hsl_bodies(&from_rasa(&m, H, Hsl))[0];
    assert_eq!((&hsl["type"], &hsl["text"]), (&json!("TEXT"), &json!("")));
    assert_eq!(hsl["data"]["quick_replies"][0]["payload"]["message"], "/go");
    assert_eq!(
        from_rasa_for_rasa(&m),
        json!([{"recipient_id":"u","text":"","buttons":[{"title":"Go","payload":"/go"}]}])
    );
}

#[test]
fn ans_rasa_image() {
    let m = [json!({"recipient_id":"u","text":"Look","image":"https://x.test/i.png"})];
    assert_eq!(
        csml_payloads(&from_rasa(&m, C, Legacy)),
        [
            json!({"content_type":"text","content":{"text":"Look"}}),
            json!({"content_type":"image","content":{"url":"https://x.test/i.png"}}),
        ]
    );
    assert_eq!(
        legacy_strings(&from_rasa(&m, H, Legacy)),
        json!(["Look", "https://x.test/i.png"])
    );
    assert_eq!(hsl_bodies(&from_rasa(&m, H, Hsl))[1]["type"], "CAROUSEL");
    assert_eq!(
        from_rasa_for_rasa(&m),
        json!([{"recipient_id":"u","text":"Look"},{"recipient_id":"u","image":"https://x.test/i.png"}])
    );
}

#[test]
fn ans_rasa_attachment_url() {
    let m = [json!({"recipient_id":"u","attachment":"https://x.test/d.pdf"})];
    assert_eq!(
        csml_payloads(&from_rasa(&m, C, Legacy)),
        [json!({"content_type":"file","content":{"url":"https://x.test/d.pdf"}})]
    );
    assert_eq!(
        legacy_strings(&from_rasa(&m, H, Legacy)),
        json!(["https://x.test/d.pdf"])
    );
    let hsl = &hsl_bodies(&from_rasa(&m, H, Hsl))[0];
    assert_eq!(hsl["data"]["items"][0]["actionable_text"], "Open file");
    assert_eq!(
        from_rasa_for_rasa(&m),
        json!([{"recipient_id":"u","attachment":"https://x.test/d.pdf"}])
    );
}

#[test]
fn ans_rasa_attachment_other_dropped() {
    let m = [
        json!({"recipient_id":"u","attachment":{"type":"video","payload":{"src":"https://x.test/v.mp4"}}}),
        json!({"recipient_id":"u","attachment":"report.pdf"}),
    ];
    let body = Value::from(m.to_vec()).to_string();
    let answer = rasa::parse_answer(200, body.as_bytes()).unwrap();
    assert_eq!((answer.replies.len(), answer.dropped), (0, 2));
    assert!(csml_payloads(&from_rasa(&m, C, Legacy)).is_empty());
    assert_eq!(legacy_strings(&from_rasa(&m, H, Legacy)), json!([]));
    assert_eq!(from_rasa_for_rasa(&m), json!([]));
}

#[test]
fn ans_rasa_custom_dropped() {
    let m = [
        json!({"recipient_id":"u","custom":{"blocks":[{"type":"section"}]}}),
        json!({"recipient_id":"u","text":"kept","custom":{"x":1}}),
    ];
    let body = Value::from(m.to_vec()).to_string();
    let answer = rasa::parse_answer(200, body.as_bytes()).unwrap();
    assert_eq!(answer.dropped, 2);
    assert_eq!(
        csml_payloads(&from_rasa(&m, C, Legacy)),
        [json!({"content_type":"text","content":{"text":"kept"}})]
    );
    assert!(hsl_bodies(&from_rasa(&m[..1], H, Hsl)).is_empty());
    assert_eq!(
        from_rasa_for_rasa(&m),
        json!([{"recipient_id":"u","text":"kept"}])
    );
}

#[test]
fn ans_rasa_empty_array() {
    assert!(csml_payloads(&from_rasa(&[], C, Legacy)).is_empty());
    assert_eq!(legacy_strings(&from_rasa(&[], H, Legacy)), json!([]));
    assert!(hsl_bodies(&from_rasa(&[], H, Hsl)).is_empty());
    assert_eq!(from_rasa_for_rasa(&[]), json!([]));
}

#[test]
fn ans_rasa_failures_are_fixed_502s() {
    let secret = "internal-stack-trace";
    let e = rasa::parse_answer(500, secret.as_bytes()).unwrap_err();
    assert_eq!(e.status, 502);
    assert_eq!(e.message, "the backend answered HTTP 500");
    for body in [
        format!(r#"{{"error":"{secret}"}}"#),
        format!(r#"[{{"text":["{secret}"]}}]"#),
    ] {
        let e = rasa::parse_answer(200, body.as_bytes()).unwrap_err();
        assert_eq!(e.status, 502);
        assert!(!e.message.contains(secret), "{}", e.message);
        // Every caller dialect then renders it in its own error shape.
        let v: Value = serde_json::from_slice(&rasa::render_error(&e)).unwrap();
        assert_eq!(v["reason"], "backend_bad_answer");
        let v: Value = serde_json::from_slice(&C.render_error(&e)).unwrap();
        assert_eq!(v["statusCode"], 502);
    }
}

// Answers: CSML bot, Haptik bot → Rasa caller

#[test]
fn ans_csml_text_to_rasa() {
    let p = json!({"content_type":"text","content":{"text":"Hi"}});
    assert_eq!(
        csml_for_rasa(&[p]).unwrap(),
        json!([{"recipient_id":"u","text":"Hi"}])
    );
}

#[test]
fn ans_csml_question_to_rasa() {
    let p = json!({"content_type":"question","content":{"title":"Who?","buttons":[
        {"content_type":"button","content":{"title":"Alice"}},
        {"content_type":"button","content":{"title":"Bob","payload":"BOB","accepts":["bob"]}}]}});
    assert_eq!(
        csml_for_rasa(&[p]).unwrap(),
        json!([{"recipient_id":"u","text":"Who?","buttons":[
            {"title":"Alice","payload":"Alice"},{"title":"Bob","payload":"BOB"}]}])
    );
}

#[test]
fn ans_csml_button_to_rasa() {
    let p = json!({"content_type":"button","content":{"title":"Go","payload":"GO"}});
    assert_eq!(
        csml_for_rasa(&[p]).unwrap(),
        json!([{"recipient_id":"u","buttons":[{"title":"Go","payload":"GO"}]}])
    );
}

#[test]
fn ans_csml_url_to_rasa() {
    let ps = [
        json!({"content_type":"url","content":{"url":"https://e.test","text":"Example","title":"T"}}),
        json!({"content_type":"url","content":{"url":"https://e.test","title":"T"}}),
        json!({"content_type":"url","content":{"url":"https://e.test"}}),
    ];
    assert_eq!(
        csml_for_rasa(&ps).unwrap(),
        json!([{"recipient_id":"u","text":"Example: https://e.test"},
               {"recipient_id":"u","text":"T: https://e.test"},
               {"recipient_id":"u","text":"https://e.test"}])
    );
}

#[test]
fn ans_csml_image_to_rasa() {
    let p = json!({"content_type":"image","content":{"url":"https://e.test/i.png"}});
    assert_eq!(
        csml_for_rasa(&[p]).unwrap(),
        json!([{"recipient_id":"u","image":"https://e.test/i.png"}])
    );
}

#[test]
fn ans_csml_video_audio_file_to_rasa() {
    for kind in ["video", "audio", "file"] {
        let p = json!({"content_type":kind,"content":{"url":"https://e.test/m"}});
        assert_eq!(
            csml_for_rasa(&[p]).unwrap(),
            json!([{"recipient_id":"u","attachment":"https://e.test/m"}])
        );
    }
}

#[test]
fn ans_csml_hints_objects_payloads_dropped_for_rasa() {
    let ps = [
        json!({"content_type":"typing","content":{"duration":500}}),
        json!({"content_type":"wait","content":{"duration":200}}),
        json!({"content_type":"object","content":{"my_custom":"object"}}),
        json!({"content_type":"payload","content":{"payload":"X"}}),
    ];
    assert_eq!(csml_for_rasa(&ps).unwrap(), json!([]));
}

#[test]
fn ans_csml_error_to_rasa_error_shape() {
    let p = json!({"content_type":"error","content":{"error":"boom"}});
    let v = csml_for_rasa(&[p]).unwrap_err();
    assert_eq!(
        (&v["status"], &v["code"], &v["reason"], &v["details"]),
        (
            &json!("failure"),
            &json!(502),
            &json!("bot_error"),
            &json!({})
        )
    );
    assert_eq!(v["message"], "the bot reported an error");
    assert!(!v.to_string().contains("boom"), "{v}");
}

#[test]
fn ans_hsl_text_and_quick_replies_to_rasa() {
    let b = json!({"text":"Pick","type":"TEXT","data":{"quick_replies":[
        {"actionable_text":"Red","is_default":0,"type":"TEXT_ONLY","payload":{"message":"RED","gogo_message":""}}]}});
    let plain = json!({"text":"Hi","type":"TEXT","data":{"quick_replies":[]}});
    assert_eq!(
        hsl_for_rasa(&[plain, b]),
        json!([{"recipient_id":"u","text":"Hi"},
               {"recipient_id":"u","text":"Pick","buttons":[{"title":"Red","payload":"RED"}]}])
    );
}

#[test]
fn ans_hsl_button_link_to_rasa() {
    let b = json!({"text":"Docs","type":"BUTTON","data":{"items":[
        {"actionable_text":"Open","location_required":false,"uri":"LINK","is_default":0,"type":"APP_ACTION","payload":{"url":"https://x.test/d","gogo_message":""}}]}});
    assert_eq!(
        hsl_for_rasa(&[b]),
        json!([{"recipient_id":"u","text":"Open: https://x.test/d"}])
    );
}

#[test]
fn ans_hsl_carousel_to_rasa() {
    let b = json!({"text":"","type":"CAROUSEL","data":{"image_aspect_ratio":"1","width":"MEDIUM","items":[
        {"thumbnail":{"image":"https://x.test/1.png"},"title":"One","sub_title":"s","description":"d","actionables":[
            {"actionable_text":"Buy","payload":{"url":"https://x.test/buy"}}]}]}});
    assert_eq!(
        hsl_for_rasa(&[b]),
        json!([{"recipient_id":"u","image":"https://x.test/1.png"},
               {"recipient_id":"u","text":"Buy: https://x.test/buy"}])
    );
}

#[test]
fn ans_haptik_legacy_to_rasa() {
    let body = include_str!("fixtures/haptik/seed-response.json");
    let answer = haptik::parse_answer(200, body.as_bytes()).unwrap();
    assert_eq!(
        for_rasa(&answer),
        json!([{"recipient_id":"u","text":"Hello there!"}])
    );
}

#[test]
fn ans_haptik_error_to_rasa_error_shape() {
    let e =
        haptik::parse_answer(401, br#"{"error_message":"invalid token provided"}"#).unwrap_err();
    let v: Value = serde_json::from_slice(&rasa::render_error(&e)).unwrap();
    assert_eq!((&v["status"], &v["code"]), (&json!("failure"), &json!(502)));
    assert!(v["message"]
        .as_str()
        .unwrap()
        .contains("invalid token provided"));
}

// ------------------------------------------------------------------------------------------
// Amazon Lex V2 and Google Dialogflow CX (docs/mapping.md, their sections). Self-contained, below
// everything else.

use botbridge::dialect::{dialogflow, lex, CallerDialect};
use botbridge::model::{ChatAnswer, Content, MediaKind, Reply};

const LEX_PATH: &str = "/bots/B/botAliases/A/botLocales/en_US/sessions/user%3A1/text";
const DF_PATH: &str = "/v3/projects/p/locations/global/agents/a/sessions/user-1:detectIntent";

/// A request as each of the CSML, Haptik and Rasa bots gets it (Haptik's business 343).
fn to_csml_haptik_rasa(req: &botbridge::model::ChatRequest<'_>) -> (Value, Value, Value) {
    let csml: Value = serde_json::from_slice(&csml::render_request(req, "rid")).unwrap();
    let haptik = haptik::render_request(req, 343, FlowTriggerPolicy::Text).unwrap();
    let rasa = rasa::render_request(req, FlowTriggerPolicy::Text).unwrap();
    (
        csml,
        serde_json::from_slice(&haptik).unwrap(),
        serde_json::from_slice(&rasa).unwrap(),
    )
}

/// A CSML caller's request with this payload and metadata.
fn csml_req(payload: Value) -> String {
    json!({"client": {"user_id": "jane doe"}, "metadata": {"plan": "gold", "seats": 3}, "payload": payload}).to_string()
}

/// A Lex bot of these settings.
fn lex_bot() -> Box<dyn Bot> {
    bot("lex-v2", "region = \"us-east-1\"\nbot_id = \"B\"\nbot_alias_id = \"A\"\nlocale_id = \"en_US\"\naccess_key_id = \"AK\"\nsecret_access_key = \"s\"")
}

fn rctx(flow: FlowTriggerPolicy) -> BotRequestContext<'static> {
    BotRequestContext {
        request_id: "rid",
        business_id: None,
        flow_trigger: flow,
    }
}

/// A Lex bot's answer with these messages (and dialog action), for a CSML caller.
fn lex_for_csml(messages: Value, action: &str) -> Value {
    let body = json!({"messages": messages, "sessionState": {"dialogAction": {"type": action}}})
        .to_string();
    let answer = lex::parse_answer(200, body.as_bytes(), false).unwrap();
    let body = any_request(C);
    let req = C.parse_request("/", body.as_bytes()).unwrap();
    serde_json::from_slice(&C.render_answer(&req, &answer, &ctx(Legacy))).unwrap()
}

/// Canonical replies rendered for a Lex caller.
fn for_lex(replies: Vec<Reply<'static>>, end: bool) -> Value {
    let req = lex::parse_request(LEX_PATH, br#"{"text":"x"}"#).unwrap();
    let answer = ChatAnswer {
        replies,
        conversation_end: Some(end),
        ..ChatAnswer::default()
    };
    serde_json::from_slice(&lex::render_answer(&req, &answer)).unwrap()
}

#[test]
fn req_lex_text_to_csml_haptik_rasa() {
    let req = lex::parse_request(LEX_PATH, br#"{"text":"hello"}"#).unwrap();
    let (c, h, r) = to_csml_haptik_rasa(&req);
    assert_eq!(
        c["payload"],
        json!({"content_type": "text", "content": {"text": "hello"}})
    );
    assert_eq!(c["client"]["user_id"], "user:1");
    assert_eq!(
        (h["message_body"].clone(), h["user"]["auth_id"].clone()),
        (json!("hello"), json!("user:1"))
    );
    assert_eq!(
        (r["message"].clone(), r["sender"].clone()),
        (json!("hello"), json!("user:1"))
    );
}

#[test]
fn req_lex_attributes_to_metadata() {
    let req = lex::parse_request(
        LEX_PATH,
        br#"{"text":"x","requestAttributes":{"plan":"gold"}}"#,
    )
    .unwrap();
    let (c, h, r) = to_csml_haptik_rasa(&req);
    assert_eq!(c["metadata"], json!({"plan": "gold"}));
    assert_eq!(r["metadata"], json!({"plan": "gold"}));
    assert!(h.get("metadata").is_none() && !h.to_string().contains("gold"));
}

#[test]
fn req_lex_session_state_not_sent() {
    let body = br#"{"text":"x","sessionState":{"sessionAttributes":{"secretish":"v"},"intent":{"name":"I"}}}"#;
    let req = lex::parse_request(LEX_PATH, body).unwrap();
    let (c, h, r) = to_csml_haptik_rasa(&req);
    for v in [c, h, r] {
        assert!(!v.to_string().contains("secretish"), "{v}");
    }
}

#[test]
fn req_lex_bad_request_refused() {
    let e = lex::parse_request(LEX_PATH, br#"{"text":""}"#).unwrap_err();
    assert_eq!(e.status, 400);
    let mut name = String::new();
    lex::Lex.error_headers(&e, &mut |_, v| name = v.to_owned());
    assert_eq!(name, "ValidationException");
    assert_eq!(
        lex::parse_request(&LEX_PATH.replace("user%3A1", "a%20b"), br#"{"text":"x"}"#)
            .unwrap_err()
            .status,
        400
    );
    assert_eq!(
        lex::parse_request(LEX_PATH, b"nope").unwrap_err().status,
        400
    );
}

#[test]
fn req_csml_to_lex_text() {
    let bot = lex_bot();
    for (payload, text) in [
        (
            json!({"content_type": "text", "content": {"text": "hi"}}),
            "hi",
        ),
        (
            json!({"content_type": "payload", "content": {"payload": "YES"}}),
            "YES",
        ),
        (
            json!({"content_type": "image", "content": {"url": "https://x/i.png"}}),
            "https://x/i.png",
        ),
    ] {
        let body = csml_req(payload);
        let req = csml::parse_request(body.as_bytes()).unwrap();
        let v: Value = serde_json::from_slice(
            &bot.render_request(&req, &rctx(FlowTriggerPolicy::Reject))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(v["text"], text);
        let path = bot.target(&req, None).unwrap();
        assert!(
            path.contains("/sessions/bb-") && path.ends_with("/text"),
            "{path}"
        );
    }
}

#[test]
fn req_csml_flow_trigger_to_lex_per_policy() {
    let body = csml_req(json!({"content_type": "flow_trigger", "content": {"flow_id": "start"}}));
    let req = csml::parse_request(body.as_bytes()).unwrap();
    assert_eq!(
        lex_bot()
            .render_request(&req, &rctx(FlowTriggerPolicy::Reject))
            .unwrap_err()
            .status,
        422
    );
    let v: Value = serde_json::from_slice(
        &lex_bot()
            .render_request(&req, &rctx(FlowTriggerPolicy::Text))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(v["text"], "start");
}

#[test]
fn req_metadata_to_lex_request_attributes() {
    let body = csml_req(json!({"content_type": "text", "content": {"text": "hi"}}));
    let mut req = csml::parse_request(body.as_bytes()).unwrap();
    req.business_id = Some(343);
    let v: Value = serde_json::from_slice(
        &lex_bot()
            .render_request(&req, &rctx(FlowTriggerPolicy::Reject))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        v["requestAttributes"],
        json!({"plan": "gold", "seats": "3", "business_id": "343"})
    );
}

#[test]
fn ans_lex_plain_text_and_ssml() {
    let v = lex_for_csml(
        json!([{"contentType": "PlainText", "content": "Hi"},
                                 {"contentType": "SSML", "content": "<speak>Hello <break/>you</speak>"}]),
        "ElicitIntent",
    );
    let texts: Vec<Value> = csml_payloads(&v)
        .iter()
        .map(|p| p["content"]["text"].clone())
        .collect();
    assert_eq!(texts, [json!("Hi"), json!("Hello you")]);
}

#[test]
fn ans_lex_image_response_card() {
    let v = lex_for_csml(
        json!([{"contentType": "ImageResponseCard", "imageResponseCard": {"title": "Pick",
        "subtitle": "s", "imageUrl": "https://x/i.png", "buttons": [{"text": "Yes", "value": "yes"}]}}]),
        "ElicitSlot",
    );
    let p = csml_payloads(&v);
    assert_eq!(
        p[0],
        json!({"content_type": "image", "content": {"url": "https://x/i.png"}})
    );
    assert_eq!(p[1]["content_type"], "question");
    assert_eq!(p[1]["content"]["title"], "Pick");
    assert_eq!(p[1]["content"]["buttons"][0]["content"]["payload"], "yes");
}

#[test]
fn ans_lex_custom_payload_dropped_kept_for_lex() {
    let body = br#"{"messages":[{"contentType":"CustomPayload","content":"{\"x\":1}"}]}"#;
    assert_eq!(lex::parse_answer(200, body, false).unwrap().dropped, 1);
    let kept = lex::parse_answer(200, body, true).unwrap();
    let req = lex::parse_request(LEX_PATH, br#"{"text":"x"}"#).unwrap();
    let v: Value = serde_json::from_slice(&lex::render_answer(&req, &kept)).unwrap();
    assert_eq!(
        v["messages"],
        json!([{"contentType": "CustomPayload", "content": "{\"x\":1}"}])
    );
}

#[test]
fn ans_lex_close_ends_the_conversation() {
    let v = lex_for_csml(
        json!([{"contentType": "PlainText", "content": "Bye"}]),
        "Close",
    );
    assert_eq!(v["conversation_end"], true);
    let v = lex_for_csml(
        json!([{"contentType": "PlainText", "content": "Hi"}]),
        "ElicitIntent",
    );
    assert_eq!(v["conversation_end"], false);
}

#[test]
fn ans_to_lex_caller_shapes() {
    let b = |t: &'static str| botbridge::model::Button {
        title: t.into(),
        payload: None,
    };
    let v = for_lex(
        vec![
            Reply::Text("Hi".into()),
            Reply::Question {
                title: "Q".into(),
                buttons: (0..6).map(|_| b("b")).collect(),
            },
            Reply::Url {
                url: "https://x".into(),
                text: Some("Docs".into()),
                title: None,
            },
            Reply::Media {
                kind: MediaKind::Image,
                url: "https://x/i.png".into(),
            },
            Reply::Media {
                kind: MediaKind::Video,
                url: "https://x/v.mp4".into(),
            },
        ],
        true,
    );
    let m = &v["messages"];
    assert_eq!(m[0], json!({"contentType": "PlainText", "content": "Hi"}));
    assert_eq!(
        m[1]["imageResponseCard"]["buttons"]
            .as_array()
            .unwrap()
            .len(),
        5
    );
    assert_eq!(
        m[2]["imageResponseCard"]["buttons"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        m[3],
        json!({"contentType": "PlainText", "content": "Docs: https://x"})
    );
    assert_eq!(
        m[4]["imageResponseCard"],
        json!({"title": "Image", "imageUrl": "https://x/i.png"})
    );
    assert_eq!(
        m[5],
        json!({"contentType": "PlainText", "content": "https://x/v.mp4"})
    );
    assert_eq!(v["sessionState"]["dialogAction"]["type"], "Close");
}

#[test]
fn err_lex_caller_names() {
    for (status, reason, name) in [
        (
            400,
            botbridge::error::Reason::BadRequest,
            "ValidationException",
        ),
        (
            429,
            botbridge::error::Reason::RateLimited,
            "ThrottlingException",
        ),
        (
            502,
            botbridge::error::Reason::BackendStatus,
            "BadGatewayException",
        ),
        (
            401,
            botbridge::error::Reason::Unauthorized,
            "UnrecognizedClientException",
        ),
    ] {
        let e = botbridge::error::ProxyError::new(status, reason, "m");
        let mut got = String::new();
        lex::Lex.error_headers(&e, &mut |_, v| got = v.to_owned());
        assert_eq!(got, name);
        assert_eq!(
            lex::Lex.error_status(&e),
            if status == 401 { 403 } else { status }
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&lex::render_error(&e)).unwrap(),
            json!({"message": "m"})
        );
    }
}

/// A Dialogflow bot's answer with these response messages, for a CSML caller.
fn df_for_csml(messages: Value) -> Value {
    let body =
        json!({"responseId": "r", "queryResult": {"responseMessages": messages}}).to_string();
    let answer = dialogflow::parse_answer(200, body.as_bytes(), false).unwrap();
    let body = any_request(C);
    let req = C.parse_request("/", body.as_bytes()).unwrap();
    serde_json::from_slice(&C.render_answer(&req, &answer, &ctx(Legacy))).unwrap()
}

fn df_req(query: Value) -> String {
    json!({"queryInput": query, "queryParams": {"parameters": {"plan": "gold"}}}).to_string()
}

#[test]
fn req_dialogflow_text_to_csml_haptik_rasa() {
    let body = df_req(json!({"text": {"text": "hello"}, "languageCode": "en"}));
    let req = dialogflow::parse_request(DF_PATH, body.as_bytes()).unwrap();
    let (c, h, r) = to_csml_haptik_rasa(&req);
    assert_eq!(
        (
            c["payload"]["content"]["text"].clone(),
            c["client"]["user_id"].clone()
        ),
        (json!("hello"), json!("user-1"))
    );
    assert_eq!(h["message_body"], "hello");
    assert_eq!(r["sender"], "user-1");
}

#[test]
fn req_dialogflow_event_to_flow_trigger() {
    let body = df_req(json!({"event": {"event": "welcome"}, "languageCode": "en"}));
    let req = dialogflow::parse_request(DF_PATH, body.as_bytes()).unwrap();
    assert_eq!(
        req.content,
        Content::FlowTrigger {
            flow_id: "welcome".into(),
            close_flows: None
        }
    );
    let (c, h, _) = to_csml_haptik_rasa(&req);
    assert_eq!(
        c["payload"],
        json!({"content_type": "flow_trigger", "content": {"flow_id": "welcome"}})
    );
    assert_eq!(h["message_body"], "welcome");
    assert_eq!(
        rasa::render_request(&req, FlowTriggerPolicy::Reject)
            .unwrap_err()
            .status,
        422
    );
}

#[test]
fn req_dialogflow_intent_to_payload() {
    let body = df_req(json!({"intent": {"intent": "projects/p/locations/l/agents/a/intents/yes"}}));
    let req = dialogflow::parse_request(DF_PATH, body.as_bytes()).unwrap();
    let (c, _, _) = to_csml_haptik_rasa(&req);
    assert_eq!(c["payload"]["content_type"], "payload");
}

#[test]
fn req_dialogflow_parameters_to_metadata() {
    let body = df_req(json!({"text": {"text": "x"}}));
    let req = dialogflow::parse_request(DF_PATH, body.as_bytes()).unwrap();
    let (c, h, r) = to_csml_haptik_rasa(&req);
    assert_eq!(c["metadata"], json!({"plan": "gold"}));
    assert_eq!(r["metadata"], json!({"plan": "gold"}));
    assert!(!h.to_string().contains("gold"));
}

#[test]
fn req_dialogflow_bad_request_refused() {
    for (path, body) in [
        (DF_PATH, "{}"),
        (DF_PATH, r#"{"queryInput":{"text":{"text":""}}}"#),
        (
            DF_PATH,
            r#"{"queryInput":{"text":{"text":"x"}},"queryParams":{"parameters":[1]}}"#,
        ),
    ] {
        let e = dialogflow::parse_request(path, body.as_bytes()).unwrap_err();
        assert_eq!(e.status, 400, "{body}");
        let v: Value = serde_json::from_slice(&dialogflow::render_error(&e)).unwrap();
        assert_eq!(v["error"]["status"], "INVALID_ARGUMENT");
    }
}

#[test]
fn req_to_dialogflow_text_event_parameters() {
    let flow = csml_req(json!({"content_type": "flow_trigger", "content": {"flow_id": "start"}}));
    let mut req = csml::parse_request(flow.as_bytes()).unwrap();
    req.business_id = Some(343);
    let v: Value = serde_json::from_slice(&dialogflow::render_request(&req, "en")).unwrap();
    assert_eq!(
        v,
        json!({"queryInput": {"event": {"event": "start"}, "languageCode": "en"},
                         "queryParams": {"parameters": {"plan": "gold", "seats": 3, "business_id": 343}}})
    );
    let click = haptik::parse_request(
        br#"{"user":{"auth_id":"u"},"message_body":"YES","message_type":0,"business_id":343}"#,
    )
    .unwrap();
    let v: Value = serde_json::from_slice(&dialogflow::render_request(&click, "de")).unwrap();
    assert_eq!(
        v["queryInput"],
        json!({"text": {"text": "YES"}, "languageCode": "de"})
    );
}

#[test]
fn ans_dialogflow_text_lines() {
    let v = df_for_csml(
        json!([{"text": {"text": ["One", "Two"]}}, {"outputAudioText": {"text": "Three"}}]),
    );
    let texts: Vec<Value> = csml_payloads(&v)
        .iter()
        .map(|p| p["content"]["text"].clone())
        .collect();
    assert_eq!(texts, [json!("One"), json!("Two"), json!("Three")]);
}

#[test]
fn ans_dialogflow_chips_to_question() {
    let v = df_for_csml(json!([{"text": {"text": ["Pick"]}},
        {"payload": {"richContent": [[{"type": "chips", "options": [{"text": "A"}, {"text": "B"}]}]]}}]));
    let p = csml_payloads(&v);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0]["content"]["title"], "Pick");
    assert_eq!(p[0]["content"]["buttons"][1]["content"]["title"], "B");
}

#[test]
fn ans_dialogflow_image_button_info() {
    let v = df_for_csml(json!([{"payload": {"richContent": [[
        {"type": "image", "rawUrl": "https://x/i.png"},
        {"type": "button", "text": "Open", "link": "https://x/o"},
        {"type": "info", "title": "Docs", "subtitle": "read", "actionLink": "https://x/d"}]]}}]));
    let p = csml_payloads(&v);
    assert_eq!(
        p[0],
        json!({"content_type": "image", "content": {"url": "https://x/i.png"}})
    );
    assert_eq!(p[1]["content"]["url"], "https://x/o");
    assert_eq!(
        (
            p[2]["content"]["url"].clone(),
            p[2]["content"]["text"].clone()
        ),
        (json!("https://x/d"), json!("Docs"))
    );
}

#[test]
fn ans_dialogflow_other_payload_dropped_kept_for_dialogflow() {
    let body =
        br#"{"queryResult":{"responseMessages":[{"payload":{"mine":1}},{"liveAgentHandoff":{}}]}}"#;
    assert_eq!(
        dialogflow::parse_answer(200, body, false).unwrap().dropped,
        2
    );
    let kept = dialogflow::parse_answer(200, body, true).unwrap();
    let req =
        dialogflow::parse_request(DF_PATH, br#"{"queryInput":{"text":{"text":"x"}}}"#).unwrap();
    let v: Value = serde_json::from_slice(&dialogflow::render_answer(&req, &kept, "r")).unwrap();
    assert_eq!(
        v["queryResult"]["responseMessages"],
        json!([{"payload": {"mine": 1}}, {"liveAgentHandoff": {}}])
    );
}

#[test]
fn ans_dialogflow_end_interaction() {
    let v = df_for_csml(json!([{"text": {"text": ["Bye"]}}, {"endInteraction": {}}]));
    assert_eq!(v["conversation_end"], true);
}

#[test]
fn ans_to_dialogflow_caller_shapes() {
    let req =
        dialogflow::parse_request(DF_PATH, br#"{"queryInput":{"text":{"text":"x"}}}"#).unwrap();
    let answer = ChatAnswer {
        replies: vec![
            Reply::Text("Hi".into()),
            Reply::Url {
                url: "https://x".into(),
                text: Some("Docs".into()),
                title: None,
            },
            Reply::Media {
                kind: MediaKind::Image,
                url: "https://x/i.png".into(),
            },
            Reply::Media {
                kind: MediaKind::File,
                url: "https://x/f.pdf".into(),
            },
        ],
        conversation_end: Some(true),
        ..ChatAnswer::default()
    };
    let v: Value = serde_json::from_slice(&dialogflow::render_answer(&req, &answer, "r")).unwrap();
    let m = &v["queryResult"]["responseMessages"];
    assert_eq!(m[0], json!({"text": {"text": ["Hi"]}}));
    assert_eq!(
        m[1]["payload"]["richContent"][0][0],
        json!({"type": "button", "text": "Docs", "link": "https://x"})
    );
    assert_eq!(
        m[2]["payload"]["richContent"][0][0]["rawUrl"],
        "https://x/i.png"
    );
    assert_eq!(m[3]["payload"]["richContent"][0][0]["text"], "Open file");
    assert_eq!(m[4], json!({"endInteraction": {}}));
    assert_eq!(v["queryResult"]["text"], "x");
}

#[test]
fn err_dialogflow_caller_shape() {
    for (status, name) in [
        (400, "INVALID_ARGUMENT"),
        (401, "UNAUTHENTICATED"),
        (403, "PERMISSION_DENIED"),
        (429, "RESOURCE_EXHAUSTED"),
        (502, "UNAVAILABLE"),
        (504, "DEADLINE_EXCEEDED"),
    ] {
        let e =
            botbridge::error::ProxyError::new(status, botbridge::error::Reason::BadRequest, "m");
        let v: Value = serde_json::from_slice(&dialogflow::render_error(&e)).unwrap();
        assert_eq!(
            v,
            json!({"error": {"code": status, "message": "m", "status": name}})
        );
    }
}

// ------------------------------------------------------------------------------------------
// Microsoft Bot Framework Direct Line 3.0 (docs/mapping.md, its section). Self-contained, below
// everything else.

use botbridge::dialect::directline::{self as dl, Directline};
use botbridge::dialect::{ChannelCaller, Posted};

/// A Direct Line caller's message, as the bots get it.
fn dl_message(activity: Value) -> (Value, Value, Value) {
    let body = activity.to_string();
    let Posted::Message(req) = dl::parse_activity(body.as_bytes(), None, None).unwrap() else {
        panic!("a message");
    };
    to_csml_haptik_rasa(&req)
}

#[test]
fn req_directline_message_to_bots() {
    let (csml, haptik, rasa) = dl_message(
        json!({"type": "message", "from": {"id": "ann"}, "text": "Hello", "locale": "en"}),
    );
    assert_eq!(csml["client"]["user_id"], "ann");
    assert_eq!(
        csml["payload"],
        json!({"content_type": "text", "content": {"text": "Hello"}})
    );
    assert_eq!(
        (&haptik["user"]["auth_id"], &haptik["message_body"]),
        (&json!("ann"), &json!("Hello"))
    );
    assert_eq!(
        (&rasa["sender"], &rasa["message"]),
        (&json!("ann"), &json!("Hello"))
    );
    // With a token, its user speaks whatever `from` says.
    let body = br#"{"type":"message","from":{"id":"eve"},"text":"Hi"}"#;
    let Posted::Message(req) = dl::parse_activity(body, Some("ann"), None).unwrap() else {
        panic!("a message");
    };
    assert_eq!(req.user_id, "ann");
}

#[test]
fn req_directline_postback_value_to_payload() {
    let (csml, _, rasa) = dl_message(
        json!({"type": "message", "from": {"id": "ann"}, "text": "Yes", "value": "YES"}),
    );
    assert_eq!(
        csml["payload"],
        json!({"content_type": "payload", "content": {"payload": "YES"}})
    );
    assert_eq!(rasa["message"], "YES");
    // A value that is not a string: its JSON text.
    let (csml, _, _) =
        dl_message(json!({"type": "message", "from": {"id": "ann"}, "value": {"pick": 2}}));
    assert_eq!(csml["payload"]["content"]["payload"], r#"{"pick":2}"#);
}

#[test]
fn req_directline_channel_data_to_metadata() {
    let (csml, haptik, rasa) = dl_message(
        json!({"type": "message", "from": {"id": "ann"}, "text": "x",
        "channelData": {"clientActivityID": "c-1", "plan": "gold"}}),
    );
    let data = json!({"clientActivityID": "c-1", "plan": "gold"});
    assert_eq!((&csml["metadata"], &rasa["metadata"]), (&data, &data));
    assert!(haptik.get("metadata").is_none());
    // Channel data that is not an object stays with the echo only.
    let (csml, _, rasa) = dl_message(
        json!({"type": "message", "from": {"id": "ann"}, "text": "x", "channelData": 7}),
    );
    assert_eq!(
        (csml.get("metadata"), rasa.get("metadata")),
        (Some(&json!({})), None)
    );
}

#[test]
fn req_directline_other_activities_echoed_only() {
    for kind in ["typing", "event", "conversationUpdate", "invoke"] {
        let body = json!({"type": kind, "from": {"id": "ann"}, "name": "x"}).to_string();
        let posted = dl::parse_activity(body.as_bytes(), None, None).unwrap();
        assert!(matches!(posted, Posted::Other), "{kind}");
    }
    // The echo keeps what a client reads back, with its place; nothing else the caller sent.
    let at = botbridge::dialect::Stamp {
        conversation: "c",
        id: "c|0000003",
        timestamp: "2026-01-01T00:00:00.000Z",
    };
    let body =
        br#"{"type":"typing","from":{"id":"eve","name":"Eve"},"pad":"x","channelData":{"k":1}}"#;
    let echo: Value = serde_json::from_slice(&Directline.echo(body, &at, "ann")).unwrap();
    assert_eq!(
        echo,
        json!({"type": "typing", "channelData": {"k": 1}, "from": {"id": "ann", "role": "user", "name": "Eve"},
               "id": "c|0000003", "timestamp": "2026-01-01T00:00:00.000Z", "channelId": "directline",
               "conversation": {"id": "c"}})
    );
}

#[test]
fn req_directline_bad_activity_refused() {
    for body in [
        &b"not json"[..],
        br#"[1]"#,
        br#"{"type":"message","from":{"id":"ann"}}"#,
        br#"{"type":"message","from":{"id":"ann"},"text":"  ","value":" "}"#,
        br#"{"type":"message","text":"no user"}"#,
    ] {
        let e = dl::parse_activity(body, None, None).unwrap_err();
        assert_eq!(e.status, 400, "{}", String::from_utf8_lossy(body));
        let v: Value = serde_json::from_slice(&dl::render_error(&e)).unwrap();
        assert_eq!(v["error"]["code"], "BadArgument");
    }
}

/// A Direct Line bot.
fn dl_bot() -> Box<dyn Bot> {
    bot("directline", "secret = \"bot-secret\"")
}

#[test]
fn req_to_directline_bot_activity() {
    let b = dl_bot();
    let ctx = rctx(FlowTriggerPolicy::Text);
    let text = csml_req(json!({"content_type": "text", "content": {"text": "Hi"}}));
    let req = csml::parse_request(text.as_bytes()).unwrap();
    let v: Value = serde_json::from_slice(&b.render_request(&req, &ctx).unwrap()).unwrap();
    assert_eq!(
        v,
        json!({"type": "message", "from": {"id": "jane doe", "role": "user"}, "text": "Hi",
               "channelData": {"plan": "gold", "seats": 3}})
    );
    let click = csml_req(json!({"content_type": "payload", "content": {"payload": "BLUE"}}));
    let req = csml::parse_request(click.as_bytes()).unwrap();
    let v: Value = serde_json::from_slice(&b.render_request(&req, &ctx).unwrap()).unwrap();
    assert_eq!((&v["text"], &v["value"]), (&json!("BLUE"), &json!("BLUE")));
}

#[test]
fn ans_to_directline_caller_shapes() {
    let answer = ChatAnswer {
        replies: vec![
            Reply::Text("Hi".into()),
            Reply::Question {
                title: "Pick".into(),
                buttons: vec![
                    botbridge::model::Button {
                        title: "Red".into(),
                        payload: None,
                    },
                    botbridge::model::Button {
                        title: "Blue".into(),
                        payload: Some("BLUE".into()),
                    },
                ],
            },
            Reply::Url {
                url: "https://x".into(),
                text: Some("Docs".into()),
                title: None,
            },
            Reply::Media {
                kind: MediaKind::Image,
                url: "https://x/i.png".into(),
            },
        ],
        ..ChatAnswer::default()
    };
    let mut n = 0;
    let mut next = |i: usize| {
        n += 1;
        (format!("c|000000{}", i + 2), "t".to_owned())
    };
    let out: Vec<Value> = (Directline
        .replies(&answer, "c|0000001", "bot", &mut next)
        .iter())
    .map(|a| serde_json::from_slice(a).unwrap())
    .collect();
    assert_eq!(n, 4);
    for (i, a) in out.iter().enumerate() {
        assert_eq!(
            (&a["type"], &a["replyToId"]),
            (&json!("message"), &json!("c|0000001"))
        );
        assert_eq!(
            a["from"],
            json!({"id": "bot", "name": "bot", "role": "bot"})
        );
        assert_eq!(a["id"], format!("c|000000{}", i + 2));
    }
    assert_eq!(out[0]["text"], "Hi");
    assert_eq!(
        out[1]["attachments"],
        json!([{"contentType": dl::HERO_CARD, "content": {"text": "Pick", "buttons": [
            {"type": "imBack", "title": "Red", "value": "Red"},
            {"type": "postBack", "title": "Blue", "value": "BLUE"}]}}])
    );
    assert_eq!(out[2]["text"], "Docs\nhttps://x");
    assert_eq!(
        out[3]["attachments"],
        json!([{"contentType": "image/*", "contentUrl": "https://x/i.png"}])
    );
}

#[test]
fn ans_directline_bot_to_callers() {
    let activities = json!([
        {"type": "message", "text": "Hello"},
        {"type": "message", "attachments": [{"contentType": dl::HERO_CARD, "content": {"title": "Pick one",
            "buttons": [{"type": "imBack", "title": "Red", "value": "Red"},
                        {"type": "postBack", "title": "Blue", "value": "BLUE"}]}}]},
        {"type": "message", "text": "Suggestions", "suggestedActions": {"actions": [{"type": "imBack", "title": "Yes", "value": "Yes"}]}},
        {"type": "message", "attachments": [{"contentType": "image/png", "contentUrl": "https://x/cat.png"}]},
        {"type": "message", "attachments": [{"contentType": dl::ADAPTIVE_CARD, "content": {"type": "AdaptiveCard",
            "body": [{"type": "TextBlock", "text": "Adaptive says hi"}, {"type": "Image", "url": "https://x"}]}}]},
        {"type": "message", "attachments": [{"contentType": "application/vnd.microsoft.card.thumbnail", "content": {"title": "Thumb"}}]},
        {"type": "message", "attachments": [{"contentType": "application/vnd.microsoft.card.thumbnail", "content": {}}]},
        {"type": "message", "attachments": [{"contentType": "application/vnd.microsoft.card.receipt", "content": {"title": "R"}}]},
        {"type": "typing"}
    ]);
    let body = activities.to_string();
    let bot = dl_bot();
    let answer = bot.parse_answer(200, body.as_bytes(), false).unwrap();
    let question = |title: &str, b: &[(&str, Option<&str>)]| Reply::Question {
        title: title.to_owned().into(),
        buttons: b
            .iter()
            .map(|(t, p)| botbridge::model::Button {
                title: (*t).to_owned().into(),
                payload: p.map(|p| p.to_owned().into()),
            })
            .collect(),
    };
    assert_eq!(
        answer.replies,
        vec![
            Reply::Text("Hello".into()),
            question("Pick one", &[("Red", None), ("Blue", Some("BLUE"))]),
            question("Suggestions", &[("Yes", None)]),
            Reply::Media {
                kind: MediaKind::Image,
                url: "https://x/cat.png".into()
            },
            Reply::Text("Adaptive says hi".into()),
            Reply::Text("Thumb".into()),
        ]
    );
    assert_eq!(
        answer.dropped, 2,
        "the empty card and the receipt card, counted"
    );
}

#[test]
fn err_directline_caller_shape() {
    use botbridge::error::{ProxyError, Reason};
    for (status, reason, code) in [
        (400, Reason::BadRequest, "BadArgument"),
        (401, Reason::Unauthorized, "Unauthorized"),
        (403, Reason::Forbidden, "Forbidden"),
        (403, Reason::TokenExpired, "TokenExpired"),
        (404, Reason::NotFound, "NotFound"),
        (429, Reason::RateLimited, "TooManyRequests"),
        (502, Reason::BackendConnect, "BotRejectedActivity"),
        (503, Reason::CircuitOpen, "ServiceUnavailable"),
        (504, Reason::BackendTimeout, "BotTimeout"),
        (500, Reason::Internal, "ServiceError"),
    ] {
        let e = ProxyError::new(status, reason, "m");
        let v: Value = serde_json::from_slice(&Directline.render_error(&e)).unwrap();
        assert_eq!(v, json!({"error": {"code": code, "message": "m"}}));
        assert_eq!(Directline.error_status(&e), status);
    }
}
