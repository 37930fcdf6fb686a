//! `StoreChanges`: the Cosmos DB trigger on the container's change feed. Reads each changed
//! document through the store's [`ChangeReader`] and hands the items to
//! `patterns::StoreChanges`, which evicts what other programs changed (docs/store-changes.md).
//!
//! What the host sends (none of it seen on a live host; docs/store-changes.md, "What the host
//! sends"): `POST /StoreChanges` with `{"Data": {"documents": …}, "Metadata": {…}}`. Relied on:
//! * the Cosmos DB extension binds the trigger of a function that is not .NET to its documents as
//!   JSON objects, system properties (`_ts`, `_etag`, `_lsn`, …) included (source:
//!   azure-webjobs-sdk-extensions, `CosmosDBTriggerAttributeBindingProviderGenerator`: a `string`
//!   or `JArray` parameter is bound with `JObject` documents);
//! * the host's HTTP worker sends an input that is not a JSON object as JSON text
//!   (`ScriptInvocationContextExtensions.GetHttpScriptInvocationContextValue`: `JObject.FromObject`
//!   fails on a list, then `JsonConvert.SerializeObject`), so `Data.documents` is a string holding
//!   the JSON array, or that string encoded once more if the binding already made a string of it
//!   (derived). An array given as it is, and a single document (a portal Test/Run), are read too;
//!   each element may itself be a document or a string holding one;
//! * nothing in `Metadata` is needed except `RetryContext`, present with the retry policy of
//!   `function.json` (docs/host-protocol.md §5.3).
//!
//! Answers like the other triggers: a `200` envelope with empty `Outputs`, `ReturnValue: null` and
//! the counts in `Logs`. A batch or a document that cannot be read is logged and skipped: running
//! it again would not make it readable. The invocation fails (`500`, so that the retry policy runs
//! the batch again) only when Redis could not be reached for an eviction.

use serde_json::Value;

use super::triggers::{Outputs, TriggerFailure, retry_context};
use crate::http::host::InvocationLog;
use crate::http::host::lenient;
use crate::http::host::payload::Invocation;
use crate::patterns::StoreChanges;
use crate::ports::ChangeReader;
use crate::ports::changes::Changed;

/// The trigger binding's name in `StoreChanges/function.json`.
const TRIGGER: &str = "documents";
/// Unreadable documents logged one by one; past that, only counted.
const LOGGED_UNUSABLE: usize = 10;

/// The documents of an invocation, in order; `Err` when the batch itself cannot be read.
fn documents(invocation: &Invocation) -> Result<Vec<Value>, String> {
    let Some(raw) = invocation.binding(TRIGGER) else {
        return Err(format!("the invocation has no `{TRIGGER}` binding data"));
    };
    match lenient::unwrap(raw) {
        Value::Array(items) => Ok(items.iter().map(lenient::unwrap).collect()),
        document @ Value::Object(_) => Ok(vec![document]),
        Value::Null => Ok(Vec::new()),
        Value::String(text) => {
            Err(format!("`{TRIGGER}` is a string of {} bytes that holds no JSON array of documents", text.len()))
        }
        other => Err(format!("`{TRIGGER}` is {other}, not an array of documents")),
    }
}

pub(super) async fn invoke(
    store_changes: &StoreChanges,
    reader: &dyn ChangeReader,
    invocation: &Invocation,
    log: &mut InvocationLog,
) -> Result<Outputs, TriggerFailure> {
    if let Some((count, max)) = retry_context(invocation)
        && count != 0
    {
        log.info(format_args!("retry {count} of this batch of store changes (at most {max}; -1: unbounded)"));
    }
    let documents = match documents(invocation) {
        Ok(documents) => documents,
        Err(why) => {
            log.warn(format_args!("StoreChanges: {why}; the batch is skipped (delivering it again would not help)"));
            return Ok(Outputs::new());
        }
    };
    let (mut items, mut bookkeeping, mut unusable) = (Vec::with_capacity(documents.len()), 0, 0);
    for (index, document) in documents.iter().enumerate() {
        match reader.read(document) {
            Changed::Item(item) => items.push(item),
            Changed::Bookkeeping => bookkeeping += 1,
            Changed::Unusable(why) => {
                unusable += 1;
                if unusable <= LOGGED_UNUSABLE {
                    log.warn(format_args!("StoreChanges: document {index} skipped: {why}"));
                }
            }
        }
    }
    if unusable > LOGGED_UNUSABLE {
        log.warn(format_args!(
            "StoreChanges: {} more documents skipped for the same kinds of reasons",
            unusable - LOGGED_UNUSABLE
        ));
    }
    let followed = store_changes.follow(&items).await?;
    log.info(format_args!(
        "StoreChanges: {} documents, {} keys: {} written by this service (skipped), {} evicted, {} waiting for Redis; {} of the service's own bookkeeping, {} unusable",
        documents.len(),
        followed.keys,
        followed.skipped,
        followed.evicted,
        followed.waiting,
        bookkeeping,
        unusable
    ));
    Ok(Outputs::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(data: Value) -> Result<Vec<Value>, String> {
        documents(
            &Invocation::parse(json!({"Data": {"documents": data}, "Metadata": {}}).to_string().as_bytes()).unwrap(),
        )
    }

    #[test]
    fn every_form_of_the_batch() {
        let docs = json!([{"id": "a", "_ts": 1}, {"id": "b"}]);
        assert_eq!(read(docs.clone()).unwrap(), docs.as_array().unwrap().clone());
        assert_eq!(read(Value::String(docs.to_string())).unwrap(), docs.as_array().unwrap().clone());
        let twice = Value::String(Value::String(docs.to_string()).to_string());
        assert_eq!(read(twice).unwrap(), docs.as_array().unwrap().clone());
        // Elements as strings holding documents.
        assert_eq!(read(json!(["{\"id\":\"a\"}", "not json"])).unwrap(), vec![json!({"id": "a"}), json!("not json")]);
        assert_eq!(read(json!({"id": "one"})).unwrap(), vec![json!({"id": "one"})]);
        assert_eq!(read(json!("[]")).unwrap(), Vec::<Value>::new());
        assert_eq!(read(Value::Null).unwrap(), Vec::<Value>::new());
        for bad in [json!("[{\"id\": trunc"), json!(42), json!(true), json!("plain text")] {
            assert!(read(bad.clone()).is_err(), "{bad}");
        }
        let none = Invocation::parse(json!({"Data": {}, "Metadata": {}}).to_string().as_bytes()).unwrap();
        assert!(documents(&none).is_err());
    }
}
