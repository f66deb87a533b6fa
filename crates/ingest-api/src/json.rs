//! JSON values that remember a duplicated key. serde_json keeps the last copy of a key
//! silently; in an event, which copy wins decides which intent it belongs to (its session, its
//! prompt), so sift refuses such an event rather than guess. [`Checked`] parses into a
//! `serde_json::Value` in the same single pass as serde_json's own parse, and notes the first
//! key that an object repeats: the check is the answer of the map insert the parse does anyway.
//! It notes rather than fails, so one bad event of a batch does not fail its neighbours.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Number, Value};

/// A parsed value and the path of the first key that one of its objects repeats
/// (`session_id`, `properties.plan`, `fallback_chain[1].name`), if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    pub value: Value,
    pub duplicate: Option<String>,
}

impl Checked {
    fn plain(value: Value) -> Self {
        Self {
            value,
            duplicate: None,
        }
    }
}

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CheckedVisitor)
    }
}

struct CheckedVisitor;

impl<'de> Visitor<'de> for CheckedVisitor {
    type Value = Checked;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Checked, E> {
        Ok(Checked::plain(Value::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Checked, E> {
        Ok(Checked::plain(Value::Number(v.into())))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Checked, E> {
        Ok(Checked::plain(Value::Number(v.into())))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Checked, E> {
        // As serde_json's own Value: a number JSON cannot hold becomes null.
        Ok(Checked::plain(
            Number::from_f64(v).map_or(Value::Null, Value::Number),
        ))
    }

    fn visit_str<E>(self, v: &str) -> Result<Checked, E> {
        Ok(Checked::plain(Value::String(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Checked, E> {
        Ok(Checked::plain(Value::String(v)))
    }

    fn visit_none<E>(self) -> Result<Checked, E> {
        Ok(Checked::plain(Value::Null))
    }

    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked::plain(Value::Null))
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Checked, D::Error> {
        Deserialize::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        let mut values = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        let mut duplicate = None;
        while let Some(item) = seq.next_element::<Checked>()? {
            if duplicate.is_none() {
                duplicate = item
                    .duplicate
                    .map(|path| nested(&format!("[{}]", values.len()), &path));
            }
            values.push(item.value);
        }
        Ok(Checked {
            value: Value::Array(values),
            duplicate,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        let mut object = Map::new();
        let mut duplicate = None;
        while let Some(key) = map.next_key::<String>()? {
            let item = map.next_value::<Checked>()?;
            if duplicate.is_none() {
                duplicate = item.duplicate.map(|path| nested(&key, &path));
            }
            match object.entry(key) {
                Entry::Vacant(slot) => {
                    slot.insert(item.value);
                }
                Entry::Occupied(mut slot) => {
                    if duplicate.is_none() {
                        duplicate = Some(slot.key().clone());
                    }
                    slot.insert(item.value);
                }
            }
        }
        Ok(Checked {
            value: Value::Object(object),
            duplicate,
        })
    }
}

/// `child` (a key path inside `parent`'s value) as a path from `parent`.
fn nested(parent: &str, child: &str) -> String {
    if child.starts_with('[') {
        format!("{parent}{child}")
    } else {
        format!("{parent}.{child}")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::Checked;

    fn parse(text: &str) -> Checked {
        serde_json::from_str(text).expect("JSON")
    }

    #[test]
    fn a_value_without_repeats_is_serde_jsons_own() {
        let text =
            r#"{"a": 1, "b": [1.5, -2, 18446744073709551615, "x", null, true], "c": {"d": {}}}"#;
        let checked = parse(text);
        assert_eq!(
            checked.value,
            serde_json::from_str::<serde_json::Value>(text).expect("JSON")
        );
        assert_eq!(checked.duplicate, None);
    }

    #[test]
    fn the_first_repeated_key_is_named_by_its_path() {
        assert_eq!(
            parse(r#"{"session_id": "a", "x": 1, "session_id": "b"}"#)
                .duplicate
                .as_deref(),
            Some("session_id")
        );
        assert_eq!(
            parse(r#"{"properties": {"plan": 1, "plan": 2}, "p": 1, "p": 2}"#)
                .duplicate
                .as_deref(),
            Some("properties.plan")
        );
        assert_eq!(
            parse(r#"{"f": [{"a": 1}, {"n": 1, "n": 1}]}"#)
                .duplicate
                .as_deref(),
            Some("f[1].n")
        );
        // Parsed in full all the same: the caller decides what a repeat means.
        assert_eq!(parse(r#"{"k": 1, "k": 2}"#).value, json!({"k": 2}));
    }

    #[test]
    fn a_batch_parses_each_event_apart() {
        let events: Vec<Checked> =
            serde_json::from_str(r#"[{"a": 1}, {"a": 1, "a": 2}, {"b": 3}]"#).expect("JSON");
        let repeats: Vec<Option<&str>> = events.iter().map(|e| e.duplicate.as_deref()).collect();
        assert_eq!(repeats, [None, Some("a"), None]);
    }
}
