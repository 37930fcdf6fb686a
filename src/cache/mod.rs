//! The Redis cache: one shared, auto-reconnecting connection and the few operations the patterns
//! need, each a single round trip.
//!
//! * [`RedisCache::get`]: one `HMGET` (a cache hit costs exactly this).
//! * [`RedisCache::put`]: one Lua script that refuses to replace a newer version.
//! * [`RedisCache::load_gate`] / [`RedisCache::unlock`]: the short cross-process load lock.
//!
//! The connection is created lazily and re-created on failure, so the service starts and keeps
//! serving (from the store) while Redis is down. After a connection failure a short circuit breaker
//! makes calls fail at once instead of each waiting for a timeout. Keys: the cache key `k` is the
//! Redis key `RedisInstanceName + k`; internal keys (locks) contain the control character U+001F,
//! which no valid cache key can, so they never collide with user data.

pub mod entra;
mod entry;
mod hot_keys;
mod scripts;

pub use entry::{CacheEntry, EntryWrite};
pub use hot_keys::{EntryMeta, HotKeyPolicy, RefreshGate};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, RedisError};

use crate::settings::RedisTarget;
use crate::version::now_millis;

/// How long the cache answers "unavailable" at once after a connection failure.
const BREAKER_OPEN_FOR: Duration = Duration::from_secs(2);

/// Separator inside internal key names; a control character, so never part of a valid cache key.
const INTERNAL: char = '\u{1f}';

/// Why a cache call failed. Callers fail open: a cache error never fails a read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    /// Redis cannot be reached (or the breaker is open after a recent failure).
    #[error("Redis is unavailable: {0}")]
    Unavailable(String),
    /// Redis answered with an error.
    #[error("Redis rejected the command: {0}")]
    Command(String),
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
}

/// Handle to the Redis cache. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct RedisCache {
    conn: ConnectionManager,
    prefix: Arc<str>,
    target: Arc<str>,
    breaker_open_until_ms: Arc<AtomicU64>,
}

impl std::fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCache").field("target", &self.target).field("prefix", &self.prefix).finish()
    }
}

impl RedisCache {
    /// Prepares the connection to `target` without connecting: the first command connects, and a
    /// Redis that is down at start-up does not stop the service (StackExchange's
    /// `abortConnect=False`).
    pub fn new(target: &RedisTarget, instance_name: &str) -> Result<Self, CacheError> {
        let credential = match &target.entra_id {
            Some(client_id) => {
                tracing::info!(identity = %crate::identity::describe(client_id.as_deref()), "Redis: Entra ID authentication");
                Some(crate::identity::credential(client_id.as_deref()).map_err(|e| {
                    CacheError::Command(format!("cannot prepare the Entra ID credential for Redis: {e}"))
                })?)
            }
            None => None,
        };
        Self::with_token_credential(target, instance_name, credential)
    }

    /// Like [`RedisCache::new`], authenticating with tokens from `credential` when one is given
    /// (the user name is the token's `oid` claim), which is how Entra ID works on Azure Cache for Redis.
    pub fn with_token_credential(
        target: &RedisTarget,
        instance_name: &str,
        credential: Option<Arc<dyn azure_core::credentials::TokenCredential>>,
    ) -> Result<Self, CacheError> {
        crate::tls::ensure_crypto_provider();
        let scheme = if target.tls { "rediss" } else { "redis" };
        let host = if target.host.contains(':') { format!("[{}]", target.host) } else { target.host.clone() };
        let url = format!("{scheme}://{host}:{}/{}", target.port, target.database);
        let mut info = url
            .into_connection_info()
            .map_err(|e| CacheError::Command(format!("bad Redis address {}: {e}", target.describe())))?;
        let mut redis_settings =
            info.redis_settings().clone().set_lib_name("redis-cache-patterns", env!("CARGO_PKG_VERSION"));
        if let Some(user) = &target.user {
            redis_settings = redis_settings.set_username(user);
        }
        if let Some(password) = &target.password {
            redis_settings = redis_settings.set_password(password);
        }
        info = info.set_redis_settings(redis_settings);
        let client = redis::Client::open(info).map_err(|e| {
            CacheError::Command(format!("cannot prepare the Redis client for {}: {e}", target.describe()))
        })?;
        let mut config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(target.connect_timeout))
            .set_response_timeout(Some(target.response_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        if let Some(credential) = credential {
            config = config.set_credentials_provider(entra::EntraIdCredentials::start(credential));
        }
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| CacheError::Command(format!("cannot prepare the Redis connection: {e}")))?;
        Ok(Self {
            conn,
            prefix: Arc::from(instance_name),
            target: Arc::from(target.describe()),
            breaker_open_until_ms: Arc::new(AtomicU64::new(0)),
        })
    }

    /// `RedisInstanceName`, the prefix of every key.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The Redis key that holds cache key `key`: exactly `RedisInstanceName + key`.
    pub fn redis_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The Redis key of the load lock of `key`.
    pub fn lock_key(&self, key: &str) -> String {
        format!("{}lock{INTERNAL}{key}", self.prefix)
    }

    /// Where the cache points, without secrets (for logs and health).
    pub fn describe(&self) -> &str {
        &self.target
    }

