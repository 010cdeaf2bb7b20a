//! What a configuration was loaded from: the file's text (kept, deflated, to roll back to it), its
//! SHA-256 (the name operators see in logs, metrics and the admin API) and a view of it with every
//! secret hidden.
//!
//! The view hides exactly the values the parser read as secrets (any key typed as one, in any
//! table or dialect: see `botbridge_core::config::secret::with_literals`), and the user and password
//! of any URL, so it is safe to show to whoever may read the admin listener.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io::{Read, Write};
use std::sync::OnceLock;

use flate2::read::DeflateDecoder;
use flate2::write::DeflateEncoder;
use flate2::Compression;
use sha2::{Digest, Sha256};

/// What a hidden value is shown as.
pub const REDACTED: &str = "<redacted>";

/// The text a configuration was parsed from.
pub struct ConfigSource {
    /// SHA-256 of the text, hex.
    pub hash: String,
    /// The text itself (never shown: it may hold secrets), deflated: only a rollback and the
    /// redacted view read it again, and a 100,000-credential configuration is 8 MB of text (80 bytes
    /// a credential, kept by up to ten configurations of the history) and under 1 MB deflated.
    deflated: Box<[u8]>,
    /// Keyed hashes of the literal secrets the parse read, sorted, until the redacted view is made
    /// from them (a `String` each cost 50 bytes more a credential). A string of the text with the
    /// hash of a secret is hidden; another string sharing a secret's 64-bit keyed hash would be
    /// hidden too, which errs the safe way.
    secrets: std::sync::Mutex<Vec<u64>>,
    /// The text as TOML with every secret replaced by [`REDACTED`], made when first asked for (a
    /// 100,000-credential config takes a second to redact; most configurations are never shown).
    redacted: OnceLock<String>,
}

impl std::fmt::Debug for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSource")
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

impl ConfigSource {
    /// The source of `text`, whose parse read the literal secrets `secrets`.
    pub fn new(text: &str, secrets: &[String]) -> ConfigSource {
        ConfigSource {
            hash: hex::encode(Sha256::digest(text.as_bytes())),
            deflated: deflate(text),
            secrets: std::sync::Mutex::new(hashed(secrets)),
            redacted: OnceLock::new(),
        }
    }

    /// The text it was parsed from.
    pub fn text(&self) -> String {
        let mut text = String::new();
        // Deflated here from a `&str`: it inflates to the same valid UTF-8.
        if DeflateDecoder::new(&self.deflated[..])
            .read_to_string(&mut text)
            .is_err()
        {
            text.clear();
        }
        text
    }

    /// The text with every secret hidden.
    pub fn redacted(&self) -> &str {
        let shown = self.redacted.get_or_init(|| {
            let secrets = self.secrets.lock().unwrap_or_else(|e| e.into_inner());
            redact_hashed(&self.text(), &secrets)
        });
        // Kept until the view exists: a redaction that failed part-way must not leave none.
        std::mem::take(&mut *self.secrets.lock().unwrap_or_else(|e| e.into_inner()));
        shown
    }
}

impl Default for ConfigSource {
    fn default() -> Self {
        ConfigSource::new("", &[])
    }
}

fn deflate(text: &str) -> Box<[u8]> {
    let mut out = DeflateEncoder::new(Vec::new(), Compression::fast());
    // Writing to a `Vec` does not fail.
    let _ = out.write_all(text.as_bytes());
    out.finish().unwrap_or_default().into_boxed_slice()
}

/// A secret's hash: SipHash keyed at random for this process, so nobody can choose a string that
/// shares a secret's hash on purpose.
fn secret_hash(s: &str) -> u64 {
    static KEY: OnceLock<RandomState> = OnceLock::new();
    KEY.get_or_init(RandomState::new).hash_one(s)
}

/// `text` as TOML with the values in `secrets`, and every URL's user and password, hidden. Comments
/// and layout are not kept.
pub fn redact(text: &str, secrets: &[String]) -> String {
    redact_hashed(text, &hashed(secrets))
}

/// The [`secret_hash`]es of `secrets`, sorted, each once.
fn hashed(secrets: &[String]) -> Vec<u64> {
    let mut hashed: Vec<u64> = secrets.iter().map(|s| secret_hash(s)).collect();
    hashed.sort_unstable();
    hashed.dedup();
    hashed
}

/// [`redact`], with the secrets as sorted [`secret_hash`]es.
fn redact_hashed(text: &str, secrets: &[u64]) -> String {
    let Ok(mut table) = text.parse::<toml::Table>() else {
        return String::new(); // never the case for a text that parsed as a config
    };
    for (_, value) in table.iter_mut() {
        hide(value, secrets);
    }
    toml::to_string(&table).unwrap_or_default()
}

fn hide(value: &mut toml::Value, secrets: &[u64]) {
    match value {
        toml::Value::String(s) if secrets.binary_search(&secret_hash(s)).is_ok() => {
            *s = REDACTED.into()
        }
        toml::Value::String(s) => {
            if let Some(clean) = without_userinfo(s) {
                *s = clean;
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(|v| hide(v, secrets)),
        toml::Value::Table(t) => t.iter_mut().for_each(|(_, v)| hide(v, secrets)),
        _ => {}
    }
}

/// `scheme://user:pass@host…` as `scheme://<redacted>@host…`; `None` if `s` has no user part.
fn without_userinfo(s: &str) -> Option<String> {
    let (scheme, rest) = s.split_once("://")?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest[..authority_end].rfind('@')?;
    Some(format!("{scheme}://{REDACTED}{}", &rest[at..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_url_passwords_are_hidden_and_the_rest_kept() {
        let text = "[a]\ntoken = \"hunter2\"\nname = \"hunter\"\nlist = [\"x\", \"hunter2\"]\n\
                    [[b]]\nurl = \"redis://:pw@h:1/0\"\nplain = \"http://h/p@q\"\n";
        let shown = redact(text, &["hunter2".into()]);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains(":pw"), "{shown}");
        assert!(shown.contains("name = \"hunter\""), "{shown}");
        assert!(shown.contains("redis://<redacted>@h:1/0"), "{shown}");
        assert!(shown.contains("http://h/p@q"), "{shown}");
        let source = ConfigSource::new(text, &[]);
        assert_eq!(source.hash.len(), 64);
        assert_eq!(source.text(), text, "kept whole");
        let source = ConfigSource::new(text, &["hunter2".into()]);
        assert!(!source.redacted().contains("hunter2"));
        assert!(source.redacted().contains("name = \"hunter\""));
        assert!(!format!("{source:?}").contains("hunter2"));
    }
}
