//! The cache port: entries shared by every instance, with the few atomic operations the patterns
//! build on. Each operation is one round trip; the Redis adapter (`adapters::redis`) does each in
//! one script or pipeline.
//!
//! * [`Cache::put`] never replaces a newer version (invariant 2, docs/reliability.md).
//! * [`Cache::load_gate`] / [`Cache::unlock`]: the short cross-process load lock that keeps a miss
//!   to about one store read across instances (stampede protection).
//! * [`Cache::hottest`], [`Cache::metadata`], [`Cache::refresh_gate`]:
//!   what refresh-ahead needs (the hot-key set and the per-key refresh lock).
//!
//! Callers fail open: a cache error never fails a read; the store answers instead.

use std::time::Duration;

use async_trait::async_trait;

use super::{Cause, LockToken};
use crate::domain::entry::CacheEntry;
use crate::domain::time::Timestamp;

/// Why a cache call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    /// Redis cannot be reached, did not answer in time, is failing over, or the breaker is open
    /// after a recent failure: trying again shortly may work.
    #[error("Redis is unavailable: {message}")]
    Unavailable {
        /// What went wrong.
        message: String,
        /// The underlying error, if there is one.
        #[source]
        cause: Option<Cause>,
    },
    /// Redis answered with an error for this command.
    #[error("Redis refused the command: {message}")]
    Refused {
        /// What went wrong.
        message: String,
        /// The underlying error, if there is one.
        #[source]
        cause: Option<Cause>,
    },
    /// The client could not be set up (an unusable address, a credential that cannot be created).
    #[error("cannot set up the Redis client: {message}")]
    Setup {
        /// What went wrong.
        message: String,
        /// The underlying error, if there is one.
        #[source]
        cause: Option<Cause>,
    },
}

impl CacheError {
    /// An `Unavailable` error without an underlying error.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable { message: message.into(), cause: None }
    }

    /// A `Refused` error without an underlying error.
    pub fn refused(message: impl Into<String>) -> Self {
        Self::Refused { message: message.into(), cause: None }
    }

    /// True when trying again shortly may work.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

/// What the load gate found.
#[derive(Debug, Clone, PartialEq)]
pub enum Gate {
    /// A fresh entry is already cached (another caller loaded it).
    Fresh(CacheEntry),
    /// This caller holds the load lock and should read the store.
    Acquired,
    /// Another caller holds the load lock.
    Busy,
    /// A fresh-looking entry is cached but cannot be read (damaged): no lock was taken; read the
    /// store and write the entry again.
    Unreadable,
    /// The key holds something that is not a cache entry: read the store, do not cache.
    NotOurs,
}

/// What a cache write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// The entry was written.
    Written,
    /// The cache holds a newer version; it was kept.
    KeptNewer,
    /// The value was read or written no later than the key's last eviction: it may be what the
    /// eviction was meant to remove, so it was not cached.
    Evicted,
    /// The key holds something that is not a cache entry; it was left alone.
    NotOurs,
}

/// What [`Cache::refresh_gate`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshGate {
    /// This caller holds the refresh lock of the key.
    Acquired,
    /// Another caller is refreshing the key (or failed moments ago and holds the lock as a throttle).
    Busy,
    /// The entry changed since it was read: someone already refreshed or rewrote it.
    AlreadyDone,
}

/// How the hot-key set decays and how large it may grow.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HotKeyPolicy {
    /// A read counts half as much after this long.
    pub half_life: Duration,
    /// Most members kept.
    pub max_keys: u64,
}

/// The parts of an entry the refresh timer needs to decide on a refresh (never the value itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryMeta {
    /// Version of the cached value.
    pub version: u64,
    /// When the entry was written.
    pub written_at: Timestamp,
    /// Logical expiry.
    pub fresh_until: Timestamp,
    /// The entry records an absent key.
    pub negative: bool,
}

/// An eviction of one key (docs/invalidation.md). Covers the cached entry when it was cached no
/// later than `stamp`, or holds a version below `below_version`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Eviction {
    /// The invalidation's stamp (on the version clock); later loads of values read before it are
    /// refused too.
    pub stamp: Option<u64>,
    /// Versions below this one are out of date (a write whose cache update failed).
    pub below_version: Option<u64>,
    /// Remove the value too: no stale copy remains for the fail-safe.
    pub hard: bool,
}

