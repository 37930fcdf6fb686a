//! Payload mode: the JSON invocation envelope `POST /{FunctionName}` (docs/host-protocol.md §2.2, §4).
//!
//! Request: `{"Data": {<binding>: …}, "Metadata": {…}}`, keys matched case-insensitively, every
//! value decoded leniently. For an HTTP trigger, `Data.<trigger>` holds `Url`, `Method`, `Query`,
//! `Headers` (values are arrays), `Params` and `Body` (absent when empty; base64 for
//! `application/octet-stream` and `multipart/*`).
//!
//! Response: always `Content-Type: application/json`, `{"Outputs": {…}, "Logs": […],
//! "ReturnValue": null}`. An HTTP answer travels in the `res` output as an object with a string
//! `statusCode`, string headers and a string `body`, so the host neither re-indents nor
//! base64-decodes it, and the envelope itself stays `200` (a non-2xx envelope fails the invocation
//! and drops Outputs and Logs).

use base64::Engine;
use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::lenient::{self, field};
use super::{HttpCall, HttpReply, parse_query};

/// A decoded invocation envelope.
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    /// `Data`: one entry per input binding.
    pub data: Map<String, Value>,
    /// `Metadata`: the trigger's binding data.
    pub metadata: Map<String, Value>,
}

/// The `Data` of an envelope (its name in any casing), everything else skipped.
struct DataOnly(Option<Value>);

