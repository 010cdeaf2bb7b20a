//! A bearer token as a Dialogflow caller sends it: read for the account it names, verified against
//! a key, with the claims checked; never a panic, never accepted unless signed by the key. A token
//! the proxy mints over the input as a claim verifies.
#![no_main]

use std::sync::OnceLock;

use botbridge::jwt::{self, PrivateKey};
use libfuzzer_sys::fuzz_target;

static KEY: OnceLock<PrivateKey> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let key = KEY.get_or_init(|| {
        jwt::private_key_from_pem(include_str!("../../tests/fixtures/dialogflow/test-key.pem"))
            .unwrap()
    });
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let _ = jwt::peek(token);
    if let Ok(claims) = jwt::verify(token, &key.public()) {
        // Only a token signed with the key verifies: the input would have to carry its signature.
        assert!(token.split('.').count() == 3);
        let _ = jwt::seconds(&claims, "exp");
    }
    let mut claims = jwt::Claims::new();
    claims.insert("iss".into(), token.into());
    let minted = jwt::sign(key, Some(token), &claims);
    let back = jwt::verify(&minted, &key.public()).expect("a minted token verifies");
    assert_eq!(back["iss"], token);
});
