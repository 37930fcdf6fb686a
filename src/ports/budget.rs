//! A request's time budget on shared infrastructure.
//!
//! [`with_request_budget`] runs one request with [`REQUEST_BUDGET`] to spend waiting on the cache in
//! all: each call waits at most what is left of it (and at most its own deadline), so a Redis that
//! answers each command just under the deadline cannot make a request that sends several wait
//! several deadlines. Background work (refreshes, the write-behind consumer) has no budget, only
//! the per-call deadline. Adapters ask [`remaining`].

use std::future::Future;
use std::time::{Duration, Instant};

/// How long one request may wait on the cache in all, over all its calls.
pub(crate) const REQUEST_BUDGET: Duration = Duration::from_secs(2);

tokio::task_local! {
    /// When the current request's budget runs out.
    static BUDGET_ENDS: Instant;
}

/// Runs `work` (one request) with a budget of [`REQUEST_BUDGET`]. A plain function, not an
/// `async fn`: an `async fn` would hold `work` twice (as its argument and as what it awaits), and a
/// request's future is moved several times on its way to the runtime.
pub(crate) fn with_request_budget<F: Future>(work: F) -> impl Future<Output = F::Output> {
    BUDGET_ENDS.scope(Instant::now() + REQUEST_BUDGET, work)
}

/// What is left of the current request's budget; `None` outside a request (background work).
pub(crate) fn remaining() -> Option<Duration> {
    BUDGET_ENDS.try_with(|ends| ends.saturating_duration_since(Instant::now())).ok()
}
