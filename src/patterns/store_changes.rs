//! Following the store: keeps the cache in step with items changed in the store, by this service
//! or by other programs (docs/store-changes.md).
//!
//! The store's change feed reports every created or replaced item. For each one:
//! * **written by this service**: nothing to do. The write path cached it before or after the
//!   store took it, or, when Redis was away, remembered to evict what it replaced
//!   ([`Core::cache_write`]); the change feed only confirms it. Counted as skipped.
//! * **written or edited by another program**: its key is evicted with a fresh stamp from the
//!   version clock, like `DELETE api/cache/{key}`: every copy cached before now (in Redis, and in
//!   every near cache through the invalidation feed) is covered, and the next read loads what the
//!   store holds. The eviction is *hard*: such an item carries no version of ours (it loads at
//!   version 0, or whatever it carries), so a soft eviction, which keeps the old version for the
//!   fail-safe, would make the "never older" cache write refuse the reload; the stale copy that
//!   goes is the value the other program replaced.
//!
//! The evictions of a batch go out together, one stamp for all, in few calls (a hundred keys each,
//! at most a few in flight: `Cache::evict_many`). Those Redis does not take wait
//! for it in [`Core::recovery`], as any invalidation does; when Redis could not be reached the
//! batch also fails ([`CacheUnreachable`]), so that the host runs it again: the replay in memory is
//! lost if the instance stops, the change feed is not.

use std::collections::HashSet;
use std::sync::Arc;

use super::Core;
use crate::domain::error_chain::Chain;
use crate::domain::key::Key;
use crate::ports::cache::Eviction;
pub use crate::ports::changes::ChangedItem;

/// What following one batch of changes did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Followed {
    /// Distinct keys in the batch.
    pub keys: usize,
    /// Keys whose change this service wrote itself: nothing done.
    pub skipped: usize,
    /// Keys another program changed, evicted.
    pub evicted: usize,
    /// Keys another program changed whose eviction waits for Redis.
    pub waiting: usize,
    /// The evictions' stamp, when there were any.
    pub stamp: Option<u64>,
}

/// Redis could not be reached for some evictions: they wait for it, and the batch is to run again.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "Redis could not be reached to evict {} of the {} keys other programs changed; the evictions are replayed once it answers, and the batch is to be delivered again",
    .followed.waiting, .followed.evicted + .followed.waiting
)]
pub struct CacheUnreachable {
    /// What was done nevertheless.
    pub followed: Followed,
}

/// The service that follows the store's changes. Cheap to clone.
#[derive(Clone)]
pub struct StoreChanges {
    core: Arc<Core>,
}

impl StoreChanges {
    pub(crate) fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    /// Brings the cache in step with `changes`, one batch of the change feed. A key that appears
    /// more than once counts once, as changed by another program if any of its changes was.
    pub async fn follow(&self, changes: &[ChangedItem]) -> Result<Followed, CacheUnreachable> {
        let mut seen: HashSet<&Key> = HashSet::new();
        let foreign: HashSet<&Key> = changes.iter().filter(|c| !c.written_by_us).map(|c| &c.key).collect();
        let mut evict: Vec<&Key> = Vec::new();
        let mut followed = Followed::default();
        for change in changes {
            if !seen.insert(&change.key) {
                continue;
            }
            followed.keys += 1;
            if foreign.contains(&change.key) {
                evict.push(&change.key);
            } else {
                tracing::debug!(key = ?change.key.as_str(), version = change.version, "store change written by this service; the cache has it");
                followed.skipped += 1;
            }
        }
        if evict.is_empty() {
            return Ok(followed);
        }
        let core = &self.core;
        // Taken now, after the store committed every change of the batch (the feed reports only
        // committed changes): it covers every copy cached before.
        let stamp = core.versions.next();
        followed.stamp = Some(stamp);
        let eviction = Eviction { stamp: Some(stamp), below_version: None, hard: true };
        let now = core.now();
        let evictions: Vec<(String, Eviction)> = evict.iter().map(|key| (key.as_str().to_string(), eviction)).collect();
        let (mut unreachable, mut failure) = (false, None);
        for ((key, eviction), result) in evictions.iter().zip(core.cache.evict_many(&evictions, now).await) {
            match result {
                Ok(()) => followed.evicted += 1,
                Err(e) => {
                    core.recovery.evict_later(key, *eviction);
                    unreachable |= e.is_transient();
                    followed.waiting += 1;
                    failure.get_or_insert((key, e));
                }
            }
        }
        if let Some((first, e)) = failure {
            tracing::warn!(keys = followed.waiting, first = ?first, error = %Chain(&e), "could not evict {} keys other programs changed in the store; they are evicted when Redis answers again", followed.waiting);
        }
        if unreachable { Err(CacheUnreachable { followed }) } else { Ok(followed) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failure_says_what_waits() {
        let followed = Followed { keys: 5, skipped: 1, evicted: 1, waiting: 3, stamp: Some(9) };
        let text = CacheUnreachable { followed }.to_string();
        assert!(text.contains("3 of the 4 keys"), "{text}");
    }
}
