//! The answer to a read, whichever pattern served it (CacheAside, RefreshAheadRead):
//! `200 {"key","value","version","source"}` or `404`, with `x-cache` saying what the cache did.

use serde_json::json;

use crate::domain::key::Key;
use crate::http::errors;
use crate::http::host::{HttpReply, InvocationLog};
use crate::patterns::{Lookup, ReadError};

/// The reply to a read by `pattern` of `key`, logged.
pub(super) fn reply(pattern: &str, key: &Key, result: Result<Lookup, ReadError>, log: &mut InvocationLog) -> HttpReply {
    let lookup = match result {
        Ok(lookup) => lookup,
        Err(e) => return errors::read_failure(&e, log),
    };
    log.info(format!(
        "{pattern} {:?}: {} (source {}, version {})",
        key.as_str(),
        lookup.cache.as_str(),
        lookup.source.as_str(),
        lookup.version
    ));
    let reply = match &lookup.value {
        Some(value) => HttpReply::json(
            200,
            json!({"key": key.as_str(), "value": value, "version": lookup.version, "source": lookup.source.as_str()}),
        ),
        None => {
            HttpReply::error(404, "not_found", format!("no value for key {:?} in the cache or the store", key.as_str()))
        }
    };
    let reply = reply.with_header("x-cache", lookup.cache.as_str());
    match lookup.tier {
        Some(tier) => reply.with_header("x-cache-tier", tier.as_str()),
        None => reply,
    }
}
