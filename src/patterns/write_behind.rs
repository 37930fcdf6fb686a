//! Write-Behind: accept the write into a durable queue, update the cache, apply to the store later.
//!
//! The write gets its version now, so the order of writes is fixed when they are accepted, not
//! when they are applied. The clock first observes the version cached for the key, so a write
//! accepted after another instance's (whose clock may run ahead) still gets a newer version. The event is published first and the cache updated only once the queue
//! confirmed it: if the queue fails, the caller gets an error and no reader sees the write. The
//! store is updated by a consumer ([`super::apply_writes`]).

use super::Patterns;
use crate::key::Key;
use crate::queue::{QueueError, WriteEvent};
use crate::store::Change;

/// Why a write-behind write was not accepted. Nothing is visible to readers.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteBehindError {
    /// The queue did not accept it.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// There is no store to apply it to (nothing was queued).
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// A write the queue accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The write's version.
    pub version: u64,
    /// Whether the cache was updated (false when Redis was unavailable or held something newer).
    pub cached: bool,
}

impl Patterns {
    /// Write-Behind of `change` to `key`.
    pub async fn write_behind(&self, key: &Key, change: Change) -> Result<Accepted, WriteBehindError> {
        // Accepting a write that can never be applied would only fill the queue.
        self.store.configured()?;
        if let Ok(Some(cached)) = self.cache.get(key.as_str()).await
            && let Err(reason) = self.clock.observe(cached.version)
        {
            tracing::warn!(key = ?key.as_str(), version = cached.version, %reason, "the cached version of this key is implausible; not following it");
        }
        let version = self.clock.next();
        let (event, entry) = match change {
            Change::Upsert(value) => (
                WriteEvent::upsert(key, value.clone(), version, self.now()),
                self.policy.value_entry(value, version, self.now()),
            ),
            Change::Delete => {
                (WriteEvent::delete(key, version, self.now()), self.policy.negative_entry(version, self.now()))
            }
        };
        self.queue.publish(&event).await?;
        let cached = self.cache_quietly(key, &entry).await;
        Ok(Accepted { version, cached })
    }
}
