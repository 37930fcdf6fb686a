//! The HTTP server the host talks to, and how each path is routed.
//!
//! * `GET /`: readiness; answers at once (the host polls it while starting and pings it later).
//! * `/api/...`: forwarded HTTP requests (`enableForwardingHttpRequest: true`).
//! * `POST /{FunctionName}`: payload-mode invocations. Kept apart from `/api/` so that no public
//!   route can reach them (azure-functions-host#6251).

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Map, Value, json};
use tracing::Instrument;

use crate::api::{self, HttpFunction, triggers};
use crate::app::App;
use crate::protocol::{self, HttpReply, InvocationLog, forwarded, payload};

/// Longest a request may run before the handler answers `503` itself.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The router: one fallback that routes by path, so that any key (slashes, percent escapes)
/// reaches the function intact.
pub fn router(app: App) -> Router {
    Router::new().fallback(route).with_state(app)
}

async fn route(State(app): State<App>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let invocation_id =
        parts.headers.get("x-azure-functions-invocationid").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    if path == "/" {
        return json_response(200, &[], &json!({"status": "ready"}));
    }
    // Payload envelopes carry the value JSON-escaped (and base64 for binary bodies).
    let forwarded_path = strip_prefix_ignore_case(&path, "/api/");
    let limit = if forwarded_path.is_some() {
        app.settings.max_value_bytes + 64 * 1024
    } else {
        app.settings.max_value_bytes * 4 + 1024 * 1024
    };
    let body = match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => bytes,
        Err(e) => {
            let too_large = is_length_limit(&e);
            return if too_large {
                json_response(
                    413,
                    &[],
                    &error_body(
                        "value_too_large",
                        &format!(
                            "the request body is larger than {limit} bytes (MaxValueBytes is {})",
                            app.settings.max_value_bytes
                        ),
                    ),
                )
            } else {
                json_response(400, &[], &error_body("bad_body", &format!("could not read the request body: {e}")))
            };
        }
    };
    let span = tracing::info_span!("request", invocation = %invocation_id, path = %path);
    route_body(app, parts, path.clone(), forwarded_path.map(str::to_string), body).instrument(span).await
}

async fn route_body(
    app: App,
    parts: axum::http::request::Parts,
    path: String,
    forwarded_path: Option<String>,
    body: Bytes,
) -> Response {
    if let Some(rest) = forwarded_path {
        let Some((function, raw_key)) = HttpFunction::by_route(&rest) else {
            return json_response(
                404,
                &[],
                &error_body(
                    "not_found",
                    &format!(
                        "no function serves {path}; the routes are {}",
                        HttpFunction::ALL.map(|f| format!("/api/{}", f.route_base())).join(", ")
                    ),
                ),
            );
        };
        let route_key = match raw_key.map(protocol::percent_decode) {
            Some(None) => {
                return json_response(
                    400,
                    &[],
                    &error_body("bad_key", "the key in the path is not valid percent-encoded UTF-8"),
                );
            }
            Some(Some(key)) => Some(key),
            None => None,
        };
        let call = forwarded::http_call(&parts.method, &parts.uri, &parts.headers, body, route_key);
        let mut log = InvocationLog::default();
        let reply = run_with_timeout(api::dispatch(&app, function, &call, &mut log)).await;
        return json_response(reply.status, &reply.headers, &reply.body);
    }

    let name = path.trim_matches('/');
    if name.is_empty() || name.contains('/') {
        return json_response(404, &[], &error_body("not_found", &format!("nothing is served at {path}")));
    }
    if parts.method != axum::http::Method::POST {
        return json_response(
            405,
            &[("Allow".into(), "POST".into())],
            &error_body("method_not_allowed", "invocations are POSTed by the Functions host"),
        );
    }
    invoke(&app, name, &body).await
}

/// Payload mode: one invocation of function `name`.
async fn invoke(app: &App, name: &str, body: &Bytes) -> Response {
    let (http, trigger) = (HttpFunction::by_name(name), triggers::by_name(name));
    if http.is_none() && trigger.is_none() {
        return json_response(
            404,
            &[],
            &error_body("unknown_function", &format!("this handler has no function called {name:?}")),
        );
    }
    let invocation = match payload::Invocation::parse(body) {
        Ok(invocation) => invocation,
        Err(e) => return json_response(400, &[], &error_body("bad_envelope", &e.to_string())),
    };
    let mut log = InvocationLog::default();
    if let Some(function) = trigger {
        return match triggers::invoke(app, function, &invocation, &mut log).await {
            Ok(outputs) => json_response(200, &[], &payload::envelope(outputs, log.into_lines())),
            Err(failure) => {
                // The host drops the Logs of a failed invocation: put them in the process log too.
                tracing::error!(function = name, error = %failure, "invocation failed; the host will retry it if the function has a retry policy");
                json_response(500, &[], &error_body("invocation_failed", &failure.to_string()))
            }
        };
    }
    let Some(function) = http else {
        return json_response(404, &[], &error_body("unknown_function", name));
    };
    let call = match invocation.http_call(function.trigger_binding(), function.route_base()) {
        Ok(call) => call,
        Err(e) => return json_response(400, &[], &error_body("bad_envelope", &e.to_string())),
    };
    let reply = run_with_timeout(api::dispatch(app, function, &call, &mut log)).await;
    let mut outputs = Map::new();
    outputs.insert(function.output_binding().to_string(), payload::http_output(&reply));
    json_response(200, &[], &payload::envelope(outputs, log.into_lines()))
}

async fn run_with_timeout(work: impl std::future::Future<Output = HttpReply>) -> HttpReply {
    match tokio::time::timeout(REQUEST_TIMEOUT, work).await {
        Ok(reply) => reply,
        Err(_) => HttpReply::error(503, "timeout", format!("the request did not complete within {REQUEST_TIMEOUT:?}"))
            .with_header("Retry-After", "5"),
    }
}

fn error_body(code: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message}})
}

fn strip_prefix_ignore_case<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    (path.len() >= prefix.len()
        && path.is_char_boundary(prefix.len())
        && path[..prefix.len()].eq_ignore_ascii_case(prefix))
    .then(|| &path[prefix.len()..])
}

fn json_response(status: u16, headers: &[(String, String)], body: &Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, Body::from(body.to_string())).into_response();
    let map = response.headers_mut();
    map.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (header::HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            map.insert(name, value);
        }
    }
    response
}

fn is_length_limit(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}
