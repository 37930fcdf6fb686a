//! `Health`: `GET api/health`, the status of Redis and the store for probes.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::app::App;
use crate::protocol::{HttpReply, InvocationLog};

const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

pub async fn handle(app: &App, log: &mut InvocationLog) -> HttpReply {
    let cache = app.patterns.cache();
    let store = app.patterns.store();
    let redis_probe = async {
        match tokio::time::timeout(PROBE_TIMEOUT, cache.ping()).await {
            Ok(Ok(latency)) => {
                (true, json!({"status": "up", "target": cache.describe(), "latencyMs": millis(latency)}))
            }
            Ok(Err(e)) => (false, json!({"status": "down", "target": cache.describe(), "error": e.to_string()})),
            Err(_) => (
                false,
                json!({"status": "down", "target": cache.describe(), "error": format!("no answer within {PROBE_TIMEOUT:?}")}),
            ),
        }
    };
    let store_probe = async {
        let started = Instant::now();
        match tokio::time::timeout(PROBE_TIMEOUT, store.ping()).await {
            Ok(Ok(())) => (true, json!({"status": "up", "kind": store.kind(), "latencyMs": millis(started.elapsed())})),
            Ok(Err(e)) => (false, json!({"status": "down", "kind": store.kind(), "error": e.to_string()})),
            Err(_) => (
                false,
                json!({"status": "down", "kind": store.kind(), "error": format!("no answer within {PROBE_TIMEOUT:?}")}),
            ),
        }
    };
    let queue = app.patterns.queue();
    let queue_probe = async {
        let dead_letters = app.patterns.dead_letters().count().await.ok();
        match tokio::time::timeout(PROBE_TIMEOUT, queue.ping()).await {
            Ok(Ok(())) => (true, json!({"status": "up", "kind": queue.kind(), "deadLetters": dead_letters})),
            Ok(Err(e)) => (false, json!({"status": "down", "kind": queue.kind(), "error": e.to_string()})),
            Err(_) => (
                false,
                json!({"status": "down", "kind": queue.kind(), "error": format!("no answer within {PROBE_TIMEOUT:?}")}),
            ),
        }
    };
    let ((redis_up, redis), (store_up, store_report), (queue_up, queue_report)) =
        tokio::join!(redis_probe, store_probe, queue_probe);
    let healthy = redis_up && store_up && queue_up;
    let body = json!({
        "status": if healthy { "healthy" } else { "unhealthy" },
        "redis": redis,
        "store": store_report,
        "queue": queue_report,
        "version": env!("CARGO_PKG_VERSION"),
    });
    if healthy {
        HttpReply::json(200, body)
    } else {
        log.warn(format!(
            "health: redis {}, store {}, queue {}",
            status_word(redis_up),
            status_word(store_up),
            status_word(queue_up)
        ));
        HttpReply::json(503, body).with_header("Retry-After", "5")
    }
}

fn millis(d: Duration) -> Value {
    json!((d.as_secs_f64() * 1000.0 * 100.0).round() / 100.0)
}

fn status_word(up: bool) -> &'static str {
    if up { "up" } else { "down" }
}
