//! What a configuration was loaded from: the file's text (kept to roll back to it), its SHA-256 (the
//! name operators see in logs, metrics and the admin API) and a view of it with every secret hidden.
//!
//! The view hides exactly the values the parser read as secrets (any key typed as one, in any
//! table or dialect: see `botbridge_core::config::secret::with_literals`), and the user and password
//! of any URL, so it is safe to show to whoever may read the admin listener.

use sha2::{Digest, Sha256};

/// What a hidden value is shown as.
pub const REDACTED: &str = "<redacted>";

/// The text a configuration was parsed from.
#[derive(Default)]
pub struct ConfigSource {
    /// SHA-256 of the text, hex.
    pub hash: String,
    /// The text itself (never shown: it may hold secrets).
    pub text: String,
    /// The text as TOML with every secret replaced by [`REDACTED`].
    pub redacted: String,
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
            text: text.to_owned(),
            redacted: redact(text, secrets),
        }
    }
}

/// `text` as TOML with the values in `secrets`, and every URL's user and password, hidden. Comments
/// and layout are not kept.
pub fn redact(text: &str, secrets: &[String]) -> String {
    let Ok(mut table) = text.parse::<toml::Table>() else {
        return String::new(); // never the case for a text that parsed as a config
    };
    for (_, value) in table.iter_mut() {
        hide(value, secrets);
    }
    toml::to_string(&table).unwrap_or_default()
}

fn hide(value: &mut toml::Value, secrets: &[String]) {
    match value {
        toml::Value::String(s) if secrets.iter().any(|x| x == s) => *s = REDACTED.into(),
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
        assert!(!format!("{source:?}").contains("hunter2"));
    }
}
