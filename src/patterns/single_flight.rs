//! In-process single-flight: concurrent callers with the same key share one execution.
//!
//! The first caller leads: it runs the work and publishes the result; the others follow and wait
//! for it. If the leader goes away before publishing (its HTTP client went away), its followers
//! claim the key again and one of them leads instead, so nobody waits forever.
//!
//! [`SingleFlight::run`] does all of it for one key. A caller that loads many keys at once (a bulk
//! read) uses [`SingleFlight::claim`]: it learns at once, without waiting, which keys it leads, so
//! that it can load those together and follow the others.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// The runs in flight, by key: each a channel that carries the result once there is one.
type Table<T> = Mutex<HashMap<String, Arc<watch::Sender<Option<T>>>>>;

/// A table of in-flight executions, keyed by string.
pub(crate) struct SingleFlight<T> {
    inflight: Arc<Table<T>>,
}

impl<T> Default for SingleFlight<T> {
    fn default() -> Self {
        Self { inflight: Arc::default() }
    }
}

/// What [`SingleFlight::claim`] found.
pub(crate) enum Claim<T> {
    /// No run of the key was in flight: this caller leads it and must publish the result.
    Lead(Leader<T>),
    /// Another caller leads the key: wait for its result.
    Follow(Follower<T>),
}

/// The lead of one key's run. [`Leader::finish`] publishes the result; dropping it unfinished
/// hands the run over to the followers.
pub(crate) struct Leader<T> {
    table: Arc<Table<T>>,
    key: String,
    slot: Arc<watch::Sender<Option<T>>>,
}

impl<T> Leader<T> {
    /// Publishes `value` to every follower, and ends the run.
    pub(crate) fn finish(self, value: T) {
        self.slot.send_replace(Some(value));
    }
}

impl<T> Drop for Leader<T> {
    fn drop(&mut self) {
        let mut inflight = self.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if inflight.get(&self.key).is_some_and(|current| Arc::ptr_eq(current, &self.slot)) {
            inflight.remove(&self.key);
        }
    }
}

/// A wait for another caller's run of a key.
pub(crate) struct Follower<T> {
    result: watch::Receiver<Option<T>>,
}

impl<T: Clone> Follower<T> {
    /// The leader's result; `None` if the leader went away without one (claim the key again).
    pub(crate) async fn wait(mut self) -> Option<T> {
        self.result.wait_for(Option::is_some).await.ok().and_then(|result| result.clone())
    }
}

impl<T: Clone> SingleFlight<T> {
    /// Leads `key` if no run of it is in flight, else follows the run that is.
    pub(crate) fn claim(&self, key: &str) -> Claim<T> {
        let mut inflight = self.inflight.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(slot) = inflight.get(key) {
            return Claim::Follow(Follower { result: slot.subscribe() });
        }
        let slot = Arc::new(watch::Sender::new(None));
        inflight.insert(key.to_string(), slot.clone());
        Claim::Lead(Leader { table: self.inflight.clone(), key: key.to_string(), slot })
    }

    /// Runs `work` for `key` unless a run for `key` is already in flight, in which case its result
    /// is awaited and returned instead.
    pub(crate) async fn run<F, Fut>(&self, key: &str, work: F) -> T
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        loop {
            match self.claim(key) {
                Claim::Lead(leader) => {
                    let value = work().await;
                    leader.finish(value.clone());
                    return value;
                }
                Claim::Follow(follower) => {
                    if let Some(value) = follower.wait().await {
                        return value;
                    }
                }
            }
        }
    }

    /// How many keys have a run in flight (for tests and diagnostics).
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.inflight.lock().map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let flights = Arc::new(SingleFlight::<u32>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let flights = flights.clone();
                let runs = runs.clone();
                tokio::spawn(async move {
                    flights
                        .run("k", || async move {
                            runs.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            7
                        })
                        .await
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), 7);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(flights.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_claim_says_at_once_who_leads_and_followers_get_the_leaders_result() {
        let flights = SingleFlight::<u32>::default();
        let Claim::Lead(leader) = flights.claim("a") else { panic!("the first claim of a key leads") };
        let Claim::Follow(follower) = flights.claim("a") else { panic!("a claim while it runs follows") };
        assert!(matches!(flights.claim("b"), Claim::Lead(_)), "keys are independent");
        leader.finish(5);
        assert_eq!(follower.wait().await, Some(5));
        assert_eq!(flights.in_flight(), 0);
        // A leader that goes away unfinished leaves no result: its followers claim the key again.
        let Claim::Lead(leader) = flights.claim("a") else { panic!("the run ended; a new claim leads") };
        let Claim::Follow(follower) = flights.claim("a") else { panic!("a claim while it runs follows") };
        drop(leader);
        assert_eq!(follower.wait().await, None);
        assert!(matches!(flights.claim("a"), Claim::Lead(_)));
    }

    #[tokio::test]
    async fn a_cancelled_leader_hands_over_to_a_waiter() {
        let flights = Arc::new(SingleFlight::<u32>::default());
        let leader = {
            let flights = flights.clone();
            tokio::spawn(async move { flights.run("k", || async { std::future::pending::<u32>().await }).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let follower = {
            let flights = flights.clone();
            tokio::spawn(async move { flights.run("k", || async { 9 }).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        leader.abort();
        assert_eq!(tokio::time::timeout(Duration::from_secs(2), follower).await.unwrap().unwrap(), 9);
    }
}
