//! The Redis cache: one shared, auto-reconnecting connection and the few operations the patterns
//! need, each a single round trip.
//!
//! * [`RedisCache::get`]: one `HMGET` (a cache hit costs exactly this).
//! * [`RedisCache::put`]: one Lua script that refuses to replace a newer version.
//! * [`RedisCache::load_gate`] / [`RedisCache::unlock`]: the short cross-process load lock.
//!
//! The connection is created lazily and re-created on failure, so the service starts and keeps
//! serving (from the store) while Redis is down. Every call has a deadline (`syncTimeout`, 1 s by
//! default) that covers connecting and reconnecting too, and after a failure or a missed deadline a
//! short circuit breaker makes calls fail at once instead of each waiting again: no request waits
//! on Redis much longer than one deadline. Key layout: [`keys`].

mod connection;
pub mod entra;
mod entry;
mod hot_keys;
pub mod keys;
pub mod node_ids;
mod scripts;

pub use entry::{CacheEntry, EntryWrite};
pub use hot_keys::{EntryMeta, HotKeyPolicy, RefreshGate};
pub use keys::Keys;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use connection::{Connection, Connector};
use redis::{FromRedisValue, IntoConnectionInfo, RedisError, RedisResult};

use crate::clock::Timestamp;
use crate::settings::RedisTarget;

/// How long the cache answers "unavailable" at once after a connection failure or a missed deadline.
const BREAKER_OPEN_FOR: Duration = Duration::from_secs(2);

/// How long one request may wait on Redis in all, over all its calls (see [`with_request_budget`]).
pub const REQUEST_BUDGET: Duration = Duration::from_secs(2);

tokio::task_local! {
    /// When the current request's time on Redis runs out.
    static BUDGET_ENDS: Instant;
}

/// Runs `work` (one request) with a budget of [`REQUEST_BUDGET`] on Redis in all: each call waits at
/// most what is left of it (and at most its own deadline), so a Redis that answers each command just
/// under the deadline cannot make a request that sends several wait several deadlines. Background
/// work (refreshes, the write-behind consumer) has no such budget, only the per-call deadline.
pub async fn with_request_budget<F: Future>(work: F) -> F::Output {
    BUDGET_ENDS.scope(Instant::now() + REQUEST_BUDGET, work).await
}

/// Why a cache call failed. Callers fail open: a cache error never fails a read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    /// Redis cannot be reached, did not answer in time, or the breaker is open after a recent failure.
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
    /// The Redis key holds something that is not a cache entry: read the store, do not cache.
    NotOurs,
}

/// What a cache write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// The entry was written.
    Written,
    /// The cache holds a newer version; it was kept.
    KeptNewer,
    /// The Redis key holds something that is not a cache entry; it was left alone.
    NotOurs,
}

/// Handle to the Redis cache. Cheap to clone; clones share the connection and the breaker.
#[derive(Clone)]
pub struct RedisCache {
    connector: Arc<Connector>,
    keys: Arc<Keys>,
    target: Arc<str>,
    deadline: Duration,
    breaker: Arc<Breaker>,
}

impl std::fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCache").field("target", &self.target).field("prefix", &self.keys.prefix()).finish()
    }
}

/// The circuit breaker: after a failure, calls fail at once until the window has passed. Measured
/// on the monotonic clock: it is about how long Redis has been failing, not about wall time.
#[derive(Debug, Default)]
struct Breaker {
    open_until_ms: AtomicU64,
    round_trips: AtomicU64,
}

fn monotonic_ms() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

impl Breaker {
    fn is_open(&self) -> bool {
        monotonic_ms() < self.open_until_ms.load(Ordering::Relaxed)
    }

    fn trip(&self) {
        self.open_until_ms.store(monotonic_ms() + BREAKER_OPEN_FOR.as_millis() as u64, Ordering::Relaxed);
    }

    fn close(&self) {
        self.open_until_ms.store(0, Ordering::Relaxed);
    }
}

impl RedisCache {
    /// Prepares the connection to `target` without connecting: the first command connects, and a
    /// Redis that is down at start-up does not stop the service (StackExchange's
    /// `abortConnect=False`).
    pub fn new(target: &RedisTarget, instance_name: &str) -> Result<Self, CacheError> {
        Self::with_deadline(target, instance_name, target.response_timeout)
    }

