//! Redis: the cache, the leases, the write-behind stream and the dead letters, over one shared,
//! auto-reconnecting connection ([`Redis`]).
//!
//! * [`cache`]: the [`Cache`](crate::ports::Cache) port — entries as hashes, the "never older"
//!   write and the gates as Lua scripts ([`scripts`]), one round trip each; [`hot_keys`] for
//!   refresh-ahead.
//! * [`leases`]: the [`Leases`](crate::ports::Leases) port (node ids, timer ticks).
//! * [`streams`]: the write-behind queue on a Redis Stream, both ends; [`dead_letters`]: the
//!   dead-letter stream; [`migrate`]: moving what an older release left under its key names.
//! * [`keys`]: where everything lives; [`connection`]: a single endpoint or a cluster, found out
//!   on first use; [`entra`]: Entra ID tokens as credentials.
//!
//! The connection is created lazily and re-created on failure, so the service starts and keeps
//! serving (from the store) while Redis is down. Every call has a deadline (`syncTimeout`, 1 s by
//! default) that covers connecting and reconnecting too, and after a failure or a missed deadline a
//! short circuit breaker makes calls fail at once instead of each waiting again; a request's calls
//! together wait at most its budget ([`crate::ports::budget`]). So no request waits on Redis much
//! longer than one deadline.

pub mod cache;
mod connection;
pub mod dead_letters;
pub mod entra;
mod entry;
pub mod hot_keys;
pub(crate) mod invalidation;
pub mod keys;
pub mod leases;
pub mod migrate;
mod scripts;
pub mod streams;
mod target;
mod topology;

pub use dead_letters::RedisDeadLetters;
pub use keys::Keys;
pub use streams::{ReaderConfig, RedisStreamQueue, RedisStreamReader};
pub use target::RedisTarget;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use azure_core::credentials::TokenCredential;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, FromRedisValue, IntoConnectionInfo, RedisError, RedisResult};
use tracing::Instrument;

use connection::{Connection, Connector};
use entra::{EntraIdCredentials, TokenRefresh};
use topology::Topology;

use crate::ports::CacheError;
use crate::ports::budget;

/// How long calls answer "unavailable" at once after a connection failure or a missed deadline.
const BREAKER_OPEN_FOR: Duration = Duration::from_secs(2);

/// Handle to Redis. Cheap to clone; clones share the connection, the breaker and the counters.
#[derive(Clone)]
pub struct Redis {
    connector: Arc<Connector>,
    keys: Arc<Keys>,
    target: Arc<str>,
    deadline: Duration,
    breaker: Arc<Breaker>,
    /// The invalidation feed this handle follows (docs/invalidation.md).
    feed: Arc<invalidation::Feed>,
    /// How to open the feed's own subscriber connection.
    info: redis::ConnectionInfo,
    credentials: Option<EntraIdCredentials>,
    target_connect_timeout: Duration,
    /// The cluster's nodes as last seen, shared with the other handles built from this one's.
    topology: Arc<Topology>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").field("target", &self.target).field("prefix", &self.keys.prefix()).finish()
    }
}

/// The circuit breaker: after a failure, calls fail at once until the window has passed. Measured
/// on the monotonic clock: it is about how long Redis has been failing, not about wall time.
#[derive(Debug, Default)]
struct Breaker {
    open_until_ms: AtomicU64,
    round_trips: AtomicU64,
    /// Round trips started and not yet ended.
    in_flight: AtomicU64,
    /// The most round trips in flight at once since [`Redis::take_peak_in_flight`] last read it.
    peak_in_flight: AtomicU64,
}

/// One round trip in flight, counted until it is dropped (ended, failed or cancelled).
struct InFlight<'a>(&'a Breaker);

impl<'a> InFlight<'a> {
    fn enter(breaker: &'a Breaker) -> Self {
        let now = breaker.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        breaker.peak_in_flight.fetch_max(now, Ordering::Relaxed);
        Self(breaker)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
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
        crate::telemetry::metrics().set_breaker_open(true);
    }

    fn close(&self) {
        self.open_until_ms.store(0, Ordering::Relaxed);
        crate::telemetry::metrics().set_breaker_open(false);
    }
}

/// How to connect: [`Redis::builder`].
#[must_use]
pub struct RedisBuilder<'a> {
    target: &'a RedisTarget,
    prefix: &'a str,
    deadline: Duration,
    credential: Option<Arc<dyn TokenCredential>>,
    token_refresh: TokenRefresh,
    topology: Option<Arc<Topology>>,
}

