//! The HTTP server the host talks to, and how each path is routed.
//!
//! * `GET /`: readiness; answers at once (the host polls it while starting and pings it later).
//! * `/api/...`: forwarded HTTP requests (`enableForwardingHttpRequest: true`).
//! * `POST /{FunctionName}`: payload-mode invocations. Kept apart from `/api/` so that no public
//!   route can reach them (azure-functions-host#6251).
//!
//! Slow or greedy clients cannot hold the server ([`Limits`]): request headers must arrive within
//! 10 s, a body within 30 s, and request bodies held in memory at once are bounded to 256 MiB (a
//! request waits for room, at most 10 s, then gets `503`).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Map, Value, json};
use tracing::Instrument;

use super::AppState;
use super::functions::{self, HttpFunction, TriggerFunction};
use super::host::{HttpReply, InvocationLog, forwarded, payload};
use crate::domain::error_chain::Chain;
use crate::ports::budget::{Held, with_request_budget};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Longest a request may run before the handler answers `503` itself.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// What a client may take of the server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest a client may take to send its request headers.
    pub header_read_timeout: Duration,
    /// Longest a client may take to send its request body.
    pub body_read_timeout: Duration,
    /// Request bodies held in memory at once, all requests together (bytes).
    pub in_flight_body_budget: usize,
    /// How long a request waits for room in that budget.
    pub budget_wait: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            in_flight_body_budget: 256 * 1024 * 1024,
            budget_wait: Duration::from_secs(10),
        }
    }
}
/// Event Hubs delivers up to this many events per invocation by default (`maxEventBatchSize`).
const EVENT_BATCH_SIZE: usize = 100;
/// The largest event Event Hubs carries (Standard and Premium tiers); larger writes got `413`.
const EVENT_HUBS_MAX_EVENT: usize = 1024 * 1024;

/// Shared server state: the services, the limits and the in-flight body budget.
#[derive(Clone)]
struct Server {
    /// Behind an `Arc`: the router clones the server state for every request.
    state: Arc<AppState>,
    limits: Limits,
    budget: Arc<tokio::sync::Semaphore>,
}

/// The router: one fallback that routes by path, so that any key (slashes, percent escapes)
/// reaches the function intact.
pub fn router(state: AppState, limits: Limits) -> Router {
    let budget = Arc::new(tokio::sync::Semaphore::new(limits.in_flight_body_budget.max(1)));
    Router::new().fallback(route).with_state(Server { state: Arc::new(state), limits, budget })
}

/// The router of a handler that cannot work with its configuration (on Azure, where exiting would
/// take every function down): `GET /` answers, Health says what is wrong, every function answers
/// `503 misconfigured`, and `EventHubConsumer` and `StoreChanges` invocations fail so that the
/// host keeps them for when the configuration is fixed (both have an unbounded retry policy).
pub(crate) fn misconfigured_router(problem: String) -> Router {
    let problem: Arc<str> = Arc::from(problem);
    Router::new().fallback(move |request: Request| {
        let problem = problem.clone();
        async move { misconfigured(&problem, request) }
    })
}

