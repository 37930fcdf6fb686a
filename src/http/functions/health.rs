//! `Health`: `GET api/health`. `200` when the cache, the store and the write-behind queue are all up,
//! else `503` with `Retry-After`; the body says which is down and why (`patterns::health`).

use std::time::Duration;

use serde_json::{Value, json};

use crate::http::host::{HttpReply, InvocationLog};
use crate::patterns::HealthCheck;
use crate::patterns::health::Probe;

pub(super) async fn handle(health: &HealthCheck, log: &mut InvocationLog) -> HttpReply {
    let report = health.check().await;
    let probe = |probe: &Probe, name_field: &str| {
        let mut body = json!({"status": status_word(probe.up), name_field: probe.name});
        if let Some(latency) = probe.latency {
            body["latencyMs"] = millis(latency);
        }
        if let Some(error) = &probe.error {
            body["error"] = json!(error);
        }
        body
    };
    let mut queue = probe(&report.queue.probe, "kind");
    queue["backlog"] = match report.queue.backlog {
        Some(backlog) => json!({
            "length": backlog.length,
            "pending": backlog.pending,
            "oldestMs": backlog.oldest.map(|t| t.as_millis()),
        }),
        None => Value::Null,
    };
    queue["deadLetters"] = json!(report.queue.dead_letters);
    let healthy = report.healthy();
    let body = json!({
        "status": if healthy { "healthy" } else { "unhealthy" },
        "redis": probe(&report.cache, "target"),
        "store": probe(&report.store, "kind"),
        "queue": queue,
        "nearCache": {
            "status": match report.near_cache_live {
                Some(true) => "live",
                Some(false) => "bypassed",
                None => "off",
            },
            "pendingInvalidations": report.pending_invalidations,
        },
        "version": env!("CARGO_PKG_VERSION"),
    });
    if healthy {
        return HttpReply::json(200, body);
    }
    log.warn(format_args!(
        "health: redis {}, store {}, queue {}",
        status_word(report.cache.up),
        status_word(report.store.up),
        status_word(report.queue.probe.up)
    ));
    HttpReply::json(503, body).with_header("Retry-After", "5")
}

fn millis(d: Duration) -> Value {
    json!((d.as_secs_f64() * 1000.0 * 100.0).round() / 100.0)
}

fn status_word(up: bool) -> &'static str {
    if up { "up" } else { "down" }
}
