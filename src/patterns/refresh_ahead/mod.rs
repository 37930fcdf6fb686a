//! Refresh-Ahead: keep values that are read warm, so readers rarely wait for the store.
//!
//! Two triggers, as in Coherence's refresh-ahead factor, Caffeine's `refreshAfterWrite` and
//! FusionCache's eager refresh, plus a timer for what reads alone miss:
//!
//! * **Access-driven (eager) refresh** — [`Patterns::refresh_ahead_get`]: a read is answered from
//!   the cache at once; if the entry is older than `RefreshAheadFactor` × its TTL, one background
//!   refresh of the key is started. One per key per window: an in-process set of keys being
//!   refreshed, and across processes a short Redis lock that is only taken if the entry is still
//!   the one the reader saw. A miss loads synchronously, exactly like Cache-Aside (stampede
//!   protection and fail-safe included). Every read counts in the hot-key set, in the same round trip.
//! * **Timer** — [`Patterns::refresh_hot_keys`]: the hottest keys whose entries will expire before the
//!   next run are refreshed in bounded parallel batches, under a per-tick lock so that one instance
//!   does it per tick.
//!
//! A refresh reads the store and writes through the cache's "never older" write with the store's
//! version, so it can never replace a newer write-through. A failed refresh keeps the old entry, and
//! its lock is left to expire, which throttles retries while the store is failing.

pub mod schedule;

pub use schedule::Schedule;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{Lookup, Patterns, ReadError};
use crate::cache::{CacheEntry, CacheError, EntryMeta, HotKeyPolicy, RefreshGate, lock_token};
use crate::key::Key;
use crate::settings::Settings;

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
    /// The timer's schedule (to know when it runs next).
    pub schedule: Schedule,
    /// Lifetime of a key's refresh lock: longer than a store read may take, so two processes do not
    /// refresh one key at once; left to expire after a failure, it spaces out retries.
    pub lock_ttl: Duration,
}

impl RefreshAheadPolicy {
    /// The policy the settings describe.
    pub fn from_settings(settings: &Settings) -> Self {
        let r = &settings.refresh_ahead;
        Self {
            factor: settings.refresh_ahead_factor,
            hot_keys: HotKeyPolicy { half_life: r.hot_keys_half_life, max_keys: r.hot_keys_max },
            hot_min_reads: r.hot_min_reads,
            timer_max_keys: r.timer_max_keys,
            timer_parallelism: r.timer_parallelism,
            schedule: r.schedule.clone(),
            lock_ttl: Duration::from_secs(11),
        }
    }
}

impl Default for RefreshAheadPolicy {
    fn default() -> Self {
        Self {
            factor: 0.8,
            hot_keys: HotKeyPolicy { half_life: Duration::from_secs(900), max_keys: 10_000 },
            hot_min_reads: 2.0,
            timer_max_keys: 1000,
            timer_parallelism: 8,
            schedule: Schedule::default(),
            lock_ttl: Duration::from_secs(11),
        }
    }
}

/// Refresh-ahead's share of [`Patterns`]: its policy and the keys this process is refreshing.
#[derive(Debug, Default)]
pub(crate) struct RefreshAhead {
    pub(crate) policy: RefreshAheadPolicy,
    in_flight: Mutex<HashSet<String>>,
}

impl RefreshAhead {
    pub(crate) fn new(policy: RefreshAheadPolicy) -> Self {
        Self { policy, in_flight: Mutex::default() }
    }

    /// Marks `key` as being refreshed; `None` if it already is.
    fn claim(self: &Arc<Self>, key: &str) -> Option<InFlight> {
        let mut keys = self.in_flight.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        keys.insert(key.to_string()).then(|| InFlight { owner: self.clone(), key: key.to_string() })
    }
}

/// A claimed key; released when dropped, even if the refresh panics or is cancelled.
struct InFlight {
    owner: Arc<RefreshAhead>,
    key: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut keys = self.owner.in_flight.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        keys.remove(&self.key);
    }
}