impl<'de> serde::Deserialize<'de> for DataOnly {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = DataOnly;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an invocation envelope object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<DataOnly, A::Error> {
                let mut data = None;
                while let Some(name) = map.next_key::<String>()? {
                    if name.eq_ignore_ascii_case("data") {
                        data = Some(map.next_value::<Value>()?);
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(DataOnly(data))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// Why an envelope could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Not JSON, or not an object.
    #[error("the invocation envelope is not a JSON object: {0}")]
    NotJson(String),
    /// The trigger binding is missing from `Data`.
    #[error("the invocation envelope has no `Data.{0}` (the trigger binding)")]
    MissingTrigger(String),
    /// The trigger value has the wrong shape.
    #[error("`Data.{binding}` is malformed: {problem}")]
    Malformed {
        /// The binding.
        binding: String,
        /// What is wrong.
        problem: String,
    },
}

impl Invocation {
    /// Parses an envelope body.
    pub fn parse(body: &[u8]) -> Result<Self, EnvelopeError> {
        let value: Value = serde_json::from_slice(body).map_err(|e| EnvelopeError::NotJson(e.to_string()))?;
        let Value::Object(mut root) = value else {
            return Err(EnvelopeError::NotJson("the top level is not an object".into()));
        };
        let mut part = |name: &str| {
            let found = root.keys().find(|k| k.as_str() == name || k.eq_ignore_ascii_case(name)).cloned();
            found.and_then(|k| root.remove(&k)).and_then(lenient::into_object).unwrap_or_default()
        };
        Ok(Self { data: part("Data"), metadata: part("Metadata") })
    }

    /// Parses the envelope of an HTTP-triggered invocation: only `Data`, which is all an HTTP
    /// function reads; `Metadata` (a second copy of the request, and of every field of a JSON
    /// body) is checked to be JSON and skipped, not built.
    pub fn parse_data_only(body: &[u8]) -> Result<Self, EnvelopeError> {
        let DataOnly(data) = serde_json::from_slice(body).map_err(|e| EnvelopeError::NotJson(e.to_string()))?;
        Ok(Self { data: data.and_then(lenient::into_object).unwrap_or_default(), metadata: Map::new() })
    }

    /// The value of input binding `binding` (case-insensitive).
    pub fn binding(&self, binding: &str) -> Option<&Value> {
        field(&self.data, binding)
    }

    /// A metadata value (case-insensitive), leniently unwrapped.
    pub fn metadata(&self, name: &str) -> Option<Value> {
        field(&self.metadata, name).map(lenient::unwrap)
    }

    /// Reads the HTTP trigger `trigger` as an [`HttpCall`]. `route_base` is the function's route
    /// without its `{key?}` (e.g. `cache-aside`), used to find the key in `Url` when `Params` lacks it.
    pub fn http_call(&self, trigger: &str, route_base: &str) -> Result<HttpCall, EnvelopeError> {
        let raw = self.binding(trigger).ok_or_else(|| EnvelopeError::MissingTrigger(trigger.to_string()))?;
        let req = lenient::object_ref(raw).ok_or_else(|| EnvelopeError::Malformed {
            binding: trigger.to_string(),
            problem: "expected an object with Url, Method, Headers, Query, Params and Body".into(),
        })?;
        let method =
            field(&req, "Method").and_then(lenient::text).map(|m| m.to_ascii_uppercase()).ok_or_else(|| {
                EnvelopeError::Malformed { binding: trigger.to_string(), problem: "`Method` is missing".into() }
            })?;
        let url = field(&req, "Url").and_then(lenient::text).unwrap_or_default();
        let (path, url_query) = split_url(&url);

        let headers =
            field(&req, "Headers").and_then(lenient::object_ref).map(|h| header_pairs(&h)).unwrap_or_default();
        let from_url = parse_query(url_query);
        let query = match field(&req, "Query").and_then(lenient::object_ref) {
            Some(map) => {
                let mut query: Vec<(String, String)> =
                    map.iter().filter_map(|(k, v)| plain_or_joined(v).map(|v| (k.clone(), v))).collect();
                // The host joins the values of a parameter given several times with commas
                // (`?key=a&key=b` arrives as `a,b`); the `Url` still has them apart, as sent.
                let repeated = |name: &str| from_url.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).count() > 1;
                if query.iter().any(|(name, _)| repeated(name)) {
                    query.retain(|(name, _)| !repeated(name));
                    query.extend(from_url.iter().filter(|(name, _)| repeated(name)).cloned());
                }
                query
            }
            None => from_url,
        };
        let route_key = field(&req, "Params")
            .and_then(lenient::object_ref)
            .and_then(|params| field(&params, "key").and_then(plain_text))
            // ASP.NET decodes route values except `%2F`, which it leaves escaped.
            .map(|k| k.replace("%2F", "/").replace("%2f", "/"))
            .filter(|k| !k.is_empty());
        // Without the route value, the key is read from the `Url` only when that is unambiguous:
        // the host writes its decoded path back escaping some characters but leaving `%XX`
        // sequences as they are, so `a%41` there may be the key `a%41` or an escaped `aA`. A
        // path that names a key this way (or ends in `/` after the route) names one the call
        // cannot use.
        let (route_key, path_key_unusable) = match (route_key, key_in_url(path, route_base)) {
            (Some(key), _) => (Some(key), false),
            (None, None) => (None, false),
            (None, Some(raw)) if !raw.is_empty() && !raw.contains('%') => (Some(raw.to_string()), false),
            (None, Some(_)) => (None, true),
        };

        let mut call = HttpCall { method, route_key, path_key_unusable, query, headers, body: Bytes::new() };
        call.body = match field(&req, "Body") {
            None | Some(Value::Null) => Bytes::new(),
            Some(Value::String(text)) => {
                let binary = call
                    .content_type()
                    .is_some_and(|ct| ct == "application/octet-stream" || ct.starts_with("multipart/"));
                if binary {
                    base64::engine::general_purpose::STANDARD.decode(text.trim()).map(Bytes::from).map_err(|e| {
                        EnvelopeError::Malformed {
                            binding: trigger.to_string(),
                            problem: format!("`Body` of an octet-stream request is not base64: {e}"),
                        }
                    })?
                } else {
                    Bytes::from(text.clone())
                }
            }
            // Not what the host sends, but a body given as JSON is taken as its JSON text.
            Some(other) => Bytes::from(other.to_string()),
        };
        Ok(call)
    }
}

/// Path and query of a URL like `http://host:7071/api/cache-aside/k?x=1`.
fn split_url(url: &str) -> (&str, &str) {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path_and_query = after_scheme.find('/').map_or("", |i| &after_scheme[i..]);
    let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    (path, query.split('#').next().unwrap_or(""))
}

/// What a request path holds after `/{prefix}/{route_base}/`, trailing `/` removed (empty when the
/// path ends there), or `None` when it does not go on past the route.
fn key_in_url<'a>(path: &'a str, route_base: &str) -> Option<&'a str> {
    let lower = path.to_ascii_lowercase();
    let marker = format!("/{}/", route_base.to_ascii_lowercase());
    let at = lower.find(&marker)?;
    Some(path[at + marker.len()..].trim_end_matches('/'))
}

