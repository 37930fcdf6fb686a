//! The caching patterns, free of HTTP and of the host's envelopes.
//!
//! [`Patterns`] holds what every pattern shares (the cache, the store, the version clock and the
//! cache policy); each pattern lives in its own module as methods on it:
//! [`cache_aside`] (get-or-load), [`write_through`] (store first, then cache), [`write_behind`]
//! (queue first, store later) with [`apply_writes`] (the consumers' side), and [`refresh_ahead`]
//! (eager and timed refresh of read keys).

pub mod apply_writes;
pub mod cache_aside;
pub mod refresh_ahead;
pub mod single_flight;
pub mod write_behind;
pub mod write_through;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::cache::{EntryWrite, RedisCache};
use crate::clock::{Clock, Timestamp};
use crate::queue::WriteQueue;
use crate::queue::dead_letter::DeadLetters;
use crate::queue::redis_streams::RedisStreamQueue;
use crate::settings::Settings;
use crate::store::{Store, StoreError};
use crate::version::HybridClock;

pub use cache_aside::{CacheStatus, Lookup, ReadError, Source};
pub use write_through::{WriteError, Written};

/// Lifetimes and limits that shape every cache write.
#[derive(Debug, Clone)]
pub struct CachePolicy {
    /// Logical TTL of a value.
    pub ttl: Duration,
    /// Up to this percentage is added to each TTL at random.
    pub jitter_percent: u32,
    /// TTL of "this key does not exist".
    pub negative_ttl: Duration,
    /// How long past its TTL a value may be served while the store fails.
    pub fail_safe_max_stale: Duration,
    /// After the store failed and a stale value was served, how long before the store is tried again.
    pub fail_safe_throttle: Duration,
    /// Longest a store call may take before it counts as failed.
    pub store_timeout: Duration,
    /// How long a read waits for the store when it could serve a stale value instead (fail-safe
    /// soft timeout); zero waits for `store_timeout`.
    pub soft_timeout: Duration,
    /// Lifetime of the cross-process load lock.
    pub lock_ttl: Duration,
    /// How long a miss waits for another process's load before loading itself.
    pub lock_wait: Duration,
}

impl CachePolicy {
    /// The policy the settings describe.
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            ttl: settings.cache_ttl,
            jitter_percent: settings.ttl_jitter_percent,
            negative_ttl: settings.negative_ttl,
            fail_safe_max_stale: settings.fail_safe_max_stale,
            fail_safe_throttle: settings.cache_ttl.min(Duration::from_secs(30)),
            store_timeout: Duration::from_secs(10),
            soft_timeout: settings.fail_safe_soft_timeout,
            lock_ttl: Duration::from_secs(5),
            lock_wait: Duration::from_millis(1500),
        }
    }

    /// A cache write of `value` at `version` made at `now`, with a jittered TTL and the fail-safe
    /// window.
    pub fn value_entry(&self, value: Value, version: u64, now: Timestamp) -> EntryWrite {
        let now = now.as_millis();
        let ttl_ms = self.ttl.as_millis() as u64;
        let jitter_ms = ttl_ms * u64::from(self.jitter_percent) / 100;
        let fresh_until_ms = now + ttl_ms + fastrand::u64(..=jitter_ms);
        EntryWrite {
            value: Some(value),
            version,
            written_at_ms: now,
            fresh_until_ms,
            stale_until_ms: fresh_until_ms + self.fail_safe_max_stale.as_millis() as u64,
            fail_safe: false,
        }
    }

    /// A cache write recording that the key does not exist (as of `version`, 0 if never written).
    /// It is kept a few seconds past its TTL so that a slow reader holding an older value cannot
    /// re-cache it right after a delete.
    pub fn negative_entry(&self, version: u64, now: Timestamp) -> EntryWrite {
        let now = now.as_millis();
        let fresh_until_ms = now + self.negative_ttl.as_millis() as u64;
        EntryWrite {
            value: None,
            version,
            written_at_ms: now,
            fresh_until_ms,
            stale_until_ms: fresh_until_ms + 5_000,
            fail_safe: false,
        }
    }
}

