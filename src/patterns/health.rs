//! Health: what users depend on, checked for real, within about two seconds.
//!
//! * The cache: a round trip under the cache's deadline.
//! * The store: a real write (the store's own probe record, never a user key), so a full disk, a
//!   removed database file or a throttled account shows as down even while reads still work; and
//!   down too while user writes have been failing in the last 30 s (a small probe may still fit on
//!   a full disk).
//! * The write-behind queue: that it can take writes (e.g. the stream key is a stream), its backlog
//!   (down when the oldest queued write has waited over 15 minutes) and the number of dead letters.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Core;
use crate::domain::error_chain::Chain;
use crate::ports::queue::Backlog;
use crate::ports::{DeadLetters, WriteQueue};

/// The longest any one probe may take; they run at once, so a check answers within about this.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);
/// A store write that failed this recently, with none succeeding since, makes the store "down".
const RECENT_WRITE_FAILURE: Duration = Duration::from_secs(30);
/// A queued write older than this makes the queue "down": a healthy consumer applies in seconds.
const STUCK_BACKLOG: Duration = Duration::from_secs(15 * 60);

/// One dependency's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Probe {
    /// Whether it works.
    pub up: bool,
    /// What it is: the cache's target, the store's or queue's kind.
    pub name: String,
    /// How long the probe took, when it answered.
    pub latency: Option<Duration>,
    /// Why it is down.
    pub error: Option<String>,
}

/// The queue's state, with what waits in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QueueProbe {
    /// Whether it takes writes and is drained.
    pub probe: Probe,
    /// What is waiting, when the queue can tell.
    pub backlog: Option<Backlog>,
    /// How many dead letters there are, when they can be counted.
    pub dead_letters: Option<u64>,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HealthReport {
    /// The cache.
    pub cache: Probe,
    /// The store.
    pub store: Probe,
    /// The write-behind queue.
    pub queue: QueueProbe,
    /// Whether the near cache serves (`None`: it is off). Not part of "healthy": without it reads
    /// go to Redis, slower but correct.
    pub near_cache_live: Option<bool>,
    /// Invalidations waiting for Redis.
    pub pending_invalidations: usize,
}

impl HealthReport {
    /// True when every dependency is up.
    pub(crate) fn healthy(&self) -> bool {
        self.cache.up && self.store.up && self.queue.probe.up
    }
}

/// The health probes. Cheap to clone.
#[derive(Clone)]
pub struct HealthCheck {
    core: Arc<Core>,
    queue: Arc<dyn WriteQueue>,
    dead_letters: Arc<dyn DeadLetters>,
}

async fn bounded<T>(probe: impl std::future::Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(PROBE_TIMEOUT, probe).await.map_err(|_| format!("no answer within {PROBE_TIMEOUT:?}"))
}

fn down(name: &str, error: String) -> Probe {
    Probe { up: false, name: name.to_string(), latency: None, error: Some(error) }
}

impl HealthCheck {
    pub(crate) fn new(core: Arc<Core>, queue: Arc<dyn WriteQueue>, dead_letters: Arc<dyn DeadLetters>) -> Self {
        Self { core, queue, dead_letters }
    }

    /// Probes the cache, the store and the queue at once.
    pub(crate) async fn check(&self) -> HealthReport {
        let (cache, store, queue) = tokio::join!(self.cache(), self.store(), self.queue());
        HealthReport {
            cache,
            store,
            queue,
            near_cache_live: self.core.cache.near_cache_live(),
            pending_invalidations: self.core.recovery.len(),
        }
    }

    /// Samples the write-behind backlog for `write_behind.backlog`.
    pub(crate) async fn sample_backlog(&self) {
        if let Ok(Ok(Some(backlog))) = bounded(self.queue.backlog()).await {
            crate::telemetry::metrics().set_backlog(backlog.length);
        }
    }

    async fn cache(&self) -> Probe {
        let target = self.core.cache.describe();
        match bounded(self.core.cache.ping()).await {
            Ok(Ok(latency)) => Probe { up: true, name: target.to_string(), latency: Some(latency), error: None },
            Ok(Err(e)) => down(target, Chain(&e).to_string()),
            Err(e) => down(target, e),
        }
    }

    async fn store(&self) -> Probe {
        let store = &self.core.store;
        let started = Instant::now();
        match bounded(store.probe_write()).await {
            Ok(Ok(())) => match self.core.write_health.failing_within(RECENT_WRITE_FAILURE) {
                Some(why) => down(store.kind(), format!("writes are failing: {why}")),
                None => {
                    Probe { up: true, name: store.kind().to_string(), latency: Some(started.elapsed()), error: None }
                }
            },
            Ok(Err(e)) => down(store.kind(), Chain(&e).to_string()),
            Err(e) => down(store.kind(), e),
        }
    }

    async fn queue(&self) -> QueueProbe {
        let kind = self.queue.kind();
        let (ping, backlog, dead_letters) =
            tokio::join!(bounded(self.queue.ping()), bounded(self.queue.backlog()), bounded(self.dead_letters.count()));
        let backlog = backlog.ok().and_then(Result::ok).flatten();
        let dead_letters = dead_letters.ok().and_then(Result::ok);
        let probe = match ping {
            Ok(Ok(())) => {
                // A write waiting this long means the consumer is stuck, or the store keeps failing.
                let waited = backlog.and_then(|b| b.oldest).map(|oldest| self.core.now().since(oldest));
                match waited.filter(|waited| *waited > STUCK_BACKLOG) {
                    Some(waited) => down(
                        kind,
                        format!(
                            "the oldest queued write has waited {} s (more than {} s): is the consumer running, is the store taking writes?",
                            waited.as_secs(),
                            STUCK_BACKLOG.as_secs()
                        ),
                    ),
                    None => Probe { up: true, name: kind.to_string(), latency: None, error: None },
                }
            }
            Ok(Err(e)) => down(kind, Chain(&e).to_string()),
            Err(e) => down(kind, e),
        };
        QueueProbe { probe, backlog, dead_letters }
    }
}
