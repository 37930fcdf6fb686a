//! OpenTelemetry metrics as Prometheus text (exposition format 0.0.4), the way the OpenTelemetry
//! specification maps them: dots become underscores, monotonic sums get `_total`, histograms their
//! `_bucket`/`_sum`/`_count` series, the unit a suffix (`_seconds`).

use std::fmt::Write;

use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, Metric, MetricData, ResourceMetrics};

/// A metric or label name Prometheus accepts.
fn sanitize(name: &str) -> String {
    let mut out: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == ':' { c } else { '_' }).collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn unit_suffix(unit: &str) -> &'static str {
    match unit {
        "s" => "_seconds",
        "ms" => "_milliseconds",
        "By" => "_bytes",
        _ => "",
    }
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn labels<'a>(attributes: impl Iterator<Item = &'a KeyValue>, extra: Option<(&str, String)>) -> String {
    let mut pairs: Vec<String> =
        attributes.map(|kv| format!("{}=\"{}\"", sanitize(kv.key.as_str()), escape(&kv.value.as_str()))).collect();
    if let Some((name, value)) = extra {
        pairs.push(format!("{name}=\"{value}\""));
    }
    if pairs.is_empty() { String::new() } else { format!("{{{}}}", pairs.join(",")) }
}

fn number(value: f64) -> String {
    if value.is_infinite() { if value > 0.0 { "+Inf".into() } else { "-Inf".into() } } else { format!("{value}") }
}

/// Renders every metric of `collected`.
pub(super) fn render(collected: &ResourceMetrics) -> String {
    let mut out = String::new();
    for scope in collected.scope_metrics() {
        for metric in scope.metrics() {
            render_metric(&mut out, metric);
        }
    }
    out
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {}", help.replace('\n', " "));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn render_metric(out: &mut String, metric: &Metric) {
    let base = format!("{}{}", sanitize(metric.name()), unit_suffix(metric.unit()));
    match metric.data() {
        AggregatedMetrics::F64(data) => render_data(out, &base, metric.description(), data, |v| *v),
        AggregatedMetrics::U64(data) => render_data(out, &base, metric.description(), data, |v| *v as f64),
        AggregatedMetrics::I64(data) => render_data(out, &base, metric.description(), data, |v| *v as f64),
    }
}

fn render_data<T: Copy>(out: &mut String, base: &str, help: &str, data: &MetricData<T>, as_f64: impl Fn(&T) -> f64) {
    match data {
        MetricData::Sum(sum) => {
            let (name, kind) =
                if sum.is_monotonic() { (format!("{base}_total"), "counter") } else { (base.to_string(), "gauge") };
            header(out, &name, help, kind);
            for point in sum.data_points() {
                let _ = writeln!(out, "{name}{} {}", labels(point.attributes(), None), number(as_f64(&point.value())));
            }
        }
        MetricData::Gauge(gauge) => {
            header(out, base, help, "gauge");
            for point in gauge.data_points() {
                let _ = writeln!(out, "{base}{} {}", labels(point.attributes(), None), number(as_f64(&point.value())));
            }
        }
        MetricData::Histogram(histogram) => {
            header(out, base, help, "histogram");
            for point in histogram.data_points() {
                let mut cumulative = 0;
                for (bound, count) in point.bounds().chain(std::iter::once(f64::INFINITY)).zip(point.bucket_counts()) {
                    cumulative += count;
                    let le = Some(("le", number(bound)));
                    let _ = writeln!(out, "{base}_bucket{} {cumulative}", labels(point.attributes(), le));
                }
                let plain = labels(point.attributes(), None);
                let _ = writeln!(out, "{base}_sum{plain} {}", number(as_f64(&point.sum())));
                let _ = writeln!(out, "{base}_count{plain} {}", point.count());
            }
        }
        MetricData::ExponentialHistogram(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_labels_and_numbers_are_what_prometheus_accepts() {
        assert_eq!(sanitize("http.server.request.duration"), "http_server_request_duration");
        assert_eq!(sanitize("9lives"), "_9lives");
        assert_eq!(unit_suffix("s"), "_seconds");
        let kv = [KeyValue::new("db.system.name", "redis"), KeyValue::new("q", "a\"b\\c\nd")];
        assert_eq!(
            labels(kv.iter(), Some(("le", "+Inf".into()))),
            r#"{db_system_name="redis",q="a\"b\\c\nd",le="+Inf"}"#
        );
        assert_eq!(labels([].iter(), None), "");
        assert_eq!((number(f64::INFINITY), number(0.5), number(3.0)), ("+Inf".into(), "0.5".into(), "3".into()));
    }
}
