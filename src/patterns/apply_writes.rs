//! Applying queued writes to the store: the core shared by `EventHubConsumer` and the in-process
//! Redis Streams consumer.
//!
//! A batch is coalesced to the newest version per key (older writes of a key are superseded), keys
//! are applied concurrently up to a bound, each with a versioned store write (so old, duplicated or
//! reordered events are no-ops), transient store failures are retried with exponential back-off
//! inside a time budget, and after a write is applied the cache entry is refreshed unless the cache
//! already holds something newer. What happens to failures (dead-letter now, or leave for
//! redelivery) is the caller's choice: it gets one [`Outcome`] per delivery.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::Patterns;
use crate::key::Key;
use crate::queue::{EventError, Op, WriteEvent};
use crate::store::{Applied, Change};

/// A message as a queue delivered it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The message text (the event's JSON, if it is well formed).
    pub raw: String,
    /// Where it came from, for logs and dead letters (stream id, partition and sequence number).
    pub source: String,
    /// How many times it has been delivered (1 on the first delivery).
    pub deliveries: u64,
}

/// What happened to one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Its write is now in the store.
    Applied,
    /// The store already held this version or a newer one (a duplicate or a late event).
    Stale,
    /// A newer write of the same key in the batch made this one unnecessary.
    Superseded,
    /// The store did not take it.
    Failed {
        /// The last error.
        reason: String,
        /// True when retrying later may work.
        transient: bool,
        /// Store attempts made.
        attempts: u64,
    },
    /// Not a usable event; it can never be applied.
    Poison {
        /// Why.
        reason: String,
    },
}

impl Outcome {
    /// True when the delivery needs nothing more (it can be acknowledged).
    pub fn is_done(&self) -> bool {
        matches!(self, Self::Applied | Self::Stale | Self::Superseded)
    }
}

/// Counts for one batch, for the invocation's `Logs`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Deliveries in the batch.
    pub events: usize,
    /// Distinct keys among the usable events.
    pub keys: usize,
    /// Keys whose newest write was applied.
    pub applied: usize,
    /// Deliveries that were old or duplicated (store already newer) or superseded in the batch.
    pub stale_skipped: usize,
    /// Keys that failed.
    pub failed: usize,
    /// Deliveries that were not usable events.
    pub poison: usize,
}

/// How a batch is applied.
#[derive(Debug, Clone, Copy)]
pub struct ApplyOptions {
    /// Keys applied at the same time.
    pub concurrency: usize,
    /// Time within which transient failures are retried.
    pub budget: Duration,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        Self { concurrency: 16, budget: Duration::from_secs(20) }
    }
}

impl Patterns {
    /// Applies a batch of deliveries; returns one outcome per delivery (same order) and the counts.
    pub async fn apply_deliveries(
        &self,
        deliveries: &[Delivery],
        options: ApplyOptions,
    ) -> (Vec<Outcome>, ApplyReport) {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; deliveries.len()];
        // Newest delivery index per key.
        let mut newest: HashMap<String, (usize, WriteEvent, Key)> = HashMap::new();
        let mut parsed_keys: Vec<Option<String>> = vec![None; deliveries.len()];
        let now = self.now();
        for (i, delivery) in deliveries.iter().enumerate() {
            let parsed = WriteEvent::parse(&delivery.raw).and_then(|event| event.key().map(|key| (event, key)));
            // A version no sane clock issued would block every later write of the key (and,
            // followed, every write of the instance): it is never applied.
            let parsed = parsed.and_then(|(event, key)| match crate::version::is_plausible(event.version, now) {
                Ok(()) => Ok((event, key)),
                Err(why) => Err(EventError::ImplausibleVersion(why)),
            });
            match parsed {
                Err(e) => outcomes[i] = Some(Outcome::Poison { reason: e.to_string() }),
                Ok((event, key)) => {
                    parsed_keys[i] = Some(event.key.clone());
                    match newest.get(&event.key) {
                        Some((_, current, _)) if current.version > event.version => {}
                        _ => {
                            newest.insert(event.key.clone(), (i, event, key));
                        }
                    }
                }
            }
        }
        let mut report = ApplyReport {
            events: deliveries.len(),
            keys: newest.len(),
            poison: outcomes.iter().flatten().count(),
            ..Default::default()
        };

