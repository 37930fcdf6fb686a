//! The lease port: short exclusive leases shared by every instance, for what one instance at a
//! time may do or hold.

use std::time::Duration;

use async_trait::async_trait;

use super::{CacheError, LockToken};
use crate::domain::time::Timestamp;

/// What a lease is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseName {
    /// A version node id (`domain::version`): no two running instances may share one.
    VersionNode(u64),
    /// A run of the refresh-ahead timer: one instance handles each tick of the schedule.
    TimerTick(Timestamp),
}

/// Exclusive leases with a time to live.
#[async_trait]
pub trait Leases: Send + Sync + std::fmt::Debug + 'static {
    /// Takes `name` for `ttl`, or renews it if `token` already holds it. False when someone else
    /// holds it.
    async fn acquire(&self, name: LeaseName, token: &LockToken, ttl: Duration) -> Result<bool, CacheError>;

    /// Gives `name` up if `token` still holds it.
    async fn release(&self, name: LeaseName, token: &LockToken) -> Result<(), CacheError>;
}
