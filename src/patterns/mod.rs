//! The caching patterns, free of HTTP, of the host's envelopes and of any particular cache, store
//! or queue: they see only the traits in `ports`.
//!
//! One service per pattern, over a shared [`Core`] (the cache, the store, the version clock and the
//! cache policy):
//! * [`CacheAside`] (get-or-load) and [`RefreshAhead`] (keep read keys warm) share the read path
//!   in [`read_path`] (single-flight, the cross-process load gate, fail-safe).
//! * [`WriteThrough`] (store first, then cache) and [`WriteBehind`] (queue first, store later).
//! * The write-behind queue is drained through the apply core in [`apply`], by [`QueueConsumer`]
//!   (the Redis Stream, pulled in-process) and [`PushedBatches`] (Event Hubs batches the host
//!   pushes to `EventHubConsumer`); both settle failures the same way, into the dead letters.
//! * [`StoreChanges`] follows the store's change feed: keys other programs changed in the store
//!   are evicted, changes this service wrote are skipped.
//! * [`DeadLetterAdmin`] lists, replays and discards dead letters; [`HealthCheck`] probes what
//!   users depend on; [`versions`] issues write versions and leases the instance's node id;
//!   [`maintenance`] purges old tombstones.

pub mod apply;
pub(crate) mod background;
pub mod cache_aside;
pub mod dead_letters;
pub mod health;
pub mod invalidation;
pub(crate) mod maintenance;
pub mod read_path;
pub mod refresh_ahead;
mod single_flight;
pub mod store_changes;
pub mod versions;
pub mod write_behind;
pub mod write_through;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tracing::Instrument;

pub use apply::Applier;
pub(crate) use background::{Caller, RequestTasks};
pub use cache_aside::CacheAside;
pub use dead_letters::DeadLetterAdmin;
pub use health::HealthCheck;
pub use invalidation::Invalidator;
pub use read_path::{CacheStatus, Lookup, ReadError, Source};
pub use refresh_ahead::RefreshAhead;
pub use store_changes::StoreChanges;
pub use versions::HybridClock;
pub use write_behind::{PushedBatches, QueueConsumer, WriteBehind};
pub use write_through::{WriteError, WriteThrough, Written};

use crate::domain::entry::{CacheEntry, Tier};
use crate::domain::error_chain::Chain;
use crate::domain::json::JsonText;
use crate::domain::key::Key;
use crate::domain::options::EntryOptions;
use crate::domain::time::Timestamp;
use crate::ports::cache::Put;
use crate::ports::store::{Applied, Change};
use crate::ports::{Cache, DeadLetters, Leases, Store, StoreError, WriteQueue};

/// Lifetimes and limits that shape every cache write and every load.
#[derive(Debug, Clone, PartialEq)]
pub struct CachePolicy {
    /// Logical TTL of a value (`CacheTtlSeconds`).
    pub ttl: Duration,
    /// Up to this percentage is added to each TTL at random (`CacheTtlJitterPercent`).
    pub jitter_percent: u32,
    /// TTL of "this key does not exist" (`NegativeCacheTtlSeconds`).
    pub negative_ttl: Duration,
    /// How long past its TTL a value may be served while the store fails (`FailSafeMaxStaleSeconds`).
    pub fail_safe_max_stale: Duration,
    /// After the store failed and a stale value was served, how long before the store is tried again.
    pub fail_safe_throttle: Duration,
    /// Longest a store call may take before it counts as failed.
    pub store_timeout: Duration,
    /// How long a read waits for the store when it could serve a stale value instead
    /// (`FailSafeSoftTimeoutMs`); zero waits for `store_timeout`.
    pub soft_timeout: Duration,
    /// Lifetime of the cross-process load lock.
    pub lock_ttl: Duration,
    /// How long a miss waits for another process's load before loading itself.
    pub lock_wait: Duration,
    /// How long a negative entry outlives its TTL, so that a slow reader holding an older value
    /// cannot cache it again right after a delete.
    pub negative_grace: Duration,
}

