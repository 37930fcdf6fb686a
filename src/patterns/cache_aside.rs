//! Cache-Aside: read the cache; on a miss, load from the store and cache what was found.
//!
//! A fresh hit is one cache read and no store call (invariant 5, docs/reliability.md); a miss
//! goes through the shared [`read_path`](super::read_path) (stampede protection, fail-safe).

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
            Ok(Some(entry)) if entry.is_fresh(core.now()) => Ok(Lookup::from_entry(&entry)),
            Ok(stale) => self.read.load(key, stale).await,
            Err(e) => {
                tracing::warn!(key = ?key.as_str(), error = %Chain(&e), "cache unavailable; reading the store directly");
                self.read.load_bypassing_cache(key).await
            }
        }
    }
}
