//! Stores for when the real one is not there (yet): on Azure the handler must answer from the
//! moment it starts, and must keep running when no store is configured.
//!
//! * [`UnconfiguredStore`]: no usable store is configured. Every call says so
//!   ([`StoreError::NotConfigured`], `503 store_not_configured`), naming the settings to set.
//! * [`DeferredStore`]: the store connects in the background (Cosmos DB can take up to 30 s), with
//!   retries; until it is connected, calls are `Unavailable` with the reason.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use tokio_util::sync::CancellationToken;

use crate::domain::error_chain::Chain;
use crate::domain::options::EntryOptions;
use crate::domain::time::Timestamp;
use crate::ports::store::{Applied, Change, Record, Store, StoreError};

/// No store: every call answers [`StoreError::NotConfigured`].
#[derive(Debug, Clone)]
pub(crate) struct UnconfiguredStore {
    why: String,
}

impl UnconfiguredStore {
    /// A store that explains `why` there is none.
    pub fn new(why: impl Into<String>) -> Self {
        Self { why: why.into() }
    }

    fn refuse<T>(&self) -> Result<T, StoreError> {
        Err(StoreError::NotConfigured(self.why.clone()))
    }
}

#[async_trait]
impl Store for UnconfiguredStore {
    async fn get(&self, _: &str) -> Result<Option<Record>, StoreError> {
        self.refuse()
    }

    async fn apply_with(&self, _: &str, _: u64, _: Change, _: &EntryOptions) -> Result<Applied, StoreError> {
        self.refuse()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.refuse()
    }

    fn configured(&self) -> Result<(), StoreError> {
        self.refuse()
    }

    fn kind(&self) -> &'static str {
        "none"
    }
}

/// A store that connects in the background and stands in for it until then.
pub(crate) struct DeferredStore {
    ready: OnceLock<Arc<dyn Store>>,
    waiting: Mutex<String>,
    kind: &'static str,
}

impl std::fmt::Debug for DeferredStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeferredStore").field("kind", &self.kind).field("ready", &self.ready.get().is_some()).finish()
    }
}

impl DeferredStore {
    /// A store of `kind` that is not connected yet; [`DeferredStore::connect`] connects it.
    pub fn new(kind: &'static str) -> Arc<Self> {
        Arc::new(Self { ready: OnceLock::new(), waiting: Mutex::new("connecting".into()), kind })
    }

    /// Connects with `connect`, again and again (backing off from a second to a minute) until it
    /// works or `shutdown`.
    pub async fn connect<F, Fut>(self: Arc<Self>, connect: F, shutdown: CancellationToken)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<Arc<dyn Store>, StoreError>>,
    {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_secs(1))
            .with_max_delay(Duration::from_secs(60))
            .without_max_times();
        let attempts = connect.retry(backoff).notify(|e: &StoreError, retry_in: Duration| {
            tracing::error!(store = self.kind, error = %Chain(e), ?retry_in, "cannot connect to the backing store yet; store-backed functions answer 503 until it works");
            *self.waiting.lock().unwrap_or_else(|p| p.into_inner()) = e.to_string();
        });
        tokio::select! {
            _ = shutdown.cancelled() => {}
            connected = attempts => {
                if let Ok(inner) = connected {
                    let _ = self.ready.set(inner);
                    tracing::info!(store = self.kind, "backing store connected");
                }
            }
        }
    }

    fn inner(&self) -> Result<&Arc<dyn Store>, StoreError> {
        self.ready.get().ok_or_else(|| {
            let why = self.waiting.lock().map(|w| w.clone()).unwrap_or_default();
            StoreError::Unavailable {
                message: format!("{} is not connected yet ({why})", self.kind),
                retry_after: Some(Duration::from_secs(5)),
                cause: None,
            }
        })
    }
}

#[async_trait]
impl Store for DeferredStore {
    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError> {
        self.inner()?.get(key).await
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Record>>, StoreError> {
        self.inner()?.get_many(keys).await
    }

    async fn apply_with(
        &self,
        key: &str,
        version: u64,
        change: Change,
        options: &EntryOptions,
    ) -> Result<Applied, StoreError> {
        self.inner()?.apply_with(key, version, change, options).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner()?.ping().await
    }

    async fn probe_write(&self) -> Result<(), StoreError> {
        self.inner()?.probe_write().await
    }

    async fn purge_tombstones(&self, older_than: Timestamp) -> Result<u64, StoreError> {
        self.inner()?.purge_tombstones(older_than).await
    }

    fn kind(&self) -> &'static str {
        self.kind
    }
}
