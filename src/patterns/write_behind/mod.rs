//! Write-Behind: accept the write into a durable queue, update the cache, apply to the store later.
//!
//! The write gets its version now, so the order of writes is fixed when they are accepted, not
//! when they are applied. The clock first observes the version cached for the key, so a write
//! accepted after another instance's (whose clock may run ahead) still gets a newer version. The
//! event is published first and the cache updated only once the queue confirmed it: if the queue
//! fails, the caller gets an error and no reader sees the write. The store is updated later by a
//! consumer: [`QueueConsumer`] for the Redis Stream, [`PushedBatches`] for Event Hubs.

mod consumer;
mod pushed;

use std::sync::Arc;

use std::time::Duration;
use tracing::Instrument;

pub use consumer::QueueConsumer;
pub use pushed::PushedBatches;
pub(crate) use pushed::{PushedBatch, RunAgain};

use super::Core;
use super::apply::ApplyOptions;
use crate::domain::key::Key;
use crate::domain::options::EntryOptions;
use crate::domain::write_event::WriteEvent;
use crate::ports::store::{Change, StoreError};
use crate::ports::{QueueError, WriteQueue};

/// How queued writes that keep failing are retried before they become dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainPolicy {
    /// A write failing transiently (the store down, a full disk, throttling) is retried for at
    /// least this long after it was accepted (`WriteBehindRetryWindowSeconds`).
    pub retry_window: Duration,
    /// A stream entry still failing is dead-lettered once delivered this many times (and older
    /// than the retry window).
    pub max_deliveries: u64,
    /// How each batch is applied.
    pub apply: ApplyOptions,
}

impl Default for DrainPolicy {
    fn default() -> Self {
        Self {
            retry_window: Duration::from_secs(3600),
            max_deliveries: 5,
            // A short budget: failing batches are retried by redelivery, not by holding them.
            apply: ApplyOptions { concurrency: 16, budget: Duration::from_secs(5) },
        }
    }
}

/// Why a write-behind write was not accepted. Nothing is visible to readers.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteBehindError {
    /// The queue did not accept it.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// There is no store to apply it to (nothing was queued).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The handler is stopping and cut the write: the queue may or may not have it.
    #[error("the handler is stopping and cut this write, which the queue may or may not have; write it again")]
    Stopping,
}

/// A write the queue accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The write's version.
    pub version: u64,
    /// Whether the cache was updated (false when Redis was unavailable or held something newer).
    pub cached: bool,
}

/// The Write-Behind service. Cheap to clone.
#[derive(Clone)]
pub struct WriteBehind {
    core: Arc<Core>,
    queue: Arc<dyn WriteQueue>,
}

impl WriteBehind {
    pub(crate) fn new(core: Arc<Core>, queue: Arc<dyn WriteQueue>) -> Self {
        Self { core, queue }
    }

    /// The queue's kind, for logs (`redis-streams`, `eventhubs`).
    pub(crate) fn queue_kind(&self) -> &'static str {
        self.queue.kind()
    }

    /// Write-Behind of `change` to `key`.
    pub async fn accept(&self, key: &Key, change: Change) -> Result<Accepted, WriteBehindError> {
        self.accept_with(key, change, &EntryOptions::NONE).await
    }

    /// Write-Behind of `change` to `key`, cached with `options` (tags, TTL), which travel with the
    /// queued write to the store. Once begun, the write runs to its end even if the caller stops
    /// waiting, so that the cache is updated whenever the queue took it
    /// ([`Core::run_to_the_end`]).
    pub async fn accept_with(
        &self,
        key: &Key,
        change: Change,
        options: &EntryOptions,
    ) -> Result<Accepted, WriteBehindError> {
        let (this, key, options) = (self.clone(), key.clone(), options.clone());
        let write = |_caller| async move { this.queue_then_cache(&key, change, &options).await };
        self.core.run_to_the_end(write).await.unwrap_or(Err(WriteBehindError::Stopping))
    }

    /// The write itself: the queue first, so that readers never see a write the queue did not take.
    async fn queue_then_cache(
        &self,
        key: &Key,
        change: Change,
        options: &EntryOptions,
    ) -> Result<Accepted, WriteBehindError> {
        let core = &self.core;
        // Accepting a write that can never be applied would only fill the queue.
        core.store.configured()?;
        if let Ok(Some(cached)) = core.cache.get(key.as_str()).await
            && let Err(reason) = core.versions.observe(cached.version)
        {
            tracing::warn!(key = ?key.as_str(), version = cached.version, %reason, "the cached version of this key is implausible; not following it");
        }
        let version = core.versions.next();
        let now = core.now();
        let (event, value) = match change {
            Change::Upsert(value) => (WriteEvent::upsert(key, value.clone(), version, now), Some(value)),
            Change::Delete => (WriteEvent::delete(key, version, now), None),
        };
        let event = event.with_options(options);
        self.queue.publish(&event).instrument(tracing::trace_span!("queue.publish", queue = self.queue.kind())).await?;
        crate::telemetry::metrics().write_behind("enqueued", 1);
        let cached = core.cache_write(key, &core.policy.entry_with(value, version, now, options, version)).await;
        Ok(Accepted { version, cached })
    }
}