impl RedisBuilder<'_> {
    /// Another per-call deadline than the target's `syncTimeout` (the write-behind consumer's
    /// blocking reads wait longer than a request may).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Authenticates with tokens from `credential` (the user name is the token's `oid` claim), as
    /// Entra ID works on Azure Cache for Redis and Azure Managed Redis. Without it, a target with
    /// Entra ID gets the managed identity (or developer login) it names.
    pub fn credential(mut self, credential: Arc<dyn TokenCredential>) -> Self {
        self.credential = Some(credential);
        self
    }

    /// When Entra ID tokens are replaced (tests shorten the floor between refreshes).
    pub fn token_refresh(mut self, refresh: TokenRefresh) -> Self {
        self.token_refresh = refresh;
        self
    }

    /// Shares what `other` (a handle on the same target) learns of the cluster's nodes: this
    /// handle's connections, opened later, do not depend on the named node alone (a master that
    /// may have died since), and what they see of the cluster is remembered for both.
    pub fn nodes_of(mut self, other: &Redis) -> Self {
        self.topology = Some(other.topology.clone());
        self
    }

    /// Prepares the connection without connecting: the first command connects, and a Redis that is
    /// down at start-up does not stop the service (StackExchange's `abortConnect=False`). Must be
    /// called inside a Tokio runtime when Entra ID is used (tokens are kept fresh in the background).
    pub fn build(self) -> Result<Redis, CacheError> {
        crate::adapters::tls::ensure_crypto_provider();
        let target = self.target;
        let setup = |message: String, cause: RedisError| CacheError::Setup { message, cause: Some(Arc::new(cause)) };
        let credential = match (self.credential, &target.entra_id) {
            (Some(credential), _) => Some(credential),
            (None, Some(client_id)) => {
                let identity = crate::adapters::identity::Identity::for_client_id(client_id.as_deref());
                tracing::info!(identity = %identity.describe(), "Redis: Entra ID authentication");
                Some(identity.credential().map_err(|e| CacheError::Setup {
                    message: format!("cannot prepare the Entra ID credential for Redis ({})", identity.describe()),
                    cause: Some(Arc::new(e)),
                })?)
            }
            (None, None) => None,
        };
        let addr = if target.tls {
            ConnectionAddr::TcpTls { host: target.host.clone(), port: target.port, insecure: false, tls_params: None }
        } else {
            ConnectionAddr::Tcp(target.host.clone(), target.port)
        };
        let info = addr
            .into_connection_info()
            .map_err(|e| setup(format!("unusable Redis address {}", target.describe()), e))?
            .set_redis_settings(redis_settings(target));
        let client = redis::Client::open(info.clone())
            .map_err(|e| setup(format!("cannot prepare the Redis client for {}", target.describe()), e))?;
        let mut config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(target.connect_timeout))
            .set_response_timeout(Some(self.deadline))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let credentials = credential.map(|credential| EntraIdCredentials::start(credential, self.token_refresh));
        if let Some(credentials) = &credentials {
            config = config.set_credentials_provider(credentials.clone());
        }
        let single = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| setup("cannot prepare the Redis connection".into(), e))?;
        let topology = self.topology.unwrap_or_default();
        let connector = Connector::new(
            single,
            info.clone(),
            target.connect_timeout,
            self.deadline,
            credentials.clone(),
            topology.clone(),
        )
        .map_err(|e| setup(format!("cannot prepare the Redis cluster client for {}", target.describe()), e))?;
        Ok(Redis {
            connector,
            keys: Arc::new(Keys::new(self.prefix)),
            target: Arc::from(target.describe()),
            deadline: self.deadline.max(Duration::from_millis(1)),
            breaker: Arc::default(),
            feed: Arc::default(),
            info,
            credentials,
            target_connect_timeout: target.connect_timeout,
            topology,
        })
    }
}

/// The handshake: database, user and password (if any), and the client's name and version.
fn redis_settings(target: &RedisTarget) -> redis::RedisConnectionInfo {
    let mut settings = redis::RedisConnectionInfo::default()
        .set_db(target.database)
        .set_lib_name("redis-cache-patterns", env!("CARGO_PKG_VERSION"));
    if let Some(user) = &target.user {
        settings = settings.set_username(user);
    }
    if let Some(password) = &target.password {
        settings = settings.set_password(password);
    }
    settings
}

impl Redis {
    /// How to connect to `target`, with every key under `prefix` (`RedisInstanceName`).
    pub fn builder<'a>(target: &'a RedisTarget, prefix: &'a str) -> RedisBuilder<'a> {
        RedisBuilder {
            target,
            prefix,
            deadline: target.response_timeout,
            credential: None,
            token_refresh: TokenRefresh::default(),
            topology: None,
        }
    }

    /// Prepares the connection to `target` with the settings' deadline (see [`RedisBuilder::build`]).
    pub fn new(target: &RedisTarget, prefix: &str) -> Result<Self, CacheError> {
        Self::builder(target, prefix).build()
    }

    /// The key layout.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Where Redis is, without secrets (for logs and health).
    pub fn describe(&self) -> &str {
        &self.target
    }

    /// How many round trips this handle (and its clones) made: a pipeline counts once.
    pub fn round_trips(&self) -> u64 {
        self.breaker.round_trips.load(Ordering::Relaxed)
    }

