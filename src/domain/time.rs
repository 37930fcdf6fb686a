//! Points in time as one type, [`Timestamp`] (microseconds since the Unix epoch, UTC), so no
//! code juggles epoch milliseconds as `u64` here and `i64` there. Where "now" comes from is the
//! [`Clock`](crate::ports::Clock) port: time is injected, and tests move it by hand.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};

/// A point in time: microseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Self = Self(0);

    /// From microseconds since the epoch.
    pub(crate) const fn from_micros(micros: u64) -> Self {
        Self(micros)
    }

    /// From milliseconds since the epoch (saturating).
    pub const fn from_millis(millis: u64) -> Self {
        Self(millis.saturating_mul(1000))
    }

    /// Microseconds since the epoch.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// Milliseconds since the epoch (truncated).
    pub const fn as_millis(self) -> u64 {
        self.0 / 1000
    }

    /// This instant plus `d` (saturating).
    pub fn plus(self, d: Duration) -> Self {
        Self(self.0.saturating_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX)))
    }

    /// This instant minus `d` (saturating at the epoch).
    pub fn minus(self, d: Duration) -> Self {
        Self(self.0.saturating_sub(u64::try_from(d.as_micros()).unwrap_or(u64::MAX)))
    }

    /// How long after `earlier` this is (zero if it is not later).
    pub fn since(self, earlier: Self) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }

    /// This instant as a chrono time (for calendar arithmetic such as schedules).
    pub(crate) fn to_datetime(self) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp_micros(i64::try_from(self.0).ok()?)
    }

    /// The instant a chrono time names; `None` before the epoch.
    pub(crate) fn from_datetime(t: DateTime<Utc>) -> Option<Self> {
        u64::try_from(t.timestamp_micros()).ok().map(Self)
    }

    /// Parses an ISO 8601 / RFC 3339 time as hosts and SDKs write it: with `Z` or an offset, or
    /// with none (taken as UTC), `T` or a space between date and time, any number of fractional
    /// digits. `None` for anything else, and for times before the epoch (the year-1 "never").
    pub(crate) fn parse_iso8601(text: &str) -> Option<Self> {
        let text = text.trim();
        if let Ok(t) = DateTime::parse_from_rfc3339(text) {
            return Self::from_datetime(t.with_timezone(&Utc));
        }
        ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M"]
            .iter()
            .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
            .and_then(|naive| Self::from_datetime(naive.and_utc()))
    }

    /// RFC 3339 in UTC with milliseconds, e.g. `2026-11-26T07:13:00.123Z`.
    pub(crate) fn rfc3339(self) -> String {
        self.to_datetime()
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
            .unwrap_or_else(|| format!("@{}ms", self.as_millis()))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rfc3339())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(Timestamp::EPOCH.rfc3339(), "1970-01-01T00:00:00.000Z");
        assert_eq!(Timestamp::from_millis(1_729_851_600_123).rfc3339(), "2024-10-25T10:20:00.123Z");
        assert_eq!(Timestamp::from_millis(951_782_400_000).rfc3339(), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn arithmetic_saturates() {
        let t = Timestamp::from_millis(1000);
        assert_eq!(t.plus(Duration::from_millis(250)), Timestamp::from_millis(1250));
        assert_eq!(t.plus(Duration::from_millis(250)).since(t), Duration::from_millis(250));
        assert_eq!(Timestamp::from_millis(5).since(Timestamp::from_millis(9)), Duration::ZERO);
        assert_eq!(Timestamp::from_millis(5).minus(Duration::from_secs(1)), Timestamp::EPOCH);
    }

    #[test]
    fn parses_host_and_sdk_times() {
        let utc = Timestamp::from_millis(1_729_851_600_000);
        assert_eq!(Timestamp::parse_iso8601("2024-10-25T10:20:00Z"), Some(utc));
        assert_eq!(Timestamp::parse_iso8601("2024-10-25T10:20:00"), Some(utc));
        assert_eq!(Timestamp::parse_iso8601("2024-10-25 10:20:00"), Some(utc));
        assert_eq!(Timestamp::parse_iso8601("2024-10-25T12:20:00+02:00"), Some(utc));
        assert_eq!(
            Timestamp::parse_iso8601("2024-10-25T10:20:00.1234567+00:00"),
            Some(Timestamp::from_micros(1_729_851_600_123_456))
        );
        assert_eq!(Timestamp::parse_iso8601("2024-10-25T10:20:00.5"), Some(utc.plus(Duration::from_millis(500))));
        assert_eq!(Timestamp::parse_iso8601("0001-01-01T00:00:00+00:00"), None, "before the epoch");
        assert!(Timestamp::parse_iso8601("9999-12-31T23:59:59.9999999").is_some_and(|t| t > utc));
        assert_eq!(Timestamp::parse_iso8601("not a date"), None);
        assert_eq!(Timestamp::parse_iso8601("2024-13-25T10:20:00Z"), None);
    }
}
