//! The documents of the container's change feed, read for the cache (the `StoreChanges` function,
//! docs/store-changes.md).
//!
//! * **Which key.** The key whose [`Store::get`](crate::ports::Store::get) reads the item: its
//!   `key` field when it has one (every write of this service records it), else the key its id
//!   encodes ([`id::key_of`]). Either way the key must map back to the item's id ([`item_id`]):
//!   a document whose id no key maps to (a hashed id without `key`, `~` + base64 of a plain key, a
//!   `key` field that belongs to another id) is read by no key, so nothing cached can hold it.
//! * **The store's own items** (`~~health`, `~~tombstone-watermark`, [`id::is_reserved`]) are
//!   bookkeeping: no key reads them.
//! * **Who wrote it.** A write of this service leaves `key`, a `version` and `updatedAt` (this
//!   instance's clock when the write was sent). Cosmos DB stamps every write with `_ts`, its own
//!   time in whole seconds. An item with all three whose `_ts` is at most [`OURS_WITHIN`] after its
//!   `updatedAt` is taken as written by this service; anything else (no `version`, no `updatedAt`,
//!   no `_ts`, or a later `_ts`: another program edited the item and kept our fields) as written by
//!   another program.

use std::time::Duration;

use serde_json::{Map, Value};

use super::id::{self, item_id};
use super::{CALL_DEADLINE, parse_version};
use crate::domain::key::Key;
use crate::domain::time::Timestamp;
use crate::ports::changes::{ChangeReader, Changed, ChangedItem};

/// Longest time between a write's `updatedAt` (taken when the store call starts) and the `_ts`
/// Cosmos DB gives it, for a write of this service: the call may retry on contention for up to
/// [`CALL_DEADLINE`], and the two clocks may disagree by a few seconds. A later `_ts` means
/// another program wrote the item since.
pub(crate) const OURS_WITHIN: Duration = Duration::from_secs(CALL_DEADLINE.as_secs() + 5);

/// Reads the change feed's documents of the container this service writes.
#[derive(Debug, Clone, Copy, Default)]
pub struct CosmosChanges;

impl ChangeReader for CosmosChanges {
    fn read(&self, document: &Value) -> Changed {
        let Value::Object(document) = document else {
            return Changed::Unusable(format!("a {} where a document (an object) was expected", kind(document)));
        };
        let Some(id) = document.get("id").and_then(Value::as_str) else {
            return Changed::Unusable("a document without a string `id`".into());
        };
        if id::is_reserved(id) {
            return Changed::Bookkeeping;
        }
        let key = match key_of_item(id, document.get("key")) {
            Ok(key) => key,
            Err(why) => return Changed::Unusable(format!("item {id:?}: {why}")),
        };
        let version = document.get("version").and_then(parse_version);
        let recorded_key = document.get("key").is_some_and(Value::is_string);
        let written_by_us = recorded_key && version.is_some() && not_edited_since(document);
        Changed::Item(ChangedItem { key, version, written_by_us })
    }
}

/// The key whose reads find item `id` (with `key_field`, the document's `key`).
fn key_of_item(id: &str, key_field: Option<&Value>) -> Result<Key, String> {
    let key = match key_field {
        None | Some(Value::Null) => id::key_of(id).ok_or("a hashed id without its `key` field")?,
        Some(Value::String(key)) => key.clone(),
        Some(other) => return Err(format!("its `key` field is a {}, not a string", kind(other))),
    };
    if item_id(&key) != id {
        return Err(match key_field {
            Some(Value::String(_)) => format!("its `key` field {key:?} belongs to item {:?}", item_id(&key)),
            _ => "no key maps to this id".into(),
        });
    }
    Key::new(key).map_err(|e| e.to_string())
}

