//! A cached value as JSON text, shared.
//!
//! The cache never looks inside a value: it stores the text in Redis, keeps it in the near cache
//! and writes it into an answer. Holding it as text (checked once to be JSON) instead of as a
//! [`Value`] tree means a hit from Redis is not parsed into a tree only to be written out again,
//! and a near-cache hit hands out the value by bumping a reference count instead of copying the tree.

use std::fmt;
use std::sync::Arc;

use serde_json::Value;
use serde_json::value::RawValue;

/// One JSON value as compact text, cheap to clone. It serialises as the value itself (not as a
/// string holding it).
#[derive(Clone)]
pub struct JsonText(Arc<RawValue>);

impl JsonText {
    /// The text of `value`.
    pub fn from_value(value: &Value) -> Self {
        // Writing a `Value` out cannot fail: its map keys are strings and its numbers finite.
        match serde_json::value::to_raw_value(value) {
            Ok(raw) => Self(Arc::from(raw)),
            Err(_) => Self::null(),
        }
    }

    /// `text`, checked to be one JSON value (as written to Redis by this service, or by anyone).
    pub fn parse(text: String) -> Result<Self, serde_json::Error> {
        RawValue::from_string(text).map(|raw| Self(Arc::from(raw)))
    }

    /// JSON `null`.
    pub fn null() -> Self {
        Self(Arc::from(RawValue::NULL.to_owned()))
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.as_str().len()
    }

    /// True for an empty text (never: a JSON value has at least one character).
    pub fn is_empty(&self) -> bool {
        self.as_str().is_empty()
    }

    /// The value as a tree, for the rare reader that needs to look inside it.
    pub fn to_value(&self) -> Value {
        // The text was checked to be JSON when this was made.
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
/// they are written (`{"a":1,"b":2}` and `{"b":2,"a":1}`).
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

impl serde::Serialize for JsonText {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn round_trips_and_serialises_as_the_value_itself() {
        let value = json!({"b": [1, 2.5, "é\"\n"], "a": null, "n": -0});
        let text = JsonText::from_value(&value);
        assert_eq!(text.to_value(), value);
        assert_eq!(serde_json::to_value(json!({"v": text.clone()})).unwrap(), json!({"v": value}));
        assert_eq!(serde_json::to_string(&text).unwrap(), text.as_str(), "written as is, not as a string");
        assert_eq!(text.len(), value.to_string().len());
    }

    #[test]
    fn parse_checks_the_text() {
        assert_eq!(JsonText::parse("{\"b\":2, \"a\":1}".into()).unwrap(), JsonText::from(json!({"a": 1, "b": 2})));
        for bad in ["", "not json", "{\"a\":1", "1 2", "[1,]"] {
            assert!(JsonText::parse(bad.into()).is_err(), "{bad:?}");
        }
        assert_ne!(JsonText::from(json!(1)), JsonText::from(json!("1")));
        assert_eq!(JsonText::null().as_str(), "null");
    }
}
