//! The stack floor: a cache hit through this server's HTTP stack and Redis client, with none of the
//! patterns' logic. `scripts/bench.sh` measures it next to the real hits, so the report can tell what
//! the stack costs (hyper, axum, redis-rs, the loopback) from what the service adds to it.
//!
//! It is served by the service's own loop (`cachepatterns::http::server::serve`, same limits, same
//! allocator, same runtime), on `FUNCTIONS_CUSTOMHANDLER_PORT`, against the Redis at `RedisCache`
//! (`host:port`, no TLS, no password):
//!
//! * `GET /` answers `{"status":"ready"}`, like the handler's readiness probe;
//! * `GET /floor/l2/{key}`: one `HMGET` of the nine fields of an entry hash (as a Cache-Aside hit
//!   reads), the answer `{"key","value","version","source"}` written around the value's text, with
//!   `x-cache: hit` and `x-cache-tier: l2`. No key check, no JSON check, no breaker, no deadline of
//!   its own (the serve loop's header deadline and redis-rs's response timeout are there, as in the
//!   service: redis-rs's default of 500 ms here, the call deadline there), no metric or span;
//! * `GET /floor/l2d/{key}`: the same read under what the service adds around a hit to bound it,
//!   built the same way: the request's deadline (60 s) around it all, the request's budget (a
//!   task-local end, 2 s), and the Redis call's deadline (1 s, `syncTimeout`'s default, or what is
//!   left of the budget) around the `HMGET`. What it costs over `/floor/l2/` is what those
//!   protections cost;
//! * `GET /floor/l1/{key}`: the same answer from memory (`x-cache-tier: l1`), no lookup at all;
//! * `POST /FloorPayload`: a payload-mode hit. The envelope is read but not decoded; the answer is
//!   the same `HMGET`'s value in the envelope the service answers, for the key `FLOOR_KEY`.
//!
//! At start it writes the hash `floor␟entry` with the value `FLOOR_VALUE` (JSON text).
//! Not a product: nothing checks a key, and a Redis failure answers 503.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use cachepatterns::http::server::{Limits, serve};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The fields a Cache-Aside hit reads, in its order.
const FIELDS: [&str; 9] = ["data", "ver", "at", "soft", "hard", "neg", "fs", "tags", "asof"];
const ENTRY: &str = "floor\u{241f}entry";
/// The bounds of `/floor/l2d/`, the service's: the request's deadline, its budget for waiting on
/// the cache, and the default deadline of one Redis call.
const REQUEST_DEADLINE: Duration = Duration::from_secs(60);
const REQUEST_BUDGET: Duration = Duration::from_secs(2);
const REDIS_DEADLINE: Duration = Duration::from_secs(1);

tokio::task_local! {
    /// When the current request's budget ends (as the service's `ports::budget`).
    static BUDGET_ENDS: Instant;
}

#[derive(Clone)]
struct Floor {
    redis: redis::aio::ConnectionManager,
    value: Arc<str>,
    /// The key a payload-mode hit answers for (the floor does not decode the envelope).
    payload_key: Arc<str>,
}

/// A read's answer, as the service writes it.
fn answer_text(key: &str, value: &str) -> String {
    let mut body = String::with_capacity(value.len() + key.len() + 64);
    body.push_str("{\"key\":");
    body.push_str(&serde_json::Value::from(key).to_string());
    body.push_str(",\"value\":");
    body.push_str(value);
    // A version as wide as the service's (19 digits), so both answers have the same length.
    body.push_str(",\"version\":1000000000000000001,\"source\":\"cache\"}");
    body
}

/// The answer of a payload-mode hit: the read's answer inside the envelope the host expects, with
/// the log line the service writes.
fn envelope_text(key: &str, value: &str) -> String {
    let body = serde_json::Value::from(answer_text(key, value)).to_string();
    let log = serde_json::Value::from(format!("cache-aside {key:?}: hit (source cache, version 1000000000000000001)"));
    format!(
        "{{\"Outputs\":{{\"res\":{{\"body\":{body},\"headers\":{{\"Content-Type\":\"application/json; charset=utf-8\",\"x-cache\":\"hit\",\"x-cache-tier\":\"l2\"}},\"statusCode\":\"200\"}}}},\"Logs\":[{log}],\"ReturnValue\":null}}"
    )
}

