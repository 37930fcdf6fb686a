//! `handler`: the custom handler process the Functions host starts.
//!
//! It binds `127.0.0.1:$FUNCTIONS_CUSTOMHANDLER_PORT` first (the host waits for the port), then
//! reads the app settings and prepares the store, the cache and the queue without waiting for any
//! of them to answer (`startup::run`).
//!
//! * Locally, a missing or malformed setting, or a store that cannot be opened, prints one line
//!   naming the problem and exits with code 1.
//! * On Azure (`WEBSITE_INSTANCE_ID` is set) an exiting handler takes every function down and the
//!   host gives up after a few restarts, so the handler keeps running instead: with a
//!   configuration it cannot work with, it logs one error line and answers `503` (Health names the
//!   problem) until the settings are fixed and the app restarts.
//! * On SIGTERM or Ctrl-C it stops within a bounded time and exits with status 0
//!   (`startup::shutdown`).

use std::process::ExitCode;

use cachepatterns::domain::error_chain::Chain;
use cachepatterns::startup::{self, Environment};

/// mimalloc rather than glibc's allocator: a request allocates and frees many small blocks across
/// two worker threads, where glibc's arenas spent about a tenth of a hit's CPU (see Cargo.toml).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    startup::fatal_signals::install();
    // Before the telemetry exporters: their HTTP client needs the TLS provider.
    cachepatterns::adapters::tls::ensure_crypto_provider();
    let export = cachepatterns::telemetry::Export::from_env();
    let telemetry = cachepatterns::telemetry::install(&export);
    startup::logging::init(telemetry.as_ref().ok().cloned().flatten());
    if let Err(e) = &telemetry {
        tracing::error!(error = %Chain(e), "telemetry is not exported; api/metrics still answers");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("handler: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let served = runtime.block_on(startup::run(Environment::from_env()));
    startup::shutdown::flush_within(cachepatterns::telemetry::shutdown);
    // Not a plain drop: that would wait for every blocking call still running (a DNS lookup of the
    // Redis host on a resolver that does not answer lasts its timeout, tens of seconds).
    startup::shutdown::tear_down(runtime);
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("handler: cannot start: {}", Chain(&e));
            ExitCode::from(1)
        }
    }
}