/// Whether Cosmos DB's `_ts` is within [`OURS_WITHIN`] of the `updatedAt` this service wrote.
fn not_edited_since(document: &Map<String, Value>) -> bool {
    let updated_at = document.get("updatedAt").and_then(Value::as_str).and_then(Timestamp::parse_iso8601);
    let modified = document.get("_ts").and_then(Value::as_u64).map(|s| Timestamp::from_millis(s.saturating_mul(1000)));
    match (updated_at, modified) {
        (Some(updated_at), Some(modified)) => modified <= updated_at.plus(OURS_WITHIN),
        _ => false,
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn read(document: Value) -> Changed {
        CosmosChanges.read(&document)
    }

    fn item(key: &str, version: Option<u64>, written_by_us: bool) -> Changed {
        Changed::Item(ChangedItem { key: Key::new(key).unwrap(), version, written_by_us })
    }

    const WRITTEN: &str = "2026-11-26T07:29:07.123456Z";
    /// `_ts` of a write sent at [`WRITTEN`], one second later.
    const TS: u64 = 1_795_678_148;

    #[test]
    fn writes_of_this_service_are_recognised_until_someone_edits_them() {
        let ours = json!({"id": "orders:42", "key": "orders:42", "value": 1, "version": "3614722816258994177",
                          "deleted": false, "updatedAt": WRITTEN, "_ts": TS, "_etag": "\"x\"", "_lsn": 7});
        assert_eq!(read(ours.clone()), item("orders:42", Some(3_614_722_816_258_994_177), true));
        // Cosmos DB's clock a little behind ours, or the write retried for a while: still ours.
        let mut late = ours.clone();
        late["_ts"] = json!(TS + OURS_WITHIN.as_secs() - 2);
        assert_eq!(read(late), item("orders:42", Some(3_614_722_816_258_994_177), true));
        let mut early = ours.clone();
        early["_ts"] = json!(TS - 30);
        assert_eq!(read(early), item("orders:42", Some(3_614_722_816_258_994_177), true));
        // Edited by another program long after our write, our fields kept.
        let mut edited = ours.clone();
        edited["_ts"] = json!(TS + 3600);
        assert_eq!(read(edited), item("orders:42", Some(3_614_722_816_258_994_177), false));
        // Older releases wrote numeric versions.
        let mut numeric = ours.clone();
        numeric["version"] = json!(1_800_000_000_000_000u64);
        assert_eq!(read(numeric), item("orders:42", Some(1_800_000_000_000_000), true));
        for missing in ["version", "updatedAt", "_ts", "key"] {
            let mut document = ours.clone();
            document.as_object_mut().unwrap().remove(missing);
            let Changed::Item(changed) = read(document) else { panic!("without {missing}") };
            assert!(!changed.written_by_us, "without {missing} it is another program's");
        }
        let mut garbage = ours;
        garbage["version"] = json!("v7");
        assert_eq!(read(garbage), item("orders:42", None, false));
    }

    #[test]
    fn items_of_other_programs_are_keyed_by_their_id() {
        assert_eq!(read(json!({"id": "user:7", "value": {"name": "Ada"}, "_ts": TS})), item("user:7", None, false));
        let encoded = item_id("a/b ü");
        assert_eq!(read(json!({"id": encoded, "value": 1})), item("a/b ü", None, false));
        let long = "k".repeat(300);
        assert_eq!(read(json!({"id": item_id(&long), "key": long, "value": 1})), item(&long, None, false));
    }

    #[test]
    fn bookkeeping_and_unusable_documents() {
        assert_eq!(read(json!({"id": "~~health", "probe": "write", "updatedAt": WRITTEN})), Changed::Bookkeeping);
        assert_eq!(read(json!({"id": "~~tombstone-watermark", "watermark": "7"})), Changed::Bookkeeping);
        let unusable = [
            json!("just text"),
            json!(42),
            json!(null),
            json!([{"id": "a"}]),
            json!({"value": 1}),
            json!({"id": 7}),
            // A hashed id says nothing without its key.
            json!({"id": item_id(&"k".repeat(300)), "value": 1}),
            // `~` + base64 of a plain key: that key's id is the key itself.
            json!({"id": "~YWJj", "value": 1}),
            json!({"id": "~not base64!", "value": 1}),
            json!({"id": "a", "key": "b"}),
            json!({"id": "a", "key": 7}),
            // Control characters are no key.
            json!({"id": item_id("a\nb"), "value": 1}),
        ];
        for document in unusable {
            assert!(matches!(read(document.clone()), Changed::Unusable(_)), "{document}");
        }
        let Changed::Unusable(why) = read(json!({"id": "a", "key": "b"})) else { unreachable!() };
        assert!(why.contains("\"a\"") && why.contains("\"b\""), "{why}");
    }
}
