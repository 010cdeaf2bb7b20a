//! A page of a Direct Line bot's activities: the replies to one activity read from it, rendered
//! for every caller, and rendered back as activities that read the same.
#![no_main]

use botbridge::dialect::directline;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    match directline::replies_to(body, "a-1") {
        Ok(answer) => {
            botbridge_fuzz::check_answer(&answer);
            let page = serde_json::to_vec(&directline::reply_activities(&answer, "a-1")).unwrap();
            let again = directline::replies_to(&page, "a-1").expect("our own activities read back");
            assert_eq!(again.replies.len(), answer.replies.len(), "a reply was lost on the way");
        }
        Err(e) => botbridge_fuzz::check_parsed(Err(e)),
    }
});
