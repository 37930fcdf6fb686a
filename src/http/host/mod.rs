//! The Functions host's wire format, and nothing else.
//!
//! The host reaches an HTTP function in one of two ways (docs/host-protocol.md §2): it forwards the raw
//! HTTP request to `/api/...` ([`forwarded`]), or it posts a JSON invocation envelope to
//! `/{FunctionName}` ([`payload`]). Both are turned into the same [`HttpCall`] here, and the
//! handlers' [`HttpReply`] is turned back into the shape each mode needs, so both modes give the
//! same answers. [`lenient`] holds the decoding rules for the host's quirks (double-encoded strings,
//! arrays as JSON text, timestamps without offsets).

pub mod forwarded;
pub mod lenient;
pub mod payload;

use std::borrow::Cow;

use bytes::Bytes;
use serde_json::{Value, json};

/// An HTTP request to a function, whichever way the host delivered it.
#[derive(Debug, Clone, Default)]
pub struct HttpCall {
    /// Upper-case method (the standard ones without a copy).
    pub method: Cow<'static, str>,
    /// The `{key}` route parameter, percent-decoded, if the route had one.
    pub route_key: Option<String>,
    /// True when the path went on past the function's route but gave no usable key: its key
    /// segment was empty (`…/write-through/`: what a client or the host leaves of the key `.` or
    /// `..`), or an invocation's `Params` lacked the key its `Url` shows. Such a call names a key
    /// it could not carry, so no key is taken from its body either.
    pub path_key_unusable: bool,
    /// Query parameters (a parameter given several times appears several times).
    pub query: Vec<(String, String)>,
    /// The request's headers.
    pub headers: RequestHeaders,
    /// The body bytes (empty when there was none).
    pub body: Bytes,
}

/// A request's headers, kept as each mode delivers them. Forwarded requests keep the server's map:
/// copying every header into strings cost a dozen allocations per request behind the host, and
/// reads never look at a header.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestHeaders {
    /// As the server received them (forwarded mode).
    Received(axum::http::HeaderMap),
    /// As an invocation envelope listed them, names lower-cased (payload mode).
    Listed(Vec<(String, String)>),
}

impl Default for RequestHeaders {
    fn default() -> Self {
        Self::Listed(Vec::new())
    }
}

impl RequestHeaders {
    /// The header called `name` (case-insensitive), as text: UTF-8 when it is, else ISO-8859-1
    /// (the historical charset of HTTP headers), so that no header is dropped: a dropped
    /// `x-cache-tags` would have stored the write without its tags (found by scripts/api-fuzz.sh),
    /// where a tag that is not valid gets `400`. A header sent on several lines is their values
    /// joined by commas (RFC 9110 §5.3), as the host hands it to a payload-mode invocation.
    pub fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        match self {
            Self::Received(map) => {
                let mut lines = map.get_all(name).iter();
                let first = header_text(lines.next()?.as_bytes());
                let Some(second) = lines.next() else { return Some(first) };
                let mut joined = first.into_owned();
                for line in std::iter::once(second).chain(lines) {
                    joined.push(',');
                    joined.push_str(&header_text(line.as_bytes()));
                }
                Some(Cow::Owned(joined))
            }
            Self::Listed(list) => {
                list.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| Cow::Borrowed(v.as_str()))
            }
        }
    }
}

/// Header bytes as text: UTF-8 when they are, else ISO-8859-1.
fn header_text(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => Cow::Owned(bytes.iter().map(|&b| char::from(b)).collect()),
    }
}

impl HttpCall {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        self.headers.get(name)
    }

    /// The first query parameter called `name` (case-insensitive).
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// How many times query parameter `name` was given (case-insensitive).
    pub fn query_count(&self, name: &str) -> usize {
        self.query.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).count()
    }

    /// The media type of the body, lower-cased, without parameters.
    pub fn content_type(&self) -> Option<String> {
        self.header("content-type").map(|ct| ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
    }
}

/// A function's HTTP answer: status, extra headers, and a JSON body.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HttpReply {
    /// HTTP status code.
    pub status: u16,
    /// Headers besides `Content-Type: application/json`. Names are the code's own; values are
    /// mostly constants too, which answers pass on without copying.
    pub headers: Vec<(&'static str, Cow<'static, str>)>,
    body: ReplyBody,
}

/// What an answer's body holds.
#[derive(Debug, Clone, PartialEq)]
enum ReplyBody {
    /// JSON, as a value.
    Json(Value),
    /// JSON, already written out (a read's answer is serialised straight from the cached value,
    /// without building a copy of it as a [`Value`] first).
    JsonText(String),
    /// Text whose `Content-Type` is in the headers.
    Text(String),
}

impl HttpReply {
    /// A JSON answer.
    pub fn json(status: u16, body: Value) -> Self {
        Self { status, headers: Vec::new(), body: ReplyBody::Json(body) }
    }

    /// A JSON answer already written out as `body`.
    pub(crate) fn json_text(status: u16, body: String) -> Self {
        Self { status, headers: Vec::new(), body: ReplyBody::JsonText(body) }
    }

    /// A text answer of `content_type`.
    pub(crate) fn text(status: u16, content_type: &'static str, body: String) -> Self {
        Self { status, headers: vec![("Content-Type", content_type.into())], body: ReplyBody::Text(body) }
    }

