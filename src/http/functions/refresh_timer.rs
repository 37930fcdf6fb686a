//! `RefreshAhead`: the timer that keeps hot keys warm (payload mode only).

use serde_json::{Map, Value};

use super::triggers::{Outputs, TriggerFailure};
use crate::domain::error_chain::Chain;
use crate::domain::time::Timestamp;
use crate::http::host::InvocationLog;
use crate::http::host::lenient::{self, field};
use crate::http::host::payload::Invocation;
use crate::patterns::RefreshAhead;

/// What the host says about a timer run (docs/host-protocol.md §5.1). Every part is optional: the
/// status is `null` without the schedule monitor, `Last` is the year 1 on a first run, a portal
/// Test/Run builds the same shape with `IsPastDue: false`, and values may be JSON-encoded twice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct TimerInfo {
    /// `ScheduleStatus.Next`, when present and readable.
    next: Option<Timestamp>,
    /// `IsPastDue`.
    past_due: bool,
}

impl TimerInfo {
    /// Reads the timer binding `binding` of `invocation`, leniently; anything unreadable is absent.
    fn read(invocation: &Invocation, binding: &str) -> Self {
        let Some(timer) = invocation.binding(binding).and_then(lenient::object) else { return Self::default() };
        let next = field(&timer, "ScheduleStatus")
            .and_then(lenient::object)
            .and_then(|status| field(&status, "Next").and_then(lenient::timestamp));
        let past_due = match field(&timer, "IsPastDue").map(lenient::unwrap) {
            Some(Value::Bool(b)) => b,
            Some(Value::String(s)) => s.trim().eq_ignore_ascii_case("true"),
            _ => false,
        };
        Self { next, past_due }
    }
}

/// One timer run. Always a success envelope (a failed timer is simply run again at the next tick; a
/// retry would only add load), with the counts in `Logs`.
pub(super) async fn invoke(
    refresh_ahead: &RefreshAhead,
    binding: &str,
    invocation: &Invocation,
    log: &mut InvocationLog,
) -> Result<Outputs, TriggerFailure> {
    let info = TimerInfo::read(invocation, binding);
    let plan = refresh_ahead.plan(info.next);
    let late = if info.past_due { " (past due)" } else { "" };
    match refresh_ahead.run_timer(&plan).await {
        Ok(report) if report.other_instance => log.info(format_args!(
            "refresh-ahead timer{late}: another instance is handling the tick of {}; 0 refreshed, 0 skipped, 0 failed",
            whole_seconds(plan.tick)
        )),
        Ok(report) => log.info(format_args!(
            "refresh-ahead timer{late}: {} refreshed, {} skipped, {} failed of {} hot keys (entries expiring before {}; next run {})",
            report.refreshed,
            report.skipped,
            report.failed,
            report.considered,
            whole_seconds(plan.horizon),
            whole_seconds(plan.next_run)
        )),
        Err(e) => log.warn(format_args!(
            "refresh-ahead timer{late}: the cache is unavailable ({}); 0 refreshed, 0 skipped, 0 failed; the next run tries again",
            Chain(&e)
        )),
    }
    Ok(Map::new())
}

/// RFC 3339 to the second, as people read schedules.
fn whole_seconds(t: Timestamp) -> String {
    t.to_datetime().map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)).unwrap_or_else(|| t.rfc3339())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn info(timer: Value) -> TimerInfo {
        let body = json!({"Data": {"timer": timer}, "Metadata": {}});
        TimerInfo::read(&Invocation::parse(body.to_string().as_bytes()).unwrap(), "timer")
    }

    #[test]
    fn reads_every_timer_shape() {
        let next = Timestamp::from_millis(1_729_851_900_000);
        let scheduled = json!({"Schedule": {"AdjustForDST": true}, "ScheduleStatus": {"Last": "2024-10-25T10:15:00.0105419+00:00", "Next": "2024-10-25T10:25:00+00:00", "LastUpdated": "2024-10-25T10:15:00.0105419+00:00"}, "IsPastDue": false});
        assert_eq!(info(scheduled.clone()), TimerInfo { next: Some(next), past_due: false });
        assert_eq!(info(Value::String(scheduled.to_string())).next, Some(next));
        assert_eq!(
            info(json!({"ScheduleStatus": null, "IsPastDue": "True"})),
            TimerInfo { next: None, past_due: true }
        );
        assert_eq!(info(json!({"ScheduleStatus": {"Next": "\"2024-10-25T10:25:00\""}})).next, Some(next));
        assert_eq!(info(json!("\"not a timer\"")), TimerInfo::default());
        assert_eq!(info(Value::Null), TimerInfo::default());
    }
}
