//! Telemetry: metrics and traces with OpenTelemetry (docs/observability.md).
//!
//! * Every layer records through the handles in [`instruments`] (the OpenTelemetry API, like the
//!   `tracing` macros for logs). One meter provider per process holds them; it always has an
//!   in-process reader, so `GET api/metrics` can answer the same counters as Prometheus text
//!   ([`prometheus_text`]).
//! * With `OTEL_EXPORTER_OTLP_ENDPOINT` set, metrics and traces are also exported over OTLP/HTTP
//!   (protobuf); with `APPLICATIONINSIGHTS_CONNECTION_STRING` set, to Azure Monitor Application
//!   Insights. Traces are the `tracing` spans (one per invocation, children for Redis, the store and
//!   the queue), bridged by `tracing-opentelemetry`; without an exporter no span leaves the process
//!   and nothing is spent on them beyond the log spans that exist anyway.
//!
//! This module imports nothing else of the crate, so every layer may use it.

pub mod instruments;
mod prometheus;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{
    InstrumentKind, ManualReader, PeriodicReader, Pipeline, SdkMeterProvider, Temporality, data::ResourceMetrics,
    reader::MetricReader,
};
use opentelemetry_sdk::trace::SdkTracerProvider;

pub use instruments::metrics;

/// How often metrics are pushed to an exporter.
const EXPORT_EVERY: Duration = Duration::from_secs(10);

/// Where telemetry goes besides `api/metrics`, from the standard settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Export {
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: an OTLP/HTTP endpoint (`http://collector:4318`).
    pub otlp_endpoint: Option<String>,
    /// `APPLICATIONINSIGHTS_CONNECTION_STRING`.
    pub application_insights: Option<String>,
}

impl Export {
    /// Reads the standard environment variables.
    pub fn from_env() -> Self {
        let get = |name: &str| std::env::var(name).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        Self {
            otlp_endpoint: get("OTEL_EXPORTER_OTLP_ENDPOINT"),
            application_insights: get("APPLICATIONINSIGHTS_CONNECTION_STRING"),
        }
    }

    fn any(&self) -> bool {
        self.otlp_endpoint.is_some() || self.application_insights.is_some()
    }
}

