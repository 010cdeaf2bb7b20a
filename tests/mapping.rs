//! Golden tests for the mapping table (docs/mapping.md): one test per row, named after it, run on the
//! pure dialect code (the end-to-end tests cover the same paths through the running proxy).

use std::time::{Duration, UNIX_EPOCH};

use botbridge::dialect::{
    csml, haptik, AnswerContext, AnswerShape, BackendRequestContext, BackendSpec,
    FlowTriggerPolicy, IngressDialect,
};
use botbridge::signing::CsmlAuth;
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
    let spec = BackendSpec::Haptik {
        token: "t".into(),
        client_id: "c".into(),
    };
    let ctx = BackendRequestContext {
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
    let spec = BackendSpec::Csml {
        auth: CsmlAuth::Plain("k".into()),
    };
    let ctx = BackendRequestContext {
        request_id: "other",
        business_id: None,
        flow_trigger: FlowTriggerPolicy::Reject,
    };
    serde_json::from_slice(&spec.render_request(&parsed, &ctx).unwrap()).unwrap()
}

fn ctx(shape: AnswerShape) -> AnswerContext<'static> {
    AnswerContext {
        message_id: 100,
        received: UNIX_EPOCH + Duration::from_secs(1),
        request_id: "rid",
        interaction_id: "iid",
        business_name: "biz",
        bot_name: "bot",
        channel_id: "chan",
        shape,
    }
}

fn any_request(ingress: IngressDialect) -> String {
    match ingress {
        IngressDialect::Haptik => {
            r#"{"user":{"auth_id":"u"},"message_body":"x","business_id":1}"#.into()
        }
        IngressDialect::Csml => {
            r#"{"client":{"user_id":"u"},"payload":{"content_type":"text","content":{"text":"x"}}}"#
                .into()
        }
    }
}

/// A CSML bot's answer with these payloads, rendered for a caller.
fn from_csml(
    payloads: &[Value],
    ingress: IngressDialect,
    shape: AnswerShape,
) -> Result<Value, u16> {
    let messages: Vec<Value> = payloads.iter().map(|p| json!({"payload": p})).collect();
    let body = json!({"messages": messages}).to_string();
    let answer = csml::parse_answer(body.as_bytes(), ingress == IngressDialect::Csml)
        .map_err(|e| e.status)?;
    let req_body = any_request(ingress);
    let req = ingress.parse_request(req_body.as_bytes()).unwrap();
    Ok(serde_json::from_slice(&ingress.render_answer(&req, &answer, &ctx(shape))).unwrap())
}

/// A Haptik bot's current-shape answer with these HSL bodies, rendered for a caller.
fn from_hsl(bodies: &[Value], ingress: IngressDialect, shape: AnswerShape) -> Value {
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
    let req = ingress.parse_request(req_body.as_bytes()).unwrap();
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

use AnswerShape::{Hsl, Legacy};
use IngressDialect::{Csml as C, Haptik as H};

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
    let req = C.parse_request(req_body.as_bytes()).unwrap();
    let v: Value = serde_json::from_slice(&C.render_answer(&req, &answer, &ctx(Legacy))).unwrap();
    assert_eq!(
        csml_payloads(&v),
        [json!({"content_type":"text","content":{"text":"Hello there!"}})]
    );
    let req_body = any_request(H);
    let req = H.parse_request(req_body.as_bytes()).unwrap();
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
