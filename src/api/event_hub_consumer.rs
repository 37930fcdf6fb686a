//! `EventHubConsumer`: applies a batch of write events from Event Hubs to the store.
//!
//! The trigger is `cardinality: many`, `dataType: string`, so `Data.events` is a string holding a
//! JSON array of strings, with `*Array` metadata (docs/host-protocol.md §5.2). A portal Test/Run sends
//! one event as a double-encoded string with single-form metadata and no `PartitionContext`; both
//! are read here. The Event Hubs trigger checkpoints even failed batches once its retry policy is
//! done, so nothing is left for a redelivery after that:
//! * poison (never applicable) goes to the dead-letter stream at once;
//! * a write the store refused for now (down, full disk, throttling) fails the invocation, so the
//!   retry policy in `function.json` (unbounded, exponential) runs the batch again (applying is
//!   idempotent), until the batch is older than `WriteBehindRetryWindowSeconds` (by its events'
//!   enqueued times), or the policy's last retry: then what still fails is dead-lettered;
//! * when a dead letter cannot be recorded (Redis down) the invocation fails, to be run again.

use serde_json::Value;

use super::triggers::{Outputs, TriggerFailure};
use crate::app::App;
use crate::clock::Timestamp;
use crate::patterns::apply_writes::{Delivery, Outcome};
use crate::protocol::InvocationLog;
use crate::protocol::lenient;
use crate::protocol::payload::Invocation;

/// The trigger binding's name in `EventHubConsumer/function.json`.
pub const TRIGGER: &str = "events";

/// The event bodies of an invocation, in order.
pub fn event_bodies(invocation: &Invocation) -> Vec<String> {
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

/// The retry policy's progress: (retry count, max retry count; -1 is unbounded).
fn retry_context(invocation: &Invocation) -> Option<(i64, i64)> {
    let retry = invocation.metadata("RetryContext").and_then(|r| lenient::object(&r))?;
    let number = |name: &str| lenient::field(&retry, name).and_then(lenient::text).and_then(|t| t.parse().ok());
    Some((number("RetryCount")?, number("MaxRetryCount").unwrap_or(-1)))
}

/// When the oldest event of the batch was enqueued, if the metadata says.
fn oldest_enqueued(invocation: &Invocation) -> Option<Timestamp> {
    let times: Vec<Value> = invocation
        .metadata("EnqueuedTimeUtcArray")
        .and_then(|v| lenient::array(&v))
        .or_else(|| invocation.metadata("EnqueuedTimeUtc").map(|v| vec![v]))?;
    times
        .iter()
        .filter_map(lenient::timestamp_millis)
        .filter_map(|ms| u64::try_from(ms).ok())
        .min()
        .map(Timestamp::from_millis)
}

/// Whether transient failures may still be retried by failing the invocation.
fn may_retry(app: &App, invocation: &Invocation) -> bool {
    let last_retry = matches!(retry_context(invocation), Some((count, max)) if max >= 0 && count >= max);
    let within_window = match oldest_enqueued(invocation) {
        Some(enqueued) => app.patterns.now().since(enqueued) < app.settings.write_behind_retry_window,
        // No enqueued time (a portal test run): retry a few times only.
        None => retry_context(invocation).is_none_or(|(count, _)| count < 5),
    };
    !last_retry && within_window
}

pub async fn invoke(app: &App, invocation: &Invocation, log: &mut InvocationLog) -> Result<Outputs, TriggerFailure> {
    if let Err(e) = app.patterns.store().configured() {
        // Keep the batch for when there is a store: failing makes the host retry it.
        return Err(TriggerFailure(format!("not applied, kept for a retry: {e}")));
    }
    let bodies = event_bodies(invocation);
    if let Some((count, max)) = retry_context(invocation)
        && count != 0
    {
        log.info(format!("retry {count} of this batch (at most {max}; -1: unbounded)"));
    }
    let deliveries: Vec<Delivery> = bodies
        .iter()
        .enumerate()
        .map(|(i, raw)| Delivery { raw: raw.clone(), source: source(invocation, i), deliveries: 1 })
        .collect();
    let (outcomes, report) = app.patterns.apply_deliveries(&deliveries, app.event_hub_apply).await;
    let transient: Vec<&str> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Failed { reason, transient: true, .. } => Some(reason.as_str()),
            _ => None,
        })
        .collect();
    let retry_later = !transient.is_empty() && may_retry(app, invocation);
    let mut dead_lettered = 0;
    let mut unrecorded = Vec::new();
    for (delivery, outcome) in deliveries.iter().zip(&outcomes) {
        let (reason, attempts) = match outcome {
            Outcome::Poison { reason } => (reason.clone(), 1),
            Outcome::Failed { transient: true, .. } if retry_later => continue,
            Outcome::Failed { reason, attempts, .. } => (reason.clone(), *attempts),
            _ => continue,
        };
        match app.patterns.dead_letters().record(&delivery.raw, &reason, &delivery.source, attempts).await {
            Ok(_) => dead_lettered += 1,
            Err(e) => unrecorded.push(format!("{}: {e}", delivery.source)),
        }
    }
    log.info(format!(
        "EventHubConsumer: {} events, {} keys, {} applied, {} stale-skipped, {} dead-lettered",
        report.events, report.keys, report.applied, report.stale_skipped, dead_lettered
    ));
    if retry_later {
        return Err(TriggerFailure(format!(
            "{} writes could not be applied yet ({}); failing the invocation so that the retry policy runs the batch again",
            transient.len(),
            transient.first().copied().unwrap_or_default()
        )));
    }
    if !unrecorded.is_empty() {
        return Err(TriggerFailure(format!(
            "{} events could neither be applied nor dead-lettered ({}); failing the invocation so that the retry policy runs it again",
            unrecorded.len(),
            unrecorded.join("; ")
        )));
    }
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
