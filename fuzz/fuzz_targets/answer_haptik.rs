//! A Haptik bot's answer (legacy array, HSL object or error body), at a success and an error status.
#![no_main]

use botbridge::dialect::haptik;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    botbridge_fuzz::check_parsed(haptik::parse_answer(200, body));
    let parsed = haptik::parse_answer(botbridge_fuzz::error_status(body), body);
    assert!(parsed.is_err(), "an error status is an error");
    botbridge_fuzz::check_parsed(parsed);
});
