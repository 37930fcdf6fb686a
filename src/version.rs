//! Per-write versions: unique per key across every instance, ordered by time.
//!
//! A version is `logical << 11 | node`:
//! * `logical` is a hybrid clock in microseconds: `max(now, last seen + 1)`. It grows within a
//!   process even if the wall clock steps back, keeps growing across restarts (the wall clock
//!   carries it), and needs no shared counter, so Redis losing its data cannot reset it. Versions
//!   seen elsewhere (a newer version found in the store or the cache) are folded in with
//!   [`HybridClock::observe`].
//! * `node` is an 11-bit number that no two running instances share (each leases one in Redis, see
//!   `crate::cache::node_ids`), so two instances that pick the same microsecond still issue different
//!   versions: two writes to one key can never tie (DESIGN invariant 1).
//!
//! The largest version is `i64::MAX` (what SQLite and Event Hubs hold), which the layout reaches in
//! the year 2112. Versions written before this layout (plain microseconds) are all smaller than new
//! ones, so upgraded instances' writes always win over old data.
//!
//! A version far in the future is not trusted: [`is_plausible`] refuses anything more than
//! [`MAX_CLOCK_SKEW`] ahead of now or above [`MAX_VERSION`], and the clock never observes such a
//! version, so one bad event cannot push every later write past what the store can hold.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::{Clock, Timestamp};

/// Bits of a version that name the instance that issued it.
pub const NODE_BITS: u32 = 11;
/// How many node ids there are.
pub const NODE_COUNT: u64 = 1 << NODE_BITS;
/// The largest version any store holds (SQLite integers and Event Hubs longs are `i64`).
pub const MAX_VERSION: u64 = i64::MAX as u64;
/// How far ahead of this instance's clock another writer's version may be and still be trusted.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(24 * 3600);

/// Versions below this are of the older layout (plain microseconds); versions of this layout are
/// above it from 1971 on, so the two never overlap.
pub const OLD_LAYOUT_LIMIT: u64 = 1 << 56;

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
pub fn is_plausible(version: u64, now: Timestamp) -> Result<(), Implausible> {
    if version > MAX_VERSION {
        return Err(Implausible::TooLarge(version));
    }
    let issued = issued_at(version);
    if issued > now.plus(MAX_CLOCK_SKEW) {
        return Err(Implausible::FromTheFuture { version, issued, now });
    }
    Ok(())
}

/// A monotonic source of versions, shared by every writer in the process.
#[derive(Debug)]
pub struct HybridClock {
    clock: Arc<dyn Clock>,
    last: AtomicU64,
    node: AtomicU64,
}

impl HybridClock {
    /// A clock on `clock`'s time that has seen nothing yet, with a provisional random node id
    /// (replaced by a leased one once Redis answers).
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self { clock, last: AtomicU64::new(0), node: AtomicU64::new(fastrand::u64(..NODE_COUNT)) }
    }

    /// The time source.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Now, from the time source.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// This instance's node id.
    pub fn node(&self) -> u64 {
        self.node.load(Ordering::Relaxed)
    }

    /// Switches to the node id `node` (leased); the next versions carry it.
    pub fn set_node(&self, node: u64) {
        self.node.store(node % NODE_COUNT, Ordering::Relaxed);
    }

    /// The next version: strictly greater than every version this clock returned or observed, and
    /// carrying this instance's node id. (At the very end of the layout, in 2112, it stops growing
    /// rather than pass [`MAX_VERSION`].)
    pub fn next(&self) -> u64 {
        const LAST_LOGICAL: u64 = MAX_VERSION >> NODE_BITS;
        let now = self.clock.now().as_micros().min(LAST_LOGICAL);
        let node = self.node();
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let logical = now.max((last >> NODE_BITS) + 1).min(LAST_LOGICAL);
            let candidate = (logical << NODE_BITS) | node;
            match self.last.compare_exchange_weak(last, candidate, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return candidate,
                Err(seen) => last = seen,
            }
        }
    }

    /// Remembers a version produced elsewhere so that the next one is newer. An implausible version
    /// (see [`is_plausible`]) is refused and leaves the clock alone.
    pub fn observe(&self, version: u64) -> Result<(), Implausible> {
        is_plausible(version, self.clock.now())?;
        self.last.fetch_max(version, Ordering::AcqRel);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{ManualClock, SystemClock};

    #[test]
    fn strictly_increasing_across_threads() {
        let clock = Arc::new(HybridClock::new(Arc::new(SystemClock)));
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
    fn two_instances_at_the_same_instant_never_tie() {
        let time = ManualClock::starting_now();
        let (a, b) = (HybridClock::new(time.clone()), HybridClock::new(time.clone()));
        a.set_node(1);
        b.set_node(2);
        let (va, vb) = (a.next(), b.next());
        assert_ne!(va, vb);
        assert_eq!(issued_at(va), issued_at(vb), "same instant");
        // Having seen b's version, a's next one is newer than it.
        a.observe(vb).unwrap();
        assert!(a.next() > vb);
    }

    #[test]
    fn observing_a_future_version_moves_the_clock_past_it() {
        let time = ManualClock::starting_now();
        let clock = HybridClock::new(time.clone());
        let far = at(time.now().plus(Duration::from_secs(3600))) + 5;
        clock.observe(far).unwrap();
        assert!(clock.next() > far);
        let before = clock.next();
        clock.observe(1).unwrap();
        assert!(clock.next() > before);
    }

    #[test]
    fn implausible_versions_never_move_the_clock() {
        let time = ManualClock::starting_now();
        let clock = HybridClock::new(time.clone());
        let baseline = clock.next();
        assert_eq!(clock.observe(u64::MAX), Err(Implausible::TooLarge(u64::MAX)));
        assert!(matches!(clock.observe(MAX_VERSION), Err(Implausible::FromTheFuture { .. })));
        let two_days = at(time.now().plus(Duration::from_secs(48 * 3600)));
        assert!(clock.observe(two_days).is_err());
        let next = clock.next();
        assert!(next > baseline && issued_at(next) < time.now().plus(Duration::from_secs(1)));
    }

    #[test]
    fn versions_of_the_old_layout_are_older_than_new_ones() {
        let time = ManualClock::starting_now();
        let old_layout = time.now().as_micros();
        assert!(is_plausible(old_layout, time.now()).is_ok());
        assert_eq!(issued_at(old_layout), time.now());
        assert!(is_plausible(time.now().plus(MAX_CLOCK_SKEW * 2).as_micros(), time.now()).is_err());
        let new = HybridClock::new(time.clone()).next();
        assert!(new > old_layout);
        assert_eq!(issued_at(new), time.now());
    }
}
