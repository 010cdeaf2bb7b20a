//! A SigV4-signed request as a Lex caller sends it: a header block (`name: value` lines, a line
//! `>PATH` for the path, `?QUERY` for the query), a blank line, the body. Verifying it never
//! panics and refuses anything not signed with the key; the same request signed by the proxy's
//! own Lex signer verifies, and a changed body does not.
#![no_main]

use botbridge::auth::RequestVerifier;
use botbridge::dialect::lex::LexCaller;
use botbridge::dialect::{registry, Outgoing, RequestHead};
use botbridge::request::WholeRequest;
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_796_589_426;

struct Head<'a> {
    path: &'a str,
    query: Option<&'a str>,
    headers: Vec<(String, Vec<u8>)>,
}

impl RequestHead for Head<'_> {
    fn method(&self) -> &str {
        "POST"
    }
    fn path(&self) -> &str {
        self.path
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
    fn query(&self) -> Option<&str> {
        self.query
    }
}

fn split(data: &[u8]) -> (Head<'_>, &[u8]) {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &b""[..]),
    };
    let mut h = Head {
        path: "/",
        query: None,
        headers: Vec::new(),
    };
    for line in head.split(|&b| b == b'\n') {
        if let Some(p) = line.strip_prefix(b">") {
            h.path = std::str::from_utf8(p).unwrap_or("/");
        } else if let Some(q) = line.strip_prefix(b"?") {
            h.query = std::str::from_utf8(q).ok();
        } else if let Some(colon) = line.iter().position(|&b| b == b':') {
            let name = String::from_utf8_lossy(&line[..colon]).to_ascii_lowercase();
            h.headers
                .push((name, line[colon + 1..].trim_ascii_start().to_vec()));
        }
    }
    (h, body)
}

fuzz_target!(|data: &[u8]| {
    let (mut head, body) = split(data);
    let caller = LexCaller::new("s");
    for now in [0, NOW, u64::MAX] {
        if let Err(d) = caller.verify(&WholeRequest { head: &head, body }, now) {
            assert_eq!(d.error.status, 403, "{:?}", d.error);
        }
    }
    // The proxy's own signature over this path, query and body verifies (a path with a `?` would
    // be a different path and query on the wire).
    if head.path.contains('?') {
        return;
    }
    let table: toml::Table = toml::from_str(concat!(
        "region = \"us-east-1\"\nbot_id = \"B\"\nbot_alias_id = \"A\"\nlocale_id = \"en_US\"\n",
        "access_key_id = \"AK\"\nsecret_access_key = \"s\""
    ))
    .unwrap();
    let bot = registry::bot_dialect("lex-v2")
        .unwrap()
        .configure("b", table)
        .unwrap();
    let target = match head.query {
        Some(q) => format!("{}?{q}", head.path),
        None => head.path.to_owned(),
    };
    let out = Outgoing {
        unix_secs: NOW,
        method: "POST",
        authority: "127.0.0.1:1",
        target: &target,
        content_type: "application/json",
        body,
        token: None,
    };
    let mut signed = vec![
        ("content-type".to_owned(), b"application/json".to_vec()),
        ("host".to_owned(), b"127.0.0.1:1".to_vec()),
    ];
    bot.sign(&out, &mut |n, v| {
        signed.push((n.to_owned(), v.as_bytes().to_vec()))
    });
    head.headers = signed;
    let whole = WholeRequest { head: &head, body };
    assert_eq!(
        caller.verify(&whole, NOW),
        Ok(()),
        "the proxy's own signature does not verify"
    );
    let mut changed = body.to_vec();
    changed.push(b' ');
    let other = WholeRequest {
        head: &head,
        body: &changed,
    };
    assert!(
        caller.verify(&other, NOW).is_err(),
        "a changed body verifies"
    );
});