    /// The error shape every failure uses: `{"error":{"code","message"}}`.
    pub fn error(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self::json(status, json!({"error": {"code": code, "message": message.into()}}))
    }

    /// Adds a header.
    pub(crate) fn with_header(mut self, name: &'static str, value: impl Into<Cow<'static, str>>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// The body as text, taken.
    pub(crate) fn into_body_text(self) -> String {
        match self.body {
            ReplyBody::Json(body) => body.to_string(),
            ReplyBody::JsonText(text) | ReplyBody::Text(text) => text,
        }
    }
}

/// Per-invocation log lines: returned in the envelope's `Logs` in payload mode, and always written
/// to the process log too (the `Logs` of a failed invocation are lost).
#[derive(Debug, Clone)]
pub(crate) struct InvocationLog {
    lines: Vec<String>,
    /// False where nobody reads the lines (a forwarded request's answer has no `Logs`): a line is
    /// then only formatted when the process log takes it.
    keeps_lines: bool,
}

impl Default for InvocationLog {
    fn default() -> Self {
        Self { lines: Vec::new(), keeps_lines: true }
    }
}

impl InvocationLog {
    /// A log whose lines go to the process log only.
    pub(crate) fn process_only() -> Self {
        Self { lines: Vec::new(), keeps_lines: false }
    }

    /// Records a line.
    pub fn info(&mut self, line: impl std::fmt::Display) {
        self.record(line, |line| tracing::info!("{line}"));
    }

    /// Records a warning.
    pub(crate) fn warn(&mut self, line: impl std::fmt::Display) {
        self.record(line, |line| tracing::warn!("{line}"));
    }

    /// Writes `line` to the process log with `emit`, and keeps it if the lines are kept (only then
    /// is it formatted into a `String`).
    fn record(&mut self, line: impl std::fmt::Display, emit: impl FnOnce(&dyn std::fmt::Display)) {
        if self.keeps_lines {
            let line = line.to_string();
            emit(&line);
            self.lines.push(line);
        } else {
            emit(&line);
        }
    }

    /// Takes the lines.
    pub(crate) fn into_lines(self) -> Vec<String> {
        self.lines
    }
}

/// Decodes `%XX` escapes (a path segment or URL user info). `None` when an escape is malformed
/// (`%` not followed by two hex digits) or the result is not UTF-8. `+` stays `+`.
pub(crate) fn percent_decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let well_formed = bytes
        .iter()
        .enumerate()
        .all(|(i, &b)| b != b'%' || bytes.get(i + 1..i + 3).is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)));
    if !well_formed {
        return None;
    }
    percent_encoding::percent_decode_str(raw).decode_utf8().ok().map(|text| text.into_owned())
}

/// Splits a query string into decoded pairs (`+` means space here, as in forms). A part with a
/// malformed escape, or whose escapes do not decode to UTF-8, is kept exactly as it was sent: a
/// lossy decoding would make `?key=%FF` and `?key=%FE` the same key.
pub(crate) fn parse_query(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |part: &str| {
                let spaced = part.replace('+', " ");
                percent_decode(&spaced).unwrap_or(spaced)
            };
            (decode(name), decode(value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_utf8_else_latin1_in_both_modes() {
        assert_eq!(header_text(b"a,b"), "a,b");
        assert_eq!(header_text("café".as_bytes()), "café");
        assert_eq!(header_text(b"caf\xe9"), "café");
        assert_eq!(header_text(b"\x84"), "\u{84}", "a C1 control character stays one, to be refused");
        let mut map = axum::http::HeaderMap::new();
        map.append("x-cache-tags", axum::http::HeaderValue::from_bytes(b"caf\xe9").unwrap());
        map.append("x-cache-tags", axum::http::HeaderValue::from_static("second"));
        let received = RequestHeaders::Received(map);
        assert_eq!(received.get("X-Cache-Tags").as_deref(), Some("café,second"), "every line, any casing");
        assert_eq!(received.get("cache-control"), None);
        let listed =
            RequestHeaders::Listed(vec![("x-cache-tags".into(), "a".into()), ("x-cache-tags".into(), "b".into())]);
        assert_eq!(listed.get("X-CACHE-TAGS").as_deref(), Some("a"));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb%20c+d").as_deref(), Some("a/b c+d"));
        assert_eq!(percent_decode("%C3%BC").as_deref(), Some("ü"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%C3"), None);
        assert_eq!(percent_decode("50%"), None);
        // A sign is not a hex digit (`from_str_radix` would take `%+1` as 0x01).
        assert_eq!(percent_decode("%+1"), None);
        assert_eq!(percent_decode("%-1"), None);
    }

    #[test]
    fn query_parsing() {
        assert_eq!(
            parse_query("key=a+b&x=%2F&flag"),
            vec![("key".into(), "a b".into()), ("x".into(), "/".into()), ("flag".into(), String::new())]
        );
        // Not decodable: kept as sent, so two different keys stay two keys.
        assert_eq!(parse_query("key=%FF"), vec![("key".into(), "%FF".into())]);
        assert_eq!(parse_query("key=%FE"), vec![("key".into(), "%FE".into())]);
        assert_eq!(parse_query("key=a%20b%zz"), vec![("key".into(), "a%20b%zz".into())]);
    }
}