/// What one key's refresh did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refreshed {
    /// The store was read and the cache rewritten (or found to hold a newer version already).
    Yes,
    /// Not needed or not ours: someone else is refreshing, or already did.
    Skipped,
    /// The store or the cache failed; the old entry is kept.
    Failed(String),
}

/// When a timer run happens and what it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerPlan {
    /// The schedule occurrence this run belongs to (ms): the key of the per-tick lock.
    pub tick_ms: i64,
    /// When the timer runs next (ms).
    pub next_run_ms: i64,
    /// Entries that turn stale before this moment are refreshed (ms).
    pub horizon_ms: i64,
}

impl TimerPlan {
    /// Plans a run at `now_ms`. `status_next` is the host's `ScheduleStatus.Next`, used when it is a
    /// sane future time: more than half a second ahead (during a scheduled run it is this run's own
    /// time, give or take the timer's jitter) and at most a day. It may also be absent, or the year 1
    /// on a first run. Otherwise the schedule says, and failing that five minutes from now.
    pub fn new(schedule: &Schedule, now_ms: i64, status_next: Option<i64>) -> Self {
        const DAY_MS: i64 = 24 * 3600 * 1000;
        let next_run_ms = status_next
            .filter(|next| *next > now_ms + 500 && *next <= now_ms + DAY_MS)
            .or_else(|| schedule.next_after(now_ms))
            .unwrap_or(now_ms + 300_000);
        let tick_ms = schedule.tick_at(now_ms + 1000).unwrap_or(now_ms - now_ms.rem_euclid(1000));
        // Slack for the next run's own duration and start-up delay.
        let slack = ((next_run_ms - now_ms) / 4).clamp(0, 30_000);
        Self { tick_ms, next_run_ms, horizon_ms: next_run_ms + slack }
    }
}

/// What a timer run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimerReport {
    /// Hot keys looked at.
    pub considered: usize,
    /// Keys refreshed from the store.
    pub refreshed: usize,
    /// Hot keys that stay fresh past the next run, negative entries, and keys someone else is refreshing.
    pub skipped: usize,
    /// Keys whose refresh failed (their old entries are kept).
    pub failed: usize,
    /// Another instance holds this tick's lock, so this run did nothing.
    pub other_instance: bool,
}

impl Patterns {
    /// Replaces the refresh-ahead policy (the default one comes with [`Patterns::new`]).
    pub fn with_refresh_ahead(mut self, policy: RefreshAheadPolicy) -> Self {
        self.refresh = Arc::new(RefreshAhead::new(policy));
        self
    }

    /// The refresh-ahead policy.
    pub fn refresh_ahead_policy(&self) -> &RefreshAheadPolicy {
        &self.refresh.policy
    }

    /// How many keys this process is refreshing right now (for tests and diagnostics).
    pub fn refreshes_in_flight(&self) -> usize {
        self.refresh.in_flight.lock().map(|keys| keys.len()).unwrap_or(0)
    }

    /// Refresh-Ahead read of `key`: the cached value at once, a background refresh when the entry
    /// is past the refresh factor, a Cache-Aside load on a miss.
    pub async fn refresh_ahead_get(&self, key: &Key) -> Result<Lookup, ReadError> {
        let now = self.now();
        match self.cache.get_and_bump(key.as_str(), &self.refresh.policy.hot_keys, now).await {
            Ok(Some(entry)) if entry.is_fresh(now.as_millis()) => {
                if self.refresh_due(&entry, now.as_millis()) {
                    self.spawn_refresh(key, entry.written_at_ms);
                }
                Ok(Lookup::from_entry(&entry))
            }
            Ok(stale) => self.load(key, stale).await,
            Err(e) => {
                tracing::warn!(key = ?key.as_str(), error = %e, "cache unavailable; reading the store directly");
                self.load_bypassing_cache(key).await
            }
        }
    }

