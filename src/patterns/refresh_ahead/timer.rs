//! The refresh-ahead timer (`RefreshAhead`): the hottest keys whose entries will turn stale before
//! the next run are refreshed in bounded parallel batches, under a per-tick lease so that one
//! instance does it per tick.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{RefreshAhead, Refreshed, Schedule};
use crate::domain::error_chain::Chain;
use crate::domain::key::Key;
use crate::domain::time::Timestamp;
use crate::ports::cache::EntryMeta;
use crate::ports::leases::LeaseName;
use crate::ports::{CacheError, LockToken};

/// When a timer run happens and what it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimerPlan {
    /// The schedule occurrence this run belongs to: the name of the per-tick lease.
    pub tick: Timestamp,
    /// When the timer runs next.
    pub next_run: Timestamp,
    /// Entries that turn stale before this moment are refreshed.
    pub horizon: Timestamp,
}

impl TimerPlan {
    /// Plans a run at `now`. `status_next` is the host's `ScheduleStatus.Next`, used when it is a
    /// sane future time: more than half a second ahead (during a scheduled run it is this run's own
    /// time, give or take the timer's jitter) and at most a day. It may also be absent, or the year 1
    /// on a first run (read as absent). Otherwise the schedule says, and failing that five minutes
    /// from now.
    pub(crate) fn new(schedule: &Schedule, now: Timestamp, status_next: Option<Timestamp>) -> Self {
        const DAY: Duration = Duration::from_secs(24 * 3600);
        let next_run = status_next
            .filter(|next| *next > now.plus(Duration::from_millis(500)) && *next <= now.plus(DAY))
            .or_else(|| schedule.next_after(now))
            .unwrap_or(now.plus(Duration::from_secs(300)));
        let whole_second = Timestamp::from_micros(now.as_micros() / 1_000_000 * 1_000_000);
        let tick = schedule.tick_at(now.plus(Duration::from_secs(1))).unwrap_or(whole_second);
        // Slack for the next run's own duration and start-up delay.
        let slack = (next_run.since(now) / 4).min(Duration::from_secs(30));
        Self { tick, next_run, horizon: next_run.plus(slack) }
    }
}

/// What a timer run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TimerReport {
    /// Hot keys looked at.
    pub considered: usize,
    /// Keys refreshed from the store.
    pub refreshed: usize,
    /// Hot keys that stay fresh past the next run, negative entries, and keys someone else is refreshing.
    pub skipped: usize,
    /// Keys whose refresh failed (their old entries are kept).
    pub failed: usize,
    /// Another instance holds this tick's lease, so this run did nothing.
    pub other_instance: bool,
}

impl RefreshAhead {
    /// The plan of a run starting now, given the host's `ScheduleStatus.Next`.
    pub(crate) fn plan(&self, status_next: Option<Timestamp>) -> TimerPlan {
        TimerPlan::new(&self.policy.schedule, self.now(), status_next)
    }

    /// One timer run: refreshes the hottest keys whose entries turn stale before `plan.horizon`,
    /// unless another instance holds this tick. Fails only when the cache cannot be used at all.
    pub(crate) async fn run_timer(&self, plan: &TimerPlan) -> Result<TimerReport, CacheError> {
        let lease = LeaseName::TimerTick(plan.tick);
        let token = LockToken::random();
        let ttl = plan.next_run.since(self.now()).clamp(Duration::from_secs(5), Duration::from_secs(600));
        if !self.leases.acquire(lease, &token, ttl).await? {
            return Ok(TimerReport { other_instance: true, ..TimerReport::default() });
        }
        let report = self.refresh_due_hot_keys(plan).await;
        if let Err(e) = self.leases.release(lease, &token).await {
            tracing::debug!(error = %Chain(&e), "could not release the timer lease; it expires by itself");
        }
        report
    }

