//! `Health`: `GET api/health`, what users depend on, checked for real, within about two seconds.
//!
//! * Redis: a `PING` under the cache's deadline.
//! * The store: a real write (the store's own probe record, never a user key), so a full disk, a
//!   removed database file or a throttled account shows as down even while reads still work; and
//!   down too while user writes have been failing in the last 30 s (a small probe may still fit on
//!   a full disk).
//! * The write-behind queue: that it can take writes (e.g. the stream key is a stream), its backlog
//!   (down when the oldest queued write has waited over 15 minutes) and the number of dead letters.
//!
//! `200` when all three are up, else `503` with `Retry-After`; the body says which is down and why.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::app::App;
use crate::protocol::{HttpReply, InvocationLog};

/// The longest any one probe may take; they run at once, so Health answers within about this.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// A store write that failed this recently, with none succeeding since, makes the store "down".
const RECENT_WRITE_FAILURE: Duration = Duration::from_secs(30);
/// A queued write older than this makes the queue "down": a healthy consumer applies in seconds.
const STUCK_BACKLOG: Duration = Duration::from_secs(15 * 60);

async fn bounded<T>(probe: impl std::future::Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(PROBE_TIMEOUT, probe).await.map_err(|_| format!("no answer within {PROBE_TIMEOUT:?}"))
}

pub async fn handle(app: &App, log: &mut InvocationLog) -> HttpReply {
    let cache = app.patterns.cache();
    let store = app.patterns.store();
    let redis_probe = async {
        match bounded(cache.ping()).await {
            Ok(Ok(latency)) => {
                (true, json!({"status": "up", "target": cache.describe(), "latencyMs": millis(latency)}))
            }
            Ok(Err(e)) => (false, json!({"status": "down", "target": cache.describe(), "error": e.to_string()})),
            Err(e) => (false, json!({"status": "down", "target": cache.describe(), "error": e})),
        }
    };
    let store_probe = async {
        let started = Instant::now();
        let probed = bounded(store.probe_write()).await;
        if let (Ok(Ok(())), Some(why)) = (&probed, app.patterns.store_write_failure(RECENT_WRITE_FAILURE)) {
            return (
                false,
                json!({"status": "down", "kind": store.kind(), "error": format!("writes are failing: {why}")}),
            );
        }
        match probed {
            Ok(Ok(())) => (true, json!({"status": "up", "kind": store.kind(), "latencyMs": millis(started.elapsed())})),
            Ok(Err(e)) => (false, json!({"status": "down", "kind": store.kind(), "error": e.to_string()})),
            Err(e) => (false, json!({"status": "down", "kind": store.kind(), "error": e})),
        }
    };
    let queue = app.patterns.queue();
    let queue_probe = async {
        let (ping, backlog, dead_letters) =
            tokio::join!(bounded(queue.ping()), bounded(queue.backlog()), bounded(app.patterns.dead_letters().count()));
        let backlog = match backlog {
            Ok(Ok(Some(backlog))) => Some(backlog),
            _ => None,
        };
        // A write waiting this long means the consumer is stuck, or the store keeps failing.
        let stuck = backlog
            .and_then(|b| b.oldest_ms)
            .map(|oldest| app.patterns.now().since(crate::clock::Timestamp::from_millis(oldest)));
        let backlog_report = backlog.map(|b| json!(b)).unwrap_or(Value::Null);
        let dead_letters = dead_letters.ok().and_then(Result::ok);
        if let (Ok(Ok(())), Some(age)) = (&ping, stuck)
            && age > STUCK_BACKLOG
        {
            let error = format!(
                "the oldest queued write has waited {} s (more than {} s): is the consumer running, is the store taking writes?",
                age.as_secs(),
                STUCK_BACKLOG.as_secs()
            );
            return (
                false,
                json!({"status": "down", "kind": queue.kind(), "error": error, "backlog": backlog_report, "deadLetters": dead_letters}),
            );
        }
        let backlog = backlog_report;
        match ping {
            Ok(Ok(())) => {
                (true, json!({"status": "up", "kind": queue.kind(), "backlog": backlog, "deadLetters": dead_letters}))
            }
            Ok(Err(e)) => (
                false,
                json!({"status": "down", "kind": queue.kind(), "error": e.to_string(), "backlog": backlog, "deadLetters": dead_letters}),
            ),
            Err(e) => (false, json!({"status": "down", "kind": queue.kind(), "error": e})),
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