fn json(body: String) -> Response {
    let mut response = Response::new(Body::from(body));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    response
}

fn answer(key: &str, value: &str, tier: &'static str) -> Response {
    let mut response = Response::new(Body::from(answer_text(key, value)));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    headers.insert("x-cache", HeaderValue::from_static("hit"));
    headers.insert("x-cache-tier", HeaderValue::from_static(tier));
    response
}

fn status(code: StatusCode, text: &'static str) -> Response {
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = code;
    response
}

/// The cached value, from one `HMGET` of the entry hash.
async fn read_value(floor: &Floor) -> Result<String, Response> {
    let mut redis = floor.redis.clone();
    let fields: redis::RedisResult<Vec<Option<String>>> =
        redis::cmd("HMGET").arg(ENTRY).arg(&FIELDS[..]).query_async(&mut redis).await;
    match fields.map(|fields| fields.into_iter().next().flatten()) {
        Ok(Some(value)) => Ok(value),
        Ok(None) => Err(status(StatusCode::NOT_FOUND, "no entry")),
        Err(_) => Err(status(StatusCode::SERVICE_UNAVAILABLE, "redis failed")),
    }
}

async fn route(State(floor): State<Floor>, request: Request) -> Response {
    let path = request.uri().path().to_string();
    if path == "/" {
        return json("{\"status\":\"ready\"}".to_string());
    }
    if path == "/FloorPayload" {
        // The envelope is read, not decoded: decoding it is the service's work.
        if axum::body::to_bytes(request.into_body(), 1 << 20).await.is_err() {
            return status(StatusCode::BAD_REQUEST, "unreadable body");
        }
        return match read_value(&floor).await {
            Ok(value) => json(envelope_text(&floor.payload_key, &value)),
            Err(failed) => failed,
        };
    }
    if let Some(key) = path.strip_prefix("/floor/l2d/") {
        let read = async {
            let left = BUDGET_ENDS.try_with(|ends| ends.saturating_duration_since(Instant::now()));
            tokio::time::timeout(REDIS_DEADLINE.min(left.unwrap_or(REDIS_DEADLINE)), read_value(&floor)).await
        };
        let budgeted = BUDGET_ENDS.scope(Instant::now() + REQUEST_BUDGET, read);
        return match tokio::time::timeout(REQUEST_DEADLINE, budgeted).await {
            Ok(Ok(Ok(value))) => answer(key, &value, "l2"),
            Ok(Ok(Err(failed))) => failed,
            Ok(Err(_)) | Err(_) => status(StatusCode::SERVICE_UNAVAILABLE, "deadline missed"),
        };
    }
    if let Some(key) = path.strip_prefix("/floor/l1/") {
        return answer(key, &floor.value, "l1");
    }
    let Some(key) = path.strip_prefix("/floor/l2/") else {
        return status(StatusCode::NOT_FOUND, "not found");
    };
    match read_value(&floor).await {
        Ok(value) => answer(key, &value, "l2"),
        Err(failed) => failed,
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::var("FUNCTIONS_CUSTOMHANDLER_PORT")?.parse()?;
    let redis_at = std::env::var("RedisCache")?;
    let value = std::env::var("FLOOR_VALUE").unwrap_or_else(|_| "\"floor\"".to_string());
    let client = redis::Client::open(format!("redis://{redis_at}/"))?;
    let mut redis = redis::aio::ConnectionManager::new(client).await?;
    let mut write = redis::cmd("HSET");
    write.arg(ENTRY).arg("data").arg(&value);
    for (field, filler) in FIELDS[1..].iter().zip([
        "1000000000000000001",
        "1764000000000",
        "1764003600000",
        "1764007200000",
        "0",
        "0",
        "",
        "1",
    ]) {
        write.arg(*field).arg(filler);
    }
    let _: i64 = write.query_async(&mut redis).await?;
    let payload_key = std::env::var("FLOOR_KEY").unwrap_or_else(|_| "k".to_string());
    let floor = Floor { redis, value: Arc::from(value), payload_key: Arc::from(payload_key) };
    let router = Router::new().fallback(route).with_state(floor);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    serve(listener, router, Limits::default(), shutdown, Duration::from_secs(1)).await?;
    Ok(())
}
