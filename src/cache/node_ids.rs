//! Leased node ids: the part of every version that tells instances apart (see `crate::version`).
//!
//! Each instance holds a lease on one of the 2048 node ids: the internal key
//! `RedisInstanceName + "\x1fnode\x1f" + id`, set to a random token for [`LEASE_TTL`] and renewed
//! every [`RENEW_EVERY`]. Two live instances therefore never issue versions with the same node id,
//! so they can never issue the same version. If Redis loses the lease (restart, failover) the
//! holder takes it again at the next renewal, or moves to another id if someone else was quicker.
//!
//! Until the first lease is taken (Redis still unreachable) the clock uses a random provisional
//! id; versions issued then could in theory meet another instance's in the same microsecond. Every
//! store write still applies only strictly newer versions, so even then the store never goes
//! backwards; only the uniqueness of the reported version rests on the lease.

use std::sync::Arc;
use std::time::Duration;

use super::{CacheError, RedisCache};
use crate::version::{HybridClock, NODE_COUNT};

/// How long a lease lasts without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(90);
/// How often the holder renews it.
pub const RENEW_EVERY: Duration = Duration::from_secs(20);
/// How soon to try again after Redis failed.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(2);
/// Random ids tried before giving up for one round (the space is 2048).
const ATTEMPTS: usize = 64;

/// One instance's lease: its token and the id it holds, if any.
#[derive(Debug)]
pub struct NodeLease {
    cache: RedisCache,
    clock: Arc<HybridClock>,
    token: String,
    held: Option<u64>,
}

impl NodeLease {
    /// A lease for `clock`'s instance, not taken yet.
    pub fn new(cache: RedisCache, clock: Arc<HybridClock>) -> Self {
        Self { cache, clock, token: super::lock_token(), held: None }
    }

    /// The id held, if any.
    pub fn held(&self) -> Option<u64> {
        self.held
    }

    /// Takes or renews the lease once; on success the clock uses the id from now on.
    pub async fn refresh(&mut self) -> Result<u64, CacheError> {
        if let Some(id) = self.held {
            if self.cache.lease(&self.cache.keys().node_lease(id), &self.token, LEASE_TTL).await? {
                return Ok(id);
            }
            tracing::warn!(
                node = id,
                "another instance took this instance's node id (Redis lost the lease?); taking another"
            );
            self.held = None;
        }
        // The provisional id first (no change if it is free), then random ones.
        let first = self.clock.node();
        for candidate in std::iter::once(first).chain((1..ATTEMPTS).map(|_| fastrand::u64(..NODE_COUNT))) {
            if self.cache.lease(&self.cache.keys().node_lease(candidate), &self.token, LEASE_TTL).await? {
                self.clock.set_node(candidate);
                self.held = Some(candidate);
                tracing::info!(node = candidate, "version node id leased");
                return Ok(candidate);
            }
        }
        Err(CacheError::Command(format!("no free node id found in {ATTEMPTS} tries (are 2048 instances running?)")))
    }

    /// Keeps the lease until the task is dropped or aborted.
    pub async fn keep(mut self) {
        loop {
            let pause = match self.refresh().await {
                Ok(_) => RENEW_EVERY,
                Err(e) => {
                    tracing::debug!(error = %e, "could not lease a version node id yet; retrying");
                    RETRY_AFTER_FAILURE
                }
            };
            tokio::time::sleep(pause).await;
        }
    }
}
