//! Applying queued writes to the store, and settling what could not be applied: the core shared
//! by the in-process Redis Stream consumer and `EventHubConsumer`.
//!
//! A batch is coalesced to the newest version per key (older writes of a key are superseded), keys
//! are applied concurrently up to a bound, each with a versioned store write (so old, duplicated or
//! reordered events change nothing in the store), transient store failures are retried with
//! exponential back-off inside a time budget, and after a write is applied the cache entry is
//! refreshed unless the cache already holds something newer. An event delivered again whose
//! version the store already holds is cached again: its first delivery may have been cut between
//! the store and the cache. Then [`Applier::apply_and_settle`] decides per delivery: done,
//! kept for a later retry (the caller's retry policy says whether it may be), or recorded as a
//! dead letter; nothing is dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::Core;
use crate::domain::error_chain::Chain;
use crate::domain::key::Key;
use crate::domain::options::EntryOptions;
use crate::domain::time::Timestamp;
use crate::domain::version::{Implausible, is_plausible};
use crate::domain::write_event::{EventError, Op, WriteEvent};
use crate::ports::DeadLetters;
use crate::ports::cache::Eviction;
use crate::ports::dead_letters::Failed;
use crate::ports::store::{Applied, Change};

/// A message as a queue delivered it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The message text (the event's JSON, if it is well formed).
    pub raw: String,
    /// Where it came from, for logs and dead letters (stream id, partition and sequence number).
    pub source: String,
    /// How many times it has been delivered (1 on the first delivery).
    pub deliveries: u64,
    /// When the queue accepted it, if known.
    pub enqueued_at: Option<Timestamp>,
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
    pub(crate) fn is_done(&self) -> bool {
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// The apply core. Cheap to clone.
#[derive(Clone)]
pub struct Applier {
    core: Arc<Core>,
}

/// How a batch was settled, delivery by delivery (indices into the batch).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Settled {
    /// The counts.
    pub report: ApplyReport,
    /// Deliveries that need nothing more: applied, stale, superseded, or recorded as dead letters.
    pub done: Vec<usize>,
    /// Transient failures kept for a later retry, with the reason.
    pub retry: Vec<(usize, String)>,
    /// Deliveries that could neither be applied nor recorded as dead letters, with the reason.
    pub unrecorded: Vec<(usize, String)>,
    /// How many were recorded as dead letters.
    pub dead_lettered: usize,
}

impl Applier {
    pub(crate) fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    /// Now, from the injected time source.
    pub(crate) fn now(&self) -> Timestamp {
        self.core.now()
    }

    /// Whether there is a store to apply to at all (`Err` without one: leave the writes queued).
    pub(crate) fn ready(&self) -> Result<(), crate::ports::StoreError> {
        self.core.store.configured()
    }

    /// Applies a batch, then settles each delivery: what failed for good, and what failed for now
    /// when `may_retry` says it may not be retried any more, is recorded in `dead_letters`.
    pub(crate) async fn apply_and_settle(
        &self,
        deliveries: &[Delivery],
        options: ApplyOptions,
        dead_letters: &dyn DeadLetters,
        may_retry: impl Fn(&Delivery) -> bool,
    ) -> Settled {
        let (outcomes, report) = self.apply(deliveries, options).await;
        let mut settled = Settled { report, ..Settled::default() };
        for (index, (delivery, outcome)) in deliveries.iter().zip(&outcomes).enumerate() {
            let (reason, attempts) = match outcome {
                o if o.is_done() => {
                    settled.done.push(index);
                    continue;
                }
                Outcome::Poison { reason } => (reason.clone(), delivery.deliveries),
                Outcome::Failed { reason, transient: true, .. } if may_retry(delivery) => {
                    settled.retry.push((index, reason.clone()));
                    continue;
                }
                Outcome::Failed { reason, .. } => (reason.clone(), delivery.deliveries),
                _ => continue,
            };
            match self.dead_letter(dead_letters, delivery, &reason, attempts).await {
                Ok(()) => {
                    settled.done.push(index);
                    settled.dead_lettered += 1;
                    crate::telemetry::metrics().write_behind("dead_lettered", 1);
                }
                Err(why) => settled.unrecorded.push((index, why)),
            }
        }
        settled
    }

    /// Records `delivery` as a dead letter; the error says why it could not be.
    pub(crate) async fn dead_letter(
        &self,
        dead_letters: &dyn DeadLetters,
        delivery: &Delivery,
        reason: &str,
        attempts: u64,
    ) -> Result<(), String> {
        let failed = Failed { event: &delivery.raw, reason, source: &delivery.source, attempts };
        match dead_letters.record(failed).await {
            Ok(id) => {
                tracing::warn!(id = %id, source = ?delivery.source, reason = ?reason, "write dead-lettered");
                Ok(())
            }
            Err(e) => {
                tracing::error!(source = ?delivery.source, error = %crate::domain::error_chain::Chain(&e), "could not record a dead letter; the write is kept");
                Err(Chain(&e).to_string())
            }
        }
    }

