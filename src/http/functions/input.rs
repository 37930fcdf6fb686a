//! Reading keys and values out of requests, including the seed sample's body-only forms.
//!
//! Key, in order: the route's `{key}`, `?key=`, then the body: `{"Key": …}` (any casing, as the
//! C# sample's `CacheRequest` sends it), a JSON string, or plain text.
//! Keys of a bulk read: a `POST` without a key in the route or query whose body is a JSON object
//! with a `"keys"` array (any casing).
//! Value (writes with a key in the route or query): the body as JSON, or as a string when the
//! `Content-Type` is `text/plain`. Body-only writes: `{"Key": …, "ValueToInsert": …}`.

use serde_json::Value;

use crate::domain::key::{Key, KeyError};
use crate::domain::options::{EntryOptions, OptionsError, parse_tag_list, parse_ttl_seconds};
use crate::http::host::{HttpCall, HttpReply};
use crate::ports::store::Change;

/// The key and value of a write.
#[derive(Debug)]
struct KeyAndValue {
    key: Key,
    value: Value,
}

fn bad_key(e: KeyError) -> HttpReply {
    HttpReply::error(400, "bad_key", e.to_string())
}

/// `411` when a body was sent chunked and arrived empty: the Functions host forwards a request
/// body only when it has a `Content-Length`, so a chunked one is dropped on the way.
fn chunked_body_dropped(call: &HttpCall) -> Option<HttpReply> {
    let chunked = call.header("transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    (chunked && call.body.is_empty()).then(|| {
        HttpReply::error(
            411,
            "length_required",
            "the body was sent chunked (no Content-Length) and the Functions host drops such bodies; send it with a Content-Length (curl: --data or --data-binary, not -T or a piped stream)",
        )
    })
}

fn field_any_case<'a>(map: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    map.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v)
}

fn key_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The key the URL names (route, then `?key=`), `None` when it names none: then, and only then,
/// the seed's body-only forms apply. Refused: `?key=` given more than once (the host would join
/// the values with a comma), and a path whose key segment arrived empty (the key `.` or `..`,
/// which URLs remove), lest the key be taken from a body that names another one.
fn url_key(call: &HttpCall) -> Result<Option<Key>, HttpReply> {
    if let Some(key) = &call.route_key {
        return Key::new(key.clone()).map(Some).map_err(bad_key);
    }
    match call.query_count("key") {
        0 => {}
        1 => return call.query("key").map(|key| Key::new(key).map_err(bad_key)).transpose(),
        n => {
            return Err(HttpReply::error(
                400,
                "bad_key",
                format!("`key` is given {n} times in the query; give it once (?key=…, percent-encoded)"),
            ));
        }
    }
    if call.path_key_unusable {
        return Err(HttpReply::error(
            400,
            "bad_key",
            "the path names no key that arrived intact (it ends in `/` after the function's route, which is what URLs leave of the keys `.` and `..`, or the invocation's Params lack the key); put the key after the route, percent-encoded, or send it with ?key=",
        ));
    }
    Ok(None)
}

/// The key of a read (or delete): route, query, or body.
pub(super) fn read_key(call: &HttpCall) -> Result<Key, HttpReply> {
    if let Some(key) = url_key(call)? {
        return Ok(key);
    }
    let body =
        std::str::from_utf8(&call.body).map_err(|_| HttpReply::error(400, "bad_body", "the body is not UTF-8 text"))?;
    let trimmed = body.trim();
    if trimmed.is_empty() {
        return Err(chunked_body_dropped(call).unwrap_or_else(|| bad_key(KeyError::Empty)));
    }
    let key = match serde_json::from_str::<Value>(trimmed) {
        Ok(Value::Object(map)) => field_any_case(&map, "key")
            .and_then(key_text)
            .ok_or_else(|| HttpReply::error(400, "bad_key", "the body is a JSON object without a \"Key\" string"))?,
        Ok(Value::String(s)) => s,
        Ok(Value::Number(n)) => n.to_string(),
        // Plain text: the key itself (the seed reads the body as the key).
        _ => trimmed.to_string(),
    };
    Key::new(key).map_err(bad_key)
}