fn misconfigured(problem: &str, request: Request) -> Response {
    let path = request.uri().path().to_string();
    if path == "/" {
        return json_response(200, &[], &json!({"status": "ready"}));
    }
    let reply = |function: Option<HttpFunction>| {
        if function == Some(HttpFunction::Health) {
            HttpReply::json(503, json!({"status": "unhealthy", "problem": problem}))
        } else {
            HttpReply::error(503, "misconfigured", format!("the handler cannot work with its configuration: {problem}"))
        }
        .with_header("Retry-After", "60")
    };
    if let Some(rest) = strip_prefix_ignore_case(&path, "/api/") {
        let r = reply(HttpFunction::by_route(rest).map(|(f, _)| f));
        return reply_response(r);
    }
    let name = path.trim_matches('/');
    if let Some(function) = HttpFunction::by_name(name) {
        let logs = [format!("misconfigured: {problem}")];
        return response(
            200,
            &[],
            payload::http_envelope_text(function.output_binding(), reply(Some(function)), &logs),
        );
    }
    match TriggerFunction::by_name(name) {
        Some(TriggerFunction::EventHubConsumer | TriggerFunction::StoreChanges) => {
            json_response(500, &[], &error_body("misconfigured", &format!("not applied, kept for a retry: {problem}")))
        }
        Some(_) => envelope_response(&Map::new(), &[format!("skipped, misconfigured: {problem}")]),
        None => json_response(404, &[], &error_body("not_found", &format!("nothing is served at {path:?}"))),
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then lets open requests finish for
/// at most `drain_within`: the connections still busy then are cut off (aborted, and counted in the
/// log). Returns once every connection's task has ended, so no request runs after it: what the
/// caller stops next (the node-id lease that requests take their versions from) outlives them all.
/// A request stuck in blocking code ends when it next yields; until then the caller waits (and
/// the shutdown watchdog bounds the whole).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
    drain_within: Duration,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut connections = tokio::task::JoinSet::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // The set keeps what ended until it is joined: reaped here, so that it holds about the
        // open connections only.
        while connections.try_join_next().is_some() {}
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        connections.spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(drain_within, graceful.shutdown()).await.is_err() {
        connections.abort_all();
    }
    let mut cut = 0usize;
    while let Some(ended) = connections.join_next().await {
        cut += usize::from(ended.is_err_and(|e| e.is_cancelled()));
    }
    if cut > 0 {
        tracing::warn!(
            connections = cut,
            "requests still running {drain_within:?} after shutdown began were cut off ({cut} connections)"
        );
    }
    Ok(())
}

/// The invocation id for logs: the host sends a GUID; anything else is shown quoted, so a caller
/// cannot forge log fields through it.
fn invocation_id(headers: &axum::http::HeaderMap) -> Cow<'_, str> {
    let Some(raw) = headers.get("x-azure-functions-invocationid").map(|v| v.as_bytes()) else {
        return Cow::Borrowed("");
    };
    match std::str::from_utf8(raw) {
        Ok(id) if !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') => {
            Cow::Borrowed(id)
        }
        _ => Cow::Owned(format!("{:?}", String::from_utf8_lossy(raw))),
    }
}

/// The largest request body a path may have.
fn body_limit(max_value_bytes: usize, forwarded: bool, path: &str) -> usize {
    if forwarded {
        max_value_bytes + 64 * 1024
    } else if TriggerFunction::by_name(path.trim_matches('/')).is_some() {
        // What the host can send for one Event Hubs batch: every event at most the size Event Hubs
        // carries, each escaped twice (the array of strings, then the envelope's string), so at
        // most four bytes per byte, plus the metadata.
        EVENT_BATCH_SIZE * 4 * EVENT_HUBS_MAX_EVENT.max(max_value_bytes) + 4 * 1024 * 1024
    } else {
        // Payload envelopes carry the value JSON-escaped (and base64 for binary bodies).
        max_value_bytes * 4 + 1024 * 1024
    }
}

