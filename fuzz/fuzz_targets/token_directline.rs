//! A Direct Line conversation token as a caller presents it: verified without panicking, never
//! accepted unless minted by the key; and a grant built from the input survives minting.
#![no_main]

use botbridge::dialect::directline::{TokenError, TokenGrant, TokenKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = TokenKey::new(&[1; 32]);
    let text = String::from_utf8_lossy(data);
    if let Ok(grant) = key.verify(&text, 0) {
        assert_eq!(key.mint(&grant), text, "a token accepted that the key did not mint");
    }
    let (conversation, user) = data.split_at(data.len() / 2);
    let grant = TokenGrant {
        conversation: String::from_utf8_lossy(conversation).into_owned(),
        user: String::from_utf8_lossy(user).into_owned(),
        expires: u64::from(data.first().copied().unwrap_or(1)) + 1,
        credential: [data.last().copied().unwrap_or(0); 32],
    };
    let token = key.mint(&grant);
    assert_eq!(key.verify(&token, 0), Ok(grant.clone()));
    assert_eq!(botbridge::session::token_credential(&token), Some(grant.credential));
    assert_eq!(key.verify(&token, grant.expires), Err(TokenError::Expired));
    assert_eq!(TokenKey::new(&[2; 32]).verify(&token, 0), Err(TokenError::Invalid));
});
