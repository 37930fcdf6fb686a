//! `CacheAside`: `GET api/cache-aside/{key}` (or the seed's body-only `POST`).

use serde_json::json;

use super::input::read_key;
use crate::app::App;
use crate::patterns::{Lookup, ReadError};
use crate::protocol::{HttpCall, HttpReply, InvocationLog};

pub async fn handle(app: &App, call: &HttpCall, log: &mut InvocationLog) -> HttpReply {
    let key = match read_key(call) {
        Ok(key) => key,
        Err(reply) => return reply,
    };
    read_answer("cache-aside", &key, app.patterns.cache_aside_get(&key).await, log)
}

/// The answer for a read by `pattern`, logged.
pub(crate) fn read_answer(
    pattern: &str,
    key: &crate::key::Key,
    result: Result<Lookup, ReadError>,
    log: &mut InvocationLog,
) -> HttpReply {
    match result {
        Ok(lookup) => {
            log.info(format!(
                "{pattern} {:?}: {} (source {}, version {})",
                key.as_str(),
                lookup.cache.as_str(),
                lookup.source.as_str(),
                lookup.version
            ));
            lookup_reply(key, &lookup)
        }
        Err(e) => super::read_failure(&e, log),
    }
}

/// The answer for a read: `200 {"key","value","version","source"}` or `404`, with `x-cache`.
fn lookup_reply(key: &crate::key::Key, lookup: &Lookup) -> HttpReply {
    let reply = match &lookup.value {
        Some(value) => HttpReply::json(
            200,
            json!({"key": key.as_str(), "value": value, "version": lookup.version, "source": lookup.source.as_str()}),
        ),
        None => {
            HttpReply::error(404, "not_found", format!("no value for key {:?} in the cache or the store", key.as_str()))
        }
    };
    reply.with_header("x-cache", lookup.cache.as_str())
}
