//! App settings, read once at start-up from environment variables, each component's straight into
//! the type that component takes: [`redis`] into the Redis target, [`cosmos`] into the Cosmos DB
//! settings, [`event_hubs`] into the Event Hubs settings, [`patterns`] into the patterns' policies.
//!
//! The names are the ones the README lists (`RedisCache`, `CacheTtlSeconds`, …) because on Azure they
//! are Function App application settings and locally they come from `local.settings.json`. A missing
//! or malformed setting is a [`SettingsError`] naming the setting; its message never repeats a secret.

mod cosmos;
mod event_hubs;
mod patterns;
mod redis;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::adapters::cosmos::CosmosSettings;
use crate::adapters::event_hubs::EventHubSettings;
use crate::adapters::redis::RedisTarget;
use crate::patterns::CachePolicy;
use crate::patterns::refresh_ahead::RefreshAheadPolicy;
use crate::patterns::write_behind::DrainPolicy;

#[cfg(not(feature = "eventhubs"))]
pub(crate) use event_hubs::NAMESPACE as EVENT_HUBS_NAMESPACE_SETTING;

/// A setting that is missing or cannot be used. `Display` gives one line that names the setting.
#[derive(Debug, thiserror::Error)]
#[error("setting `{name}`: {problem}")]
pub struct SettingsError {
    /// The environment variable at fault.
    pub name: String,
    /// What is wrong with it, in words that never include a secret.
    pub problem: String,
}

impl SettingsError {
    fn new(name: &str, problem: impl Into<String>) -> Self {
        Self { name: name.to_string(), problem: problem.into() }
    }
}

/// Which backing store the service uses. Cosmos DB comes with its settings; SQLite is the default.
#[derive(Debug, Clone)]
pub enum StoreSettings {
    /// The embedded SQLite store at this path.
    Sqlite {
        /// `LocalStorePath`, or its default `.data/store.db`.
        path: PathBuf,
        /// Whether `LocalStorePath` was set (on Azure the default is never used).
        explicit: bool,
    },
    /// Azure Cosmos DB (NoSQL API), chosen whenever a `CosmosDBConnection…` setting is present.
    Cosmos(CosmosSettings),
}

/// Every setting the service reads, with the README's defaults applied.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `RedisCache` or `RedisCache__hostName`.
    pub redis: RedisTarget,
    /// `RedisInstanceName`: prefix of every Redis key the service writes.
    pub instance_name: String,
    /// The backing store.
    pub store: StoreSettings,
    /// The write-behind queue on Event Hubs, when `EventHubConnection__fullyQualifiedNamespace` is set.
    pub event_hubs: Option<EventHubSettings>,
    /// `CacheTtlSeconds`, `CacheTtlJitterPercent`, `NegativeCacheTtlSeconds`,
    /// `FailSafeMaxStaleSeconds`, `FailSafeSoftTimeoutMs`.
    pub cache: CachePolicy,
    /// `RefreshAhead…` settings.
    pub refresh_ahead: RefreshAheadPolicy,
    /// `WriteBehindRetryWindowSeconds`.
    pub write_behind: DrainPolicy,
    /// `TombstoneRetentionSeconds`: how long the store keeps the tombstone of a deleted key.
    pub tombstone_retention: Duration,
    /// `MaxValueBytes`: largest accepted value, as serialized JSON.
    pub max_value_bytes: usize,
    /// `L1MaxEntries`: size of the near cache (docs/invalidation.md); 0 turns it off.
    pub near_cache_entries: u64,
    /// `FUNCTIONS_CUSTOMHANDLER_PORT`: where the handler listens (127.0.0.1 only).
    pub port: u16,
}

impl Settings {
    /// `FUNCTIONS_CUSTOMHANDLER_PORT` alone (read first: the port is bound before anything else).
    pub(crate) fn port_from_env() -> Result<u16, SettingsError> {
        let get = |name: &str| std::env::var(name).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        port(&get)
    }