    /// Like [`RedisCache::new`] with another per-call deadline (the write-behind consumer's blocking
    /// reads wait longer than a request may).
    pub fn with_deadline(target: &RedisTarget, instance_name: &str, deadline: Duration) -> Result<Self, CacheError> {
        let credential = match &target.entra_id {
            Some(client_id) => {
                tracing::info!(identity = %crate::identity::describe(client_id.as_deref()), "Redis: Entra ID authentication");
                Some(crate::identity::credential(client_id.as_deref()).map_err(|e| {
                    CacheError::Command(format!("cannot prepare the Entra ID credential for Redis: {e}"))
                })?)
            }
            None => None,
        };
        // The connection's own response timeout follows the deadline (a blocking stream read may
        // legitimately wait longer than a request).
        let mut target = target.clone();
        target.response_timeout = deadline;
        Self::with_token_credential(&target, instance_name, credential)
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
        let client = redis::Client::open(info.clone()).map_err(|e| {
            CacheError::Command(format!("cannot prepare the Redis client for {}: {e}", target.describe()))
        })?;
        let mut config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(target.connect_timeout))
            .set_response_timeout(Some(target.response_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let credentials = credential.map(entra::EntraIdCredentials::start);
        if let Some(credentials) = &credentials {
            config = config.set_credentials_provider(credentials.clone());
        }
        let single = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| CacheError::Command(format!("cannot prepare the Redis connection: {e}")))?;
        let connector = Connector::new(single, info, target.connect_timeout, target.response_timeout, credentials)
            .map_err(|e| {
                CacheError::Command(format!("cannot prepare the Redis cluster client for {}: {e}", target.describe()))
            })?;
        Ok(Self {
            connector,
            keys: Arc::new(Keys::new(instance_name)),
            target: Arc::from(target.describe()),
            deadline: target.response_timeout.max(Duration::from_millis(1)),
            breaker: Arc::default(),
        })
    }

    /// The key layout.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// `RedisInstanceName`, the prefix of every key.
    pub fn prefix(&self) -> &str {
        self.keys.prefix()
    }

    /// The Redis key that holds cache key `key`: exactly `RedisInstanceName + key`.
    pub fn redis_key(&self, key: &str) -> String {
        self.keys.entry(key)
    }

    /// Where the cache points, without secrets (for logs and health).
    pub fn describe(&self) -> &str {
        &self.target
    }

    /// The longest one call waits.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// How many requests this handle (and its clones) sent to Redis: a pipeline counts once.
    pub fn round_trips(&self) -> u64 {
        self.breaker.round_trips.load(Ordering::Relaxed)
    }

    fn classify(&self, e: RedisError) -> CacheError {
        // Redis answering that it cannot serve for now (a cluster failing over, a replica being
        // promoted, a dataset still loading) is an outage too, not a refused command.
        let not_serving = matches!(
            e.code(),
            Some("CLUSTERDOWN" | "TRYAGAIN" | "MASTERDOWN" | "LOADING" | "READONLY" | "BUSY" | "NOREPLICAS")
        );
        if not_serving {
            return CacheError::Unavailable(format!("{}: {e}", self.target));
        }
        if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_unrecoverable_error()
        {
            self.breaker.trip();
            CacheError::Unavailable(format!("{}: {e}", self.target))
        } else {
            CacheError::Command(e.to_string())
        }
    }

    /// Whether Redis is a cluster (`None` until it first answered).
    pub fn is_cluster(&self) -> Option<bool> {
        self.connector.is_cluster()
    }

    /// Runs one round trip on the shared connection under the deadline, unless the breaker is open.
    /// A missed deadline or a connection failure opens the breaker.
    pub(crate) async fn run<T, Fut>(&self, call: impl FnOnce(Connection) -> Fut) -> Result<T, CacheError>
    where
        Fut: Future<Output = RedisResult<T>>,
    {
        if self.breaker.is_open() {
            return Err(CacheError::Unavailable(format!("{} failed moments ago; retrying shortly", self.target)));
        }
        self.attempt(call).await
    }