/// Most keys one bulk read may name.
pub(super) const MAX_KEYS_PER_READ: usize = 1000;

/// The keys of a bulk read (`POST` `{"keys":[…]}`, 1 to [`MAX_KEYS_PER_READ`] keys, in order,
/// duplicates kept), or `None` when the call is not a bulk read.
pub(super) fn bulk_read_keys(call: &HttpCall) -> Option<Result<Vec<Key>, HttpReply>> {
    if call.method != "POST" || call.route_key.is_some() || call.query_count("key") > 0 || call.path_key_unusable {
        return None;
    }
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&call.body) else { return None };
    let keys = field_any_case(&map, "keys")?;
    let bad_body = |message: String| Some(Err(HttpReply::error(400, "bad_body", message)));
    if let Some(other) = map.keys().find(|name| !name.eq_ignore_ascii_case("keys")) {
        return bad_body(format!("unknown field \"{other}\" in a bulk read; send {{\"keys\":[…]}}"));
    }
    let Value::Array(keys) = keys else {
        return bad_body(format!("\"keys\" must be an array of 1 to {MAX_KEYS_PER_READ} keys"));
    };
    if keys.is_empty() || keys.len() > MAX_KEYS_PER_READ {
        return bad_body(format!("\"keys\" must name 1 to {MAX_KEYS_PER_READ} keys; it names {}", keys.len()));
    }
    let checked = keys.iter().enumerate().map(|(i, key)| {
        let bad_key = |why: String| HttpReply::error(400, "bad_key", format!("keys[{i}]: {why}"));
        let key = key.as_str().ok_or_else(|| bad_key(format!("{key} is not a string")))?;
        Key::new(key).map_err(|e| bad_key(e.to_string()))
    });
    Some(checked.collect())
}

/// The key and value of a write.
fn write_key_and_value(call: &HttpCall, max_value_bytes: usize) -> Result<KeyAndValue, HttpReply> {
    let text =
        std::str::from_utf8(&call.body).map_err(|_| HttpReply::error(400, "bad_body", "the body is not UTF-8 text"))?;
    if text.trim().is_empty() {
        return Err(chunked_body_dropped(call).unwrap_or_else(|| {
            HttpReply::error(
                400,
                "bad_body",
                "the body is empty; send the value as JSON (or as text with Content-Type: text/plain)",
            )
        }));
    }
    if let Some(key) = url_key(call)? {
        let value = match serde_json::from_str::<Value>(text) {
            Ok(value) => value,
            Err(_) if call.content_type().is_some_and(|ct| ct.starts_with("text/plain")) => {
                Value::String(text.to_string())
            }
            Err(e) => {
                return Err(HttpReply::error(
                    400,
                    "bad_body",
                    format!(
                        "the body is not valid JSON ({e}); send a JSON value, or plain text with Content-Type: text/plain"
                    ),
                ));
            }
        };
        check_size(&value, max_value_bytes)?;
        return Ok(KeyAndValue { key, value });
    }
    if call.method != "POST" {
        return Err(HttpReply::error(
            400,
            "bad_key",
            format!(
                "a {} needs the key in the route (…/{{key}}, percent-encoded) or in ?key=; the body-only form {{\"Key\": \"…\", \"ValueToInsert\": …}} is POSTed",
                call.method
            ),
        ));
    }
    let parsed: Value = serde_json::from_str(text).map_err(|e| {
        HttpReply::error(400, "bad_body", format!("the body is not valid JSON ({e}); without a key in the route or in ?key=, send {{\"Key\": \"…\", \"ValueToInsert\": …}}"))
    })?;
    let Value::Object(map) = parsed else {
        return Err(HttpReply::error(
            400,
            "bad_body",
            "no key in the route or in ?key=, so the body must be {\"Key\": \"…\", \"ValueToInsert\": …} (keys `.` and `..` cannot travel in a URL path: send them with ?key=)",
        ));
    };
    let key = field_any_case(&map, "key").and_then(key_text).ok_or_else(|| {
        HttpReply::error(
            400,
            "bad_key",
            "the body has no \"Key\"; send {\"Key\": \"…\", \"ValueToInsert\": …}, or put the key in the route (percent-encoded) or in ?key=",
        )
    })?;
    let key = Key::new(key).map_err(bad_key)?;
    let value = field_any_case(&map, "valueToInsert")
        .or_else(|| field_any_case(&map, "value"))
        .cloned()
        .ok_or_else(|| HttpReply::error(400, "bad_body", "the body has no \"ValueToInsert\""))?;
    check_size(&value, max_value_bytes)?;
    Ok(KeyAndValue { key, value })
}

