//! The timer's schedule, as the Functions host reads it (docs/host-protocol.md §5.1): a 6-field NCRONTAB
//! expression `{second} {minute} {hour} {day} {month} {day-of-week}`, or a TimeSpan `hh:mm:ss`.
//!
//! The refresh-ahead timer needs it to know when it runs next (which entries would expire before
//! then) and which tick a run belongs to (so that one instance handles each tick). `croner` parses
//! NCRONTAB faithfully: weekdays 0–6 from Sunday (the `cron` crate numbers them from 1), and NCRONTAB
//! combines a day-of-month and a day-of-week with AND. Times are UTC, the host's default
//! (`WEBSITE_TIME_ZONE` is not read; a local-time schedule only shifts the refresh horizon).

use std::fmt;

use croner::Cron;
use croner::parser::{CronParser, Seconds};

use crate::domain::time::Timestamp;

/// A parsed timer schedule.
#[derive(Clone)]
pub struct Schedule {
    text: String,
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Cron(Box<Cron>),
    /// A TimeSpan schedule: every this many microseconds, counted from the epoch.
    Every(u64),
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.text)
    }
}

impl Default for Schedule {
    /// Every five minutes on the minute (`0 */5 * * * *`), the timer's default.
    fn default() -> Self {
        Self::parse(Self::DEFAULT).unwrap_or(Self { text: "00:05:00".into(), kind: Kind::Every(300_000_000) })
    }
}

impl Schedule {
    /// The default schedule (`RefreshAheadSchedule`): every five minutes, on the minute.
    pub(crate) const DEFAULT: &'static str = "0 */5 * * * *";

    /// Parses an NCRONTAB expression (6 fields; 5 fields are accepted too) or a TimeSpan
    /// (`hh:mm:ss`, `d.hh:mm:ss`). The error says what is wrong, for a setting error line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Some(seconds) = parse_timespan(text) {
            return if seconds == 0 {
                Err("a TimeSpan schedule must be longer than zero".into())
            } else {
                Ok(Self { text: text.to_string(), kind: Kind::Every(seconds * 1_000_000) })
            };
        }
        let fields = text.split_whitespace().count();
        if fields != 6 && fields != 5 {
            return Err(format!(
                "expected an NCRONTAB expression with 6 fields ({{second}} {{minute}} {{hour}} {{day}} {{month}} {{day-of-week}}, e.g. `0 */5 * * * *`) or a TimeSpan like `00:05:00`, got {fields} fields"
            ));
        }
        let seconds = if fields == 6 { Seconds::Required } else { Seconds::Disallowed };
        let parser = CronParser::builder().seconds(seconds).dom_and_dow(true).sloppy_ranges(true).build();
        let cron = parser.parse(text).map_err(|e| format!("not a valid NCRONTAB expression: {e}"))?;
        Ok(Self { text: text.to_string(), kind: Kind::Cron(Box::new(cron)) })
    }

    /// The schedule as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first occurrence strictly after `after`, if there is one.
    pub(crate) fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        match &self.kind {
            Kind::Every(every) => {
                let next = (after.as_micros() / every).checked_add(1)?.checked_mul(*every)?;
                Some(Timestamp::from_micros(next))
            }
            Kind::Cron(cron) => {
                let next = cron.find_next_occurrence(&after.to_datetime()?, false).ok()?;
                Timestamp::from_datetime(next)
            }
        }
    }

    /// The latest occurrence at or before `at`: the tick a run started at `at` belongs to.
    pub(crate) fn tick_at(&self, at: Timestamp) -> Option<Timestamp> {
        match &self.kind {
            Kind::Every(every) => Some(Timestamp::from_micros(at.as_micros() / every * every)),
            Kind::Cron(cron) => {
                // Whole seconds: NCRONTAB's resolution, so every instance lands on the same tick.
                let second = Timestamp::from_micros(at.as_micros() / 1_000_000 * 1_000_000);
                let tick = cron.find_previous_occurrence(&second.to_datetime()?, true).ok()?;
                Timestamp::from_datetime(tick)
            }
        }
    }
}

/// `hh:mm:ss` or `d.hh:mm:ss` in seconds; `None` when `text` is not a TimeSpan.
fn parse_timespan(text: &str) -> Option<u64> {
    let (days, rest) = match text.split_once('.') {
        Some((d, rest)) if rest.contains(':') && !d.contains(':') => (d.parse::<u64>().ok()?, rest),
        _ => (0, text),
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let [h, m, s] = parts.as_slice() else { return None };
    let (h, m, s): (u64, u64, u64) = (h.parse().ok()?, m.parse().ok()?, s.parse().ok()?);
    if h > 23 || m > 59 || s > 59 {
        return None;
    }
    Some(((days * 24 + h) * 60 + m) * 60 + s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Timestamp = Timestamp::from_millis(1_729_851_600_000); // 2024-10-25T10:20:00Z, a Friday

    fn ms(n: u64) -> std::time::Duration {
        std::time::Duration::from_millis(n)
    }

    #[test]
    fn every_five_minutes() {
        let s = Schedule::parse("0 */5 * * * *").unwrap();
        assert_eq!(s.next_after(T0), Some(T0.plus(ms(300_000))));
        assert_eq!(s.next_after(T0.minus(ms(1))), Some(T0));
        assert_eq!(s.tick_at(T0.plus(ms(1_500))), Some(T0));
        assert_eq!(s.tick_at(T0.plus(ms(299_999))), Some(T0));
    }

    #[test]
    fn ncrontab_weekdays_count_from_sunday_and_combine_with_and() {
        // Fridays at 10:30:00 → the same day.
        let fri = Schedule::parse("0 30 10 * * 5").unwrap();
        assert_eq!(fri.next_after(T0), Some(T0.plus(ms(600_000))));
        // The 25th, only when it is a Saturday: not 2024-10-25 (a Friday).
        let and = Schedule::parse("0 0 12 25 * 6").unwrap();
        assert_ne!(and.next_after(T0), Some(T0.plus(ms(6_000_000))));
    }

    #[test]
    fn timespans_and_errors() {
        let s = Schedule::parse("00:05:00").unwrap();
        assert_eq!(s.next_after(T0), Some(T0.plus(ms(300_000))));
        assert_eq!(s.tick_at(T0.plus(ms(10))), Some(T0));
        assert!(Schedule::parse("1.00:00:00").is_ok());
        assert!(Schedule::parse("00:00:00").is_err());
        assert!(Schedule::parse("*/5 * * *").unwrap_err().contains("6 fields"));
        assert!(Schedule::parse("0 */5 * * * banana").is_err());
    }
}
