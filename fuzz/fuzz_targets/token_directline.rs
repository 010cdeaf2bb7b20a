//! A channel conversation token as a caller presents it: verified without panicking, never
//! accepted unless minted by the key (nor when it expires further ahead than a token lasts); and a
//! grant built from the input survives minting.
#![no_main]

use botbridge::session::{token_key_id, TokenError, TokenGrant, TokenKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = TokenKey::new(b"a fuzzing key of some length");
    let text = String::from_utf8_lossy(data);
    if let Ok(grant) = key.verify(&text, 0, u64::MAX) {
        assert_eq!(
            key.mint(&grant),
            text,
            "a token accepted that the key did not mint"
        );
    }
    let _ = token_key_id(&text);
    let (conversation, rest) = data.split_at(data.len() / 2);
    let (user, route) = rest.split_at(rest.len() / 2);
    let grant = TokenGrant {
        conversation: String::from_utf8_lossy(conversation).into_owned(),
        user: String::from_utf8_lossy(user).into_owned(),
        route: String::from_utf8_lossy(route).into_owned(),
        expires: u64::from(data.first().copied().unwrap_or(1)) + 1,
    };
    let token = key.mint(&grant);
    assert_eq!(key.verify(&token, 0, 1_800), Ok(grant.clone()));
    assert_eq!(token_key_id(&token), Some(key.id()));
    assert_eq!(
        key.verify(&token, grant.expires, 1_800),
        Err(TokenError::Expired)
    );
    let other = TokenKey::new(b"another fuzzing key entirely");
    assert_eq!(other.verify(&token, 0, 1_800), Err(TokenError::Invalid));
});