fn check_size(value: &Value, max_value_bytes: usize) -> Result<(), HttpReply> {
    let size = serde_json::to_vec(value).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > max_value_bytes {
        return Err(HttpReply::error(
            413,
            "value_too_large",
            format!("the value is {size} bytes as JSON; MaxValueBytes allows {max_value_bytes}"),
        ));
    }
    Ok(())
}

/// The cache options of a write (docs/invalidation.md): tags from `?tags=a,b` or else the
/// `x-cache-tags` header, a TTL from `?ttl=<seconds>` or else `Cache-Control: max-age=<seconds>`.
/// The query wins for both, so that each list is checked alone against the limit of 16 tags; what
/// loses must still be well-formed: a malformed option is an error, never silently ignored.
fn entry_options(call: &HttpCall) -> Result<EntryOptions, HttpReply> {
    let bad_tags = |e: OptionsError| HttpReply::error(400, "bad_tag", e.to_string());
    // `?tags=a&tags=b` names both (the host joins them as `a,b` too); a TTL is given once.
    let query_tags = match call.query_count("tags") {
        0 => None,
        _ => {
            let all: Vec<&str> =
                call.query.iter().filter(|(n, _)| n.eq_ignore_ascii_case("tags")).map(|(_, v)| v.as_str()).collect();
            Some(parse_tag_list(&all.join(","))).transpose().map_err(bad_tags)?
        }
    };
    if call.query_count("ttl") > 1 {
        return Err(HttpReply::error(400, "bad_ttl", "`ttl` is given more than once in the query; give it once"));
    }
    let header_tags = call.header("x-cache-tags").as_deref().map(parse_tag_list).transpose().map_err(bad_tags)?;
    let bad_ttl = |e: OptionsError| HttpReply::error(400, "bad_ttl", e.to_string());
    let query_ttl = call.query("ttl").map(parse_ttl_seconds).transpose().map_err(bad_ttl)?;
    let cache_control = call.header("cache-control");
    let header_ttl = cache_control.as_deref().and_then(max_age).map(parse_ttl_seconds).transpose().map_err(bad_ttl)?;
    Ok(EntryOptions { tags: query_tags.or(header_tags).unwrap_or_default(), ttl: query_ttl.or(header_ttl) })
}

/// The `max-age` directive of a `Cache-Control` header, as sent.
fn max_age(header: &str) -> Option<&str> {
    header.split(',').find_map(|directive| {
        let (name, value) = directive.split_once('=')?;
        name.trim().eq_ignore_ascii_case("max-age").then(|| value.trim().trim_matches('"'))
    })
}

/// What a write asks (both write functions): the key, the change (`DELETE` deletes; otherwise the
/// value from the body) and the cache options.
pub(super) fn write_request(call: &HttpCall, max_value_bytes: usize) -> Result<(Key, Change, EntryOptions), HttpReply> {
    let (key, change) = if call.method == "DELETE" {
        (read_key(call)?, Change::Delete)
    } else {
        let input = write_key_and_value(call, max_value_bytes)?;
        (input.key, Change::Upsert(input.value))
    };
    Ok((key, change, entry_options(call)?))
}