    /// Applies a batch of deliveries; returns one outcome per delivery (same order) and the counts.
    pub async fn apply(&self, deliveries: &[Delivery], options: ApplyOptions) -> (Vec<Outcome>, ApplyReport) {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; deliveries.len()];
        // Newest delivery index per key.
        let mut newest: HashMap<String, (usize, WriteEvent, Key)> = HashMap::new();
        let mut parsed_keys: Vec<Option<String>> = vec![None; deliveries.len()];
        let now = self.core.now();
        for (i, delivery) in deliveries.iter().enumerate() {
            let parsed = WriteEvent::parse(&delivery.raw).and_then(|event| event.key().map(|key| (event, key)));
            // A version no sane clock issued would block every later write of the key (and,
            // followed, every write of the instance): it is never applied.
            let parsed = parsed.and_then(|(event, key)| match is_plausible(event.version, now) {
                Ok(()) => Ok((event, key)),
                Err(why) => Err(EventError::ImplausibleVersion(why)),
            });
            match parsed {
                Err(e) => outcomes[i] = Some(Outcome::Poison { reason: Chain(&e).to_string() }),
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
            let applier = self.clone();
            let permits = permits.clone();
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await;
                (key_text, index, applier.apply_event(&key, &event, deadline).await)
            });
        }
        let mut by_key: HashMap<String, (usize, Outcome)> = HashMap::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((key, index, outcome)) => {
                    by_key.insert(key, (index, outcome));
                }
                Err(e) => tracing::error!(error = %Chain(&e), "an apply task failed"),
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
        let (mut superseded, mut stale) = (0, 0);
        for outcome in &outcomes {
            match outcome {
                Outcome::Applied => report.applied += 1,
                Outcome::Stale => stale += 1,
                Outcome::Superseded => superseded += 1,
                Outcome::Failed { .. } => report.failed += 1,
                Outcome::Poison { .. } => {}
            }
        }
        report.stale_skipped = stale + superseded;
        let metrics = crate::telemetry::metrics();
        metrics.write_behind("applied", report.applied as u64);
        metrics.write_behind("coalesced", superseded as u64);
        metrics.write_behind("stale", stale as u64);
        metrics.write_behind("failed", report.failed as u64);
        (outcomes, report)
    }

    /// A write the store refused because it holds an implausible version of the key (far in the
    /// future, or past what stores hold): no write can be newer, so it is not stale but can never be
    /// applied. It fails for good (it is dead-lettered, with the reason), and the cache entry it
    /// may have put there when it was accepted is evicted, value and all, so that reads answer what
    /// the store holds.
    async fn refused_by_implausible(
        &self,
        key: &Key,
        event: &WriteEvent,
        current: u64,
        why: Implausible,
        attempts: u64,
    ) -> Outcome {
        let core = &self.core;
        tracing::error!(key = ?key.as_str(), version = event.version, current, reason = %why, "the store holds an implausible version of this key; the queued write cannot be applied");
        let eviction = Eviction { stamp: None, below_version: Some(event.version.saturating_add(1)), hard: true };
        if let Err(e) = core.cache.evict(key.as_str(), &eviction, core.now()).await {
            tracing::warn!(key = ?key.as_str(), error = %Chain(&e), "could not evict the key; it is evicted when Redis answers again");
            core.recovery.evict_later(key.as_str(), eviction);
        }
        Outcome::Failed {
            reason: format!(
                "the store holds version {current} of this key, which is implausible ({why}); no write to the key can be applied until the stored item is repaired (write-through refuses such writes too)"
            ),
            transient: false,
            attempts,
        }
    }

    /// Applies one event: versioned store write with retries, then a never-older cache refresh.
    async fn apply_event(&self, key: &Key, event: &WriteEvent, deadline: Instant) -> Outcome {
        let change = match (event.op, &event.value) {
            (Op::Upsert, Some(value)) => Change::Upsert(value.clone()),
            (Op::Upsert, None) => return Outcome::Poison { reason: "an upsert event has no value".into() },
            (Op::Delete, _) => Change::Delete,
        };
        let core = &self.core;
        let options = event.options();
        // Exponential back-off for transient store failures, within the batch's time budget.
        let mut pauses = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(2))
            .without_max_times()
            .build();
        let mut attempts = 0;
        loop {
            attempts += 1;
            match core.store_apply(key, event.version, change.clone(), &options, "applying a queued write").await {
                Ok(Applied::Yes) => {
                    // Plausible by now (checked when the batch was read).
                    let _ = core.versions.observe(event.version);
                    cache_applied(core, key, event.version, &change, &options).await;
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
                    if let Err(why) = is_plausible(current, core.now()) {
                        return self.refused_by_implausible(key, event, current, why, attempts).await;
                    }
                    if current == event.version {
                        // This very write, delivered again: the store took it on an earlier
                        // delivery whose cache step may never have run (a crash, a stop, an
                        // invocation the host cut). Its value is the key's, so it is cached; the
                        // cache keeps anything newer.
                        cache_applied(core, key, event.version, &change, &options).await;
                    }
                    tracing::debug!(key = ?key.as_str(), version = event.version, current, "queued write is not newer than the store; skipped");
                    return Outcome::Stale;
                }
                Err(e) if e.is_transient() => {
                    let Some(pause) = pauses.next().filter(|pause| Instant::now() + *pause < deadline) else {
                        return Outcome::Failed { reason: Chain(&e).to_string(), transient: true, attempts };
                    };
                    tracing::debug!(key = ?key.as_str(), attempts, error = %Chain(&e), "store failed; retrying the queued write");
                    tokio::time::sleep(pause).await;
                }
                Err(e) => {
                    return Outcome::Failed { reason: Chain(&e).to_string(), transient: e.is_transient(), attempts };
                }
            }
        }
    }
}

/// Caches what the store holds after `change` was applied at `version`; the cache keeps anything
/// newer.
async fn cache_applied(core: &Core, key: &Key, version: u64, change: &Change, options: &EntryOptions) {
    let value = match change {
        Change::Upsert(value) => Some(value.clone()),
        Change::Delete => None,
    };
    let entry = core.policy.entry_with(value, version, core.now(), options, version);
    core.cache_write(key, &entry).await;
}
