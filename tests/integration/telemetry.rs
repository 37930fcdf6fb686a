//! Telemetry (docs/observability.md): `GET api/metrics` answers Prometheus text whose counters move
//! as requests are made; with `OTEL_EXPORTER_OTLP_ENDPOINT` the handler sends metrics and spans
//! (continuing the caller's `traceparent`) to an OTLP/HTTP receiver.

use crate::common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use common::host::{Call, FunctionDef, MODES, send};
use common::process::Handler;
use common::{RedisServer, TestApp};
use serde_json::json;

/// The value of the series `name{labels…}` (labels given as a subset), summed over matching series.
fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

#[tokio::test]
async fn the_metrics_endpoint_answers_prometheus_text_whose_counters_move() {
    let redis = RedisServer::start();
    let t = TestApp::new(&redis, &[("L1MaxEntries", "0")]);
    let router = t.app.router();
    let (aside, through, behind, metrics) = (
        FunctionDef::load("CacheAside"),
        FunctionDef::load("WriteThrough"),
        FunctionDef::load("WriteBehind"),
        FunctionDef::load("Metrics"),
    );
    assert_eq!(metrics.auth_level, "admin");
    for mode in MODES {
        let scrape = || async {
            let reply = send(&router, mode, &metrics, &Call::new("GET", None)).await;
            assert_eq!(reply.status, 200, "{mode:?}");
            assert!(reply.header("content-type").is_some_and(|c| c.starts_with("text/plain")), "{:?}", reply.headers);
            reply.body.as_str().map(str::to_string).unwrap_or_else(|| reply.body.to_string())
        };
        let key = format!("metrics-{mode:?}");
        let before = scrape().await;
        send(&router, mode, &through, &Call::new("PUT", Some(&key)).json(&json!(1))).await;
        for _ in 0..3 {
            assert_eq!(send(&router, mode, &aside, &Call::new("GET", Some(&key))).await.header("x-cache"), Some("hit"));
        }
        send(&router, mode, &aside, &Call::new("GET", Some(&format!("{key}-absent")))).await;
        assert_eq!(send(&router, mode, &behind, &Call::new("PUT", Some(&key)).json(&json!(2))).await.status, 202);
        let after = scrape().await;
        let delta = |name: &str, labels: &[(&str, &str)]| series(&after, name, labels) - series(&before, name, labels);
        // Other tests run in this process too: their requests may add, never subtract.
        assert!(
            delta("cache_requests_total", &[("function", "CacheAside"), ("outcome", "hit"), ("tier", "l2")]) >= 3.0,
            "{after}"
        );
        assert!(delta("cache_requests_total", &[("function", "CacheAside"), ("outcome", "miss")]) >= 1.0);
        assert!(delta("cache_requests_total", &[("function", "WriteThrough"), ("outcome", "updated")]) >= 1.0);
        assert!(delta("write_behind_events_total", &[("outcome", "enqueued")]) >= 1.0);
        assert!(
            delta(
                "http_server_request_duration_seconds_count",
                &[("http_route", "CacheAside"), ("http_response_status_code", "200")]
            ) >= 3.0
        );
        assert!(delta("db_client_operation_duration_seconds_count", &[("db_system_name", "redis")]) >= 4.0);
        assert!(
            delta(
                "db_client_operation_duration_seconds_count",
                &[("db_system_name", "sqlite"), ("db_operation_name", "apply")]
            ) >= 1.0
        );
        assert!(after.contains("# TYPE http_server_request_duration_seconds histogram"));
        assert!(after.contains("http_server_request_duration_seconds_bucket{") && after.contains("le=\"+Inf\""));
        assert!(after.contains("# TYPE redis_breaker_open gauge"));
        // Never a value or a key's content in the metrics.
        assert!(!after.contains(&key), "metrics must not carry keys");
    }
}

/// What the fake OTLP/HTTP receiver got: (path, body) per request.
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A minimal OTLP/HTTP receiver: reads each request (Content-Length bodies), records it, answers
/// `200` with an empty protobuf body.
fn otlp_receiver() -> (u16, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let received: Received = Arc::default();
    let sink = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let sink = sink.clone();
            std::thread::spawn(move || {
                loop {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match stream.read(&mut byte) {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let head = String::from_utf8_lossy(&head).to_string();
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0usize);
                    let mut body = vec![0u8; length];
                    if stream.read_exact(&mut body).is_err() {
                        return;
                    }
                    sink.lock().unwrap().push((path, body));
                    let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    if stream.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, received)
}

#[test]
fn with_an_otlp_endpoint_metrics_and_spans_reach_it_and_continue_the_callers_trace() {
    let redis = RedisServer::start();
    let (port, received) = otlp_receiver();
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut handler = Handler::start(&[
        ("RedisCache", &redis.connection_string()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("L1MaxEntries", "0"),
    ]);
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    handler.exchange("PUT", "/api/write-through/otlp", &[("content-type", "application/json")], "1").expect("write");
    let answer = handler.exchange("GET", "/api/cache-aside/otlp", &[("traceparent", &traceparent)], "").expect("read");
    assert_eq!(answer.status, 200);
    // SIGTERM: the handler flushes its exporters before it exits.
    let status = handler.terminate().expect("exit status");
    let stderr = handler.stop();
    assert!(status.success(), "{status:?}: {stderr}");
    let received = received.lock().unwrap().clone();
    let by_path: HashMap<&str, Vec<&Vec<u8>>> = received.iter().fold(HashMap::new(), |mut m, (p, b)| {
        m.entry(p.as_str()).or_default().push(b);
        m
    });
    let metrics =
        by_path.get("/v1/metrics").unwrap_or_else(|| panic!("metrics were not exported: {received:?} {stderr}"));
    let contains =
        |bodies: &Vec<&Vec<u8>>, needle: &[u8]| bodies.iter().any(|b| b.windows(needle.len()).any(|w| w == needle));
    assert!(contains(metrics, b"cache.requests"), "the cache counters are in the export");
    assert!(contains(metrics, b"db.client.operation.duration"));
    let traces = by_path.get("/v1/traces").expect("spans were exported");
    assert!(contains(traces, b"redis-cache-patterns"), "the service name is on the spans");
    let id: Vec<u8> = (0..16).map(|i| u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).unwrap()).collect();
    assert!(contains(traces, &id), "the read's span continues the caller's trace");
    assert!(contains(traces, b"redis"), "Redis calls are child spans");
    assert!(contains(traces, b"store"), "store calls are child spans");
}
