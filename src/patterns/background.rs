//! Work that requests start and that outlives them: the load that goes on after a stale value was
//! served (fail-safe soft timeout), the store read of a bulk load whose stale values were served,
//! an eager refresh (Refresh-Ahead), the refreshes of a timer run (cut with its request), and
//! every write (Write-Through, Write-Behind), which finishes even if its caller goes away
//! (`Core::run_to_the_end`).
//!
//! Such work takes stamps from the version clock, whose node id is leased (`versions::NodeLease`);
//! another instance may lease that id once it is given back, and a stamp or version issued
//! afterwards could tie with that instance's. So it runs on tasks tracked here (a write is a
//! tracked future its request polls, and gets a task only if the request drops it: [`ToTheEnd`]),
//! and at shutdown, once the requests are done (`http::serve` returned), [`RequestTasks::stop`]
//! stops them all before the lease is released (`startup::Workers::stop`): each is cancelled (its
//! future dropped where it waits; a load's lock in Redis then expires by itself) and awaited.
//! Writes are first given all but the last [`WRITES_CUT_BEFORE`] of that time to finish: cut
//! between their store (or queue) step and their cache step, they would leave the cache serving
//! what they replaced.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
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

/// Whether the caller of a write ([`RequestTasks::write`]) still waits for it. A write that would
/// begin something new on the caller's behalf (a retry with a newer version) must not once the
/// caller has left: the caller may have written again since.
#[derive(Debug, Clone, Default)]
pub(crate) struct Caller(CancellationToken);

impl Caller {
    /// True once the caller stopped waiting.
    pub(crate) fn has_left(&self) -> bool {
        self.0.is_cancelled()
    }
}

/// A write its caller polls, as any future, so that a write costs no task of its own; should the
/// caller drop it before it completed (a client that disconnects: hyper drops the request), it
/// goes on on a task of its own, its caller marked as left.
pub(crate) struct ToTheEnd<T: Send + 'static> {
    write: Option<Pin<Box<dyn Future<Output = Option<T>> + Send>>>,
    caller: Caller,
}

impl<T: Send + 'static> Future for ToTheEnd<T> {
    type Output = Option<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let Some(write) = self.write.as_mut() else {
            // Polled again after it completed: nothing more to give.
            return Poll::Ready(None);
        };
        let done = std::task::ready!(write.as_mut().poll(cx));
        self.write = None;
        Poll::Ready(done)
    }
}

impl<T: Send + 'static> Drop for ToTheEnd<T> {
    fn drop(&mut self) {
        let Some(write) = self.write.take() else { return };
        if std::thread::panicking() {
            // The write itself panicked while its caller polled it: nothing to go on with.
            return;
        }
        self.caller.0.cancel();
        // Outside a runtime (it is shutting down) there is nothing left to run it on.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(write);
        }
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

    /// `write` (given whether its caller still waits), to its end even if its caller drops it
    /// ([`ToTheEnd`]): it completes (`Some`), or [`RequestTasks::stop`] cuts it once its time to
    /// finish is up (`None`; at once if stopping already began).
    pub(crate) fn write<T, W>(&self, write: impl FnOnce(Caller) -> W) -> ToTheEnd<T>
    where
        T: Send + 'static,
        W: Future<Output = T> + Send + 'static,
    {
        let caller = Caller::default();
        let write: Pin<Box<dyn Future<Output = Option<T>> + Send>> = if self.stop.is_cancelled() {
            // Stopping began: a write must not start (its versions could outlive the lease).
            Box::pin(async { None })
        } else {
            Box::pin(Self::until_cancelled(&self.tasks, self.stop_writes.clone(), write(caller.clone())))
        };
        ToTheEnd { write: Some(write), caller }
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
        let write = tokio::spawn(tasks.write(|_| async move {
            let _ = finished.await;
            "written"
        }));
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
        assert_eq!(tasks.write(|_| async { "late" }).await, None, "no write begins after");

        let tasks = RequestTasks::new();
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = Dropped(dropped.clone());
        let stuck = tokio::spawn(tasks.write(|_| async move {
            let _flag = flag;
            std::future::pending::<()>().await
        }));
        let within = WRITES_CUT_BEFORE + Duration::from_millis(100);
        assert!(tasks.stop(within).await, "a write that does not finish is cut in time");
        assert!(dropped.load(Ordering::SeqCst), "its future was dropped before stop returned");
        assert_eq!(stuck.await.expect("the task ended"), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_its_caller_drops_goes_on_told_that_the_caller_left() {
        let tasks = RequestTasks::new();
        let (started, has_started) = tokio::sync::oneshot::channel::<Caller>();
        let (finish, finished) = tokio::sync::oneshot::channel::<()>();
        let (ended, has_ended) = tokio::sync::oneshot::channel::<bool>();
        let caller = tokio::spawn(tasks.write(|caller| async move {
            let _ = started.send(caller.clone());
            let _ = finished.await;
            let _ = ended.send(caller.has_left());
        }));
        let seen = has_started.await.expect("the write began");
        assert!(!seen.has_left(), "its caller waits");
        caller.abort();
        assert!(caller.await.expect_err("the caller was dropped").is_cancelled());
        assert!(seen.has_left(), "the write is told at once that its caller left");
        let _ = finish.send(());
        assert_eq!(has_ended.await, Ok(true), "the write went on to its end, on a task of its own");
        assert!(tasks.stop(Duration::from_secs(5)).await);

        // A write that completes with its caller leaves nothing behind, its caller never marked.
        let tasks = RequestTasks::new();
        let (caller_seen, seen) = tokio::sync::oneshot::channel::<Caller>();
        let done = tasks
            .write(|caller| async move {
                let _ = caller_seen.send(caller);
                1
            })
            .await;
        assert_eq!(done, Some(1));
        assert!(!seen.await.expect("the write began").has_left(), "its caller waited to the end");
        assert!(tasks.is_empty(), "nothing is left running");
    }

    #[tokio::test]
    async fn a_write_that_panics_is_not_handed_on() {
        let tasks = RequestTasks::new();
        let (caller_seen, seen) = tokio::sync::oneshot::channel::<Caller>();
        let caller = tokio::spawn(tasks.write(|caller| async move {
            let _ = caller_seen.send(caller);
            panic!("the write failed")
        }));
        assert!(caller.await.expect_err("the caller's task failed").is_panic(), "the panic reaches the caller");
        let caller = seen.await.expect("the write began");
        assert!(!caller.has_left(), "not handed on to a task of its own as if its caller had left");
        assert!(tasks.is_empty(), "nothing is left running");
    }
}
