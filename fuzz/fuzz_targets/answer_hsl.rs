//! One HSL body (Haptik's rich message), parsed directly and as it reaches the proxy: inside an HSL
//! answer's `message` array, and encoded in a legacy answer's `bot_messages` string.
#![no_main]

use botbridge::dialect::{haptik, hsl};
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;

fuzz_target!(|body: &[u8]| {
    let Ok(text) = std::str::from_utf8(body) else {
        return;
    };
    let Ok(raw) = serde_json::from_str::<&RawValue>(text) else {
        return;
    };
    let mut replies = Vec::new();
    match hsl::parse(raw, "message[0].body", &mut replies) {
        Ok(_) => botbridge_fuzz::check_answer(&botbridge::model::ChatAnswer {
            replies,
            ..Default::default()
        }),
        Err(e) => botbridge_fuzz::check_error(&e),
    }
    let hsl_answer = format!(
        r#"{{"version":"1.0","message":[{{"id":1,"body":{}}}]}}"#,
        raw.get()
    );
    botbridge_fuzz::check_parsed(haptik::parse_answer(200, hsl_answer.as_bytes()));
    let legacy = serde_json::json!([{ "bot_messages": [raw.get()] }]).to_string();
    botbridge_fuzz::check_parsed(haptik::parse_answer(200, legacy.as_bytes()));
});
