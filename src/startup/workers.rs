//! The work that runs beside the requests, owned: every worker gets the same shutdown token, and
//! [`Workers::stop`] cancels them all and waits for them to finish what they were doing.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The running background workers.
#[derive(Debug, Default)]
pub struct Workers {
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Workers {
    /// No workers yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts `work`, handing it the shutdown token it must stop on.
    pub fn spawn<F, Fut>(&self, name: &'static str, work: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let work = work(self.shutdown.clone());
        self.tasks.spawn(async move {
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

    /// Asks every worker to stop and waits up to `within` for them to finish; true when all did.
    pub async fn stop(self, within: Duration) -> bool {
        self.shutdown.cancel();
        self.tasks.close();
        let stopped = tokio::time::timeout(within, self.tasks.wait()).await.is_ok();
        if !stopped {
            tracing::warn!(running = self.tasks.len(), "background workers still running at shutdown were left behind");
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
    async fn a_worker_that_ignores_shutdown_is_reported() {
        let workers = Workers::new();
        workers.spawn("stubborn", |_| std::future::pending());
        assert!(!workers.stop(Duration::from_millis(20)).await);
    }
}
