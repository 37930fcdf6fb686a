//! Per-write versions from a hybrid clock.
//!
//! A version is `max(now in µs since the Unix epoch, last seen + 1)`. It grows within a process even
//! if the wall clock steps back, it keeps growing across restarts (the wall clock carries it), and it
//! needs no shared counter, so losing Redis's data cannot reset it. Versions seen elsewhere (a newer
//! version found in the store) are folded in with [`HybridClock::observe`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A monotonic source of versions, shared by every writer in the process.
#[derive(Debug, Default)]
pub struct HybridClock {
    last: AtomicU64,
}

impl HybridClock {
    /// A clock that has seen nothing yet.
    pub const fn new() -> Self {
        Self { last: AtomicU64::new(0) }
    }

    /// The next version: strictly greater than every version this clock returned or observed.
    pub fn next(&self) -> u64 {
        let now = now_micros();
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let candidate = now.max(last + 1);
            match self.last.compare_exchange_weak(last, candidate, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return candidate,
                Err(seen) => last = seen,
            }
        }
    }

    /// Remembers a version produced elsewhere so that the next one is newer.
    pub fn observe(&self, version: u64) {
        self.last.fetch_max(version, Ordering::AcqRel);
    }
}

/// Microseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_millis() -> u64 {
    now_micros() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn strictly_increasing_across_threads() {
        let clock = Arc::new(HybridClock::new());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let clock = clock.clone();
                std::thread::spawn(move || (0..10_000).map(|_| clock.next()).collect::<Vec<_>>())
            })
            .collect();
        let mut all: Vec<u64> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "versions must be unique");
    }

    #[test]
    fn observing_a_future_version_moves_the_clock_past_it() {
        let clock = HybridClock::new();
        let far = now_micros() + 3_600_000_000;
        clock.observe(far);
        assert_eq!(clock.next(), far + 1);
        let before = clock.next();
        clock.observe(1);
        assert!(clock.next() > before);
    }
}

/// The current time as RFC 3339 UTC with milliseconds, e.g. `2026-11-26T07:13:00.123Z`.
pub fn rfc3339_now() -> String {
    rfc3339_from_millis(now_millis())
}

/// Formats ms since the Unix epoch as RFC 3339 UTC with milliseconds.
pub fn rfc3339_from_millis(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, ms % 1000)
}

/// Year, month, day of a count of days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

#[cfg(test)]
mod rfc3339_tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339_from_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_from_millis(1_729_851_600_123), "2024-10-25T10:20:00.123Z");
        assert_eq!(rfc3339_from_millis(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
