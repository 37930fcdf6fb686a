//! Refresh-Ahead: keep values that are read warm, so readers rarely wait for the store.
//!
//! Two triggers, as in Coherence's refresh-ahead factor, Caffeine's `refreshAfterWrite` and
//! FusionCache's eager refresh, plus a timer for what reads alone miss:
//!
//! * **Access-driven (eager) refresh** — [`RefreshAhead::get`]: a read is answered from
//!   the cache at once; if the entry is older than `RefreshAheadFactor` × its TTL, one background
//!   refresh of the key is started, unless the instance already runs `RefreshAheadEagerParallelism`
//!   of them (a later read starts it then). One per key per window: an in-process set of keys being
//!   refreshed, and across processes a short Redis lock that is only taken if the entry is still
//!   the one the reader saw. A miss loads synchronously, exactly like Cache-Aside (stampede
//!   protection and fail-safe included). Every read counts in the hot-key set, sent in batches
//!   ([`read_counts`]): a hit is one plain entry read.
//! * **Timer** — [`RefreshAhead::run_timer`]: the hottest keys whose entries will expire before the
//!   next run are refreshed in bounded parallel batches, under a per-tick lock so that one instance
//!   does it per tick.
//!
//! A refresh reads the store and writes through the cache's "never older" write with the store's
//! version, so it can never replace a newer write-through. A failed refresh keeps the old entry, and
//! its lock is left to expire, which throttles retries while the store is failing.

mod read_counts;
mod schedule;
mod timer;

pub use schedule::Schedule;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;

use super::read_path::{Lookup, ReadError, ReadPath};
use crate::domain::entry::CacheEntry;
use crate::domain::error_chain::Chain;
use crate::domain::key::Key;
use crate::domain::time::Timestamp;
use crate::ports::cache::{HotKeyPolicy, RefreshGate};
use crate::ports::{Leases, LockToken};

/// How refresh-ahead behaves.
#[derive(Debug, Clone)]
pub struct RefreshAheadPolicy {
    /// Fraction of the TTL after which a read schedules a refresh; 0 turns eager refresh off.
    pub factor: f64,
    /// Decay and size of the hot-key set.
    pub hot_keys: HotKeyPolicy,
    /// Decayed read count from which the timer considers a key hot.
    pub hot_min_reads: f64,
    /// Most keys one timer run looks at (the hottest).
    pub timer_max_keys: u64,
    /// Store reads one timer run makes at once.
    pub timer_parallelism: usize,
    /// Eager refreshes one process runs at once. A read that finds them all busy starts none: the
    /// entry is still fresh, and a later read past the factor (or the timer) refreshes it. Without
    /// a bound, many keys written together and read together each sent a store read at once.
    pub eager_parallelism: usize,
    /// The timer's schedule (to know when it runs next).
    pub schedule: Schedule,
    /// Lifetime of a key's refresh lock: longer than a store read may take, so two processes do not
    /// refresh one key at once; left to expire after a failure, it spaces out retries.
    pub lock_ttl: Duration,
}

impl Default for RefreshAheadPolicy {
    fn default() -> Self {
        Self {
            factor: 0.8,
            hot_keys: HotKeyPolicy { half_life: Duration::from_secs(900), max_keys: 10_000 },
            hot_min_reads: 2.0,
            timer_max_keys: 1000,
            timer_parallelism: 8,
            eager_parallelism: 8,
            schedule: Schedule::default(),
            // The default store timeout (10 s) plus a second.
            lock_ttl: Duration::from_secs(11),
        }
    }
}

/// The Refresh-Ahead service. Cheap to clone; clones share the keys being refreshed.
#[derive(Clone)]
pub struct RefreshAhead {
    read: ReadPath,
    leases: Arc<dyn Leases>,
    policy: Arc<RefreshAheadPolicy>,
    in_flight: Arc<Mutex<HashSet<String>>>,
    /// One permit per eager refresh that may run at once ([`RefreshAheadPolicy::eager_parallelism`]).
    eager_permits: Arc<Semaphore>,
    reads: Arc<read_counts::ReadCounts>,
}

/// A claimed key; released when dropped, even if the refresh panics or is cancelled.
struct InFlight {
    keys: Arc<Mutex<HashSet<String>>>,
    key: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut keys = self.keys.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        keys.remove(&self.key);
    }
}

/// What one key's refresh did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refreshed {
    /// The store was read and the cache rewritten (or found to hold a newer version already).
    Yes,
    /// Not needed or not ours: someone else is refreshing, or already did.
    Skipped,
    /// The store or the cache failed; the old entry is kept.
    Failed(String),
}

impl Refreshed {
    /// The outcome's name in metrics.
    pub(crate) fn outcome(&self) -> &'static str {
        match self {
            Self::Yes => "refreshed",
            Self::Skipped => "skipped",
            Self::Failed(_) => "failed",
        }
    }
}

impl RefreshAhead {
    pub(crate) fn new(read: ReadPath, leases: Arc<dyn Leases>, policy: RefreshAheadPolicy) -> Self {
        let reads = Arc::new(read_counts::ReadCounts::new(policy.hot_keys.max_keys));
        let eager_permits = Arc::new(Semaphore::new(policy.eager_parallelism.max(1)));
        Self { read, leases, policy: Arc::new(policy), in_flight: Arc::default(), eager_permits, reads }
    }

    /// The policy.
    pub fn policy(&self) -> &RefreshAheadPolicy {
        &self.policy
    }

    /// How many keys this process is refreshing right now (for tests and diagnostics).
    pub fn refreshes_in_flight(&self) -> usize {
        self.in_flight.lock().map(|keys| keys.len()).unwrap_or(0)
    }

