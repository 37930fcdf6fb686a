//! The application: settings plus the wired-up patterns, shared by every request.

use std::sync::Arc;

use crate::cache::{CacheError, RedisCache};
use crate::patterns::refresh_ahead::RefreshAheadPolicy;
use crate::patterns::{CachePolicy, Patterns};
use crate::queue::redis_streams::{ConsumerConfig, StreamConsumer};
use crate::settings::{Settings, StoreSettings};
use crate::store::cosmos::CosmosStore;
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, StoreError};

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
}

impl App {
    /// Wires an app from parts (tests use this to put a store of their choice behind the patterns).
    pub fn new(settings: Settings, cache: RedisCache, store: Arc<dyn Store>) -> Self {
        let policy = CachePolicy::from_settings(&settings);
        let patterns =
            Patterns::new(cache, store, policy).with_refresh_ahead(RefreshAheadPolicy::from_settings(&settings));
        Self { patterns, settings: Arc::new(settings) }
    }

    /// Starts the work that runs beside the requests: the in-process consumer of the Redis
    /// Stream write-behind queue (with Event Hubs, the `EventHubConsumer` function does that job).
    pub fn start_background_work(&self) -> Result<Vec<tokio::task::JoinHandle<()>>, StartupError> {
        let mut tasks = Vec::new();
        if self.patterns.queue().kind() == "redis-streams" {
            // Blocking stream reads get a connection of their own.
            let conn = RedisCache::new(&self.settings.redis, &self.settings.instance_name)?;
            let consumer = StreamConsumer::new(self.patterns.clone(), conn, ConsumerConfig::new());
            tasks.push(tokio::spawn(consumer.run()));
        }
        Ok(tasks)
    }

    /// Opens the store and prepares the cache the settings describe.
    pub async fn from_settings(settings: Settings) -> Result<Self, StartupError> {
        let store: Arc<dyn Store> = match &settings.store {
            StoreSettings::Sqlite { path } => {
                let store = SqliteStore::open(path)?;
                tracing::info!(path = %path.display(), "backing store: embedded SQLite");
                Arc::new(store)
            }
            StoreSettings::Cosmos(cosmos) => {
                tracing::info!(target = cosmos.describe(), "connecting to the Cosmos DB backing store");
                let store = CosmosStore::connect(cosmos).await?;
                tracing::info!(target = store.describe(), "backing store: Azure Cosmos DB");
                Arc::new(store)
            }
        };
        let cache = RedisCache::new(&settings.redis, &settings.instance_name)?;
        tracing::info!(redis = cache.describe(), prefix = %settings.instance_name, "cache: Redis");
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
