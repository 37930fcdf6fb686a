//! The write-behind queue: where accepted writes wait until they are applied to the store.
//!
//! [`WriteQueue::publish`] returns only once the queue has durably accepted the event (Event Hubs
//! confirmed the send; Redis acknowledged the `XADD`), which is what lets the Write-Behind function
//! answer `202`. Two implementations: [`redis_streams`] (the default, drained in-process) and
//! Event Hubs (behind the `eventhubs` cargo feature, drained by the `EventHubConsumer` function).
//! Events of one key always go to one partition (partition key = cache key), so they stay in order;
//! the versions they carry make duplicates and reordering harmless anyway.

pub mod dead_letter;
pub mod event;
pub mod eventhubs;
pub mod migrate;
pub mod redis_streams;

pub use event::{EventError, Op, WriteEvent};

use std::time::Duration;

use async_trait::async_trait;

/// Why a publish failed. Nothing was accepted: the caller must not report success.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    /// The queue is unreachable or refused the event for now.
    #[error("the write-behind queue is unavailable: {message}")]
    Unavailable {
        /// What went wrong.
        message: String,
        /// How long to wait before trying again, if known.
        retry_after: Option<Duration>,
    },
    /// The event is larger than the queue takes in one message.
    #[error("{0}")]
    TooLarge(String),
    /// The event can never be accepted (misconfiguration, missing permissions).
    #[error("the write-behind queue rejected the event: {0}")]
    Rejected(String),
}

impl QueueError {
    /// An `Unavailable` error without a retry hint.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable { message: message.into(), retry_after: None }
    }
}

/// A durable queue of write events.
#[async_trait]
pub trait WriteQueue: Send + Sync + 'static {
    /// Publishes one event; `Ok` means durably accepted.
    async fn publish(&self, event: &WriteEvent) -> Result<(), QueueError>;

    /// A cheap check that the queue answers and can take writes (for `Health`).
    async fn ping(&self) -> Result<(), QueueError>;

    /// What is waiting to be applied, when the queue can tell (for `Health`).
    async fn backlog(&self) -> Result<Option<Backlog>, QueueError> {
        Ok(None)
    }

    /// A short name for logs and the health report (`redis-streams`, `eventhubs`).
    fn kind(&self) -> &'static str;
}

/// What is waiting in the write-behind stream (for `Health`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Backlog {
    /// Entries in the stream (not yet applied, or being applied).
    pub length: u64,
    /// Entries delivered to a consumer and not yet settled.
    pub pending: u64,
    /// When the oldest entry was accepted (ms since the epoch), if any.
    pub oldest_ms: Option<u64>,
}
