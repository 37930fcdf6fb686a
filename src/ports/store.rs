//! The store port: the system of record behind the cache.
//!
//! [`Store`] is what every pattern talks to; `adapters::sqlite::SqliteStore` is the embedded default
//! and `adapters::cosmos::CosmosStore` (Azure Cosmos DB) follows the same contract (the suite in
//! `tests/integration/store_contract.rs` runs against each). The contract's heart is [`Store::apply`]: a write carries a version and is
//! applied only if it is newer than what is stored, atomically, so duplicated, replayed or
//! reordered writes can never make the store go backwards. Deletes are tombstones with a version.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use super::Cause;
use crate::domain::options::EntryOptions;
use crate::domain::time::Timestamp;

/// What is stored under a key: a value, or a tombstone left by a delete.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The key as the caller gave it.
    pub key: String,
    /// The value, or `None` for a tombstone.
    pub value: Option<Value>,
    /// The version of the write that produced this record.
    pub version: u64,
    /// How the item is cached: its tags and own TTL, as the write that stored it said.
    pub options: EntryOptions,
}

impl Record {
    /// True for a tombstone (the key was deleted at `version`).
    pub fn is_deleted(&self) -> bool {
        self.value.is_none()
    }
}

/// A versioned change to one key.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Set the value.
    Upsert(Value),
    /// Delete the key (leaves a tombstone carrying the version).
    Delete,
}

/// What [`Store::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The change was newer and is now stored.
    Yes,
    /// The store already holds this version or a newer one; nothing changed.
    Stale {
        /// The version the store holds.
        current: u64,
    },
    /// The key has no record and the version is not above the highest tombstone ever purged:
    /// whether a newer write superseded it cannot be known any more (it is older than the
    /// tombstone retention window). Nothing changed; the caller must not treat it as applied.
    BelowWatermark {
        /// The highest purged tombstone's version.
        watermark: u64,
    },
}

/// Why a store call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store is down, throttling or timing out; trying again later may work.
    #[error("the backing store is unavailable: {message}")]
    Unavailable {
        /// What went wrong, in words a user can act on.
        message: String,
        /// How long the store asked us to wait, if it said.
        retry_after: Option<Duration>,
        /// The underlying error, if there is one.
        #[source]
        cause: Option<Cause>,
    },
    /// The request itself cannot succeed (bad data, misconfiguration); retrying will not help.
    #[error("the backing store rejected the request: {message}")]
    Rejected {
        /// What went wrong.
        message: String,
        /// The underlying error, if there is one.
        #[source]
        cause: Option<Cause>,
    },
    /// No usable store is configured (on Azure without a Cosmos DB setting).
    #[error("no backing store is configured: {0}")]
    NotConfigured(String),
}

impl StoreError {
    /// An [`StoreError::Unavailable`] with no retry hint and no underlying error.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable { message: message.into(), retry_after: None, cause: None }
    }

    /// An [`StoreError::Unavailable`] caused by `cause`.
    pub(crate) fn unavailable_because(
        message: impl Into<String>,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Unavailable { message: message.into(), retry_after: None, cause: Some(Arc::new(cause)) }
    }

    /// A [`StoreError::Rejected`] with no underlying error.
    pub fn rejected(message: impl Into<String>) -> Self {
        Self::Rejected { message: message.into(), cause: None }
    }

    /// A [`StoreError::Rejected`] caused by `cause`.
    pub(crate) fn rejected_because(
        message: impl Into<String>,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Rejected { message: message.into(), cause: Some(Arc::new(cause)) }
    }

    /// The same kind of error (and hint and cause) with another message.
    pub fn with_message(self, message: String) -> Self {
        match self {
            Self::Unavailable { retry_after, cause, .. } => Self::Unavailable { message, retry_after, cause },
            Self::Rejected { cause, .. } => Self::Rejected { message, cause },
            Self::NotConfigured(_) => Self::NotConfigured(message),
        }
    }

    /// True when retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }

    /// The wait the store asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Unavailable { retry_after, .. } => *retry_after,
            Self::Rejected { .. } | Self::NotConfigured(_) => None,
        }
    }
}

/// A versioned key-value store. Implementations must be safe to share between tasks.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The record under `key`, tombstones included; `None` if the key was never written.
    async fn get(&self, key: &str) -> Result<Option<Record>, StoreError>;

    /// The records under `keys`, in order (one per key, duplicates included), as [`Store::get`]
    /// reads them; fails as a whole if any read fails. Stores override it to read in batches; by
    /// default, one [`Store::get`] after another.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Record>>, StoreError> {
        let mut found = Vec::with_capacity(keys.len());
        for key in keys {
            found.push(self.get(key).await?);
        }
        Ok(found)
    }

    /// Applies `change` at `version` if and only if `version` is newer than the stored version
    /// (or nothing is stored), atomically with respect to concurrent writers.
    /// The write keeps `options` (tags, TTL) with the item so every later load caches it the same
    /// way (a write without options removes those of the item). Required of every store, so that
    /// no wrapper can drop them by forgetting to pass them on.
    async fn apply_with(
        &self,
        key: &str,
        version: u64,
        change: Change,
        options: &EntryOptions,
    ) -> Result<Applied, StoreError>;

    /// [`Store::apply_with`] without cache options.
    async fn apply(&self, key: &str, version: u64, change: Change) -> Result<Applied, StoreError> {
        self.apply_with(key, version, change, &EntryOptions::NONE).await
    }

    /// A cheap round trip that proves the store answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// `Err(NotConfigured)` when there is no store to write to at all: writes must then be refused
    /// before anything is accepted (write-behind), and queued writes left where they are.
    fn configured(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Proves the store takes writes, with a write of the store's own probe record (never a user
    /// key). For `Health`; by default, a [`Store::ping`].
    async fn probe_write(&self) -> Result<(), StoreError> {
        self.ping().await
    }

    /// Removes tombstones written before `older_than`; returns how many. A key whose tombstone is
    /// purged keeps refusing writes older than it (see the implementations), so purging never lets
    /// a late, older write bring a deleted key back.
    async fn purge_tombstones(&self, older_than: Timestamp) -> Result<u64, StoreError> {
        let _ = older_than;
        Ok(0)
    }

    /// A short name for logs and the health report (`sqlite`, `cosmos`).
    fn kind(&self) -> &'static str;
}
