//! A page of a Direct Line bot's activities: the replies to one activity read from it, rendered
//! for every caller, and rendered back as activities that read the same.
#![no_main]

use std::sync::OnceLock;

use botbridge::dialect::{directline, registry, Bot};
use libfuzzer_sys::fuzz_target;

static BOT: OnceLock<Box<dyn Bot>> = OnceLock::new();

fuzz_target!(|body: &[u8]| {
    // A page as a Direct Line bot's conversation reads: the replies to one activity, each read back.
    let bot = BOT.get_or_init(|| {
        let table = toml::from_str("secret = \"fuzz-secret\"").unwrap();
        registry::bot_dialect("directline")
            .unwrap()
            .configure("b", table)
            .unwrap()
    });
    if let Ok(page) = bot.channel().unwrap().page(200, body, "a-1") {
        let joined = format!(
            "[{}]",
            page.replies
                .iter()
                .map(|r| String::from_utf8_lossy(r))
                .collect::<Vec<_>>()
                .join(",")
        );
        let answer = bot
            .parse_answer(200, joined.as_bytes(), false)
            .expect("replies read back");
        botbridge_fuzz::check_answer(&answer);
    }
    match directline::replies_to(body, "a-1") {
        Ok(answer) => {
            botbridge_fuzz::check_answer(&answer);
            let page = serde_json::to_vec(&directline::reply_activities(&answer, "a-1")).unwrap();
            let again = directline::replies_to(&page, "a-1").expect("our own activities read back");
            assert_eq!(
                again.replies.len(),
                answer.replies.len(),
                "a reply was lost on the way"
            );
        }
        Err(e) => botbridge_fuzz::check_parsed(Err(e)),
    }
});
