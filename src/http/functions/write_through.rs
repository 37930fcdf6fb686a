//! `WriteThrough`: `PUT|POST|DELETE api/write-through/{key}` (and the seed's body-only `POST`).

use serde_json::json;

use super::input::write_request;
use crate::http::errors;
use crate::http::host::{HttpCall, HttpReply, InvocationLog};
use crate::patterns::WriteThrough;
use crate::ports::store::Change;

pub(super) async fn handle(
    write_through: &WriteThrough,
    max_value_bytes: usize,
    call: &HttpCall,
    log: &mut InvocationLog,
) -> HttpReply {
    let (key, change, options) = match write_request(call, max_value_bytes) {
        Ok(request) => request,
        Err(reply) => return reply,
    };
    let written = match write_through.write_with(&key, change.clone(), &options).await {
        Ok(written) => written,
        Err(e) => return errors::write_failure(&e, log),
    };
    let cache = if written.cached { "updated" } else { "bypass" };
    let body = match change {
        Change::Delete => {
            log.info(format_args!(
                "write-through delete {key:?}: stored at version {}, cache {cache}",
                written.version
            ));
            json!({"key": key.as_str(), "version": written.version, "deleted": true})
        }
        Change::Upsert(value) => {
            log.info(format_args!(
                "write-through {:?}: stored at version {}, cache {cache}",
                key.as_str(),
                written.version
            ));
            json!({"key": key.as_str(), "value": value, "version": written.version})
        }
    };
    HttpReply::json(200, body).with_header("x-cache", cache)
}
