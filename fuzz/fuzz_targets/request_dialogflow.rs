//! A Dialogflow CX caller's `detectIntent` body: parsed, then rendered for every bot and read back.
#![no_main]

use std::sync::OnceLock;

use botbridge::dialect::Bot;
use libfuzzer_sys::fuzz_target;

static BOTS: OnceLock<Vec<Box<dyn Bot>>> = OnceLock::new();

fuzz_target!(|body: &[u8]| {
    botbridge_fuzz::fuzz_request(
        "dialogflow-cx",
        body,
        BOTS.get_or_init(botbridge_fuzz::bots),
    );
});