    /// The most round trips this handle (and its clones) had in flight at once since the last
    /// call, which starts counting again from those in flight now. What a burst of calls puts on
    /// the shared connection at once: every call queues behind what is in flight there. For tests.
    #[doc(hidden)]
    pub fn take_peak_in_flight(&self) -> u64 {
        let now = self.breaker.in_flight.load(Ordering::Relaxed);
        self.breaker.peak_in_flight.swap(now, Ordering::Relaxed)
    }

    /// Whether Redis is a cluster (`None` until it first answered).
    pub fn is_cluster(&self) -> Option<bool> {
        self.connector.is_cluster()
    }

    /// The Redis type of a key (`none` when absent).
    pub(crate) async fn key_type(&self, redis_key: &str) -> Result<String, CacheError> {
        let mut cmd = redis::cmd("TYPE");
        cmd.arg(redis_key);
        self.query(cmd).await
    }

    /// A `PING` that ignores the breaker (health checks must see recovery) and closes it when
    /// Redis answers. Returns the latency.
    pub async fn ping(&self) -> Result<Duration, CacheError> {
        let started = Instant::now();
        let _: String = self.attempt(|mut conn| async move { redis::cmd("PING").query_async(&mut conn).await }).await?;
        self.breaker.close();
        Ok(started.elapsed())
    }

    fn classify(&self, e: RedisError) -> CacheError {
        self.connector.check_redirection(&e, &self.target);
        // Redis answering that it cannot serve for now (a cluster failing over, a replica being
        // promoted, a dataset still loading) is an outage too, not a refused command. So is a
        // redirection the cluster client gave up following while the slot map settles.
        let not_serving = matches!(
            e.code(),
            Some(
                "CLUSTERDOWN"
                    | "TRYAGAIN"
                    | "MASTERDOWN"
                    | "LOADING"
                    | "READONLY"
                    | "BUSY"
                    | "NOREPLICAS"
                    | "MOVED"
                    | "ASK"
            )
        );
        let unreachable = e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_unrecoverable_error();
        if unreachable {
            self.breaker.trip();
        }
        if not_serving || unreachable {
            CacheError::Unavailable { message: self.target.to_string(), cause: Some(Arc::new(e)) }
        } else {
            CacheError::Refused { message: format!("{} answered with an error", self.target), cause: Some(Arc::new(e)) }
        }
    }

    /// Runs one round trip on the shared connection under the deadline, unless the breaker is open.
    /// A missed deadline or a connection failure opens the breaker.
    pub(crate) async fn run<T, Fut>(&self, call: impl FnOnce(Connection) -> Fut) -> Result<T, CacheError>
    where
        Fut: Future<Output = RedisResult<T>>,
    {
        if self.breaker.is_open() {
            return Err(CacheError::unavailable(format!("{} failed moments ago; retrying shortly", self.target)));
        }
        self.attempt(call).await
    }

    async fn attempt<T, Fut>(&self, call: impl FnOnce(Connection) -> Fut) -> Result<T, CacheError>
    where
        Fut: Future<Output = RedisResult<T>>,
    {
        let deadline = match budget::remaining() {
            Some(left) if left.is_zero() => {
                return Err(CacheError::unavailable(format!(
                    "{} is slow: this request already waited {:?} on it",
                    self.target,
                    budget::REQUEST_BUDGET
                )));
            }
            Some(left) => self.deadline.min(left),
            None => self.deadline,
        };
        self.breaker.round_trips.fetch_add(1, Ordering::Relaxed);
        let _in_flight = InFlight::enter(&self.breaker);
        let connector = &self.connector;
        let round_trip = async move { call(connector.get().await?).await };
        let started = Instant::now();
        let span = tracing::trace_span!("redis", db.system.name = "redis", server.address = %self.target);
        let outcome = tokio::time::timeout(deadline, round_trip).instrument(span).await;
        let error = match &outcome {
            Ok(Ok(_)) => None,
            Ok(Err(_)) => Some("error"),
            Err(_) => Some("timeout"),
        };
        crate::telemetry::metrics().db_call("redis", "round_trip", started.elapsed(), error);
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.classify(e)),
            Err(_) => {
                // A call cut short by the request's budget says less about Redis than a missed deadline.
                if deadline == self.deadline {
                    self.breaker.trip();
                }
                Err(CacheError::unavailable(format!("{} did not answer within {deadline:?}", self.target)))
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
}

#[cfg(test)]
mod tests {
    use crate::domain::error_chain::Chain;

    /// redis-rs pastes a server error's text into its own and returns it as the source too.
    #[test]
    fn a_redis_server_error_is_logged_once() {
        let parsed = redis::parse_redis_value(b"-NOPERM this user has no permissions\r\n");
        let Ok(redis::Value::ServerError(server)) = parsed else { panic!("not a server error: {parsed:?}") };
        let e = redis::RedisError::from(server);
        let shown = Chain(&e).to_string();
        assert_eq!(shown.matches("no permissions").count(), 1, "{shown}");
    }
}
