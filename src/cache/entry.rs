//! The on-Redis format of a cached entry.
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
//! parsing the value, and one `HMGET` reads the whole entry.

use serde_json::Value;

/// Field names, in the order [`CacheEntry::FIELDS`] reads them.
pub(crate) const FIELDS: [&str; 7] = ["data", "ver", "at", "soft", "hard", "neg", "fs"];

/// A cached entry as read from Redis.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheEntry {
    /// The value; `None` for a negative entry (the key does not exist).
    pub value: Option<Value>,
    /// Version of the write the value came from (0 for "never existed").
    pub version: u64,
    /// When the entry was written (ms since the epoch).
    pub written_at_ms: u64,
    /// Logical expiry (ms since the epoch).
    pub fresh_until_ms: u64,
    /// Physical expiry (ms since the epoch): no stale serving after it.
    pub stale_until_ms: u64,
    /// True while the entry is served stale because the store is failing.
    pub fail_safe: bool,
}

impl CacheEntry {
    /// Fields read by `HMGET` in [`FIELDS`] order. `None` when the entry is missing or unreadable.
    pub(crate) fn from_fields(fields: &[Option<String>]) -> Option<Self> {
        let [data, ver, at, soft, hard, neg, fs] = fields else { return None };
        let number = |f: &Option<String>| f.as_deref()?.parse::<u64>().ok();
        let version = number(ver)?;
        let negative = neg.as_deref() == Some("1");
        let value = if negative { None } else { Some(serde_json::from_str(data.as_deref()?).ok()?) };
        Some(Self {
            value,
            version,
            written_at_ms: number(at).unwrap_or(0),
            fresh_until_ms: number(soft).unwrap_or(0),
            stale_until_ms: number(hard).unwrap_or(0),
            fail_safe: fs.as_deref() == Some("1"),
        })
    }

    /// True while the entry is within its logical TTL.
    pub fn is_fresh(&self, now_ms: u64) -> bool {
        now_ms < self.fresh_until_ms
    }

    /// True for an entry that records the key's absence.
    pub fn is_negative(&self) -> bool {
        self.value.is_none()
    }

    /// The logical TTL the entry was written with.
    pub fn ttl_ms(&self) -> u64 {
        self.fresh_until_ms.saturating_sub(self.written_at_ms)
    }
}

/// An entry to write, with its lifetimes already decided: the same fields as an entry read.
pub type EntryWrite = CacheEntry;

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    #[test]
    fn parses_values_negatives_and_rejects_garbage() {
        let e = CacheEntry::from_fields(&[s("{\"a\":1}"), s("7"), s("100"), s("200"), s("300"), None, None]).unwrap();
        assert_eq!(e.value, Some(serde_json::json!({"a":1})));
        assert_eq!((e.version, e.ttl_ms(), e.is_fresh(199), e.is_fresh(200)), (7, 100, true, false));
        let n = CacheEntry::from_fields(&[None, s("0"), s("1"), s("2"), s("3"), s("1"), None]).unwrap();
        assert!(n.is_negative());
        assert!(CacheEntry::from_fields(&[None, None, None, None, None, None, None]).is_none());
        assert!(CacheEntry::from_fields(&[s("not json"), s("1"), None, None, None, None, None]).is_none());
    }
}
