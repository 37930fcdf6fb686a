//! The near cache (L1): a bounded in-process copy of hot entries in front of Redis, kept coherent
//! across instances by the invalidation feed (`adapters::redis::invalidation`).
//!
//! It is a [`Cache`] that wraps the Redis cache, so the patterns do not know it is there. A read
//! is served from memory (no round trip) only when all of this holds:
//! * the feed is live (subscribed and answering pings), and the copy was taken in the feed's
//!   current generation: when the feed drops, every copy is forgotten and reads go to Redis until
//!   it is back;
//! * the copy is fresh, and no tag or "all" invalidation the feed announced covers it;
//! * no write or eviction of the key was announced since (those drop the copy at once).
//!
//! A copy is only taken if nothing about the key was announced while it was being read (a per-key
//! *floor*), so a read that raced a write on another instance cannot keep the older value. The
//! instance that writes drops its own copy before the write returns, so it reads its own write.
//! Versions make late or repeated announcements harmless.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::adapters::redis::invalidation::{Feed, FeedEvent, FeedListener};
use crate::domain::entry::{CacheEntry, Tier};
use crate::domain::time::Timestamp;
use crate::ports::cache::{Cache, CacheError, EntryMeta, Eviction, Gate, HotKeyPolicy, Put, RefreshGate};
use crate::ports::{Clock, LockToken};

/// How long an announced write or eviction is remembered for keys being read meanwhile (longer than
/// any Redis read may take).
const FLOOR_KEPT_FOR: Duration = Duration::from_secs(5);
/// Most floors remembered; past it they are all forgotten and reads in flight do not keep copies.
const MAX_FLOORS: usize = 100_000;
/// Largest value kept in memory, in bytes of JSON (bigger ones are read from Redis every time).
pub(crate) const MAX_HELD_BYTES: usize = 256 * 1024;

/// What a read in flight has to match when it wants to keep a copy.
#[derive(Debug, Clone, Copy)]
struct Ticket {
    generation: u64,
    floors_epoch: u64,
}

/// What was last announced about a key.
#[derive(Debug, Clone, Copy)]
struct Floor {
    /// Copies below this version are out of date.
    version: u64,
    /// Copies cached no later than this are out of date.
    stamp: u64,
    at: Instant,
}

#[derive(Default)]
struct Floors {
    by_key: HashMap<String, Floor>,
    /// Bumped whenever floors are forgotten before their time.
    epoch: u64,
}

/// Counters of the near cache.
#[derive(Debug, Default)]
pub struct NearCacheStats {
    /// Reads served from memory.
    pub hits: AtomicU64,
    /// Reads that went to Redis.
    pub misses: AtomicU64,
}

/// The near cache in front of a shared cache. See the module documentation.
pub struct NearCache {
    inner: Arc<dyn Cache>,
    feed: Arc<Feed>,
    clock: Arc<dyn Clock>,
    held: moka::sync::Cache<String, Arc<CacheEntry>>,
    state: Arc<State>,
    stats: Arc<NearCacheStats>,
}

/// What the feed listener shares with the cache.
struct State {
    held: moka::sync::Cache<String, Arc<CacheEntry>>,
    floors: Mutex<Floors>,
    generation: AtomicU64,
}

impl std::fmt::Debug for NearCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NearCache").field("inner", &self.inner).field("entries", &self.held.entry_count()).finish()
    }
}

impl NearCache {
    /// A near cache of at most `max_entries` entries in front of `inner`, coherent through `feed`.
    pub(crate) fn new(inner: Arc<dyn Cache>, feed: Arc<Feed>, clock: Arc<dyn Clock>, max_entries: u64) -> Self {
        let held = moka::sync::Cache::builder().max_capacity(max_entries).build();
        let state = Arc::new(State { held: held.clone(), floors: Mutex::default(), generation: AtomicU64::new(0) });
        feed.listen(state.clone());
        Self { inner, feed, clock, held, state, stats: Arc::default() }
    }

    /// Hit and miss counters.
    pub fn stats(&self) -> &Arc<NearCacheStats> {
        &self.stats
    }