async fn route(State(server): State<Server>, request: Request) -> Response {
    let state = server.state;
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let invocation_id = invocation_id(&parts.headers);
    if path == "/" {
        return json_response(200, &[], &json!({"status": "ready"}));
    }
    let forwarded_path = strip_prefix_ignore_case(&path, "/api/");
    let limit = body_limit(state.max_value_bytes, forwarded_path.is_some(), &path);
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if let Some(n) = declared.filter(|n| *n > limit) {
        // A trigger invocation refused here would be retried by the host for ever (as when the read fails).
        if forwarded_path.is_none() && TriggerFunction::by_name(path.trim_matches('/')).is_some() {
            let reason = format!("the invocation declares {n} bytes, more than {limit}");
            return Box::pin(unreadable_trigger(&state, path.trim_matches('/'), &reason, b"")).await;
        }
        return too_large(limit, state.max_value_bytes);
    }
    // A request without a body (a read) neither waits for room in the budget nor reads.
    // The room is held until both the request and any write it begins (which finishes even if the
    // caller goes away, and holds the body's value) have ended.
    let mut room_held = None;
    let body = if body.is_end_stream() {
        Bytes::new()
    } else {
        // Room in the in-flight budget for what this body may hold (a request larger than the whole
        // budget waits for all of it).
        let limits = server.limits;
        let want = declared.unwrap_or(limit).clamp(1, limits.in_flight_body_budget.max(1));
        let permits = u32::try_from(want).unwrap_or(u32::MAX);
        let acquire = server.budget.clone().acquire_many_owned(permits);
        let mut room = match tokio::time::timeout(limits.budget_wait, acquire).await {
            Ok(Ok(permit)) => permit,
            _ => {
                return json_response(
                    503,
                    &[("Retry-After", "2".into())],
                    &error_body("busy", "too many large requests are being read at once; try again shortly"),
                );
            }
        };
        let read = tokio::time::timeout(limits.body_read_timeout, axum::body::to_bytes(body, limit)).await;
        let body = match read {
            Err(_) => {
                return json_response(
                    408,
                    &[],
                    &error_body(
                        "request_timeout",
                        &format!("the request body did not arrive within {:?}", limits.body_read_timeout),
                    ),
                );
            }
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => {
                let reason = if is_length_limit(&e) {
                    format!("the invocation is larger than {limit} bytes")
                } else {
                    format!("could not read the request body: {e}")
                };
                if forwarded_path.is_none() && TriggerFunction::by_name(path.trim_matches('/')).is_some() {
                    return Box::pin(unreadable_trigger(&state, path.trim_matches('/'), &reason, b"")).await;
                }
                return if is_length_limit(&e) {
                    too_large(limit, state.max_value_bytes)
                } else {
                    json_response(400, &[], &error_body("bad_body", &reason))
                };
            }
        };
        // Keep room for what the body holds; give the rest back at once.
        drop(room.split(want.saturating_sub(body.len().max(1))));
        room_held = Some(Arc::new(room) as Held);
        body
    };
    let span = tracing::info_span!(
        "request",
        invocation = %invocation_id,
        path = ?path,
        faas.invocation_id = %invocation_id,
        otel.name = tracing::field::Empty,
        otel.kind = "server"
    );
    // Continue the caller's trace (W3C `traceparent`) when it sent one and spans are exported.
    if crate::telemetry::traces_exported() {
        let parent = TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(&parts.headers));
        let _ = span.set_parent(parent);
    }
    route_body(state, parts, path.clone(), forwarded_path.map(str::to_string), body, room_held).instrument(span).await
}

async fn route_body(
    state: Arc<AppState>,
    parts: axum::http::request::Parts,
    path: String,
    forwarded_path: Option<String>,
    body: Bytes,
    room: Option<Held>,
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
        // The span is named after the function, never after the path (it holds the key).
        tracing::Span::current().record("otel.name", function.name());
        let emptied = raw_key == Some("");
        let raw_key = raw_key.filter(|raw| !raw.is_empty());
        // Dead-letter ids (`<ms>-<seq>`) survive the re-parse; cache keys may not.
        if raw_key.is_some() && function != HttpFunction::DeadLetters && forwarded::is_legacy_forwarding(&parts.headers)
        {
            return json_response(400, &[], &error_body("bad_key", forwarded::LEGACY_FORWARDING_LOSES_KEYS));
        }
        let route_key = match raw_key.map(|raw| forwarded::route_key(raw, &parts.headers)) {
            Some(Err(e)) => return json_response(400, &[], &error_body("bad_key", &e.to_string())),
            Some(Ok(key)) => Some(key),
            None => None,
        };
        let mut call = forwarded::http_call(&parts.method, &parts.uri, parts.headers, body, route_key);
        call.path_key_unusable = emptied;
        let mut log = InvocationLog::process_only();
        let reply = run_with_timeout(room, functions::dispatch(&state, function, &call, &mut log)).await;
        return reply_response(reply);
    }

    let name = path.trim_matches('/');
    if name.is_empty() || name.contains('/') {
        return json_response(404, &[], &error_body("not_found", &format!("nothing is served at {path}")));
    }
    if parts.method != axum::http::Method::POST {
        return json_response(
            405,
            &[("Allow", "POST".into())],
            &error_body("method_not_allowed", "invocations are POSTed by the Functions host"),
        );
    }
    if HttpFunction::by_name(name).is_some() || TriggerFunction::by_name(name).is_some() {
        tracing::Span::current().record("otel.name", name);
    }
    // Boxed: payload invocations carry much more state than a forwarded read, which should not
    // pay for moving it.
    Box::pin(invoke(&state, name, &body, room)).await
}

