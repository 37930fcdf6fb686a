//! Write-Through: the store first, then the cache.
//!
//! A write gets the next version from the hybrid clock and is applied to the store, versioned. Only
//! after the store accepted it is the cache updated (a delete caches a versioned "absent"), through
//! the "never older" cache write, so racing readers and writers cannot leave an older value behind
//! (invariants 1–3, docs/reliability.md). If the store fails, the cache is not touched and the
//! caller learns it. If another process wrote a newer version (clock skew), the clock moves past it
//! and the write is retried, so the latest accepted write wins. A write runs to its end even if its
//! caller leaves ([`Core::run_to_the_end`]), but is then not retried above a newer version.

use std::sync::Arc;

use super::{Caller, Core};
use crate::domain::key::Key;
use crate::domain::options::EntryOptions;
use crate::domain::version::Implausible;
use crate::ports::store::{Applied, Change, StoreError};

/// How many times a write retries after finding a newer version in the store.
const MAX_VERSION_RETRIES: usize = 5;

/// A write the store accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The version the write was stored with.
    pub version: u64,
    /// Whether the cache was updated (false when Redis was unavailable).
    pub cached: bool,
}

/// Why a write failed. Nothing was cached.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store kept finding newer versions (writers with far-ahead clocks).
    #[error("the store kept holding newer versions of this key; try again")]
    Contended,
    /// The store holds a version of this key that no sane clock issued (far in the future, or past
    /// what stores hold); no write can be newer, and the clock must not follow it.
    #[error(
        "the store holds version {current} of this key, which is not plausible; the key cannot be written until the stored item is repaired"
    )]
    StoredVersionImplausible {
        /// The stored version.
        current: u64,
        /// Why it is not plausible.
        #[source]
        reason: Implausible,
    },
    /// The caller left, and the store turned out to hold a newer version of the key (or to have
    /// purged a newer delete): this write was not tried again above it (the caller may have written
    /// again since). Only logged: nobody waits for it.
    #[error(
        "the store holds a newer version of this key than this write, whose caller had left; it was not written above it"
    )]
    Superseded {
        /// The version the store holds.
        current: u64,
    },
    /// The handler is stopping and cut the write: the store may or may not have it.
    #[error("the handler is stopping and cut this write, which the store may or may not have; write it again")]
    Stopping,
}

/// The Write-Through service. Cheap to clone.
#[derive(Clone)]
pub struct WriteThrough {
    core: Arc<Core>,
}

impl WriteThrough {
    pub(crate) fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    /// Write-Through of `change` to `key`.
    pub async fn write(&self, key: &Key, change: Change) -> Result<Written, WriteError> {
        self.write_with(key, change, &EntryOptions::NONE).await
    }

    /// Write-Through of `change` to `key`, cached with `options` (tags, TTL), which the store keeps.
    /// Once begun, the write runs to its end even if the caller stops waiting, so that the cache
    /// is updated whenever the store was ([`Core::run_to_the_end`]).
    pub async fn write_with(&self, key: &Key, change: Change, options: &EntryOptions) -> Result<Written, WriteError> {
        let (this, key, options) = (self.clone(), key.clone(), options.clone());
        let write = |caller| async move { this.store_then_cache(&key, change, &options, &caller).await };
        self.core.run_to_the_end(write).await.unwrap_or(Err(WriteError::Stopping))
    }

    /// The write itself: the store first, so that the cache never holds what the store refused.
    async fn store_then_cache(
        &self,
        key: &Key,
        change: Change,
        options: &EntryOptions,
        caller: &Caller,
    ) -> Result<Written, WriteError> {
        let version = self.apply_versioned(key, &change, options, caller).await?;
        let value = match change {
            Change::Upsert(value) => Some(value),
            Change::Delete => None,
        };
        let entry = self.core.policy.entry_with(value, version, self.core.now(), options, version);
        let cached = self.core.cache_write(key, &entry).await;
        Ok(Written { version, cached })
    }

    /// Applies `change` to the store with a fresh version, moving past newer versions it finds, as
    /// long as the caller waits: once it has left, a newer version found means the write was
    /// superseded (perhaps by the caller writing again), and it is not tried again above it.
    async fn apply_versioned(
        &self,
        key: &Key,
        change: &Change,
        options: &EntryOptions,
        caller: &Caller,
    ) -> Result<u64, WriteError> {
        let versions = &self.core.versions;
        for _ in 0..MAX_VERSION_RETRIES {
            let version = versions.next();
            match self.core.store_apply(key, version, change.clone(), options, "writing to the store").await? {
                Applied::Yes => return Ok(version),
                Applied::Stale { current } | Applied::BelowWatermark { watermark: current } => {
                    if caller.has_left() {
                        tracing::debug!(key = ?key.as_str(), version, current, "store holds a newer version and the caller has left; not writing above it");
                        return Err(WriteError::Superseded { current });
                    }
                    tracing::debug!(key = ?key.as_str(), version, current, "store holds a newer version; moving the clock past it");
                    if let Err(reason) = versions.observe(current) {
                        tracing::error!(key = ?key.as_str(), current, %reason, "the store holds an implausible version of this key; refusing to follow it");
                        return Err(WriteError::StoredVersionImplausible { current, reason });
                    }
                }
            }
        }
        Err(WriteError::Contended)
    }
}