    /// A connection handle, or `Unavailable` at once while the breaker is open.
    fn connection(&self) -> Result<ConnectionManager, CacheError> {
        if now_millis() < self.breaker_open_until_ms.load(Ordering::Relaxed) {
            return Err(CacheError::Unavailable(format!("{} failed moments ago; retrying shortly", self.target)));
        }
        Ok(self.conn.clone())
    }

    fn classify(&self, e: RedisError) -> CacheError {
        if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_unrecoverable_error()
        {
            self.breaker_open_until_ms.store(now_millis() + BREAKER_OPEN_FOR.as_millis() as u64, Ordering::Relaxed);
            CacheError::Unavailable(format!("{}: {e}", self.target))
        } else {
            CacheError::Command(e.to_string())
        }
    }

    /// Reads the entry of `key` in one round trip. `Ok(None)` when nothing (usable) is cached.
    pub async fn get(&self, key: &str) -> Result<Option<CacheEntry>, CacheError> {
        let mut conn = self.connection()?;
        let fields: Result<Vec<Option<String>>, _> =
            redis::cmd("HMGET").arg(self.redis_key(key)).arg(&entry::FIELDS[..]).query_async(&mut conn).await;
        match fields {
            Ok(fields) => Ok(CacheEntry::from_fields(&fields)),
            // Some other program stored a non-hash under our key: treat it as a miss, the next
            // write replaces it.
            Err(e) if e.code() == Some("WRONGTYPE") => Ok(None),
            Err(e) => Err(self.classify(e)),
        }
    }

    /// Writes `entry` unless Redis holds a newer version. `Ok(true)` when written.
    pub async fn put(&self, key: &str, entry: &EntryWrite) -> Result<bool, CacheError> {
        let mut conn = self.connection()?;
        let data = entry.value.as_ref().map(|v| v.to_string()).unwrap_or_default();
        let stale_until = entry.stale_until_ms.max(entry.fresh_until_ms).max(now_millis() + 1);
        let written: Result<i64, _> = scripts::PUT_IF_NOT_OLDER
            .key(self.redis_key(key))
            .arg(entry.version)
            .arg(data)
            .arg(entry.written_at_ms)
            .arg(entry.fresh_until_ms)
            .arg(stale_until)
            .arg(if entry.value.is_none() { "1" } else { "0" })
            .arg(if entry.fail_safe { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await;
        written.map(|n| n == 1).map_err(|e| self.classify(e))
    }

    /// The cross-process stampede gate: returns a fresh entry if one appeared, or takes the
    /// load lock of `key` for `lock_ttl` if it is free.
    pub async fn load_gate(&self, key: &str, token: &str, lock_ttl: Duration) -> Result<Gate, CacheError> {
        let mut conn = self.connection()?;
        let reply: Result<Vec<redis::Value>, _> = scripts::LOAD_GATE
            .key(self.redis_key(key))
            .key(self.lock_key(key))
            .arg(now_millis())
            .arg(token)
            .arg(lock_ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await;
        let reply = reply.map_err(|e| self.classify(e))?;
        let as_text = |v: &redis::Value| -> Option<String> {
            match v {
                redis::Value::BulkString(b) if !b.is_empty() => String::from_utf8(b.clone()).ok(),
                redis::Value::SimpleString(s) if !s.is_empty() => Some(s.clone()),
                _ => None,
            }
        };
        match reply.first() {
            Some(redis::Value::Int(1)) => {
                let fields: Vec<Option<String>> = reply[1..].iter().map(as_text).collect();
                Ok(CacheEntry::from_fields(&fields).map(Gate::Fresh).unwrap_or(Gate::Acquired))
            }
            Some(redis::Value::Int(2)) => Ok(Gate::Acquired),
            _ => Ok(Gate::Busy),
        }
    }

    /// Releases the load lock of `key` if `token` still owns it.
    pub async fn unlock(&self, key: &str, token: &str) -> Result<(), CacheError> {
        let mut conn = self.connection()?;
        let released: Result<i64, _> = scripts::UNLOCK.key(self.lock_key(key)).arg(token).invoke_async(&mut conn).await;
        released.map(|_| ()).map_err(|e| self.classify(e))
    }

    /// Round trip to Redis, ignoring the breaker (health checks must see recovery).
    pub async fn ping(&self) -> Result<Duration, CacheError> {
        let mut conn = self.conn.clone();
        let started = Instant::now();
        let pong: Result<String, _> = redis::cmd("PING").query_async(&mut conn).await;
        match pong {
            Ok(_) => {
                self.breaker_open_until_ms.store(0, Ordering::Relaxed);
                Ok(started.elapsed())
            }
            Err(e) => Err(self.classify(e)),
        }
    }

    /// The shared connection, for modules that run their own commands (streams, sorted sets).
    pub fn raw_connection(&self) -> Result<ConnectionManager, CacheError> {
        self.connection()
    }

    /// Maps a Redis error from [`RedisCache::raw_connection`] use, tripping the breaker when the
    /// connection failed.
    pub fn map_error(&self, e: RedisError) -> CacheError {
        self.classify(e)
    }
}
