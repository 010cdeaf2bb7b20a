//! A Dialogflow CX agent's `DetectIntentResponse`, at a success and an error status, read with and
//! without keeping its own messages.
#![no_main]

use botbridge::dialect::dialogflow;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let one_pass = dialogflow::parse_answer(200, body, false);
    let kept = dialogflow::parse_answer(200, body, true);
    botbridge_fuzz::check_readings_agree(&one_pass, &kept);
    botbridge_fuzz::check_parsed(one_pass);
    botbridge_fuzz::check_parsed(kept);
    let parsed = dialogflow::parse_answer(botbridge_fuzz::error_status(body), body, false);
    assert!(parsed.is_err(), "an error status is an error");
    botbridge_fuzz::check_parsed(parsed);
});