/// Everything the patterns share. Cheap to clone.
#[derive(Clone)]
pub struct Patterns {
    pub(crate) cache: RedisCache,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) clock: Arc<HybridClock>,
    pub(crate) policy: Arc<CachePolicy>,
    pub(crate) loads: Arc<single_flight::SingleFlight<Result<Lookup, ReadError>>>,
    pub(crate) queue: Arc<dyn WriteQueue>,
    pub(crate) dead_letters: DeadLetters,
    pub(crate) refresh: Arc<refresh_ahead::RefreshAhead>,
    pub(crate) write_health: Arc<WriteHealth>,
}

/// The last store write failure, until a write succeeds again: `Health` reports the store down
/// while writes fail, even if a small probe write still gets through (a full disk).
#[derive(Debug, Default)]
pub(crate) struct WriteHealth {
    last_failure: std::sync::Mutex<Option<(std::time::Instant, String)>>,
}

impl WriteHealth {
    fn record(&self, result: &Result<crate::store::Applied, StoreError>) {
        let mut last = self.last_failure.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match result {
            Ok(_) => *last = None,
            // Only failures of the store itself: a write refused for its content says nothing
            // about whether other writes work.
            Err(e) if e.is_transient() => *last = Some((std::time::Instant::now(), e.to_string())),
            Err(_) => {}
        }
    }

    /// The failure of the last write, if it failed within `window`.
    pub(crate) fn failing_within(&self, window: Duration) -> Option<String> {
        let last = self.last_failure.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        last.as_ref().filter(|(at, _)| at.elapsed() <= window).map(|(_, why)| why.clone())
    }
}

impl Patterns {
    /// Wires the patterns to a cache and a store, with the default write-behind queue (a Redis
    /// Stream next to the cache), on `time`.
    pub fn new(cache: RedisCache, store: Arc<dyn Store>, policy: CachePolicy, time: Arc<dyn Clock>) -> Self {
        let queue = Arc::new(RedisStreamQueue::new(cache.clone()));
        let dead_letters = DeadLetters::new(cache.clone(), time.clone());
        Self {
            cache,
            store,
            clock: Arc::new(HybridClock::new(time)),
            policy: Arc::new(policy),
            loads: Arc::default(),
            queue,
            dead_letters,
            refresh: Arc::default(),
            write_health: Arc::default(),
        }
    }

    /// The same patterns with another write-behind queue (Event Hubs).
    pub fn with_queue(mut self, queue: Arc<dyn WriteQueue>) -> Self {
        self.queue = queue;
        self
    }

    /// The write-behind queue.
    pub fn queue(&self) -> &Arc<dyn WriteQueue> {
        &self.queue
    }

    /// The dead-letter stream.
    pub fn dead_letters(&self) -> &DeadLetters {
        &self.dead_letters
    }

    /// The cache.
    pub fn cache(&self) -> &RedisCache {
        &self.cache
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The policy.
    pub fn policy(&self) -> &CachePolicy {
        &self.policy
    }

    /// The version clock.
    pub fn clock(&self) -> &Arc<HybridClock> {
        &self.clock
    }

    /// Now, from the injected time source.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Why store writes are failing, if the last one failed within `window` (for `Health`).
    pub fn store_write_failure(&self, window: Duration) -> Option<String> {
        self.write_health.failing_within(window)
    }

    /// A versioned store write under the policy's timeout, recorded for `Health`.
    pub(crate) async fn store_apply(
        &self,
        key: &crate::key::Key,
        version: u64,
        change: crate::store::Change,
        what: &str,
    ) -> Result<crate::store::Applied, StoreError> {
        let result = self.with_store_timeout(what, self.store.apply(key.as_str(), version, change)).await;
        self.write_health.record(&result);
        result
    }

    /// Runs a store call under the policy's timeout; a timeout is an `Unavailable` error.
    pub(crate) async fn with_store_timeout<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.policy.store_timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::unavailable(format!("{what} took longer than {:?}", self.policy.store_timeout))),
        }
    }
}
