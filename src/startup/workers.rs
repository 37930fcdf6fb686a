//! The work that runs beside the requests, owned: every worker gets a shutdown token, and
//! [`Workers::stop`] cancels them all and waits for them to finish what they were doing. A worker
//! that does not stop in time is named in the log and left behind (the process exits anyway). The
//! work requests started and left running ([`RequestTasks`]: background loads and refreshes, writes
//! that finish without their caller) is stopped first, before the workers the requests relied on to
//! the end (the node-id lease).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::patterns::RequestTasks;

/// The running background workers.
#[derive(Debug, Default)]
pub struct Workers {
    /// Told by [`Workers::cancel`] (the moment shutdown begins) and by [`Workers::stop`].
    shutdown: CancellationToken,
    /// Told only by [`Workers::stop`], once the requests are done (see [`Workers::spawn_last`]).
    last: CancellationToken,
    tasks: TaskTracker,
    running: Running,
    /// Work the requests started, stopped by [`Workers::stop`] before `last` is told.
    request_tasks: Vec<RequestTasks>,
}

/// The names of the workers still running. Cheap to clone; clones share the list.
#[derive(Debug, Clone, Default)]
pub struct Running(Arc<Mutex<Vec<&'static str>>>);

impl Running {
    /// The names, sorted (a name appears once per running worker of that name).
    pub fn names(&self) -> Vec<&'static str> {
        let mut names = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        names.sort_unstable();
        names
    }

    /// Lists `name` until the returned guard is dropped (the worker's task ended or was dropped).
    fn enter(&self, name: &'static str) -> Listed {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(name);
        Listed { running: self.clone(), name }
    }
}

/// A worker's place in [`Running`], removed on drop.
struct Listed {
    running: Running,
    name: &'static str,
}

impl Drop for Listed {
    fn drop(&mut self) {
        let mut names = self.running.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = names.iter().position(|n| *n == self.name) {
            names.swap_remove(at);
        }
    }
}

impl Workers {
    /// No workers yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts `work`, handing it the shutdown token it must stop on: cancelled as soon as shutdown
    /// begins ([`Workers::cancel`]), while open requests may still be finishing.
    pub fn spawn<F, Fut>(&self, name: &'static str, work: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.start(name, work(self.shutdown.clone()));
    }

    /// Starts `work` with a token cancelled only by [`Workers::stop`], after the requests are
    /// done: for work the requests rely on to the end (the version node-id lease: a request still
    /// running takes versions from that id, so it must not be given back before).
    pub fn spawn_last<F, Fut>(&self, name: &'static str, work: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.start(name, work(self.last.clone()));
    }

    /// Has [`Workers::stop`] stop `tasks` (work requests started and left running) before it tells
    /// the workers started with [`Workers::spawn_last`]: that work takes stamps from the node id
    /// their lease holds.
    pub(crate) fn stop_first(&mut self, tasks: RequestTasks) {
        self.request_tasks.push(tasks);
    }

    fn start(&self, name: &'static str, work: impl Future<Output = ()> + Send + 'static) {
        let listed = self.running.enter(name);
        self.tasks.spawn(async move {
            let _listed = listed;
            work.await;
            tracing::debug!(worker = name, "background worker stopped");
        });
    }

    /// How many workers are running.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// True when no worker is running.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// The names of the workers still running, kept up to date (for the shutdown watchdog).
    pub fn running(&self) -> Running {
        self.running.clone()
    }

    /// Tells the workers started with [`Workers::spawn`] to stop, without waiting.
    pub fn cancel(&self) {
        self.shutdown.cancel();
    }

