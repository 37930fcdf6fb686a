//! `EventHubConsumer`: hands a batch of write events from Event Hubs to the apply core
//! (`patterns::write_behind::PushedBatches`, which decides what is applied, retried or
//! dead-lettered).
//!
//! The trigger is `cardinality: many`, `dataType: string`, so `Data.events` is a string holding a
//! JSON array of strings, with `*Array` metadata (docs/host-protocol.md §5.2). A portal Test/Run sends
//! one event as a double-encoded string with single-form metadata and no `PartitionContext`; both
//! are read here. Failing the invocation (a [`TriggerFailure`]) makes the host's retry policy in
//! `function.json` (unbounded, exponential) run the batch again.

use serde_json::Value;

use super::triggers::{Outputs, TriggerFailure, retry_context};
use crate::domain::time::Timestamp;
use crate::http::host::InvocationLog;
use crate::http::host::lenient;
use crate::http::host::payload::Invocation;
use crate::patterns::PushedBatches;
use crate::patterns::apply::Delivery;
use crate::patterns::write_behind::PushedBatch;

/// The trigger binding's name in `EventHubConsumer/function.json`.
const TRIGGER: &str = "events";

/// The event bodies of an invocation, in order.
fn event_bodies(invocation: &Invocation) -> Vec<String> {
    let Some(raw) = invocation.binding(TRIGGER) else { return Vec::new() };
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match raw {
        // The batch form: a string holding a JSON array (of strings, or of parsed JSON values
        // when the trigger has no dataType).
        Value::String(s) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Array(items)) => items.iter().map(text).collect(),
            // The portal / cardinality-one form: a JSON-encoded string.
            Ok(Value::String(single)) => vec![single],
            // Anything else: the text itself is the event.
            _ => vec![s.clone()],
        },
        Value::Array(items) => items.iter().map(text).collect(),
        Value::Null => Vec::new(),
        other => vec![other.to_string()],
    }
}

/// Where event `index` came from, from the metadata (batch or single form).
fn source(invocation: &Invocation, index: usize) -> String {
    let partition = invocation
        .metadata("PartitionContext")
        .and_then(|p| lenient::object(&p))
        .and_then(|p| lenient::field(&p, "PartitionId").and_then(lenient::text));
    let pick = |array: &str, single: &str| {
        invocation
            .metadata(array)
            .and_then(|v| lenient::array(&v))
            .and_then(|items| items.get(index).and_then(lenient::text))
            .or_else(|| invocation.metadata(single).as_ref().and_then(lenient::text))
    };
    let sequence = pick("SequenceNumberArray", "SequenceNumber");
    match (partition, sequence) {
        (Some(p), Some(s)) => format!("event hub partition {p} sequence {s}"),
        (None, Some(s)) => format!("event hub sequence {s}"),
        (Some(p), None) => format!("event hub partition {p} event {index}"),
        (None, None) => format!("event hub event {index} (no partition context: a portal test run?)"),
    }
}

/// When the oldest event of the batch was enqueued, if the metadata says.
fn oldest_enqueued(invocation: &Invocation) -> Option<Timestamp> {
    let times: Vec<Value> = invocation
        .metadata("EnqueuedTimeUtcArray")
        .and_then(|v| lenient::array(&v))
        .or_else(|| invocation.metadata("EnqueuedTimeUtc").map(|v| vec![v]))?;
    times.iter().filter_map(lenient::timestamp).min()
}

pub(super) async fn invoke(
    batches: &PushedBatches,
    invocation: &Invocation,
    log: &mut InvocationLog,
) -> Result<Outputs, TriggerFailure> {
    let retry = retry_context(invocation);
    if let Some((count, max)) = retry
        && count != 0
    {
        log.info(format_args!("retry {count} of this batch (at most {max}; -1: unbounded)"));
    }
    let deliveries = retry.map_or(1, |(count, _)| u64::try_from(count).unwrap_or(0) + 1);
    let deliveries = event_bodies(invocation)
        .into_iter()
        .enumerate()
        // Each retry of the host's policy delivers the batch again.
        .map(|(i, raw)| Delivery { raw, source: source(invocation, i), deliveries, enqueued_at: None })
        .collect();
    let batch = PushedBatch { deliveries, retry, oldest_enqueued: oldest_enqueued(invocation) };
    let outcome = batches.apply(&batch).await?;
    let report = outcome.report;
    log.info(format_args!(
        "EventHubConsumer: {} events, {} keys, {} applied, {} stale-skipped, {} dead-lettered",
        report.events, report.keys, report.applied, report.stale_skipped, outcome.dead_lettered
    ));
    Ok(Outputs::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn invocation(data: Value, metadata: Value) -> Invocation {
        Invocation::parse(json!({"Data": {"events": data}, "Metadata": metadata}).to_string().as_bytes()).unwrap()
    }

    #[test]
    fn batch_single_and_portal_forms() {
        let batch = invocation(
            json!("[\"{\\\"a\\\":1}\",\"plain text\"]"),
            json!({"SequenceNumberArray": "[7,8]", "PartitionContext": {"PartitionId": "3"}}),
        );
        assert_eq!(event_bodies(&batch), vec!["{\"a\":1}".to_string(), "plain text".to_string()]);
        assert_eq!(source(&batch, 1), "event hub partition 3 sequence 8");
        let portal = invocation(json!("\"{\\\"key\\\":\\\"k\\\"}\""), json!({"SequenceNumber": "0"}));
        assert_eq!(event_bodies(&portal), vec!["{\"key\":\"k\"}".to_string()]);
        assert_eq!(source(&portal, 0), "event hub sequence 0");
        let untyped = invocation(json!("[{\"a\":1},42]"), json!({}));
        assert_eq!(event_bodies(&untyped), vec!["{\"a\":1}".to_string(), "42".to_string()]);
        assert!(source(&untyped, 0).contains("portal"));
        let empty = invocation(json!("[]"), json!({}));
        assert!(event_bodies(&empty).is_empty());
    }
}
