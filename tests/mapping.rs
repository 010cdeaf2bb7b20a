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
