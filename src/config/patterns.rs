//! The patterns' settings, parsed into their policies. Constants that depend on each other are
//! derived here, in one place, rather than repeated.

use std::time::Duration;

use super::{SettingsError, decimal, number};
use crate::patterns::CachePolicy;
use crate::patterns::refresh_ahead::{RefreshAheadPolicy, Schedule};
use crate::patterns::write_behind::DrainPolicy;
use crate::ports::cache::HotKeyPolicy;

/// The longest a store call may take before it counts as failed.
const STORE_TIMEOUT: Duration = Duration::from_secs(10);

/// `CacheTtlSeconds`, `CacheTtlJitterPercent`, `NegativeCacheTtlSeconds`, `FailSafeMaxStaleSeconds`
/// and `FailSafeSoftTimeoutMs`.
pub(super) fn cache_policy(get: &impl Fn(&str) -> Option<String>) -> Result<CachePolicy, SettingsError> {
    let ttl = Duration::from_secs(number(get, "CacheTtlSeconds", 300, 1, 365 * 24 * 3600)?);
    Ok(CachePolicy {
        ttl,
        jitter_percent: number(get, "CacheTtlJitterPercent", 10, 0, 100)? as u32,
        negative_ttl: Duration::from_secs(number(get, "NegativeCacheTtlSeconds", 30, 0, 24 * 3600)?),
        fail_safe_max_stale: Duration::from_secs(number(get, "FailSafeMaxStaleSeconds", 3600, 0, 30 * 24 * 3600)?),
        // After a stale value was served, the store is left alone this long: at most the TTL.
        fail_safe_throttle: ttl.min(Duration::from_secs(30)),
        soft_timeout: Duration::from_millis(number(get, "FailSafeSoftTimeoutMs", 1000, 0, 60_000)?),
        store_timeout: STORE_TIMEOUT,
        ..CachePolicy::default()
    })
}

/// `RefreshAheadFactor`, `RefreshAheadSchedule` and the hot-key settings.
pub(super) fn refresh_ahead_policy(
    get: &impl Fn(&str) -> Option<String>,
    cache: &CachePolicy,
) -> Result<RefreshAheadPolicy, SettingsError> {
    let raw = get("RefreshAheadSchedule").unwrap_or_else(|| Schedule::DEFAULT.to_string());
    let schedule = Schedule::parse(&raw)
        .map_err(|problem| SettingsError::new("RefreshAheadSchedule", format!("{problem} (got {raw:?})")))?;
    let half_life = number(get, "RefreshAheadHotKeysHalfLifeSeconds", 900, 1, 7 * 24 * 3600)?;
    Ok(RefreshAheadPolicy {
        factor: decimal(get, "RefreshAheadFactor", 0.8, (0.0, 1.0), " (0 turns eager refresh off)")?,
        hot_keys: HotKeyPolicy {
            half_life: Duration::from_secs(half_life),
            max_keys: number(get, "RefreshAheadHotKeysMax", 10_000, 1, 1_000_000)?,
        },
        hot_min_reads: decimal(get, "RefreshAheadHotMinReads", 2.0, (0.0, 1e6), "")?,
        timer_max_keys: number(get, "RefreshAheadTimerMaxKeys", 1000, 1, 100_000)?,
        timer_parallelism: number(get, "RefreshAheadTimerParallelism", 8, 1, 256)? as usize,
        eager_parallelism: number(get, "RefreshAheadEagerParallelism", 8, 1, 256)? as usize,
        schedule,
        // Outlives the store read it guards, so two instances never refresh one key at once.
        lock_ttl: cache.store_timeout + Duration::from_secs(1),
    })
}

/// `WriteBehindRetryWindowSeconds`.
pub(super) fn drain_policy(get: &impl Fn(&str) -> Option<String>) -> Result<DrainPolicy, SettingsError> {
    Ok(DrainPolicy {
        retry_window: Duration::from_secs(number(get, "WriteBehindRetryWindowSeconds", 3600, 0, 7 * 24 * 3600)?),
        ..DrainPolicy::default()
    })
}

/// `TombstoneRetentionSeconds`: at least the write-behind retry window plus a day, so that a queued
/// write still being retried is never older than a purged tombstone.
pub(super) fn tombstone_retention(
    get: &impl Fn(&str) -> Option<String>,
    drain: &DrainPolicy,
) -> Result<Duration, SettingsError> {
    let retention =
        Duration::from_secs(number(get, "TombstoneRetentionSeconds", 30 * 24 * 3600, 86_400, 3650 * 24 * 3600)?);
    if retention < drain.retry_window + Duration::from_secs(86_400) {
        return Err(SettingsError::new(
            "TombstoneRetentionSeconds",
            format!(
                "must be at least WriteBehindRetryWindowSeconds ({}) plus one day, so that a queued write still being retried is never older than a purged tombstone",
                drain.retry_window.as_secs()
            ),
        ));
    }
    Ok(retention)
}
