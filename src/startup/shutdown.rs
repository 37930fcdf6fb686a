//! Stopping on SIGTERM (the host stopping the handler) or Ctrl-C, within a bounded time, whatever
//! is still running:
//!
//! 1. the port is closed; the background workers are told to stop ([`super::Workers::cancel`]);
//!    open requests get up to [`DRAIN_WITHIN`] to finish, then their connections are cut (aborted)
//!    and awaited, so that no request runs any more ([`crate::http::serve`]);
//! 2. the work the requests started and left running (a load that goes on after a stale value was
//!    served, an eager refresh, a write whose request was cut: [`crate::patterns::RequestTasks`])
//!    is stopped (cancelled) and awaited ([`super::Workers::stop`]);
//! 3. only then are the workers the requests relied on to the end (the node-id lease) told too: a
//!    request, or work it started, still running after its node id was given back could issue
//!    versions or stamps that another instance, leasing the id, issues too (if some of that work
//!    cannot be stopped in time, the lease is not given back: it expires by itself). Every worker
//!    is awaited until [`STOP_WITHIN`] after the signal; one still running then is named in the
//!    log and left behind;
//! 4. `main` flushes the telemetry exporters (at most [`FLUSH_WITHIN`]) and shuts the runtime down,
//!    leaving behind, after [`TEARDOWN_WITHIN`], blocking calls that are still running: a DNS
//!    lookup of the Redis host name on a resolver that does not answer lasts the resolver's timeout
//!    (tens of seconds), and the runtime's plain drop would wait for every one of them;
//! 5. should anything else hang, the watchdog armed at the signal logs what was still running and
//!    exits the process [`EXIT_WITHIN`] after the signal.
//!
//! The process exits with status 0 in every case: it was asked to stop, and did.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::workers::Running;

/// From the signal, how long the open requests and the background workers get to finish.
pub const STOP_WITHIN: Duration = Duration::from_secs(10);
/// How long open requests get: [`STOP_WITHIN`] less a second for the workers that wait for them
/// (the node-id lease gives its id back in one Redis call, at most the call deadline).
pub const DRAIN_WITHIN: Duration = Duration::from_secs(9);
/// How long the telemetry exporters get to send what they hold.
pub const FLUSH_WITHIN: Duration = Duration::from_secs(2);
/// How long the runtime's shutdown waits for blocking calls still running.
pub const TEARDOWN_WITHIN: Duration = Duration::from_secs(1);
/// When the watchdog exits the process, from the signal: every step above, plus a second.
pub const EXIT_WITHIN: Duration =
    Duration::from_secs(STOP_WITHIN.as_secs() + FLUSH_WITHIN.as_secs() + TEARDOWN_WITHIN.as_secs() + 1);

/// When the stop signal came, once it has.
static SIGNALLED_AT: OnceLock<Instant> = OnceLock::new();

/// How much of [`STOP_WITHIN`] is left (all of it before the signal).
pub fn stop_time_left() -> Duration {
    SIGNALLED_AT.get().map_or(STOP_WITHIN, |at| STOP_WITHIN.saturating_sub(at.elapsed()))
}

/// Completes on SIGTERM or Ctrl-C, having armed the watchdog (which reports `running`).
pub async fn signal(running: Option<Running>) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = ctrl_c.await;
                return begin(running);
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    begin(running);
}

fn begin(running: Option<Running>) {
    let at = *SIGNALLED_AT.get_or_init(Instant::now);
    tracing::info!("shutting down: open requests get {DRAIN_WITHIN:?}, background workers {STOP_WITHIN:?}");
    let armed = std::thread::Builder::new().name("shutdown-watchdog".into()).spawn(move || {
        std::thread::sleep(EXIT_WITHIN.saturating_sub(at.elapsed()));
        let workers = running.map(|r| r.names()).unwrap_or_default();
        tracing::error!(
            still_running = ?workers,
            "the handler did not finish stopping within {EXIT_WITHIN:?} of the stop signal; exiting anyway (background workers still running: {})",
            if workers.is_empty() { "none".to_string() } else { workers.join(", ") }
        );
        std::process::exit(0);
    });
    if let Err(e) = armed {
        tracing::warn!(error = %e, "could not start the shutdown watchdog");
    }
}

/// Shuts `runtime` down (after `main` flushed the telemetry), leaving behind what is still running
/// after [`TEARDOWN_WITHIN`].
pub fn tear_down(runtime: tokio::runtime::Runtime) {
    let started = Instant::now();
    runtime.shutdown_timeout(TEARDOWN_WITHIN);
    if started.elapsed() >= TEARDOWN_WITHIN {
        tracing::warn!(
            "blocking calls still running {TEARDOWN_WITHIN:?} into the runtime's shutdown (DNS lookups of the Redis host, store calls) are left behind"
        );
    }
}

/// Runs the telemetry flush `flush` on a thread of its own and waits for it at most
/// [`FLUSH_WITHIN`] (an exporter whose endpoint does not answer would hold the exit).
pub fn flush_within(flush: fn()) {
    let (done, finished) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new().name("telemetry-flush".into()).spawn(move || {
        flush();
        let _ = done.send(());
    });
    match spawned {
        Ok(_) => {
            if finished.recv_timeout(FLUSH_WITHIN).is_err() {
                tracing::warn!(
                    "the telemetry exporters did not flush within {FLUSH_WITHIN:?}; what they held is dropped"
                );
            }
        }
        Err(_) => flush(),
    }
}
