//! The write event: what Write-Behind publishes and the consumers apply.
//!
//! On the wire it is one JSON object per event:
//! `{"key": "k", "op": "upsert" | "delete", "value": <json or absent>, "version": 1730000000000000,
//! "ts": "2026-11-26T07:13:00.123Z"}`. `version` orders writes of a key (see `crate::domain::version`);
//! `ts` is when the write was accepted, for people reading queues and dead letters.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::key::Key;
use crate::domain::options::EntryOptions;
use crate::domain::time::Timestamp;

/// What the write does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Set the value.
    Upsert,
    /// Delete the key.
    Delete,
}

/// One accepted write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriteEvent {
    /// The cache key.
    pub key: String,
    /// Upsert or delete.
    pub op: Op,
    /// The value (upserts only). A JSON `null` value is `Some(Value::Null)`: present, not missing.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// The write's version.
    pub version: u64,
    /// When the write was accepted, RFC 3339 UTC.
    pub ts: String,
    /// The write's cache tags (docs/invalidation.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The write's own cache TTL, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
}

/// Why a queued message is not a usable event (it goes to the dead-letter stream).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// Not JSON, or not the event shape.
    #[error("not a write event: {0}")]
    Malformed(String),
    /// The key is not a valid key.
    #[error("the event's key is invalid: {0}")]
    BadKey(String),
    /// An upsert without a value.
    #[error("an upsert event has no value")]
    MissingValue,
    /// A version no sane clock issued (see `crate::domain::version::is_plausible`).
    #[error("the event's version is implausible: {0}")]
    ImplausibleVersion(#[source] crate::domain::version::Implausible),
}

/// A field that is there, whatever it holds: `"value": null` is the value `null` (serde's `Option`
/// would read it as no value at all, and the write of a `null` would be dead-lettered).
fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

impl WriteEvent {
    /// An upsert of `value` at `version`, accepted at `now`.
    pub fn upsert(key: &Key, value: Value, version: u64, now: Timestamp) -> Self {
        Self {
            key: key.as_str().to_string(),
            op: Op::Upsert,
            value: Some(value),
            version,
            ts: now.rfc3339(),
            tags: Vec::new(),
            ttl: None,
        }
    }

    /// A delete at `version`, accepted at `now`.
    pub fn delete(key: &Key, version: u64, now: Timestamp) -> Self {
        Self {
            key: key.as_str().to_string(),
            op: Op::Delete,
            value: None,
            version,
            ts: now.rfc3339(),
            tags: Vec::new(),
            ttl: None,
        }
    }

    /// The event carrying the write's cache options.
    pub fn with_options(mut self, options: &EntryOptions) -> Self {
        self.tags = options.tag_names();
        self.ttl = options.ttl.map(|t| t.as_secs());
        self
    }

    /// The write's cache options (what no longer passes the checks is dropped).
    pub fn options(&self) -> EntryOptions {
        EntryOptions::from_stored(&self.tags, self.ttl)
    }

    /// The JSON text of the event.
    pub fn to_json(&self) -> String {
        // Serializing these plain fields cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses and checks an event.
    pub fn parse(text: &str) -> Result<Self, EventError> {
        let event: Self = serde_json::from_str(text).map_err(|e| EventError::Malformed(e.to_string()))?;
        Key::new(event.key.clone()).map_err(|e| EventError::BadKey(e.to_string()))?;
        if event.op == Op::Upsert && event.value.is_none() {
            return Err(EventError::MissingValue);
        }
        Ok(event)
    }

    /// The validated key.
    pub fn key(&self) -> Result<Key, EventError> {
        Key::new(self.key.clone()).map_err(|e| EventError::BadKey(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_and_has_the_documented_shape() {
        let key = Key::new("a/b").unwrap();
        let event = WriteEvent::upsert(&key, json!({"x": [1, 2]}), 42, Timestamp::from_millis(1_729_851_600_123));
        let text = event.to_json();
        let raw: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(raw["key"], "a/b");
        assert_eq!(raw["op"], "upsert");
        assert_eq!(raw["value"], json!({"x": [1, 2]}));
        assert_eq!(raw["version"], 42);
        assert_eq!(raw["ts"], "2024-10-25T10:20:00.123Z");
        assert_eq!(WriteEvent::parse(&text).unwrap(), event);
        let delete = WriteEvent::delete(&key, 43, Timestamp::EPOCH);
        assert!(!delete.to_json().contains("value"));
        assert_eq!(WriteEvent::parse(&delete.to_json()).unwrap(), delete);
    }

    /// Found by scripts/api-fuzz.sh: a write-behind of the JSON value `null` was accepted (`202`),
    /// then dead-lettered as "an upsert event has no value", and could not be replayed.
    #[test]
    fn a_null_value_is_a_value() {
        let key = Key::new("k").unwrap();
        let event = WriteEvent::upsert(&key, Value::Null, 7, Timestamp::EPOCH);
        assert!(event.to_json().contains(r#""value":null"#), "{}", event.to_json());
        let parsed = WriteEvent::parse(&event.to_json()).unwrap();
        assert_eq!(parsed.value, Some(Value::Null));
        assert_eq!(parsed, event);
    }

    #[test]
    fn rejects_poison() {
        assert!(matches!(WriteEvent::parse("not json"), Err(EventError::Malformed(_))));
        assert!(matches!(
            WriteEvent::parse(r#"{"key":"k","op":"upsert","version":1,"ts":""}"#),
            Err(EventError::MissingValue)
        ));
        assert!(matches!(
            WriteEvent::parse(r#"{"key":"","op":"delete","version":1,"ts":""}"#),
            Err(EventError::BadKey(_))
        ));
        assert!(matches!(
            WriteEvent::parse(r#"{"key":"k","op":"merge","version":1,"ts":""}"#),
            Err(EventError::Malformed(_))
        ));
        assert!(matches!(
            WriteEvent::parse(r#"{"key":"k","op":"delete","version":-1,"ts":""}"#),
            Err(EventError::Malformed(_))
        ));
    }
}
