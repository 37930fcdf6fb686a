//! `RefreshAheadRead`: `GET api/refresh-ahead/{key?}`; `RefreshAhead`: the timer that keeps hot
//! keys warm (payload mode only).

use chrono::{DateTime, SecondsFormat};
use serde_json::{Map, Value};

use super::cache_aside::read_answer;
use super::input::read_key;
use super::triggers::{Outputs, TriggerFailure};
use crate::app::App;
use crate::patterns::refresh_ahead::TimerPlan;
use crate::protocol::lenient::{self, field};
use crate::protocol::payload::Invocation;
use crate::protocol::{HttpCall, HttpReply, InvocationLog};

pub async fn handle(app: &App, call: &HttpCall, log: &mut InvocationLog) -> HttpReply {
    let key = match read_key(call) {
        Ok(key) => key,
        Err(reply) => return reply,
    };
    read_answer("refresh-ahead", &key, app.patterns.refresh_ahead_get(&key).await, log)
}

/// What the host says about a timer run (docs/host-protocol.md §5.1). Every part is optional: the
/// status is `null` without the schedule monitor, `Last` is the year 1 on a first run, a portal
/// Test/Run builds the same shape with `IsPastDue: false`, and values may be JSON-encoded twice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimerInfo {
    /// `ScheduleStatus.Next` (ms), when present and readable.
    pub next_ms: Option<i64>,
    /// `IsPastDue`.
    pub past_due: bool,
}

impl TimerInfo {
    /// Reads the timer binding `binding` of `invocation`, leniently; anything unreadable is absent.
    pub fn read(invocation: &Invocation, binding: &str) -> Self {
        let Some(timer) = invocation.binding(binding).and_then(lenient::object) else { return Self::default() };
        let next_ms = field(&timer, "ScheduleStatus")
            .and_then(lenient::object)
            .and_then(|status| field(&status, "Next").and_then(lenient::timestamp_millis));
        let past_due = match field(&timer, "IsPastDue").map(lenient::unwrap) {
            Some(Value::Bool(b)) => b,
            Some(Value::String(s)) => s.trim().eq_ignore_ascii_case("true"),
            _ => false,
        };
        Self { next_ms, past_due }
    }
}

/// `RefreshAhead`: one timer run. Always a success envelope (a failed timer is simply run again at
/// the next tick; a retry would only add load), with the counts in `Logs`.
pub async fn timer(
    app: &App,
    binding: &str,
    invocation: &Invocation,
    log: &mut InvocationLog,
) -> Result<Outputs, TriggerFailure> {
    let info = TimerInfo::read(invocation, binding);
    let policy = app.patterns.refresh_ahead_policy();
    let plan = TimerPlan::new(&policy.schedule, app.patterns.now().as_millis() as i64, info.next_ms);
    let late = if info.past_due { " (past due)" } else { "" };
    match app.patterns.refresh_hot_keys(&plan).await {
        Ok(report) if report.other_instance => log.info(format!(
            "refresh-ahead timer{late}: another instance is handling the tick of {}; 0 refreshed, 0 skipped, 0 failed",
            time(plan.tick_ms)
        )),
        Ok(report) => log.info(format!(
            "refresh-ahead timer{late}: {} refreshed, {} skipped, {} failed of {} hot keys (entries expiring before {}; next run {})",
            report.refreshed,
            report.skipped,
            report.failed,
            report.considered,
            time(plan.horizon_ms),
            time(plan.next_run_ms)
        )),
        Err(e) => log.warn(format!(
            "refresh-ahead timer{late}: the cache is unavailable ({e}); 0 refreshed, 0 skipped, 0 failed; the next run tries again"
        )),
    }
    Ok(Map::new())
}

fn time(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_else(|| ms.to_string())
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
        let next = 1_729_851_900_000;
        let scheduled = json!({"Schedule": {"AdjustForDST": true}, "ScheduleStatus": {"Last": "2024-10-25T10:15:00.0105419+00:00", "Next": "2024-10-25T10:25:00+00:00", "LastUpdated": "2024-10-25T10:15:00.0105419+00:00"}, "IsPastDue": false});
        assert_eq!(info(scheduled.clone()), TimerInfo { next_ms: Some(next), past_due: false });
        assert_eq!(info(Value::String(scheduled.to_string())).next_ms, Some(next));
        assert_eq!(
            info(json!({"ScheduleStatus": null, "IsPastDue": "True"})),
            TimerInfo { next_ms: None, past_due: true }
        );
        assert_eq!(info(json!({"ScheduleStatus": {"Next": "\"2024-10-25T10:25:00\""}})).next_ms, Some(next));
        assert_eq!(info(json!("\"not a timer\"")), TimerInfo::default());
        assert_eq!(info(Value::Null), TimerInfo::default());
    }
}
