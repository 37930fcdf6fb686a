//! The process log: information to stdout, warnings and errors to stderr. The host logs stdout
//! lines as Information and stderr lines as Error (Warning when they contain "warn").

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Installs the process's log subscriber (`RUST_LOG` filters; `info,redis=warn` by default). With
/// `traces` (an exporter is configured, see `crate::telemetry`), spans also go to OpenTelemetry:
/// every span of this crate, down to the `trace`-level child spans of Redis, store and queue calls,
/// which the log never shows (and which cost nothing when no exporter is set: no layer wants them).
pub fn init(traces: Option<opentelemetry_sdk::trace::SdkTracerProvider>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,redis=warn"));
    let writer = std::io::stderr.with_max_level(tracing::Level::WARN).or_else(std::io::stdout);
    let log = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(std::io::stdout().is_terminal())
        .with_target(false)
        .with_filter(filter);
    let spans = traces.map(|provider| {
        use opentelemetry::trace::TracerProvider;
        tracing_opentelemetry::layer().with_tracer(provider.tracer("redis-cache-patterns")).with_filter(
            tracing_subscriber::filter::filter_fn(|meta| meta.is_span() && meta.target().starts_with("cachepatterns")),
        )
    });
    tracing_subscriber::registry().with(log).with(spans).init();
}
