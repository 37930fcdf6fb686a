//! A cache entry: a value (or the record that a key does not exist) with the version it came from
//! and its lifetimes. How it is laid out in Redis is the Redis adapter's business
//! (`adapters::redis::entry`).

use std::time::Duration;

use crate::domain::json::JsonText;
use crate::domain::time::Timestamp;

/// A cached entry, as read or as about to be written.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheEntry {
    /// The value as JSON text; `None` for a negative entry (the key does not exist).
    pub value: Option<JsonText>,
    /// Version of the write the value came from (0 for "never existed").
    pub version: u64,
    /// When the entry was written.
    pub written_at: Timestamp,
    /// Logical expiry: after it the entry is stale and is reloaded.
    pub fresh_until: Timestamp,
    /// Physical expiry: no stale serving after it (fresh until + `FailSafeMaxStaleSeconds`).
    pub stale_until: Timestamp,
    /// True while the entry is served stale because the store is failing (fail-safe).
    pub fail_safe: bool,
    /// The entry's tags (docs/invalidation.md), sorted.
    pub tags: Vec<String>,
    /// When the value was written (its version) or read from the store (a stamp taken before the
    /// read), on the version clock: invalidations with a later stamp cover the entry.
    pub as_of: u64,
    /// Where the entry was read from.
    pub tier: Tier,
}

/// Which cache tier answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tier {
    /// The shared cache (Redis): `x-cache-tier: l2`.
    #[default]
    Shared,
    /// This instance's near cache: `x-cache-tier: l1`.
    Near,
}

impl Tier {
    /// The name used in the `x-cache-tier` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Shared => "l2",
            Self::Near => "l1",
        }
    }
}

impl CacheEntry {
    /// True while the entry is within its logical TTL.
    pub fn is_fresh(&self, now: Timestamp) -> bool {
        now < self.fresh_until
    }

    /// True while a stale entry may still be served by the fail-safe.
    pub(crate) fn is_servable_stale(&self, now: Timestamp) -> bool {
        now < self.stale_until
    }

    /// True for an entry that records the key's absence.
    pub(crate) fn is_negative(&self) -> bool {
        self.value.is_none()
    }

    /// The logical TTL the entry was written with.
    pub fn ttl(&self) -> Duration {
        self.fresh_until.since(self.written_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_and_ttl() {
        let at = |ms| Timestamp::from_millis(ms);
        let e = CacheEntry {
            value: Some(serde_json::json!(1).into()),
            version: 7,
            written_at: at(100),
            fresh_until: at(200),
            stale_until: at(300),
            fail_safe: false,
            tags: Vec::new(),
            as_of: 7,
            tier: Tier::Shared,
        };
        assert_eq!((e.ttl(), e.is_fresh(at(199)), e.is_fresh(at(200))), (Duration::from_millis(100), true, false));
        assert!(e.is_servable_stale(at(299)) && !e.is_servable_stale(at(300)));
        assert!(!e.is_negative());
    }
}
