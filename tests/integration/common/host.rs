//! Host-shaped requests, built from the function folders' `function.json` files, so that a renamed
//! binding, route or method breaks these tests the way it would break the real host.
//!
//! Every way a request reaches the handler is produced (docs/host-protocol.md), starting from the
//! request the caller sends and doing to it what the host does:
//! * direct: no host, the caller's request as it is (`scripts/run-local.sh`);
//! * payload (what `host.json` selects): Kestrel decodes the path (every `%XX` but `%2F`) and drops
//!   dot segments, routing takes the `{key}` value from that, and the host posts
//!   `POST /<FunctionName>` with `{"Data": {<trigger>: {Url, Method, Query, Headers, Params, Body,
//!   Identities}}, "Metadata": {…}}` carrying its quirks: header values as arrays, metadata strings
//!   JSON-encoded twice, numbers as strings, a chunked body dropped, base64 for octet-stream;
//! * proxied (`enableProxyingHttpRequest`): the decoded path escaped again segment by segment (so a
//!   kept `%2F` arrives as `%252F`), with `x-ms-invocation-id`;
//! * forwarded (legacy `enableForwardingHttpRequest`): the decoded path re-parsed as a URL, which
//!   cuts it at `?` or `#` and turns `\` into `/`; a chunked body dropped.

use std::collections::HashMap;
use std::path::PathBuf;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use base64::Engine;
use serde_json::{Map, Value, json};
use tower::ServiceExt;

/// What a `function.json` says about an HTTP function.
#[derive(Debug, Clone)]
pub struct FunctionDef {
    pub name: String,
    pub trigger: String,
    pub output: String,
    pub methods: Vec<String>,
    pub route: String,
    pub auth_level: String,
    pub json: Value,
}

impl FunctionDef {
    /// Reads `<repo>/<name>/function.json`.
    pub fn load(name: &str) -> Self {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(name).join("function.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let json: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
        let bindings = json["bindings"].as_array().expect("bindings").clone();
        let trigger = bindings
            .iter()
            .find(|b| b["direction"] == "in" && b["type"].as_str().is_some_and(|t| t.ends_with("Trigger")))
            .expect("a trigger binding");
        let output = bindings.iter().find(|b| b["direction"] == "out" && b["type"] == "http");
        Self {
            name: name.to_string(),
            trigger: trigger["name"].as_str().expect("trigger name").to_string(),
            output: output.and_then(|o| o["name"].as_str()).unwrap_or("").to_string(),
            methods: trigger["methods"]
                .as_array()
                .map(|m| m.iter().filter_map(|v| v.as_str()).map(str::to_ascii_uppercase).collect())
                .unwrap_or_default(),
            route: trigger["route"].as_str().unwrap_or(name).to_string(),
            auth_level: trigger["authLevel"].as_str().unwrap_or("function").to_string(),
            json,
        }
    }

    /// The public path for `key` (percent-encoded), e.g. `/api/cache-aside/a%2Fb`.
    pub fn path(&self, key: Option<&str>) -> String {
        let base = self.route.replace("/{key?}", "").replace("/{key}", "");
        match key {
            Some(key) => format!("/api/{base}/{}", encode_segment(key)),
            None => format!("/api/{base}"),
        }
    }
}

/// Percent-encodes everything but unreserved characters.
pub fn encode_segment(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// How a caller's request reaches the handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No host: the caller's request as sent, to `/api/...` (`scripts/run-local.sh`).
    Direct,
    /// The host's invocation payload (`POST /{FunctionName}`), what `host.json` selects.
    Payload,
    /// The host's reverse proxy (`enableProxyingHttpRequest`, newer hosts).
    Proxied,
    /// The host's legacy forwarding (`enableForwardingHttpRequest`): loses some keys.
    Forwarded,
}

/// The modes every API test runs in: the handler must answer all of them alike.
pub const MODES: [Mode; 3] = [Mode::Direct, Mode::Payload, Mode::Proxied];

/// The mode `host.json` selects.
pub fn host_json_mode() -> Mode {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("host.json");
    let host: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("host.json")).expect("host.json is JSON");
    let handler = &host["customHandler"];
    if handler["enableProxyingHttpRequest"] == true {
        Mode::Proxied
    } else if handler["enableForwardingHttpRequest"] == true {
        Mode::Forwarded
    } else {
        Mode::Payload
    }
}