    /// True when a read of `entry` at `now_ms` should start an eager refresh. Not for negative
    /// entries (cheap to reload, nothing to keep warm) nor for values served by the fail-safe
    /// (their short freshness is the retry throttle).
    fn refresh_due(&self, entry: &CacheEntry, now_ms: u64) -> bool {
        let factor = self.refresh.policy.factor;
        let ttl = entry.ttl_ms();
        factor > 0.0
            && ttl > 0
            && !entry.is_negative()
            && !entry.fail_safe
            && now_ms.saturating_sub(entry.written_at_ms) as f64 >= factor * ttl as f64
    }

    /// Starts a background refresh of `key` unless this process is already refreshing it.
    fn spawn_refresh(&self, key: &Key, observed_at: u64) {
        let Some(claim) = self.refresh.claim(key.as_str()) else { return };
        let this = self.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let _claim = claim;
            match this.refresh_key(&key, Some(observed_at)).await {
                Refreshed::Yes => tracing::debug!(key = ?key.as_str(), "refreshed ahead of expiry"),
                Refreshed::Skipped => tracing::debug!(key = ?key.as_str(), "refresh not needed: another caller has it"),
                Refreshed::Failed(why) => {
                    tracing::warn!(key = ?key.as_str(), error = %why, "refresh ahead failed; the cached value is kept")
                }
            }
        });
    }

    /// Refreshes `key` from the store if the cached entry is still the one written at
    /// `observed_at` (`None`: there was no entry) and no one else is refreshing it.
    pub(crate) async fn refresh_key(&self, key: &Key, observed_at: Option<u64>) -> Refreshed {
        let token = lock_token();
        let gate =
            self.cache.refresh_gate(key.as_str(), observed_at, &token, self.refresh.policy.lock_ttl, self.now()).await;
        match gate {
            Ok(RefreshGate::Acquired) => {}
            Ok(RefreshGate::Busy | RefreshGate::AlreadyDone) => return Refreshed::Skipped,
            Err(e) => return Refreshed::Failed(e.to_string()),
        }
        let record = match self.with_store_timeout("refreshing from the store", self.store.get(key.as_str())).await {
            Ok(record) => record,
            // The lock stays until it expires: the next attempt waits that long.
            Err(e) => return Refreshed::Failed(e.to_string()),
        };
        let entry = match record {
            Some(record) => match record.value {
                Some(value) => self.policy.value_entry(value, record.version, self.now()),
                None => self.policy.negative_entry(record.version, self.now()),
            },
            None => self.policy.negative_entry(0, self.now()),
        };
        let written = self.cache.put(key.as_str(), &entry, self.now()).await;
        if let Err(e) = self.cache.release_refresh(key.as_str(), &token).await {
            tracing::debug!(key = ?key.as_str(), error = %e, "could not release the refresh lock; it expires by itself");
        }
        match written {
            Ok(_) => Refreshed::Yes,
            Err(e) => Refreshed::Failed(e.to_string()),
        }
    }

    /// One timer run: refreshes the hottest keys whose entries turn stale before `plan.horizon_ms`,
    /// unless another instance holds this tick. Fails only when Redis cannot be used at all.
    pub async fn refresh_hot_keys(&self, plan: &TimerPlan) -> Result<TimerReport, CacheError> {
        let lock_key = self.cache.keys().tick_lock(plan.tick_ms);
        let token = lock_token();
        let now = self.now().as_millis() as i64;
        let lock_ttl = Duration::from_millis((plan.next_run_ms - now).clamp(5_000, 600_000) as u64);
        if !self.cache.try_lock(&lock_key, &token, lock_ttl).await? {
            return Ok(TimerReport { other_instance: true, ..TimerReport::default() });
        }
        let report = self.refresh_due_hot_keys(plan).await;
        if let Err(e) = self.cache.release(&lock_key, &token).await {
            tracing::debug!(error = %e, "could not release the timer lock; it expires by itself");
        }
        report
    }

    async fn refresh_due_hot_keys(&self, plan: &TimerPlan) -> Result<TimerReport, CacheError> {
        let policy = &self.refresh.policy;
        let hot = self.cache.hottest(&policy.hot_keys, policy.hot_min_reads, policy.timer_max_keys, self.now()).await?;
        let names: Vec<String> = hot.into_iter().map(|(key, _)| key).collect();
        let metas = self.cache.metadata(&names).await?;
        let mut report = TimerReport { considered: names.len(), ..TimerReport::default() };
        let permits = Arc::new(Semaphore::new(policy.timer_parallelism.max(1)));
        let mut tasks = JoinSet::new();
        for (name, meta) in names.into_iter().zip(metas) {
            let Some(observed_at) = due(meta, plan.horizon_ms) else {
                report.skipped += 1;
                continue;
            };
            let (Ok(key), Some(claim)) = (Key::new(name.clone()), self.refresh.claim(&name)) else {
                report.skipped += 1;
                continue;
            };
            let (this, permits) = (self.clone(), permits.clone());
            tasks.spawn(async move {
                let _claim = claim;
                let Ok(_permit) = permits.acquire_owned().await else { return Refreshed::Skipped };
                this.refresh_key(&key, observed_at).await
            });
        }
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(Refreshed::Yes) => report.refreshed += 1,
                Ok(Refreshed::Skipped) => report.skipped += 1,
                Ok(Refreshed::Failed(why)) => {
                    tracing::warn!(error = %why, "timer refresh of a hot key failed; its cached value is kept");
                    report.failed += 1
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a timer refresh task stopped");
                    report.failed += 1
                }
            }
        }
        Ok(report)
    }
}

