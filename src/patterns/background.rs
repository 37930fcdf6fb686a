//! Work that requests start and that outlives them: the load that goes on after a stale value was
//! served (fail-safe soft timeout), the store read of a bulk load whose stale values were served,
//! an eager refresh (Refresh-Ahead), and the refreshes of a timer run (cut with its request).
//!
//! Such work takes stamps from the version clock, whose node id is leased
//! (`versions::NodeLease`); another instance may lease that id once it is given back, and a stamp
//! or version issued afterwards could tie with that instance's. So it runs on tasks tracked here,
//! and at shutdown, once the requests are done (`http::serve` returned), [`RequestTasks::stop`]
//! stops them all before the lease is released (`startup::Workers::stop`): each is cancelled (its
//! future dropped where it waits; a load's lock in Redis then expires by itself) and awaited.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The tasks requests started. Cheap to clone; clones share the tasks.
#[derive(Debug, Clone, Default)]
pub struct RequestTasks {
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl RequestTasks {
    /// None yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `work` on a task of its own until it completes (`Some`) or [`RequestTasks::stop`]
    /// (`None`; at once if stopping already began).
    pub(crate) fn spawn<T: Send + 'static>(
        &self,
        work: impl Future<Output = T> + Send + 'static,
    ) -> JoinHandle<Option<T>> {
        tokio::spawn(self.guard(work))
    }

    /// `work`, tracked and stopped like a task of [`RequestTasks::spawn`], for a task spawned
    /// elsewhere (a `JoinSet`'s): until its future is dropped, [`RequestTasks::stop`] waits for it.
    pub(crate) fn guard<T, F: Future<Output = T>>(&self, work: F) -> impl Future<Output = Option<T>> + use<T, F> {
        let stop = self.stop.clone();
        self.tasks.track_future(async move {
            tokio::select! {
                biased;
                () = stop.cancelled() => None,
                done = work => Some(done),
            }
        })
    }

    /// How many are running (or stopped but not yet dropped).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.tasks.len()
    }

    /// True when none is running.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Stops every task, and those started from now on at once, and waits up to `within` until
    /// each has ended. True when all did; a task stuck in blocking code ends only when it next
    /// yields, and is then named by count in the log.
    pub async fn stop(&self, within: Duration) -> bool {
        self.stop.cancel();
        self.tasks.close();
        let running = self.tasks.len();
        let stopped = tokio::time::timeout(within, self.tasks.wait()).await.is_ok();
        if running > 0 {
            tracing::debug!(tasks = running, stopped, "stopped the work requests started");
        }
        if !stopped {
            tracing::warn!(
                tasks = self.tasks.len(),
                "work started by requests (loads, refreshes) is still running {within:?} after it was told to stop"
            );
        }
        stopped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Sets its flag when dropped.
    struct Dropped(Arc<AtomicBool>);

    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn stop_cancels_what_runs_and_waits_until_it_is_dropped() {
        let tasks = RequestTasks::new();
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = Dropped(dropped.clone());
        let running = tasks.spawn(async move {
            let _flag = flag;
            std::future::pending::<()>().await
        });
        let mut set = tokio::task::JoinSet::new();
        set.spawn(tasks.guard(std::future::pending::<()>()));
        assert_eq!(tasks.len(), 2);
        assert!(tasks.stop(Duration::from_secs(5)).await, "both stop");
        assert!(dropped.load(Ordering::SeqCst), "the running task's future was dropped before stop returned");
        assert_eq!(running.await.expect("the task ended"), None, "stopped, not completed");
        assert_eq!(set.join_next().await.and_then(Result::ok), Some(None));
        assert!(tasks.is_empty());
    }

    #[tokio::test]
    async fn work_that_completes_answers_and_work_started_after_stop_never_runs() {
        let tasks = RequestTasks::new();
        assert_eq!(tasks.spawn(async { 7 }).await.expect("the task ended"), Some(7));
        assert!(tasks.stop(Duration::from_secs(5)).await);
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        let late = tasks.spawn(async move { flag.store(true, Ordering::SeqCst) });
        assert_eq!(late.await.expect("the task ended"), None);
        assert!(!ran.load(Ordering::SeqCst), "work started after stop never runs");
    }
}