/// Payload mode: one invocation of function `name`, holding `room` (its body's share of the memory
/// budget) until it ends.
async fn invoke(state: &AppState, name: &str, body: &Bytes, room: Option<Held>) -> Response {
    let (http, trigger) = (HttpFunction::by_name(name), TriggerFunction::by_name(name));
    if http.is_none() && trigger.is_none() {
        return json_response(
            404,
            &[],
            &error_body("unknown_function", &format!("this handler has no function called {name:?}")),
        );
    }
    let mut log = InvocationLog::default();
    if let Some(function) = trigger {
        let invocation = match payload::Invocation::parse(body) {
            Ok(invocation) => invocation,
            Err(e) => return unreadable_trigger(state, name, &e.to_string(), body).await,
        };
        return match functions::invoke(state, function, &invocation, &mut log).await {
            Ok(outputs) => envelope_response(&outputs, &log.into_lines()),
            Err(failure) => {
                // The host drops the Logs of a failed invocation: put them in the process log too.
                let message = Chain(&failure).to_string();
                tracing::error!(function = name, error = %message, "invocation failed; the host will retry it if the function has a retry policy");
                json_response(500, &[], &error_body("invocation_failed", &message))
            }
        };
    }
    let Some(function) = http else {
        return json_response(404, &[], &error_body("unknown_function", name));
    };
    let call = match payload::http_call(body, function.trigger_binding(), function.route_base()) {
        Ok(call) => call,
        Err(e) => return json_response(400, &[], &error_body("bad_envelope", &e.to_string())),
    };
    let reply = run_with_timeout(room, functions::dispatch(state, function, &call, &mut log)).await;
    response(200, &[], payload::http_envelope_text(function.output_binding(), reply, &log.into_lines()))
}

/// A trigger invocation that cannot be read. Failing it would make the host retry the same
/// invocation for ever (`EventHubConsumer` and `StoreChanges` retry without bound); instead what
/// can be kept of a write-behind batch goes to the dead letters, and the invocation succeeds. Only
/// when even that cannot be recorded does it fail, to be retried. Store changes hold no writes:
/// an unreadable batch is logged and skipped.
async fn unreadable_trigger(state: &AppState, name: &str, reason: &str, body: &[u8]) -> Response {
    const KEEP: usize = 1024 * 1024;
    if TriggerFunction::by_name(name) == Some(TriggerFunction::StoreChanges) {
        let reason = format!(
            "{name}: the invocation could not be read ({reason}); its changes are not followed, and the entries they would have evicted live until their TTL"
        );
        tracing::error!(function = name, reason = ?reason, "unreadable trigger invocation");
        return envelope_response(&Map::new(), &[reason]);
    }
    let kept = String::from_utf8_lossy(&body[..body.len().min(KEEP)]).into_owned();
    let reason = format!("{name}: the invocation could not be read ({reason}); its events could not be applied");
    tracing::error!(function = name, reason = ?reason, "unreadable trigger invocation");
    match state.services.pushed_batches.keep_unreadable(&kept, &reason, &format!("{name} invocation")).await {
        Ok(id) => envelope_response(&Map::new(), &[format!("{reason}; dead letter {id}")]),
        Err(e) => json_response(
            500,
            &[],
            &error_body("invocation_failed", &format!("{reason}; recording it failed: {}", Chain(&e))),
        ),
    }
}

