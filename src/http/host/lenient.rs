//! Lenient decoding of the values in an invocation envelope (docs/host-protocol.md §3).
//!
//! The host JSON-encodes strings a second time (`hello` arrives as `"\"hello\""`), sends numbers and
//! booleans as strings, arrays as strings holding JSON text, and timestamps with or without an
//! offset. Every rule here also accepts the plain form, so a host that stops doing any of this
//! keeps working.

use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::domain::time::Timestamp;

/// Unwraps JSON carried inside strings, up to two levels: `"\"hello\""` → `"hello"`,
/// `"[1,2]"` → `[1,2]`, `"{\"a\":1}"` → `{"a":1}`. Anything else comes back unchanged (plain text
/// stays a string; `"123"` stays the string `"123"` so keys like `007` survive).
pub fn unwrap(value: &Value) -> Value {
    unwrapped(value).into_owned()
}

/// [`unwrap`] without copying what needs no unwrapping (the usual case: the host's objects arrive
/// as objects).
pub(crate) fn unwrapped(value: &Value) -> Cow<'_, Value> {
    let mut current = Cow::Borrowed(value);
    for _ in 0..2 {
        let Value::String(text) = current.as_ref() else { break };
        let trimmed = text.trim_start();
        let looks_like_json = trimmed.starts_with('"') || trimmed.starts_with('[') || trimmed.starts_with('{');
        if !looks_like_json {
            break;
        }
        match serde_json::from_str::<Value>(text) {
            Ok(parsed) => current = Cow::Owned(parsed),
            Err(_) => break,
        }
    }
    current
}

/// A scalar as text: strings unwrapped, numbers and booleans printed; `None` for null, arrays and objects.
pub fn text(value: &Value) -> Option<String> {
    match unwrapped(value).as_ref() {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// An object, whether it came as an object or as a string holding one.
pub fn object(value: &Value) -> Option<Map<String, Value>> {
    object_ref(value).map(Cow::into_owned)
}

/// [`object`], borrowed when it came as an object.
pub(crate) fn object_ref(value: &Value) -> Option<Cow<'_, Map<String, Value>>> {
    match unwrapped(value) {
        Cow::Borrowed(Value::Object(map)) => Some(Cow::Borrowed(map)),
        Cow::Owned(Value::Object(map)) => Some(Cow::Owned(map)),
        _ => None,
    }
}

/// An object taken by value, whether it came as an object or as a string holding one.
pub(crate) fn into_object(value: Value) -> Option<Map<String, Value>> {
    match value {
        Value::Object(map) => Some(map),
        other => object(&other),
    }
}

/// An array, whether it came as an array or as a string holding JSON array text.
pub fn array(value: &Value) -> Option<Vec<Value>> {
    match unwrap(value) {
        Value::Array(items) => Some(items),
        _ => None,
    }
}

/// The value of `name` in `map`, matching the name case-insensitively (Newtonsoft matches that way).
pub fn field<'a>(map: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    map.get(name).or_else(|| map.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v))
}

/// A host timestamp: RFC 3339 with `Z` or an offset, or ISO 8601 with no offset (taken as UTC),
/// with or without fractional seconds, possibly JSON-encoded twice. `None` for anything else, and
/// for the year-1 "never" the host sends on a first run.
pub fn timestamp(value: &Value) -> Option<Timestamp> {
    Timestamp::parse_iso8601(&text(value)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unwraps_double_encoded_strings_and_json_text() {
        assert_eq!(unwrap(&json!("\"hello\"")), json!("hello"));
        assert_eq!(unwrap(&json!("[\"a\",\"b\"]")), json!(["a", "b"]));
        assert_eq!(unwrap(&json!("\"[1,2]\"")), json!([1, 2]));
        assert_eq!(unwrap(&json!("{\"a\":1}")), json!({"a": 1}));
        assert_eq!(unwrap(&json!("plain text")), json!("plain text"));
        assert_eq!(unwrap(&json!("007")), json!("007"));
        assert_eq!(unwrap(&json!("[not json")), json!("[not json"));
        assert_eq!(text(&json!("123")).as_deref(), Some("123"));
        assert_eq!(text(&json!(123)).as_deref(), Some("123"));
        assert_eq!(text(&json!("\"GET\"")).as_deref(), Some("GET"));
    }

    #[test]
    fn timestamps_with_and_without_offsets() {
        let utc = Timestamp::from_millis(1_729_851_600_000);
        assert_eq!(timestamp(&json!("2024-10-25T10:20:00Z")), Some(utc));
        assert_eq!(timestamp(&json!("2024-10-25T10:20:00")), Some(utc));
        assert_eq!(timestamp(&json!("\"2024-10-25T10:20:00\"")), Some(utc));
        assert_eq!(timestamp(&json!("2024-10-25T12:20:00+02:00")), Some(utc));
        assert_eq!(
            timestamp(&json!("2024-10-25T10:20:00.1234567+00:00")).map(Timestamp::as_millis),
            Some(utc.as_millis() + 123)
        );
        assert_eq!(timestamp(&json!("2024-10-25T10:20:00.5")).map(Timestamp::as_millis), Some(utc.as_millis() + 500));
        assert_eq!(timestamp(&json!("0001-01-01T00:00:00+00:00")), None, "the year-1 sentinel is no time");
        assert!(timestamp(&json!("9999-12-31T23:59:59.9999999")).is_some_and(|t| t > utc));
        assert_eq!(timestamp(&json!("not a date")), None);
    }
}
