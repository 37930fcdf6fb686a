//! `handler`: the custom handler process the Functions host starts.
//!
//! It binds `127.0.0.1:$FUNCTIONS_CUSTOMHANDLER_PORT` first (the host waits for the port), then
//! reads the app settings and prepares the store, the cache and the queue without waiting for any
//! of them to answer.
//!
//! * Locally, a missing or malformed setting, or a store that cannot be opened, prints one line
//!   naming the problem and exits with code 1.
//! * On Azure (`WEBSITE_INSTANCE_ID` is set) an exiting handler takes every function down and the
//!   host gives up after a few restarts, so the handler keeps running instead: with a
//!   configuration it cannot work with, it logs one error line and answers `503` (Health names the
//!   problem) until the settings are fixed and the app restarts.

use std::io::IsTerminal;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use cachepatterns::app::{App, Environment};
use cachepatterns::server;
use cachepatterns::settings::Settings;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::MakeWriterExt;

fn main() -> ExitCode {
    cachepatterns::fatal_signals::install();
    init_logging();
    cachepatterns::tls::ensure_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("handler: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(Environment::from_env())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("handler: cannot start: {message}");
            ExitCode::from(1)
        }
    }
}

async fn run(environment: Environment) -> Result<(), String> {
    let port = Settings::port_from_env().map_err(|e| e.to_string())?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} (FUNCTIONS_CUSTOMHANDLER_PORT): {e}"))?;
    tracing::info!(%addr, "handler listening");
    let limits = server::Limits::default();
    let started = match Settings::from_env() {
        Ok(settings) => App::from_settings(settings, &environment).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let app = match started {
        Ok(app) => app,
        Err(problem) if environment.on_azure => {
            // One clear line, then keep answering: Health and every function say what is wrong.
            tracing::error!(
                "the handler cannot work with this configuration: {problem}; every function answers 503 until it is fixed"
            );
            let router = server::misconfigured_router(problem);
            return server::serve(listener, router, limits, shutdown_signal())
                .await
                .map_err(|e| format!("the server failed: {e}"));
        }
        Err(problem) => return Err(problem),
    };
    let background = app.start_background_work().map_err(|e| e.to_string())?;
    let cache = app.patterns.cache().clone();
    tokio::spawn(async move {
        match cache.ping().await {
            Ok(latency) => tracing::info!(?latency, redis = cache.describe(), "Redis answered"),
            Err(e) => tracing::warn!(error = %e, "Redis is not reachable yet; reads go to the store until it is"),
        }
    });
    let served = server::serve(listener, server::router_with(app, limits), limits, shutdown_signal()).await;
    for task in background {
        task.abort();
    }
    served.map_err(|e| format!("the server failed: {e}"))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}

/// Information to stdout and warnings and errors to stderr: the host logs stdout lines as
/// Information and stderr lines as Error (Warning when they contain "warn").
fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,redis=warn"));
    let writer = std::io::stderr.with_max_level(tracing::Level::WARN).or_else(std::io::stdout);
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stdout().is_terminal())
        .with_target(false)
        .init();
}
