//! The [`Leases`] port on Redis: a lease is an internal key holding its holder's token, with a TTL
//! (`Keys::node_lease`, `Keys::tick_lock`), taken and released by scripts that check the token.

use std::time::Duration;

use async_trait::async_trait;

use super::{Redis, scripts};
use crate::ports::leases::{LeaseName, Leases};
use crate::ports::{CacheError, LockToken};

impl Redis {
    fn lease_key(&self, name: LeaseName) -> String {
        match name {
            LeaseName::VersionNode(node) => self.keys.node_lease(node),
            LeaseName::TimerTick(tick) => self.keys.tick_lock(tick.as_millis()),
        }
    }

    /// Takes (or renews) the lease key `key` for `ttl` unless someone else holds it.
    pub(crate) async fn take_lease(&self, key: &str, token: &LockToken, ttl: Duration) -> Result<bool, CacheError> {
        let mut invocation = scripts::LEASE.prepare_invoke();
        invocation.key(key).arg(token.as_str()).arg(ttl.as_millis().max(1) as u64);
        self.invoke::<i64>(&invocation).await.map(|n| n == 1)
    }

    /// Deletes the lease key `key` if `token` holds it.
    pub(crate) async fn give_back_lease(&self, key: &str, token: &LockToken) -> Result<(), CacheError> {
        let mut invocation = scripts::RELEASE.prepare_invoke();
        invocation.key(key).arg(token.as_str());
        self.invoke::<i64>(&invocation).await.map(|_| ())
    }
}

#[async_trait]
impl Leases for Redis {
    async fn acquire(&self, name: LeaseName, token: &LockToken, ttl: Duration) -> Result<bool, CacheError> {
        self.take_lease(&self.lease_key(name), token, ttl).await
    }

    async fn release(&self, name: LeaseName, token: &LockToken) -> Result<(), CacheError> {
        self.give_back_lease(&self.lease_key(name), token).await
    }
}
