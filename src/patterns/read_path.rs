//! The read path Cache-Aside and Refresh-Ahead share: what happens after a miss.
//!
//! * Misses of one key in this process share one store read (single-flight); across processes a
//!   short lock, taken in the same round trip that re-checks the cache ([`Gate`]), keeps it to
//!   about one (invariant 6, docs/reliability.md).
//! * Absent keys are cached as negative entries for `NegativeCacheTtlSeconds`.
//! * Cache down: the store answers and the result says `Bypass`. Store down: a stale value within
//!   `FailSafeMaxStaleSeconds` is served and marked `Stale`, and the store is not asked again for
//!   the fail-safe throttle (invariant 7). Store slow: when a stale value exists, a read waits at
//!   most `FailSafeSoftTimeoutMs`, then serves it; the load goes on in the background, still
//!   holding the load lock, and updates the cache when the store answers.
//! * Values are cached with the version they were stored with, through the cache's "never older"
//!   write, so a slow load can never overwrite a newer write.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use serde_json::Value;

use super::Core;
use super::single_flight::SingleFlight;
use crate::domain::entry::{CacheEntry, Tier};
use crate::domain::error_chain::Chain;
use crate::domain::key::Key;
use crate::domain::options::EntryOptions;
use crate::domain::time::Timestamp;
use crate::ports::LockToken;
use crate::ports::cache::Gate;
use crate::ports::store::StoreError;

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A fresh cache entry.
    Cache,
    /// The backing store.
    Store,
    /// A stale cache entry, served because the store is failing.
    Stale,
}

impl Source {
    /// The name used in responses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cache => "cache",
            Self::Store => "store",
            Self::Stale => "stale",
        }
    }
}

/// What the cache did for a read (`x-cache` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from a fresh entry.
    Hit,
    /// Loaded from the store and cached.
    Miss,
    /// Served from a stale entry (fail-safe).
    Stale,
    /// Redis was unavailable; the store answered directly.
    Bypass,
}

impl CacheStatus {
    /// The name used in the `x-cache` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Stale => "stale",
            Self::Bypass => "bypass",
        }
    }
}

/// The answer to a read.
#[derive(Debug, Clone, PartialEq)]
pub struct Lookup {
    /// The value, or `None` when the key does not exist.
    pub value: Option<Value>,
    /// Version of the value (of the delete, for a deleted key; 0 if never written).
    pub version: u64,
    /// Where it came from.
    pub source: Source,
    /// What the cache did.
    pub cache: CacheStatus,
    /// When the entry was cached, if it came from the cache.
    pub cached_at: Option<Timestamp>,
    /// When the cached entry turns stale, if it came from or went to the cache.
    pub fresh_until: Option<Timestamp>,
    /// Which tier answered a hit (`x-cache-tier`).
    pub tier: Option<Tier>,
}

impl Lookup {
    /// A stale entry served by the fail-safe.
    pub(crate) fn stale(entry: &CacheEntry) -> Self {
        Self { source: Source::Stale, cache: CacheStatus::Stale, tier: None, ..Self::from_entry(entry) }
    }

    pub(crate) fn from_entry(entry: &CacheEntry) -> Self {
        let stale = entry.fail_safe;
        Self {
            value: entry.value.clone(),
            version: entry.version,
            source: if stale { Source::Stale } else { Source::Cache },
            cache: if stale { CacheStatus::Stale } else { CacheStatus::Hit },
            cached_at: Some(entry.written_at),
            fresh_until: Some(entry.fresh_until),
            tier: (!stale).then_some(entry.tier),
        }
    }
}

/// Why a read failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    /// The store failed and no usable stale value was cached.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The shared read path. Cheap to clone; clones share the in-flight loads.
#[derive(Clone)]
pub(crate) struct ReadPath {
    pub(crate) core: Arc<Core>,
    loads: Arc<SingleFlight<Result<Lookup, ReadError>>>,
}

impl ReadPath {
    pub(crate) fn new(core: Arc<Core>) -> Self {
        Self { core, loads: Arc::default() }
    }

    /// Loads `key` after a miss: one load per key in this process, gated across processes.
    /// `stale` is the logically expired entry, if there was one (fail-safe material).
    pub(crate) async fn load(&self, key: &Key, stale: Option<CacheEntry>) -> Result<Lookup, ReadError> {
        self.loads.run(key.as_str(), || self.gated_load(key, stale)).await
    }

