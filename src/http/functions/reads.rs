//! The answer to a read, whichever pattern served it (CacheAside, RefreshAheadRead):
//! `200 {"key","value","version","source"}` or `404`, with `x-cache` saying what the cache did;
//! and to a bulk read: `200 {"items","missing","failed"}`.

use serde_json::json;

use crate::domain::json::JsonText;
use crate::domain::key::Key;
use crate::http::errors;
use crate::http::host::{HttpReply, InvocationLog};
use crate::patterns::{CacheStatus, Lookup, ReadError, Source};

/// A value found: `{"key","value","version","source"}`, written straight from the looked-up value.
#[derive(serde::Serialize)]
struct Found<'a> {
    key: &'a str,
    value: &'a JsonText,
    version: u64,
    source: &'a str,
}

/// The reply to a read by `pattern` of `key`, logged.
pub(super) fn reply(pattern: &str, key: &Key, result: Result<Lookup, ReadError>, log: &mut InvocationLog) -> HttpReply {
    let lookup = match result {
        Ok(lookup) => lookup,
        Err(e) => return errors::read_failure(&e, log),
    };
    log.info(format_args!(
        "{pattern} {:?}: {} (source {}, version {})",
        key.as_str(),
        lookup.cache.as_str(),
        lookup.source.as_str(),
        lookup.version
    ));
    let reply = match &lookup.value {
        Some(value) => HttpReply::serialized(
            200,
            &Found { key: key.as_str(), value, version: lookup.version, source: lookup.source.as_str() },
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

/// The reply to a bulk read by `pattern`: `200` with the values found (`items`), the keys that
/// have none (`missing`) and the keys that could not be read (`failed`, each with the error it
/// would have answered alone), in the order asked. `x-cache` is `hit` when every key was a hit,
/// `bypass` when the cache was down, else `miss`; `x-cache-tier` names the tier when every hit
/// came from the same one. When no key could be read, the reply is the first key's error, as a
/// single read answers it (`503` + `Retry-After` while the store is down).
pub(super) fn bulk_reply(
    pattern: &str,
    answers: Vec<(Key, Result<Lookup, ReadError>)>,
    log: &mut InvocationLog,
) -> HttpReply {
    if let Some(Err(first)) = answers.first().map(|(_, answer)| answer)
        && answers.iter().all(|(_, answer)| answer.is_err())
    {
        return errors::read_failure(first, log);
    }
    let (mut items, mut missing, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    let (mut hits, mut bypassed, mut stale, mut tiers) = (0, false, 0, Vec::new());
    for (key, answer) in &answers {
        let lookup = match answer {
            Ok(lookup) => lookup,
            Err(e) => {
                failed.push(json!({"key": key.as_str(), "error": errors::read_failure_detail(e)}));
                continue;
            }
        };
        match lookup.cache {
            CacheStatus::Hit => {
                hits += 1;
                tiers.extend(lookup.tier);
            }
            CacheStatus::Bypass => bypassed = true,
            CacheStatus::Miss | CacheStatus::Stale => {}
        }
        stale += usize::from(lookup.source == Source::Stale);
        match &lookup.value {
            Some(value) => items.push(json!({
                "key": key.as_str(),
                "value": value,
                "version": lookup.version,
                "source": lookup.source.as_str(),
            })),
            None => missing.push(key.as_str()),
        }
    }
    let cache = match (bypassed, hits == answers.len()) {
        (true, _) => CacheStatus::Bypass,
        (false, true) => CacheStatus::Hit,
        (false, false) => CacheStatus::Miss,
    };
    log.info(format_args!(
        "{pattern} bulk read of {} keys: {} ({hits} hits, {stale} stale, {} found, {} missing, {} failed)",
        answers.len(),
        cache.as_str(),
        items.len(),
        missing.len(),
        failed.len()
    ));
    if let Some((first, e)) = answers.iter().find_map(|(key, answer)| answer.as_ref().err().map(|e| (key, e))) {
        log.warn(format_args!(
            "{} of {} keys could not be read; {:?}: {}",
            failed.len(),
            answers.len(),
            first.as_str(),
            errors::read_failure_detail(e)["message"]
        ));
    }
    let reply = HttpReply::json(200, json!({"items": items, "missing": missing, "failed": failed}))
        .with_header("x-cache", cache.as_str());
    match tiers.split_first() {
        Some((tier, others)) if others.iter().all(|other| other == tier) => {
            reply.with_header("x-cache-tier", tier.as_str())
        }
        _ => reply,
    }
}
