//! The process log: information to stdout, warnings and errors to stderr. The host logs stdout
//! lines as Information and stderr lines as Error (Warning when they contain "warn").

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::MakeWriterExt;

/// Installs the process's log subscriber (`RUST_LOG` filters; `info,redis=warn` by default).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,redis=warn"));
    let writer = std::io::stderr.with_max_level(tracing::Level::WARN).or_else(std::io::stdout);
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stdout().is_terminal())
        .with_target(false)
        .init();
}
