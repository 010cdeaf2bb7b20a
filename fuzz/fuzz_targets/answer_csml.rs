//! A CSML Chat API bot's answer, parsed with and without its payloads kept for pass-through.
#![no_main]

use botbridge::dialect::csml;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    botbridge_fuzz::check_parsed(csml::parse_answer(body, false));
    botbridge_fuzz::check_parsed(csml::parse_answer(body, true));
});
