//! The work that runs beside the requests, owned: every worker gets a shutdown token, and
//! [`Workers::stop`] cancels them all and waits for them to finish what they were doing. A worker
//! that does not stop in time is named in the log and left behind (the process exits anyway).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The running background workers.
#[derive(Debug, Default)]
pub struct Workers {
    /// Told by [`Workers::cancel`] (the moment shutdown begins) and by [`Workers::stop`].
    shutdown: CancellationToken,
    /// Told only by [`Workers::stop`], once the requests are done (see [`Workers::spawn_last`]).
    last: CancellationToken,
    tasks: TaskTracker,
    running: Running,
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
    /// Otherwise the ones still running are named in the log and left behind.
    pub async fn stop(self, within: Duration) -> bool {
        self.shutdown.cancel();
        self.last.cancel();
        self.tasks.close();
        let stopped = tokio::time::timeout(within, self.tasks.wait()).await.is_ok();
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
}