/// Why an exporter could not be set up (the service runs on without it).
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter.
    #[error("cannot set up the OTLP exporter for OTEL_EXPORTER_OTLP_ENDPOINT")]
    Otlp(#[source] opentelemetry_otlp::ExporterBuildError),
    /// The Application Insights exporter.
    #[error("APPLICATIONINSIGHTS_CONNECTION_STRING is not a usable connection string")]
    ApplicationInsights(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The in-process reader `api/metrics` collects from, shared with the meter provider.
#[derive(Debug, Clone)]
struct SharedReader(Arc<ManualReader>);

impl MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: std::sync::Weak<Pipeline>) {
        self.0.register_pipeline(pipeline);
    }

    fn collect(&self, rm: &mut ResourceMetrics) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.collect(rm)
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

/// What [`install`] set up.
struct Installed {
    meters: SdkMeterProvider,
    reader: SharedReader,
    tracer: Option<SdkTracerProvider>,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

fn resource() -> Resource {
    Resource::builder()
        .with_service_name("redis-cache-patterns")
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Sets up the process's meter provider (and, with an exporter, the tracer provider) once.
/// Returns the tracer provider when traces are exported, for the `tracing` bridge. Exporter
/// errors are returned after the in-process metrics are set up, so `api/metrics` works anyway.
pub fn install(export: &Export) -> Result<Option<SdkTracerProvider>, TelemetryError> {
    let mut failure = None;
    let installed = INSTALLED.get_or_init(|| {
        let reader = SharedReader(Arc::new(ManualReader::builder().with_temporality(Temporality::Cumulative).build()));
        let mut meters = SdkMeterProvider::builder().with_resource(resource()).with_reader(reader.clone());
        let mut tracer = None;
        if export.any() {
            let mut traces = SdkTracerProvider::builder().with_resource(resource());
            match exporters(export) {
                Ok(found) => {
                    for (metric_exporter, span_exporter) in found {
                        meters = match metric_exporter {
                            Exporter::Otlp(e) => {
                                meters.with_reader(PeriodicReader::builder(e).with_interval(EXPORT_EVERY).build())
                            }
                            Exporter::Insights(e) => {
                                meters.with_reader(PeriodicReader::builder(e).with_interval(EXPORT_EVERY).build())
                            }
                        };
                        traces = match span_exporter {
                            SpanExporter::Otlp(e) => traces.with_batch_exporter(e),
                            SpanExporter::Insights(e) => traces.with_batch_exporter(e),
                        };
                    }
                    tracer = Some(traces.build());
                }
                Err(e) => failure = Some(e),
            }
        }
        let meters = meters.build();
        opentelemetry::global::set_meter_provider(meters.clone());
        Installed { meters, reader, tracer }
    });
    match failure {
        Some(e) => Err(e),
        None => Ok(installed.tracer.clone()),
    }
}

type InsightsExporter = opentelemetry_application_insights::Exporter<reqwest::blocking::Client>;

enum Exporter {
    Otlp(opentelemetry_otlp::MetricExporter),
    Insights(InsightsExporter),
}

enum SpanExporter {
    Otlp(opentelemetry_otlp::SpanExporter),
    Insights(InsightsExporter),
}

fn exporters(export: &Export) -> Result<Vec<(Exporter, SpanExporter)>, TelemetryError> {
    use opentelemetry_otlp::WithExportConfig;
    let mut found = Vec::new();
    if let Some(endpoint) = &export.otlp_endpoint {
        // The standard variable names the collector's base URL; each signal has its own path.
        let base = endpoint.trim_end_matches('/');
        let metrics = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_endpoint(format!("{base}/v1/metrics"))
            .with_temporality(Temporality::Cumulative)
            .build()
            .map_err(TelemetryError::Otlp)?;
        let spans = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(format!("{base}/v1/traces"))
            .build()
            .map_err(TelemetryError::Otlp)?;
        found.push((Exporter::Otlp(metrics), SpanExporter::Otlp(spans)));
    }
    if let Some(connection) = &export.application_insights {
        let insights = || {
            let client = reqwest::blocking::Client::builder()
                .build()
                .map_err(|e| TelemetryError::ApplicationInsights(e.into()))?;
            opentelemetry_application_insights::Exporter::new_from_connection_string(connection.clone(), client)
                .map_err(TelemetryError::ApplicationInsights)
        };
        found.push((Exporter::Insights(insights()?), SpanExporter::Insights(insights()?)));
    }
    Ok(found)
}

/// The meter provider, set up without exporters if [`install`] was not called (tests, tools).
fn installed() -> &'static Installed {
    if INSTALLED.get().is_none() {
        let _ = install(&Export::default());
    }
    INSTALLED.get().unwrap_or_else(|| unreachable!("installed just above"))
}

/// True when spans are exported (an exporter is configured): only then is a caller's
/// `traceparent` worth reading.
pub(crate) fn traces_exported() -> bool {
    INSTALLED.get().is_some_and(|installed| installed.tracer.is_some())
}

/// Makes sure the meter provider exists before the first instrument is created.
pub fn ensure_installed() {
    installed();
}

/// Every metric now, as Prometheus text (exposition format 0.0.4).
pub fn prometheus_text() -> String {
    let installed = installed();
    // The instruments exist from the first scrape on (the gauges show even before any request).
    let _ = metrics();
    let mut collected = ResourceMetrics::default();
    match installed.reader.collect(&mut collected) {
        Ok(()) => prometheus::render(&collected),
        Err(e) => format!("# metrics could not be collected: {e}\n"),
    }
}

/// Flushes and stops the exporters (at shutdown, so the last figures and spans leave).
pub fn shutdown() {
    if let Some(installed) = INSTALLED.get() {
        if let Some(tracer) = &installed.tracer {
            let _ = tracer.force_flush();
            let _ = tracer.shutdown();
        }
        let _ = installed.meters.force_flush();
        let _ = installed.meters.shutdown();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn recorded_counters_show_in_the_prometheus_text() {
        super::metrics().cache_request("CacheAside", "hit", Some("l1"));
        let text = super::prometheus_text();
        assert!(text.contains("cache_requests_total{function=\"CacheAside\",outcome=\"hit\",tier=\"l1\"}"), "{text}");
    }
}