    /// Now, from the injected time source.
    pub fn now(&self) -> Timestamp {
        self.read.core.now()
    }

    /// Sends the reads counted in this process to the hot-key set (every second, and before each
    /// timer run). Counts that cannot be sent are dropped: they only make keys hot sooner.
    pub async fn flush_read_counts(&self) {
        let cache = &self.read.core.cache;
        for (at, reads) in self.reads.take() {
            if let Err(e) = cache.count_reads(&reads, &self.policy.hot_keys, at).await {
                tracing::debug!(error = %Chain(&e), keys = reads.len(), "could not send refresh-ahead read counts");
            }
        }
    }

    /// Marks `key` as being refreshed; `None` if it already is.
    fn claim(&self, key: &str) -> Option<InFlight> {
        let mut keys = self.in_flight.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        keys.insert(key.to_string()).then(|| InFlight { keys: self.in_flight.clone(), key: key.to_string() })
    }

    /// Refresh-Ahead read of `key`: the cached value at once, a background refresh when the entry
    /// is past the refresh factor, a Cache-Aside load on a miss.
    pub async fn get(&self, key: &Key) -> Result<Lookup, ReadError> {
        let core = &self.read.core;
        let now = core.now();
        let read = core.cache.get(key.as_str()).await;
        if read.is_ok() {
            self.reads.count(key.as_str(), now);
        }
        match read {
            Ok(Some(entry)) if entry.is_fresh(now) => {
                if self.refresh_due(&entry, now) {
                    self.spawn_refresh(key, entry.written_at);
                }
                Ok(Lookup::from_entry(entry))
            }
            // Boxed, as in Cache-Aside: the miss paths' state stays out of every hit's future.
            Ok(stale) => Box::pin(self.read.load(key, stale)).await,
            Err(e) => {
                tracing::warn!(key = ?key.as_str(), error = %Chain(&e), "cache unavailable; reading the store directly");
                Box::pin(self.read.load_bypassing_cache(key)).await
            }
        }
    }

    /// True when a read of `entry` at `now` should start an eager refresh. Not for negative
    /// entries (cheap to reload, nothing to keep warm) nor for values served by the fail-safe
    /// (their short freshness is the retry throttle).
    fn refresh_due(&self, entry: &CacheEntry, now: Timestamp) -> bool {
        let factor = self.policy.factor;
        let ttl = entry.ttl();
        factor > 0.0
            && !ttl.is_zero()
            && !entry.is_negative()
            && !entry.fail_safe
            && now.since(entry.written_at).as_secs_f64() >= factor * ttl.as_secs_f64()
    }

    /// Starts a background refresh of `key` unless this process is already refreshing it or runs
    /// as many eager refreshes as it may (on a task stopped at shutdown, see `background`).
    fn spawn_refresh(&self, key: &Key, observed: Timestamp) {
        // The permit first: a read that is deferred claims nothing (no allocation, and no window in
        // which the timer would find the key claimed by a refresh that never runs).
        let Ok(permit) = self.eager_permits.clone().try_acquire_owned() else {
            crate::telemetry::metrics().refresh("read", "deferred");
            tracing::debug!(key = ?key.as_str(), "refresh deferred: as many eager refreshes as allowed are running");
            return;
        };
        let Some(claim) = self.claim(key.as_str()) else { return };
        let this = self.clone();
        let key = key.clone();
        self.read.core.background.spawn(async move {
            let _claim = claim;
            let _permit = permit;
            let refreshed = this.refresh_key(&key, Some(observed)).await;
            crate::telemetry::metrics().refresh("read", refreshed.outcome());
            match refreshed {
                Refreshed::Yes => tracing::debug!(key = ?key.as_str(), "refreshed ahead of expiry"),
                Refreshed::Skipped => tracing::debug!(key = ?key.as_str(), "refresh not needed: another caller has it"),
                Refreshed::Failed(why) => {
                    tracing::warn!(key = ?key.as_str(), error = %why, "refresh ahead failed; the cached value is kept")
                }
            }
        });
    }

    /// Refreshes `key` from the store if the cached entry is still the one written at `observed`
    /// (`None`: there was no entry) and no one else is refreshing it.
    async fn refresh_key(&self, key: &Key, observed: Option<Timestamp>) -> Refreshed {
        let core = &self.read.core;
        let token = LockToken::random();
        let gate = core.cache.refresh_gate(key.as_str(), observed, &token, self.policy.lock_ttl, core.now()).await;
        match gate {
            Ok(RefreshGate::Acquired) => {}
            Ok(RefreshGate::Busy | RefreshGate::AlreadyDone) => return Refreshed::Skipped,
            Err(e) => return Refreshed::Failed(Chain(&e).to_string()),
        }
        let as_of = core.versions.next();
        let record =
            match core.with_store_timeout("get", "refreshing from the store", core.store.get(key.as_str())).await {
                Ok(record) => record,
                // The lock stays until it expires: the next attempt waits that long.
                Err(e) => return Refreshed::Failed(Chain(&e).to_string()),
            };
        let (value, version, options) = record.map(|r| (r.value, r.version, r.options)).unwrap_or((
            None,
            0,
            crate::domain::options::EntryOptions::NONE,
        ));
        let entry = core.policy.entry_with(value, version, core.now(), &options, as_of);
        let written = core.cache.put(key.as_str(), &entry, core.now()).await;
        if let Err(e) = core.cache.release_refresh(key.as_str(), &token).await {
            tracing::debug!(key = ?key.as_str(), error = %Chain(&e), "could not release the refresh lock; it expires by itself");
        }
        match written {
            Ok(_) => Refreshed::Yes,
            Err(e) => Refreshed::Failed(Chain(&e).to_string()),
        }
    }
}