    async fn gated_load(&self, key: &Key, stale: Option<CacheEntry>) -> Result<Lookup, ReadError> {
        let token = LockToken::random();
        let started = tokio::time::Instant::now();
        // Polls for the other caller's load: 10 ms, doubling to 100 ms, until `lock_wait`.
        let mut pauses = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(10))
            .with_max_delay(Duration::from_millis(100))
            .without_max_times()
            .build();
        loop {
            match self.core.cache.load_gate(key.as_str(), &token, self.core.policy.lock_ttl, self.core.now()).await {
                Ok(Gate::Fresh(entry)) => return Ok(Lookup::from_entry(&entry)),
                Ok(Gate::Acquired) => return self.load_holding_lock(key, stale, token).await,
                Ok(Gate::Unreadable) => {
                    tracing::warn!(key = ?key.as_str(), "the cached entry of this key cannot be read; loading it from the store and caching it again");
                    return self.load_from_store(key, None, true).await;
                }
                Ok(Gate::NotOurs) => {
                    tracing::warn!(key = ?key.as_str(), "the Redis key of this cache key holds data that is not a cache entry; reading the store without caching");
                    return self.load_from_store(key, None, false).await.map(bypassed);
                }
                Ok(Gate::Busy) => {
                    if let Some(stale) = self.soft_timed_out(&stale, started.elapsed()) {
                        tracing::debug!(key = ?key.as_str(), "another caller's load is slow; serving the stale value (fail-safe)");
                        return Ok(Lookup::stale(stale));
                    }
                    if started.elapsed() >= self.core.policy.lock_wait {
                        tracing::debug!(key = ?key.as_str(), "another process is still loading; reading the store too");
                        return self.load_from_store(key, stale, true).await;
                    }
                    tokio::time::sleep(pauses.next().unwrap_or(Duration::from_millis(100))).await;
                }
                Err(e) => {
                    tracing::warn!(key = ?key.as_str(), error = %Chain(&e), "cache unavailable during a load; reading the store directly");
                    return self.load_from_store(key, stale, false).await.map(bypassed);
                }
            }
        }
    }

    /// The stale value to serve because waiting for the store took `waited` already, if any.
    fn soft_timed_out<'a>(&self, stale: &'a Option<CacheEntry>, waited: Duration) -> Option<&'a CacheEntry> {
        let soft = self.core.policy.soft_timeout;
        stale.as_ref().filter(|s| !soft.is_zero() && waited >= soft && s.is_servable_stale(self.core.now()))
    }

    /// Reads the store while holding the load lock of `key`, and releases it when the store answered.
    /// With a stale value to fall back on, the caller waits at most the soft timeout: the read then
    /// goes on in the background (keeping the lock, so other processes serve their stale value too)
    /// and caches its result when it completes.
    async fn load_holding_lock(
        &self,
        key: &Key,
        stale: Option<CacheEntry>,
        token: LockToken,
    ) -> Result<Lookup, ReadError> {
        let soft = self.core.policy.soft_timeout;
        let now = self.core.now();
        let fallback = stale.clone().filter(|s| !soft.is_zero() && s.is_servable_stale(now));
        let Some(fallback) = fallback else {
            let result = self.load_from_store(key, stale, true).await;
            self.unlock_quietly(key, &token).await;
            return result;
        };
        let (this, owned_key) = (self.clone(), key.clone());
        let mut load = tokio::spawn(async move {
            let result = this.load_from_store(&owned_key, stale, true).await;
            this.unlock_quietly(&owned_key, &token).await;
            result
        });
        match tokio::time::timeout(soft, &mut load).await {
            Ok(Ok(result)) => result,
            Ok(Err(stopped)) => {
                Err(ReadError::Store(StoreError::unavailable(format!("the store read stopped: {stopped}"))))
            }
            Err(_) => {
                tracing::warn!(key = ?key.as_str(), soft_timeout = ?soft, "store slower than the soft timeout; serving the stale value while the load goes on (fail-safe)");
                Ok(Lookup::stale(&fallback))
            }
        }
    }

    async fn unlock_quietly(&self, key: &Key, token: &LockToken) {
        if let Err(e) = self.core.cache.unlock(key.as_str(), token).await {
            tracing::debug!(key = ?key.as_str(), error = %Chain(&e), "could not release the load lock; it expires by itself");
        }
    }

    pub(crate) async fn load_bypassing_cache(&self, key: &Key) -> Result<Lookup, ReadError> {
        self.loads.run(key.as_str(), || async { self.load_from_store(key, None, false).await.map(bypassed) }).await
    }

    /// Reads the store and, when `cache_it`, caches what it found. On a store failure, serves
    /// `stale` if it is still within the fail-safe window.
    pub(crate) async fn load_from_store(
        &self,
        key: &Key,
        stale: Option<CacheEntry>,
        cache_it: bool,
    ) -> Result<Lookup, ReadError> {
        let core = &self.core;
        // Stamped before the read: an eviction issued after this moment refuses what is read.
        let as_of = core.versions.next();
        match core.with_store_timeout("get", "reading the store", core.store.get(key.as_str())).await {
            Ok(record) => {
                let (value, version, options) =
                    record.map(|r| (r.value, r.version, r.options)).unwrap_or((None, 0, EntryOptions::NONE));
                let entry = core.policy.entry_with(value.clone(), version, core.now(), &options, as_of);
                if cache_it {
                    core.cache_quietly(key, &entry).await;
                }
                Ok(Lookup {
                    value,
                    version,
                    source: Source::Store,
                    cache: CacheStatus::Miss,
                    cached_at: None,
                    fresh_until: cache_it.then_some(entry.fresh_until),
                    tier: None,
                })
            }
            Err(e) => match stale.filter(|s| s.is_servable_stale(core.now())) {
                Some(stale) if cache_it => {
                    tracing::warn!(key = ?key.as_str(), error = %Chain(&e), version = stale.version, "store failed; serving the stale cached value (fail-safe)");
                    // Keep serving it without asking the store again for the throttle's length.
                    let throttled = CacheEntry {
                        fresh_until: core.now().plus(core.policy.fail_safe_throttle).min(stale.stale_until),
                        fail_safe: true,
                        ..stale.clone()
                    };
                    core.cache_quietly(key, &throttled).await;
                    Ok(Lookup::stale(&stale))
                }
                _ => Err(ReadError::Store(e)),
            },
        }
    }
}

fn bypassed(mut lookup: Lookup) -> Lookup {
    lookup.cache = CacheStatus::Bypass;
    lookup.fresh_until = None;
    lookup
}