/// A route or query value. `req` reaches the handler as one object, so the strings inside it are
/// plain text: taken as they are, never unwrapped as JSON (a key may well look like JSON: `"x"`,
/// `[1,2]`, `007`).
fn plain_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A query value: plain text, or several values comma-joined.
fn plain_or_joined(value: &Value) -> Option<String> {
    match value {
        Value::Array(items) => Some(items.iter().filter_map(plain_text).collect::<Vec<_>>().join(",")),
        other => plain_text(other),
    }
}

fn scalar_or_joined(value: &Value) -> Option<String> {
    match lenient::unwrapped(value).as_ref() {
        Value::Array(items) => Some(items.iter().filter_map(lenient::text).collect::<Vec<_>>().join(",")),
        other => lenient::text(other),
    }
}

fn header_pairs(map: &Map<String, Value>) -> Vec<(String, String)> {
    map.iter().filter_map(|(name, value)| scalar_or_joined(value).map(|v| (name.to_ascii_lowercase(), v))).collect()
}

/// The `res` output object for an HTTP answer.
pub(crate) fn http_output(mut reply: HttpReply) -> Value {
    let mut headers = Map::new();
    headers.insert("Content-Type".into(), Value::String("application/json; charset=utf-8".into()));
    for (name, value) in std::mem::take(&mut reply.headers) {
        headers.insert(name.to_string(), Value::String(value.into_owned()));
    }
    // Built by moving each part in (`json!` would copy the headers and the body once more).
    let mut res = Map::new();
    res.insert("statusCode".into(), Value::String(reply.status.to_string()));
    res.insert("headers".into(), Value::Object(headers));
    res.insert("body".into(), Value::String(reply.into_body_text()));
    Value::Object(res)
}