impl Default for CachePolicy {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(300),
            jitter_percent: 10,
            negative_ttl: Duration::from_secs(30),
            fail_safe_max_stale: Duration::from_secs(3600),
            fail_safe_throttle: Duration::from_secs(30),
            store_timeout: Duration::from_secs(10),
            soft_timeout: Duration::from_millis(1000),
            lock_ttl: Duration::from_secs(5),
            lock_wait: Duration::from_millis(1500),
            negative_grace: Duration::from_secs(5),
        }
    }
}

impl CachePolicy {
    /// A cache entry of `value` at `version` written at `now`, with a jittered TTL and the
    /// fail-safe window.
    pub fn value_entry(&self, value: Value, version: u64, now: Timestamp) -> CacheEntry {
        self.entry_with(Some(value), version, now, &EntryOptions::NONE, version)
    }

    /// The entry for what the store holds or a write wrote (`None`: absent), with the write's tags
    /// and TTL, cached as of `as_of` (the version for a write; for a load, a stamp taken before the
    /// store was read).
    pub(crate) fn entry_with(
        &self,
        value: Option<Value>,
        version: u64,
        now: Timestamp,
        options: &EntryOptions,
        as_of: u64,
    ) -> CacheEntry {
        let tags = options.tag_names();
        let Some(value) = value else {
            return CacheEntry { tags, as_of, ..self.negative_entry(version, now) };
        };
        let value = JsonText::from_value(&value);
        let ttl = options.ttl.unwrap_or(self.ttl);
        let jitter_max = ttl * self.jitter_percent / 100;
        let jitter = Duration::from_micros(fastrand::u64(..=u64::try_from(jitter_max.as_micros()).unwrap_or(0)));
        let fresh_until = now.plus(ttl + jitter);
        CacheEntry {
            value: Some(value),
            version,
            written_at: now,
            fresh_until,
            stale_until: fresh_until.plus(self.fail_safe_max_stale),
            fail_safe: false,
            tags,
            as_of,
            tier: Tier::Shared,
        }
    }

    /// A cache entry recording that the key does not exist (as of `version`, 0 if never written).
    pub fn negative_entry(&self, version: u64, now: Timestamp) -> CacheEntry {
        let fresh_until = now.plus(self.negative_ttl);
        CacheEntry {
            value: None,
            version,
            written_at: now,
            fresh_until,
            stale_until: fresh_until.plus(self.negative_grace),
            fail_safe: false,
            tags: Vec::new(),
            as_of: version,
            tier: Tier::Shared,
        }
    }
}

/// The last store write failure, until a write succeeds again: `Health` reports the store down
/// while writes fail, even if a small probe write still gets through (a full disk). Measured on
/// the monotonic clock: it is about how recently writes failed, not about wall time.
#[derive(Debug, Default)]
pub(crate) struct WriteHealth {
    last_failure: Mutex<Option<(Instant, String)>>,
}

impl WriteHealth {
    fn record(&self, result: &Result<Applied, StoreError>) {
        let mut last = self.last_failure.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match result {
            Ok(_) => *last = None,
            // Only failures of the store itself: a write refused for its content says nothing
            // about whether other writes work.
            Err(e) if e.is_transient() => *last = Some((Instant::now(), Chain(e).to_string())),
            Err(_) => {}
        }
    }

    /// The failure of the last write, if it failed within `window`.
    pub(crate) fn failing_within(&self, window: Duration) -> Option<String> {
        let last = self.last_failure.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        last.as_ref().filter(|(at, _)| at.elapsed() <= window).map(|(_, why)| why.clone())
    }
}

/// What every pattern shares.
pub(crate) struct Core {
    pub(crate) cache: Arc<dyn Cache>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) versions: Arc<HybridClock>,
    pub(crate) policy: CachePolicy,
    pub(crate) write_health: WriteHealth,
    /// Cache work that waits for Redis (docs/invalidation.md, "Auto-recovery").
    pub(crate) recovery: invalidation::Recovery,
    /// Work requests start that outlives them (loads, refreshes, writes whose caller left):
    /// stopped at shutdown before the node-id lease is given back.
    pub(crate) background: RequestTasks,
}

impl Core {
    /// Now, from the injected time source.
    pub(crate) fn now(&self) -> Timestamp {
        self.versions.now()
    }

