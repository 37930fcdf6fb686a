//! The application: settings plus the wired-up patterns, shared by every request.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::cache::node_ids::NodeLease;
use crate::cache::{CacheError, RedisCache};
use crate::clock::Clock;
use crate::patterns::apply_writes::ApplyOptions;
use crate::patterns::refresh_ahead::RefreshAheadPolicy;
use crate::patterns::{CachePolicy, Patterns};
use crate::queue::redis_streams::{ConsumerConfig, StreamConsumer};
use crate::settings::{Settings, StoreSettings};
use crate::store::cosmos::CosmosStore;
use crate::store::deferred::{DeferredStore, UnconfiguredStore};
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, StoreError};

/// How often tombstones older than the retention window are purged.
const PURGE_EVERY: Duration = Duration::from_secs(3600);

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The store could not be opened.
    #[error("cannot open the backing store: {0}")]
    Store(#[from] StoreError),
    /// The Redis client could not be prepared.
    #[error("cannot prepare the Redis cache: {0}")]
    Cache(#[from] CacheError),
    /// The write-behind queue could not be prepared.
    #[error("cannot prepare the write-behind queue: {0}")]
    Queue(#[from] crate::queue::QueueError),
}

/// Shared state of the handler. Cheap to clone.
#[derive(Clone)]
pub struct App {
    /// The caching patterns.
    pub patterns: Patterns,
    /// The settings the service started with.
    pub settings: Arc<Settings>,
    /// How `EventHubConsumer` applies a batch (its retry budget is short: the host's retry policy
    /// retries the whole batch when the store keeps failing).
    pub event_hub_apply: ApplyOptions,
}

impl App {
    /// Wires an app from parts on the system clock (tests use this to put a store of their choice
    /// behind the patterns).
    pub fn new(settings: Settings, cache: RedisCache, store: Arc<dyn Store>) -> Self {
        Self::with_clock(settings, cache, store, crate::clock::system())
    }

    /// Wires an app from parts on the given time source.
    pub fn with_clock(settings: Settings, cache: RedisCache, store: Arc<dyn Store>, time: Arc<dyn Clock>) -> Self {
        let policy = CachePolicy::from_settings(&settings);
        let patterns =
            Patterns::new(cache, store, policy, time).with_refresh_ahead(RefreshAheadPolicy::from_settings(&settings));
        let event_hub_apply = ApplyOptions { concurrency: 16, budget: Duration::from_secs(5) };
        Self { patterns, settings: Arc::new(settings), event_hub_apply }
    }

    /// Starts the work that runs beside the requests: the version node-id lease, the in-process
    /// consumer of the Redis Stream write-behind queue (it also drains what an older release
    /// queued; with Event Hubs the `EventHubConsumer` function applies new writes), and the
    /// tombstone purge.
    pub fn start_background_work(&self) -> Result<Vec<tokio::task::JoinHandle<()>>, StartupError> {
        let mut tasks = Vec::new();
        let lease = NodeLease::new(self.patterns.cache().clone(), self.patterns.clock().clone());
        tasks.push(tokio::spawn(lease.keep()));
        // Blocking stream reads get a connection of their own, with a deadline past the block time.
        let mut config = ConsumerConfig::new();
        config.retry_window = self.settings.write_behind_retry_window;
        let conn = RedisCache::with_deadline(
            &self.settings.redis,
            &self.settings.instance_name,
            config.block + self.settings.redis.response_timeout,
        )?;
        let consumer = StreamConsumer::new(self.patterns.clone(), conn, config);
        tasks.push(tokio::spawn(consumer.run()));
        tasks.push(tokio::spawn(purge_tombstones(self.patterns.clone(), self.settings.tombstone_retention)));
        Ok(tasks)
    }

    /// Opens the store and prepares the cache the settings describe, in `environment`: locally a
    /// store that cannot be opened stops start-up; on Azure the app starts anyway (Cosmos DB
    /// connects in the background, and without a usable store it runs degraded, answering
    /// `503 store_not_configured`).
    pub async fn from_settings(settings: Settings, environment: &Environment) -> Result<Self, StartupError> {
        let store = open_store(&settings, environment).await?;
        let cache = RedisCache::new(&settings.redis, &settings.instance_name)?;
        tracing::info!(redis = cache.describe(), prefix = ?settings.instance_name, "cache: Redis");
        let event_hubs = match &settings.event_hubs {
            Some(hub) => Some(crate::queue::eventhubs::connect(hub).await?),
            None => None,
        };
        let mut app = Self::new(settings, cache, store);
        match event_hubs {
            Some(queue) => app.patterns = app.patterns.with_queue(queue),
            None => tracing::info!("write-behind queue: Redis Stream, applied in-process"),
        }
        Ok(app)
    }
}

/// Where the handler runs.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// On Azure App Service / Functions (`WEBSITE_INSTANCE_ID` is set): the app root is read-only,
    /// and an exiting handler takes every function down, so misconfiguration must not stop it.
    pub on_azure: bool,
    /// The function app's root (`FUNCTIONS_APP_ROOT_PATH`, else the working directory).
    pub app_root: PathBuf,
}

impl Environment {
    /// Reads the environment the host gives the handler.
    pub fn from_env() -> Self {
        let on_azure = std::env::var("WEBSITE_INSTANCE_ID").is_ok_and(|v| !v.trim().is_empty());
        let app_root = std::env::var("FUNCTIONS_APP_ROOT_PATH")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::current_dir().ok())
            .unwrap_or_default();
        Self { on_azure, app_root }
    }
}

