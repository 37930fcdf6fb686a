//! `WriteBehind`: `PUT|POST|DELETE api/write-behind/{key}` → `202 Accepted` once queued.

use serde_json::json;

use super::input::write_request;
use crate::http::errors;
use crate::http::host::{HttpCall, HttpReply, InvocationLog};
use crate::patterns::WriteBehind;
use crate::ports::store::Change;

pub(super) async fn handle(
    write_behind: &WriteBehind,
    max_value_bytes: usize,
    call: &HttpCall,
    log: &mut InvocationLog,
) -> HttpReply {
    let (key, change, options) = match write_request(call, max_value_bytes) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    let op = if change == Change::Delete { "delete" } else { "upsert" };
    match write_behind.accept_with(&key, change, &options).await {
        Ok(accepted) => {
            log.info(format_args!(
                "write-behind {op} {:?}: queued on {} at version {}, cache {}",
                key.as_str(),
                write_behind.queue_kind(),
                accepted.version,
                if accepted.cached { "updated" } else { "not updated" }
            ));
            HttpReply::json(202, json!({"key": key.as_str(), "version": accepted.version, "status": "accepted"}))
                .with_header("x-cache", if accepted.cached { "updated" } else { "bypass" })
        }
        Err(e) => errors::write_behind_failure(&e, log),
    }
}