    /// A versioned store write under the policy's timeout, recorded for `Health`.
    pub(crate) async fn store_apply(
        &self,
        key: &Key,
        version: u64,
        change: Change,
        options: &EntryOptions,
        what: &str,
    ) -> Result<Applied, StoreError> {
        let result =
            self.with_store_timeout("apply", what, self.store.apply_with(key.as_str(), version, change, options)).await;
        self.write_health.record(&result);
        result
    }

    /// Runs a store call under the policy's timeout; a timeout is an `Unavailable` error. The call
    /// is timed (`db.client.operation.duration`, operation `op`) and traced.
    pub(crate) async fn with_store_timeout<T>(
        &self,
        op: &'static str,
        what: &str,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = std::time::Instant::now();
        let kind = self.store.kind();
        let span = tracing::trace_span!("store", db.system.name = kind, db.operation.name = op);
        let result = match tokio::time::timeout(self.policy.store_timeout, call).instrument(span).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::unavailable(format!("{what} took longer than {:?}", self.policy.store_timeout))),
        };
        let error = result.as_ref().err().map(|e| if e.is_transient() { "unavailable" } else { "rejected" });
        crate::telemetry::metrics().db_call(kind, op, started.elapsed(), error);
        result
    }

    /// Runs `write` to its end, even if the caller stops waiting for it: a client that
    /// disconnects, or the host cancelling an invocation, drops the request, and a write dropped
    /// between its store (or queue) step and its cache step would leave the cache serving what it
    /// replaced until its TTL. The caller polls it; dropped before it completed, it goes on on a
    /// task of its own ([`background::ToTheEnd`]), told that its caller left ([`Caller`]). It keeps
    /// the request's span, its time budget and its room in the memory budget, and is one of the
    /// [`RequestTasks`] shutdown stops before the node-id lease is given back (its versions must
    /// not outlive the lease). `None` when that stop cut it.
    pub(crate) async fn run_to_the_end<T, W>(&self, write: impl FnOnce(Caller) -> W) -> Option<T>
    where
        T: Send + 'static,
        W: std::future::Future<Output = T> + Send + 'static,
    {
        let carried = |caller| crate::ports::budget::carried(write(caller)).in_current_span();
        self.background.write(carried).await
    }

    /// Writes a cache entry; a failure is logged, never returned (the store already answered).
    /// True when the entry was written.
    pub(crate) async fn cache_quietly(&self, key: &Key, entry: &CacheEntry) -> bool {
        let put = self.cache.put(key.as_str(), entry, self.now()).await;
        self.report_put(key, entry, put)
    }

    /// Caches what a write wrote. When Redis cannot be reached or refuses the write (out of memory,
    /// a failed save), remembers to evict older versions of the key once it takes writes again, so
    /// no instance keeps serving what this write replaced.
    pub(crate) async fn cache_write(&self, key: &Key, entry: &CacheEntry) -> bool {
        let put = self.cache.put(key.as_str(), entry, self.now()).await;
        if put.is_err() {
            let eviction =
                crate::ports::cache::Eviction { stamp: None, below_version: Some(entry.version), hard: false };
            self.recovery.evict_later(key.as_str(), eviction);
        }
        self.report_put(key, entry, put)
    }

    fn report_put(&self, key: &Key, entry: &CacheEntry, put: Result<Put, crate::ports::CacheError>) -> bool {
        match put {
            Ok(Put::Written) => true,
            Ok(Put::KeptNewer) => {
                tracing::debug!(key = ?key.as_str(), version = entry.version, "cache holds a newer version; kept it");
                false
            }
            Ok(Put::Evicted) => {
                tracing::debug!(key = ?key.as_str(), version = entry.version, "the key was evicted after this value was read; not cached");
                false
            }
            Ok(Put::NotOurs) => {
                tracing::warn!(key = ?key.as_str(), "the Redis key of this cache key holds data that is not a cache entry; not cached");
                false
            }
            Err(e) => {
                tracing::warn!(key = ?key.as_str(), error = %Chain(&e), "could not update the cache");
                false
            }
        }
    }
}

