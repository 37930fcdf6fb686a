//! Every error the patterns report, mapped to its HTTP answer in one place. Messages carry the
//! error's causes (`outer: inner`), so the caller sees what the store or Redis said.

use std::time::Duration;

use serde_json::{Value, json};

use super::host::{HttpReply, InvocationLog};
use crate::domain::error_chain::Chain;
use crate::patterns::write_behind::WriteBehindError;
use crate::patterns::{ReadError, WriteError};
use crate::ports::{CacheError, QueueError, StoreError};

/// `503` with a `Retry-After` of the dependency's hint (whole seconds, at least 1; 5 without a hint).
pub(crate) fn unavailable(code: &str, message: String, retry_after: Option<Duration>) -> HttpReply {
    let seconds = retry_after.map(|d| d.as_secs_f64().ceil() as u64).unwrap_or(5).max(1);
    HttpReply::error(503, code, message).with_header("Retry-After", seconds.to_string())
}

/// The error code of a store failure.
fn store_failure_code(error: &StoreError) -> &'static str {
    match error {
        StoreError::Unavailable { .. } => "store_unavailable",
        StoreError::Rejected { .. } => "store_error",
        StoreError::NotConfigured(_) => "store_not_configured",
    }
}

/// A store failure: `503` with `Retry-After` for transient ones and when no store is configured,
/// `500` when the store refused the request.
pub(crate) fn store_failure(error: &StoreError, log: &mut InvocationLog) -> HttpReply {
    let (code, message) = (store_failure_code(error), Chain(error).to_string());
    log.warn(format_args!("store failure: {message}"));
    match error {
        StoreError::Unavailable { retry_after, .. } => unavailable(code, message, *retry_after),
        StoreError::Rejected { .. } => HttpReply::error(500, code, message),
        StoreError::NotConfigured(_) => unavailable(code, message, Some(Duration::from_secs(300))),
    }
}

/// A failed read: only the store can fail a read (a cache failure is bypassed).
pub(crate) fn read_failure(error: &ReadError, log: &mut InvocationLog) -> HttpReply {
    match error {
        ReadError::Store(e) => store_failure(e, log),
    }
}

/// The `{"code","message"}` of a read that failed while others in the same call did not (a bulk
/// read answers `200` and lists it): what [`read_failure`] would have answered for it alone.
pub(crate) fn read_failure_detail(error: &ReadError) -> Value {
    match error {
        ReadError::Store(e) => json!({"code": store_failure_code(e), "message": Chain(e).to_string()}),
    }
}

/// A failed write-through.
pub(crate) fn write_failure(error: &WriteError, log: &mut InvocationLog) -> HttpReply {
    match error {
        WriteError::Store(e) => store_failure(e, log),
        WriteError::Contended => HttpReply::error(503, "contended", error.to_string()).with_header("Retry-After", "1"),
        WriteError::StoredVersionImplausible { .. } => {
            let message = Chain(error).to_string();
            log.warn(format_args!("write refused: {message}"));
            HttpReply::error(409, "stored_version_implausible", message)
        }
        WriteError::Superseded { .. } => HttpReply::error(409, "superseded", error.to_string()),
        WriteError::Stopping => stopping(error.to_string(), log),
    }
}

/// A refused write-behind write: `503` + `Retry-After` when the queue is down, `413` when the
/// event is too large for it, `500` when it refused the event for good.
pub(crate) fn write_behind_failure(error: &WriteBehindError, log: &mut InvocationLog) -> HttpReply {
    let error = match error {
        WriteBehindError::Store(e) => return store_failure(e, log),
        WriteBehindError::Queue(e) => e,
        WriteBehindError::Stopping => return stopping(error.to_string(), log),
    };
    let message = Chain(error).to_string();
    log.warn(format_args!("queue failure: {message}"));
    match error {
        QueueError::Unavailable { retry_after, .. } => unavailable("queue_unavailable", message, *retry_after),
        QueueError::TooLarge(_) => HttpReply::error(413, "value_too_large", message),
        QueueError::Rejected { .. } => HttpReply::error(500, "queue_rejected", message),
    }
}

/// Work cut by the handler stopping (`message` says what): `503`, to be sent again (to another
/// instance).
pub(crate) fn stopping(message: String, log: &mut InvocationLog) -> HttpReply {
    log.warn(format_args!("cut: {message}"));
    HttpReply::error(503, "stopping", message).with_header("Retry-After", "1")
}

/// A failed dead-letter call (the dead letters live in Redis only).
pub(crate) fn dead_letters_failure(error: &CacheError) -> HttpReply {
    if error.is_transient() {
        unavailable("redis_unavailable", format!("the dead-letter stream cannot be read: {}", Chain(error)), None)
    } else {
        HttpReply::error(500, "redis_error", format!("Redis refused the dead-letter command: {}", Chain(error)))
    }
}
