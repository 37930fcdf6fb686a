//! A request's budgets on shared resources.
//!
//! [`with_request_budget`] runs one request with [`REQUEST_BUDGET`] to spend waiting on the cache in
//! all: each call waits at most what is left of it (and at most its own deadline), so a Redis that
//! answers each command just under the deadline cannot make a request that sends several wait
//! several deadlines. Background work (refreshes, the write-behind consumer) has no budget, only
//! the per-call deadline. Adapters ask [`remaining`].
//!
//! A request may also hold room in the server's memory budget for its body (`http::server`). Work
//! of the request that may run on a task of its own ([`carried`]: a write, which finishes even if
//! its caller goes away) takes both along: the time left, and a share of the room, which is given
//! back once both the request and that work have ended, so that writes whose callers left cannot
//! pile up beyond the budget.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long one request may wait on the cache in all, over all its calls.
pub(crate) const REQUEST_BUDGET: Duration = Duration::from_secs(2);

/// What a request holds of a shared budget, shared with the work it hands to tasks of their own:
/// given back when the last share is dropped.
pub(crate) type Held = Arc<dyn Send + Sync>;

/// The current request's budgets.
struct Budgets {
    /// When its time on the cache runs out.
    ends: Instant,
    /// What it holds.
    held: Option<Held>,
}

tokio::task_local! {
    static REQUEST: Budgets;
}

/// Runs `work` (one request) with a budget of [`REQUEST_BUDGET`], holding `held` until it and the
/// work it hands on ([`carried`]) have ended. A plain function, not an `async fn`: an
/// `async fn` would hold `work` twice (as its argument and as what it awaits), and a request's
/// future is moved several times on its way to the runtime.
pub(crate) fn with_request_budget<F: Future>(held: Option<Held>, work: F) -> impl Future<Output = F::Output> {
    REQUEST.scope(Budgets { ends: Instant::now() + REQUEST_BUDGET, held }, work)
}

/// `work`, under the current request's budget if there is one, and sharing what the request holds:
/// for a request's own work that may go on on a task of its own, which a task-local would not
/// follow.
pub(crate) fn carried<F: Future>(work: F) -> impl Future<Output = F::Output> {
    use futures_util::future::Either;
    match REQUEST.try_with(|request| (request.ends, request.held.clone())) {
        Ok((ends, held)) => Either::Left(REQUEST.scope(Budgets { ends, held }, work)),
        Err(_) => Either::Right(work),
    }
}

/// What is left of the current request's budget; `None` outside a request (background work).
pub(crate) fn remaining() -> Option<Duration> {
    REQUEST.try_with(|request| request.ends.saturating_duration_since(Instant::now())).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn budget_ends() -> Option<Instant> {
        REQUEST.try_with(|request| request.ends).ok()
    }

    /// Sets its flag when dropped (given back).
    struct Room(Arc<AtomicBool>);

    impl Drop for Room {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_task_of_the_request_s_own_keeps_its_budget_and_what_it_holds() {
        let given_back = Arc::new(AtomicBool::new(false));
        let room: Held = Arc::new(Room(given_back.clone()));
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let (in_request, carried_task, in_plain) = with_request_budget(Some(room), async {
            let carried_task = tokio::spawn(carried(async {
                let ends = budget_ends();
                let _ = released.await;
                ends
            }));
            let in_plain = tokio::spawn(async { budget_ends() });
            (budget_ends(), carried_task, in_plain.await.expect("the task ends"))
        })
        .await;
        assert!(!given_back.load(Ordering::SeqCst), "the request ended; the work it took the room to still runs");
        let _ = release.send(());
        let in_carried = carried_task.await.expect("the task ends");
        assert!(given_back.load(Ordering::SeqCst), "given back when the work ended");
        assert!(in_request.is_some());
        assert_eq!(in_carried, in_request, "the same end as the request's");
        assert_eq!(in_plain, None, "a task-local does not follow a task of its own");
        let outside = tokio::spawn(carried(async { budget_ends() })).await.expect("the task ends");
        assert_eq!(outside, None, "outside a request there is no budget to keep");

        // The other way round: the work ends first, and the request still holds the room.
        let given_back = Arc::new(AtomicBool::new(false));
        let room: Held = Arc::new(Room(given_back.clone()));
        let flag = given_back.clone();
        let held_after_the_work = with_request_budget(Some(room), async move {
            tokio::spawn(carried(async {})).await.expect("the task ends");
            !flag.load(Ordering::SeqCst)
        })
        .await;
        assert!(held_after_the_work, "the request still held the room once its work had ended");
        assert!(given_back.load(Ordering::SeqCst), "given back when the request ended");
    }
}