    async fn refresh_due_hot_keys(&self, plan: &TimerPlan) -> Result<TimerReport, CacheError> {
        let (policy, cache) = (&self.policy, &self.read.core.cache);
        self.flush_read_counts().await;
        let hot = cache.hottest(&policy.hot_keys, policy.hot_min_reads, policy.timer_max_keys, self.now()).await?;
        let names: Vec<String> = hot.into_iter().map(|(key, _)| key).collect();
        let metas = cache.metadata(&names).await?;
        let mut report = TimerReport { considered: names.len(), ..TimerReport::default() };
        let permits = Arc::new(Semaphore::new(policy.timer_parallelism.max(1)));
        let mut tasks = JoinSet::new();
        for (name, meta) in names.into_iter().zip(metas) {
            let Some(observed) = due(meta, plan.horizon) else {
                report.skipped += 1;
                continue;
            };
            let (Ok(key), Some(claim)) = (Key::new(name.clone()), self.claim(&name)) else {
                report.skipped += 1;
                continue;
            };
            let (this, permits) = (self.clone(), permits.clone());
            // Tracked, so that shutdown stops it before the node-id lease is given back, even once
            // the run's request was cut (the set then only aborts it).
            let refresh = self.read.core.background.guard(async move {
                let _claim = claim;
                let Ok(_permit) = permits.acquire_owned().await else { return Refreshed::Skipped };
                this.refresh_key(&key, observed).await
            });
            tasks.spawn(async move {
                refresh.await.unwrap_or_else(|| Refreshed::Failed("stopped: the service is shutting down".into()))
            });
        }
        while let Some(done) = tasks.join_next().await {
            if let Ok(refreshed) = &done {
                crate::telemetry::metrics().refresh("timer", refreshed.outcome());
            }
            match done {
                Ok(Refreshed::Yes) => report.refreshed += 1,
                Ok(Refreshed::Skipped) => report.skipped += 1,
                Ok(Refreshed::Failed(why)) => {
                    tracing::warn!(error = %why, "timer refresh of a hot key failed; its cached value is kept");
                    report.failed += 1
                }
                Err(e) => {
                    tracing::warn!(error = %Chain(&e), "a timer refresh task stopped");
                    report.failed += 1
                }
            }
        }
        Ok(report)
    }
}

/// Whether an entry needs the timer's refresh: `Some(observed write time)` if so. A missing entry of
/// a hot key is loaded (`Some(None)`); a negative one is left to expire.
fn due(meta: Option<EntryMeta>, horizon: Timestamp) -> Option<Option<Timestamp>> {
    match meta {
        None => Some(None),
        Some(meta) if meta.negative => None,
        Some(meta) if meta.fresh_until < horizon => Some(Some(meta.written_at)),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Timestamp = Timestamp::from_millis(1_729_851_600_000); // 2024-10-25T10:20:00Z

    fn at(ms_after_t0: u64) -> Timestamp {
        T0.plus(Duration::from_millis(ms_after_t0))
    }

    #[test]
    fn plans_use_a_sane_next_or_the_schedule() {
        let every5 = Schedule::default();
        // A scheduled run: Next is this run's own time, so the schedule decides.
        let p = TimerPlan::new(&every5, at(20), Some(T0));
        assert_eq!((p.tick, p.next_run, p.horizon), (T0, at(300_000), at(330_000)));
        // A manual run between ticks with the monitor's Next.
        let p = TimerPlan::new(&every5, at(100_000), Some(at(300_000)));
        assert_eq!((p.tick, p.next_run), (T0, at(300_000)));
        // The year-1 sentinel (read as absent) and absurd values fall back to the schedule.
        assert_eq!(Timestamp::parse_iso8601("0001-01-01T00:00:00+00:00"), None);
        assert_eq!(TimerPlan::new(&every5, at(20), Some(Timestamp::EPOCH)).next_run, at(300_000));
        assert_eq!(TimerPlan::new(&every5, at(20), Some(at(40 * 86_400_000))).next_run, at(300_000));
        assert_eq!(TimerPlan::new(&every5, at(20), None).next_run, at(300_000));
    }

    #[test]
    fn which_entries_are_due() {
        let ms = Timestamp::from_millis;
        let meta =
            |soft: u64, negative| Some(EntryMeta { version: 1, written_at: ms(7), fresh_until: ms(soft), negative });
        assert_eq!(due(None, ms(100)), Some(None));
        assert_eq!(due(meta(50, false), ms(100)), Some(Some(ms(7))));
        assert_eq!(due(meta(150, false), ms(100)), None);
        assert_eq!(due(meta(50, true), ms(100)), None);
    }
}
