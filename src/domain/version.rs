//! Per-write versions: unique per key across every instance, ordered by time.
//!
//! A version is `logical << 11 | node`:
//! * `logical` is a hybrid clock in microseconds: `max(now, last seen + 1)`. It grows within a
//!   process even if the wall clock steps back, keeps growing across restarts (the wall clock
//!   carries it), and needs no shared counter, so Redis losing its data cannot reset it. Versions
//!   seen elsewhere (a newer version found in the store or the cache) are folded in (the issuing
//!   clock is `patterns::versions::HybridClock`).
//! * `node` is an 11-bit number that no two running instances share (each leases one in Redis, see
//!   `patterns::versions::NodeLease`), so two instances that pick the same microsecond still issue
//!   different versions: two writes to one key can never tie (invariant 1, docs/reliability.md).
//!
//! The largest version is `i64::MAX` (what SQLite and Event Hubs hold), which the layout reaches in
//! the year 2112. Versions written before this layout (plain microseconds) are all smaller than new
//! ones, so upgraded instances' writes always win over old data.
//!
//! A version far in the future is not trusted: [`is_plausible`] refuses anything more than
//! [`MAX_CLOCK_SKEW`] ahead of now or above [`MAX_VERSION`], and the clock never observes such a
//! version, so one bad event cannot push every later write past what the store can hold.

use std::time::Duration;

use crate::domain::time::Timestamp;

/// Bits of a version that name the instance that issued it.
pub(crate) const NODE_BITS: u32 = 11;
/// How many node ids there are.
pub(crate) const NODE_COUNT: u64 = 1 << NODE_BITS;
/// The largest version any store holds (SQLite integers and Event Hubs longs are `i64`).
pub(crate) const MAX_VERSION: u64 = i64::MAX as u64;
/// How far ahead of this instance's clock another writer's version may be and still be trusted.
pub(crate) const MAX_CLOCK_SKEW: Duration = Duration::from_secs(24 * 3600);

/// Versions below this are of the older layout (plain microseconds); versions of this layout are
/// above it from 1971 on, so the two never overlap.
pub(crate) const OLD_LAYOUT_LIMIT: u64 = 1 << 56;

/// When `version` was issued, in either layout.
pub fn issued_at(version: u64) -> Timestamp {
    if version < OLD_LAYOUT_LIMIT {
        Timestamp::from_micros(version)
    } else {
        Timestamp::from_micros(version >> NODE_BITS)
    }
}

/// The first version issued at `t` (node 0): handy to compare versions with times.
pub fn at(t: Timestamp) -> u64 {
    t.as_micros().min(MAX_VERSION >> NODE_BITS) << NODE_BITS
}

/// Why a version is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Implausible {
    /// Larger than any store can hold.
    #[error("version {0} is larger than the stores hold (at most {MAX_VERSION})")]
    TooLarge(u64),
    /// Issued more than [`MAX_CLOCK_SKEW`] after now.
    #[error("version {version} was issued at {issued}, more than {skew_hours} h after now ({now})", skew_hours = MAX_CLOCK_SKEW.as_secs() / 3600)]
    FromTheFuture {
        /// The version.
        version: u64,
        /// When it claims to have been issued.
        issued: Timestamp,
        /// This instance's now.
        now: Timestamp,
    },
}

/// Checks that `version` could have been issued by a sane instance by `now`.
pub(crate) fn is_plausible(version: u64, now: Timestamp) -> Result<(), Implausible> {
    if version > MAX_VERSION {
        return Err(Implausible::TooLarge(version));
    }
    let issued = issued_at(version);
    if issued > now.plus(MAX_CLOCK_SKEW) {
        return Err(Implausible::FromTheFuture { version, issued, now });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_of_the_old_layout_are_older_than_new_ones() {
        let now = Timestamp::from_millis(1_729_851_600_000);
        let old_layout = now.as_micros();
        assert!(is_plausible(old_layout, now).is_ok());
        assert_eq!(issued_at(old_layout), now);
        assert!(is_plausible(now.plus(MAX_CLOCK_SKEW * 2).as_micros(), now).is_err());
        let new = at(now) | 5;
        assert!(new > old_layout);
        assert_eq!(issued_at(new), now);
    }

    #[test]
    fn implausible_versions_are_named() {
        let now = Timestamp::from_millis(1_729_851_600_000);
        assert_eq!(is_plausible(u64::MAX, now), Err(Implausible::TooLarge(u64::MAX)));
        assert!(matches!(is_plausible(MAX_VERSION, now), Err(Implausible::FromTheFuture { .. })));
        assert!(is_plausible(at(now.plus(Duration::from_secs(48 * 3600))), now).is_err());
        assert!(is_plausible(at(now.plus(Duration::from_secs(23 * 3600))), now).is_ok());
    }
}