/// Whether an entry needs the timer's refresh: `Some(observed write time)` if so. A missing entry of
/// a hot key is loaded (`Some(None)`); a negative one is left to expire.
fn due(meta: Option<EntryMeta>, horizon_ms: i64) -> Option<Option<u64>> {
    match meta {
        None => Some(None),
        Some(meta) if meta.negative => None,
        Some(meta) if (meta.fresh_until_ms as i64) < horizon_ms => Some(Some(meta.written_at_ms)),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_729_851_600_000; // 2024-10-25T10:20:00Z

    #[test]
    fn plans_use_a_sane_next_or_the_schedule() {
        let every5 = Schedule::default();
        // A scheduled run: Next is this run's own time, so the schedule decides.
        let p = TimerPlan::new(&every5, T0 + 20, Some(T0));
        assert_eq!((p.tick_ms, p.next_run_ms, p.horizon_ms), (T0, T0 + 300_000, T0 + 330_000));
        // A manual run between ticks with the monitor's Next.
        let p = TimerPlan::new(&every5, T0 + 100_000, Some(T0 + 300_000));
        assert_eq!((p.tick_ms, p.next_run_ms), (T0, T0 + 300_000));
        // The year-1 sentinel and absurd values fall back to the schedule.
        let year1 = -62_135_596_800_000;
        assert_eq!(TimerPlan::new(&every5, T0 + 20, Some(year1)).next_run_ms, T0 + 300_000);
        assert_eq!(TimerPlan::new(&every5, T0 + 20, Some(T0 + 40 * 86_400_000)).next_run_ms, T0 + 300_000);
        assert_eq!(TimerPlan::new(&every5, T0 + 20, None).next_run_ms, T0 + 300_000);
    }

    #[test]
    fn which_entries_are_due() {
        let meta =
            |soft: u64, negative| Some(EntryMeta { version: 1, written_at_ms: 7, fresh_until_ms: soft, negative });
        assert_eq!(due(None, 100), Some(None));
        assert_eq!(due(meta(50, false), 100), Some(Some(7)));
        assert_eq!(due(meta(150, false), 100), None);
        assert_eq!(due(meta(50, true), 100), None);
    }
}
