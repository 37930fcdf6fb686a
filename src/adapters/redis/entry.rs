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
//! | `tags` | the entry's tags, joined by U+001F (absent when it has none) |
//! | `asof` | when the value was written or read from the store, on the version clock (absent in entries of older releases: the version then) |
//!
//! A hash keeps the version next to the value so the write script can compare versions without
//! parsing the value, and one `HMGET` reads the whole entry. The per-key locks are fields of the
//! same hash (see `scripts`).

use crate::domain::entry::{CacheEntry, Tier};
use crate::domain::json::JsonText;
use crate::domain::time::Timestamp;

/// Field names, in the order [`from_fields`] reads them.
pub(crate) const FIELDS: [&str; 9] = ["data", "ver", "at", "soft", "hard", "neg", "fs", "tags", "asof"];

/// An entry from its fields, read by `HMGET` in [`FIELDS`] order. `None` when the entry is
/// missing or unreadable.
pub(crate) fn from_fields(fields: Vec<Option<String>>) -> Option<CacheEntry> {
    let [data, ver, at, soft, hard, neg, fs, tags, asof] = <[Option<String>; 9]>::try_from(fields).ok()?;
    let number = |f: &Option<String>| f.as_deref()?.parse::<u64>().ok();
    let time = |f: &Option<String>| Timestamp::from_millis(number(f).unwrap_or(0));
    let version = number(&ver)?;
    let negative = neg.as_deref() == Some("1");
    // The text is checked to be JSON, not parsed into a tree: a hit writes it out as it is.
    let value = if negative { None } else { Some(JsonText::parse(&data?).ok()?) };
    Some(CacheEntry {
        value,
        version,
        written_at: time(&at),
        fresh_until: time(&soft),
        stale_until: time(&hard),
        fail_safe: fs.as_deref() == Some("1"),
        tags: tags.as_deref().filter(|t| !t.is_empty()).map(split_tags).unwrap_or_default(),
        as_of: number(&asof).unwrap_or(version),
        tier: Tier::Shared,
    })
}

/// The `tags` field of an entry with these tags (empty when none).
pub(crate) fn join_tags(tags: &[String]) -> String {
    tags.join("\u{1f}")
}

fn split_tags(joined: &str) -> Vec<String> {
    joined.split('\u{1f}').map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    #[test]
    fn parses_values_negatives_and_rejects_garbage() {
        let e =
            from_fields(vec![s("{\"a\":1}"), s("7"), s("100"), s("200"), s("300"), None, None, None, None]).unwrap();
        assert_eq!((e.as_of, e.tags.len()), (7, 0), "entries of older releases were cached as of their version");
        let tagged = from_fields(vec![s("1"), s("7"), None, s("9"), None, None, None, s("a\u{1f}b"), s("8")]).unwrap();
        assert_eq!((tagged.as_of, tagged.tags.clone()), (8, vec!["a".to_string(), "b".to_string()]));
        assert_eq!(e.value, Some(serde_json::json!({"a":1}).into()));
        let ms = Timestamp::from_millis;
        assert_eq!((e.version, e.written_at, e.fresh_until, e.stale_until), (7, ms(100), ms(200), ms(300)));
        let n = from_fields(vec![None, s("0"), s("1"), s("2"), s("3"), s("1"), None, None, None]).unwrap();
        assert!(n.is_negative());
        assert!(from_fields(vec![None, None, None, None, None, None, None, None, None]).is_none());
        assert!(from_fields(vec![s("not json"), s("1"), None, None, None, None, None, None, None]).is_none());
    }
}
