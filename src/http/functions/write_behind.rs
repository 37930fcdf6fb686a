//! `WriteBehind`: `PUT|POST|DELETE api/write-behind/{key}` → `202 Accepted` once queued.

use serde_json::json;

use super::input::{entry_options, read_key, write_key_and_value};
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
    let (key, change) = if call.method == "DELETE" {
        match read_key(call) {
            Ok(key) => (key, Change::Delete),
            Err(reply) => return reply,
        }
    } else {
        match write_key_and_value(call, max_value_bytes) {
            Ok(input) => (input.key, Change::Upsert(input.value)),
            Err(reply) => return reply,
        }
    };
    let options = match entry_options(call) {
        Ok(options) => options,
        Err(reply) => return reply,
    };
    let op = if change == Change::Delete { "delete" } else { "upsert" };
    match write_behind.accept_with(&key, change, &options).await {
        Ok(accepted) => {
            log.info(format!(
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
