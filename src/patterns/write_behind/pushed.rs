//! Applying batches the host pushes (Event Hubs, through `EventHubConsumer`).
//!
//! The Event Hubs trigger checkpoints even failed batches once its retry policy is done, so nothing
//! is left for a redelivery after that:
//! * poison (never applicable) becomes a dead letter at once;
//! * a write the store refused for now (down, full disk, throttling) fails the batch, so that the
//!   host's retry policy (unbounded, exponential) runs it again (applying is idempotent), until the
//!   batch is older than `WriteBehindRetryWindowSeconds` (by its events' enqueued times), or the
//!   policy's last retry has come: then what still fails becomes a dead letter;
//! * when a dead letter cannot be recorded (Redis down) the batch fails, to be run again.

use std::sync::Arc;

use super::DrainPolicy;
use crate::domain::time::Timestamp;
use crate::patterns::apply::{Applier, ApplyReport, Delivery};
use crate::ports::dead_letters::{DeadLetterId, Failed};
use crate::ports::{CacheError, DeadLetters, StoreError};

/// Without an enqueued time (a portal test run), a batch is retried this many times at most.
const RETRIES_WITHOUT_ENQUEUED_TIME: i64 = 5;

/// A batch the host pushed, with what it says about the batch's retries.
#[derive(Debug, Clone, Default)]
pub(crate) struct PushedBatch {
    /// The events, in order.
    pub deliveries: Vec<Delivery>,
    /// The retry policy's progress: (retry count, max retry count; -1 is unbounded).
    pub retry: Option<(i64, i64)>,
    /// When the oldest event of the batch was enqueued, if the host says.
    pub oldest_enqueued: Option<Timestamp>,
}

/// What a pushed batch came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PushedOutcome {
    /// The counts.
    pub report: ApplyReport,
    /// How many events were recorded as dead letters.
    pub dead_lettered: usize,
}

/// Why a pushed batch must be run again (the host's retry policy does it).
#[derive(Debug, Clone, thiserror::Error)]
pub enum RunAgain {
    /// There is no store to apply to: keep the batch for when there is one.
    #[error("not applied, kept for a retry")]
    NoStore(#[source] StoreError),
    /// Some writes failed for now and may still be retried.
    #[error(
        "{count} writes could not be applied yet ({first}); failing the invocation so that the retry policy runs the batch again"
    )]
    NotYetApplied {
        /// How many.
        count: usize,
        /// The first reason.
        first: String,
    },
    /// Some events could neither be applied nor recorded as dead letters.
    #[error(
        "{count} events could neither be applied nor dead-lettered ({details}); failing the invocation so that the retry policy runs it again"
    )]
    Unrecorded {
        /// How many.
        count: usize,
        /// Which, and why.
        details: String,
    },
}

/// Applies pushed batches. Cheap to clone.
#[derive(Clone)]
pub struct PushedBatches {
    applier: Applier,
    dead_letters: Arc<dyn DeadLetters>,
    policy: DrainPolicy,
}

impl PushedBatches {
    pub(crate) fn new(applier: Applier, dead_letters: Arc<dyn DeadLetters>, policy: DrainPolicy) -> Self {
        Self { applier, dead_letters, policy }
    }

    /// Applies `batch`; `Err` asks for the whole batch to be run again.
    pub(crate) async fn apply(&self, batch: &PushedBatch) -> Result<PushedOutcome, RunAgain> {
        self.applier.ready().map_err(RunAgain::NoStore)?;
        let may_retry = self.may_retry(batch);
        let settled = self
            .applier
            .apply_and_settle(&batch.deliveries, self.policy.apply, &*self.dead_letters, |_| may_retry)
            .await;
        tracing::info!(
            events = settled.report.events,
            applied = settled.report.applied,
            dead_lettered = settled.dead_lettered,
            "Event Hubs batch applied"
        );
        if let Some((_, first)) = settled.retry.first() {
            return Err(RunAgain::NotYetApplied { count: settled.retry.len(), first: first.clone() });
        }
        if !settled.unrecorded.is_empty() {
            let details = settled
                .unrecorded
                .iter()
                .map(|(i, why)| format!("{}: {why}", batch.deliveries[*i].source))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(RunAgain::Unrecorded { count: settled.unrecorded.len(), details });
        }
        Ok(PushedOutcome { report: settled.report, dead_lettered: settled.dead_lettered })
    }

    /// Keeps an invocation that could not even be read (a broken envelope) as a dead letter, so it
    /// is neither retried for ever nor dropped; `kept` is what could be kept of it.
    pub(crate) async fn keep_unreadable(
        &self,
        kept: &str,
        reason: &str,
        source: &str,
    ) -> Result<DeadLetterId, CacheError> {
        let id = self.dead_letters.record(Failed { event: kept, reason, source, attempts: 1 }).await?;
        tracing::warn!(%id, source, "unreadable invocation kept as a dead letter");
        Ok(id)
    }

    /// Whether transient failures may still be retried by running the batch again.
    fn may_retry(&self, batch: &PushedBatch) -> bool {
        let last_retry = matches!(batch.retry, Some((count, max)) if max >= 0 && count >= max);
        let within_window = match batch.oldest_enqueued {
            Some(enqueued) => self.applier.now().since(enqueued) < self.policy.retry_window,
            None => batch.retry.is_none_or(|(count, _)| count < RETRIES_WITHOUT_ENQUEUED_TIME),
        };
        !last_retry && within_window
    }
}
