//! The write-behind queue port: where accepted writes wait until they are applied to the store.
//!
//! [`WriteQueue::publish`] returns only once the queue has durably accepted the event (Event Hubs
//! confirmed the send; Redis acknowledged the `XADD`), which is what lets the Write-Behind function
//! answer `202`. Two adapters: the Redis Stream (the default, drained in-process through
//! [`QueueReader`]) and Event Hubs (behind the `eventhubs` cargo feature, drained by the
//! `EventHubConsumer` function, which the host pushes batches to). Events of one key always go to
//! one partition (partition key = cache key), so they stay in order; the versions they carry make
//! duplicates and reordering harmless anyway.

use std::time::Duration;

use async_trait::async_trait;

use super::Cause;
use crate::domain::time::Timestamp;
use crate::domain::write_event::WriteEvent;

/// Why a queue call failed. For a publish: nothing was accepted, the caller must not report success.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    /// The queue is unreachable or refused the event for now.
    #[error("the write-behind queue is unavailable: {message}")]
    Unavailable {
        /// What went wrong.
        message: String,
        /// How long to wait before trying again, if known.
        retry_after: Option<Duration>,
        /// The underlying error, if there is one.
        #[source]
        cause: Option<Cause>,
    },
    /// The event is larger than the queue takes in one message.
    #[error("{0}")]
    TooLarge(String),
    /// The event can never be accepted (misconfiguration, missing permissions).
    #[error("the write-behind queue rejected the event: {message}")]
    Rejected {
        /// What went wrong.
        message: String,
        /// The underlying error, if there is one.
        #[source]
        cause: Option<Cause>,
    },
}

impl QueueError {
    /// An `Unavailable` error without a retry hint or an underlying error.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable { message: message.into(), retry_after: None, cause: None }
    }

    /// A `Rejected` error without an underlying error.
    pub fn rejected(message: impl Into<String>) -> Self {
        Self::Rejected { message: message.into(), cause: None }
    }
}

/// The producing end: a durable queue of write events.
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

/// What is waiting in the queue (for `Health`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    /// Messages in the queue (not yet applied, or being applied).
    pub length: u64,
    /// Messages delivered to a consumer and not yet settled.
    pub pending: u64,
    /// When the oldest message was accepted, if there is one.
    pub oldest: Option<Timestamp>,
}

/// A message a pull queue handed to this consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// The queue's id of the message (what [`QueueReader::settle`] takes).
    pub id: String,
    /// The message text (the event's JSON, if it is well formed; empty if it had none).
    pub raw: String,
    /// How many times it has been delivered, this time included.
    pub deliveries: u64,
    /// When the queue accepted it, if the queue says.
    pub enqueued_at: Option<Timestamp>,
}

/// The consuming end of a pull queue (the Redis Stream): messages are delivered until settled, so
/// one a consumer crashed on, or could not apply yet, is delivered again.
#[async_trait]
pub trait QueueReader: Send + Sync + 'static {
    /// The next batch: messages another consumer left unsettled for a while first, else new ones
    /// (waiting a little for them). Empty when there is nothing to do.
    async fn next_batch(&self) -> Result<Vec<Pulled>, QueueError>;

    /// Settles messages (applied, superseded or dead-lettered): they are never delivered again.
    async fn settle(&self, ids: &[String]) -> Result<(), QueueError>;

    /// Where a message came from, for logs and dead letters.
    fn source_of(&self, message: &Pulled) -> String;
}