/// What the services are built from: the adapters behind the ports, and the policies.
pub struct Parts {
    /// The shared cache.
    pub cache: Arc<dyn Cache>,
    /// The system of record.
    pub store: Arc<dyn Store>,
    /// The write-behind queue (producing end).
    pub queue: Arc<dyn WriteQueue>,
    /// Where dead letters are kept.
    pub dead_letters: Arc<dyn DeadLetters>,
    /// Exclusive leases (the refresh timer's tick).
    pub leases: Arc<dyn Leases>,
    /// The version clock (shared with the node-id lease).
    pub versions: Arc<HybridClock>,
    /// How entries are cached and loaded.
    pub policy: CachePolicy,
    /// How refresh-ahead behaves.
    pub refresh_ahead: refresh_ahead::RefreshAheadPolicy,
    /// How queued writes are applied and retried.
    pub drain: write_behind::DrainPolicy,
}

/// Every service, wired to the same core. Cheap to clone.
#[derive(Clone)]
pub struct Services {
    /// Cache-Aside reads.
    pub cache_aside: CacheAside,
    /// Write-Through writes.
    pub write_through: WriteThrough,
    /// Write-Behind writes.
    pub write_behind: WriteBehind,
    /// Refresh-Ahead reads and the refresh timer.
    pub refresh_ahead: RefreshAhead,
    /// The apply core (queued writes into the store).
    pub applier: Applier,
    /// Event Hubs batches the host pushes to `EventHubConsumer`.
    pub pushed_batches: PushedBatches,
    /// The dead letters, for people.
    pub dead_letters: DeadLetterAdmin,
    /// Evicting keys, invalidating tags, clearing; and the replay of what waited for Redis.
    pub invalidation: Invalidator,
    /// Following the store's change feed (`StoreChanges`).
    pub store_changes: StoreChanges,
    /// The health probes.
    pub health: HealthCheck,
}

impl Services {
    /// Wires every service over `parts`.
    pub fn new(parts: Parts) -> Self {
        let core = Arc::new(Core {
            cache: parts.cache.clone(),
            store: parts.store.clone(),
            versions: parts.versions,
            policy: parts.policy,
            write_health: WriteHealth::default(),
            recovery: invalidation::Recovery::default(),
            background: RequestTasks::new(),
        });
        let read_path = read_path::ReadPath::new(core.clone());
        let applier = Applier::new(core.clone());
        Self {
            cache_aside: CacheAside::new(read_path.clone()),
            write_through: WriteThrough::new(core.clone()),
            write_behind: WriteBehind::new(core.clone(), parts.queue.clone()),
            refresh_ahead: RefreshAhead::new(read_path, parts.leases, parts.refresh_ahead),
            pushed_batches: PushedBatches::new(applier.clone(), parts.dead_letters.clone(), parts.drain),
            applier,
            dead_letters: DeadLetterAdmin::new(parts.dead_letters.clone(), parts.queue.clone()),
            invalidation: Invalidator::new(core.clone()),
            store_changes: StoreChanges::new(core.clone()),
            health: HealthCheck::new(core, parts.queue, parts.dead_letters),
        }
    }
}

impl Services {
    /// The work requests started that outlives them (background loads and refreshes, writes that
    /// finish without their caller), which shutdown stops before the node-id lease is given back
    /// ([`crate::startup::Workers::stop`]).
    pub(crate) fn request_tasks(&self) -> &RequestTasks {
        &self.invalidation.core().background
    }

    /// Sends the refresh-ahead read counts this process buffered to the hot-key set, and what the
    /// cache buffered.
    pub async fn flush_buffered_reads(&self) {
        self.refresh_ahead.flush_read_counts().await;
        if let Err(e) = self.invalidation.core().cache.flush_buffered().await {
            tracing::debug!(error = %Chain(&e), "could not send what the cache buffered");
        }
    }

    /// Every second until `shutdown`: replays the cache work that waited for Redis, and sends the
    /// buffered read counts (docs/invalidation.md).
    pub async fn keep_recovering(self, shutdown: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    let round = async {
                        self.invalidation.replay_pending().await;
                        self.flush_buffered_reads().await;
                        self.health.sample_backlog().await;
                    };
                    // Each step waits on Redis: shutdown cuts a round short (what waits for Redis
                    // is in memory, gone with the process anyway).
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = round => {}
                    }
                }
            }
        }
    }
}
