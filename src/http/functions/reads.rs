//! The answer to a read, whichever pattern served it (CacheAside, RefreshAheadRead):
//! `200 {"key","value","version","source"}` or `404`, with `x-cache` saying what the cache did;
//! and to a bulk read: `200 {"items","missing","failed"}`.

use serde_json::json;

use crate::domain::json::JsonText;
use crate::domain::key::Key;
use crate::http::errors;
use crate::http::host::{HttpReply, InvocationLog};
use crate::patterns::{CacheStatus, Lookup, ReadError, Source};

/// A value found, `{"key","value","version","source"}`, written out around the value's JSON text,
/// which goes in as it is: a hit never parses the value.
fn found_text(out: &mut String, key: &str, value: &JsonText, version: u64, source: &str) {
    out.push_str("{\"key\":");
    push_json_string(out, key);
    out.push_str(",\"value\":");
    out.push_str(value.as_str());
    out.push_str(",\"version\":");
    out.push_str(&version.to_string());
    out.push_str(",\"source\":");
    push_json_string(out, source);
    out.push('}');
}

fn push_json_string(out: &mut String, text: &str) {
    // Writing a string as JSON cannot fail; the fallback only keeps this total.
    match serde_json::to_string(text) {
        Ok(quoted) => out.push_str(&quoted),
        Err(_) => out.push_str("\"\""),
    }
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
        Some(value) => {
            let mut body = String::with_capacity(value.len() + key.as_str().len() + 64);
            found_text(&mut body, key.as_str(), value, lookup.version, lookup.source.as_str());
            HttpReply::json_text(200, body)
        }
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
            Some(value) => {
                let mut item = String::with_capacity(value.len() + key.as_str().len() + 64);
                found_text(&mut item, key.as_str(), value, lookup.version, lookup.source.as_str());
                items.push(item);
            }
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
    // The items are written out as text (their values are never parsed); the rest is small.
    let mut body = String::from("{\"items\":[");
    body.push_str(&items.join(","));
    body.push_str("],\"missing\":");
    body.push_str(&json!(missing).to_string());
    body.push_str(",\"failed\":");
    body.push_str(&serde_json::Value::Array(failed).to_string());
    body.push('}');
    let reply = HttpReply::json_text(200, body).with_header("x-cache", cache.as_str());
    match tiers.split_first() {
        Some((tier, others)) if others.iter().all(|other| other == tier) => {
            reply.with_header("x-cache-tier", tier.as_str())
        }
        _ => reply,
    }
}
