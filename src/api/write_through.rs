//! `WriteThrough`: `PUT|POST|DELETE api/write-through/{key}` (and the seed's body-only `POST`).

use serde_json::json;

use super::input::{read_key, write_key_and_value};
use crate::app::App;
use crate::protocol::{HttpCall, HttpReply, InvocationLog};
use crate::store::Change;

pub async fn handle(app: &App, call: &HttpCall, log: &mut InvocationLog) -> HttpReply {
    if call.method == "DELETE" {
        let key = match read_key(call) {
            Ok(key) => key,
            Err(reply) => return reply,
        };
        return match app.patterns.write_through(&key, Change::Delete).await {
            Ok(written) => {
                log.info(format!(
                    "write-through delete {key:?}: stored at version {}, cache {}",
                    written.version,
                    cache_word(written.cached)
                ));
                HttpReply::json(200, json!({"key": key.as_str(), "version": written.version, "deleted": true}))
                    .with_header("x-cache", cache_word(written.cached))
            }
            Err(e) => super::write_failure(&e, log),
        };
    }
    let input = match write_key_and_value(call, app.settings.max_value_bytes) {
        Ok(input) => input,
        Err(reply) => return reply,
    };
    let value = input.value.unwrap_or_default();
    match app.patterns.write_through(&input.key, Change::Upsert(value.clone())).await {
        Ok(written) => {
            log.info(format!(
                "write-through {:?}: stored at version {}, cache {}",
                input.key.as_str(),
                written.version,
                cache_word(written.cached)
            ));
            HttpReply::json(200, json!({"key": input.key.as_str(), "value": value, "version": written.version}))
                .with_header("x-cache", cache_word(written.cached))
        }
        Err(e) => super::write_failure(&e, log),
    }
}

fn cache_word(cached: bool) -> &'static str {
    if cached { "updated" } else { "bypass" }
}