/// The settings that name a store, for messages.
const STORE_SETTINGS: &str = "CosmosDBConnection__accountEndpoint (managed identity) or CosmosDBConnection (a key)";

async fn open_store(settings: &Settings, environment: &Environment) -> Result<Arc<dyn Store>, StartupError> {
    match &settings.store {
        StoreSettings::Sqlite { path, explicit } => {
            if environment.on_azure {
                let under_app_root = !path.is_absolute() || path.starts_with(&environment.app_root);
                if !explicit || under_app_root {
                    let why = format!(
                        "on Azure set {STORE_SETTINGS}; the embedded SQLite store is for local runs (the app root is read-only there, and it would be one file per instance){}",
                        if *explicit { "; LocalStorePath must be an absolute path outside the app root" } else { "" }
                    );
                    tracing::error!(
                        "no backing store is configured: {why}; store-backed functions answer 503 store_not_configured"
                    );
                    return Ok(Arc::new(UnconfiguredStore::new(why)));
                }
                tracing::warn!(path = %path.display(), "backing store: embedded SQLite on Azure: one file per instance, not shared by a scaled-out app");
            }
            let store = SqliteStore::open(path)?;
            tracing::info!(path = %path.display(), "backing store: embedded SQLite");
            Ok(Arc::new(store))
        }
        StoreSettings::Cosmos(cosmos) if environment.on_azure => {
            tracing::info!(target = cosmos.describe(), "connecting to the Cosmos DB backing store in the background");
            let cosmos = cosmos.clone();
            Ok(DeferredStore::connect_in_background("cosmos", move || {
                let cosmos = cosmos.clone();
                async move {
                    let store = CosmosStore::connect(&cosmos).await?;
                    tracing::info!(target = store.describe(), "backing store: Azure Cosmos DB");
                    Ok(Arc::new(store) as Arc<dyn Store>)
                }
            }))
        }
        StoreSettings::Cosmos(cosmos) => {
            tracing::info!(target = cosmos.describe(), "connecting to the Cosmos DB backing store");
            let store = CosmosStore::connect(cosmos).await?;
            tracing::info!(target = store.describe(), "backing store: Azure Cosmos DB");
            Ok(Arc::new(store))
        }
    }
}

/// Purges tombstones older than `retention`, once an hour (every instance does it; it is idempotent).
async fn purge_tombstones(patterns: Patterns, retention: Duration) {
    loop {
        let older_than = patterns.now().minus(retention);
        match patterns.store().purge_tombstones(older_than).await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, older_than = %older_than, "purged old tombstones"),
            Err(e) => tracing::warn!(error = %e, "could not purge old tombstones; trying again later"),
        }
        tokio::time::sleep(PURGE_EVERY).await;
    }
}
