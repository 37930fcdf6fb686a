//! Work that requests start and that outlives them: the load that goes on after a stale value was
//! served (fail-safe soft timeout), the store read of a bulk load whose stale values were served,
//! an eager refresh (Refresh-Ahead), the refreshes of a timer run (cut with its request), and
//! every write (Write-Through, Write-Behind), which finishes even if its caller goes away
//! (`Core::run_to_the_end`).
//!
//! Such work takes stamps from the version clock, whose node id is leased
//! (`versions::NodeLease`); another instance may lease that id once it is given back, and a stamp
//! or version issued afterwards could tie with that instance's. So it runs on tasks tracked here,
//! and at shutdown, once the requests are done (`http::serve` returned), [`RequestTasks::stop`]
//! stops them all before the lease is released (`startup::Workers::stop`): each is cancelled (its
//! future dropped where it waits; a load's lock in Redis then expires by itself) and awaited.
//! Writes are first given all but the last [`WRITES_CUT_BEFORE`] of that time to finish: cut
//! between their store (or queue) step and their cache step, they would leave the cache serving
//! what they replaced.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// At shutdown, writes are cut this long before the time [`RequestTasks::stop`] is given runs
/// out, so that they can end and the node-id lease be given back in time.
pub(crate) const WRITES_CUT_BEFORE: Duration = Duration::from_secs(1);

/// The tasks requests started. Cheap to clone; clones share the tasks.
#[derive(Debug, Clone, Default)]
pub struct RequestTasks {
    tasks: TaskTracker,
    stop: CancellationToken,
    /// Cancelled after `stop`: writes get time to finish first.
    stop_writes: CancellationToken,
}

/// Whether the caller of work that runs on past it is still waiting for it. Work that would
/// begin something new on the caller's behalf (a write retried with a newer version) must not once
/// the caller has left: the caller may have written again since.
#[derive(Debug, Clone)]
pub(crate) struct Caller(CancellationToken);

impl Caller {
    /// A caller that waits until the guard is dropped (or disarmed, when the work ended).
    pub(crate) fn waiting() -> (Self, tokio_util::sync::DropGuard) {
        let left = CancellationToken::new();
        (Self(left.clone()), left.drop_guard())
    }

    /// True once the caller stopped waiting.
    pub(crate) fn has_left(&self) -> bool {
        self.0.is_cancelled()
    }
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

    /// Runs `write` on a task of its own until it completes (`Some`), or until
    /// [`RequestTasks::stop`] cuts it once its time to finish is up (`None`; at once if stopping
    /// already began).
    pub(crate) fn spawn_write<T: Send + 'static>(
        &self,
        write: impl Future<Output = T> + Send + 'static,
    ) -> JoinHandle<Option<T>> {
        if self.stop.is_cancelled() {
            // Stopping began: a write must not start (its versions could outlive the lease).
            return tokio::spawn(async { None });
        }
        tokio::spawn(Self::until_cancelled(&self.tasks, self.stop_writes.clone(), write))
    }

    /// `work`, tracked and stopped like a task of [`RequestTasks::spawn`], for a task spawned
    /// elsewhere (a `JoinSet`'s): until its future is dropped, [`RequestTasks::stop`] waits for it.
    pub(crate) fn guard<T, F: Future<Output = T>>(&self, work: F) -> impl Future<Output = Option<T>> + use<T, F> {
        Self::until_cancelled(&self.tasks, self.stop.clone(), work)
    }

    /// `work`, tracked by `tasks`, until `stop` is cancelled.
    fn until_cancelled<T, F: Future<Output = T>>(
        tasks: &TaskTracker,
        stop: CancellationToken,
        work: F,
    ) -> impl Future<Output = Option<T>> + use<T, F> {
        tasks.track_future(async move {
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
    /// each has ended; writes are first given all but the last [`WRITES_CUT_BEFORE`] of it to
    /// finish. True when all ended; a task stuck in blocking code ends only when it next yields,
    /// and is then named by count in the log.
    pub async fn stop(&self, within: Duration) -> bool {
        let ends = tokio::time::Instant::now() + within;
        self.stop.cancel();
        self.tasks.close();
        let running = self.tasks.len();
        let _ = tokio::time::timeout(within.saturating_sub(WRITES_CUT_BEFORE), self.tasks.wait()).await;
        self.stop_writes.cancel();
        let stopped = tokio::time::timeout_at(ends, self.tasks.wait()).await.is_ok();
        if running > 0 {
            tracing::debug!(tasks = running, stopped, "stopped the work requests started");
        }
        if !stopped {
            tracing::warn!(
                tasks = self.tasks.len(),
                "work started by requests (loads, refreshes, writes) is still running {within:?} after it was told to stop"
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_lets_writes_finish_then_cuts_what_is_left_in_time() {
        let tasks = RequestTasks::new();
        let (finish, finished) = tokio::sync::oneshot::channel::<()>();
        let write = tasks.spawn_write(async move {
            let _ = finished.await;
            "written"
        });
        let load = tasks.spawn(std::future::pending::<()>());
        let stopping = tokio::spawn({
            let tasks = tasks.clone();
            async move { tasks.stop(Duration::from_secs(30)).await }
        });
        assert_eq!(load.await.expect("the task ended"), None, "other work is cut at once");
        assert!(tasks.stop.is_cancelled());
        let _ = finish.send(());
        assert_eq!(write.await.expect("the task ended"), Some("written"), "the write finished after stop began");
        assert!(stopping.await.expect("stop ended"), "stop returns once the write ended");
        assert_eq!(tasks.spawn_write(async { "late" }).await.expect("the task ended"), None, "no write begins after");

        let tasks = RequestTasks::new();
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = Dropped(dropped.clone());
        let stuck = tasks.spawn_write(async move {
            let _flag = flag;
            std::future::pending::<()>().await
        });
        let within = WRITES_CUT_BEFORE + Duration::from_millis(100);
        assert!(tasks.stop(within).await, "a write that does not finish is cut in time");
        assert!(dropped.load(Ordering::SeqCst), "its future was dropped before stop returned");
        assert_eq!(stuck.await.expect("the task ended"), None);
    }
}
