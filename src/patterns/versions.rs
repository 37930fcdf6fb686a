//! Issuing write versions: the hybrid clock every writer in the process shares, and the lease that
//! gives this instance a node id no other running instance has. The layout of a version and what is
//! plausible are in `domain::version`.
//!
//! Each instance holds a lease on one of the 2048 node ids ([`LeaseName::VersionNode`]) for
//! [`LEASE_TTL`], renewed every [`RENEW_EVERY`]. Two live instances therefore never issue versions
//! with the same node id, so they can never issue the same version. If the lease is lost (a Redis
//! restart or failover) the holder takes it again at the next renewal, or moves to another id if
//! someone else was quicker.
//!
//! Until the first lease is taken (Redis still unreachable) the clock uses a random provisional
//! id; versions issued then could in theory meet another instance's in the same microsecond. Every
//! store write still applies only strictly newer versions, so even then the store never goes
//! backwards; only the uniqueness of the reported version rests on the lease.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::domain::error_chain::Chain;
use crate::domain::time::Timestamp;
use crate::domain::version::{Implausible, MAX_VERSION, NODE_BITS, NODE_COUNT, is_plausible};
use crate::ports::leases::{LeaseName, Leases};
use crate::ports::{CacheError, Clock, LockToken};

/// How long a lease lasts without renewal.
pub(crate) const LEASE_TTL: Duration = Duration::from_secs(90);
/// How often the holder renews it.
pub(crate) const RENEW_EVERY: Duration = Duration::from_secs(20);
/// How soon to try again after the lease store failed.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(2);
/// Random ids tried before giving up for one round (the space is 2048).
const ATTEMPTS: usize = 64;

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
    pub(crate) fn set_node(&self, node: u64) {
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
    pub(crate) fn observe(&self, version: u64) -> Result<(), Implausible> {
        is_plausible(version, self.clock.now())?;
        self.last.fetch_max(version, Ordering::AcqRel);
        Ok(())
    }
}

/// One instance's node-id lease: its token and the id it holds, if any.
#[derive(Debug)]
pub struct NodeLease {
    leases: Arc<dyn Leases>,
    versions: Arc<HybridClock>,
    token: LockToken,
    held: Option<u64>,
}

impl NodeLease {
    /// A lease for `versions`, taken from `leases`.
    pub fn new(leases: Arc<dyn Leases>, versions: Arc<HybridClock>) -> Self {
        Self { leases, versions, token: LockToken::random(), held: None }
    }

    /// Renews the held id, or takes one (the clock's provisional id first, then random ones), and
    /// hands it to the clock. Returns the id held.
    pub async fn refresh(&mut self) -> Result<u64, CacheError> {
        if let Some(id) = self.held {
            if self.leases.acquire(LeaseName::VersionNode(id), &self.token, LEASE_TTL).await? {
                return Ok(id);
            }
            tracing::warn!(
                node = id,
                "another instance took this instance's node id (Redis lost the lease?); taking another"
            );
            self.held = None;
        }
        let first = self.versions.node();
        for candidate in std::iter::once(first).chain((1..ATTEMPTS).map(|_| fastrand::u64(..NODE_COUNT))) {
            if self.leases.acquire(LeaseName::VersionNode(candidate), &self.token, LEASE_TTL).await? {
                self.versions.set_node(candidate);
                self.held = Some(candidate);
                tracing::info!(node = candidate, "version node id leased");
                return Ok(candidate);
            }
        }
        Err(CacheError::refused(format!("no free node id found in {ATTEMPTS} tries (are 2048 instances running?)")))
    }

    /// Keeps the lease until `shutdown` (a renewal in progress is cut short), then gives the id back.
    pub async fn keep(mut self, shutdown: CancellationToken) {
        loop {
            let refreshed = tokio::select! {
                refreshed = self.refresh() => refreshed,
                _ = shutdown.cancelled() => break,
            };
            let pause = match refreshed {
                Ok(_) => RENEW_EVERY,
                Err(e) => {
                    tracing::debug!(error = %Chain(&e), "could not lease a version node id yet; retrying");
                    RETRY_AFTER_FAILURE
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
        if let Some(id) = self.held
            && let Err(e) = self.leases.release(LeaseName::VersionNode(id), &self.token).await
        {
            tracing::debug!(node = id, error = %Chain(&e), "could not give the node id back; it expires by itself");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::version::{Implausible, MAX_CLOCK_SKEW, MAX_VERSION, at, is_plausible, issued_at};
    use crate::ports::clock::{ManualClock, SystemClock};
    use std::time::Duration;

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
