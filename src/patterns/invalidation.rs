//! Invalidation: evict keys, invalidate tags, clear everything, and replay what could not be done
//! while Redis was away.
//!
//! Every invalidation takes a *stamp* from the version clock, the same clock that versions writes,
//! so invalidations and writes are ordered: an entry is invalidated only if it was cached no later
//! than the stamp (a write issued after an invalidation is never hidden by it; one issued before is
//! always covered). Keys are evicted in few calls, a hundred keys each, with at most a few in flight
//! ([`crate::ports::Cache::evict_many`]); tags and "all" cost one write whatever the number of entries they
//! cover, and are checked by readers.
//!
//! When Redis cannot be reached, the invalidation is kept in memory ([`Recovery`]) and replayed
//! once it answers again, with its original stamp; so is every cache write of a write path that
//! failed (replayed as "evict versions older than the write"). Memory is bounded: past
//! [`MAX_PENDING_KEYS`] keys the pending evictions collapse into one "all" invalidation. If the
//! process stops before Redis is back, what was pending is lost and entries live until their TTL.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::Core;
use crate::domain::error_chain::Chain;
use crate::domain::key::Key;
use crate::domain::options::Tag;
use crate::ports::cache::{CacheError, Eviction};

/// Most keys whose eviction may wait for Redis; past it, everything pending becomes one "all".
pub(crate) const MAX_PENDING_KEYS: usize = 10_000;

/// What to invalidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// These keys; with `hard`, their fail-safe copies too.
    Keys {
        /// The keys.
        keys: Vec<Key>,
        /// Remove the value too (no stale copy for the fail-safe).
        hard: bool,
    },
    /// Every entry carrying one of these tags.
    Tags(Vec<Tag>),
    /// Every entry.
    All,
}

/// What an invalidation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done in Redis; every instance hears it.
    Done {
        /// The invalidation's stamp.
        stamp: u64,
    },
    /// Redis could not be reached: kept, and replayed with this stamp once it answers.
    Pending {
        /// The invalidation's stamp.
        stamp: u64,
    },
    /// The handler is stopping and cut it: part of it may be done.
    Stopping,
}

/// Invalidations waiting for Redis.
#[derive(Debug, Default)]
struct Pending {
    keys: HashMap<String, Eviction>,
    tags: HashMap<String, u64>,
    all: Option<u64>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.tags.is_empty() && self.all.is_none()
    }
}

/// Cache work that failed because Redis was away, replayed when it is back. Shared by the write
/// paths and the invalidation service.
#[derive(Debug, Default)]
pub(crate) struct Recovery {
    pending: Mutex<Pending>,
}

