//! The check on a caller's JSON that is carried into a bot request as written (CSML and Rasa
//! `metadata`, CSML `payload`): it must read as serde_json reads a value it keeps.
//!
//! A [`RawValue`] is checked against the JSON grammar only, the way serde_json skips a value: a
//! number out of `f64`'s range (`1e400`) or a lone surrogate escape (`"\udc00"`) passes. A bot's
//! JSON reader (serde_json's, the proxy's own, most others) refuses those, so the caller learns it
//! here, with a 400 naming the field, instead of the bot failing on the proxy's request.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::error::ProxyError;

/// A 400 naming `field` when `raw` holds what serde_json refuses to read as a value.
pub(crate) fn check(raw: &RawValue, field: &str) -> Result<(), ProxyError> {
    serde_json::from_str::<Strict>(raw.get())
        .map(|_| ())
        .map_err(|e| ProxyError::bad_request(format!("invalid field `{field}`: {e}")))
}

/// Reads every number and string of a value as serde_json does for one it keeps, keeping nothing.
struct Strict;

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Strict)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Strict;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        while seq.next_element::<Strict>()?.is_some() {}
        Ok(Strict)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        while map.next_entry::<Strict, Strict>()?.is_some() {}
        Ok(Strict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(text: &str) -> Result<(), String> {
        let raw: Box<RawValue> = serde_json::from_str(text).expect("the grammar is fine");
        check(&raw, "metadata").map_err(|e| e.message.to_string())
    }

    #[test]
    fn what_serde_json_keeps_passes() {
        for ok in [
            r#"{"a":1,"b":[1.5e300,-0,true,null,"x\u00e9\ud83d\ude00"],"c":{"d":{}}}"#,
            r#"{"big":18446744073709551616,"neg":-9223372036854775809,"tiny":1e-400}"#,
            "{}",
        ] {
            assert_eq!(checked(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn out_of_range_numbers_and_lone_surrogates_are_refused_by_field() {
        for bad in [
            r#"{"a":1e400}"#,
            r#"{"a":[{"b":-1e400}]}"#,
            r#"{"a":"\udc00"}"#,
            r#"{"\ud800":1}"#,
        ] {
            let e = checked(bad).unwrap_err();
            assert!(e.starts_with("invalid field `metadata`: "), "{bad}: {e}");
            assert!(serde_json::from_str::<serde_json::Value>(bad).is_err());
        }
    }
}