/// A caller's request to a function.
#[derive(Debug, Clone, Default)]
pub struct Call {
    pub method: String,
    pub key: Option<String>,
    /// The path exactly as the caller sends it, instead of the one built from `key`.
    pub raw_path: Option<String>,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Send the body with `Transfer-Encoding: chunked` (no `Content-Length`).
    pub chunked: bool,
}

impl Call {
    pub fn new(method: &str, key: Option<&str>) -> Self {
        Self { method: method.to_string(), key: key.map(str::to_string), ..Default::default() }
    }

    pub fn json(mut self, body: &Value) -> Self {
        self.body = body.to_string().into_bytes();
        self.headers.push(("Content-Type".into(), "application/json".into()));
        self
    }

    pub fn text(mut self, body: &str, content_type: &str) -> Self {
        self.body = body.as_bytes().to_vec();
        self.headers.push(("Content-Type".into(), content_type.into()));
        self
    }

    pub fn query(mut self, name: &str, value: &str) -> Self {
        self.query.push((name.into(), value.into()));
        self
    }

    pub fn path(mut self, raw: &str) -> Self {
        self.raw_path = Some(raw.to_string());
        self
    }

    pub fn chunked(mut self) -> Self {
        self.chunked = true;
        self
    }

    /// The path as the caller sends it.
    fn caller_path(&self, def: &FunctionDef) -> String {
        self.raw_path.clone().unwrap_or_else(|| def.path(self.key.as_deref()))
    }

    /// The query string as the caller sends it (`?…` or empty).
    fn query_string(&self) -> String {
        if self.query.is_empty() {
            return String::new();
        }
        let pairs: Vec<String> =
            self.query.iter().map(|(k, v)| format!("{}={}", encode_segment(k), encode_segment(v))).collect();
        format!("?{}", pairs.join("&"))
    }
}

/// The answer as the caller would see it, plus the invocation `Logs` in payload mode.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Value,
    pub logs: Vec<String>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }
}

// ---- What the host does to a request (docs/host-protocol.md) ----

