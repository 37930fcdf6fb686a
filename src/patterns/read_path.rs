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
//! * A bulk read ([`ReadPath::load_many`]) keeps all of this per key, and reads the store once for
//!   all the keys it loads itself.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::future::join_all;
use tokio::sync::Semaphore;

use super::Core;
use super::single_flight::{Claim, Leader, SingleFlight};
use crate::domain::entry::{CacheEntry, Tier};
use crate::domain::error_chain::Chain;
use crate::domain::json::JsonText;
use crate::domain::key::Key;
use crate::domain::options::EntryOptions;
use crate::domain::time::Timestamp;
use crate::ports::LockToken;
use crate::ports::cache::Gate;
use crate::ports::store::{Record, StoreError};

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
    /// The value as JSON text, or `None` when the key does not exist.
    pub value: Option<JsonText>,
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
        Self { source: Source::Stale, cache: CacheStatus::Stale, tier: None, ..Self::from_entry(entry.clone()) }
    }

    /// The answer a cached entry gives (taken by value: a hit moves the value, never copies it).
    pub(crate) fn from_entry(entry: CacheEntry) -> Self {
        let stale = entry.fail_safe;
        Self {
            value: entry.value,
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

/// The answer to a read of one key.
type Answer = Result<Lookup, ReadError>;

/// A key of a bulk load that goes into its one store read.
struct Batched {
    /// Its place among the keys of the load.
    at: usize,
    key: Key,
    /// The logically expired entry, if there was one (fail-safe material).
    stale: Option<CacheEntry>,
    /// This process's load of the key, which the batch answers.
    leader: Leader<Answer>,
    /// Cache what is read; otherwise answer it as a bypass.
    cache_it: bool,
    /// The batch holds the key's load lock, released once the value is cached.
    locked: bool,
}

/// Redis calls one bulk read keeps in flight at once (load gates, cache writes, lock releases): a
/// bulk read names up to 1,000 keys, and every request's call on the shared connection queues
/// behind what is in flight there. Only the calls are bounded: waits for another process's load
/// overlap as before.
pub(crate) const BULK_CALLS_IN_FLIGHT: usize = 16;

/// A bound on the Redis calls in flight at once: those of one bulk read share one; a single read
/// has none (it makes one call at a time).
#[derive(Clone, Default)]
struct Calls(Option<Arc<Semaphore>>);

impl Calls {
    /// The bound of one bulk read: [`BULK_CALLS_IN_FLIGHT`].
    fn bulk() -> Self {
        Self(Some(Arc::new(Semaphore::new(BULK_CALLS_IN_FLIGHT))))
    }

    /// Makes `call` once fewer than the bound are in flight.
    async fn make<T>(&self, call: impl std::future::Future<Output = T>) -> T {
        // The semaphore is never closed, so acquiring cannot fail (and would only lift the bound).
        let _permit = match &self.0 {
            Some(bound) => bound.acquire().await.ok(),
            None => None,
        };
        call.await
    }
}

/// The shared read path. Cheap to clone; clones share the in-flight loads.
#[derive(Clone)]
pub(crate) struct ReadPath {
    pub(crate) core: Arc<Core>,
    loads: Arc<SingleFlight<Answer>>,
}

impl ReadPath {
    pub(crate) fn new(core: Arc<Core>) -> Self {
        Self { core, loads: Arc::default() }
    }

    /// Loads `key` after a miss: one load per key in this process, gated across processes.
    /// `stale` is the logically expired entry, if there was one (fail-safe material).
    pub(crate) async fn load(&self, key: &Key, stale: Option<CacheEntry>) -> Result<Lookup, ReadError> {
        self.load_within(key, stale, &Calls::default()).await
    }

    /// [`ReadPath::load`] with its Redis calls under `calls`.
    async fn load_within(&self, key: &Key, stale: Option<CacheEntry>, calls: &Calls) -> Result<Lookup, ReadError> {
        self.loads.run(key.as_str(), || self.gated_load(key, stale, calls)).await
    }

    async fn gated_load(&self, key: &Key, stale: Option<CacheEntry>, calls: &Calls) -> Result<Lookup, ReadError> {
        let token = LockToken::random();
        let started = tokio::time::Instant::now();
        // Polls for the other caller's load: 10 ms, doubling to 100 ms, until `lock_wait`.
        let mut pauses = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(10))
            .with_max_delay(Duration::from_millis(100))
            .without_max_times()
            .build();
        loop {
            let gate = self.core.cache.load_gate(key.as_str(), &token, self.core.policy.lock_ttl, self.core.now());
            match calls.make(gate).await {
                Ok(Gate::Fresh(entry)) => return Ok(Lookup::from_entry(entry)),
                Ok(Gate::Acquired) => return self.load_holding_lock(key, stale, token, calls).await,
                Ok(Gate::Unreadable) => {
                    tracing::warn!(key = ?key.as_str(), "the cached entry of this key cannot be read; loading it from the store and caching it again");
                    return self.load_from_store(key, None, true, calls).await;
                }
                Ok(Gate::NotOurs) => {
                    tracing::warn!(key = ?key.as_str(), "the Redis key of this cache key holds data that is not a cache entry; reading the store without caching");
                    return self.load_from_store(key, None, false, calls).await.map(bypassed);
                }
                Ok(Gate::Busy) => {
                    if let Some(stale) = self.soft_timed_out(&stale, started.elapsed()) {
                        tracing::debug!(key = ?key.as_str(), "another caller's load is slow; serving the stale value (fail-safe)");
                        return Ok(Lookup::stale(stale));
                    }
                    if started.elapsed() >= self.core.policy.lock_wait {
                        tracing::debug!(key = ?key.as_str(), "another process is still loading; reading the store too");
                        return self.load_from_store(key, stale, true, calls).await;
                    }
                    tokio::time::sleep(pauses.next().unwrap_or(Duration::from_millis(100))).await;
                }
                Err(e) => {
                    tracing::warn!(key = ?key.as_str(), error = %Chain(&e), "cache unavailable during a load; reading the store directly");
                    return self.load_from_store(key, stale, false, calls).await.map(bypassed);
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
        calls: &Calls,
    ) -> Result<Lookup, ReadError> {
        let soft = self.core.policy.soft_timeout;
        let now = self.core.now();
        let fallback = stale.clone().filter(|s| !soft.is_zero() && s.is_servable_stale(now));
        let Some(fallback) = fallback else {
            let result = self.load_from_store(key, stale, true, calls).await;
            self.unlock_quietly(key, &token, calls).await;
            return result;
        };
        let (this, owned_key, calls) = (self.clone(), key.clone(), calls.clone());
        // On a task of its own (stopped at shutdown): it goes on after the stale value is served.
        let mut load = self.core.background.spawn(async move {
            let result = this.load_from_store(&owned_key, stale, true, &calls).await;
            this.unlock_quietly(&owned_key, &token, &calls).await;
            result
        });
        match tokio::time::timeout(soft, &mut load).await {
            Ok(Ok(Some(result))) => result,
            Ok(Ok(None)) => Err(ReadError::Store(StoreError::unavailable(SHUTTING_DOWN))),
            Ok(Err(stopped)) => {
                Err(ReadError::Store(StoreError::unavailable(format!("the store read stopped: {stopped}"))))
            }
            Err(_) => {
                tracing::warn!(key = ?key.as_str(), soft_timeout = ?soft, "store slower than the soft timeout; serving the stale value while the load goes on (fail-safe)");
                Ok(Lookup::stale(&fallback))
            }
        }
    }

    async fn unlock_quietly(&self, key: &Key, token: &LockToken, calls: &Calls) {
        if let Err(e) = calls.make(self.core.cache.unlock(key.as_str(), token)).await {
            tracing::debug!(key = ?key.as_str(), error = %Chain(&e), "could not release the load lock; it expires by itself");
        }
    }

    /// Loads the keys a bulk read missed (each with its stale entry, if any) as [`ReadPath::load`]
    /// loads one, with one store read for all the keys this call loads itself. Answers in order.
    pub(crate) async fn load_many(&self, misses: Vec<(Key, Option<CacheEntry>)>) -> Vec<Answer> {
        self.load_together(misses, true).await
    }

    /// Reads `keys` from the store when the cache is down: one store read, nothing cached, every
    /// answer a bypass. Answers in order.
    pub(crate) async fn load_many_bypassing_cache(&self, keys: Vec<Key>) -> Vec<Answer> {
        self.load_together(keys.into_iter().map(|key| (key, None)).collect(), false).await
    }

    /// Leads the keys no load in this process is reading yet, and follows the others (waiting for
    /// those loads, all at once, while it reads its own). Its Redis calls share one bound
    /// ([`BULK_CALLS_IN_FLIGHT`]).
    async fn load_together(&self, misses: Vec<(Key, Option<CacheEntry>)>, cache_up: bool) -> Vec<Answer> {
        let calls = Calls::bulk();
        let (mut leading, mut following) = (Vec::new(), Vec::new());
        for (at, (key, stale)) in misses.into_iter().enumerate() {
            match self.loads.claim(key.as_str()) {
                Claim::Lead(leader) => leading.push((at, key, stale, leader)),
                Claim::Follow(follower) => following.push((at, key, stale, follower)),
            }
        }
        let followed = join_all(following.into_iter().map(|(at, key, stale, follower)| {
            let calls = &calls;
            async move {
                match follower.wait().await {
                    Some(answer) => (at, answer),
                    // That load went away unfinished: load the key as a single read does.
                    None if cache_up => (at, self.load_within(&key, stale, calls).await),
                    None => (at, self.load_bypassing_cache(&key).await),
                }
            }
        }));
        let (mut answers, followed) = tokio::join!(self.lead_many(leading, cache_up, &calls), followed);
        answers.extend(followed);
        answers.sort_by_key(|(at, _)| *at);
        answers.into_iter().map(|(_, answer)| answer).collect()
    }

    /// Loads the keys this process leads: passes the load gate of each (at most `calls` at once); a
    /// fresh entry that another process cached answers at once, a key another process is loading
    /// waits for it as a single read does ([`ReadPath::gated_load`]), and the rest go into one
    /// store read.
    async fn lead_many(
        &self,
        leading: Vec<(usize, Key, Option<CacheEntry>, Leader<Answer>)>,
        cache_up: bool,
        calls: &Calls,
    ) -> Vec<(usize, Answer)> {
        let core = &self.core;
        let token = LockToken::random();
        let gates = join_all(leading.iter().map(|(_, key, _, _)| async {
            match cache_up {
                true => {
                    let gate = core.cache.load_gate(key.as_str(), &token, core.policy.lock_ttl, core.now());
                    Some(calls.make(gate).await)
                }
                false => None,
            }
        }))
        .await;
        let (mut answers, mut batch, mut waiting) = (Vec::new(), Vec::new(), Vec::new());
        for ((at, key, stale, leader), gate) in leading.into_iter().zip(gates) {
            let (stale, cache_it, locked) = match gate {
                None => (None, false, false),
                Some(Ok(Gate::Fresh(entry))) => {
                    let answer = Ok(Lookup::from_entry(entry));
                    leader.finish(answer.clone());
                    answers.push((at, answer));
                    continue;
                }
                Some(Ok(Gate::Acquired)) => (stale, true, true),
                Some(Ok(Gate::Unreadable)) => {
                    tracing::warn!(key = ?key.as_str(), "the cached entry of this key cannot be read; loading it from the store and caching it again");
                    (None, true, false)
                }
                Some(Ok(Gate::NotOurs)) => {
                    tracing::warn!(key = ?key.as_str(), "the Redis key of this cache key holds data that is not a cache entry; reading the store without caching");
                    (None, false, false)
                }
                Some(Ok(Gate::Busy)) => {
                    waiting.push((at, key, stale, leader));
                    continue;
                }
                Some(Err(e)) => {
                    tracing::warn!(key = ?key.as_str(), error = %Chain(&e), "cache unavailable during a load; reading the store directly");
                    (stale, false, false)
                }
            };
            batch.push(Batched { at, key, stale, leader, cache_it, locked });
        }
        let waited = join_all(waiting.into_iter().map(|(at, key, stale, leader)| async move {
            let answer = self.gated_load(&key, stale, calls).await;
            leader.finish(answer.clone());
            (at, answer)
        }));
        let (read, waited) = tokio::join!(self.read_batch(batch, token, calls), waited);
        answers.extend(read);
        answers.extend(waited);
        answers
    }

    /// Reads the batched keys from the store in one call, and settles each as
    /// [`ReadPath::load_from_store`] does. The read runs on a task of its own, so that it
    /// completes (caches what it read, releases the locks, answers the followers) even if this
    /// caller goes away. When every key has a stale value to fall back on, the caller waits at
    /// most the soft timeout and serves those, as a single read does; otherwise it waits for the
    /// store, which is no longer than it has to wait for the keys without one.
    async fn read_batch(&self, batch: Vec<Batched>, token: LockToken, calls: &Calls) -> Vec<(usize, Answer)> {
        if batch.is_empty() {
            return Vec::new();
        }
        let soft = self.core.policy.soft_timeout;
        let now = self.core.now();
        let fallbacks: Vec<(usize, CacheEntry)> = batch
            .iter()
            .filter(|b| b.cache_it && !soft.is_zero())
            .filter_map(|b| b.stale.clone().filter(|s| s.is_servable_stale(now)).map(|s| (b.at, s)))
            .collect();
        let places: Vec<usize> = batch.iter().map(|b| b.at).collect();
        let (this, calls) = (self.clone(), calls.clone());
        let mut read = self.core.background.spawn(async move { this.read_and_settle(batch, &token, &calls).await });
        if fallbacks.len() == places.len() {
            let Ok(done) = tokio::time::timeout(soft, &mut read).await else {
                tracing::warn!(keys = places.len(), soft_timeout = ?soft, "store slower than the soft timeout; serving the stale values while the load goes on (fail-safe)");
                return fallbacks.iter().map(|(at, stale)| (*at, Ok(Lookup::stale(stale)))).collect();
            };
            return finished(done, &places);
        }
        finished(read.await, &places)
    }

    /// One store read for every batched key, each answer cached (or not) as its gate said; the
    /// locks are released and the followers answered once the values are cached.
    async fn read_and_settle(&self, batch: Vec<Batched>, token: &LockToken, calls: &Calls) -> Vec<(usize, Answer)> {
        let core = &self.core;
        // Stamped before the read: an eviction issued after this moment refuses what is read.
        let as_of = core.versions.next();
        let keys: Vec<String> = batch.iter().map(|b| b.key.as_str().to_string()).collect();
        let reads: Vec<Result<Option<Record>, StoreError>> =
            match core.with_store_timeout("get_many", "reading the store", core.store.get_many(&keys)).await {
                Ok(records) if records.len() == keys.len() => records.into_iter().map(Ok).collect(),
                Ok(records) => {
                    let wrong = format!("the store answered {} records for {} keys", records.len(), keys.len());
                    vec![Err(StoreError::rejected(wrong)); keys.len()]
                }
                Err(e) => vec![Err(e); keys.len()],
            };
        join_all(batch.into_iter().zip(reads).map(|(b, read)| async move {
            let answer = self.settle(&b.key, b.stale, b.cache_it, as_of, read, calls).await;
            if b.locked {
                self.unlock_quietly(&b.key, token, calls).await;
            }
            let answer = if b.cache_it { answer } else { answer.map(bypassed) };
            b.leader.finish(answer.clone());
            (b.at, answer)
        }))
        .await
    }

    pub(crate) async fn load_bypassing_cache(&self, key: &Key) -> Result<Lookup, ReadError> {
        let calls = Calls::default();
        self.loads
            .run(key.as_str(), || async { self.load_from_store(key, None, false, &calls).await.map(bypassed) })
            .await
    }

    /// Reads the store and, when `cache_it`, caches what it found. On a store failure, serves
    /// `stale` if it is still within the fail-safe window.
    async fn load_from_store(
        &self,
        key: &Key,
        stale: Option<CacheEntry>,
        cache_it: bool,
        calls: &Calls,
    ) -> Result<Lookup, ReadError> {
        let core = &self.core;
        // Stamped before the read: an eviction issued after this moment refuses what is read.
        let as_of = core.versions.next();
        let read = core.with_store_timeout("get", "reading the store", core.store.get(key.as_str())).await;
        self.settle(key, stale, cache_it, as_of, read, calls).await
    }

    /// Answers what a store read (stamped `as_of`) found for `key` and, when `cache_it`, caches
    /// it. On a store failure, serves `stale` if it is still within the fail-safe window.
    async fn settle(
        &self,
        key: &Key,
        stale: Option<CacheEntry>,
        cache_it: bool,
        as_of: u64,
        read: Result<Option<Record>, StoreError>,
        calls: &Calls,
    ) -> Result<Lookup, ReadError> {
        let core = &self.core;
        match read {
            Ok(record) => {
                let (value, version, options) =
                    record.map(|r| (r.value, r.version, r.options)).unwrap_or((None, 0, EntryOptions::NONE));
                let entry = core.policy.entry_with(value, version, core.now(), &options, as_of);
                if cache_it {
                    calls.make(core.cache_quietly(key, &entry)).await;
                }
                Ok(Lookup {
                    value: entry.value,
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
                    calls.make(core.cache_quietly(key, &throttled)).await;
                    Ok(Lookup::stale(&stale))
                }
                _ => Err(ReadError::Store(e)),
            },
        }
    }
}

/// Why a load stopped at shutdown answers nothing.
const SHUTTING_DOWN: &str = "the store read was stopped: the service is shutting down";

/// The answers of a batched read's task, or, if the task stopped, that failure for each key.
fn finished(
    done: Result<Option<Vec<(usize, Answer)>>, tokio::task::JoinError>,
    places: &[usize],
) -> Vec<(usize, Answer)> {
    let failure = match done {
        Ok(Some(answers)) => return answers,
        Ok(None) => StoreError::unavailable(SHUTTING_DOWN),
        Err(stopped) => StoreError::unavailable(format!("the store read stopped: {stopped}")),
    };
    places.iter().map(|at| (*at, Err(ReadError::Store(failure.clone())))).collect()
}

fn bypassed(mut lookup: Lookup) -> Lookup {
    lookup.cache = CacheStatus::Bypass;
    lookup.fresh_until = None;
    lookup
}