    /// How many entries are held (approximately; for tests and metrics).
    pub fn len(&self) -> u64 {
        self.held.run_pending_tasks();
        self.held.entry_count()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The fresh copy of `key` that may be served now, if there is one.
    fn usable(&self, key: &str) -> Option<CacheEntry> {
        let generation = self.feed.live_generation()?;
        if generation != self.state.generation.load(Ordering::Acquire) {
            return None;
        }
        let held = self.held.get(key)?;
        let fresh = held.is_fresh(self.clock.now()) && held.as_of > self.feed.floor(&held.tags);
        fresh.then(|| CacheEntry { tier: Tier::Near, ..(*held).clone() })
    }

    fn ticket(&self) -> Option<Ticket> {
        let generation = self.feed.live_generation()?;
        let floors_epoch = self.state.floors.lock().unwrap_or_else(|p| p.into_inner()).epoch;
        Some(Ticket { generation, floors_epoch })
    }

    /// Keeps a copy of `entry` if nothing about `key` was announced since `ticket` was taken.
    fn keep(&self, key: &str, entry: &CacheEntry, ticket: Option<Ticket>) {
        let Some(ticket) = ticket else { return };
        if entry.fail_safe || !entry.is_fresh(self.clock.now()) {
            return;
        }
        if entry.value.as_ref().is_some_and(|v| v.len() > MAX_HELD_BYTES) {
            return;
        }
        let floors = self.state.floors.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.feed.live_generation() == Some(ticket.generation)
            && self.state.generation.load(Ordering::Acquire) == ticket.generation
            && floors.epoch == ticket.floors_epoch;
        let below_floor = floors.by_key.get(key).is_some_and(|f| entry.version < f.version || entry.as_of <= f.stamp);
        if current && !below_floor && entry.as_of > self.feed.floor(&entry.tags) {
            self.held.insert(key.to_string(), Arc::new(CacheEntry { tier: Tier::Shared, ..entry.clone() }));
        }
    }

    fn forget(&self, key: &str) {
        self.held.invalidate(key);
    }

    /// Before `key` is evicted: its copy is dropped, and a read in flight cannot keep what it read.
    fn evicting(&self, key: &str, eviction: &Eviction) {
        if let Some(stamp) = eviction.stamp {
            self.state.heard(&FeedEvent::Evicted { key: key.to_string(), stamp });
        }
        if let Some(version) = eviction.below_version {
            self.state.heard(&FeedEvent::Written { key: key.to_string(), version });
        }
        self.forget(key);
    }
}

impl FeedListener for State {
    fn heard(&self, event: &FeedEvent) {
        let (key, floor) = match event {
            FeedEvent::Written { key, version } => (key, Floor { version: *version, stamp: 0, at: Instant::now() }),
            FeedEvent::Evicted { key, stamp } => (key, Floor { version: 0, stamp: *stamp, at: Instant::now() }),
            // Checked against the clocks on every read: nothing to drop.
            FeedEvent::Tags { .. } | FeedEvent::All { .. } => return,
        };
        {
            let mut floors = self.floors.lock().unwrap_or_else(|p| p.into_inner());
            if floors.by_key.len() >= MAX_FLOORS {
                floors.by_key.retain(|_, f| f.at.elapsed() < FLOOR_KEPT_FOR);
                if floors.by_key.len() >= MAX_FLOORS {
                    floors.by_key.clear();
                    floors.epoch += 1;
                }
            }
            let kept = floors.by_key.entry(key.clone()).or_insert(floor);
            kept.version = kept.version.max(floor.version);
            kept.stamp = kept.stamp.max(floor.stamp);
            kept.at = floor.at;
        }
        if let Some(held) = self.held.get(key)
            && (held.version < floor.version || held.as_of <= floor.stamp)
        {
            self.held.invalidate(key);
        }
    }

