//! Cache-Aside: read the cache; on a miss, load from the store and cache what was found.
//!
//! A fresh hit is one cache read and no store call (invariant 5, docs/reliability.md); a miss
//! goes through the shared [`read_path`](super::read_path) (stampede protection, fail-safe).
//! A bulk read ([`CacheAside::get_many`]) is one cache read for all its keys (one round trip per
//! cluster node) and at most one store read for all its misses.

use std::collections::HashSet;

use super::read_path::{Lookup, ReadError, ReadPath};
use crate::domain::error_chain::Chain;
use crate::domain::key::Key;

/// The Cache-Aside service. Cheap to clone.
#[derive(Clone)]
pub struct CacheAside {
    read: ReadPath,
}

impl CacheAside {
    pub(crate) fn new(read: ReadPath) -> Self {
        Self { read }
    }

    /// Cache-Aside read of `key`.
    pub async fn get(&self, key: &Key) -> Result<Lookup, ReadError> {
        let core = &self.read.core;
        match core.cache.get(key.as_str()).await {
            Ok(Some(entry)) if entry.is_fresh(core.now()) => Ok(Lookup::from_entry(entry)),
            // The miss paths are boxed: inline, their state would make every hit's future
            // kilobytes large, copied at each layer it is moved through.
            Ok(stale) => Box::pin(self.read.load(key, stale)).await,
            Err(e) => {
                tracing::warn!(key = ?key.as_str(), error = %Chain(&e), "cache unavailable; reading the store directly");
                Box::pin(self.read.load_bypassing_cache(key)).await
            }
        }
    }

    /// Cache-Aside read of many keys: one answer per distinct key, in the order first named. Fresh
    /// entries answer from one cache read; the misses are loaded as [`CacheAside::get`] loads one
    /// (one load per key in the process, the load gate across processes, negative caching,
    /// fail-safe), with one store read for all the keys this call loads itself. With the cache
    /// down, one store read answers every key and nothing is cached.
    pub async fn get_many(&self, keys: &[Key]) -> Vec<(Key, Result<Lookup, ReadError>)> {
        let core = &self.read.core;
        let mut named = HashSet::new();
        let keys: Vec<Key> = keys.iter().filter(|key| named.insert(key.as_str())).cloned().collect();
        let names: Vec<String> = keys.iter().map(|key| key.as_str().to_string()).collect();
        let entries = match core.cache.get_many(&names).await {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(keys = keys.len(), error = %Chain(&e), "cache unavailable; reading the store directly");
                let answers = self.read.load_many_bypassing_cache(keys.clone()).await;
                return keys.into_iter().zip(answers).collect();
            }
        };
        let now = core.now();
        let (mut answers, mut missed, mut misses) = (Vec::new(), Vec::new(), Vec::new());
        let mut entries = entries.into_iter();
        for (at, key) in keys.iter().enumerate() {
            match entries.next().flatten() {
                Some(entry) if entry.is_fresh(now) => answers.push((at, Ok(Lookup::from_entry(entry)))),
                stale => {
                    missed.push(at);
                    misses.push((key.clone(), stale));
                }
            }
        }
        answers.extend(missed.into_iter().zip(self.read.load_many(misses).await));
        answers.sort_by_key(|(at, _)| *at);
        keys.into_iter().zip(answers.into_iter().map(|(_, answer)| answer)).collect()
    }
}
