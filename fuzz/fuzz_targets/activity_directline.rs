//! A Direct Line client's activity: parsed (with and without the conversation's user), then a
//! message checked like every caller's request and sent on as a Direct Line bot's user activity.
#![no_main]

use std::sync::OnceLock;

use botbridge::dialect::directline::{self, Posted};
use botbridge::dialect::Bot;
use libfuzzer_sys::fuzz_target;

static BOTS: OnceLock<Vec<Box<dyn Bot>>> = OnceLock::new();

fuzz_target!(|body: &[u8]| {
    for owner in [None, Some("fuzz-user")] {
        match directline::parse_activity(body, owner, None) {
            Ok(Posted::Message(req)) => {
                if let Some(o) = owner {
                    assert_eq!(req.user_id, o, "a conversation's token spoke for someone else");
                }
                botbridge_fuzz::check_request(&req, BOTS.get_or_init(botbridge_fuzz::bots));
                let text = match &req.content {
                    botbridge::model::Content::Text(t) | botbridge::model::Content::Payload(t) => t,
                    _ => unreachable!("an activity is a text or a payload"),
                };
                let a = directline::user_activity(&req, text);
                assert_eq!(a["from"]["id"], *req.user_id);
            }
            Ok(Posted::Other) => {}
            Err(e) => {
                assert_eq!(e.status, 400, "an activity error is a 400: {e}");
                botbridge_fuzz::check_error(&e);
            }
        }
    }
});