    fn reset(&self, generation: u64) {
        self.held.invalidate_all();
        let mut floors = self.floors.lock().unwrap_or_else(|p| p.into_inner());
        floors.by_key.clear();
        floors.epoch += 1;
        self.generation.store(generation, Ordering::Release);
    }
}

#[async_trait]
impl Cache for NearCache {
    async fn get(&self, key: &str) -> Result<Option<CacheEntry>, CacheError> {
        if let Some(entry) = self.usable(key) {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(entry));
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        let ticket = self.ticket();
        let found = self.inner.get(key).await?;
        if let Some(entry) = &found {
            self.keep(key, entry, ticket);
        }
        Ok(found)
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<CacheEntry>>, CacheError> {
        let mut found: Vec<Option<CacheEntry>> = keys.iter().map(|k| self.usable(k)).collect();
        let missing: Vec<usize> = (0..keys.len()).filter(|i| found[*i].is_none()).collect();
        self.stats.hits.fetch_add((keys.len() - missing.len()) as u64, Ordering::Relaxed);
        if missing.is_empty() {
            return Ok(found);
        }
        self.stats.misses.fetch_add(missing.len() as u64, Ordering::Relaxed);
        let ticket = self.ticket();
        let asked: Vec<String> = missing.iter().map(|i| keys[*i].clone()).collect();
        let read = self.inner.get_many(&asked).await?;
        for (i, entry) in missing.into_iter().zip(read) {
            if let Some(entry) = &entry {
                self.keep(&keys[i], entry, ticket);
            }
            found[i] = entry;
        }
        Ok(found)
    }

    async fn put(&self, key: &str, entry: &CacheEntry, now: Timestamp) -> Result<Put, CacheError> {
        let ticket = self.ticket();
        // Dropped first, and a floor left: whatever happens to the shared write, this instance
        // must not serve or keep an older copy after it (it reads its own writes), not even one a
        // read of this instance had in flight.
        if entry.as_of == entry.version {
            self.state.heard(&FeedEvent::Written { key: key.to_string(), version: entry.version });
        }
        self.forget(key);
        let put = self.inner.put(key, entry, now).await;
        if matches!(put, Ok(Put::Written)) {
            self.keep(key, entry, ticket);
        } else {
            self.forget(key);
        }
        put
    }

    async fn load_gate(&self, key: &str, token: &LockToken, ttl: Duration, now: Timestamp) -> Result<Gate, CacheError> {
        self.inner.load_gate(key, token, ttl, now).await
    }

    async fn unlock(&self, key: &str, token: &LockToken) -> Result<(), CacheError> {
        self.inner.unlock(key, token).await
    }

    async fn count_reads(
        &self,
        counts: &[(String, u64)],
        hot_keys: &HotKeyPolicy,
        now: Timestamp,
    ) -> Result<(), CacheError> {
        self.inner.count_reads(counts, hot_keys, now).await
    }

    async fn flush_buffered(&self) -> Result<(), CacheError> {
        crate::telemetry::metrics().set_near_entries(self.held.entry_count());
        self.inner.flush_buffered().await
    }

    async fn hottest(
        &self,
        hot_keys: &HotKeyPolicy,
        min_reads: f64,
        limit: u64,
        now: Timestamp,
    ) -> Result<Vec<(String, f64)>, CacheError> {
        self.inner.hottest(hot_keys, min_reads, limit, now).await
    }

    async fn metadata(&self, keys: &[String]) -> Result<Vec<Option<EntryMeta>>, CacheError> {
        self.inner.metadata(keys).await
    }

    async fn refresh_gate(
        &self,
        key: &str,
        observed: Option<Timestamp>,
        token: &LockToken,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<RefreshGate, CacheError> {
        self.inner.refresh_gate(key, observed, token, ttl, now).await
    }

    async fn release_refresh(&self, key: &str, token: &LockToken) -> Result<(), CacheError> {
        self.inner.release_refresh(key, token).await
    }

    async fn evict(&self, key: &str, eviction: &Eviction, now: Timestamp) -> Result<(), CacheError> {
        self.evicting(key, eviction);
        let done = self.inner.evict(key, eviction, now).await;
        self.forget(key);
        done
    }

    async fn evict_many(&self, evictions: &[(String, Eviction)], now: Timestamp) -> Vec<Result<(), CacheError>> {
        for (key, eviction) in evictions {
            self.evicting(key, eviction);
        }
        let done = self.inner.evict_many(evictions, now).await;
        for (key, _) in evictions {
            self.forget(key);
        }
        done
    }

    async fn invalidate_tags(&self, tags: &[String], stamp: u64) -> Result<(), CacheError> {
        self.inner.invalidate_tags(tags, stamp).await
    }

    async fn invalidate_all(&self, stamp: u64) -> Result<(), CacheError> {
        let done = self.inner.invalidate_all(stamp).await;
        self.held.invalidate_all();
        done
    }

    async fn ping(&self) -> Result<Duration, CacheError> {
        self.inner.ping().await
    }

    fn describe(&self) -> &str {
        self.inner.describe()
    }

    fn near_cache_live(&self) -> Option<bool> {
        Some(self.feed.live_generation().is_some())
    }
}
