//! `handler`: the custom handler process the Functions host starts.
//!
//! It reads the app settings, opens the store, prepares the Redis connection (without waiting for
//! Redis: a Redis that is down only degrades the cache), and serves on
//! `127.0.0.1:$FUNCTIONS_CUSTOMHANDLER_PORT`. Start-up failures print one line naming the problem
//! and exit with code 1, which the host reports and retries.

use std::io::IsTerminal;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use cachepatterns::app::App;
use cachepatterns::server;
use cachepatterns::settings::Settings;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::MakeWriterExt;

fn main() -> ExitCode {
    cachepatterns::fatal_signals::install();
    init_logging();
    cachepatterns::tls::ensure_crypto_provider();
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("handler: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("handler: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("handler: cannot start: {message}");
            ExitCode::from(1)
        }
    }
}

async fn run(settings: Settings) -> Result<(), String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, settings.port));
    let app = App::from_settings(settings).await.map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} (FUNCTIONS_CUSTOMHANDLER_PORT): {e}"))?;
    tracing::info!(%addr, "handler listening");
    let cache = app.patterns.cache().clone();
    tokio::spawn(async move {
        match cache.ping().await {
            Ok(latency) => tracing::info!(?latency, redis = cache.describe(), "Redis answered"),
            Err(e) => tracing::warn!(error = %e, "Redis is not reachable yet; reads go to the store until it is"),
        }
    });
    let background = app.start_background_work().map_err(|e| e.to_string())?;
    let limits = server::Limits::default();
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