/// The request path as Kestrel hands it to the host: every `%XX` decoded except `%2F` (kept as
/// sent), then `.` and `..` segments removed.
pub fn kestrel_path(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
        match (bytes[i], hex) {
            (b'%', Some(h)) if !h.eq_ignore_ascii_case("2f") => {
                out.push(u8::from_str_radix(h, 16).unwrap());
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    remove_dot_segments(&String::from_utf8_lossy(&out))
}

/// RFC 3986 dot-segment removal, as Kestrel and `System.Uri` do it.
pub fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let parts: Vec<&str> = path.split('/').collect();
    for (i, segment) in parts.iter().enumerate() {
        let last = i == parts.len() - 1;
        match *segment {
            "." => {
                if last {
                    segments.push("");
                }
            }
            ".." => {
                if segments.len() > 1 {
                    segments.pop();
                }
                if last {
                    segments.push("");
                }
            }
            other => segments.push(other),
        }
    }
    let joined = segments.join("/");
    if joined.starts_with('/') { joined } else { format!("/{joined}") }
}

/// ASP.NET routing of a Kestrel path against `api/<route>`: `None` when nothing matches (the host
/// answers 404 itself), else the `{key}` route value, which keeps `%2F` as it came.
pub fn route_value(decoded: &str, def: &FunctionDef) -> Option<Option<String>> {
    let base = def.route.replace("/{key?}", "").replace("/{key}", "");
    let segments: Vec<&str> = decoded.trim_start_matches('/').split('/').collect();
    let mut segments = segments.as_slice();
    if segments.last() == Some(&"") {
        segments = &segments[..segments.len() - 1];
    }
    let literal: Vec<&str> = std::iter::once("api").chain(base.split('/')).collect();
    if segments.len() < literal.len() || !literal.iter().zip(segments).all(|(a, b)| a.eq_ignore_ascii_case(b)) {
        return None;
    }
    match &segments[literal.len()..] {
        [] if !def.route.contains("{key}") => Some(None),
        [key] if def.route.contains("{key") && !key.is_empty() => Some(Some(key.to_string())),
        _ => None,
    }
}

/// What `System.Uri` keeps of a display URL's path (`AbsolutePath`): the path ends at `?` or `#`,
/// `\` becomes `/`, dot segments go, and what a path cannot hold is escaped.
pub fn uri_absolute_path(decoded: &str) -> String {
    let cut = decoded.find(['?', '#']).map_or(decoded, |i| &decoded[..i]);
    uri_component(&remove_dot_segments(&cut.replace('\\', "/")))
}

/// `PathString.ToUriComponent()` of a Kestrel path, as the payload's `Url` carries it: characters a
/// path cannot hold are escaped, a `%` that starts an escape is kept.
pub fn uri_component(decoded: &str) -> String {
    let bytes = decoded.as_bytes();
    let mut out = String::new();
    for (i, &b) in bytes.iter().enumerate() {
        let escape_ok = b == b'%' && bytes.get(i + 1..i + 3).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
        match b {
            b'%' if escape_ok => out.push('%'),
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'-'
            | b'_'
            | b'.'
            | b'~'
            | b'/'
            | b'!'
            | b'$'
            | b'&'
            | b'\''
            | b'('
            | b')'
            | b'*'
            | b'+'
            | b','
            | b';'
            | b'='
            | b':'
            | b'@' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// What the host's reverse proxy sends for a Kestrel path: each segment escaped again (`%` among
/// them, so a kept `%2F` goes out as `%252F`).
pub fn proxy_path(decoded: &str) -> String {
    decoded
        .split('/')
        .map(|segment| {
            segment
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z'
                    | b'a'..=b'z'
                    | b'0'..=b'9'
                    | b'-'
                    | b'_'
                    | b'.'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@' => (b as char).to_string(),
                    _ => format!("%{b:02X}"),
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// What ASP.NET makes of a query string: pairs with `+` as space and `%XX` decoded.
fn decoded_query(call: &Call) -> Vec<(String, String)> {
    call.query.clone()
}

fn not_found_from_host() -> Reply {
    Reply { status: 404, headers: HashMap::new(), body: Value::Null, logs: vec!["the host matched no function".into()] }
}

/// Builds the payload-mode envelope the host would post for `call`, from the Kestrel path
/// `decoded` and the route value `key`.
fn payload_envelope(def: &FunctionDef, call: &Call, decoded: &str, key: Option<String>) -> Value {
    let query_string = call.query_string();
    let mut headers = Map::new();
    let mut header_strings = Map::new();
    let mut all: Vec<(String, String)> = call.headers.clone();
    all.push(("Host".into(), "localhost:7071".into()));
    all.push(("User-Agent".into(), "curl/8.5.0".into()));
    if call.chunked {
        all.push(("Transfer-Encoding".into(), "chunked".into()));
    } else if !call.body.is_empty() {
        all.push(("Content-Length".into(), call.body.len().to_string()));
    }
    // A header on several lines: one name with every value (`Data`), or joined by commas
    // (`Metadata`, plain strings).
    for (name, value) in &all {
        match headers.get_mut(name) {
            Some(Value::Array(values)) => values.push(json!(value)),
            _ => drop(headers.insert(name.clone(), json!([value]))),
        }
        match header_strings.get_mut(name) {
            Some(Value::String(joined)) => {
                joined.push(',');
                joined.push_str(value);
            }
            _ => drop(header_strings.insert(name.clone(), json!(value))),
        }
    }
    // A name given several times becomes one entry, its values joined with commas (ASP.NET's
    // `StringValues.ToString()`), the first occurrence's name and place kept.
    let mut query: Map<String, Value> = Map::new();
    for (name, value) in decoded_query(call) {
        match query.iter_mut().find(|(k, _)| k.eq_ignore_ascii_case(&name)) {
            Some((_, Value::String(joined))) => {
                joined.push(',');
                joined.push_str(&value);
            }
            _ => {
                query.insert(name, json!(value));
            }
        }
    }
    let mut params = Map::new();
    let mut metadata = Map::new();
    if let Some(key) = &key {
        params.insert("key".into(), json!(key));
        metadata.insert("key".into(), json!(serde_json::to_string(key).unwrap()));
    }
    let mut req = json!({
        "Url": format!("http://localhost:7071{}{query_string}", uri_component(decoded)),
        "Method": call.method,
        "Query": query,
        "Headers": headers,
        "Params": params,
        "Identities": [{"AuthenticationType": "WebJobsAuthLevel", "IsAuthenticated": true, "Claims": [], "Name": null}],
    });
    // A body arrives only with a Content-Length: a chunked body is dropped.
    if !call.body.is_empty() && !call.chunked {
        let content_type = call
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.to_ascii_lowercase())
            .unwrap_or_default();
        let body = if content_type.starts_with("application/octet-stream") || content_type.starts_with("multipart/") {
            base64::engine::general_purpose::STANDARD.encode(&call.body)
        } else {
            String::from_utf8_lossy(&call.body).into_owned()
        };
        req["Body"] = json!(body);
        // JSON body fields pollute Metadata as double-encoded strings.
        if let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(&call.body) {
            for (name, value) in fields {
                metadata.insert(name, json!(serde_json::to_string(&value).unwrap()));
            }
        }
    }
    for (name, value) in &call.query {
        metadata.insert(name.clone(), json!(serde_json::to_string(value).unwrap()));
    }
    metadata.insert("Query".into(), req["Query"].clone());
    metadata.insert("Headers".into(), Value::Object(header_strings));
    metadata.insert("sys".into(), json!({"MethodName": def.name, "UtcNow": "2024-10-25T10:20:00.1234567Z", "RandGuid": "c7c0d2a4-6d7e-4b8a-9b65-8c9a3b0f1e2d"}));
    let mut data = Map::new();
    data.insert(def.trigger.clone(), req);
    json!({"Data": data, "Metadata": metadata})
}

/// Builds the payload-mode envelope the host would post for `call` (a well-formed path).
pub fn envelope(def: &FunctionDef, call: &Call) -> Value {
    let decoded = kestrel_path(&call.caller_path(def));
    let key = route_value(&decoded, def).flatten();
    payload_envelope(def, call, &decoded, key)
}

/// An HTTP request to the handler with `call`'s method, headers and body (chunked if asked).
fn http_request(call: &Call, uri: &str, extra: &[(&str, &str)], with_body: bool) -> Request<Body> {
    let mut builder = Request::builder().method(call.method.as_str()).uri(uri);
    let mut user_agent = "curl/8.5.0".to_string();
    for (name, value) in &call.headers {
        if name.eq_ignore_ascii_case("user-agent") {
            user_agent = value.clone();
        } else {
            builder = builder.header(name, value);
        }
    }
    for (name, value) in extra {
        if name.eq_ignore_ascii_case("user-agent") {
            user_agent = format!("{user_agent} {value}");
        } else {
            builder = builder.header(*name, *value);
        }
    }
    builder = builder.header("User-Agent", user_agent);
    let body = if !with_body {
        if call.chunked {
            builder = builder.header("Transfer-Encoding", "chunked");
        }
        Body::empty()
    } else if call.chunked {
        let chunks: Vec<Result<bytes::Bytes, std::io::Error>> =
            call.body.chunks(7).map(|c| Ok(bytes::Bytes::copy_from_slice(c))).collect();
        Body::from_stream(futures_util::stream::iter(chunks))
    } else {
        Body::from(call.body.clone())
    };
    builder.body(body).unwrap()
}

/// Sends `call` to `def` through `router` the way the host would in `mode`, and returns what the
/// caller would receive.
pub async fn send(router: &Router, mode: Mode, def: &FunctionDef, call: &Call) -> Reply {
    let caller_path = call.caller_path(def);
    let query = call.query_string();
    let decoded = kestrel_path(&caller_path);
    let (uri, extra, with_body): (String, Vec<(&str, &str)>, bool) = match mode {
        Mode::Direct => (format!("{caller_path}{query}"), vec![], true),
        Mode::Payload => {
            let Some(key) = route_value(&decoded, def) else { return not_found_from_host() };
            let (status, envelope) = invoke(router, &def.name, &payload_envelope(def, call, &decoded, key)).await;
            assert_eq!(status, 200, "a payload-mode envelope must be 200 whenever the function ran: {envelope}");
            return unwrap_http_output(&envelope, &def.output);
        }
        Mode::Proxied => {
            if route_value(&decoded, def).is_none() {
                return not_found_from_host();
            }
            (
                format!("{}{query}", proxy_path(&decoded)),
                vec![("x-ms-invocation-id", "00000000-0000-0000-0000-000000000003")],
                true,
            )
        }
        Mode::Forwarded => {
            if route_value(&decoded, def).is_none() {
                return not_found_from_host();
            }
            let extra = vec![
                ("X-Azure-Functions-InvocationId", "00000000-0000-0000-0000-000000000001"),
                ("X-Azure-Functions-HostVersion", "4.1041.0"),
                ("User-Agent", "Azure-Functions-Host/4.1041.0"),
            ];
            (format!("{}{query}", uri_absolute_path(&decoded)), extra, !call.chunked)
        }
    };
    let (status, headers, body) = raw(router, http_request(call, &uri, &extra, with_body)).await;
    if headers.get("content-type").is_some_and(|ct| ct.starts_with("text/plain")) {
        // Text answers (Prometheus metrics) come back as a JSON string of the text.
        return Reply { status, headers, body: Value::String(String::from_utf8_lossy(&body).into()), logs: Vec::new() };
    }
    assert!(
        headers.get("content-type").is_some_and(|ct| ct.starts_with("application/json")),
        "HTTP replies are JSON: {headers:?}"
    );
    Reply { status, headers, body: parse_json(&body), logs: Vec::new() }
}

/// Turns a response envelope's HTTP output into what the caller sees, checking the shape the host
/// needs: `res` an object, `statusCode` and headers strings, `body` a string, `ReturnValue` null.
pub fn unwrap_http_output(envelope: &Value, output: &str) -> Reply {
    assert_eq!(envelope.get("ReturnValue"), Some(&Value::Null), "ReturnValue must be null: {envelope}");
    let res = &envelope["Outputs"][output];
    assert!(res.is_object(), "Outputs.{output} must be an object: {envelope}");
    let status: u16 =
        res["statusCode"].as_str().expect("statusCode is a string").parse().expect("statusCode is a number");
    let headers: HashMap<String, String> = res["headers"]
        .as_object()
        .expect("headers object")
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str().expect("header values are strings").to_string()))
        .collect();
    let body_text = res["body"].as_str().expect("body is a string");
    let logs =
        envelope["Logs"].as_array().expect("Logs array").iter().map(|l| l.as_str().unwrap().to_string()).collect();
    let body = if headers.get("content-type").is_some_and(|ct| ct.starts_with("text/plain")) {
        Value::String(body_text.to_string())
    } else {
        parse_json(body_text.as_bytes())
    };
    Reply { status, headers, body, logs }
}

/// Posts an invocation envelope to `/{function}` as the host does; returns the status and the
/// response envelope, checking the `application/json` the host requires.
pub async fn invoke(router: &Router, function: &str, envelope: &Value) -> (u16, Value) {
    let request = Request::builder()
        .method("POST")
        .uri(format!("/{function}"))
        .header("Content-Type", "application/json; charset=utf-8")
        .header("X-Azure-Functions-InvocationId", "00000000-0000-0000-0000-000000000002")
        .header("X-Azure-Functions-HostVersion", "4.1041.0")
        .header("User-Agent", "Azure-Functions-Host/4.1041.0")
        .body(Body::from(envelope.to_string()))
        .unwrap();
    let (status, headers, body) = raw(router, request).await;
    assert_eq!(
        headers.get("content-type").map(|s| s.split(';').next().unwrap()),
        Some("application/json"),
        "the host requires application/json"
    );
    (status, parse_json(&body))
}

/// Sends a raw request and returns status, lower-cased headers and body bytes.
pub async fn raw(router: &Router, request: Request<Body>) -> (u16, HashMap<String, String>, Vec<u8>) {
    let response = router.clone().oneshot(request).await.expect("router answers");
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_ascii_lowercase(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body").to_vec();
    (status, headers, body)
}

fn parse_json(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("reply body is not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}
