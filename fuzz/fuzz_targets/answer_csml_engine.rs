//! A CSML engine's `/run` answer, at a success status (with and without payloads kept) and at an
//! error status.
#![no_main]

use botbridge::dialect::csml_engine;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    for keep_raw in [false, true] {
        botbridge_fuzz::check_parsed(csml_engine::parse_answer(200, body, keep_raw));
    }
    let status = botbridge_fuzz::error_status(body);
    let parsed = csml_engine::parse_answer(status, body, false);
    assert!(parsed.is_err(), "an error status is an error");
    botbridge_fuzz::check_parsed(parsed);
});