/// `work` within [`REQUEST_TIMEOUT`] and the request's budget, holding `room` (its body's share of
/// the memory budget). Not an `async fn`, for the reason given at [`with_request_budget`].
fn run_with_timeout(
    room: Option<Held>,
    work: impl std::future::Future<Output = HttpReply>,
) -> impl std::future::Future<Output = HttpReply> {
    use futures_util::FutureExt;
    tokio::time::timeout(REQUEST_TIMEOUT, with_request_budget(room, work)).map(|finished| match finished {
        Ok(reply) => reply,
        Err(_) => HttpReply::error(503, "timeout", format!("the request did not complete within {REQUEST_TIMEOUT:?}"))
            .with_header("Retry-After", "5"),
    })
}

fn too_large(limit: usize, max_value_bytes: usize) -> Response {
    json_response(
        413,
        &[],
        &error_body(
            "value_too_large",
            &format!("the request body is larger than {limit} bytes (MaxValueBytes is {max_value_bytes})"),
        ),
    )
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

/// A function's reply as an HTTP response (JSON, or text with its own `Content-Type`).
fn reply_response(mut reply: HttpReply) -> Response {
    let headers = std::mem::take(&mut reply.headers);
    response(reply.status, &headers, reply.into_body_text())
}

/// A payload-mode answer: `200` with the envelope (the function's outcome is inside it).
fn envelope_response(outputs: &Map<String, Value>, logs: &[String]) -> Response {
    response(200, &[], payload::envelope_text(outputs, logs))
}

fn json_response(status: u16, headers: &[(&'static str, Cow<'static, str>)], body: &Value) -> Response {
    response(status, headers, body.to_string())
}

/// JSON by default; `headers` may set another `Content-Type` (a text answer does).
fn response(status: u16, headers: &[(&'static str, Cow<'static, str>)], body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, Body::from(body)).into_response();
    let map = response.headers_mut();
    map.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    for (name, value) in headers {
        let value = match value {
            // The code's own constants (`x-cache: hit`, …): used as they are, without a copy.
            Cow::Borrowed(text) if text.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)) => {
                Ok(HeaderValue::from_static(text))
            }
            other => HeaderValue::from_str(other),
        };
        // The code's own lower-case names (`x-cache`, …) are used as they are, without a copy.
        let name = if !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
            Ok(header::HeaderName::from_static(name))
        } else {
            header::HeaderName::from_bytes(name.as_bytes())
        };
        if let (Ok(name), Ok(value)) = (name, value) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invocation_ids_cannot_forge_log_fields() {
        let headers = |id: &str| {
            let mut map = axum::http::HeaderMap::new();
            map.insert("x-azure-functions-invocationid", HeaderValue::from_str(id).unwrap());
            map
        };
        assert_eq!(
            invocation_id(&headers("0d3f5a0e-9d2b-4c55-8d2a-0c1c6b7f1b11")),
            "0d3f5a0e-9d2b-4c55-8d2a-0c1c6b7f1b11"
        );
        let forging = headers("1 path=/api/dead-letters}: FAKE error=\"x\"");
        let forged = invocation_id(&forging);
        assert!(forged.starts_with('"') && forged.ends_with('"'), "{forged}");
        assert!(forged.contains("\\\"x\\\""), "quotes inside are escaped: {forged}");
        assert_eq!(invocation_id(&axum::http::HeaderMap::new()), "");
    }
}
