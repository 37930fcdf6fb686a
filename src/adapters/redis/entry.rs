//! The on-Redis format of a cache entry.
//!
//! The cache key `k` lives at the Redis key `RedisInstanceName + k` as a hash:
//!
//! | field  | content |
//! | ------ | ------- |
//! | `data` | the value as JSON text (absent for a negative entry) |
//! | `ver`  | the version of the write the value came from, decimal |
//! | `at`   | when the entry was written, ms since the Unix epoch |
//! | `soft` | logical expiry (ms): after it the entry is stale and is reloaded |
//! | `hard` | physical expiry (ms): `soft` + `FailSafeMaxStaleSeconds`; Redis deletes the key then |
//! | `neg`  | `1` when the entry records that the key does not exist |
//! | `fs`   | `1` when the entry is being served stale because the store failed (fail-safe) |
//!
//! A hash keeps the version next to the value so the write script can compare versions without
//! parsing the value, and one `HMGET` reads the whole entry. The per-key locks are fields of the
//! same hash (see `scripts`).

use crate::domain::entry::CacheEntry;
use crate::domain::time::Timestamp;

/// Field names, in the order [`from_fields`] reads them.
pub(crate) const FIELDS: [&str; 7] = ["data", "ver", "at", "soft", "hard", "neg", "fs"];

/// An entry from its fields, read by `HMGET` in [`FIELDS`] order. `None` when the entry is
/// missing or unreadable.
pub(crate) fn from_fields(fields: &[Option<String>]) -> Option<CacheEntry> {
    let [data, ver, at, soft, hard, neg, fs] = fields else { return None };
    let number = |f: &Option<String>| f.as_deref()?.parse::<u64>().ok();
    let time = |f: &Option<String>| Timestamp::from_millis(number(f).unwrap_or(0));
    let version = number(ver)?;
    let negative = neg.as_deref() == Some("1");
    let value = if negative { None } else { Some(serde_json::from_str(data.as_deref()?).ok()?) };
    Some(CacheEntry {
        value,
        version,
        written_at: time(at),
        fresh_until: time(soft),
        stale_until: time(hard),
        fail_safe: fs.as_deref() == Some("1"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    #[test]
    fn parses_values_negatives_and_rejects_garbage() {
        let e = from_fields(&[s("{\"a\":1}"), s("7"), s("100"), s("200"), s("300"), None, None]).unwrap();
        assert_eq!(e.value, Some(serde_json::json!({"a":1})));
        let ms = Timestamp::from_millis;
        assert_eq!((e.version, e.written_at, e.fresh_until, e.stale_until), (7, ms(100), ms(200), ms(300)));
        let n = from_fields(&[None, s("0"), s("1"), s("2"), s("3"), s("1"), None]).unwrap();
        assert!(n.is_negative());
        assert!(from_fields(&[None, None, None, None, None, None, None]).is_none());
        assert!(from_fields(&[s("not json"), s("1"), None, None, None, None, None]).is_none());
    }
}
