//! A cached value as JSON text, shared.
//!
//! The cache never looks inside a value: it stores the text in Redis, keeps it in the near cache
//! and writes it into an answer. Holding it as text (checked once to be JSON) instead of as a
//! [`Value`] tree means a hit from Redis is not parsed into a tree only to be written out again,
//! and a near-cache hit hands out the value by bumping a reference count instead of copying the tree.

use std::fmt;
use std::sync::Arc;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// One JSON value as text, cheap to clone. Text this service writes is compact; text read back
/// from Redis is served as it is stored there (checked, never rewritten).
#[derive(Clone)]
pub struct JsonText(Arc<str>);

impl JsonText {
    /// The text of `value`.
    pub fn from_value(value: &Value) -> Self {
        Self(Arc::from(value.to_string()))
    }

    /// `text`, checked to be one JSON value exactly as strictly as reading it into a [`Value`]
    /// would (numbers in range, no lone surrogates, at most 128 levels deep), so that whatever
    /// reads it later into a tree cannot fail. Whitespace around it is dropped.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str::<Skip>(text)?;
        Ok(Self(Arc::from(text.trim_matches([' ', '\t', '\n', '\r']))))
    }

    /// JSON `null`.
    pub fn null() -> Self {
        Self(Arc::from("null"))
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for an empty text (never: a JSON value has at least one character).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value as a tree, for the rare reader that needs to look inside it.
    pub fn to_value(&self) -> Value {
        // The text was checked as strictly as this reads it, when it was made.
        serde_json::from_str(self.as_str()).unwrap_or(Value::Null)
    }
}

impl From<Value> for JsonText {
    fn from(value: Value) -> Self {
        Self::from_value(&value)
    }
}

impl From<&Value> for JsonText {
    fn from(value: &Value) -> Self {
        Self::from_value(value)
    }
}

/// Equal when they hold the same JSON value: the same text, or texts that differ only in how
/// they are written (`{"a":1,"b":2}` and `{"b":2, "a":1}`).
impl PartialEq for JsonText {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str() || self.to_value() == other.to_value()
    }
}

impl PartialEq<Value> for JsonText {
    fn eq(&self, other: &Value) -> bool {
        self.to_value() == *other
    }
}

impl fmt::Debug for JsonText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for JsonText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A value read and dropped, checked as strictly as reading it as a [`Value`] would check it
/// (`IgnoredAny` only checks the syntax: it lets through numbers out of range, lone surrogates and
/// any depth, which a `Value` refuses).
pub(crate) struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SkipVisitor;
        impl<'de> Visitor<'de> for SkipVisitor {
            type Value = Skip;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any valid JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_str<E>(self, _: &str) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_none<E>(self) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Skip, D::Error> {
                Skip::deserialize(deserializer)
            }
            fn visit_unit<E>(self) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
                while seq.next_element::<Skip>()?.is_some() {}
                Ok(Skip)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
                while map.next_entry::<Skip, Skip>()?.is_some() {}
                Ok(Skip)
            }
        }
        deserializer.deserialize_any(SkipVisitor)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn round_trips() {
        let value = json!({"b": [1, 2.5, "é\"\n"], "a": null, "n": -0});
        let text = JsonText::from_value(&value);
        assert_eq!(text.to_value(), value);
        assert_eq!(text.as_str(), value.to_string());
        assert_eq!(text.len(), value.to_string().len());
    }

    #[test]
    fn parse_checks_the_text_as_strictly_as_a_value_would() {
        assert_eq!(JsonText::parse(" {\"b\":2, \"a\":1}\n").unwrap(), JsonText::from(json!({"a": 1, "b": 2})));
        assert_eq!(JsonText::parse(" [1] ").unwrap().as_str(), "[1]");
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        for bad in ["", "not json", "{\"a\":1", "1 2", "[1,]", "1e400", "\"\\ud800\"", deep.as_str()] {
            assert!(JsonText::parse(bad).is_err(), "{bad:?}");
            assert!(serde_json::from_str::<Value>(bad).is_err(), "a Value refuses {bad:?} too");
        }
        assert_ne!(JsonText::from(json!(1)), JsonText::from(json!("1")));
        assert_eq!(JsonText::null().as_str(), "null");
    }
}