    /// Tells every worker to stop and waits up to `within` for them to finish; true when all did.
    /// Otherwise the ones still running are named in the log and left behind. The work requests
    /// started ([`Workers::stop_first`]) is stopped first, and only once it has ended are the
    /// workers started with [`Workers::spawn_last`] told: should some of it not end in time (stuck
    /// in blocking code), they are not told at all, and the node-id lease is kept until the
    /// process exits (it then expires by itself) rather than given back while that work may still
    /// take stamps from it.
    pub async fn stop(self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        self.shutdown.cancel();
        let mut requests_done = true;
        for tasks in &self.request_tasks {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            requests_done &= tasks.stop(left).await;
        }
        if requests_done {
            self.last.cancel();
        } else {
            tracing::warn!(
                "work started by requests is still running: the node-id lease is kept (it expires by itself after the process exits)"
            );
        }
        self.tasks.close();
        let stopped = tokio::time::timeout_at(deadline, self.tasks.wait()).await.is_ok();
        if !stopped {
            let names = self.running.names();
            tracing::warn!(
                still_running = ?names,
                "background workers still running {within:?} after they were told to stop are left behind: {}",
                names.join(", ")
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

    #[tokio::test]
    async fn stop_cancels_and_waits_for_every_worker() {
        let workers = Workers::new();
        let finished = Arc::new(AtomicBool::new(false));
        let flag = finished.clone();
        workers.spawn("test", |shutdown| async move {
            shutdown.cancelled().await;
            flag.store(true, Ordering::SeqCst);
        });
        assert_eq!(workers.len(), 1);
        assert!(workers.stop(Duration::from_secs(5)).await);
        assert!(finished.load(Ordering::SeqCst), "the worker saw the shutdown and finished");
    }

    #[tokio::test]
    async fn a_worker_that_ignores_shutdown_is_reported_by_name() {
        let workers = Workers::new();
        workers.spawn("stubborn", |_| std::future::pending());
        workers.spawn("polite", |shutdown| async move { shutdown.cancelled().await });
        let running = workers.running();
        assert_eq!(running.names(), ["polite", "stubborn"]);
        assert!(!workers.stop(Duration::from_millis(20)).await);
        assert_eq!(running.names(), ["stubborn"], "the one left behind is still listed");
    }

    #[tokio::test]
    async fn cancel_tells_the_workers_but_not_the_last_ones() {
        let workers = Workers::new();
        let (first, last) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let (f, l) = (first.clone(), last.clone());
        workers.spawn("first", |shutdown| async move {
            shutdown.cancelled().await;
            f.store(true, Ordering::SeqCst);
        });
        workers.spawn_last("last", |shutdown| async move {
            shutdown.cancelled().await;
            l.store(true, Ordering::SeqCst);
        });
        workers.cancel();
        let running = workers.running();
        tokio::time::timeout(Duration::from_secs(5), async {
            while running.names() != ["last"] {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the first worker stops on cancel");
        assert!(first.load(Ordering::SeqCst) && !last.load(Ordering::SeqCst));
        assert!(workers.stop(Duration::from_secs(5)).await);
        assert!(last.load(Ordering::SeqCst), "stop tells the last ones");
        assert!(running.names().is_empty());
    }

    /// Notes, when dropped, whether the `last` workers had been told by then.
    struct NotesLast(Arc<AtomicBool>, Arc<AtomicBool>);

    impl Drop for NotesLast {
        fn drop(&mut self) {
            self.1.store(self.0.load(Ordering::SeqCst), Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn the_work_requests_started_is_stopped_before_the_last_ones_are_told() {
        let mut workers = Workers::new();
        let tasks = RequestTasks::new();
        workers.stop_first(tasks.clone());
        let (told, told_when_dropped) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(true)));
        let t = told.clone();
        workers.spawn_last("last", |shutdown| async move {
            shutdown.cancelled().await;
            t.store(true, Ordering::SeqCst);
        });
        let notes = NotesLast(told.clone(), told_when_dropped.clone());
        let _task = tasks.spawn(async move {
            let _notes = notes;
            std::future::pending::<()>().await
        });
        assert!(workers.stop(Duration::from_secs(5)).await);
        assert!(
            !told_when_dropped.load(Ordering::SeqCst),
            "the request's task was stopped before the last ones were told"
        );
        assert!(told.load(Ordering::SeqCst), "then they were told");
    }

    /// A task stuck in blocking code cannot be stopped: the last ones (the node-id lease) are then
    /// not told, so the lease is kept rather than given back while that task may take stamps.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_last_ones_are_not_told_while_work_requests_started_runs_on() {
        let mut workers = Workers::new();
        let tasks = RequestTasks::new();
        workers.stop_first(tasks.clone());
        let told = Arc::new(AtomicBool::new(false));
        let t = told.clone();
        workers.spawn_last("last", |shutdown| async move {
            shutdown.cancelled().await;
            t.store(true, Ordering::SeqCst);
        });
        let (entered, blocked) = std::sync::mpsc::channel::<()>();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let _task = tasks.spawn(async move {
            let _ = entered.send(());
            // Blocking code: never yields until released.
            let _ = released.recv();
        });
        blocked.recv().expect("the task runs");
        assert!(!workers.stop(Duration::from_millis(100)).await, "not everything stopped");
        assert!(!told.load(Ordering::SeqCst), "the last ones were not told");
        let _ = release.send(());
    }
}
