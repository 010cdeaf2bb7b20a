//! Runs one signing step N times, for counting its instructions under callgrind (bench/RESULTS.md):
//! `sigv4` (a Lex bot's request: canonical request, hashes, HMAC with the day's key), `sigv4-key`
//! (the day's signing key: four HMACs) or `jwt` (a Dialogflow token grant: an RS256 JWT).
//!
//! `valgrind --tool=callgrind target/release/examples/signing_cost sigv4 1000` and the same with
//! 2000: the difference divided by 1000 is one step's instructions, without the start-up.

use botbridge_core::jwt;
use botbridge_core::sigv4::{self, SigningKey};

fn main() {
    let mut args = std::env::args().skip(1);
    let what = args.next().unwrap_or_default();
    let n: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(1000);
    let scope = sigv4::Scope {
        date: "20261206",
        region: "us-east-1",
        service: "lex",
    };
    let body = br#"{"text":"Where is my order?","requestAttributes":{"business_id":"343"}}"#;
    let mut sink = 0usize;
    match what.as_str() {
        "sigv4" => {
            let key = SigningKey::derive("bench-secret", &scope);
            for i in 0..n {
                let date = sigv4::amz_date(1_796_589_426 + i % 60);
                let headers = [
                    ("content-type", "application/json"),
                    ("host", "runtime-v2-lex.us-east-1.amazonaws.com"),
                    ("x-amz-date", date.as_str()),
                ];
                let req = sigv4::Request {
                    method: "POST",
                    path: "/bots/BENCHBOT01/botAliases/TSTALIASID/botLocales/en_US/sessions/user-1/text",
                    query: None,
                    headers: &headers,
                    body,
                };
                let sig = key.sign(&req, &date, &scope);
                sink +=
                    sigv4::authorization("AKIDBENCH", &scope, "content-type;host;x-amz-date", &sig)
                        .len();
            }
        }
        "sigv4-key" => {
            for _ in 0..n {
                sink += format!("{:?}", SigningKey::derive("bench-secret", &scope)).len();
            }
        }
        "jwt" => {
            let key = jwt::private_key_from_pem(include_str!(
                "../../tests/fixtures/dialogflow/test-key.pem"
            ))
            .unwrap();
            for i in 0..n {
                let mut claims = jwt::Claims::new();
                claims.insert("iss".into(), "bench@bench.iam.gserviceaccount.com".into());
                claims.insert("iat".into(), i.into());
                sink += jwt::sign(&key, Some("k1"), &claims).len();
            }
        }
        other => panic!("unknown step `{other}`: sigv4, sigv4-key or jwt"),
    }
    println!("{sink}");
}