impl Recovery {
    /// Remembers an eviction of `key` for replay (merged with one already pending).
    pub(crate) fn evict_later(&self, key: &str, eviction: Eviction) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.keys.len() >= MAX_PENDING_KEYS && !pending.keys.contains_key(key) {
            // Bounded: one "all" covers every key, at the newest stamp or version involved.
            let newest = pending
                .keys
                .values()
                .chain(std::iter::once(&eviction))
                .map(|e| e.stamp.unwrap_or(0).max(e.below_version.unwrap_or(0)))
                .max()
                .unwrap_or(0);
            tracing::warn!(
                pending = pending.keys.len(),
                "too many cache evictions are waiting for Redis; they will be replayed as one invalidation of every entry"
            );
            pending.keys.clear();
            pending.all = Some(pending.all.unwrap_or(0).max(newest));
            return;
        }
        let merged = pending.keys.entry(key.to_string()).or_insert(eviction);
        *merged = merged.merge(&eviction);
    }

    fn tags_later(&self, tags: &[Tag], stamp: u64) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.tags.len() + tags.len() > MAX_PENDING_KEYS {
            // Bounded like the keys: one "all" covers every tag.
            let newest = pending.tags.values().copied().chain(std::iter::once(stamp)).max().unwrap_or(stamp);
            pending.tags.clear();
            pending.all = Some(pending.all.unwrap_or(0).max(newest));
            return;
        }
        for tag in tags {
            let clock = pending.tags.entry(tag.as_str().to_string()).or_default();
            *clock = (*clock).max(stamp);
        }
    }

    fn all_later(&self, stamp: u64) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.all = Some(pending.all.unwrap_or(0).max(stamp));
    }

    /// How many invalidations wait (keys + tags + all).
    pub(crate) fn len(&self) -> usize {
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.keys.len() + pending.tags.len() + usize::from(pending.all.is_some())
    }

    fn take(&self) -> Pending {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The invalidation service. Cheap to clone.
#[derive(Clone)]
pub struct Invalidator {
    core: Arc<Core>,
}

impl Invalidator {
    pub(crate) fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    /// The shared core (for the services' housekeeping).
    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// Invalidates `scope`. Never fails: when Redis is away the invalidation waits for it (only
    /// shutdown can cut it: [`Outcome::Stopping`]). Runs to its end even if the caller leaves: cut
    /// midway, some keys would be evicted and the others neither evicted nor waiting for Redis
    /// ([`Core::run_to_the_end`]).
    pub async fn invalidate(&self, scope: &Scope) -> Outcome {
        let (this, scope) = (self.clone(), scope.clone());
        let invalidation = |_caller| async move { this.invalidate_now(&scope).await };
        self.core.run_to_the_end(invalidation).await.unwrap_or(Outcome::Stopping)
    }

    /// The invalidation itself: done in Redis, or kept until it answers.
    async fn invalidate_now(&self, scope: &Scope) -> Outcome {
        let core = &self.core;
        let stamp = core.versions.next();
        let now = core.now();
        let done: Result<(), CacheError> = match scope {
            Scope::Keys { keys, hard } => {
                let eviction = Eviction { stamp: Some(stamp), below_version: None, hard: *hard };
                let evictions: Vec<(String, Eviction)> =
                    keys.iter().map(|key| (key.as_str().to_string(), eviction)).collect();
                let results = core.cache.evict_many(&evictions, now).await;
                let (mut waiting, mut failure) = (0, None);
                for ((key, eviction), result) in evictions.iter().zip(results) {
                    if let Err(e) = result {
                        core.recovery.evict_later(key, *eviction);
                        waiting += 1;
                        failure.get_or_insert((key.clone(), e));
                    }
                }
                match failure {
                    None => Ok(()),
                    Some((first, e)) => {
                        tracing::warn!(keys = waiting, first = ?first, error = %Chain(&e), "could not evict {waiting} of {} keys; they are evicted when Redis answers again", keys.len());
                        Err(e)
                    }
                }
            }
            Scope::Tags(tags) => {
                let names: Vec<String> = tags.iter().map(|t| t.as_str().to_string()).collect();
                let result = core.cache.invalidate_tags(&names, stamp).await;
                if let Err(e) = &result {
                    tracing::warn!(tags = ?names, error = %Chain(e), "could not invalidate the tags; they are invalidated when Redis answers again");
                    core.recovery.tags_later(tags, stamp);
                }
                result
            }
            Scope::All => {
                let result = core.cache.invalidate_all(stamp).await;
                if let Err(e) = &result {
                    tracing::warn!(error = %Chain(e), "could not invalidate every entry; it is done when Redis answers again");
                    core.recovery.all_later(stamp);
                }
                result
            }
        };
        let scope_name = match scope {
            Scope::Keys { .. } => "keys",
            Scope::Tags(_) => "tags",
            Scope::All => "all",
        };
        crate::telemetry::metrics().invalidation(scope_name, if done.is_ok() { "done" } else { "pending" });
        match done {
            Ok(()) => Outcome::Done { stamp },
            Err(_) => Outcome::Pending { stamp },
        }
    }

    /// How many invalidations wait for Redis.
    pub fn pending(&self) -> usize {
        self.core.recovery.len()
    }

    /// Replays what waits for Redis, if Redis answers. What fails again waits again. Returns how
    /// many invalidations were replayed.
    pub async fn replay_pending(&self) -> usize {
        let core = &self.core;
        if core.recovery.len() == 0 || core.cache.ping().await.is_err() {
            return 0;
        }
        let pending = core.recovery.take();
        if pending.is_empty() {
            return 0;
        }
        let now = core.now();
        let mut replayed = 0;
        if let Some(stamp) = pending.all {
            match core.cache.invalidate_all(stamp).await {
                Ok(()) => replayed += 1,
                Err(_) => core.recovery.all_later(stamp),
            }
        }
        let mut by_stamp: HashMap<u64, Vec<String>> = HashMap::new();
        for (tag, stamp) in pending.tags {
            by_stamp.entry(stamp).or_default().push(tag);
        }
        for (stamp, tags) in by_stamp {
            match core.cache.invalidate_tags(&tags, stamp).await {
                Ok(()) => replayed += tags.len(),
                Err(_) => {
                    let tags: Vec<Tag> = tags.iter().filter_map(|t| Tag::new(t).ok()).collect();
                    core.recovery.tags_later(&tags, stamp);
                }
            }
        }
        // In few calls (a hundred keys each, one or a few at a time): up to MAX_PENDING_KEYS may
        // wait, and requests' calls queue behind whatever is in flight.
        let evictions: Vec<(String, Eviction)> = pending.keys.into_iter().collect();
        let results = core.cache.evict_many(&evictions, now).await;
        for ((key, eviction), result) in evictions.iter().zip(results) {
            match result {
                Ok(()) => replayed += 1,
                Err(_) => core.recovery.evict_later(key, *eviction),
            }
        }
        if replayed > 0 {
            tracing::info!(
                replayed,
                still_pending = core.recovery.len(),
                "replayed cache invalidations that waited for Redis"
            );
        }
        replayed
    }
}
