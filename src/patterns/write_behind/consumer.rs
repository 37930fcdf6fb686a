//! Draining a pull queue (the Redis Stream) in-process.
//!
//! Each round takes a batch from the [`QueueReader`] (messages left unsettled by a consumer that
//! crashed, or that failed transiently, first), applies it with the apply core, and settles a
//! message only once its write is in the store, superseded, or recorded as a dead letter. A message
//! still failing is retried at each redelivery until it has been delivered
//! [`DrainPolicy::max_deliveries`] times and is older than the retry window
//! (`WriteBehindRetryWindowSeconds`); then it becomes a dead letter, as does at once anything that
//! can never be applied. So nothing acknowledged to a caller is lost, a store that is down for a
//! while only delays writes, and nothing blocks the queue.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

use super::DrainPolicy;
use crate::domain::error_chain::Chain;
use crate::patterns::apply::{Applier, ApplyReport, Delivery};
use crate::ports::queue::Pulled;
use crate::ports::{DeadLetters, QueueError, QueueReader};

/// How long the consumer waits before looking again when there is no store to apply to.
const IDLE_WITHOUT_STORE: Duration = Duration::from_secs(1);

/// The in-process consumer of a pull queue.
pub struct QueueConsumer {
    applier: Applier,
    reader: Arc<dyn QueueReader>,
    dead_letters: Arc<dyn DeadLetters>,
    policy: DrainPolicy,
}

impl QueueConsumer {
    /// A consumer applying what `reader` hands it with `applier`.
    pub fn new(
        applier: Applier,
        reader: Arc<dyn QueueReader>,
        dead_letters: Arc<dyn DeadLetters>,
        policy: DrainPolicy,
    ) -> Self {
        Self { applier, reader, dead_letters, policy }
    }

    /// Runs until `shutdown`; a failing queue is retried with exponential back-off (200 ms up to
    /// 10 s). A round in progress is finished first, so no applied write is left unsettled.
    pub async fn run(self, shutdown: CancellationToken) {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(10))
            .without_max_times();
        let mut pauses = backoff.build();
        while !shutdown.is_cancelled() {
            let pause = match self.run_once().await {
                Ok(_) if self.applier.ready().is_err() => IDLE_WITHOUT_STORE,
                Ok(_) => {
                    pauses = backoff.build();
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %Chain(&e), "write-behind consumer: the queue failed; retrying");
                    pauses.next().unwrap_or(Duration::from_secs(10))
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
        tracing::info!("write-behind consumer stopped");
    }

    /// One round: take a batch, apply it, settle what is done. With no store configured nothing is
    /// taken: the messages wait until there is one.
    pub async fn run_once(&self) -> Result<ApplyReport, QueueError> {
        if let Err(e) = self.applier.ready() {
            tracing::debug!(error = %Chain(&e), "write-behind consumer idle: no store to apply to");
            return Ok(ApplyReport::default());
        }
        let batch = self.reader.next_batch().await?;
        if batch.is_empty() {
            return Ok(ApplyReport::default());
        }
        let now = self.applier.now();
        let out_of_retries = |delivery: &Delivery| {
            let old_enough = delivery.enqueued_at.is_none_or(|at| now.since(at) >= self.policy.retry_window);
            delivery.deliveries >= self.policy.max_deliveries && old_enough
        };
        let deliveries: Vec<Delivery> = batch.iter().map(|message| self.delivery(message)).collect();
        let mut done: Vec<String> = Vec::new();
        let mut to_apply: Vec<usize> = Vec::new();
        for (index, delivery) in deliveries.iter().enumerate() {
            // Delivered over and over without ever settling (its consumer crashes on it): give up
            // without another attempt. Anything else gets one more try before it is given up.
            if delivery.deliveries > 2 * self.policy.max_deliveries && out_of_retries(delivery) {
                let reason = format!("not settled after {} deliveries", delivery.deliveries - 1);
                let recorded =
                    self.applier.dead_letter(&*self.dead_letters, delivery, &reason, delivery.deliveries).await;
                if recorded.is_ok() {
                    done.push(batch[index].id.clone());
                }
            } else {
                to_apply.push(index);
            }
        }
        let applying: Vec<Delivery> = to_apply.iter().map(|&i| deliveries[i].clone()).collect();
        let settled = self
            .applier
            .apply_and_settle(&applying, self.policy.apply, &*self.dead_letters, |d| !out_of_retries(d))
            .await;
        done.extend(settled.done.iter().map(|&i| batch[to_apply[i]].id.clone()));
        for (i, reason) in &settled.retry {
            let message = &batch[to_apply[*i]];
            tracing::warn!(id = %message.id, deliveries = message.deliveries, reason = ?reason, "write-behind entry not applied yet; it will be retried");
        }
        if !done.is_empty() {
            self.reader.settle(&done).await?;
        }
        let report = settled.report;
        tracing::info!(
            events = report.events,
            keys = report.keys,
            applied = report.applied,
            stale_skipped = report.stale_skipped,
            failed = report.failed,
            poison = report.poison,
            "write-behind batch applied"
        );
        Ok(report)
    }

    fn delivery(&self, message: &Pulled) -> Delivery {
        Delivery {
            raw: message.raw.clone(),
            source: self.reader.source_of(message),
            deliveries: message.deliveries,
            enqueued_at: message.enqueued_at,
        }
    }
}