    /// Reads the settings from the process environment.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the settings from a map (tests, or anything else that is not the environment).
    pub fn from_map(map: &HashMap<String, String>) -> Result<Self, SettingsError> {
        Self::from_lookup(|name| map.get(name).cloned())
    }

    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let get = |name: &str| lookup(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let redis = redis::from_lookup(&get)?;
        // Not trimmed: a prefix may end in a space on purpose.
        let instance_name = redis::instance_name(lookup("RedisInstanceName"))?;
        let store = match cosmos::from_lookup(&get)? {
            Some(cosmos) => StoreSettings::Cosmos(cosmos),
            None => {
                let explicit = get("LocalStorePath");
                StoreSettings::Sqlite {
                    path: PathBuf::from(explicit.clone().unwrap_or_else(|| ".data/store.db".to_string())),
                    explicit: explicit.is_some(),
                }
            }
        };
        let event_hubs = event_hubs::from_lookup(get)?;
        let cache = patterns::cache_policy(&get)?;
        let refresh_ahead = patterns::refresh_ahead_policy(&get, &cache)?;
        let write_behind = patterns::drain_policy(&get)?;
        let tombstone_retention = patterns::tombstone_retention(&get, &write_behind)?;
        let max_value_bytes = number(&get, "MaxValueBytes", 1_048_576, 1, 512 * 1024 * 1024)? as usize;
        let near_cache_entries = number(&get, "L1MaxEntries", 1000, 0, 10_000_000)?;
        Ok(Self {
            redis,
            instance_name,
            store,
            event_hubs,
            cache,
            refresh_ahead,
            write_behind,
            tombstone_retention,
            max_value_bytes,
            near_cache_entries,
            port: port(&get)?,
        })
    }
}

fn port(get: &impl Fn(&str) -> Option<String>) -> Result<u16, SettingsError> {
    number(get, "FUNCTIONS_CUSTOMHANDLER_PORT", 7071, 1, 65535).map(|p| p as u16)
}

