//! A Direct Line client's activity: parsed (with and without the conversation's user), then a
//! message checked like every caller's request and sent on as a Direct Line bot's user activity.
#![no_main]

use std::sync::OnceLock;

use botbridge::dialect::directline::{self, Directline, Posted};
use botbridge::dialect::{Bot, ChannelCaller, Stamp};
use libfuzzer_sys::fuzz_target;

static BOTS: OnceLock<Vec<Box<dyn Bot>>> = OnceLock::new();

fuzz_target!(|body: &[u8]| {
    // What the conversation keeps of it: JSON, speaking as the user given, stamped.
    let at = Stamp {
        conversation: "c",
        id: "c|0000001",
        timestamp: "t",
    };
    let echo: serde_json::Value = serde_json::from_slice(&Directline.echo(body, &at, "u")).unwrap();
    assert_eq!(
        (&echo["from"]["id"], &echo["id"]),
        (&serde_json::json!("u"), &serde_json::json!("c|0000001"))
    );
    if let Some(id) = Directline.client_activity_id(body) {
        assert!(!id.is_empty() && id.len() <= 128);
    }
    for owner in [None, Some("fuzz-user")] {
        match directline::parse_activity(body, owner, None) {
            Ok(Posted::Message(req)) => {
                if let Some(o) = owner {
                    assert_eq!(
                        req.user_id, o,
                        "a conversation's token spoke for someone else"
                    );
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
