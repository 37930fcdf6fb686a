//! `WriteBehind`: `PUT|POST|DELETE api/write-behind/{key}` → `202 Accepted` once queued.

use serde_json::json;

use super::input::{read_key, write_key_and_value};
use crate::app::App;
use crate::patterns::write_behind::WriteBehindError;
use crate::protocol::{HttpCall, HttpReply, InvocationLog};
use crate::queue::QueueError;
use crate::store::Change;

pub async fn handle(app: &App, call: &HttpCall, log: &mut InvocationLog) -> HttpReply {
    let (key, change) = if call.method == "DELETE" {
        match read_key(call) {
            Ok(key) => (key, Change::Delete),
            Err(reply) => return reply,
        }
    } else {
        match write_key_and_value(call, app.settings.max_value_bytes) {
            Ok(input) => (input.key, Change::Upsert(input.value.unwrap_or_default())),
            Err(reply) => return reply,
        }
    };
    let op = if change == Change::Delete { "delete" } else { "upsert" };
    match app.patterns.write_behind(&key, change).await {
        Ok(accepted) => {
            log.info(format!(
                "write-behind {op} {:?}: queued on {} at version {}, cache {}",
                key.as_str(),
                app.patterns.queue().kind(),
                accepted.version,
                if accepted.cached { "updated" } else { "not updated" }
            ));
            HttpReply::json(202, json!({"key": key.as_str(), "version": accepted.version, "status": "accepted"}))
                .with_header("x-cache", if accepted.cached { "updated" } else { "bypass" })
        }
        Err(WriteBehindError::Queue(e)) => queue_failure(&e, log),
        Err(WriteBehindError::Store(e)) => super::store_failure(&e, log),
    }
}

/// `503` + `Retry-After` when the queue is down; `413` when the event is too large for it; `500`
/// when it refused the event for good.
pub(crate) fn queue_failure(error: &QueueError, log: &mut InvocationLog) -> HttpReply {
    log.warn(format!("queue failure: {error}"));
    match error {
        QueueError::Unavailable { retry_after, .. } => {
            super::unavailable("queue_unavailable", error.to_string(), *retry_after)
        }
        QueueError::TooLarge(_) => HttpReply::error(413, "value_too_large", error.to_string()),
        QueueError::Rejected(_) => HttpReply::error(500, "queue_rejected", error.to_string()),
    }
}
