//! A CSML Chat API bot's answer, parsed with and without its payloads kept for pass-through; the two
//! readings (the one-pass reader and serde step by step) must agree.
#![no_main]

use botbridge::dialect::csml;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let (one_pass, kept) = (
        csml::parse_answer(body, false),
        csml::parse_answer(body, true),
    );
    botbridge_fuzz::check_readings_agree(&one_pass, &kept);
    botbridge_fuzz::check_parsed(one_pass);
    botbridge_fuzz::check_parsed(kept);
});