    async fn attempt<T, Fut>(&self, call: impl FnOnce(Connection) -> Fut) -> Result<T, CacheError>
    where
        Fut: Future<Output = RedisResult<T>>,
    {
        let left = BUDGET_ENDS.try_with(|ends| ends.saturating_duration_since(Instant::now())).ok();
        let deadline = match left {
            Some(left) if left.is_zero() => {
                return Err(CacheError::Unavailable(format!(
                    "{} is slow: this request already waited {REQUEST_BUDGET:?} on it",
                    self.target
                )));
            }
            Some(left) => self.deadline.min(left),
            None => self.deadline,
        };
        self.breaker.round_trips.fetch_add(1, Ordering::Relaxed);
        let connector = &self.connector;
        let round_trip = async move { call(connector.get().await?).await };
        match tokio::time::timeout(deadline, round_trip).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.classify(e)),
            Err(_) => {
                // A call cut short by the request's budget says less about Redis than a missed deadline.
                if deadline == self.deadline {
                    self.breaker.trip();
                }
                Err(CacheError::Unavailable(format!("{} did not answer within {deadline:?}", self.target)))
            }
        }
    }

    /// One command under the deadline and the breaker.
    pub(crate) async fn query<T: FromRedisValue + Send + 'static>(&self, cmd: redis::Cmd) -> Result<T, CacheError> {
        self.run(|mut conn| async move { cmd.query_async(&mut conn).await }).await
    }

    /// One pipeline (one round trip) under the deadline and the breaker.
    pub(crate) async fn query_pipeline<T: FromRedisValue + Send + 'static>(
        &self,
        pipe: redis::Pipeline,
    ) -> Result<T, CacheError> {
        self.run(|mut conn| async move { pipe.query_async(&mut conn).await }).await
    }

    /// Independent commands (possibly on keys of different cluster slots) in one round trip: a
    /// pipeline on a single endpoint; on a cluster, sent at once, each to its node. One result per
    /// command; a command's own error does not fail the others.
    pub(crate) async fn query_each(&self, cmds: Vec<redis::Cmd>) -> Result<Vec<RedisResult<redis::Value>>, CacheError> {
        self.run(|conn| async move {
            match conn {
                Connection::Single(mut single) => {
                    let mut pipe = redis::pipe();
                    pipe.ignore_errors();
                    for cmd in &cmds {
                        pipe.add_command(cmd.clone());
                    }
                    pipe.query_async::<Vec<RedisResult<redis::Value>>>(&mut single).await
                }
                Connection::Cluster(cluster) => {
                    let calls = cmds.into_iter().map(|cmd| {
                        let mut conn = cluster.clone();
                        async move { cmd.query_async::<redis::Value>(&mut conn).await }
                    });
                    Ok(futures_util::future::join_all(calls).await)
                }
            }
        })
        .await
    }

    /// One script invocation under the deadline and the breaker.
    pub(crate) async fn invoke<T: FromRedisValue + Send + 'static>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, CacheError> {
        self.run(|mut conn| async move { invocation.invoke_async(&mut conn).await }).await
    }

    /// Reads the entry of `key` in one round trip. `Ok(None)` when nothing (usable) is cached.
    pub async fn get(&self, key: &str) -> Result<Option<CacheEntry>, CacheError> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.redis_key(key)).arg(&entry::FIELDS[..]);
        let fields = self
            .run(|mut conn| async move {
                match cmd.query_async::<Vec<Option<String>>>(&mut conn).await {
                    Ok(fields) => Ok(Some(fields)),
                    // Not a cache entry under this key (see `keys`): a miss that is never cached over.
                    Err(e) if e.code() == Some("WRONGTYPE") => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .await?;
        Ok(fields.and_then(|fields| CacheEntry::from_fields(&fields)))
    }

    /// Writes `entry` unless Redis holds a newer version, or the key is not a cache entry.
    pub async fn put(&self, key: &str, entry: &EntryWrite, now: Timestamp) -> Result<Put, CacheError> {
        let data = entry.value.as_ref().map(|v| v.to_string()).unwrap_or_default();
        let now_ms = now.as_millis();
        let stale_until = entry.stale_until_ms.max(entry.fresh_until_ms).max(now_ms + 1);
        let mut invocation = scripts::PUT_IF_NOT_OLDER.prepare_invoke();
        invocation
            .key(self.redis_key(key))
            .arg(entry.version)
            .arg(data)
            .arg(entry.written_at_ms)
            .arg(entry.fresh_until_ms)
            .arg(stale_until)
            .arg(if entry.value.is_none() { "1" } else { "0" })
            .arg(if entry.fail_safe { "1" } else { "0" })
            .arg(now_ms);
        Ok(match self.invoke::<i64>(&invocation).await? {
            1 => Put::Written,
            0 => Put::KeptNewer,
            _ => Put::NotOurs,
        })
    }

    /// The cross-process stampede gate: returns a fresh entry if one appeared, or takes the
    /// load lock of `key` for `lock_ttl` if it is free.
    pub async fn load_gate(
        &self,
        key: &str,
        token: &str,
        lock_ttl: Duration,
        now: Timestamp,
    ) -> Result<Gate, CacheError> {
        let mut invocation = scripts::LOAD_GATE.prepare_invoke();
        invocation.key(self.redis_key(key)).arg(now.as_millis()).arg(token).arg(lock_ttl.as_millis() as u64);
        let reply: Vec<redis::Value> = self.invoke(&invocation).await?;
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
                // An unreadable entry is not a lock: treat it as held by nobody we can see.
                Ok(CacheEntry::from_fields(&fields).map(Gate::Fresh).unwrap_or(Gate::Busy))
            }
            Some(redis::Value::Int(2)) => Ok(Gate::Acquired),
            Some(redis::Value::Int(4)) => Ok(Gate::NotOurs),
            _ => Ok(Gate::Busy),
        }
    }

    /// Releases the load lock of `key` if `token` still owns it.
    pub async fn unlock(&self, key: &str, token: &str) -> Result<(), CacheError> {
        let mut invocation = scripts::UNLOCK.prepare_invoke();
        invocation.key(self.redis_key(key)).arg(token).arg("lk").arg("lkx");
        self.invoke::<i64>(&invocation).await.map(|_| ())
    }

    /// Round trip to Redis, ignoring the breaker (health checks must see recovery), under the
    /// deadline.
    pub async fn ping(&self) -> Result<Duration, CacheError> {
        let started = Instant::now();
        let pong: String =
            self.attempt(|mut conn| async move { redis::cmd("PING").query_async(&mut conn).await }).await?;
        let _ = pong;
        self.breaker.close();
        Ok(started.elapsed())
    }

    /// The Redis type of an internal or cache key (`none` when absent).
    pub async fn key_type(&self, redis_key: &str) -> Result<String, CacheError> {
        let mut cmd = redis::cmd("TYPE");
        cmd.arg(redis_key);
        self.query(cmd).await
    }

    /// Takes (or renews) a standalone lock key for `ttl` unless someone else holds it.
    pub async fn lease(&self, lock_key: &str, token: &str, ttl: Duration) -> Result<bool, CacheError> {
        let mut invocation = scripts::LEASE.prepare_invoke();
        invocation.key(lock_key).arg(token).arg(ttl.as_millis().max(1) as u64);
        self.invoke::<i64>(&invocation).await.map(|n| n == 1)
    }

    /// `SET lock token NX PX ttl` on a standalone lock key; true when taken.
    pub async fn try_lock(&self, lock_key: &str, token: &str, ttl: Duration) -> Result<bool, CacheError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(lock_key).arg(token).arg("NX").arg("PX").arg(ttl.as_millis().max(1) as u64);
        self.query::<Option<String>>(cmd).await.map(|reply| reply.is_some())
    }

    /// Releases a standalone lock key if `token` still owns it.
    pub async fn release(&self, lock_key: &str, token: &str) -> Result<(), CacheError> {
        let mut invocation = scripts::RELEASE.prepare_invoke();
        invocation.key(lock_key).arg(token);
        self.invoke::<i64>(&invocation).await.map(|_| ())
    }
}

/// A random token for a lock: 128 bits, as hex.
pub(crate) fn lock_token() -> String {
    format!("{:032x}", fastrand::u128(..))
}
