//! The composition root: the one place that sees every layer. It reads the settings, opens the
//! adapters, plugs them into the patterns' services, hands those to the HTTP layer, and owns the
//! background workers. `main` runs [`run`]; the tests build the same [`Application`] with
//! [`Application::assemble`], putting a store and a clock of their choice behind it.

mod environment;
pub mod fatal_signals;
pub mod logging;
pub mod shutdown;
mod workers;

pub use environment::Environment;
pub use workers::{Running, Workers};

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::Router;

use crate::adapters::cosmos::{CosmosChanges, CosmosSettings, CosmosStore};
use crate::adapters::deferred_store::{DeferredStore, UnconfiguredStore};
use crate::adapters::near_cache::NearCache;
use crate::adapters::redis::{ReaderConfig, Redis, RedisDeadLetters, RedisStreamQueue, RedisStreamReader};
use crate::adapters::sqlite::SqliteStore;
use crate::config::{Settings, SettingsError, StoreSettings};
use crate::domain::error_chain::Chain;
use crate::http::{self, AppState, Limits};
use crate::patterns::versions::NodeLease;
use crate::patterns::write_behind::DrainPolicy;
use crate::patterns::{HybridClock, Parts, QueueConsumer, Services, maintenance};
use crate::ports::{Cache, CacheError, Clock, QueueError, Store, StoreError, WriteQueue};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A setting is missing or malformed.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The port could not be bound.
    #[error("cannot listen on {addr} (FUNCTIONS_CUSTOMHANDLER_PORT)")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        cause: std::io::Error,
    },
    /// The store could not be opened.
    #[error("cannot open the backing store")]
    Store(#[source] StoreError),
    /// The Redis client could not be prepared.
    #[error("cannot prepare the Redis cache")]
    Cache(#[source] CacheError),
    /// The write-behind queue could not be prepared.
    #[error("cannot prepare the write-behind queue")]
    Queue(#[source] QueueError),
    /// Event Hubs is configured, but this build has no Event Hubs client.
    #[error(
        "{0} is set, but this handler was built without the `eventhubs` cargo feature; build it with default features (cargo build --release) or remove the setting to use the Redis Stream queue"
    )]
    EventHubsNotBuilt(&'static str),
    /// The server stopped with an error.
    #[error("the server failed")]
    Serve(#[source] std::io::Error),
}

/// What [`Application::assemble`] plugs in besides what the settings say.
pub struct Plugs {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The time source.
    pub clock: Arc<dyn Clock>,
    /// The write-behind queue, when it is not the Redis Stream (Event Hubs).
    pub queue: Option<Arc<dyn WriteQueue>>,
}

impl Plugs {
    /// `store` on the system clock, with the Redis Stream queue.
    pub fn store(store: Arc<dyn Store>) -> Self {
        Self { store, clock: crate::ports::clock::system(), queue: None }
    }
}

/// The wired-up service. Cheap to clone.
#[derive(Clone)]
pub struct Application {
    /// The patterns' services.
    pub services: Services,
    /// The Redis handle the cache, the leases and the streams share.
    pub redis: Redis,
    /// The version clock.
    pub versions: Arc<HybridClock>,
    /// The settings the service started with.
    pub settings: Arc<Settings>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    dead_letters: RedisDeadLetters,
    /// A Cosmos DB store still to connect, in the background (on Azure).
    connect_later: Option<(Arc<DeferredStore>, CosmosSettings)>,
    /// The near cache in front of Redis (`L1MaxEntries` > 0).
    pub near_cache: Option<Arc<NearCache>>,
}

impl Application {
    /// Wires the service from `settings` and `plugs`: the one wiring both `main` and the tests use.
    pub fn assemble(settings: Settings, plugs: Plugs) -> Result<Self, StartupError> {
        let redis = Redis::new(&settings.redis, &settings.instance_name).map_err(StartupError::Cache)?;
        let shared: Arc<dyn Cache> = Arc::new(redis.clone());
        let near_cache = (settings.near_cache_entries > 0).then(|| {
            Arc::new(NearCache::new(
                shared.clone(),
                redis.feed().clone(),
                plugs.clock.clone(),
                settings.near_cache_entries,
            ))
        });
        let cache: Arc<dyn Cache> = match &near_cache {
            Some(near) => near.clone(),
            None => shared,
        };
        let versions = Arc::new(HybridClock::new(plugs.clock.clone()));
        let dead_letters = RedisDeadLetters::new(redis.clone(), plugs.clock.clone());
        let queue = plugs.queue.unwrap_or_else(|| Arc::new(RedisStreamQueue::new(redis.clone())));
        let services = Services::new(Parts {
            cache,
            store: plugs.store.clone(),
            queue,
            dead_letters: Arc::new(dead_letters.clone()),
            leases: Arc::new(redis.clone()),
            versions: versions.clone(),
            policy: settings.cache.clone(),
            refresh_ahead: settings.refresh_ahead.clone(),
            drain: settings.write_behind,
        });
        Ok(Self {
            services,
            redis,
            versions,
            settings: Arc::new(settings),
            store: plugs.store,
            clock: plugs.clock,
            dead_letters,
            connect_later: None,
            near_cache,
        })
    }

    /// Opens the store and the queue the settings describe, in `environment`, and wires the
    /// service: locally a store that cannot be opened stops start-up; on Azure the app starts
    /// anyway (Cosmos DB connects in the background, and without a usable store it runs degraded,
    /// answering `503 store_not_configured`).
    pub async fn build(settings: Settings, environment: &Environment) -> Result<Self, StartupError> {
        let (store, connect_later) = open_store(&settings, environment).await?;
        let queue = match &settings.event_hubs {
            Some(hub) => Some(event_hubs_queue(hub).await?),
            None => {
                tracing::info!("write-behind queue: Redis Stream, applied in-process");
                None
            }
        };
        let mut application = Self::assemble(settings, Plugs { store, clock: crate::ports::clock::system(), queue })?;
        tracing::info!(redis = application.redis.describe(), prefix = ?application.settings.instance_name, "cache: Redis");
        application.connect_later = connect_later;
        Ok(application)
    }

    /// What the HTTP layer needs. `StoreChanges` reads Cosmos DB documents whatever the store: it
    /// is the Cosmos DB trigger, disabled where the store is SQLite (docs/store-changes.md).
    pub fn state(&self) -> AppState {
        AppState {
            services: self.services.clone(),
            max_value_bytes: self.settings.max_value_bytes,
            changes: Arc::new(CosmosChanges),
        }
    }

    /// The router, with the default [`Limits`].
    pub fn router(&self) -> Router {
        self.router_with(Limits::default())
    }

    /// The router with other [`Limits`].
    pub fn router_with(&self, limits: Limits) -> Router {
        http::router(self.state(), limits)
    }

    /// The store behind the services.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The dead-letter stream.
    pub fn dead_letters(&self) -> &RedisDeadLetters {
        &self.dead_letters
    }

    /// An in-process consumer of the write-behind stream, reading (and recording dead letters) over
    /// a connection of its own (blocking reads must not stall the shared one) whose deadline outlasts
    /// the block time. On a cluster it starts from every node the shared connection has seen, not
    /// only the one `RedisCache` names (which may be a master that has died since).
    pub fn write_behind_consumer(
        &self,
        reader: ReaderConfig,
        policy: DrainPolicy,
    ) -> Result<QueueConsumer, StartupError> {
        let deadline = reader.block + self.settings.redis.response_timeout;
        let connection = Redis::builder(&self.settings.redis, &self.settings.instance_name)
            .deadline(deadline)
            .nodes_of(&self.redis)
            .build()
            .map_err(StartupError::Cache)?;
        // Dead letters go over the same connection: what the consumer gives up on is recorded even
        // while request traffic has the shared connection's breaker open.
        let dead_letters = RedisDeadLetters::new(connection.clone(), self.clock.clone());
        let reader = RedisStreamReader::new(connection, reader);
        Ok(QueueConsumer::new(self.services.applier.clone(), Arc::new(reader), Arc::new(dead_letters), policy))
    }

    /// Follows the invalidation feed alone, without the other workers (for tests that count
    /// Redis commands: the feed is what lets a hit skip fetching the invalidation clocks).
    pub fn follow_invalidations(&self) -> Workers {
        let workers = Workers::new();
        let redis = self.redis.clone();
        workers.spawn("invalidation feed", |shutdown| redis.follow_feed(shutdown));
        workers
    }

    /// Starts the work that runs beside the requests: the version node-id lease, the consumer of the
    /// write-behind stream (with Event Hubs the `EventHubConsumer` function applies new writes; the
    /// stream still drains what was queued before), moving what an older release left, the tombstone
    /// purge, and connecting a store that connects in the background.
    pub fn start_workers(&self) -> Result<Workers, StartupError> {
        let mut workers = Workers::new();
        // The work requests leave running (background loads and refreshes, writes that finish
        // without their caller) is stopped before the lease below is given back: it takes stamps
        // and versions from the leased node id.
        workers.stop_first(self.services.request_tasks().clone());
        let lease = NodeLease::new(Arc::new(self.redis.clone()), self.versions.clone());
        // Given back only once the requests are done: they take their versions from this id.
        workers.spawn_last("node-id lease", |shutdown| lease.keep(shutdown));
        let consumer = self.write_behind_consumer(ReaderConfig::default(), self.settings.write_behind)?;
        workers.spawn("write-behind consumer", |shutdown| consumer.run(shutdown));
        let (redis, dead_letters) = (self.redis.clone(), self.dead_letters.clone());
        workers.spawn("legacy streams", |shutdown| {
            crate::adapters::redis::migrate::keep_moving(redis, dead_letters, shutdown)
        });
        let redis = self.redis.clone();
        workers.spawn("invalidation feed", |shutdown| redis.follow_feed(shutdown));
        let services = self.services.clone();
        workers.spawn("cache recovery", |shutdown| services.keep_recovering(shutdown));
        let (store, clock) = (self.store.clone(), self.clock.clone());
        let retention = self.settings.tombstone_retention;
        workers.spawn("tombstone purge", |shutdown| maintenance::purge_tombstones(store, clock, retention, shutdown));
        if let Some((deferred, cosmos)) = self.connect_later.clone() {
            workers.spawn("store connection", |shutdown| {
                deferred.connect(move || connect_cosmos(cosmos.clone()), shutdown)
            });
        }
        Ok(workers)
    }
}

/// Binds the port, reads the settings, starts everything and serves until SIGTERM or Ctrl-C, then
/// stops within [`shutdown::STOP_WITHIN`]: the workers are told at once, open requests get
/// [`shutdown::DRAIN_WITHIN`] to finish, then every worker is awaited for what is left. What
/// `main` runs; `main` then flushes the telemetry and tears the runtime down ([`shutdown`]).
pub async fn run(environment: Environment) -> Result<(), StartupError> {
    let port = Settings::port_from_env()?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|cause| StartupError::Listen { addr, cause })?;
    tracing::info!(%addr, "handler listening");
    let limits = Limits::default();
    let built = match Settings::from_env() {
        Ok(settings) => Application::build(settings, &environment).await,
        Err(e) => Err(e.into()),
    };
    let application = match built {
        Ok(application) => application,
        Err(problem) if environment.on_azure => {
            // One clear line, then keep answering: Health and every function say what is wrong.
            let problem = Chain(&problem).to_string();
            tracing::error!(
                "the handler cannot work with this configuration: {problem}; every function answers 503 until it is fixed"
            );
            let router = http::misconfigured_router(problem);
            return http::serve(listener, router, limits, shutdown::signal(None), shutdown::DRAIN_WITHIN)
                .await
                .map_err(StartupError::Serve);
        }
        Err(problem) => return Err(problem),
    };
    let workers = application.start_workers()?;
    let redis = application.redis.clone();
    tokio::spawn(async move {
        match redis.ping().await {
            Ok(latency) => tracing::info!(?latency, redis = redis.describe(), "Redis answered"),
            Err(e) => {
                tracing::warn!(error = %Chain(&e), "Redis is not reachable yet; reads go to the store until it is")
            }
        }
    });
    let stopping = async {
        shutdown::signal(Some(workers.running())).await;
        workers.cancel();
    };
    let served = http::serve(listener, application.router_with(limits), limits, stopping, shutdown::DRAIN_WITHIN).await;
    // What is left of the time from the signal (at least a second: the drain ends a second early).
    workers.stop(shutdown::stop_time_left()).await;
    served.map_err(StartupError::Serve)
}

/// The settings that name a store, for messages.
const STORE_SETTINGS: &str = "CosmosDBConnection__accountEndpoint (managed identity) or CosmosDBConnection (a key)";

type Opened = (Arc<dyn Store>, Option<(Arc<DeferredStore>, CosmosSettings)>);

async fn open_store(settings: &Settings, environment: &Environment) -> Result<Opened, StartupError> {
    match &settings.store {
        // On Azure never SQLite, wherever LocalStorePath points: each instance would have a file of
        // its own, so a scaled-out (or restarted elsewhere) app would read other data than it wrote.
        StoreSettings::Sqlite { path, explicit } if environment.on_azure => {
            let ignored = if *explicit {
                format!(
                    "; LocalStorePath ({}) is ignored on Azure: SQLite there would be a file per instance, not shared by a scaled-out app",
                    path.display()
                )
            } else {
                String::new()
            };
            let why = format!(
                "on Azure set {STORE_SETTINGS}; the embedded SQLite store is for local runs (the app root is read-only there, and it would be one file per instance){ignored}"
            );
            tracing::error!(
                "no backing store is configured: {why}; store-backed functions answer 503 store_not_configured"
            );
            Ok((Arc::new(UnconfiguredStore::new(why)), None))
        }
        StoreSettings::Sqlite { path, .. } => {
            let store = SqliteStore::open(path).map_err(StartupError::Store)?;
            tracing::info!(path = %path.display(), "backing store: embedded SQLite");
            Ok((Arc::new(store), None))
        }
        StoreSettings::Cosmos(cosmos) if environment.on_azure => {
            tracing::info!(target = cosmos.describe(), "connecting to the Cosmos DB backing store in the background");
            let deferred = DeferredStore::new("cosmos");
            Ok((deferred.clone(), Some((deferred, cosmos.clone()))))
        }
        StoreSettings::Cosmos(cosmos) => {
            tracing::info!(target = cosmos.describe(), "connecting to the Cosmos DB backing store");
            Ok((connect_cosmos(cosmos.clone()).await.map_err(StartupError::Store)?, None))
        }
    }
}

async fn connect_cosmos(cosmos: CosmosSettings) -> Result<Arc<dyn Store>, StoreError> {
    let store = CosmosStore::connect(&cosmos).await?;
    tracing::info!(target = store.describe(), "backing store: Azure Cosmos DB");
    Ok(Arc::new(store))
}

#[cfg(feature = "eventhubs")]
async fn event_hubs_queue(
    hub: &crate::adapters::event_hubs::EventHubSettings,
) -> Result<Arc<dyn WriteQueue>, StartupError> {
    crate::adapters::event_hubs::connect(hub).await.map_err(StartupError::Queue)
}

/// Without the `eventhubs` feature there is no Event Hubs client: say how to get one.
#[cfg(not(feature = "eventhubs"))]
async fn event_hubs_queue(
    _: &crate::adapters::event_hubs::EventHubSettings,
) -> Result<Arc<dyn WriteQueue>, StartupError> {
    Err(StartupError::EventHubsNotBuilt(crate::config::EVENT_HUBS_NAMESPACE_SETTING))
}

#[cfg(test)]
mod tests {
    /// Without the feature there is no Event Hubs client: start-up says how to get one.
    #[cfg(not(feature = "eventhubs"))]
    #[tokio::test]
    async fn without_the_event_hubs_feature_start_up_says_how_to_get_it() {
        let settings = crate::adapters::event_hubs::EventHubSettings {
            fully_qualified_namespace: "myns.servicebus.windows.net".into(),
            client_id: None,
            event_hub_name: "cache-writes".into(),
        };
        let line = super::event_hubs_queue(&settings).await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(line.contains("EventHubConnection__fullyQualifiedNamespace"), "{line}");
        assert!(line.contains("without the `eventhubs` cargo feature"), "{line}");
    }
}