/// The response envelope `{"Outputs", "Logs", "ReturnValue": null}`, written straight out as JSON
/// text (building it as a [`Value`] first would copy the outputs once more).
pub(crate) fn envelope_text(outputs: &Map<String, Value>, logs: &[String]) -> String {
    #[derive(serde::Serialize)]
    #[serde(rename_all = "PascalCase")]
    struct Envelope<'a> {
        outputs: &'a Map<String, Value>,
        logs: &'a [String],
        return_value: (),
    }
    // Maps of strings and values always serialise; the fallback only keeps this total.
    serde_json::to_string(&Envelope { outputs, logs, return_value: () }).unwrap_or_else(|e| {
        json!({"Outputs": {}, "Logs": [format!("the answer could not be written as JSON: {e}")], "ReturnValue": null})
            .to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_host_shaped_http_trigger() {
        let body = json!({
            "Data": {"req": {
                "Url": "http://localhost:7071/api/cache-aside/a%2Fb?x=1",
                "Method": "\"GET\"",
                "Query": {"x": "1"},
                "Headers": {"Content-Type": ["application/json"], "X-Multi": ["a", "b"]},
                "Params": {},
                "Identities": []
            }},
            "Metadata": {"sys": {"MethodName": "CacheAside"}, "x": "\"1\""}
        });
        let inv = Invocation::parse(body.to_string().as_bytes()).unwrap();
        let call = inv.http_call("req", "cache-aside").unwrap();
        assert_eq!(call.method, "GET");
        // `Params` lacks the key and the `Url`'s `%2F` cannot be read for sure: no key is taken.
        assert_eq!((call.route_key.as_deref(), call.path_key_unusable), (None, true));
        assert_eq!(call.header("x-multi"), Some("a,b"));
        assert_eq!(call.query("X"), Some("1"));
        assert!(call.body.is_empty());
        assert_eq!(inv.metadata("x"), Some(json!("1")));
    }

    #[test]
    fn without_params_only_an_unescaped_url_key_is_taken() {
        let call = |url: &str| {
            let body = json!({"Data": {"req": {"Url": url, "Method": "GET", "Params": {}}}});
            Invocation::parse(body.to_string().as_bytes()).unwrap().http_call("req", "cache-aside").unwrap()
        };
        let plain = call("http://h/api/cache-aside/user:1");
        assert_eq!((plain.route_key.as_deref(), plain.path_key_unusable), (Some("user:1"), false));
        for ambiguous in
            ["http://h/api/cache-aside/a%41", "http://h/api/cache-aside/a%20b", "http://h/api/cache-aside/"]
        {
            let c = call(ambiguous);
            assert_eq!((c.route_key.as_deref(), c.path_key_unusable), (None, true), "{ambiguous}");
        }
        let bare = call("http://h/api/cache-aside");
        assert_eq!((bare.route_key.as_deref(), bare.path_key_unusable), (None, false));
    }

    #[test]
    fn base64_bodies_and_string_encoded_requests() {
        let req = json!({"Method": "PUT", "Url": "http://h/api/write-through/k", "Headers": "{\"Content-Type\":[\"application/octet-stream\"]}", "Params": {"key": "k"}, "Body": "eyJhIjoxfQ=="});
        let body = json!({"data": {"REQ": req.to_string()}});
        let call = Invocation::parse(body.to_string().as_bytes()).unwrap().http_call("req", "write-through").unwrap();
        assert_eq!(&call.body[..], b"{\"a\":1}");
        assert_eq!(call.route_key.as_deref(), Some("k"));
    }

    #[test]
    fn malformed_envelopes_are_errors() {
        assert!(matches!(Invocation::parse(b"{nope"), Err(EnvelopeError::NotJson(_))));
        assert!(matches!(Invocation::parse(b"[1]"), Err(EnvelopeError::NotJson(_))));
        let inv = Invocation::parse(b"{\"Data\":{}}").unwrap();
        assert_eq!(inv.http_call("req", "x").unwrap_err(), EnvelopeError::MissingTrigger("req".into()));
        let inv = Invocation::parse(b"{\"Data\":{\"req\":{\"Url\":\"/\"}}}").unwrap();
        assert!(matches!(inv.http_call("req", "x"), Err(EnvelopeError::Malformed { .. })));
    }

    #[test]
    fn an_http_invocation_is_read_from_data_alone() {
        let body = json!({"metadata": {"Headers": {"x": "1"}, "huge": "x".repeat(1000)}, "DATA": {"req": {"Method": "GET", "Url": "http://h/api/cache-aside/k", "Params": {"key": "k"}}}});
        let inv = Invocation::parse_data_only(body.to_string().as_bytes()).unwrap();
        assert!(inv.metadata.is_empty());
        assert_eq!(inv.http_call("req", "cache-aside").unwrap().route_key.as_deref(), Some("k"));
        let full = Invocation::parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(full.data, inv.data, "the same Data either way");
        assert!(matches!(Invocation::parse_data_only(b"[1]"), Err(EnvelopeError::NotJson(_))));
        assert!(matches!(
            Invocation::parse_data_only(b"{\"Data\":{},\"Metadata\":{nope"),
            Err(EnvelopeError::NotJson(_))
        ));
        let as_text = json!({"Data": json!({"req": {"Method": "GET"}}).to_string()});
        assert!(Invocation::parse_data_only(as_text.to_string().as_bytes()).unwrap().binding("req").is_some());
    }

    #[test]
    fn the_envelope_text_is_the_envelope() {
        let mut outputs = Map::new();
        outputs.insert("res".into(), http_output(HttpReply::json(200, json!({"a": "é\"\n"}))));
        let logs = vec!["line \"one\"".to_string()];
        let text = envelope_text(&outputs, &logs);
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap(),
            json!({"Outputs": outputs, "Logs": logs, "ReturnValue": null})
        );
    }

    #[test]
    fn output_shape() {
        let reply = HttpReply::json(404, json!({"a": 1})).with_header("x-cache", "miss");
        let out = http_output(reply);
        assert_eq!(out["statusCode"], "404");
        assert_eq!(out["body"], "{\"a\":1}");
        assert_eq!(out["headers"]["x-cache"], "miss");
    }
}