        let deadline = Instant::now() + options.budget;
        let permits = Arc::new(Semaphore::new(options.concurrency.max(1)));
        let mut tasks = JoinSet::new();
        for (key_text, (index, event, key)) in newest.iter().map(|(k, v)| (k.clone(), v.clone())) {
            let patterns = self.clone();
            let permits = permits.clone();
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await;
                (key_text, index, patterns.apply_event(&key, &event, deadline).await)
            });
        }
        let mut by_key: HashMap<String, (usize, Outcome)> = HashMap::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((key, index, outcome)) => {
                    by_key.insert(key, (index, outcome));
                }
                Err(e) => tracing::error!(error = %e, "an apply task failed"),
            }
        }
        for (i, slot) in outcomes.iter_mut().enumerate() {
            if slot.is_some() {
                continue;
            }
            let key = parsed_keys[i].as_deref().unwrap_or_default();
            *slot = Some(match by_key.get(key) {
                Some((newest_index, outcome)) if *newest_index == i => outcome.clone(),
                Some(_) => Outcome::Superseded,
                None => {
                    Outcome::Failed { reason: "the apply task did not finish".into(), transient: true, attempts: 0 }
                }
            });
        }
        let outcomes: Vec<Outcome> = outcomes.into_iter().map(|o| o.unwrap_or(Outcome::Superseded)).collect();
        for outcome in &outcomes {
            match outcome {
                Outcome::Applied => report.applied += 1,
                Outcome::Stale | Outcome::Superseded => report.stale_skipped += 1,
                Outcome::Failed { .. } => report.failed += 1,
                Outcome::Poison { .. } => {}
            }
        }
        (outcomes, report)
    }

    /// Applies one event: versioned store write with retries, then a never-older cache refresh.
    async fn apply_event(&self, key: &Key, event: &WriteEvent, deadline: Instant) -> Outcome {
        let change = match (event.op, &event.value) {
            (Op::Upsert, Some(value)) => Change::Upsert(value.clone()),
            (Op::Upsert, None) => return Outcome::Poison { reason: "an upsert event has no value".into() },
            (Op::Delete, _) => Change::Delete,
        };
        let mut pause = Duration::from_millis(50);
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.store_apply(key, event.version, change.clone(), "applying a queued write").await {
                Ok(Applied::Yes) => {
                    // Plausible by now (checked when the batch was read).
                    let _ = self.clock.observe(event.version);
                    let entry = match &change {
                        Change::Upsert(value) => self.policy.value_entry(value.clone(), event.version, self.now()),
                        Change::Delete => self.policy.negative_entry(event.version, self.now()),
                    };
                    self.cache_quietly(key, &entry).await;
                    return Outcome::Applied;
                }
                Ok(Applied::BelowWatermark { watermark }) => {
                    return Outcome::Failed {
                        reason: format!(
                            "the key has no record and this write (version {}) is older than the newest purged tombstone (version {watermark}): it is older than TombstoneRetentionSeconds, so whether a later write superseded it is unknown; write it again if it must be applied",
                            event.version
                        ),
                        transient: false,
                        attempts,
                    };
                }
                Ok(Applied::Stale { current }) => {
                    tracing::debug!(key = ?key.as_str(), version = event.version, current, "queued write is older than the store; skipped");
                    return Outcome::Stale;
                }
                Err(e) if e.is_transient() && Instant::now() + pause < deadline => {
                    tracing::debug!(key = ?key.as_str(), attempts, error = %e, "store failed; retrying the queued write");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Outcome::Failed { reason: e.to_string(), transient: e.is_transient(), attempts },
            }
        }
    }
}