/// A whole-number setting from `min` to `max`, `default` when absent.
fn number(
    get: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, SettingsError> {
    match get(name) {
        None => Ok(default),
        Some(raw) => raw.parse::<u64>().ok().filter(|n| (min..=max).contains(n)).ok_or_else(|| {
            SettingsError::new(name, format!("must be a whole number from {min} to {max}, got {raw:?}"))
        }),
    }
}

/// A decimal setting from `min` to `max`, `default` when absent; `hint` explains the range.
fn decimal(
    get: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: f64,
    (min, max): (f64, f64),
    hint: &str,
) -> Result<f64, SettingsError> {
    match get(name) {
        None => Ok(default),
        Some(raw) => raw.parse::<f64>().ok().filter(|f| (min..=max).contains(f)).ok_or_else(|| {
            SettingsError::new(name, format!("must be a number from {min} to {max}{hint}, got {raw:?}"))
        }),
    }
}

/// `True`/`False` as .NET connection strings write them (and `1`/`0`, `yes`/`no`).
fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let map = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Settings::from_map(&map)
    }

    #[test]
    fn entra_id_by_host_name() {
        let s = settings(&[("RedisCache__hostName", "mycache.redis.cache.windows.net")]).unwrap();
        assert_eq!((s.redis.host.as_str(), s.redis.port, s.redis.tls), ("mycache.redis.cache.windows.net", 6380, true));
        assert_eq!(s.redis.entra_id, Some(None));
        assert!(s.redis.describe().starts_with("rediss://entra-id@"));
        let s = settings(&[("RedisCache__hostName", "c.example:10000"), ("RedisCache__clientId", "abc")]).unwrap();
        assert_eq!((s.redis.port, s.redis.entra_id.clone()), (10000, Some(Some("abc".to_string()))));
        let err = settings(&[("RedisCache__hostName", "rediss://c.example")]).unwrap_err();
        assert_eq!(err.name, "RedisCache__hostName");
        let err = settings(&[("RedisCache__hostName", "c"), ("RedisCache", "localhost")]).unwrap_err();
        assert_eq!(err.name, "RedisCache");
    }

    #[test]
    fn defaults_and_bad_numbers() {
        let s = settings(&[("RedisCache", "localhost:6379")]).unwrap();
        assert_eq!(s.cache.ttl, Duration::from_secs(300));
        assert_eq!(s.cache.jitter_percent, 10);
        assert_eq!(s.cache.negative_ttl, Duration::from_secs(30));
        assert_eq!(s.cache.fail_safe_max_stale, Duration::from_secs(3600));
        assert_eq!(s.max_value_bytes, 1_048_576);
        assert_eq!(s.near_cache_entries, 1000);
        assert!((s.refresh_ahead.factor - 0.8).abs() < f64::EPSILON);
        // Derived, not repeated: the refresh lock outlives a store read; the fail-safe throttle is
        // at most the TTL.
        assert_eq!(s.refresh_ahead.lock_ttl, s.cache.store_timeout + Duration::from_secs(1));
        assert_eq!(s.cache.fail_safe_throttle, Duration::from_secs(30));
        let short = settings(&[("RedisCache", "localhost"), ("CacheTtlSeconds", "7")]).unwrap();
        assert_eq!(short.cache.fail_safe_throttle, Duration::from_secs(7));
        let err = settings(&[("RedisCache", "localhost"), ("CacheTtlSeconds", "ten")]).unwrap_err();
        assert_eq!(err.name, "CacheTtlSeconds");
        let err = settings(&[("RedisCache", "localhost"), ("RefreshAheadFactor", "1.5")]).unwrap_err();
        assert_eq!(err.name, "RefreshAheadFactor");
        assert_eq!(settings(&[]).unwrap_err().name, "RedisCache");
    }

    #[test]
    fn no_cosmos_setting_means_sqlite() {
        let s = settings(&[("RedisCache", "localhost"), ("LocalStorePath", "/tmp/x.db")]).unwrap();
        assert!(
            matches!(s.store, StoreSettings::Sqlite { ref path, explicit: true } if path == Path::new("/tmp/x.db"))
        );
        let s = settings(&[("RedisCache", "localhost")]).unwrap();
        assert!(matches!(s.store, StoreSettings::Sqlite { explicit: false, .. }));
    }

    #[test]
    fn tombstone_retention_outlasts_the_write_behind_retry_window() {
        let s = settings(&[("RedisCache", "localhost")]).unwrap();
        assert_eq!((s.tombstone_retention.as_secs(), s.write_behind.retry_window.as_secs()), (30 * 86_400, 3600));
        let err = settings(&[
            ("RedisCache", "localhost"),
            ("WriteBehindRetryWindowSeconds", "604800"),
            ("TombstoneRetentionSeconds", "604800"),
        ])
        .unwrap_err();
        assert_eq!(err.name, "TombstoneRetentionSeconds");
        let err = settings(&[("RedisCache", "localhost"), ("TombstoneRetentionSeconds", "3600")]).unwrap_err();
        assert_eq!(err.name, "TombstoneRetentionSeconds");
    }

    #[test]
    fn refresh_ahead_settings() {
        let s = settings(&[("RedisCache", "localhost")]).unwrap();
        assert_eq!(s.refresh_ahead.schedule.as_str(), "0 */5 * * * *");
        assert_eq!(s.cache.soft_timeout, Duration::from_millis(1000));
        assert_eq!((s.refresh_ahead.hot_keys.max_keys, s.refresh_ahead.timer_parallelism), (10_000, 8));
        assert_eq!(s.refresh_ahead.eager_parallelism, 8);
        let tuned = settings(&[("RedisCache", "localhost"), ("RefreshAheadEagerParallelism", "3")]).unwrap();
        assert_eq!(tuned.refresh_ahead.eager_parallelism, 3);
        for (name, bad) in [
            ("RefreshAheadSchedule", "every five minutes"),
            ("RefreshAheadHotKeysMax", "0"),
            ("RefreshAheadHotMinReads", "-1"),
            ("RefreshAheadTimerParallelism", "1000"),
            ("RefreshAheadEagerParallelism", "0"),
            ("FailSafeSoftTimeoutMs", "soon"),
        ] {
            let err = settings(&[("RedisCache", "localhost"), (name, bad)]).unwrap_err();
            assert_eq!(err.name, name, "{err}");
        }
    }
}
