//! Lenient decoding of the values in an invocation envelope (docs/host-protocol.md §3).
//!
//! The host JSON-encodes strings a second time (`hello` arrives as `"\"hello\""`), sends numbers and
//! booleans as strings, arrays as strings holding JSON text, and timestamps with or without an
//! offset. Every rule here also accepts the plain form, so a host that stops doing any of this
//! keeps working.

use serde_json::Value;

/// Unwraps JSON carried inside strings, up to two levels: `"\"hello\""` → `"hello"`,
/// `"[1,2]"` → `[1,2]`, `"{\"a\":1}"` → `{"a":1}`. Anything else comes back unchanged (plain text
/// stays a string; `"123"` stays the string `"123"` so keys like `007` survive).
pub fn unwrap(value: &Value) -> Value {
    let mut current = value.clone();
    for _ in 0..2 {
        let Value::String(text) = &current else { break };
        let trimmed = text.trim_start();
        let looks_like_json = trimmed.starts_with('"') || trimmed.starts_with('[') || trimmed.starts_with('{');
        if !looks_like_json {
            break;
        }
        match serde_json::from_str::<Value>(text) {
            Ok(parsed) => current = parsed,
            Err(_) => break,
        }
    }
    current
}

/// A scalar as text: strings unwrapped, numbers and booleans printed; `None` for null, arrays and objects.
pub fn text(value: &Value) -> Option<String> {
    match unwrap(value) {
        Value::String(s) => Some(s),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// An object, whether it came as an object or as a string holding one.
pub fn object(value: &Value) -> Option<serde_json::Map<String, Value>> {
    match unwrap(value) {
        Value::Object(map) => Some(map),
        _ => None,
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
pub fn field<'a>(map: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    map.get(name).or_else(|| map.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v))
}

/// Parses a host timestamp into ms since the Unix epoch: RFC 3339 with `Z` or an offset, or ISO
/// 8601 with no offset (taken as UTC), with or without fractional seconds. `None` for anything else.
pub fn timestamp_millis(value: &Value) -> Option<i64> {
    let text = text(value)?;
    let text = text.trim();
    let (date, rest) = text.split_once(['T', ' '])?;
    let mut d = date.split('-');
    let (year, month, day): (i64, i64, i64) =
        (d.next()?.parse().ok()?, d.next()?.parse().ok()?, d.next()?.parse().ok()?);
    // Split off the offset: `Z`, `+hh:mm` or `-hh:mm` after the time.
    let (time, offset_minutes) = if let Some(t) = rest.strip_suffix(['Z', 'z']) {
        (t, 0)
    } else if let Some(pos) = rest.rfind(['+', '-']) {
        let (t, off) = rest.split_at(pos);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let off = &off[1..];
        let (h, m) = off.split_once(':').unwrap_or((off.get(..2)?, off.get(2..).unwrap_or("0")));
        (t, sign * (h.parse::<i64>().ok()? * 60 + m.parse::<i64>().unwrap_or(0)))
    } else {
        (rest, 0)
    };
    let mut t = time.split(':');
    let hour: i64 = t.next()?.parse().ok()?;
    let minute: i64 = t.next()?.parse().ok()?;
    let seconds = t.next().unwrap_or("0");
    let (whole, fraction) = seconds.split_once('.').unwrap_or((seconds, ""));
    let second: i64 = whole.parse().ok()?;
    let millis: i64 = format!("{:0<3}", fraction.get(..fraction.len().min(3)).unwrap_or("")).parse().unwrap_or(0);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(((days * 86_400 + hour * 3600 + minute * 60 + second) - offset_minutes * 60) * 1000 + millis)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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
        let utc = timestamp_millis(&json!("2024-10-25T10:20:00Z")).unwrap();
        assert_eq!(utc, 1_729_851_600_000);
        assert_eq!(timestamp_millis(&json!("2024-10-25T10:20:00")), Some(utc));
        assert_eq!(timestamp_millis(&json!("\"2024-10-25T10:20:00\"")), Some(utc));
        assert_eq!(timestamp_millis(&json!("2024-10-25T12:20:00+02:00")), Some(utc));
        assert_eq!(timestamp_millis(&json!("2024-10-25T10:20:00.1234567+00:00")), Some(utc + 123));
        assert_eq!(timestamp_millis(&json!("2024-10-25T10:20:00.5")), Some(utc + 500));
        assert!(timestamp_millis(&json!("0001-01-01T00:00:00+00:00")).unwrap() < 0);
        assert_eq!(timestamp_millis(&json!("9999-12-31T23:59:59.9999999")).map(|t| t > utc), Some(true));
        assert_eq!(timestamp_millis(&json!("not a date")), None);
    }
}