impl Eviction {
    /// One eviction covering what both cover.
    pub fn merge(&self, other: &Self) -> Self {
        Self {
            stamp: self.stamp.max(other.stamp),
            below_version: self.below_version.max(other.below_version),
            hard: self.hard || other.hard,
        }
    }
}

/// The shared cache.
#[async_trait]
pub trait Cache: Send + Sync + std::fmt::Debug + 'static {
    /// The entry of `key`; `None` when nothing usable is cached. An entry that an invalidation
    /// covers comes back stale (its fail-safe copy).
    async fn get(&self, key: &str) -> Result<Option<CacheEntry>, CacheError>;

    /// The entries of `keys`, in order, in one round trip (per cluster node).
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<CacheEntry>>, CacheError> {
        let mut found = Vec::with_capacity(keys.len());
        for key in keys {
            found.push(self.get(key).await?);
        }
        Ok(found)
    }

    /// Writes `entry` unless the cache holds a newer version, or the key is not a cache entry.
    async fn put(&self, key: &str, entry: &CacheEntry, now: Timestamp) -> Result<Put, CacheError>;

    /// The cross-process stampede gate: a fresh entry if one appeared, else the load lock of `key`
    /// for `ttl` if it is free.
    async fn load_gate(&self, key: &str, token: &LockToken, ttl: Duration, now: Timestamp) -> Result<Gate, CacheError>;

    /// Releases the load lock of `key` if `token` still holds it.
    async fn unlock(&self, key: &str, token: &LockToken) -> Result<(), CacheError>;

    /// Up to `limit` hot keys whose decayed read count is at least `min_reads`, hottest first,
    /// with their counts.
    async fn hottest(
        &self,
        hot_keys: &HotKeyPolicy,
        min_reads: f64,
        limit: u64,
        now: Timestamp,
    ) -> Result<Vec<(String, f64)>, CacheError>;

    /// Entry metadata of `keys`, in order (`None` for a missing or unreadable entry).
    async fn metadata(&self, keys: &[String]) -> Result<Vec<Option<EntryMeta>>, CacheError>;

    /// Takes the refresh lock of `key` for `ttl`, unless the entry's write time is no longer
    /// `observed` (`None`: the entry was missing).
    async fn refresh_gate(
        &self,
        key: &str,
        observed: Option<Timestamp>,
        token: &LockToken,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<RefreshGate, CacheError>;

    /// Releases the refresh lock of `key` if `token` still holds it.
    async fn release_refresh(&self, key: &str, token: &LockToken) -> Result<(), CacheError>;

    /// Counts reads (`(key, reads)`) made at `now` in the hot-key set.
    async fn count_reads(
        &self,
        counts: &[(String, u64)],
        hot_keys: &HotKeyPolicy,
        now: Timestamp,
    ) -> Result<(), CacheError>;

    /// Sends work the cache buffered (the near cache: its size to the metrics). Nothing by default.
    async fn flush_buffered(&self) -> Result<(), CacheError> {
        Ok(())
    }

    /// Evicts `key` as `eviction` says, and announces it to every instance.
    async fn evict(&self, key: &str, eviction: &Eviction, now: Timestamp) -> Result<(), CacheError>;

    /// Evicts each key as its eviction says, and announces them: in few calls, never one per key
    /// all at once (a burst on the shared connection delays every request behind it). One result
    /// per eviction, in order. By default one [`Cache::evict`] after the other.
    async fn evict_many(&self, evictions: &[(String, Eviction)], now: Timestamp) -> Vec<Result<(), CacheError>> {
        let mut results = Vec::with_capacity(evictions.len());
        for (key, eviction) in evictions {
            results.push(self.evict(key, eviction, now).await);
        }
        results
    }

    /// Invalidates every entry carrying one of `tags` that was cached no later than `stamp`, in O(1).
    async fn invalidate_tags(&self, tags: &[String], stamp: u64) -> Result<(), CacheError>;

    /// Invalidates every entry cached no later than `stamp`, in O(1).
    async fn invalidate_all(&self, stamp: u64) -> Result<(), CacheError>;

    /// Whether the near cache is serving (`None`: there is none).
    fn near_cache_live(&self) -> Option<bool> {
        None
    }

    /// A round trip that proves the cache answers; it also closes a breaker opened by failures
    /// (health checks must see recovery). Returns the latency.
    async fn ping(&self) -> Result<Duration, CacheError>;

    /// Where the cache points, without secrets (for logs and health).
    fn describe(&self) -> &str;
}
