//! Host-shaped requests, built from the function folders' `function.json` files, so that a renamed
//! binding, route or method breaks these tests the way it would break the real host.
//!
//! Both host modes are produced (HOST-PROTOCOL.md §2–§4):
//! * forwarded: the caller's request re-sent to `/api/<route>` with its method, headers and body;
//! * payload: `POST /<FunctionName>` with `{"Data": {<trigger>: {Url, Method, Query, Headers,
//!   Params, Body, Identities}}, "Metadata": {…}}` carrying the host's quirks: header values as
//!   arrays, metadata strings JSON-encoded twice, numbers as strings, body absent when empty and
//!   base64 for octet-stream, timestamps without an offset.

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

/// How the host delivers the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Forwarded,
    Payload,
}

pub const MODES: [Mode; 2] = [Mode::Forwarded, Mode::Payload];

/// A caller's request to a function.
#[derive(Debug, Clone, Default)]
pub struct Call {
    pub method: String,
    pub key: Option<String>,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
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

/// Builds the payload-mode envelope the host would post for `call`.
pub fn envelope(def: &FunctionDef, call: &Call) -> Value {
    let path = def.path(call.key.as_deref());
    let query_string = if call.query.is_empty() {
        String::new()
    } else {
        format!(
            "?{}",
            call.query
                .iter()
                .map(|(k, v)| format!("{}={}", encode_segment(k), encode_segment(v)))
                .collect::<Vec<_>>()
                .join("&")
        )
    };
    let mut headers = Map::new();
    let mut header_strings = Map::new();
    for (name, value) in call.headers.iter().chain(
        [("Host".to_string(), "localhost:7071".to_string()), ("User-Agent".to_string(), "curl/8.5.0".to_string())]
            .iter(),
    ) {
        headers.insert(name.clone(), json!([value]));
        header_strings.insert(name.clone(), json!(value));
    }
    if !call.body.is_empty() {
        headers.insert("Content-Length".into(), json!([call.body.len().to_string()]));
        header_strings.insert("Content-Length".into(), json!(call.body.len().to_string()));
    }
    let query: Map<String, Value> = call.query.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    let mut params = Map::new();
    let mut metadata = Map::new();
    if let Some(key) = &call.key {
        // ASP.NET route values arrive decoded except for %2F.
        params.insert("key".into(), json!(key.replace('/', "%2F")));
        metadata.insert("key".into(), json!(serde_json::to_string(key).unwrap()));
    }
    let mut req = json!({
        "Url": format!("http://localhost:7071{path}{query_string}"),
        "Method": call.method,
        "Query": query,
        "Headers": headers,
        "Params": params,
        "Identities": [{"AuthenticationType": "WebJobsAuthLevel", "IsAuthenticated": true, "Claims": [], "Name": null}],
    });
    if !call.body.is_empty() {
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
        // JSON body fields pollute Metadata as double-encoded strings (HOST-PROTOCOL.md §2.2).
        if let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(&call.body) {
            for (name, value) in fields {
                metadata.insert(name, json!(serde_json::to_string(&value).unwrap()));
            }
        }
    }
    for (name, value) in &call.query {
        metadata.insert(name.clone(), json!(serde_json::to_string(value).unwrap()));
    }
    metadata.insert("Query".into(), Value::Object(query));
    metadata.insert("Headers".into(), Value::Object(header_strings));
    metadata.insert("sys".into(), json!({"MethodName": def.name, "UtcNow": "2024-10-25T10:20:00.1234567Z", "RandGuid": "c7c0d2a4-6d7e-4b8a-9b65-8c9a3b0f1e2d"}));
    let mut data = Map::new();
    data.insert(def.trigger.clone(), req);
    json!({"Data": data, "Metadata": metadata})
}

/// Sends `call` to `def` through `router` the way the host would in `mode`, and returns what the
/// caller would receive.
pub async fn send(router: &Router, mode: Mode, def: &FunctionDef, call: &Call) -> Reply {
    match mode {
        Mode::Forwarded => {
            let mut uri = def.path(call.key.as_deref());
            if !call.query.is_empty() {
                uri.push('?');
                uri.push_str(
                    &call
                        .query
                        .iter()
                        .map(|(k, v)| format!("{}={}", encode_segment(k), encode_segment(v)))
                        .collect::<Vec<_>>()
                        .join("&"),
                );
            }
            let mut builder = Request::builder()
                .method(call.method.as_str())
                .uri(uri)
                .header("X-Azure-Functions-InvocationId", "00000000-0000-0000-0000-000000000001");
            for (name, value) in &call.headers {
                builder = builder.header(name, value);
            }
            let (status, headers, body) = raw(router, builder.body(Body::from(call.body.clone())).unwrap()).await;
            assert!(
                headers.get("content-type").is_some_and(|ct| ct.starts_with("application/json")),
                "forwarded replies are JSON: {headers:?}"
            );
            Reply { status, headers, body: parse_json(&body), logs: Vec::new() }
        }
        Mode::Payload => {
            let (status, envelope) = invoke(router, &def.name, &envelope(def, call)).await;
            assert_eq!(status, 200, "a payload-mode envelope must be 200 whenever the function ran: {envelope}");
            unwrap_http_output(&envelope, &def.output)
        }
    }
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
    Reply { status, headers, body: parse_json(body_text.as_bytes()), logs }
}

/// Posts an invocation envelope to `/{function}` as the host does; returns the status and the
/// response envelope, checking the `application/json` the host requires.
pub async fn invoke(router: &Router, function: &str, envelope: &Value) -> (u16, Value) {
    let request = Request::builder()
        .method("POST")
        .uri(format!("/{function}"))
        .header("Content-Type", "application/json; charset=utf-8")
        .header("X-Azure-Functions-InvocationId", "00000000-0000-0000-0000-000000000002")
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
